"""Read an edXML package into a :class:`DocumentPackage` or a :class:`StatusPackage`.

Runs on the hot path, once per message, so it walks the lxml tree directly
(children indexed by local name, no XPath, no schema) and decodes no
attachment.

Tolerant where real senders differ: child order, the ``edXML:`` prefix or
the default namespace (names are matched by namespace, never by prefix),
surrounding whitespace, dates written ``yyyy/MM/dd``, ``dd/MM/yyyy`` or
``yyyy-MM-dd``, timestamps in those forms or ISO 8601, ``Bussiness`` or
``Business``, a ``cid:`` prefix on one side only, an empty ``ResponseFor``.

Strict where it matters: a missing required field, a date that is no date,
a value outside its code list, a malformed agency code or a root that is
not edXML each give a :class:`~exchange.reasons.Rejection` whose problems
name the element path and the value.

Dates that cannot exist (30 February, 31 April) are judged by whose they
are. In the package's own ``DocumentId``, ``PromulgationDate``, ``DueDate``
or a status ``Timestamp`` they are refused. In what the package relays from
others (the trace: ``TraceHeader`` timestamps and the ``Bussiness`` block
with its replaced documents; the documents it answers, ``ResponseFor``) the
sender cannot correct them, so they are warnings: the package's
``warnings`` name the element and the value, the date reads as ``None``.

Signatures are not the reader's business: ``Signature`` elements, in
either namespace, are ignored (the signature check handles them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, datetime
from enum import Enum
from typing import Any, TypeVar, cast

from lxml import etree
from pydantic import ValidationError

from exchange.agency import AgencyCode, InvalidAgencyCode
from exchange.edxml import names
from exchange.edxml.model import (
    DocumentPackage,
    StatusPackage,
    content_id_key,
    split_document_id,
)
from exchange.edxml.safexml import parse
from exchange.reasons import Problem, Reason, Rejection
from exchange.settings import ParserLimits
from exchange.status import BusinessDocType, Priority, StatusCode, SteeringType

Element = etree._Element
Children = dict[str, list[Element]]
E = TypeVar("E", bound=Enum)
M = TypeVar("M", DocumentPackage, StatusPackage)

_NS = f"{{{names.EDXML_NS}}}"
_ANY_EDXML = f"{_NS}*"

# Date forms seen from real senders; the year's four digits tell the order.
_DATE_YMD = re.compile(r"([0-9]{4})[/-]([0-9]{1,2})[/-]([0-9]{1,2})")
_DATE_DMY = re.compile(r"([0-9]{1,2})[/-]([0-9]{1,2})[/-]([0-9]{4})")
_TIME = re.compile(r"(.+?)[ T]([0-9]{1,2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]+)?)?")

# A date shaped like one of the forms above, whatever the calendar says of it.
_DATE_SHAPED = re.compile(
    r"[0-9]{4}[/-][0-9]{1,2}[/-][0-9]{1,2}|[0-9]{1,2}[/-][0-9]{1,2}[/-][0-9]{4}"
)

# ``date`` as a type where a method of that name hides it.
_Day = date

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def _code_list(enum: type[E]) -> dict[str, E]:
    """Wire value -> member, also by number ("1" finds "01") for senders that drop zeros."""
    table: dict[str, E] = {}
    for member in enum:
        table[member.value] = member
        table.setdefault(str(int(member.value)), member)
    return table


_STATUS_CODES = _code_list(StatusCode)
_BUSINESS_DOC_TYPES = _code_list(BusinessDocType)
_PRIORITIES = _code_list(Priority)
_STEERING_TYPES = _code_list(SteeringType)


# -- public API -------------------------------------------------------------------


def read_package(
    source: bytes | Element, limits: ParserLimits | None = None
) -> DocumentPackage | StatusPackage:
    """Read a package: a status if its MessageHeader has a StatusCode, else a document.

    ``source`` is the package's bytes (parsed by the hardened
    :func:`~exchange.edxml.safexml.parse` within ``limits``) or an lxml
    element already parsed, used as is (the worker passes the element the
    signature really covers). Raises :class:`Rejection` for bad input.
    """
    root = _root_of(source, limits)
    return _Reader().package(root)


def read_document(source: bytes | Element, limits: ParserLimits | None = None) -> DocumentPackage:
    """Read a package that must be a document; a status package is a :class:`Rejection`."""
    package = read_package(source, limits)
    if not isinstance(package, DocumentPackage):
        raise Rejection.of(
            Reason.SCHEMA_INVALID,
            "this is a status package (it has a StatusCode); a document package was expected",
            "MessageHeader/StatusCode",
        )
    return package


def read_status(source: bytes | Element, limits: ParserLimits | None = None) -> StatusPackage:
    """Read a package that must be a status; a document package is a :class:`Rejection`."""
    package = read_package(source, limits)
    if not isinstance(package, StatusPackage):
        raise Rejection.of(
            Reason.MISSING_FIELD,
            "a status package needs a StatusCode; this looks like a document package",
            "MessageHeader/StatusCode",
        )
    return package


# -- dates -------------------------------------------------------------------------


def parse_date(text: str) -> date | None:
    """A wire date (``yyyy/MM/dd``, ``dd/MM/yyyy``, ``yyyy-MM-dd``), or ``None`` if it is none."""
    text = text.strip()
    try:
        match = _DATE_YMD.fullmatch(text)
        if match is not None:
            year, month, day = match.groups()
            return date(int(year), int(month), int(day))
        match = _DATE_DMY.fullmatch(text)
        if match is not None:
            day, month, year = match.groups()
            return date(int(year), int(month), int(day))
    except ValueError:  # 30 February, month 13
        return None
    # A date written as a timestamp (with 00:00:00) still names a day.
    moment = parse_timestamp(text, date_only_ok=False)
    return moment.date() if moment is not None else None


def parse_timestamp(text: str, *, date_only_ok: bool = True) -> datetime | None:
    """A wire timestamp (``yyyy/MM/dd HH:mm:ss``, the ``dd/MM/yyyy`` variant, ISO 8601).

    Returns ``None`` if the text is no timestamp. A bare date is midnight.
    An ISO timestamp with a zone keeps it (the model converts to Vietnam time).
    """
    text = text.strip()
    match = _TIME.fullmatch(text)
    if match is not None:
        day_text, hour, minute, second = match.groups()
        day = parse_date(day_text) if "T" not in day_text and " " not in day_text else None
        if day is not None:
            try:
                return datetime(
                    day.year, day.month, day.day, int(hour), int(minute), int(second or 0)
                )
            except ValueError:  # 25:00
                return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    if date_only_ok:
        day = parse_date(text)
        if day is not None:
            return datetime(day.year, day.month, day.day)
    return None


# -- the walk --------------------------------------------------------------------------


def _impossible_day(text: str) -> bool:
    """Whether ``text`` is written as a date (or timestamp) but names no day of the calendar."""
    day = text.strip().partition(" ")[0].partition("T")[0]
    return _DATE_SHAPED.fullmatch(day) is not None and parse_date(day) is None


def _root_of(source: bytes | Element, limits: ParserLimits | None) -> Element:
    if isinstance(source, bytes | bytearray | memoryview):
        return parse(bytes(source), limits)
    if isinstance(source, etree._ElementTree):
        return source.getroot()
    if isinstance(source, etree._Element):
        return source
    raise TypeError(f"read_package() takes bytes or an lxml element, not {type(source).__name__}")


def _index(element: Element) -> Children:
    """The element's edXML children by local name, in document order."""
    found: Children = {}
    cut = len(_NS)
    for child in element.iterchildren(_ANY_EDXML):
        found.setdefault(child.tag[cut:], []).append(child)
    return found


