"""The XSD files themselves: valid XSD 1.0, compilable by both engines, in step with the code.

xmlschema (a second, independent XSD implementation) checks what libxml2
might let pass: the files against the XSD meta-schema, and the simple types
one value at a time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import xmlschema
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from exchange.agency import AgencyCode
from exchange.checks import schema as schema_check
from exchange.checks.schema import PackageKind, load_schema, schema_dir, use_schema_dir
from exchange.edxml.names import EDXML_NS
from exchange.settings import Settings
from exchange.status import BusinessDocType, Priority, StatusCode, SteeringType

XS = "http://www.w3.org/2001/XMLSchema"
REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
EDXML_XSDS = ("edxml-common.xsd", "edxml-document.xsd", "edxml-status.xsd")
ALL_XSDS = (*EDXML_XSDS, "xmldsig-signature.xsd")

# The limits of DESIGN.md section 2, in characters, by the simple type that
# carries each (ToPlaces/Place uses Content's 500: see edxml-common.xsd).
DESIGN_LIMITS = {
    "OrganName": 200,
    "OrganAdd": 250,
    "Email": 100,
    "PhoneNumber": 20,
    "CodeNumber": 11,
    "CodeNotation": 30,
    "Place": 50,
    "TypeName": 100,
    "Subject": 500,
    "Content": 500,
    "AttachmentName": 500,
}


def xsd(name: str) -> etree._Element:
    return etree.parse(str(SCHEMAS / name)).getroot()


@pytest.fixture(scope="module")
def common() -> xmlschema.XMLSchema10:
    return xmlschema.XMLSchema10(str(SCHEMAS / "edxml-common.xsd"))


def simple_type(common: xmlschema.XMLSchema10, name: str) -> xmlschema.validators.XsdType:
    return common.types[name]


def test_the_check_reads_the_schemas_of_this_repository() -> None:
    # The top-level schemas/ is a link to the package's data: one copy.
    assert schema_dir().resolve() == SCHEMAS.resolve()
    assert schema_dir().resolve() == (REPO / "exchange" / "schemas").resolve()


def test_schema_dir_can_be_moved_by_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LIENTHONG_SCHEMA_DIR", str(tmp_path))
    use_schema_dir(Settings().schema_dir)
    try:
        assert schema_dir() == tmp_path
    finally:
        use_schema_dir(None)


@pytest.fixture(scope="module")
def meta_schema() -> xmlschema.XMLSchema10:
    meta = xmlschema.XMLSchema10.meta_schema
    if not meta.built:
        meta.build()
    return meta


def test_the_meta_schema_check_finds_a_broken_xsd(meta_schema: xmlschema.XMLSchema10) -> None:
    broken = f'<xs:schema xmlns:xs="{XS}"><xs:element nam="x"/></xs:schema>'
    assert list(meta_schema.iter_errors(broken))


@pytest.mark.parametrize("name", ALL_XSDS)
def test_each_xsd_file_is_valid_against_the_xsd_meta_schema(
    meta_schema: xmlschema.XMLSchema10, name: str
) -> None:
    assert list(meta_schema.iter_errors(str(SCHEMAS / name))) == []


@pytest.mark.parametrize("kind", list(PackageKind))
def test_both_package_schemas_compile_in_xmlschema(kind: PackageKind) -> None:
    compiled = xmlschema.XMLSchema10(str(SCHEMAS / kind.xsd), validation="strict")
    assert compiled.target_namespace == EDXML_NS
    assert list(compiled.elements) == ["edXML"]


@pytest.mark.parametrize("kind", list(PackageKind))
def test_both_package_schemas_compile_in_libxml2_from_another_directory(
    kind: PackageKind, tmp_path: Path
) -> None:
    # As an installed package would find them through LIENTHONG_SCHEMA_DIR:
    # the includes must be relative, not tied to the repository.
    for name in ALL_XSDS:
        (tmp_path / name).write_bytes((SCHEMAS / name).read_bytes())
    compiled = load_schema(kind, tmp_path)
    assert isinstance(compiled, etree.XMLSchema)


@pytest.mark.parametrize("name", EDXML_XSDS)
def test_each_edxml_xsd_targets_the_qcvn_namespace_with_qualified_elements(name: str) -> None:
    root = xsd(name)
    assert root.get("targetNamespace") == EDXML_NS
    assert root.get("elementFormDefault") == "qualified"
    assert root.get("blockDefault") == "#all"


@pytest.mark.parametrize("name", ["edxml-document.xsd", "edxml-status.xsd"])
def test_document_and_status_share_the_common_file_by_include(name: str) -> None:
    includes = [i.get("schemaLocation") for i in xsd(name).iter(f"{{{XS}}}include")]
    assert includes == ["edxml-common.xsd"]


def test_no_named_type_or_group_is_declared_twice() -> None:
    declared: list[str] = []
    for name in EDXML_XSDS:
        root = xsd(name)
        for tag in ("simpleType", "complexType", "group"):
            declared += [node.get("name", "") for node in root.findall(f"{{{XS}}}{tag}")]
    duplicates = sorted({name for name in declared if declared.count(name) > 1})
    assert duplicates == []


@pytest.mark.parametrize(
    ("type_name", "enum"),
    [
        ("StatusCode", StatusCode),
        ("BusinessDocType", BusinessDocType),
        ("Priority", Priority),
        ("SteeringType", SteeringType),
    ],
)
def test_code_lists_in_the_xsd_are_those_of_exchange_status(
    common: xmlschema.XMLSchema10, type_name: str, enum: type
) -> None:
    enumeration = simple_type(common, type_name).enumeration
    assert sorted(enumeration) == sorted(member.value for member in enum)


@pytest.mark.parametrize(("type_name", "limit"), sorted(DESIGN_LIMITS.items()))
def test_length_limits_are_those_of_design_section_2(
    common: xmlschema.XMLSchema10, type_name: str, limit: int
) -> None:
    assert simple_type(common, type_name).max_length == limit


@given(st.from_regex(r"[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.[A-Z][0-9]{2}", fullmatch=True))
def test_every_well_formed_agency_code_is_accepted_by_the_xsd(
    common: xmlschema.XMLSchema10, code: str
) -> None:
    agency = simple_type(common, "AgencyCode")
    assert agency.is_valid(code)


@given(st.text(alphabet="0123456789.ABGHZaz٠١ \n", max_size=16))
def test_the_xsd_and_agency_py_agree_on_what_is_an_agency_code(
    common: xmlschema.XMLSchema10, text: str
) -> None:
    agency = simple_type(common, "AgencyCode")
    assert agency.is_valid(text) == AgencyCode.is_valid(text)


def test_agency_code_pattern_refuses_digits_from_other_scripts(
    common: xmlschema.XMLSchema10,
) -> None:
    # In XSD, \d is any Unicode digit; the pattern is written [0-9].
    agency = simple_type(common, "AgencyCode")
    assert agency.is_valid("000.00.00.G22")
    assert not agency.is_valid("٠٠٠.٠٠.٠٠.G22")


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("2018/09/28", True),
        ("28/09/2018", True),
        ("2018/12/31", True),
        ("2018-09-28", False),
        ("2018/9/28", False),
        ("2018/13/01", False),
        ("32/01/2018", False),
        ("2018/09/28 10:00:00", False),
        ("", False),
    ],
)
def test_dates_are_yyyy_mm_dd_or_dd_mm_yyyy(
    common: xmlschema.XMLSchema10, value: str, valid: bool
) -> None:
    assert simple_type(common, "Date").is_valid(value) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("2018/09/28 16:35:56", True),
        ("2018/09/28 00:00:00", True),
        ("2018/09/28 24:00:00", False),
        ("2018/09/28 16:35", False),
        ("2018-09-28T16:35:56", False),
        ("2018/09/28", False),
    ],
)
def test_timestamps_are_yyyy_mm_dd_hh_mm_ss(
    common: xmlschema.XMLSchema10, value: str, valid: bool
) -> None:
    assert simple_type(common, "Timestamp").is_valid(value) is valid


def test_the_free_order_tail_of_the_document_header_holds_what_the_check_counts() -> None:
    # schema.py counts these because XSD 1.0 cannot; they must be the
    # elements the XSD lets come in any order.
    header = xsd("edxml-document.xsd").find(
        f"{{{XS}}}complexType[@name='DocumentMessageHeader']/{{{XS}}}sequence"
    )
    assert header is not None
    tail = header.find(f"{{{XS}}}choice[@maxOccurs='unbounded']")
    assert tail is not None
    free = {element.get("name") for element in tail.findall(f"{{{XS}}}element")}
    assert set(schema_check._AT_MOST_ONCE_IN_DOCUMENT_HEADER) <= free
    assert free - set(schema_check._AT_MOST_ONCE_IN_DOCUMENT_HEADER) == {"ResponseFor"}
