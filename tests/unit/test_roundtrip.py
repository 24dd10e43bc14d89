"""Writing a package and reading it back gives the same package; the output looks like real ones."""

from __future__ import annotations

import base64
from datetime import date, datetime

from hypothesis import HealthCheck, given, settings
from lxml import etree

from exchange.agency import AgencyCode
from exchange.checks.schema import check_schema
from exchange.edxml import names
from exchange.edxml.model import (
    Attachment,
    Business,
    Code,
    DocumentPackage,
    DocumentType,
    Organization,
    OtherInfo,
    ResponseFor,
    SignerInfo,
    StaffInfo,
    StatusPackage,
    split_document_id,
)
from exchange.edxml.reader import read_document, read_package, read_status
from exchange.edxml.safexml import parse
from exchange.edxml.writer import attachment_from_file, new_document, new_status, write_package
from exchange.status import BusinessDocType, Priority, StatusCode, SteeringType
from tests.strategies import (
    complete_document_packages,
    complete_status_packages,
    document_packages,
    status_packages,
)

ROUNDTRIP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ROUNDTRIP
@given(document_packages())
def test_document_package_survives_write_and_read(package: DocumentPackage) -> None:
    assert read_package(write_package(package)) == package


@ROUNDTRIP
@given(status_packages)
def test_status_package_survives_write_and_read(package: StatusPackage) -> None:
    assert read_package(write_package(package)) == package


# -- a fully populated document, to look at the shape of the output ------------------

SENDER = Organization(organ_id=AgencyCode.parse("000.00.00.G22"), organ_name="Văn phòng Chính phủ")
RECIPIENT = Organization(organ_id=AgencyCode.parse("000.00.00.H41"), organ_name="UBND Tỉnh Nghệ An")


def full_document() -> DocumentPackage:
    return new_document(
        sender=SENDER,
        recipients=[RECIPIENT],
        code=Code(code_number="7816", code_notation="VPCP-TTĐT"),
        subject="V/v kết nối, liên thông phần mềm quản lý văn bản",
        promulgation_date=date(2018, 9, 28),
        place="Hà Nội",
        attachments=[Attachment.from_bytes(b"PK\x03\x04 zipped", "a.zip", content_id="cid:209")],
        sent_at=datetime(2018, 9, 28, 7, 5, 9),
        business=Business(doc_type=BusinessDocType.UPDATE, staff=StaffInfo(staff="Trâm")),
        document_type=DocumentType(type="1", type_name="Công văn"),
        content="Nội dung",
        signer=SignerInfo(full_name="Nguyễn Thanh Phúc"),
        due_date=date(2018, 10, 1),
        other_info=OtherInfo(priority=Priority.URGENT, appendixes=("Phụ lục",)),
        response_for=(
            ResponseFor(
                organ_id=AgencyCode.parse("000.00.00.H14"),
                code="267/VPCP-TTĐT",
                promulgation_date=date(2018, 8, 6),
                document_id="000.00.00.H14,2018/08/06,267/VPCP-TTĐT",
            ),
        ),
        steering_type=SteeringType.DIRECTIVE,
        to_places=("Các bộ",),
    )


def local_names(element: etree._Element) -> list[str]:
    return [etree.QName(child).localname for child in element]


def test_written_package_has_the_declaration_and_shape_of_real_packages() -> None:
    data = write_package(full_document())
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = etree.fromstring(data)
    assert root.tag == names.ROOT
    assert root.prefix is None  # default namespace on the root, as real senders write it
    assert local_names(root) == ["edXMLEnvelope", "AttachmentEncoded"]
    envelope = root[0]
    assert envelope.prefix == "edXML"
    assert local_names(envelope) == ["edXMLHeader", "edXMLBody"]
    assert local_names(envelope[0]) == ["MessageHeader", "TraceHeaderList"]
    assert envelope.find(f"{names.BODY}/{names.MANIFEST}").get("version") == "1.0"


def test_written_header_follows_the_element_order_of_the_design() -> None:
    root = etree.fromstring(write_package(full_document()))
    message = root.find(f"{names.ENVELOPE}/{names.HEADER}/{names.MESSAGE_HEADER}")
    assert local_names(message) == [
        "From", "To", "DocumentId", "Code", "PromulgationInfo", "DocumentType", "Subject",
        "Content", "SignerInfo", "DueDate", "OtherInfo", "ResponseFor", "SteeringType",
        "ToPlaces",
    ]  # fmt: skip
    trace = root.find(f"{names.ENVELOPE}/{names.HEADER}/{names.TRACE_HEADER_LIST}")
    assert local_names(trace) == ["TraceHeader", "Bussiness"]
    assert local_names(trace[1]) == ["BussinessDocType", "StaffInfo"]


