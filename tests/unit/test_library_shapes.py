"""What the official edXML library (EdXML102-0.0.3.jar) writes is valid and read, field for field.

The shapes here are those the library produces (tests/interop/test_edxml102.py
checks them against the library itself, where Java is installed): Bussiness
before the TraceHeaders, a Paper child and id/version attributes on
TraceHeaderList, ReplyFors and ReferenceCodes in OtherInfo, ResponseForTask
and ApplicationType in the header, DepartmentId and StaffId in StaffInfo,
FieldName and MimeType in an attachment, an empty AttachmentEncoded, an empty
Signature in the edXML namespace, CRLF line ends, and files zipped and
labelled application/zip. Strictness stays where the library agrees with
the regulation.
"""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path

import pytest

from exchange.checks.schema import check_schema, schema_problems
from exchange.checks.signature import sign, verify
from exchange.edxml.model import Attachment, DocumentPackage, StatusPackage
from exchange.edxml.reader import read_document, read_package, read_status
from exchange.edxml.safexml import parse
from exchange.edxml.writer import write_package
from exchange.reasons import Reason, Rejection
from tests.keys import TestPKI
from tests.packages import document_package
from tests.unit.test_schema import STATUS, edited

TRACE = """<edXML:TraceHeader>
          <edXML:OrganId>000.00.00.G22</edXML:OrganId>
          <edXML:Timestamp>2018/09/28 16:35:56</edXML:Timestamp>
        </edXML:TraceHeader>"""
BUSINESS = """<edXML:Bussiness>
          <edXML:BussinessDocType>0</edXML:BussinessDocType>
          <edXML:BussinessDocReason>Văn bản điện tử mới</edXML:BussinessDocReason>
          <edXML:Paper>0</edXML:Paper>
        </edXML:Bussiness>"""
RELAY = """<edXML:TraceHeader>
          <edXML:OrganId>000.00.00.G09</edXML:OrganId>
          <edXML:Timestamp>2018/09/28 17:00:00</edXML:Timestamp>
        </edXML:TraceHeader>"""
PLACEHOLDER = """<Signature>
        <SignedInfo><Reference URI=""/></SignedInfo>
        <SignatureValue>GbVb8n9+</SignatureValue>
      </Signature>"""


def trace_list(*children: str, attributes: str = "") -> str:
    """The template document with its TraceHeaderList holding ``children`` in that order."""
    body = "\n        ".join(children)
    return edited(
        document_package(),
        f"<edXML:TraceHeaderList>\n        {TRACE}\n        {BUSINESS}\n"
        "      </edXML:TraceHeaderList>",
        f"<edXML:TraceHeaderList{attributes}>\n        {body}\n      </edXML:TraceHeaderList>",
    )


def library_document() -> str:
    """The template document with every addition the library makes."""
    xml = trace_list(
        "<edXML:Paper>0</edXML:Paper>", BUSINESS, TRACE, attributes=' id="t1" version="1.0"'
    )
    xml = edited(
        xml,
        "<edXML:Direction>false</edXML:Direction>",
        "<edXML:ReplyFors>12/VPCP</edXML:ReplyFors>\n"
        "<edXML:Direction>false</edXML:Direction>\n"
        "<edXML:ReferenceCodes>34/BNV</edXML:ReferenceCodes>",
    )
    xml = edited(
        xml,
        "<edXML:SteeringType>1</edXML:SteeringType>",
        "<edXML:SteeringType>1</edXML:SteeringType>\n"
        "<edXML:ResponseForTask><edXML:TaskCode>T1</edXML:TaskCode>"
        "<edXML:TaskCode>T2</edXML:TaskCode></edXML:ResponseForTask>\n"
        "<edXML:ApplicationType>QLVB</edXML:ApplicationType>",
    )
    xml = edited(
        xml,
        "<edXML:Paper>0</edXML:Paper>\n        </edXML:Bussiness>",
        "<edXML:Paper>0</edXML:Paper>\n"
        "<edXML:StaffInfo><edXML:Department>Văn thư</edXML:Department>"
        "<edXML:DepartmentId>VT</edXML:DepartmentId><edXML:Staff>Trâm</edXML:Staff>"
        "<edXML:StaffId>u1</edXML:StaffId></edXML:StaffInfo>\n        </edXML:Bussiness>",
    )
    xml = edited(
        xml,
        "<AttachmentName>1896_QD-TTg.doc</AttachmentName>",
        "<AttachmentName>1896_QD-TTg.doc</AttachmentName>\n"
        "<FieldName>file1</FieldName><MimeType>application/msword</MimeType>",
    )
    return edited(xml, PLACEHOLDER, "<Signature />")


def test_bussiness_before_the_trace_headers_is_valid_and_reads_the_same() -> None:
    before = trace_list(BUSINESS, TRACE)
    check_schema(parse(before.encode()))
    assert read_document(before.encode()) == read_document(document_package().encode())


