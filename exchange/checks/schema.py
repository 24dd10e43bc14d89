"""The schema check: is a parsed package a well-shaped edXML document or status?

Runs right after :func:`exchange.edxml.safexml.parse`, against the project's
own XSDs in ``schemas/`` (no official XSD is public; see the comments at the
top of each file for the decisions they make). A package whose MessageHeader
has a StatusCode is a status and is checked against ``edxml-status.xsd``;
any other against ``edxml-document.xsd``.

Validation is libxml2's (through lxml), which is fast and reports every
problem it finds, each with the node it concerns. Its messages name elements
in Clark notation and speak of facets and atomic types; this module turns
each into a :class:`~exchange.reasons.Problem` a clerk can act on: an element
path such as ``/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/To[2]/OrganId``
and a sentence such as "the agency code '28.22.H17' has 3 groups; it needs 4,
written DDD.DD.DD.LNN (for example 000.00.00.G22)".

xmlschema was tried on the failure path for richer messages and gave no more
than libxml2 on any failure the tests cover (it stops at the first problem in
a group and names the expected element no better), so it is used only by the
tests, to check the XSD files themselves.

The XSDs are package data (``exchange/schemas/``, see
:mod:`exchange.installation`), or sit in the directory of the setting
``schema_dir`` (``LIENTHONG_SCHEMA_DIR``, a schema under test), which a
process hands to :func:`use_schema_dir` when it starts. A file
missing or broken there is :class:`~exchange.installation.BrokenInstallation`,
never a rejection: no package is at fault. :func:`check_schema_files` loads
them all, for a worker to refuse to start without them.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path

from lxml import etree

from exchange.agency import AgencyCode, InvalidAgencyCode
from exchange.edxml.names import BODY, EDXML_NS, ENVELOPE, HEADER, MESSAGE_HEADER, ROOT, q
from exchange.edxml.safexml import new_parser
from exchange.installation import BrokenInstallation, data_dir
from exchange.reasons import Problem, Reason, Rejection
from exchange.status import BusinessDocType, Priority, StatusCode, SteeringType

SCHEMA_DIR_VARIABLE = "LIENTHONG_SCHEMA_DIR"
DOCUMENT_XSD = "edxml-document.xsd"
STATUS_XSD = "edxml-status.xsd"
COMMON_XSD = "edxml-common.xsd"

# A clerk fixes the first problems and sends again; a hostile package with
# thousands of bad fields must not turn its rejection into a megabyte.
MAX_PROBLEMS = 20
# Values are quoted in sentences; an attachment's base64 is not.
MAX_QUOTED_CHARS = 60

_XS_NS = "http://www.w3.org/2001/XMLSchema"
_MESSAGE_HEADER_PATH = (ENVELOPE, HEADER, MESSAGE_HEADER)
_STATUS_CODE_PATH = (*_MESSAGE_HEADER_PATH, q("StatusCode"))
_TO_PATH = (*_MESSAGE_HEADER_PATH, q("To"))
_BODY_PATH = (ENVELOPE, BODY)

# XSD 1.0 cannot say "in any order, each at most once" next to the repeated
# To, so edxml-document.xsd lets the tail of MessageHeader come in any order
# and this check counts these (ResponseFor may repeat; DocumentId may sit
# after To or in the tail, but only once).
_AT_MOST_ONCE_IN_DOCUMENT_HEADER = (
    "DocumentId",
    "OtherInfo",
    "SteeringType",
    "ToPlaces",
    "ResponseForTask",
    "ApplicationType",
)
_AT_MOST_ONCE_TAGS = {q(name): name for name in _AT_MOST_ONCE_IN_DOCUMENT_HEADER}
# The two spellings of TraceHeaderList's business block.
_BUSINESS_NAMES = ("Bussiness", "Business")


class PackageKind(Enum):
    """Which schema a package is checked against."""

    DOCUMENT = "document"
    STATUS = "status"

    @property
    def xsd(self) -> str:
        """The XSD file name in the schema directory."""
        return DOCUMENT_XSD if self is PackageKind.DOCUMENT else STATUS_XSD


# The directory of Settings.schema_dir, given by the process at its start.
_directory: Path | None = None


def use_schema_dir(directory: Path | None) -> None:
    """Take the XSDs from ``directory`` (``Settings.schema_dir``); ``None``: the package's.

    Called once when a process starts, before any package is checked: each
    thread compiles the XSDs on its first package and keeps them.
    """
    global _directory
    _directory = directory
    _schema_facts.cache_clear()


def schema_dir() -> Path:
    """Where the XSDs are: ``Settings.schema_dir`` as given to :func:`use_schema_dir`, else the
    package's ``schemas/``."""
    return _directory or data_dir("schemas")


