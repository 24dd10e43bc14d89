"""The schema check accepts what real senders write and tells a clerk what to fix in the rest."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from exchange.checks.schema import (
    MAX_PROBLEMS,
    PackageKind,
    check_schema,
    package_kind,
    schema_problems,
)
from exchange.edxml.safexml import parse
from exchange.reasons import Problem, Reason, Rejection
from exchange.status import StatusCode
from tests.packages import document_package

HEADER = "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader"

DOCUMENT = document_package()

# A status package shaped like status_acceptance_03.edxml.
STATUS = """<?xml version="1.0" encoding="UTF-8"?>
<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016">
  <edXML:edXMLEnvelope xmlns:edXML="http://www.mic.gov.vn/TBT/QCVN_102_2016">
    <edXML:edXMLHeader>
      <edXML:MessageHeader>
        <edXML:From>
          <edXML:OrganId>000.00.00.H41</edXML:OrganId>
          <edXML:OrganName>UBND Tỉnh Nghệ An</edXML:OrganName>
          <edXML:OrganizationInCharge>UBND Tỉnh Nghệ An</edXML:OrganizationInCharge>
        </edXML:From>
        <edXML:ResponseFor>
          <edXML:OrganId>000.00.00.G22</edXML:OrganId>
          <edXML:Code>7816/VPCP-TTĐT</edXML:Code>
          <edXML:PromulgationDate>2018/09/28</edXML:PromulgationDate>
          <edXML:DocumentId>000.00.00.G22,2018/09/28,7816/VPCP-TTĐT</edXML:DocumentId>
        </edXML:ResponseFor>
        <edXML:StaffInfo>
          <edXML:Department>Phong hanh chinh</edXML:Department>
          <edXML:Staff>Nguyen thi ngoc tram</edXML:Staff>
          <edXML:Mobile>84912000001</edXML:Mobile>
          <edXML:Email>ngoctram@nghean.vn</edXML:Email>
        </edXML:StaffInfo>
        <edXML:StatusCode>03</edXML:StatusCode>
        <edXML:Description>Tiếp nhận văn bản điện tử</edXML:Description>
        <edXML:Timestamp>2018/09/28 17:25:11</edXML:Timestamp>
      </edXML:MessageHeader>
    </edXML:edXMLHeader>
  </edXML:edXMLEnvelope>