def test_bussiness_before_several_hops_is_valid() -> None:
    xml = trace_list(BUSINESS, TRACE, RELAY)
    check_schema(parse(xml.encode()))
    assert [str(hop.organ_id) for hop in read_document(xml.encode()).trace] == [
        "000.00.00.G22",
        "000.00.00.G09",
    ]


@pytest.mark.parametrize(
    "children",
    [
        pytest.param((TRACE, BUSINESS, RELAY), id="hop-bussiness-hop"),
        pytest.param((BUSINESS, TRACE, BUSINESS), id="two-bussiness"),
        pytest.param((BUSINESS,), id="no-hop"),
        pytest.param((TRACE, "<edXML:Paper>0</edXML:Paper>"), id="paper-last"),
    ],
)
def test_trace_header_list_stays_strict_elsewhere(children: tuple[str, ...]) -> None:
    assert schema_problems(parse(trace_list(*children).encode()))


def test_hops_on_both_sides_of_bussiness_are_explained() -> None:
    (problem,) = schema_problems(parse(trace_list(TRACE, BUSINESS, RELAY).encode()))
    assert problem.where.endswith("TraceHeaderList/TraceHeader[2]")
    assert problem.what == (
        "the TraceHeader elements must come together, all before or all after Bussiness"
    )


def test_every_library_addition_is_valid_and_read() -> None:
    xml = library_document().encode()
    check_schema(parse(xml))
    package = read_document(xml)
    assert package.trace_paper == "0"
    assert (package.trace_list_id, package.trace_list_version) == ("t1", "1.0")
    assert package.other_info is not None
    assert (package.other_info.reply_fors, package.other_info.reference_codes) == (
        "12/VPCP",
        "34/BNV",
    )
    assert package.response_for_task == ("T1", "T2")
    assert package.application_type == "QLVB"
    assert package.business is not None and package.business.staff is not None
    assert (package.business.staff.department_id, package.business.staff.staff_id) == (
        "VT",
        "u1",
    )
    (attachment,) = package.attachments
    assert (attachment.field_name, attachment.mime_type) == ("file1", "application/msword")


def test_library_additions_survive_writing_and_reading_again() -> None:
    package = read_document(library_document().encode())
    written = write_package(package)
    check_schema(parse(written))
    assert read_document(written) == package


def test_the_header_tail_additions_may_appear_once() -> None:
    xml = edited(
        library_document(),
        "<edXML:ApplicationType>QLVB</edXML:ApplicationType>",
        "<edXML:ApplicationType>QLVB</edXML:ApplicationType>"
        "<edXML:ApplicationType>QLVB</edXML:ApplicationType>",
    )
    assert "ApplicationType may appear only once" in str(schema_problems(parse(xml.encode())))


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        pytest.param(
            "<edXML:SteeringType>1</edXML:SteeringType>",
            "<edXML:SteeringType>1</edXML:SteeringType><edXML:Feedback><edXML:OrganId>"
            "000.00.00.G09</edXML:OrganId><edXML:Code>5/BNV</edXML:Code></edXML:Feedback>",
            "Feedback",
            id="feedback",
        ),
        pytest.param(
            "</edXML:StaffInfo>",
            "</edXML:StaffInfo><edXML:StaffInfo><edXML:Staff>Lan</edXML:Staff></edXML:StaffInfo>",
            "StaffInfo",
            id="two-staff-in-bussiness",
        ),
    ],
)
def test_what_the_library_api_allows_beyond_the_regulation_is_refused(
    old: str, new: str, named: str
) -> None:
    problems = str(schema_problems(parse(edited(library_document(), old, new).encode())))
    assert named in problems


def test_an_unknown_element_beside_the_library_additions_is_still_refused() -> None:
    xml = edited(
        library_document(),
        "<FieldName>file1</FieldName>",
        "<FieldName>file1</FieldName><Format>doc</Format>",
    )
    assert "Format" in str(schema_problems(parse(xml.encode())))


def test_a_status_with_the_library_staff_ids_is_valid_and_read() -> None:
    xml = edited(
        STATUS,
        "<edXML:Staff>Nguyen thi ngoc tram</edXML:Staff>",
        "<edXML:DepartmentId>HC</edXML:DepartmentId><edXML:Staff>Nguyen thi ngoc tram</edXML:Staff>"
        "<edXML:StaffId>u7</edXML:StaffId>",
    ).encode()
    check_schema(parse(xml))
    staff = read_status(xml).staff
    assert staff is not None and (staff.department_id, staff.staff_id) == ("HC", "u7")