def package_kind(root: etree._Element) -> PackageKind:
    """A status if its MessageHeader has a StatusCode, else a document.

    A package with neither StatusCode nor To nor edXMLBody is also taken for
    a status (one that lost its StatusCode): it has nothing of a document,
    and "StatusCode is missing" helps its sender more than a list of what a
    document would need.
    """
    if _first(root, _STATUS_CODE_PATH) is not None:
        return PackageKind.STATUS
    if _first(root, _TO_PATH) is None and _first(root, _BODY_PATH) is None:
        return PackageKind.STATUS
    return PackageKind.DOCUMENT


def _first(root: etree._Element, path: tuple[str, ...]) -> etree._Element | None:
    """``root.find("a/b/c")`` for a path of child tags, without ElementPath's cost."""
    found = [root]
    for tag in path:
        found = [child for parent in found for child in parent.iterchildren(tag)]
    return found[0] if found else None


def schema_problems(root: etree._Element) -> list[Problem]:
    """Everything wrong with the package's shape, as problems for a clerk; empty if none."""
    wrong_root = _wrong_root(root)
    if wrong_root is not None:
        return [wrong_root]
    kind = package_kind(root)
    schema = _schema(kind)
    problems: list[Problem] = []
    if not schema.validate(root):
        problems.extend(_translate(schema.error_log, root, _schema_facts(kind)))
    if kind is PackageKind.DOCUMENT:
        problems.extend(_repeated_in_document_header(root))
    return _capped(_unique(problems))


def check_schema(root: etree._Element) -> None:
    """Raise :class:`Rejection` unless the package is a well-shaped edXML package.

    The reason is ``NOT_EDXML`` when the root is not edXML's, else
    ``SCHEMA_INVALID`` with every problem found (up to :data:`MAX_PROBLEMS`).
    """
    wrong_root = _wrong_root(root)
    if wrong_root is not None:
        raise Rejection(Reason.NOT_EDXML, (wrong_root,))
    problems = schema_problems(root)
    if problems:
        raise Rejection(_most_specific(problems), tuple(problems))


def _most_specific(problems: list[Problem]) -> Reason:
    """The one specific reason all problems share (all dates, all missing), else SCHEMA_INVALID.

    Agency software and metrics then tell a bad date from a missing subject
    by the code alone; mixed problems keep the general reason.
    """
    reasons = {problem.reason for problem in problems}
    if len(reasons) == 1 and None not in reasons:
        (reason,) = reasons
        assert reason is not None
        return reason
    return Reason.SCHEMA_INVALID


# -- loading the schemas ----------------------------------------------------

# libxml2's compiled schema is read-only and safe to share, but lxml keeps the
# error log on the XMLSchema object, so two threads validating with one object
# would read each other's errors. Each thread compiles its own, once.
_per_thread = threading.local()
# Compiling, though, is not thread-safe: threads compiling at once (a new
# worker's first messages, each on its own executor thread) fail with
# "Internal error: xmlSchemaPValAttrNodeValue, the given type is not a
# built-in type" or "Document is not valid XML Schema", and sometimes crash
# the process (SIGSEGV, seen in tests/integration/test_crash_safety.py).
# One compilation at a time; it happens once per thread and kind.
_compiling = threading.Lock()


