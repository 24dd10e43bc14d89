"""The one XML parser of the exchange, hardened against hostile input.

Every package an agency sends goes through :func:`parse` before anything
else looks at it. It refuses, with a :class:`~exchange.reasons.Rejection`:
oversized input (before parsing), bytes that are not UTF-8, any DOCTYPE
(so no entity expansion, no external DTD, no XXE), documents nested deeper
than the limit, and anything libxml2 finds not well-formed. It never touches
the network or the file system.
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

_DECLARED_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


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


def _check_encoding(data: bytes) -> None:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE)):
        raise Rejection.of(Reason.NOT_UTF8, "the package starts with a UTF-16 or UTF-32 mark")
    declared = _DECLARED_ENCODING.match(data[:200])
    if declared is not None:
        name = declared.group(1).decode("ascii").lower().replace("_", "-")
        if name not in ("utf-8", "utf8"):
            raise Rejection.of(
                Reason.NOT_UTF8, f"the XML declaration says encoding={name!r}; it must be UTF-8"
            )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejection.of(
            Reason.NOT_UTF8, f"byte {error.start} is not valid UTF-8 ({error.reason})"
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
