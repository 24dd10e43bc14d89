"""The package models: immutable values, normalised once, with helpers for DocumentId and files."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from exchange.agency import AgencyCode
from exchange.edxml.model import (
    Attachment,
    Business,
    Code,
    DocumentPackage,
    Organization,
    PromulgationInfo,
    ResponseFor,
    StatusPackage,
    TraceHeader,
    content_id_key,
    format_date,
    format_timestamp,
    make_document_id,
    split_document_id,
)
from exchange.reasons import Reason, Rejection
from exchange.status import BusinessDocType, StatusCode

G22 = AgencyCode.parse("000.00.00.G22")
H41 = AgencyCode.parse("000.00.00.H41")


def document(**changes: object) -> DocumentPackage:
    fields: dict[str, object] = {
        "sender": Organization(organ_id=G22),
        "recipients": (Organization(organ_id=H41),),
        "code": Code(code_number="7816", code_notation="VPCP-TTĐT"),
        "promulgation": PromulgationInfo(promulgation_date=date(2015, 9, 30)),
        "subject": "V/v kết nối",
        "trace": (TraceHeader(organ_id=G22, timestamp=datetime(2015, 9, 30, 8, 0, 0)),),
    }
    fields.update(changes)
    return DocumentPackage.model_validate(fields)


def test_models_are_immutable() -> None:
    package = document()
    with pytest.raises(ValidationError):
        package.subject = "changed"  # type: ignore[misc]


def test_models_compare_and_hash_by_value() -> None:
    assert document() == document()
    assert hash(document()) == hash(document())
    assert document() != document(subject="another subject")


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        Organization(organ_id=G22, nickname="VPCP")  # type: ignore[call-arg]


def test_text_is_stripped_and_blank_optional_text_is_none() -> None:
    organization = Organization(organ_id=G22, organ_name="  Văn phòng Chính phủ \n", fax="   ")
    assert organization.organ_name == "Văn phòng Chính phủ"
    assert organization.fax is None


def test_blank_required_text_is_refused() -> None:
    with pytest.raises(ValidationError):
        document(subject="   ")


def test_text_xml_cannot_carry_is_refused() -> None:
    with pytest.raises(ValidationError, match="U\\+0001"):
        document(subject="bad \x01 character")


def test_agency_codes_are_parsed_from_text_and_malformed_ones_refused() -> None:
    assert Organization(organ_id="000.00.00.G22").organ_id == G22  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="3 groups"):
        Organization(organ_id="28.22.H17")  # type: ignore[arg-type]


def test_a_document_needs_a_recipient_and_a_trace() -> None:
    with pytest.raises(ValidationError):
        document(recipients=())
    with pytest.raises(ValidationError):
        document(trace=())


def test_timestamps_become_vietnam_local_time_to_the_second() -> None:
    utc = datetime(2018, 9, 28, 17, 30, 5, 123456, tzinfo=UTC)
    hop = TraceHeader(organ_id=G22, timestamp=utc)
    assert hop.timestamp == datetime(2018, 9, 29, 0, 30, 5)
    assert hop.timestamp.tzinfo is None


def test_wire_formats_of_dates_and_timestamps() -> None:
    assert format_date(date(987, 1, 2)) == "0987/01/02"
    moment = datetime(2018, 9, 28, 1, 2, 3, tzinfo=timezone(timedelta(hours=7)))
    assert format_timestamp(moment) == "2018/09/28 01:02:03"


def test_document_without_business_block_is_a_new_document() -> None:
    assert document().business_doc_type is BusinessDocType.NEW
    revocation = document(business=Business(doc_type=BusinessDocType.REVOCATION))
    assert revocation.business_doc_type is BusinessDocType.REVOCATION


def test_recipient_codes_in_order() -> None:
    package = document(recipients=(Organization(organ_id=H41), Organization(organ_id=G22)))
    assert package.recipient_codes == (H41, G22)


# -- DocumentId -------------------------------------------------------------------------


def test_document_id_following_the_convention_splits_into_its_parts() -> None:
    parts = split_document_id("000.00.00.G22,2015/09/30,7816/VPCP-TTĐT")
    assert parts is not None
    assert parts.sender == "000.00.00.G22"
    assert parts.promulgation_date == date(2015, 9, 30)
    assert (parts.code_number, parts.code_notation) == ("7816", "VPCP-TTĐT")


def test_document_id_notation_may_contain_slashes() -> None:
    parts = split_document_id("000.00.00.G09,2016/05/01,10/2016/TT-BTTTT")
    assert parts is not None
    assert (parts.code_number, parts.code_notation) == ("10", "2016/TT-BTTTT")


def test_document_id_with_an_impossible_date_still_splits() -> None:
    # Real sample: edoc_new.edxml's Bussiness/DocumentId is dated 30 February.
    parts = split_document_id("000.00.00.G22,2014/02/30,7806/VPCP-TTĐT")
    assert parts is not None
    assert parts.promulgation_date is None
    assert parts.code_number == "7806"


@pytest.mark.parametrize(
    "document_id",
    [
        "9fbfbad2-f1f8-4256-a2eb-50fb1061cddb",
        "000.00.00.G22,2015/09/30",
        "a,b,7816/X",
        "a,2015/09/30,7816",
    ],
)
def test_document_id_breaking_the_convention_gives_none(document_id: str) -> None:
    assert split_document_id(document_id) is None


def test_package_document_id_parts_and_make_document_id_agree() -> None:
    code = Code(code_number="7816", code_notation="VPCP-TTĐT")
    made = make_document_id(G22, date(2015, 9, 30), code)
    assert made == "000.00.00.G22,2015/09/30,7816/VPCP-TTĐT"
    parts = document(document_id=made).document_id_parts
    assert parts is not None and parts.sender == str(G22)
    assert document(document_id="not-conventional").document_id_parts is None
    assert document().document_id_parts is None


# -- attachments ------------------------------------------------------------------------------


@pytest.mark.parametrize("content_id", ["cid:209", "209", " CID:209 ", "cid:<209>"])
def test_content_id_key_ignores_the_cid_prefix(content_id: str) -> None:
    assert content_id_key(content_id) == "209"


def test_attachment_found_by_content_id_with_or_without_prefix() -> None:
    file = Attachment.from_bytes(b"x", "a.doc", content_id="209")
    package = document(attachments=(file,))
    assert package.attachment("cid:209") is file
    assert package.attachment("209") is file
    assert package.attachment("cid:210") is None


def test_attachment_decodes_to_the_bytes_it_was_made_from() -> None:
    data = bytes(range(256)) * 3
    assert Attachment.from_bytes(data, "a.bin").decode() == data


def test_attachment_decode_accepts_line_broken_base64() -> None:
    attachment = Attachment(content_id="cid:1", attachment_name="a", encoded="QUJD\nREVG\r\n")
    assert attachment.decode() == b"ABCDEF"


@pytest.mark.parametrize(
    "encoded",
    ["QUJ", "QU!D", "${__StringFromFile(test.txt,,,)}", "QUJD====", "QU=DQUJD", "Q===", "QQ==QQ=="],
)
def test_attachment_decode_refuses_text_that_is_not_strict_base64(encoded: str) -> None:
    attachment = Attachment(content_id="cid:1", attachment_name="a.doc", encoded=encoded)
    for refuse in (attachment.decode, attachment.check):
        with pytest.raises(Rejection) as caught:
            refuse()
        assert caught.value.reason is Reason.BAD_ATTACHMENT
        assert "a.doc" in caught.value.problems[0].what


def _refused(attempt: Callable[[], object]) -> bool:
    try:
        attempt()
    except Rejection:
        return True
    return False


@settings(max_examples=1000)
@given(
    st.text(
        alphabet=st.sampled_from("QUJDREVGa0+/= \t\r\n\x0b\x0c\x1c!\u00a0\u2028é"),
        max_size=24,
    )
)
def test_attachment_check_refuses_exactly_what_decode_refuses(encoded: str) -> None:
    """check() is the fast path of the worker's attachment check: the same rule as decode()."""
    attachment = Attachment(content_id="cid:1", attachment_name="a", encoded=encoded)
    assert _refused(attachment.check) == _refused(attachment.decode)