def _schema(kind: PackageKind) -> etree.XMLSchema:
    schemas: dict[PackageKind, etree.XMLSchema] | None = getattr(_per_thread, "schemas", None)
    if schemas is None:
        schemas = _per_thread.schemas = {}
    schema = schemas.get(kind)
    if schema is None:
        with _compiling:
            schema = schemas[kind] = load_schema(kind)
    return schema


def load_schema(kind: PackageKind, directory: Path | None = None) -> etree.XMLSchema:
    """Compile the XSD for ``kind`` from ``directory`` (default :func:`schema_dir`).

    Raises :class:`BrokenInstallation` when a file is missing or broken.
    """
    path = (directory or schema_dir()) / kind.xsd
    try:
        # Includes are resolved relative to the file, at compilation.
        return etree.XMLSchema(_read_xsd(path))
    except etree.XMLSchemaParseError as error:  # an include missing or broken
        raise _broken(path, error) from None


def check_schema_files(directory: Path | None = None) -> None:
    """Load and compile every XSD now; raise :class:`BrokenInstallation` if one cannot be.

    A worker calls this before it starts: without its schemas it could
    judge no package, and must not take messages to find that out.
    """
    for kind in PackageKind:
        load_schema(kind, directory)
        _read_schema_facts(kind, directory or schema_dir())


def _read_xsd(path: Path) -> etree._ElementTree:
    if not path.is_file():
        raise _broken(path, "no such file")
    try:
        # Our own files, but read with the hardened parser all the same: no
        # DTD, no network.
        return etree.parse(str(path), new_parser())
    except (OSError, etree.XMLSyntaxError) as error:
        raise _broken(path, error) from None


def _broken(path: Path, error: Exception | str) -> BrokenInstallation:
    cause = _CLARK.sub("", str(error)).strip().splitlines()
    return BrokenInstallation(
        f"cannot load the edXML schema {path} ({cause[0] if cause else type(error).__name__}); "
        f"reinstall lienthong, or point {SCHEMA_DIR_VARIABLE} at a folder holding every XSD"
    )


@dataclass(frozen=True)
class _SchemaFacts:
    """What the sentences need to know about the XSDs, read from the files themselves.

    libxml2 quotes the pattern a value failed, not its type, and lists the
    element it expected without saying whether that one was required; these
    tables answer both without repeating the XSDs here.
    """

    # xs:pattern value -> name of the simple type declaring it
    pattern_types: dict[str, str]
    # (parent local name, child local name) for every child that must be present
    required_children: frozenset[tuple[str, str]]


@cache
def _schema_facts(kind: PackageKind) -> _SchemaFacts:
    return _read_schema_facts(kind, schema_dir())


def _read_schema_facts(kind: PackageKind, directory: Path) -> _SchemaFacts:
    trees = [_read_xsd(directory / xsd).getroot() for xsd in (COMMON_XSD, kind.xsd)]
    patterns: dict[str, str] = {}
    owners: dict[str, set[str]] = {}  # complex type name -> names of elements of that type
    for tree in trees:
        for simple_type in tree.iterfind(f".//{{{_XS_NS}}}simpleType[@name]"):
            for pattern in simple_type.iterfind(f".//{{{_XS_NS}}}pattern"):
                patterns[pattern.get("value", "")] = simple_type.get("name", "")
        for declaration in tree.iterfind(f".//{{{_XS_NS}}}element[@type]"):
            type_name = declaration.get("type", "").rpartition(":")[2]
            owners.setdefault(type_name, set()).add(declaration.get("name", ""))
    required: set[tuple[str, str]] = set()
    for tree in trees:
        for declaration in tree.iterfind(f".//{{{_XS_NS}}}element[@name]"):
            parents = _declared_parents(declaration, owners)
            if parents and _always_present(declaration):
                name = declaration.get("name", "")
                required.update((parent, name) for parent in parents)
    return _SchemaFacts(patterns, frozenset(required))


