"""The one XML parser of the exchange, hardened against hostile input.

Every package an agency sends goes through :func:`parse` before anything
else looks at it. It refuses, with a :class:`~exchange.reasons.Rejection`:
oversized input (before parsing), bytes that are not UTF-8, any DOCTYPE
(so no entity expansion, no external DTD, no XXE), documents nested deeper
than the limit, a byte-order mark contradicted by the XML declaration, and
anything libxml2 finds not well-formed. It never touches the network or the
file system.

:func:`parse_received` is :func:`parse` for a package an agency sent: it
also refuses what two XML readers could read as different text (comments
and processing instructions anywhere in the document), so that what the
signature check verifies and what a recipient's software reads are the
same text.
"""

from __future__ import annotations

import codecs
import functools
import re
import threading
from typing import Any

from lxml import etree

from exchange.reasons import Reason, Rejection
from exchange.settings import ParserLimits

# libxml2 options: no entity substitution, no DTD loading or validation, no
# network. huge_tree is on because one base64 attachment of a 20 MB document
# is a single text node larger than libxml2's default 10 MB cap; what that cap
# protected against is covered by our own limits: the byte size is checked
# before parsing, any DOCTYPE (so any entity) is refused before libxml2 sees
# it, and the depth is checked after. Comments and whitespace are kept:
# canonicalisation for signatures depends on the document as it was sent.
_PARSER_OPTIONS = {
    "resolve_entities": False,
    "load_dtd": False,
    "dtd_validation": False,
    "no_network": True,
    "huge_tree": True,
    "remove_blank_text": False,
    "remove_comments": False,
    "remove_pis": False,
    "collect_ids": False,
}

# A parser is not thread-safe, and each thread of a worker (signxml, the
# process pool) gets its own; making one costs microseconds.
_parser_cache: dict[int, etree.XMLParser] = {}

# The XML declaration, whole: its encoding may sit after any amount of
# padding, and a reader that looks only at a prefix would miss it.
_DECLARATION = re.compile(rb"<\?xml\s[^?]*\?>")
_ENCODING_PSEUDO_ATTRIBUTE = re.compile(rb"""encoding\s*=\s*["']([^"']*)["']""")


_DOCTYPE_FOUND = "a <!DOCTYPE> declaration was found; edXML packages have none"
# The prolog: everything before the root element's start tag, i.e. before the
# first "<" that opens an element (not "<?" or "<!").
_FIRST_ELEMENT = re.compile(rb"<[^?!]")


def _declares_doctype(data: bytes) -> bool:
    """Whether the prolog holds a DOCTYPE; only the prolog can, so only it is scanned."""
    first = _FIRST_ELEMENT.search(data)
    prolog = data[: first.start()] if first else data
    return b"<!DOCTYPE" in prolog.upper()


@functools.cache
def _default_limits() -> ParserLimits:
    """The limits from the environment, read once (reading them costs more than a parse)."""
    return ParserLimits()


def new_parser() -> etree.XMLParser:
    """A fresh parser with the hardened options (for libraries that take one)."""
    return etree.XMLParser(**_PARSER_OPTIONS)  # type: ignore[arg-type]


def _parser() -> etree.XMLParser:
    key = threading.get_ident()
    parser = _parser_cache.get(key)
    if parser is None:
        parser = _parser_cache[key] = new_parser()
    return parser


def _declared_encoding(data: bytes) -> str | None:
    """The encoding the XML declaration names (lower case), if it names one."""
    declaration = _DECLARATION.match(data)
    if declaration is None:
        return None
    encoding = _ENCODING_PSEUDO_ATTRIBUTE.search(declaration.group(0))
    if encoding is None:
        return None
    return encoding.group(1).decode("ascii", "replace").lower().replace("_", "-")


def _check_encoding(data: bytes) -> None:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE)):
        raise Rejection.of(Reason.NOT_UTF8, "the package starts with a UTF-16 or UTF-32 mark")
    has_bom = data.startswith(codecs.BOM_UTF8)
    name = _declared_encoding(data.removeprefix(codecs.BOM_UTF8))
    if name is not None and name not in ("utf-8", "utf8"):
        if has_bom:
            # One reader follows the mark (UTF-8), another the declaration:
            # the same bytes would be two different texts.
            raise Rejection.of(
                Reason.NOT_WELL_FORMED,
                f"the package starts with a UTF-8 byte-order mark but its XML declaration "
                f"says encoding={name!r}; readers disagree on which one to follow",
            )
        raise Rejection.of(
            Reason.NOT_UTF8, f"the XML declaration says encoding={name!r}; it must be UTF-8"
        )
    _check_utf8(data)


# UTF-8 is checked a slice at a time: decoding holds the GIL, and a decode
# error copies the whole input into the exception, so one call on a 60 MiB
# body would stop every other thread, the event loop included, for tens of
# milliseconds.
_UTF8_SLICE = 1 << 20