@pytest.mark.parametrize(
    "encoded",
    ["QQ==", "QQ=\n=", "QUI=\r\n", "QUJD\n\n\n", " QU JD ", "QQ=" + " " * 200 + "="],
)
def test_attachment_check_accepts_padding_and_whitespace_where_decode_does(encoded: str) -> None:
    attachment = Attachment(content_id="cid:1", attachment_name="a", encoded=encoded)
    attachment.decode()
    attachment.check()


def test_attachment_repr_leaves_out_the_encoded_content() -> None:
    attachment = Attachment.from_bytes(b"secret-looking bytes" * 100, "a.bin")
    assert attachment.encoded not in repr(attachment)


def test_attachment_content_id_is_generated_when_not_given() -> None:
    first = Attachment.from_bytes(b"a", "a")
    second = Attachment.from_bytes(b"a", "a")
    assert first.content_id.startswith("cid:")
    assert first.content_id != second.content_id


# -- status -----------------------------------------------------------------------------------


def test_status_package_holds_the_code_list_member() -> None:
    status = StatusPackage(
        sender=Organization(organ_id=H41),
        response_for=ResponseFor(organ_id=G22, code="7816/VPCP-TTĐT"),
        status_code="03",  # type: ignore[arg-type]
        timestamp=datetime(2015, 9, 20, 11, 8, 36),
    )
    assert status.status_code is StatusCode.ACCEPTED
    with pytest.raises(ValidationError):
        status.model_copy(update={}).model_validate({**status.model_dump(), "status_code": "07"})