def _declared_parents(declaration: etree._Element, owners: dict[str, set[str]]) -> set[str]:
    """Names of the elements whose content declares ``declaration``."""
    node = declaration.getparent()
    while node is not None and node.tag != f"{{{_XS_NS}}}complexType":
        node = node.getparent()
    if node is None:
        return set()  # a global element: the root
    if node.get("name"):
        return owners.get(node.get("name", ""), set())
    holder = node.getparent()
    return {holder.get("name", "")} if holder is not None else set()


def _always_present(declaration: etree._Element) -> bool:
    """Whether every valid parent must contain the element (min occurs >= 1 all the way up)."""
    node: etree._Element | None = declaration
    while node is not None and node.tag != f"{{{_XS_NS}}}complexType":
        if node.get("minOccurs") == "0":
            return False
        parent = node.getparent()
        if (
            parent is not None
            and parent.tag == f"{{{_XS_NS}}}choice"
            and len([c for c in parent if c.tag != f"{{{_XS_NS}}}annotation"]) > 1
        ):
            return False  # one alternative of several
        node = parent
    return True


# -- the checks XSD 1.0 cannot express ----------------------------------------


def _repeated_in_document_header(root: etree._Element) -> Iterator[Problem]:
    header = _first(root, _MESSAGE_HEADER_PATH)
    if header is None:
        return
    counts: Counter[str] = Counter()
    for child in header:
        name = _AT_MOST_ONCE_TAGS.get(child.tag)
        if name is not None:
            counts[name] += 1
            if counts[name] == 2:
                yield Problem(element_path(child), f"element {name} may appear only once")


def _wrong_root(root: etree._Element) -> Problem | None:
    if root.tag == ROOT:
        return None
    name = etree.QName(root)
    namespace = f"namespace {name.namespace}" if name.namespace else "no namespace"
    found = f"<{name.localname}> in {namespace}"
    return Problem(
        "/" + name.localname,
        f"the package starts with {found}; an edXML package starts with <edXML> "
        f"in namespace {EDXML_NS}",
    )


# -- turning libxml2's messages into sentences --------------------------------

# "Element '{ns}Name': message" or "Element '{ns}Name', attribute 'a': message"
_SUBJECT = re.compile(r"^Element '(?P<element>[^']*)'(?:, attribute '(?P<attribute>[^']*)')?: ")
_CLARK = re.compile(r"\{[^}]*\}")
_FACET = re.compile(r"\[facet '[^']*'\] ")
# libxml2 cuts its messages at 64,000 characters, so a huge value may come
# without the pattern after it.
_PATTERN = re.compile(
    r"\[facet 'pattern'\] The value '(?P<value>.*?)"
    r"(?:' is not accepted by the pattern '(?P<pattern>.*)'\.)?$",
    re.DOTALL,
)
_ENUMERATION = re.compile(
    r"\[facet 'enumeration'\] The value '(?P<value>.*?)"
    r"(?:' is not an element of the set \{(?P<allowed>.*)\}\.)?$",
    re.DOTALL,
)
_MAX_LENGTH = re.compile(
    r"\[facet 'maxLength'\] The value has a length of '(?P<length>\d+)'; "
    r"this exceeds the allowed maximum length of '(?P<limit>\d+)'"
)
_MIN_LENGTH = re.compile(r"\[facet 'minLength'\] The value has a length of '(?P<length>\d+)'")
_ATOMIC = re.compile(
    r"'(?P<value>.*)' is not a valid value of the (?:atomic|list|union) type "
    r"'(?P<type>[^']*)'\.$",
    re.DOTALL,
)
_NOT_EXPECTED = re.compile(
    r"^This element is not expected\.(?: Expected is (?:one of )?"
    r"\( (?P<expected>.*) \)\.)?$",
    re.DOTALL,
)
_MISSING = re.compile(
    r"^Missing child element\(s\)\. Expected is (?:one of )?"
    r"\( (?P<expected>.*) \)\.$",
    re.DOTALL,
)

