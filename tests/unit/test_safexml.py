"""The hardened parser refuses hostile XML with a specific reason, before anything else."""

from __future__ import annotations

import codecs

import pytest

from exchange.edxml.safexml import parse, parse_received
from exchange.reasons import Reason, Rejection
from exchange.settings import ParserLimits

HOSTILE = {
    "xxe_file": (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
        Reason.FORBIDDEN_DTD,
    ),
    "xxe_network": (
        b'<!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]><r>&x;</r>',
        Reason.FORBIDDEN_DTD,
    ),
    "billion_laughs": (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">'
        b'<!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]><l>&d;&d;&d;&d;</l>',
        Reason.FORBIDDEN_DTD,
    ),
    "external_dtd": (
        b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://127.0.0.1:9/x.dtd"><r/>',
        Reason.FORBIDDEN_DTD,
    ),
    "parameter_entity": (
        b'<!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><r/>',
        Reason.FORBIDDEN_DTD,
    ),
    "too_deep_for_us": (b"<a>" * 60 + b"</a>" * 60, Reason.TOO_DEEP),
    "too_deep_for_libxml2": (b"<a>" * 5000 + b"</a>" * 5000, Reason.TOO_DEEP),
    "latin1_declared": (
        '<?xml version="1.0" encoding="ISO-8859-1"?><r>é</r>'.encode("latin-1"),
        Reason.NOT_UTF8,
    ),
    "utf16": ('<?xml version="1.0" encoding="UTF-16"?><r/>'.encode("utf-16"), Reason.NOT_UTF8),
    "invalid_utf8_byte": (b"<r>\xc3\x28</r>", Reason.NOT_UTF8),
    "empty": (b"", Reason.NOT_WELL_FORMED),
    "whitespace": (b"  \n ", Reason.NOT_WELL_FORMED),
    "unclosed": (b"<r><a></r>", Reason.NOT_WELL_FORMED),
    "truncated": (b'<?xml version="1.0"?><edXML><edXMLEnvelope>', Reason.NOT_WELL_FORMED),
    "not_xml": (b"%PDF-1.4 binary", Reason.NOT_WELL_FORMED),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_is_refused_with_its_reason(name: str) -> None:
    data, reason = HOSTILE[name]
    with pytest.raises(Rejection) as caught:
        parse(data)
    assert caught.value.reason is reason
    assert caught.value.problems, "a rejection must say what was found"


def test_the_file_system_is_never_read() -> None:
    data = b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/hostname">]><r>&x;</r>'
    with pytest.raises(Rejection) as caught:
        parse(data)
    assert "/etc/hostname" not in str(caught.value)


def test_oversized_input_is_refused_before_parsing() -> None:
    limits = ParserLimits(max_package_bytes=1000)
    with pytest.raises(Rejection) as caught:
        parse(b"<r>" + b"x" * 2000 + b"</r>", limits)
    assert caught.value.reason is Reason.TOO_LARGE
    assert "2,007 bytes" in caught.value.explain()


def test_depth_limit_is_configurable() -> None:
    nested = b"<a>" * 10 + b"</a>" * 10
    parse(nested, ParserLimits(max_depth=10))
    with pytest.raises(Rejection) as caught:
        parse(nested, ParserLimits(max_depth=9))
    assert caught.value.reason is Reason.TOO_DEEP


def test_well_formed_utf8_keeps_comments_and_text() -> None:
    root = parse('<?xml version="1.0" encoding="utf-8"?><r><!-- c --><a>Hà Nội</a></r>'.encode())
    assert root.findtext("a") == "Hà Nội"
    assert len(root) == 2  # the comment is kept: signatures canonicalise what was sent


def test_syntax_errors_say_where() -> None:
    with pytest.raises(Rejection) as caught:
        parse(b"<r>\n<a>\n</r>")
    assert "line 3" in caught.value.explain()


def test_rejections_speak_vietnamese_to_the_clerk() -> None:
    with pytest.raises(Rejection) as caught:
        parse(b"<r>")
    assert caught.value.explain("vi").startswith("Gói tin không phải XML hợp lệ")
    assert caught.value.code == "REJECTED_NOT_WELL_FORMED"


# -- what two readers could read apart (parse_received) ----------------------------


def _refusal(data: bytes) -> Rejection:
    with pytest.raises(Rejection) as caught:
        parse_received(data)
    return caught.value


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"<r><a>Ha<!-- x -->Noi</a></r>", "r/a: the package contains an XML comment"),
        (b"<!-- before --><r/>", "(outside the root element): the package contains an XML comment"),
        (b"<r/><!-- after -->", "(outside the root element)"),
        (b'<r><?qlvb route="x"?></r>', "r: the package contains a processing instruction <?qlvb?>"),
        (b'<?xml-stylesheet href="x"?><r/>', "processing instruction <?xml-stylesheet?>"),
    ],
)
def test_received_package_with_comments_or_processing_instructions_is_refused(
    data: bytes, said: str
) -> None:
    refusal = _refusal(data)
    assert refusal.reason is Reason.NOT_WELL_FORMED
    assert said in str(refusal)
    parse(data)  # the parser itself keeps them, for tools that read samples


def test_utf8_mark_with_another_declared_encoding_is_refused_as_two_readings() -> None:
    data = codecs.BOM_UTF8 + b'<?xml version="1.0" encoding="windows-1258"?><r>x</r>'
    with pytest.raises(Rejection) as caught:
        parse(data)
    assert caught.value.reason is Reason.NOT_WELL_FORMED
    assert "byte-order mark" in str(caught.value) and "windows-1258" in str(caught.value)
    # The mark with UTF-8 declared, or nothing declared, is one reading.
    parse_received(codecs.BOM_UTF8 + b'<?xml version="1.0" encoding="UTF-8"?><r>x</r>')
    parse_received(codecs.BOM_UTF8 + b"<r>x</r>")


def test_encoding_declared_after_long_padding_is_still_read() -> None:
    data = b'<?xml version="1.0"' + b" " * 300 + b'encoding="ISO-8859-1"?><r>x</r>'
    with pytest.raises(Rejection) as caught:
        parse(data)
    assert caught.value.reason is Reason.NOT_UTF8


def test_cdata_is_one_text_for_every_reader_and_accepted() -> None:
    assert parse_received(b"<r><![CDATA[a < b]]></r>").text == "a < b"