def _check_utf8(data: bytes) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    for start in range(0, max(len(data), 1), _UTF8_SLICE):
        end = start + _UTF8_SLICE
        carried = len(decoder.getstate()[0])  # the start of a character cut by the slice
        try:
            decoder.decode(view[start:end], final=end >= len(data))
        except UnicodeDecodeError as error:
            raise Rejection.of(
                Reason.NOT_UTF8,
                f"byte {start - carried + error.start} is not valid UTF-8 ({error.reason})",
            ) from None


@functools.cache
def _deeper_than(limit: int) -> etree.XPath:
    """An XPath true when some element sits more than ``limit`` levels down.

    Compiled once per limit; libxml2 answers in microseconds where a walk
    over the tree in Python costs tens.
    """
    return etree.XPath("boolean(/*" + "/*" * limit + ")")


def _depth_exceeds(root: etree._Element, limit: int) -> bool:
    """Whether any element of ``root``'s document is nested deeper than ``limit``."""
    return bool(_deeper_than(limit)(root))


def parse(data: bytes, limits: ParserLimits | None = None) -> etree._Element:
    """Parse untrusted package bytes into an element tree, or raise :class:`Rejection`."""
    limits = limits or _default_limits()
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("parse() takes the package's bytes")
    data = bytes(data)
    if len(data) > limits.max_package_bytes:
        raise Rejection.of(
            Reason.TOO_LARGE,
            f"the package is {len(data):,} bytes; the limit is {limits.max_package_bytes:,}",
        )
    if not data or data.isspace():
        raise Rejection.of(Reason.NOT_WELL_FORMED, "the package is empty")
    _check_encoding(data)
    if _declares_doctype(data):
        raise Rejection.of(Reason.FORBIDDEN_DTD, _DOCTYPE_FOUND)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as error:
        raise _classify_syntax_error(error, data, limits) from None
    docinfo: Any = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise Rejection.of(Reason.FORBIDDEN_DTD, _DOCTYPE_FOUND)
    too_deep = _depth_exceeds(root, limits.max_depth)
    if too_deep:
        raise Rejection.of(
            Reason.TOO_DEEP, f"elements nest more than {limits.max_depth} levels deep"
        )
    return root


def parse_received(data: bytes, limits: ParserLimits | None = None) -> etree._Element:
    """:func:`parse` a package an agency sent, refusing what two readers could read apart.

    Comments and processing instructions, anywhere in the document (inside
    the root or around it), are refused with ``NOT_WELL_FORMED``: an XML
    signature without comments does not cover them, and a reader that keeps
    them (a DOM's text of an element cut by a comment, a ``getTextContent``
    that joins it) sees other text than the one verified.
    """
    root = parse(data, limits)
    _refuse_two_readings(root)
    return root


def _refuse_two_readings(root: etree._Element) -> None:
    around = [*root.itersiblings(preceding=True), *root.itersiblings()]
    for node in (*around, *root.iter(etree.Comment, etree.ProcessingInstruction)):
        where = _path_of(node)
        if isinstance(node, etree._Comment):
            raise Rejection.of(
                Reason.NOT_WELL_FORMED,
                "the package contains an XML comment; edXML packages carry none, since the "
                "signature does not cover comments and readers treat them differently",
                where,
            )
        if isinstance(node, etree._ProcessingInstruction):
            raise Rejection.of(
                Reason.NOT_WELL_FORMED,
                f"the package contains a processing instruction <?{node.target!s}?>; "
                "edXML packages carry none",
                where,
            )


def _path_of(node: etree._Element) -> str:
    """Where a comment or processing instruction is: the path of its parent element."""
    parent = node.getparent()
    if parent is None:
        return "(outside the root element)"
    names = [etree.QName(e).localname for e in (parent, *parent.iterancestors())]
    return "/".join(reversed(names))


def _classify_syntax_error(
    error: etree.XMLSyntaxError, data: bytes, limits: ParserLimits
) -> Rejection:
    """Name the real reason behind a libxml2 failure (a DTD, nesting, or syntax)."""
    if b"<!DOCTYPE" in data:
        # libxml2 failed while handling the DTD (an external subset it may not
        # load, an entity loop): the cause is the DOCTYPE, not the syntax.
        return Rejection.of(Reason.FORBIDDEN_DTD, _DOCTYPE_FOUND)
    message = (error.msg or "syntax error").split(", line ")[0]
    if "Excessive depth" in message:
        return Rejection.of(
            Reason.TOO_DEEP, f"elements nest more than {limits.max_depth} levels deep"
        )
    line, column = error.position if error.position else (0, 0)
    return Rejection.of(Reason.NOT_WELL_FORMED, f"line {line}, column {column}: {message}")