# The code lists as exchange/status.py names them (one source of truth): the
# XSD's enumerations are these values, which a test keeps in step.
_CODE_LISTS: dict[frozenset[str], tuple[str, type[Enum]]] = {
    frozenset(member.value for member in enum): (label, enum)
    for label, enum in (
        ("status code", StatusCode),
        ("business document type", BusinessDocType),
        ("priority", Priority),
        ("steering type", SteeringType),
    )
}

# How values of the XSD's patterned simple types must be written.
_WRITTEN_AS = {
    "Date": "a date written yyyy/MM/dd (or dd/MM/yyyy)",
    "Timestamp": "a date and time written yyyy/MM/dd HH:mm:ss",
    "SmallCode": "a code of one or two digits",
}

# The specific reason a value of these simple types stands for.
_PATTERN_REASONS = {
    "AgencyCode": Reason.BAD_AGENCY_CODE,
    "Date": Reason.BAD_DATE,
    "Timestamp": Reason.BAD_DATE,
    "SmallCode": Reason.BAD_CODE_LIST,
}

_BUILTIN_TYPES = {
    "xs:boolean": "must be true or false (or 1 or 0)",
    "xs:nonNegativeInteger": "must be a whole number, 0 or more",
}


def _translate(
    log: etree._ListErrorLog, root: etree._Element, facts: _SchemaFacts
) -> Iterator[Problem]:
    reported: set[str] = set()
    for count, entry in enumerate(log):
        if count > MAX_PROBLEMS:
            # Enough to report; the rest is not read (a hostile package may
            # carry thousands of errors).
            return
        element = _element_at(root, entry.path)
        where = element_path(element) if element is not None else _strip_prefixes(entry.path)
        # libxml2 may say more than once what is wrong with one value (a
        # facet, then the type; or "no elements here", then "empty"): the
        # first says it best.
        if where in reported and _about_value(entry.message):
            continue
        reported.add(where)
        yield _problem(entry.message, where, element, facts)


def _about_value(message: str) -> bool:
    return any(
        pattern.search(message) is not None
        for pattern in (_PATTERN, _ENUMERATION, _MAX_LENGTH, _MIN_LENGTH, _ATOMIC)
    )


def _problem(
    message: str, where: str, element: etree._Element | None, facts: _SchemaFacts
) -> Problem:
    subject = _SUBJECT.match(message)
    if subject is None:
        return Problem(where, _plain(message))
    name = _local(subject["element"])
    attribute = subject["attribute"]
    detail = message[subject.end() :].strip()
    if attribute is not None:
        return Problem(where, _attribute_sentence(name, _local(attribute), detail))
    if (match := _PATTERN.search(detail)) is not None:
        kind = facts.pattern_types.get(match["pattern"] or "", "")
        return Problem(
            where, _pattern_sentence(name, match["value"], kind), _PATTERN_REASONS.get(kind)
        )
    if (match := _ENUMERATION.search(detail)) is not None:
        sentence = _enumeration_sentence(match["value"], match["allowed"] or "")
        return Problem(where, sentence, Reason.BAD_CODE_LIST)
    if (match := _MAX_LENGTH.search(detail)) is not None:
        return Problem(
            where,
            f"the text of {name} is {match['length']} characters long; "
            f"at most {match['limit']} are allowed",
        )
    if _MIN_LENGTH.search(detail) is not None:
        return Problem(where, f"element {name} is empty; it must be filled in")
    if (match := _ATOMIC.search(detail)) is not None:
        return Problem(where, _atomic_sentence(match["value"], match["type"], name))
    if (match := _MISSING.search(detail)) is not None:
        sentence = _missing_sentence(name, _names(match["expected"]), facts)
        return Problem(where, sentence, Reason.MISSING_FIELD)
    if (match := _NOT_EXPECTED.search(detail)) is not None:
        return _unexpected(name, _names(match["expected"] or ""), where, element, facts)
    if detail.startswith("Element content is not allowed"):
        return Problem(where, f"element {name} must hold only text, not other elements")
    if detail.startswith("Character content other than whitespace is not allowed"):
        return Problem(where, f"element {name} must hold only elements, not text")
    return Problem(where, _plain(detail))