def test_written_dates_and_timestamps_use_the_wire_formats() -> None:
    root = etree.fromstring(write_package(full_document()))
    assert root.findtext(f".//{names.q('PromulgationDate')}") == "2018/09/28"
    assert root.findtext(f".//{names.q('DueDate')}") == "2018/10/01"
    assert root.findtext(f".//{names.q('Timestamp')}") == "2018/09/28 07:05:09"


def test_attachment_bytes_are_written_base64_as_given() -> None:
    root = etree.fromstring(write_package(full_document()))
    encoded = root.findtext(f".//{names.q('ContentTransferEncoded')}")
    assert base64.b64decode(encoded) == b"PK\x03\x04 zipped"


def test_status_package_has_no_body_and_no_attachments() -> None:
    status = new_status(
        sender=RECIPIENT,
        response_for=ResponseFor(organ_id=SENDER.organ_id, code="7816/VPCP-TTĐT"),
        status_code=StatusCode.ACCEPTED,
        description="Đã tiếp nhận",
        at=datetime(2018, 9, 28, 17, 25, 11),
    )
    root = etree.fromstring(write_package(status))
    assert local_names(root) == ["edXMLEnvelope"]
    assert local_names(root[0]) == ["edXMLHeader"]
    message = root.find(f"{names.ENVELOPE}/{names.HEADER}/{names.MESSAGE_HEADER}")
    assert local_names(message) == ["From", "ResponseFor", "StatusCode", "Description", "Timestamp"]
    assert read_status(write_package(status)) == status


def test_new_document_fills_the_conventional_document_id_trace_and_manifest() -> None:
    document = full_document()
    parts = split_document_id(document.document_id or "")
    assert parts is not None
    assert (parts.sender, parts.promulgation_date) == ("000.00.00.G22", date(2018, 9, 28))
    assert (parts.code_number, parts.code_notation) == ("7816", "VPCP-TTĐT")
    assert [hop.organ_id for hop in document.trace] == [SENDER.organ_id]
    assert document.manifest is not None
    assert [r.content_id for r in document.manifest.references] == ["cid:209"]
    assert read_document(write_package(document)) == document


def test_new_document_without_business_is_a_new_document() -> None:
    document = new_document(
        sender=SENDER,
        recipients=[RECIPIENT],
        code=Code(code_number="1", code_notation="TB"),
        subject="Thông báo",
        promulgation_date=date(2024, 1, 2),
        place="Hà Nội",
        document_type=DocumentType(type="1", type_name="Thông báo"),
        signer=SignerInfo(full_name="Nguyễn Văn A"),
    )
    assert document.business_doc_type is BusinessDocType.NEW
    assert read_document(write_package(document)) == document


def test_attachment_from_file_keeps_the_bytes_and_guesses_the_type(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "công văn.pdf"
    path.write_bytes(b"%PDF-1.4 not zipped")
    attachment = attachment_from_file(path)
    assert attachment.attachment_name == "công văn.pdf"
    assert attachment.content_type == "application/pdf"
    assert attachment.decode() == b"%PDF-1.4 not zipped"


# -- what the writer produces passes the project's own schema check ---------------------------


@ROUNDTRIP
@given(complete_document_packages())
def test_written_complete_document_passes_the_schema_check(package: DocumentPackage) -> None:
    check_schema(parse(write_package(package)))


@ROUNDTRIP
@given(complete_status_packages())
def test_written_complete_status_passes_the_schema_check(package: StatusPackage) -> None:
    check_schema(parse(write_package(package)))


def test_built_document_and_status_pass_the_schema_check() -> None:
    document = full_document()
    check_schema(parse(write_package(document)))
    status = new_status(
        sender=RECIPIENT,
        response_for=ResponseFor(
            organ_id=SENDER.organ_id,
            code=str(document.code),
            promulgation_date=document.promulgation.promulgation_date,
            document_id=document.document_id,
        ),
        status_code=StatusCode.ARRIVED,
    )
    check_schema(parse(write_package(status)))