def _text(element: Element) -> str:
    """The element's text, stripped; comments inside it are skipped."""
    if len(element) == 0:
        return (element.text or "").strip()
    return _all_text(element)


def _all_text(element: Element) -> str:
    """The text of the element and everything inside it, stripped."""
    return "".join(cast(Iterator[str], element.itertext())).strip()


def _local(element: Element) -> tuple[str, str]:
    qname = etree.QName(element)
    return qname.localname, qname.namespace or ""


class _Reader:
    """One read: walks the tree, collecting problems, then builds the model."""

    def __init__(self) -> None:
        self.problems: list[tuple[Reason, Problem]] = []
        # Impossible dates in relayed parts: reported, not refused.
        self.warnings: list[Problem] = []

    # -- problems -------------------------------------------------------------

    def problem(self, reason: Reason, where: str, what: str) -> None:
        self.problems.append((reason, Problem(where, what)))

    def raise_problems(self) -> None:
        """Raise the first problem's reason, with every problem of that reason."""
        if not self.problems:
            return
        reason = self.problems[0][0]
        raise Rejection(reason, tuple(p for r, p in self.problems if r is reason))

    def missing(self, parent: Element, name: str, path: str) -> None:
        where = f"{path}/{name}"
        # Name the likely cause when the element is there in another namespace.
        for child in parent.iterchildren():
            if isinstance(child.tag, str) and etree.QName(child).localname == name:
                namespace = etree.QName(child).namespace or "no namespace"
                self.problem(
                    Reason.MISSING_FIELD,
                    where,
                    f"<{name}> is in {namespace}, not in the edXML namespace {names.EDXML_NS}",
                )
                return
        self.problem(Reason.MISSING_FIELD, where, f"the required element <{name}> is missing")

    # -- looking up children --------------------------------------------------

    def one(self, kids: Children, *spellings: str) -> Element | None:
        for name in spellings:
            found = kids.get(name)
            if found:
                return found[0]
        return None

    def need(self, parent: Element, kids: Children, name: str, path: str) -> Element | None:
        element = self.one(kids, name)
        if element is None:
            self.missing(parent, name, path)
        return element

    def need_now(self, parent: Element, kids: Children, name: str, path: str) -> Element:
        """A child without which nothing else can be read: missing is raised at once."""
        element = self.need(parent, kids, name, path)
        if element is None:
            self.raise_problems()
            raise AssertionError("unreachable: need() recorded the problem")
        return element

    def opt_text(self, kids: Children, *spellings: str) -> str | None:
        element = self.one(kids, *spellings)
        if element is None:
            return None
        return _text(element) or None

    def need_text(self, parent: Element, kids: Children, name: str, path: str) -> str | None:
        element = self.need(parent, kids, name, path)
        if element is None:
            return None
        value = _text(element)
        if not value:
            self.problem(Reason.MISSING_FIELD, f"{path}/{name}", f"<{name}> is empty")
            return None
        return value

    def texts(self, element: Element | None, name: str) -> tuple[str, ...]:
        if element is None:
            return ()
        values = (_text(child) for child in element.iterchildren(_NS + name))
        return tuple(value for value in values if value)

    # -- typed values -----------------------------------------------------------

    def agency(self, value: str | None, where: str) -> AgencyCode | None:
        if value is None:
            return None
        try:
            return AgencyCode.parse(value)
        except InvalidAgencyCode as error:
            self.problem(Reason.BAD_AGENCY_CODE, where, str(error))
            return None

    def need_agency(
        self, parent: Element, kids: Children, name: str, path: str
    ) -> AgencyCode | None:
        return self.agency(self.need_text(parent, kids, name, path), f"{path}/{name}")

    def date(self, value: str | None, where: str) -> date | None:
        if value is None:
            return None
        parsed = parse_date(value)
        if parsed is None:
            self.problem(
                Reason.BAD_DATE,
                where,
                f"{value!r} is not a day of the calendar"
                if _impossible_day(value)
                else f"{value!r} is not a date; write yyyy/MM/dd (for example 2018/09/28)",
            )
        return parsed

    def timestamp(self, value: str | None, where: str) -> datetime | None:
        if value is None:
            return None
        parsed = parse_timestamp(value)
        if parsed is None:
            self.problem(
                Reason.BAD_DATE,
                where,
                f"{value!r} is not a day of the calendar"
                if _impossible_day(value)
                else f"{value!r} is not a timestamp; write yyyy/MM/dd HH:mm:ss "
                "(for example 2018/09/28 17:25:11)",
            )
        return parsed

    def relayed_date(self, value: str | None, where: str) -> _Day | None:
        """A date the sender relays from others: an impossible day is a warning."""
        if value is not None and parse_date(value) is None and _impossible_day(value):
            self.warn_impossible(value, where)
            return None
        return self.date(value, where)

    def relayed_timestamp(self, value: str | None, where: str) -> datetime | None:
        """A timestamp the sender relays from others: an impossible day is a warning."""
        if value is not None and parse_timestamp(value) is None and _impossible_day(value):
            self.warn_impossible(value, where)
            return None
        return self.timestamp(value, where)

    def warn_impossible(self, value: str, where: str) -> None:
        self.warnings.append(
            Problem(
                where,
                f"{value!r} is not a day of the calendar; relayed as written, read as no date",
                Reason.BAD_DATE,
            )
        )

    def document_id(self, value: str | None, where: str, *, relayed: bool) -> str | None:
        """A DocumentId; its conventional date part must be a real day (or, relayed, a warning)."""
        if value is None:
            return None
        parts = split_document_id(value)
        if parts is not None and parts.promulgation_date is None:
            day = value.split(",")[1].strip()
            what = f"the date {day!r} in DocumentId {value!r} is not a day of the calendar"
            if relayed:
                self.warnings.append(Problem(where, f"{what}; relayed as written", Reason.BAD_DATE))
            else:
                self.problem(Reason.BAD_DATE, where, what)
        return value

    def code(self, table: dict[str, E], value: str | None, where: str) -> E | None:
        if value is None:
            return None
        member = table.get(value)
        if member is None and value.isdigit():
            member = table.get(str(int(value)))
        if member is None:
            allowed = ", ".join(sorted({m.value for m in table.values()}))
            self.problem(
                Reason.BAD_CODE_LIST, where, f"{value!r} is not in the code list ({allowed})"
            )
        return member

    def integer(self, value: str | None, where: str) -> int | None:
        if value is None:
            return None
        if value.isascii() and value.isdigit():
            return int(value)
        self.problem(Reason.SCHEMA_INVALID, where, f"{value!r} is not a whole number")
        return None

    def boolean(self, value: str | None, where: str) -> bool | None:
        if value is None:
            return None
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        self.problem(Reason.SCHEMA_INVALID, where, f"{value!r} is not true or false")
        return None

    # -- the package --------------------------------------------------------------

    def package(self, root: Element) -> DocumentPackage | StatusPackage:
        if root.tag != names.ROOT:
            name, namespace = _local(root) if isinstance(root.tag, str) else ("?", "")
            raise Rejection.of(
                Reason.NOT_EDXML,
                f"the root element is <{name}> in {namespace or 'no namespace'}; an edXML "
                f"package has <edXML> in {names.EDXML_NS}",
                name,
            )
        top = _index(root)
        envelope = self.need_now(root, top, "edXMLEnvelope", "edXML")
        envelope_kids = _index(envelope)
        header = self.need_now(envelope, envelope_kids, "edXMLHeader", "edXMLEnvelope")
        header_kids = _index(header)
        message = self.need_now(header, header_kids, "MessageHeader", "edXMLHeader")
        message_kids = _index(message)
        if "StatusCode" in message_kids:
            data = self.status(message, message_kids, header, header_kids)
            return self.build(StatusPackage, data)
        data = self.document(message, message_kids, header, header_kids)
        data["manifest"] = self.manifest(envelope_kids)
        data["attachments"] = self.attachments(top, envelope_kids)
        self.check_manifest(data["manifest"], data["attachments"])
        return self.build(DocumentPackage, data)

    def build(self, model: type[M], data: dict[str, Any]) -> M:
        self.raise_problems()
        data["warnings"] = tuple(str(warning) for warning in self.warnings)
        try:
            return model(**data)
        except ValidationError as error:
            # The walk checks everything a sender can get wrong; this is a net.
            raise Rejection(
                Reason.SCHEMA_INVALID,
                tuple(
                    Problem("/".join(str(part) for part in e["loc"]), e["msg"])
                    for e in error.errors()
                ),
            ) from None

    # -- document header --------------------------------------------------------

    def document(
        self, message: Element, kids: Children, header: Element, header_kids: Children
    ) -> dict[str, Any]:
        path = "MessageHeader"
        sender = self.need(message, kids, "From", path)
        recipients = kids.get("To", [])
        if not recipients:
            self.problem(
                Reason.MISSING_FIELD, f"{path}/To", "a document needs at least one recipient <To>"
            )
        code = self.need(message, kids, "Code", path)
        promulgation = self.need(message, kids, "PromulgationInfo", path)
        subject = self.need_text(message, kids, "Subject", path)
        other_info = self.one(kids, "OtherInfo")
        document_type = self.one(kids, "DocumentType")
        signer = self.one(kids, "SignerInfo")
        responses = [
            self.response_for(element, f"{path}/ResponseFor[{n}]")
            for n, element in enumerate(kids.get("ResponseFor", []), 1)
        ]
        return {
            "sender": self.organization(sender, f"{path}/From"),
            "recipients": tuple(
                self.organization(element, f"{path}/To[{n}]")
                for n, element in enumerate(recipients, 1)
            ),
            "document_id": self.document_id(
                self.opt_text(kids, "DocumentId"), f"{path}/DocumentId", relayed=False
            ),
            "code": self.code_of(code, f"{path}/Code"),
            "promulgation": self.promulgation(promulgation, f"{path}/PromulgationInfo"),
            "document_type": self.document_type(document_type),
            "subject": subject,
            "content": self.opt_text(kids, "Content"),
            "signer": self.signer(signer),
            "due_date": self.date(self.opt_text(kids, "DueDate"), f"{path}/DueDate"),
            "other_info": self.other_info(other_info, f"{path}/OtherInfo"),
            "response_for": tuple(r for r in responses if r is not None),
            "steering_type": self.code(
                _STEERING_TYPES, self.opt_text(kids, "SteeringType"), f"{path}/SteeringType"
            ),
            "response_for_task": self.texts(self.one(kids, "ResponseForTask"), "TaskCode"),
            "application_type": self.opt_text(kids, "ApplicationType"),
            "to_places": self.texts(self.one(kids, "ToPlaces"), "Place"),
            **self.trace_list(header, header_kids, required=True),
        }

    def organization(self, element: Element | None, path: str) -> dict[str, Any] | None:
        if element is None:
            return None
        kids = _index(element)
        return {
            "organ_id": self.need_agency(element, kids, "OrganId", path),
            "organization_in_charge": self.opt_text(kids, "OrganizationInCharge"),
            "organ_name": self.opt_text(kids, "OrganName"),
            "organ_address": self.opt_text(kids, "OrganAdd"),
            "email": self.opt_text(kids, "Email"),
            "telephone": self.opt_text(kids, "Telephone"),
            "fax": self.opt_text(kids, "Fax"),
            "website": self.opt_text(kids, "Website"),
        }

    def code_of(self, element: Element | None, path: str) -> dict[str, Any] | None:
        if element is None:
            return None
        kids = _index(element)
        return {
            "code_number": self.need_text(element, kids, "CodeNumber", path),
            "code_notation": self.need_text(element, kids, "CodeNotation", path),
        }

    def promulgation(self, element: Element | None, path: str) -> dict[str, Any] | None:
        if element is None:
            return None
        kids = _index(element)
        when = self.need_text(element, kids, "PromulgationDate", path)
        return {
            "place": self.opt_text(kids, "Place"),
            "promulgation_date": self.date(when, f"{path}/PromulgationDate"),
        }

    def document_type(self, element: Element | None) -> dict[str, Any] | None:
        if element is None:
            return None
        kids = _index(element)
        return {
            "type": self.opt_text(kids, "Type"),
            "type_detail": self.opt_text(kids, "TypeDetail"),
            "type_name": self.opt_text(kids, "TypeName"),
        }

    def signer(self, element: Element | None) -> dict[str, Any] | None:
        if element is None:
            return None
        kids = _index(element)
        return {
            "competence": self.opt_text(kids, "Competence"),
            "position": self.opt_text(kids, "Position"),
            "full_name": self.opt_text(kids, "FullName"),
        }

    def other_info(self, element: Element | None, path: str) -> dict[str, Any] | None:
        if element is None:
            return None
        kids = _index(element)
        return {
            "priority": self.code(_PRIORITIES, self.opt_text(kids, "Priority"), f"{path}/Priority"),
            "sphere_of_promulgation": self.opt_text(kids, "SphereOfPromulgation"),
            "typer_notation": self.opt_text(kids, "TyperNotation"),
            "promulgation_amount": self.integer(
                self.opt_text(kids, "PromulgationAmount"), f"{path}/PromulgationAmount"
            ),
            "page_amount": self.integer(self.opt_text(kids, "PageAmount"), f"{path}/PageAmount"),
            "reply_fors": self.opt_text(kids, "ReplyFors"),
            "direction": self.boolean(self.opt_text(kids, "Direction"), f"{path}/Direction"),
            "reference_codes": self.opt_text(kids, "ReferenceCodes"),
            "appendixes": self.texts(self.one(kids, "Appendixes"), "Appendix"),
        }

    def response_for(self, element: Element, path: str) -> dict[str, Any] | None:
        # Some senders leave an empty template <ResponseFor> in new documents.
        if not _all_text(element):
            return None
        kids = _index(element)
        return {
            "organ_id": self.need_agency(element, kids, "OrganId", path),
            "code": self.response_code(element, kids, path),
            # The document answered is someone else's: its dates are relayed.
            "promulgation_date": self.relayed_date(
                self.opt_text(kids, "PromulgationDate"), f"{path}/PromulgationDate"
            ),
            "document_id": self.document_id(
                self.opt_text(kids, "DocumentId"), f"{path}/DocumentId", relayed=True
            ),
        }

    def response_code(self, parent: Element, kids: Children, path: str) -> str | None:
        element = self.one(kids, "Code")
        if element is not None:
            # The regulation writes "number/notation" as one text; some senders
            # reuse the structured Code of a document header here.
            inner = _index(element)
            number = self.opt_text(inner, "CodeNumber")
            notation = self.opt_text(inner, "CodeNotation")
            if number and notation:
                return f"{number}/{notation}"
        return self.need_text(parent, kids, "Code", path)

    # -- trace and business --------------------------------------------------------

    def trace_list(self, header: Element, header_kids: Children, required: bool) -> dict[str, Any]:
        path = "TraceHeaderList"
        trace_list = self.one(header_kids, path)
        if trace_list is None:
            if required:
                self.missing(header, path, "edXMLHeader")
            return {}
        kids = _index(trace_list)
        headers = kids.get("TraceHeader", [])
        if required and not headers:
            self.problem(
                Reason.MISSING_FIELD,
                f"{path}/TraceHeader",
                "a document needs at least one <TraceHeader> (the sender and the time it sent)",
            )
        trace = []
        for n, element in enumerate(headers, 1):
            where = f"{path}/TraceHeader[{n}]"
            inner = _index(element)
            trace.append(
                {
                    "organ_id": self.need_agency(element, inner, "OrganId", where),
                    "timestamp": self.relayed_timestamp(
                        self.need_text(element, inner, "Timestamp", where), f"{where}/Timestamp"
                    ),
                }
            )
        data: dict[str, Any] = {
            "trace": tuple(trace),
            # The official library's additions; the order of the children is free.
            "trace_paper": self.opt_text(kids, "Paper"),
            "trace_list_id": trace_list.get("id"),
            "trace_list_version": trace_list.get("version"),
        }
        business = self.one(kids, "Bussiness", "Business")
        if business is not None:
            data["business"] = self.business(business, f"{path}/{etree.QName(business).localname}")
        return data

    def business(self, element: Element, path: str) -> dict[str, Any]:
        kids = _index(element)
        doc_type_element = self.one(kids, "BussinessDocType", "BusinessDocType")
        if doc_type_element is None or not _text(doc_type_element):
            self.problem(
                Reason.MISSING_FIELD,
                f"{path}/BussinessDocType",
                "<BussinessDocType> is required (0 new, 1 revocation, 2 update, 3 replacement)",
            )
            doc_type = None
        else:
            doc_type = self.code(
                _BUSINESS_DOC_TYPES,
                _text(doc_type_element),
                f"{path}/{etree.QName(doc_type_element).localname}",
            )
        info = self.one(kids, "BussinessDocumentInfo", "BusinessDocumentInfo")
        replacements = self.one(kids, "ReplacementInfoList")
        staff = self.one(kids, "StaffInfo")
        return {
            "document_id": self.document_id(
                self.opt_text(kids, "DocumentId"), f"{path}/DocumentId", relayed=True
            ),
            "doc_type": doc_type,
            "reason": self.opt_text(kids, "BussinessDocReason", "BusinessDocReason"),
            "paper": self.opt_text(kids, "Paper"),
            "document_info": self.document_info(info, f"{path}/BussinessDocumentInfo"),
            "replacements": self.replacements(replacements, f"{path}/ReplacementInfoList"),
            "staff": self.staff(staff),
        }

    def document_info(self, element: Element | None, path: str) -> dict[str, Any] | None:
        if element is None:
            return None
        kids = _index(element)
        receivers = []
        receiver_list = self.one(kids, "ReceiverList")
        if receiver_list is not None:
            for n, receiver in enumerate(receiver_list.iterchildren(_NS + "Receiver"), 1):
                where = f"{path}/ReceiverList/Receiver[{n}]"
                inner = _index(receiver)
                receivers.append(
                    {
                        "organ_id": self.need_agency(receiver, inner, "OrganId", where),
                        "receiver_type": self.opt_text(inner, "ReceiverType"),
                    }
                )
        return {
            "document_info": self.opt_text(kids, "DocumentInfo"),
            "document_receiver": self.opt_text(kids, "DocumentReceiver"),
            "receivers": tuple(receivers),
        }

    def replacements(self, element: Element | None, path: str) -> tuple[dict[str, Any], ...]:
        if element is None:
            return ()
        found = []
        for n, info in enumerate(element.iterchildren(_NS + "ReplacementInfo"), 1):
            where = f"{path}/ReplacementInfo[{n}]"
            kids = _index(info)
            organ_list = self.one(kids, "OrganIdList")
            codes = [
                self.agency(text, f"{where}/OrganIdList/OrganId")
                for text in self.texts(organ_list, "OrganId")
            ]
            found.append(
                {
                    "document_id": self.document_id(
                        self.need_text(info, kids, "DocumentId", where),
                        f"{where}/DocumentId",
                        relayed=True,
                    ),
                    "organ_ids": tuple(codes),
                }
            )
        return tuple(found)

    def staff(self, element: Element | None) -> dict[str, Any] | None:
        if element is None:
            return None
        kids = _index(element)
        return {
            "department": self.opt_text(kids, "Department"),
            "department_id": self.opt_text(kids, "DepartmentId"),
            "staff": self.opt_text(kids, "Staff"),
            "staff_id": self.opt_text(kids, "StaffId"),
            "mobile": self.opt_text(kids, "Mobile"),
            "email": self.opt_text(kids, "Email"),
        }

    # -- body and attachments ----------------------------------------------------

    def manifest(self, envelope_kids: Children) -> dict[str, Any] | None:
        body = self.one(envelope_kids, "edXMLBody")
        if body is None:
            return None
        manifest = self.one(_index(body), "edXMLManifest")
        if manifest is None:
            return None
        references = []
        for n, reference in enumerate(manifest.iterchildren(_NS + "Reference"), 1):
            where = f"edXMLManifest/Reference[{n}]"
            kids = _index(reference)
            references.append(
                {
                    "content_id": self.need_text(reference, kids, "ContentId", where),
                    "content_type": self.opt_text(kids, "ContentType"),
                    "description": self.opt_text(kids, "Description"),
                    "attachment_name": self.opt_text(kids, "AttachmentName"),
                }
            )
        return {"version": manifest.get("version"), "references": tuple(references)}

    def attachments(self, top: Children, envelope_kids: Children) -> tuple[dict[str, Any], ...]:
        # AttachmentEncoded is the envelope's sibling; tolerate it inside too.
        encoded = self.one(top, "AttachmentEncoded")
        if encoded is None:
            encoded = self.one(envelope_kids, "AttachmentEncoded")
        if encoded is None:
            return ()
        found = []
        for n, attachment in enumerate(encoded.iterchildren(_NS + "Attachment"), 1):
            where = f"AttachmentEncoded/Attachment[{n}]"
            kids = _index(attachment)
            content = self.one(kids, "ContentTransferEncoded")
            if content is None:
                self.missing(attachment, "ContentTransferEncoded", where)
            found.append(
                {
                    "content_id": self.need_text(attachment, kids, "ContentId", where),
                    "attachment_name": self.opt_text(kids, "AttachmentName"),
                    "description": self.opt_text(kids, "Description"),
                    "field_name": self.opt_text(kids, "FieldName"),
                    "mime_type": self.opt_text(kids, "MimeType"),
                    "content_type": self.opt_text(kids, "ContentType"),
                    # Kept as text: decoding waits until someone asks for the file.
                    "encoded": (content.text or "").strip() if content is not None else "",
                    "_where": where,
                }
            )
        return tuple(found)

    def check_manifest(
        self, manifest: dict[str, Any] | None, attachments: tuple[dict[str, Any], ...]
    ) -> None:
        """Every file the manifest lists is attached; a nameless file takes the manifest's name."""
        by_key = {
            content_id_key(a["content_id"]): a for a in attachments if a["content_id"] is not None
        }
        references = manifest["references"] if manifest is not None else ()
        names_by_key = {}
        for n, reference in enumerate(references, 1):
            if reference["content_id"] is None:
                continue
            key = content_id_key(reference["content_id"])
            names_by_key[key] = reference["attachment_name"]
            if key not in by_key:
                self.problem(
                    Reason.MISSING_FIELD,
                    f"edXMLManifest/Reference[{n}]",
                    f"the manifest lists {reference['content_id']!r} but no attachment "
                    "has that ContentId",
                )
        for attachment in attachments:
            where = attachment.pop("_where")
            if attachment["attachment_name"] is None:
                key = content_id_key(attachment["content_id"] or "")
                attachment["attachment_name"] = names_by_key.get(key)
            if attachment["attachment_name"] is None:
                self.problem(
                    Reason.MISSING_FIELD,
                    f"{where}/AttachmentName",
                    "the attached file has no <AttachmentName>",
                )

    # -- status -----------------------------------------------------------------------

    def status(
        self, message: Element, kids: Children, header: Element, header_kids: Children
    ) -> dict[str, Any]:
        path = "MessageHeader"
        sender = self.need(message, kids, "From", path)
        responses = [element for element in kids.get("ResponseFor", []) if _all_text(element)]
        response: dict[str, Any] | None = None
        if not responses:
            self.problem(
                Reason.MISSING_FIELD,
                f"{path}/ResponseFor",
                "a status needs <ResponseFor> naming the document and its sender",
            )
        elif len(responses) > 1:
            self.problem(
                Reason.SCHEMA_INVALID,
                f"{path}/ResponseFor",
                f"a status reports on one document; this one has {len(responses)} <ResponseFor>",
            )
        else:
            response = self.response_for(responses[0], f"{path}/ResponseFor")
        status_code = self.need_text(message, kids, "StatusCode", path)
        timestamp = self.need_text(message, kids, "Timestamp", path)
        data = {
            "sender": self.organization(sender, f"{path}/From"),
            "response_for": response,
            "staff": self.staff(self.one(kids, "StaffInfo")),
            "status_code": self.code(_STATUS_CODES, status_code, f"{path}/StatusCode"),
            "description": self.opt_text(kids, "Description"),
            "timestamp": self.timestamp(timestamp, f"{path}/Timestamp"),
        }
        # Statuses rarely carry a trace; one that passed relays may. A
        # Bussiness block means nothing for a status and is left out.
        trace = self.trace_list(header, header_kids, required=False)
        trace.pop("business", None)
        data.update(trace)
        return data