def _pattern_sentence(name: str, value: str, kind: str) -> str:
    """Say what is wrong with ``value``, of the simple type named ``kind``."""
    written = _WRITTEN_AS.get(kind)
    if written is not None and not value.strip():
        return f"element {name} is empty; it must hold {written}"
    if written is not None:
        return f"value {_quote(value)} is not {written}"
    if kind == "AgencyCode":
        # agency.py explains best what is wrong with a code, quoting it whole:
        # ask it only about values short enough to quote.
        reason = f"the agency code {_quote(value)} is not of the form DDD.DD.DD.LNN"
        if len(value) <= MAX_QUOTED_CHARS:
            try:
                AgencyCode.parse(value)
            except InvalidAgencyCode as error:
                reason = str(error)
        if "DDD.DD.DD.LNN" not in reason:
            reason += "; agency codes are written DDD.DD.DD.LNN, for example 000.00.00.G22"
        return reason
    return f"value {_quote(value)} is not in the required form"


def _enumeration_sentence(value: str, allowed: str) -> str:
    values = re.findall(r"'([^']*)'", allowed)
    known = _CODE_LISTS.get(frozenset(values))
    if not values:  # the message was cut before the list
        return f"value {_quote(value)} is not in its code list"
    if known is None:
        return f"value {_quote(value)} is not allowed; allowed: {', '.join(values)}"
    label, enum = known
    choices = ", ".join(
        f"{member.value} ({member.name.lower().replace('_', ' ')})" for member in enum
    )
    return f"value {_quote(value)} is not a {label}; allowed: {choices}"


def _atomic_sentence(value: str, type_name: str, name: str) -> str:
    builtin = _BUILTIN_TYPES.get(type_name)
    if builtin is not None:
        return f"value {_quote(value)} of {name} {builtin}"
    return f"value {_quote(value)} is not a valid {_local(type_name)}"


def _attribute_sentence(element: str, attribute: str, detail: str) -> str:
    if "is not allowed" in detail:
        return f"attribute {attribute} is not allowed on element {element}"
    if "is required but missing" in detail:
        return f"attribute {attribute} is missing on element {element}"
    if "xsi:type" in detail:
        return f"element {element} may not change its type with xsi:type"
    return f"attribute {attribute} of element {element}: {_plain(detail)}"


def _missing_sentence(parent: str, expected: list[str], facts: _SchemaFacts) -> str:
    # For an xs:all, libxml2 lists every child not yet seen, optional ones
    # too: name only those that must be there.
    required = [name for name in expected if (parent, name) in facts.required_children]
    missing = required or expected
    if len(missing) == 1:
        return f"element {missing[0]} is missing"
    return f"elements are missing: {', '.join(missing)}"