</edXML>
"""


def edited(xml: str, old: str, new: str, count: int = 1) -> str:
    """``xml`` with ``old`` replaced; fails loudly if ``old`` is not there."""
    assert old in xml, f"the test's template has no {old!r}"
    return xml.replace(old, new, count)


def problems_of(xml: str) -> list[Problem]:
    return schema_problems(parse(xml.encode("utf-8")))


def text_of(problems: list[Problem]) -> str:
    return "\n".join(str(problem) for problem in problems)


# -- the templates are valid, so every failure below is the edit's -------------


def test_a_sample_like_document_is_valid() -> None:
    assert problems_of(DOCUMENT) == []


def test_a_sample_like_status_is_valid() -> None:
    assert problems_of(STATUS) == []


def test_check_schema_passes_a_valid_package_silently() -> None:
    assert check_schema(parse(DOCUMENT.encode())) is None


def test_check_schema_refuses_an_invalid_package_with_every_problem() -> None:
    xml = edited(DOCUMENT, "<edXML:Priority>0", "<edXML:Priority>7")
    xml = edited(xml, "<edXML:CodeNumber>7816", "<edXML:CodeNumber>781612345678")
    with pytest.raises(Rejection) as caught:
        check_schema(parse(xml.encode()))
    assert caught.value.reason is Reason.SCHEMA_INVALID
    assert {problem.where for problem in caught.value.problems} == {
        f"{HEADER}/OtherInfo/Priority",
        f"{HEADER}/Code/CodeNumber",
    }


def test_a_package_that_is_not_edxml_is_refused_as_such() -> None:
    xml = edited(DOCUMENT, 'xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016">', 'xmlns="urn:x">')
    with pytest.raises(Rejection) as caught:
        check_schema(parse(xml.encode()))
    assert caught.value.reason is Reason.NOT_EDXML
    assert "http://www.mic.gov.vn/TBT/QCVN_102_2016" in caught.value.problems[0].what


# -- choosing the schema ----------------------------------------------------------


def test_a_package_with_a_status_code_is_checked_as_a_status() -> None:
    assert package_kind(parse(STATUS.encode())) is PackageKind.STATUS
    assert package_kind(parse(DOCUMENT.encode())) is PackageKind.DOCUMENT


def test_a_status_that_lost_its_status_code_is_told_so() -> None:
    xml = edited(STATUS, "<edXML:StatusCode>03</edXML:StatusCode>", "")
    assert problems_of(xml) == [
        Problem(HEADER, "element StatusCode is missing (before Description)")
    ]


def test_a_status_may_not_carry_a_document_body() -> None:
    xml = edited(
        STATUS,
        "</edXML:edXMLHeader>",
        "</edXML:edXMLHeader><edXML:edXMLBody><edXML:edXMLManifest/></edXML:edXMLBody>",
    )
    assert problems_of(xml) == [
        Problem("/edXML/edXMLEnvelope/edXMLBody", "element edXMLBody is not allowed here")
    ]


# -- missing, misplaced and unknown elements -----------------------------------------


def test_a_missing_required_element_is_named_at_its_parent() -> None:
    xml = re.sub(r"<edXML:Subject>.*?</edXML:Subject>", "", DOCUMENT)
    assert problems_of(xml) == [Problem(HEADER, "element Subject is missing (before Content)")]


def test_a_missing_child_of_an_any_order_element_is_named() -> None:
    xml = edited(DOCUMENT, "<edXML:OrganName>UBND Tỉnh Cao Bằng</edXML:OrganName>", "")
    assert problems_of(xml) == [Problem(f"{HEADER}/To[2]", "element OrganName is missing")]


def test_several_missing_children_are_all_named() -> None:
    xml = edited(DOCUMENT, "<edXML:OrganName>UBND Tỉnh Cao Bằng</edXML:OrganName>", "")
    xml = edited(xml, "<edXML:OrganId>000.00.00.H14</edXML:OrganId>", "")
    assert problems_of(xml) == [
        Problem(f"{HEADER}/To[2]", "elements are missing: OrganId, OrganName")
    ]


def test_an_element_in_the_wrong_place_is_shown_where_it_is_with_what_belongs_there() -> None:
    xml = edited(DOCUMENT, "<edXML:DueDate>2018/10/28</edXML:DueDate>", "")
    xml = edited(
        xml, "</edXML:TraceHeader>", "</edXML:TraceHeader><edXML:DueDate>2018/10/28</edXML:DueDate>"
    )
    assert problems_of(xml) == [
        Problem(
            "/edXML/edXMLEnvelope/edXMLHeader/TraceHeaderList/DueDate",
            "element DueDate is not allowed here; "
            "expected one of: TraceHeader, Bussiness, Business",
        )
    ]


def test_an_unknown_extension_element_is_refused_not_called_a_missing_one() -> None:
    xml = edited(DOCUMENT, "<edXML:Subject>", "<edXML:Urgency>high</edXML:Urgency><edXML:Subject>")
    assert problems_of(xml) == [
        Problem(f"{HEADER}/Urgency", "element Urgency is not allowed here; expected Subject")
    ]


def test_an_unknown_element_at_the_end_is_refused() -> None:
    xml = edited(DOCUMENT, "</edXML:MessageHeader>", "<Extra/></edXML:MessageHeader>")
    assert problems_of(xml) == [Problem(f"{HEADER}/Extra", "element Extra is not allowed here")]


def test_an_unknown_attribute_is_refused() -> None:
    xml = edited(DOCUMENT, "<edXML:Subject>", '<edXML:Subject lang="vi">')
    assert problems_of(xml) == [
        Problem(f"{HEADER}/Subject", "attribute lang is not allowed on element Subject")
    ]


def test_a_single_element_given_twice_is_refused() -> None:
    xml = edited(
        DOCUMENT, "</edXML:To>", "<edXML:OrganName>Trùng</edXML:OrganName></edXML:To>", count=1
    )
    assert problems_of(xml) == [
        Problem(f"{HEADER}/To[1]/OrganName[2]", "element OrganName may appear only once here")
    ]


@pytest.mark.parametrize(
    "element",
    [
        "<edXML:OtherInfo><edXML:Priority>1</edXML:Priority></edXML:OtherInfo>",
        "<edXML:SteeringType>0</edXML:SteeringType>",
        "<edXML:ToPlaces/>",
        "<edXML:DocumentId>again</edXML:DocumentId>",
    ],
)
def test_the_free_order_tail_of_the_header_still_allows_each_element_once(element: str) -> None:
    xml = edited(DOCUMENT, "</edXML:MessageHeader>", element + "</edXML:MessageHeader>")
    name = re.match(r"<edXML:(\w+)", element)
    assert name is not None
    problems = problems_of(xml)
    assert [problem.what for problem in problems] == [
        f"element {name.group(1)} may appear only once"
    ]
    assert problems[0].where == f"{HEADER}/{name.group(1)}[2]"


def test_a_response_for_may_be_given_more_than_once() -> None:
    response = (
        "<edXML:ResponseFor><edXML:OrganId>000.00.00.H14</edXML:OrganId>"
        "<edXML:Code>267/VPCP-TTĐT</edXML:Code>"
        "<edXML:DocumentId>000.00.04.G14,2012/08/06,267/VPCP-TTĐT</edXML:DocumentId>"
        "<edXML:PromulgationDate>2012/08/06</edXML:PromulgationDate></edXML:ResponseFor>"
    )
    xml = edited(DOCUMENT, "<edXML:SteeringType>", response * 2 + "<edXML:SteeringType>")
    assert problems_of(xml) == []


def test_a_response_for_a_paper_document_needs_no_document_id() -> None:
    response = (
        "<edXML:ResponseFor><edXML:OrganId>000.00.00.H14</edXML:OrganId>"
        "<edXML:Code>267/UBND-VP</edXML:Code></edXML:ResponseFor>"
    )
    xml = edited(DOCUMENT, "<edXML:SteeringType>", response + "<edXML:SteeringType>")
    assert problems_of(xml) == []


def test_a_response_for_without_its_code_is_refused() -> None:
    xml = edited(STATUS, "<edXML:Code>7816/VPCP-TTĐT</edXML:Code>", "")
    assert problems_of(xml) == [Problem(f"{HEADER}/ResponseFor", "element Code is missing")]


def test_an_empty_response_for_is_refused() -> None:
    # edoc.edxml carries one; ResponseFor is optional, so answering nothing
    # means leaving it out, and an empty OrganId is not an agency code.
    empty = (
        "<edXML:ResponseFor><edXML:OrganId></edXML:OrganId><edXML:Code></edXML:Code>"
        "<edXML:PromulgationDate></edXML:PromulgationDate><edXML:DocumentId></edXML:DocumentId>"
        "</edXML:ResponseFor>"
    )
    xml = edited(DOCUMENT, "<edXML:SteeringType>", empty + "<edXML:SteeringType>")
    assert problems_of(xml) == [
        Problem(
            f"{HEADER}/ResponseFor/OrganId",
            "the agency code is empty; agency codes are written DDD.DD.DD.LNN, "
            "for example 000.00.00.G22",
        ),
        Problem(f"{HEADER}/ResponseFor/Code", "element Code is empty; it must be filled in"),
        Problem(
            f"{HEADER}/ResponseFor/PromulgationDate",
            "element PromulgationDate is empty; it must hold a date written yyyy/MM/dd "
            "(or dd/MM/yyyy)",
        ),
        Problem(
            f"{HEADER}/ResponseFor/DocumentId", "element DocumentId is empty; it must be filled in"
        ),
    ]


# -- the order real senders use ---------------------------------------------------------


def test_to_places_may_come_before_other_info_and_document_id_last() -> None:
    # As in edoc.edxml.
    other_info = re.search(r"<edXML:OtherInfo>.*?</edXML:OtherInfo>", DOCUMENT, re.DOTALL)
    document_id = re.search(r"<edXML:DocumentId>.*?</edXML:DocumentId>", DOCUMENT)
    assert other_info is not None and document_id is not None
    xml = edited(DOCUMENT, other_info.group(0), "")
    xml = edited(xml, document_id.group(0), "")
    xml = edited(
        xml,
        "</edXML:MessageHeader>",
        other_info.group(0) + document_id.group(0) + "</edXML:MessageHeader>",
    )
    assert xml.index("<edXML:ToPlaces>") < xml.index("<edXML:OtherInfo>")
    assert problems_of(xml) == []


def test_organisation_children_may_come_in_any_order() -> None:
    # Status senders put OrganName before OrganizationInCharge.
    xml = edited(
        DOCUMENT,
        "<edXML:OrganizationInCharge>Văn phòng Chính phủ</edXML:OrganizationInCharge>\n"
        "          <edXML:OrganName>Văn phòng Chính phủ</edXML:OrganName>",
        "<edXML:Website>vpcp.vn</edXML:Website>"
        "<edXML:OrganName>Văn phòng Chính phủ</edXML:OrganName>"
        "<edXML:OrganizationInCharge>Văn phòng Chính phủ</edXML:OrganizationInCharge>",
    )
    xml = edited(xml, "<edXML:Website>vpcp.vn</edXML:Website>\n", "")
    assert problems_of(xml) == []


@pytest.mark.parametrize("spelling", ["Bussiness", "Business"])
def test_business_is_accepted_in_both_spellings(spelling: str) -> None:
    xml = DOCUMENT.replace("Bussiness", spelling)
    assert f"<edXML:{spelling}DocType>" in xml
    assert problems_of(xml) == []


def test_line_wrapped_base64_is_accepted() -> None:
    xml = edited(DOCUMENT, "UEsDBBQACAgIAO2TPE0=", "UEsDBBQA\n        CAgIAO2T\n        PE0=")
    assert problems_of(xml) == []


def test_paths_do_not_depend_on_the_prefix_the_sender_chose() -> None:
    xml = edited(DOCUMENT, "xmlns:edXML=", "xmlns:e=").replace("edXML:", "e:")
    xml = edited(xml, "<e:PromulgationDate>2018/09/28", "<e:PromulgationDate>2018-09-28")
    assert [problem.where for problem in problems_of(xml)] == [
        f"{HEADER}/PromulgationInfo/PromulgationDate"
    ]


# -- values: lengths, code lists, dates, agency codes -----------------------------------


@pytest.mark.parametrize(
    ("element", "limit"),
    [
        ("OrganName", 200),
        ("OrganAdd", 250),
        ("Email", 100),
        ("Telephone", 20),
        ("Fax", 20),
        ("CodeNumber", 11),
        ("CodeNotation", 30),
        ("Place", 50),
        ("TypeName", 100),
        ("Subject", 500),
        ("Content", 500),
    ],
)
def test_a_value_over_its_length_limit_is_refused_and_one_at_the_limit_is_not(
    element: str, limit: int
) -> None:
    pattern = re.compile(rf"(<edXML:{element}>)[^<]*(</edXML:{element}>)")
    at_limit = pattern.sub(rf"\g<1>{'ắ' * limit}\g<2>", DOCUMENT, count=1)
    over_limit = pattern.sub(rf"\g<1>{'ắ' * (limit + 1)}\g<2>", DOCUMENT, count=1)
    assert at_limit != DOCUMENT
    assert problems_of(at_limit) == []
    problems = problems_of(over_limit)
    assert len(problems) == 1
    assert problems[0].where.endswith(f"/{element}")
    assert problems[0].what == (
        f"the text of {element} is {limit + 1} characters long; at most {limit} are allowed"
    )


def test_attachment_name_is_limited_to_500_characters() -> None:
    xml = edited(DOCUMENT, "<AttachmentName>1896_QD-TTg.doc", "<AttachmentName>" + "a" * 501)
    assert problems_of(xml) == [
        Problem(
            "/edXML/AttachmentEncoded/Attachment/AttachmentName",
            "the text of AttachmentName is 501 characters long; at most 500 are allowed",
        )
    ]


def test_a_status_code_outside_the_list_is_refused_with_the_list() -> None:
    xml = edited(STATUS, "<edXML:StatusCode>03", "<edXML:StatusCode>07")
    (problem,) = problems_of(xml)
    assert problem.where == f"{HEADER}/StatusCode"
    assert problem.what.startswith("value '07' is not a status code; allowed: 01 (arrived), ")
    assert all(f"{code.value} (" in problem.what for code in StatusCode)


@pytest.mark.parametrize("code", [code.value for code in StatusCode])
def test_every_status_code_of_the_regulation_is_accepted(code: str) -> None:
    assert problems_of(edited(STATUS, "<edXML:StatusCode>03", f"<edXML:StatusCode>{code}")) == []


def test_a_priority_outside_the_list_is_refused() -> None:
    xml = edited(DOCUMENT, "<edXML:Priority>0", "<edXML:Priority>5")
    assert problems_of(xml) == [
        Problem(
            f"{HEADER}/OtherInfo/Priority",
            "value '5' is not a priority; allowed: 0 (normal), 1 (urgent), 2 (very urgent), "
            "3 (flash), 4 (flash timed)",
        )
    ]


@pytest.mark.parametrize("date", ["2018-09-28", "28.09.2018", "2018/9/28", "2018/09/28 10:00"])
def test_a_bad_date_is_refused_with_the_format_to_use(date: str) -> None:
    xml = edited(DOCUMENT, "<edXML:PromulgationDate>2018/09/28", f"<edXML:PromulgationDate>{date}")
    assert problems_of(xml) == [
        Problem(
            f"{HEADER}/PromulgationInfo/PromulgationDate",
            f"value {date!r} is not a date written yyyy/MM/dd (or dd/MM/yyyy)",
        )
    ]


def test_a_day_first_date_is_accepted() -> None:
    xml = edited(DOCUMENT, "<edXML:DueDate>2018/10/28", "<edXML:DueDate>28/10/2018")
    assert problems_of(xml) == []


def test_a_bad_timestamp_is_refused_with_the_format_to_use() -> None:
    xml = edited(STATUS, "2018/09/28 17:25:11", "28/09/2018 17:25")
    assert problems_of(xml) == [
        Problem(
            f"{HEADER}/Timestamp",
            "value '28/09/2018 17:25' is not a date and time written yyyy/MM/dd HH:mm:ss",
        )
    ]


def test_a_malformed_agency_code_is_explained_at_its_path() -> None:
    xml = edited(DOCUMENT, "<edXML:OrganId>000.00.00.H14", "<edXML:OrganId>28.22.H17")
    assert problems_of(xml) == [
        Problem(
            f"{HEADER}/To[2]/OrganId",
            "the agency code '28.22.H17' has 3 groups; it needs 4, written DDD.DD.DD.LNN "
            "(for example 000.00.00.G22)",
        )
    ]


def test_an_agency_code_in_small_letters_is_explained() -> None:
    xml = edited(
        DOCUMENT,
        "<edXML:OrganId>000.00.00.G22</edXML:OrganId>\n          <edXML:Org",
        "<edXML:OrganId>000.00.00.g22</edXML:OrganId>\n          <edXML:Org",
    )
    (problem,) = problems_of(xml)
    assert problem.where == f"{HEADER}/From/OrganId"
    assert "'000.00.00.G22'" in problem.what and "DDD.DD.DD.LNN" in problem.what


def test_a_yes_no_field_explains_its_values() -> None:
    xml = edited(DOCUMENT, "<edXML:Direction>false", "<edXML:Direction>no")
    assert problems_of(xml) == [
        Problem(
            f"{HEADER}/OtherInfo/Direction",
            "value 'no' of Direction must be true or false (or 1 or 0)",
        )
    ]


def test_a_blank_subject_is_refused() -> None:
    xml = re.sub(r"<edXML:Subject>.*?</", "<edXML:Subject>   </", DOCUMENT)
    assert problems_of(xml) == [
        Problem(f"{HEADER}/Subject", "element Subject is empty; it must be filled in")
    ]


def test_xsi_type_cannot_switch_off_the_agency_code_pattern() -> None:
    xml = edited(
        DOCUMENT,
        "<edXML:OrganId>000.00.00.H14</edXML:OrganId>",
        '<edXML:OrganId xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:xs="http://www.w3.org/2001/XMLSchema" xsi:type="xs:string">anything</edXML:OrganId>',
    )
    assert problems_of(xml) == [
        Problem(f"{HEADER}/To[2]/OrganId", "element OrganId may not change its type with xsi:type")
    ]


# -- the signature -------------------------------------------------------------------------


def test_an_xmldsig_signature_is_accepted() -> None:
    xml = edited(DOCUMENT, "<Signature>", '<Signature xmlns="http://www.w3.org/2000/09/xmldsig#">')
    assert problems_of(xml) == []


def test_the_placeholder_signature_of_real_packages_is_accepted() -> None:
    assert "<Signature>" in DOCUMENT  # in the edXML namespace, like edoc_new.edxml
    assert problems_of(DOCUMENT) == []


def test_a_package_without_signature_is_left_to_the_signature_check() -> None:
    xml = re.sub(r"<Signature>.*</Signature>", "", DOCUMENT, flags=re.DOTALL)
    assert problems_of(xml) == []


def test_another_xmldsig_element_in_place_of_the_signature_is_refused() -> None:
    xml = re.sub(
        r"<Signature>(.*)</Signature>",
        r'<SignedInfo xmlns="http://www.w3.org/2000/09/xmldsig#">\1</SignedInfo>',
        DOCUMENT,
        flags=re.DOTALL,
    )
    assert problems_of(xml) == [
        Problem(
            "/edXML/edXMLEnvelope/edXMLHeader/SignedInfo",
            "element SignedInfo is not allowed here; expected Signature",
        )
    ]


# -- what a clerk reads ---------------------------------------------------------------------


def test_problems_carry_no_namespace_noise() -> None:
    xml = edited(DOCUMENT, "<edXML:Priority>0", "<edXML:Priority>9")
    xml = re.sub(r"<edXML:Subject>.*?</edXML:Subject>", "", xml)
    xml = edited(xml, "<ContentType>application/zip</ContentType>", "")
    problems = problems_of(xml)
    assert problems
    for problem in problems:
        assert problem.where.startswith("/edXML")
        for noise in ("{", "}", "edXML:", "http://", "facet", "atomic type", "xs:"):
            assert noise not in problem.where + problem.what, problem


def test_a_huge_bad_value_is_quoted_short() -> None:
    xml = edited(DOCUMENT, "<edXML:Type>1", "<edXML:Type>" + "9" * 10_000)
    (problem,) = problems_of(xml)
    assert problem.where == f"{HEADER}/DocumentType/Type"
    assert "is not a code of one or two digits" in problem.what
    assert len(problem.what) < 200


def test_a_long_bad_agency_code_is_quoted_short() -> None:
    xml = edited(DOCUMENT, "<edXML:OrganId>000.00.00.H14", "<edXML:OrganId>" + "1" * 10_000)
    assert problems_of(xml) == [
        Problem(
            f"{HEADER}/To[2]/OrganId",
            f"the agency code '{'1' * 60}...' is not of the form DDD.DD.DD.LNN",
        )
    ]


def test_a_value_longer_than_libxml2_messages_is_still_reported_short() -> None:
    # libxml2 cuts messages at 64,000 characters, losing what came after the value.
    xml = edited(DOCUMENT, "<edXML:OrganId>000.00.00.H14", "<edXML:OrganId>" + "1" * 100_000)
    (problem,) = problems_of(xml)
    assert problem.where == f"{HEADER}/To[2]/OrganId"
    assert problem.what.startswith("value '1111")
    assert len(problem.what) < 200


def test_a_huge_value_outside_a_code_list_is_reported_short() -> None:
    xml = edited(DOCUMENT, "<edXML:Priority>0", "<edXML:Priority>" + "7" * 100_000)
    (problem,) = problems_of(xml)
    assert problem.where == f"{HEADER}/OtherInfo/Priority"
    assert problem.what.startswith("value '7777")
    assert "facet" not in problem.what
    assert len(problem.what) < 200


def test_a_package_with_very_many_problems_lists_only_the_first() -> None:
    bad_to = (
        "<edXML:To><edXML:OrganId>bad</edXML:OrganId>"
        "<edXML:OrganName>x</edXML:OrganName></edXML:To>"
    )
    xml = edited(DOCUMENT, "<edXML:DocumentId>", bad_to * 200 + "<edXML:DocumentId>")
    problems = problems_of(xml)
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[0].where == f"{HEADER}/To[3]/OrganId"
    assert problems[-1] == Problem(
        "", f"more problems were found; only the first {MAX_PROBLEMS} are listed"
    )


def test_threads_validating_at_once_each_get_their_own_problems() -> None:
    def problem_places(number: int) -> list[str]:
        xml = edited(DOCUMENT, "<edXML:PageAmount>2", f"<edXML:PageAmount>x{number}")
        return [problem.what for problem in problems_of(xml)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(problem_places, range(64)))
    for number, whats in enumerate(results):
        assert whats == [f"value 'x{number}' of PageAmount must be a whole number, 0 or more"]


# -- the real-world packages -------------------------------------------------------------------

# Expected outcome of the schema check for each file of ../shared/samples/edxml:
# None for "valid", else the (where, part of what) of every problem.
SAMPLE_OUTCOMES: dict[str, list[tuple[str, str]] | None] = {
    # The To of this new document has the malformed agency code of the README.
    "edoc_new.edxml": [(f"{HEADER}/To/OrganId", "'28.22.H17'")],
    # Revocation, update and replacement: well-formed codes, dates and code
    # lists; the placeholder Signature in the edXML namespace is structure
    # the schema accepts (the signature check calls them unsigned); the
    # revocation's ResponseFor has DocumentId before PromulgationDate.
    "edoc_revocation.edxml": None,
    "edoc_update.edxml": None,
    "edoc_replacement.edxml": None,
    # Statuses for every code of the list, with From's OrganName before
    # OrganizationInCharge and StaffInfo's Mobile and Email either way; no
    # TraceHeaderList and no Signature, which the status schema allows.
    "status.edxml": None,
    "status_inbox_01.edxml": None,
    "status_rejection_02.edxml": None,
    "status_acceptance_03.edxml": None,
    "status_assignment_04.edxml": None,
    "status_processing_05.edxml": None,
    "status_finish_06.edxml": None,
    "status_cancellation_13.edxml": None,
    "status_change-acceptance_15.edxml": None,
    "status_change-rejection_16.edxml": None,
}
# edoc.edxml never reaches the schema: see the test below.
NOT_WELL_FORMED = {"edoc.edxml"}


def test_every_sample_has_an_expected_outcome(samples_dir: Path) -> None:
    present = {path.name for path in samples_dir.glob("*.edxml")}
    assert present == set(SAMPLE_OUTCOMES) | NOT_WELL_FORMED


@pytest.mark.samples
@pytest.mark.parametrize("name", sorted(SAMPLE_OUTCOMES))
def test_real_sample_gets_its_expected_outcome(samples_dir: Path, name: str) -> None:
    root = parse((samples_dir / name).read_bytes())
    problems = schema_problems(root)
    expected = SAMPLE_OUTCOMES[name]
    if expected is None:
        assert problems == []
        check_schema(root)
        return
    assert [problem.where for problem in problems] == [where for where, _ in expected]
    for problem, (_, fragment) in zip(problems, expected, strict=True):
        assert fragment in problem.what
    with pytest.raises(Rejection) as caught:
        check_schema(root)
    # The only sample refused here has one malformed agency code: that reason.
    assert caught.value.reason is Reason.BAD_AGENCY_CODE


@pytest.mark.samples
def test_the_not_well_formed_sample_is_refused_by_the_parser(samples_dir: Path) -> None:
    with pytest.raises(Rejection) as caught:
        parse((samples_dir / "edoc.edxml").read_bytes())
    assert caught.value.reason is Reason.NOT_WELL_FORMED


@pytest.mark.samples
def test_the_not_well_formed_sample_repaired_shows_its_remaining_defects(samples_dir: Path) -> None:
    # Repair only what keeps edoc.edxml from parsing (the unclosed From, an
    # undeclared xlink: prefix, edXML: used outside its declaration); what is
    # left is what the schema has to say: the empty ResponseFor and a
    # malformed relay code. ToPlaces before OtherInfo, DocumentId last and
    # the missing TypeDetail are accepted.
    xml = (samples_dir / "edoc.edxml").read_text(encoding="utf-8")
    xml, unclosed = re.subn(r"<edXML:From>\s*<edXML:From>", "<edXML:From>", xml, count=1)
    assert unclosed == 1
    xml = edited(xml, ' xlink:href=""', "")
    xml = edited(
        xml,
        '<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016">',
        '<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016" '
        'xmlns:edXML="http://www.mic.gov.vn/TBT/QCVN_102_2016">',
    )
    problems = problems_of(xml)
    assert [problem.where for problem in problems] == [
        f"{HEADER}/ResponseFor/OrganId",
        f"{HEADER}/ResponseFor/Code",
        f"{HEADER}/ResponseFor/PromulgationDate",
        f"{HEADER}/ResponseFor/DocumentId",
        "/edXML/edXMLEnvelope/edXMLHeader/TraceHeaderList/TraceHeader/OrganId",
    ]
    assert "'01.02.G22'" in problems[-1].what


def test_an_element_that_is_not_a_package_is_reported_not_raised() -> None:
    root = parse(DOCUMENT.encode())
    subject = root.find(".//{http://www.mic.gov.vn/TBT/QCVN_102_2016}Subject")
    assert subject is not None
    (problem,) = schema_problems(subject)
    assert problem.where == "/Subject"
    assert "an edXML package starts with <edXML>" in problem.what


def _package_with(old: str, new: str) -> bytes:
    assert old in DOCUMENT
    return DOCUMENT.replace(old, new, 1).encode()


def test_problems_of_one_kind_give_their_specific_reason() -> None:
    """A bad date alone is BAD_DATE, a missing element alone MISSING_FIELD; mixed stays general."""
    import re as _re

    date = _re.search(r"<edXML:PromulgationDate>([^<]*)<", DOCUMENT)
    assert date is not None
    bad_date = _package_with(date.group(0), "<edXML:PromulgationDate>2024-13-99<")
    with pytest.raises(Rejection) as caught:
        check_schema(parse(bad_date))
    assert caught.value.reason is Reason.BAD_DATE
    subject = _re.search(r"<edXML:Subject>[^<]*</edXML:Subject>", DOCUMENT)
    assert subject is not None
    with pytest.raises(Rejection) as caught:
        check_schema(parse(_package_with(subject.group(0), "")))
    assert caught.value.reason is Reason.MISSING_FIELD
    both = bad_date.decode().replace(subject.group(0), "").encode()
    with pytest.raises(Rejection) as caught:
        check_schema(parse(both))
    assert caught.value.reason is Reason.SCHEMA_INVALID