def test_a_status_with_a_library_trace_list_reads_it() -> None:
    xml = edited(
        STATUS,
        "</edXML:MessageHeader>",
        f'</edXML:MessageHeader>\n<edXML:TraceHeaderList id="s1"><edXML:Paper>1</edXML:Paper>'
        f"{BUSINESS}{TRACE}</edXML:TraceHeaderList>",
    ).encode()
    check_schema(parse(xml))
    status = read_status(xml)
    assert (status.trace_paper, status.trace_list_id) == ("1", "s1")
    assert len(status.trace) == 1
    assert read_status(write_package(status)) == status


def test_an_empty_attachment_list_is_valid() -> None:
    xml = document_package()
    start = xml.index("<AttachmentEncoded>")
    end = xml.index("</AttachmentEncoded>")
    xml = xml[:start] + "<AttachmentEncoded>\n  " + xml[end:]
    xml = edited(
        xml,
        xml[xml.index("<edXML:Reference>") : xml.index("</edXML:edXMLManifest>")],
        "",
    )
    check_schema(parse(xml.encode()))
    assert read_document(xml.encode()).attachments == ()


def test_crlf_line_ends_change_nothing() -> None:
    xml = library_document()
    crlf = xml.replace("\n", "\r\n").encode()
    check_schema(parse(crlf))
    assert read_document(crlf) == read_document(xml.encode())


# -- the empty Signature ---------------------------------------------------------


def test_the_empty_signature_is_unsigned_with_a_clear_reason(tmp_path: Path) -> None:
    pki = TestPKI.create(tmp_path)
    with pytest.raises(Rejection) as caught:
        verify(library_document().encode(), pki.trust)
    assert caught.value.reason is Reason.SIGNATURE_MISSING
    (problem,) = caught.value.problems
    assert "Signature element is empty" in problem.what
    assert problem.where == "edXML/edXMLEnvelope/edXMLHeader/Signature"


def test_signing_replaces_the_empty_signature(tmp_path: Path) -> None:
    pki = TestPKI.create(tmp_path)
    office = pki.agency("000.00.00.G22")
    signed = sign(library_document().encode(), office.key_pem, office.cert_pem)
    root = parse(signed)
    check_schema(root)
    assert b"<Signature" not in signed
    verified = verify(signed, pki.trust)
    assert str(verified.agency) == "000.00.00.G22"
    assert read_document(verified.signed_root) == read_document(library_document().encode())


# -- zipped attachments ----------------------------------------------------------------


def zipped(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def attachment(data: bytes, name: str, content_type: str | None) -> Attachment:
    return Attachment.from_bytes(data, name, content_type=content_type)


def test_a_file_the_library_zipped_is_given_back_unzipped() -> None:
    original = "Báo cáo tháng 11\n".encode() * 100
    packed = attachment(zipped("5f1c.txt", original), "bao-cao.txt", "application/zip")
    assert packed.zipped
    assert packed.decode().startswith(b"PK")
    assert packed.original() == original


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("scan.pdf", "application/pdf"),  # the library sends pdf, doc, docx as they are
        ("hoso.zip", "application/zip"),  # a zip the sender attached is the file itself
        ("bao-cao.txt", "application/octet-stream"),
    ],
)
def test_a_file_not_zipped_for_the_journey_is_given_back_as_sent(
    name: str, content_type: str
) -> None:
    data = zipped("inner.txt", b"x") if name.endswith(".zip") else b"%PDF-1.4 data"
    file = attachment(data, name, content_type)
    assert not file.zipped
    assert file.original() == data


def test_a_zip_bomb_is_not_unzipped_past_the_limit() -> None:
    bomb = attachment(zipped("big.txt", b"\0" * 1_000_000), "big.txt", "application/zip")
    assert len(bomb.decode()) < 10_000
    with pytest.raises(Rejection) as caught:
        bomb.original(max_bytes=100_000)
    assert caught.value.reason is Reason.BAD_ATTACHMENT
    assert "more than 100000 bytes" in str(caught.value)


@pytest.mark.parametrize(
    "data",
    [b"not a zip at all", zipped("a.txt", b"hello " * 1000)[:60], zipped("a.txt", b"")[:0]],
    ids=["not-a-zip", "truncated", "empty"],
)
def test_a_broken_zip_is_a_clear_refusal(data: bytes) -> None:
    file = Attachment(
        content_id="cid:1",
        attachment_name="a.txt",
        content_type="application/zip",
        encoded=base64.b64encode(data).decode(),
    )
    with pytest.raises(Rejection) as caught:
        file.original()
    assert caught.value.reason is Reason.BAD_ATTACHMENT
    assert "'a.txt'" in str(caught.value)


def test_models_without_library_fields_are_unchanged() -> None:
    package = read_package(document_package().encode())
    assert isinstance(package, DocumentPackage)
    assert package.trace_paper is None and package.response_for_task == ()
    status = read_package(STATUS.encode())
    assert isinstance(status, StatusPackage) and status.trace_list_id is None