def _unexpected(
    name: str,
    expected: list[str],
    where: str,
    element: etree._Element | None,
    facts: _SchemaFacts,
) -> Problem:
    parent = element.getparent() if element is not None else None
    if element is not None and parent is not None:
        siblings = [child for child in parent if isinstance(child.tag, str)]
        names = [etree.QName(child).localname for child in siblings]
        before = names[: siblings.index(element)]
        if name == "TraceHeader" and name in before:
            # TraceHeaders repeat, but all on one side of the Bussiness block.
            return Problem(
                where,
                "the TraceHeader elements must come together, all before or all after "
                f"{next((n for n in before if n in _BUSINESS_NAMES), 'Bussiness')}",
            )
        if name in before and name not in expected:
            return Problem(where, f"element {name} may appear only once here")
        required = (etree.QName(parent).localname, expected[0]) if len(expected) == 1 else None
        if required in facts.required_children and expected[0] not in names:
            # The one element that had to come here is nowhere: say that,
            # at the parent, rather than blaming the element after the gap.
            return Problem(
                element_path(parent),
                f"element {expected[0]} is missing (before {name})",
                Reason.MISSING_FIELD,
            )
    if not expected:
        return Problem(where, f"element {name} is not allowed here")
    if len(expected) == 1:
        return Problem(where, f"element {name} is not allowed here; expected {expected[0]}")
    return Problem(
        where, f"element {name} is not allowed here; expected one of: {', '.join(expected)}"
    )


# -- paths and names ------------------------------------------------------------


def element_path(element: etree._Element) -> str:
    """The element's path by local names, with [n] where a name repeats: ``.../To[2]/OrganId``."""
    steps: list[str] = []
    node: etree._Element | None = element
    while node is not None:
        parent = node.getparent()
        name = etree.QName(node).localname
        if parent is not None:
            same = [child for child in parent if child.tag == node.tag]
            if len(same) > 1:
                name = f"{name}[{same.index(node) + 1}]"
        steps.append(name)
        node = parent
    return "/" + "/".join(reversed(steps))


_STEP = re.compile(r"^(?:(?P<prefix>[^:\[\]]+):(?P<name>[^\[\]]+)|\*)(?:\[(?P<index>\d+)\])?$")


def _element_at(root: etree._Element, path: str | None) -> etree._Element | None:
    """The element libxml2's node path points at, or ``None`` if it cannot be followed.

    libxml2 writes each step as ``prefix:name[n]`` (the n-th sibling with
    that name and prefix) or, for an element in a default namespace,
    ``*[n]`` (the n-th element sibling). Walking the steps needs no
    namespace map, so it works whatever prefixes the sender chose.
    """
    if not path or not path.startswith("/"):
        return None
    node: etree._Element | None = None
    for step in path[1:].split("/"):
        match = _STEP.match(step)
        if match is None:
            return None
        candidates = [root] if node is None else [c for c in node if isinstance(c.tag, str)]
        if match["name"] is not None:
            candidates = [
                c
                for c in candidates
                if etree.QName(c).localname == match["name"] and c.prefix == match["prefix"]
            ]
        index = int(match["index"] or 1) - 1
        if index >= len(candidates):
            return None
        node = candidates[index]
    return node


def _strip_prefixes(path: str | None) -> str:
    return re.sub(r"[A-Za-z_][\w.-]*:", "", path or "")


def _local(name: str) -> str:
    return _CLARK.sub("", name)


def _names(listing: str) -> list[str]:
    """Local names from libxml2's "{ns}A, {ns}B", each once, in order."""
    names: list[str] = []
    for item in listing.split(","):
        name = _local(item.strip())
        if name and name not in names:
            names.append(name)
    return names


def _plain(message: str) -> str:
    """A message libxml2 wrote that no rule above rewrites, without namespaces, kept short."""
    plain = _FACET.sub("", _CLARK.sub("", message)).strip()
    return plain if len(plain) <= 4 * MAX_QUOTED_CHARS else plain[: 4 * MAX_QUOTED_CHARS] + "..."


def _quote(value: str) -> str:
    if len(value) > MAX_QUOTED_CHARS:
        value = value[:MAX_QUOTED_CHARS] + "..."
    return repr(value)


def _unique(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


def _capped(problems: list[Problem]) -> list[Problem]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [
        *problems[:MAX_PROBLEMS],
        Problem("", f"more problems were found; only the first {MAX_PROBLEMS} are listed"),
    ]
