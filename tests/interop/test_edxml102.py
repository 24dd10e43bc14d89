"""Both directions with the official edXML library (EdXML102-0.0.3.jar), the real one.

Document-management systems build their packages with this library. Every
kind it can make (a document of each BussinessDocType, a replacement, an
update with its receivers, a reply with ResponseFor, a relayed document, its
bare defaults, a status for every code) is built by the library itself,
signed with ``lienthong sign`` and with xmlsec1, and must then pass
``lienthong validate`` and ``lienthong verify`` and read field for field as
the library's own parser reads it. The other way, packages lienthong writes
and signs must read the same in the library's parser. Finally a
library-built package goes through a running exchange into an inbox.

Needs Java (``java``, ``javac``), the jar in ``../shared/clients/edxml102/``
and Debian's jars (see tests/edxml102.py); skipped, saying which is
missing, without them. The signing with xmlsec1 needs the xmlsec1 command.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from exchange.checks.schema import check_schema
from exchange.checks.signature import sign
from exchange.edxml.model import (
    VIETNAM_TIME,
    Attachment,
    Business,
    BusinessDocumentInfo,
    Code,
    DocumentPackage,
    DocumentType,
    Organization,
    OtherInfo,
    Receiver,
    ReplacementInfo,
    ResponseFor,
    SignerInfo,
    StaffInfo,
    StatusPackage,
    TraceHeader,
    format_date,
    format_timestamp,
)
from exchange.edxml.reader import read_package
from exchange.edxml.safexml import parse
from exchange.edxml.writer import manifest_for, new_document, new_status, write_package
from exchange.pki import Credential
from exchange.status import BusinessDocType, StatusCode, SteeringType, TransportOutcome
from tests.edxml102 import Edxml102, compile_driver, library_view, parsed_view
from tests.exchange_fixtures import ExchangeUnderTest
from tests.keys import TestPKI

pytestmark = pytest.mark.java

XMLSEC1 = shutil.which("xmlsec1")
OFFICE = "000.00.00.G22"  # Văn phòng Chính phủ
HANOI = "000.00.00.H26"  # UBND Thành phố Hà Nội
NGHE_AN = "000.00.00.H41"
HOME_AFFAIRS = "000.00.00.G09"

# Dates the packages carry: recent, real days (the reader refuses impossible ones).
NOW = datetime.now(VIETNAM_TIME).replace(tzinfo=None, microsecond=0) - timedelta(hours=1)
TODAY = format_date(NOW.date())
EARLIER = format_date((NOW - timedelta(days=30)).date())
SENT_AT = format_timestamp(NOW)
RELAYED_AT = format_timestamp(NOW + timedelta(minutes=5))
DOCUMENT_ID = f"{OFFICE},{TODAY},101/VPCP-TH"

# What an agency's signer fills in: an empty XML-DSig template where the
# library leaves its empty <Signature/>.
TEMPLATE = """<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#">
<ds:SignedInfo>
<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
<ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"/>
<ds:Reference URI="">
<ds:Transforms>
<ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>
<ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
</ds:Transforms>
<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>
<ds:DigestValue/>
</ds:Reference>
</ds:SignedInfo>
<ds:SignatureValue/>
<ds:KeyInfo><ds:X509Data/></ds:KeyInfo>
</ds:Signature>"""


# -- what the library is asked to build ------------------------------------------------


def organization(code: str, name: str, **more: str) -> dict[str, str]:
    return {"OrganId": code, "OrganName": name, **more}


STAFF = {
    "Department": "Văn thư văn phòng",
    "DepartmentId": "VT01",
    "Staff": "Nguyễn Thị Ngọc Trâm",
    "StaffId": "tram.nt",
    "Email": "vanthu@chinhphu.vn",
    "Mobile": "0912000001",
}


def document(files: Path, **changes: Any) -> dict[str, Any]:
    """A document spec for the driver: every header field set, the library's wire names."""
    spec: dict[str, Any] = {
        "kind": "document",
        "signature": True,
        "From": organization(
            OFFICE,
            "Văn phòng Chính phủ",
            OrganizationInCharge="Chính phủ",
            OrganAdd="Số 1 Hoàng Hoa Thám, Ba Đình, Hà Nội",
            Email="vpcp@chinhphu.vn",
            Telephone="080 43100",
            Fax="080 44130",
            Website="chinhphu.vn",
        ),
        "To": [organization(HANOI, "UBND Thành phố Hà Nội"), organization(NGHE_AN, "UBND Nghệ An")],
        "DocumentId": DOCUMENT_ID,
        "Code": {"CodeNumber": "101", "CodeNotation": "VPCP-TH"},
        "PromulgationInfo": {"Place": "Hà Nội", "PromulgationDate": TODAY},
        "DocumentType": {"Type": 1, "TypeDetail": 2, "TypeName": "Công văn"},
        "Subject": "V/v kết nối, liên thông phần mềm quản lý văn bản",
        "Content": "Đề nghị các địa phương hoàn thành kết nối trước cuối năm.",
        "SignerInfo": {
            "Competence": "KT. BỘ TRƯỞNG, CHỦ NHIỆM",
            "Position": "Phó Chủ nhiệm",
            "FullName": "Nguyễn Văn A",
        },
        "DueDate": format_date((NOW + timedelta(days=14)).date()),
        "ToPlaces": ["Các Bộ, cơ quan ngang Bộ", "UBND các tỉnh, thành phố"],
        "OtherInfo": {
            "Priority": 1,
            "SphereOfPromulgation": "Liên thông văn bản quốc gia",
            "TyperNotation": "TVC",
            "PromulgationAmount": 2,
            "PageAmount": 3,
            "ReplyFors": "12/BNV-VP",
            "Direction": True,
            "ReferenceCodes": "34/VPCP-TH",
            "Appendixes": ["Phụ lục I: danh sách đơn vị", "Phụ lục II: lộ trình"],
        },
        "SteeringType": 1,
        "ResponseForTask": ["CV-2026-17", "CV-2026-18"],
        "ApplicationType": "QLVB",
        "TraceHeaderList": {
            "id": "trace-1",
            "version": "1.0",
            "Paper": "0",
            "TraceHeader": [{"OrganId": OFFICE, "Timestamp": SENT_AT}],
            "Bussiness": {
                "DocumentId": DOCUMENT_ID,
                "BussinessDocType": "0",
                "BussinessDocReason": "Văn bản điện tử mới",
                "Paper": "0",
                "StaffInfo": [STAFF],
            },
        },
        "attachments": [
            {
                "ContentId": "209",
                "AttachmentName": "bao-cao.txt",
                "Description": "Báo cáo tiến độ",
                "FieldName": "vanban",
                "MimeType": "text/plain",
                "file": str(files / "bao-cao.txt"),
            },
            {"AttachmentName": "quyet-dinh.pdf", "file": str(files / "quyet-dinh.pdf")},
        ],
    }
    spec.update(changes)
    return spec


def business(doc_type: str, reason: str, **more: Any) -> dict[str, Any]:
    return {
        "DocumentId": DOCUMENT_ID,
        "BussinessDocType": doc_type,
        "BussinessDocReason": reason,
        "Paper": "0",
        "StaffInfo": [STAFF],
        **more,
    }


def trace(bussiness: dict[str, Any] | None, *hops: dict[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "TraceHeader": list(hops or [{"OrganId": OFFICE, "Timestamp": SENT_AT}])
    }
    if bussiness is not None:
        spec["Bussiness"] = bussiness
    return spec


EARLIER_ID = f"{OFFICE},{EARLIER},90/VPCP-TH"


def document_specs(files: Path) -> dict[str, dict[str, Any]]:
    """Every kind of document the library makes, by name."""
    return {
        "new": document(files),
        "revocation": document(
            files, TraceHeaderList=trace(business("1", "Thu hồi do ban hành nhầm"))
        ),
        "update": document(
            files,
            TraceHeaderList=trace(
                business(
                    "2",
                    "Cập nhật nơi nhận",
                    BussinessDocumentInfo=[
                        {
                            "DocumentInfo": "1",
                            "DocumentReceiver": "1",
                            "ReceiverList": [
                                [
                                    {"OrganId": HANOI, "ReceiverType": "1"},
                                    {"OrganId": NGHE_AN, "ReceiverType": "2"},
                                ]
                            ],
                        }
                    ],
                )
            ),
        ),
        "replacement": document(
            files,
            TraceHeaderList=trace(
                business(
                    "3",
                    "Thay thế văn bản ban hành nhầm",
                    ReplacementInfoList=[
                        [
                            {"DocumentId": EARLIER_ID, "OrganIdList": [HANOI, NGHE_AN]},
                            {
                                "DocumentId": f"{OFFICE},{EARLIER},91/VPCP-TH",
                                "OrganIdList": [HANOI],
                            },
                        ]
                    ],
                )
            ),
        ),
        "reply": document(
            files,
            ResponseFor=[
                {
                    "OrganId": HOME_AFFAIRS,
                    "Code": "55/BNV-VP",
                    "PromulgationDate": EARLIER,
                    "DocumentId": f"{HOME_AFFAIRS},{EARLIER},55/BNV-VP",
                },
                {"OrganId": HANOI, "Code": "7/UBND-KSTT", "PromulgationDate": EARLIER},
            ],
        ),
        "relayed": document(
            files,
            TraceHeaderList=trace(
                business("0", "Văn bản điện tử mới"),
                {"OrganId": OFFICE, "Timestamp": SENT_AT},
                {"OrganId": HOME_AFFAIRS, "Timestamp": RELAYED_AT},
            ),
        ),
        # The library's own defaults: a UUID DocumentId, no Bussiness, no
        # files (an empty AttachmentEncoded), no Signature element at all,
        # DocumentType without TypeDetail, OtherInfo and SteeringType 0.
        "defaults": {
            "kind": "document",
            "From": organization(OFFICE, "Văn phòng Chính phủ"),
            "To": [organization(HANOI, "UBND Thành phố Hà Nội")],
            "Code": {"CodeNumber": "5", "CodeNotation": "VPCP"},
            "PromulgationInfo": {"Place": "Hà Nội", "PromulgationDate": TODAY},
            "DocumentType": {"Type": 1, "TypeName": "Công văn"},
            "Subject": "Thông báo",
            "SignerInfo": {"FullName": "Nguyễn Văn B"},
            "OtherInfo": {},
            "TraceHeaderList": trace(None),
        },
    }


def status_specs() -> dict[str, dict[str, Any]]:
    """A status for every code of the regulation, as the library builds them."""
    response = {
        "OrganId": OFFICE,
        "Code": "101/VPCP-TH",
        "PromulgationDate": TODAY,
        "DocumentId": DOCUMENT_ID,
    }
    specs = {}
    for code in StatusCode:
        specs[f"status-{code.value}"] = {
            "kind": "status",
            "signature": True,
            "From": organization(HANOI, "UBND Thành phố Hà Nội", OrganAdd="79 Đinh Tiên Hoàng"),
            "ResponseFor": response,
            "StaffInfo": STAFF,
            "StatusCode": code.value,
            "Description": f"Trạng thái {code.value}",
            "Timestamp": RELAYED_AT,
        }
    # Software reporting 01 may know no clerk; a status that passed a relay has a trace.
    del specs["status-01"]["StaffInfo"]
    specs["status-06"]["TraceHeaderList"] = trace(None, {"OrganId": HANOI, "Timestamp": RELAYED_AT})
    return specs


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def edxml102(tmp_path_factory: pytest.TempPathFactory) -> Edxml102:
    return compile_driver(tmp_path_factory.mktemp("edxml102"))


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Attachments: a text file (the library zips it) and a PDF (sent as it is)."""
    directory = tmp_path_factory.mktemp("files")
    (directory / "bao-cao.txt").write_text("Báo cáo tiến độ kết nối\n" * 200, encoding="utf-8")
    (directory / "quyet-dinh.pdf").write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 8)
    return directory


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def credentials(pki: TestPKI) -> dict[str, Credential]:
    """The senders' keys: the Government Office's documents, Hà Nội's statuses."""
    return {OFFICE: pki.agency(OFFICE), HANOI: pki.agency(HANOI)}


@pytest.fixture(scope="session")
def built(
    edxml102: Edxml102, files: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Every kind of package, built by the library, by name."""
    specs = {**document_specs(files), **status_specs()}
    paths = edxml102.build(list(specs.values()), tmp_path_factory.mktemp("built"))
    return dict(zip(specs, paths, strict=True))


@pytest.fixture(scope="session")
def library_read(edxml102: Edxml102, built: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """What the library's own parser reads from each package it built."""
    return dict(zip(built, edxml102.parse(list(built.values())), strict=True))


KINDS = [*document_specs(Path()), *status_specs()]


def lienthong(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The ``lienthong`` command, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "exchange.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def credential_files(credential: Credential, code: str, directory: Path) -> tuple[Path, Path]:
    key, cert = directory / f"{code}.key.pem", directory / f"{code}.cert.pem"
    key.write_bytes(credential.key_pem)
    cert.write_bytes(credential.cert_pem)
    return key, cert


def sender_of(name: str) -> str:
    return HANOI if name.startswith("status") else OFFICE


@pytest.fixture(scope="session")
def signed_by_lienthong(
    built: dict[str, Path],
    credentials: dict[str, Credential],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """Each package signed by its sender with ``lienthong sign``."""
    directory = tmp_path_factory.mktemp("lienthong-signed")
    signed = {}
    for name, path in built.items():
        sender = sender_of(name)
        key, cert = credential_files(credentials[sender], sender, directory)
        output = directory / f"{name}.edxml"
        result = lienthong("sign", path, "--key", key, "--cert", cert, "-o", output)
        assert result.returncode == 0, result.stdout + result.stderr
        signed[name] = output
    return signed


@pytest.fixture(scope="session")
def signed_by_xmlsec1(
    built: dict[str, Path],
    credentials: dict[str, Credential],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """Each package signed by its sender with xmlsec1, the library's empty Signature replaced."""
    if XMLSEC1 is None:
        pytest.skip("xmlsec1 is not on PATH (install the Debian package xmlsec1)")
    directory = tmp_path_factory.mktemp("xmlsec1-signed")
    signed = {}
    for name, path in built.items():
        text = path.read_text(encoding="utf-8")
        if "<Signature />" in text:
            text = text.replace("<Signature />", TEMPLATE)
        else:  # the library wrote no Signature: the template goes after the last header part
            text = text.replace("</edXML:edXMLHeader>", TEMPLATE + "\r\n</edXML:edXMLHeader>")
        template = directory / f"{name}.template.edxml"
        template.write_bytes(text.encode("utf-8"))
        sender = sender_of(name)
        key, cert = credential_files(credentials[sender], sender, directory)
        output = directory / f"{name}.edxml"
        result = subprocess.run(
            [XMLSEC1, "--sign", "--privkey-pem", f"{key},{cert}", "--output", output, template],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        signed[name] = output
    return signed


def verdicts(command: str, files: dict[str, Path], *more: str | Path) -> dict[str, dict[str, Any]]:
    """``lienthong validate|verify --json`` over every file at once, by package name."""
    result = lienthong(command, *files.values(), "--json", *more)
    assert result.returncode in (0, 1), result.stderr
    by_file = {verdict["file"]: verdict for verdict in json.loads(result.stdout)}
    return {name: by_file[str(path)] for name, path in files.items()}


@pytest.fixture(scope="session")
def validated(signed_by_lienthong: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return verdicts("validate", signed_by_lienthong)


@pytest.fixture(scope="session")
def verified(
    signed_by_lienthong: dict[str, Path], signed_by_xmlsec1: dict[str, Path], pki: TestPKI
) -> dict[str, dict[str, Any]]:
    both = {f"lienthong:{n}": p for n, p in signed_by_lienthong.items()}
    both |= {f"xmlsec1:{n}": p for n, p in signed_by_xmlsec1.items()}
    return verdicts("verify", both, "--trust", pki.ca_pem_path)


# -- the library's packages in lienthong --------------------------------------------------


def test_the_library_writes_what_real_senders_send(built: dict[str, Path]) -> None:
    # The shapes real senders write: proof that the library still writes them.
    new = built["new"].read_bytes()
    assert b"\r\n" in new and b"\n" not in new.replace(b"\r\n", b"")
    assert new.index(b"<edXML:Bussiness>") < new.index(b"<edXML:TraceHeader>")
    assert b"<Signature />" in new
    assert new.index(b"</edXML:edXMLEnvelope>") < new.index(b"<AttachmentEncoded>")
    assert b"<ContentType>application/zip</ContentType>" in new
    assert b"<AttachmentEncoded />" in built["defaults"].read_bytes()


@pytest.mark.parametrize("name", KINDS)
def test_a_library_package_is_valid_as_built(built: dict[str, Path], name: str) -> None:
    check_schema(parse(built[name].read_bytes()))


@pytest.mark.parametrize("name", KINDS)
def test_lienthong_validate_accepts_a_library_package_signed_by_lienthong(
    validated: dict[str, dict[str, Any]], name: str
) -> None:
    verdict = validated[name]
    assert verdict["ok"], verdict
    assert verdict["kind"] == (name.replace("-", " ") if name.startswith("status") else "document")


@pytest.mark.parametrize("signer", ["lienthong", "xmlsec1"])
@pytest.mark.parametrize("name", KINDS)
def test_lienthong_verify_accepts_a_signed_library_package(
    verified: dict[str, dict[str, Any]], signer: str, name: str
) -> None:
    verdict = verified[f"{signer}:{name}"]
    assert verdict["ok"], verdict
    assert verdict["signer"] == sender_of(name)


@pytest.mark.parametrize("name", KINDS)
def test_lienthong_reads_every_field_the_library_reads(
    built: dict[str, Path],
    library_read: dict[str, dict[str, Any]],
    signed_by_lienthong: dict[str, Path],
    name: str,
) -> None:
    package = read_package(built[name].read_bytes())
    assert library_view(package) == parsed_view(library_read[name])
    # Signing changes nothing that is read.
    assert read_package(signed_by_lienthong[name].read_bytes()) == package


def test_lienthong_reads_what_the_library_writes_but_never_reads_back(
    built: dict[str, Path], library_read: dict[str, dict[str, Any]]
) -> None:
    package = read_package(built["new"].read_bytes())
    assert isinstance(package, DocumentPackage)
    assert (package.trace_list_id, package.trace_list_version, package.trace_paper) == (
        "trace-1",
        "1.0",
        "0",
    )
    assert library_read["new"]["TraceHeaderList"]["id"] is None  # the library's parser drops it


def test_a_file_the_library_zipped_reads_as_the_original(
    built: dict[str, Path], files: Path, library_read: dict[str, dict[str, Any]]
) -> None:
    package = read_package(built["new"].read_bytes())
    assert isinstance(package, DocumentPackage)
    text, pdf = package.attachments
    assert (text.content_type, text.zipped) == ("application/zip", True)
    assert text.decode()[:2] == b"PK"
    assert text.original() == (files / "bao-cao.txt").read_bytes()
    assert (pdf.content_type, pdf.zipped) == ("application/pdf", False)
    assert pdf.original() == (files / "quyet-dinh.pdf").read_bytes()
    expected = hashlib.sha256((files / "bao-cao.txt").read_bytes()).hexdigest()
    assert library_read["new"]["Attachment"][0]["sha256"] == expected


def test_the_library_empty_signature_is_unsigned_for_verify(
    built: dict[str, Path], pki: TestPKI
) -> None:
    verdict = verdicts("verify", {"new": built["new"]}, "--trust", pki.ca_pem_path)["new"]
    assert verdict["ok"] is False
    assert verdict["reason_code"] == "REJECTED_SIGNATURE_MISSING"
    assert "Signature element is empty" in verdict["problems"][0]


# -- lienthong's packages in the library ----------------------------------------------------


def lienthong_packages(files: Path) -> dict[str, DocumentPackage | StatusPackage]:
    """Packages lienthong writes, with every field the library knows."""
    sender = Organization(
        organ_id=OFFICE,
        organ_name="Văn phòng Chính phủ",
        organization_in_charge="Chính phủ",
        organ_address="Số 1 Hoàng Hoa Thám",
        email="vpcp@chinhphu.vn",
        telephone="080 43100",
        fax="080 44130",
        website="chinhphu.vn",
    )
    recipients = [Organization(organ_id=HANOI, organ_name="UBND Thành phố Hà Nội")]
    staff = StaffInfo(
        department="Văn thư",
        department_id="VT",
        staff="Trâm",
        staff_id="tram",
        mobile="0912",
        email="vt@chinhphu.vn",
    )
    attachments = [
        Attachment.from_bytes(
            b"%PDF-1.4 quyet dinh",
            "quyet-dinh.pdf",
            content_type="application/pdf",
            description="Quyết định",
        ),
        Attachment.from_bytes(
            zipped_file("bao-cao.txt", (files / "bao-cao.txt").read_bytes()),
            "bao-cao.txt",
            content_type="application/zip",
        ),
    ]
    attachments[1] = attachments[1].model_copy(
        update={"field_name": "vanban", "mime_type": "text/plain"}
    )
    common: dict[str, Any] = {
        "sender": sender,
        "recipients": recipients,
        "code": Code(code_number="202", code_notation="VPCP-KSTT"),
        "subject": "V/v báo cáo tình hình liên thông",
        "promulgation_date": NOW.date(),
        "place": "Hà Nội",
        "document_type": DocumentType(type="1", type_detail="0", type_name="Công văn"),
        "signer": SignerInfo(competence="TL. BỘ TRƯỞNG", position="Vụ trưởng", full_name="Lê C"),
        "attachments": attachments,
        "sent_at": NOW,
        "content": "Nội dung trích yếu",
        "due_date": (NOW + timedelta(days=7)).date(),
        "other_info": OtherInfo(
            priority="2",
            sphere_of_promulgation="Toàn quốc",
            typer_notation="LC",
            promulgation_amount=5,
            page_amount=2,
            reply_fors="3/BNV",
            direction=False,
            reference_codes="4/VPCP",
            appendixes=("Phụ lục",),
        ),
        "steering_type": SteeringType.DIRECTIVE_REPORT,
        "to_places": ("Như trên", "Lưu: VT"),
        "response_for_task": ("CV-1",),
        "application_type": "QLVB",
    }
    earlier = f"{OFFICE},{EARLIER},90/VPCP-TH"
    businesses = {
        "new": Business(doc_type=BusinessDocType.NEW, reason="Mới", paper="0", staff=staff),
        "revocation": Business(doc_type=BusinessDocType.REVOCATION, reason="Thu hồi"),
        "update": Business(
            doc_type=BusinessDocType.UPDATE,
            document_info=BusinessDocumentInfo(
                document_info="1",
                document_receiver="1",
                receivers=(Receiver(organ_id=HANOI, receiver_type="1"),),
            ),
        ),
        "replacement": Business(
            doc_type=BusinessDocType.REPLACEMENT,
            document_id=earlier,
            replacements=(ReplacementInfo(document_id=earlier, organ_ids=(HANOI, NGHE_AN)),),
        ),
    }
    packages: dict[str, DocumentPackage | StatusPackage] = {
        name: new_document(business=value, **common) for name, value in businesses.items()
    }
    reply = new_document(
        business=businesses["new"],
        response_for=(
            ResponseFor(
                organ_id=HOME_AFFAIRS,
                code="55/BNV-VP",
                promulgation_date=NOW.date(),
                document_id=earlier,
            ),
        ),
        **common,
    )
    packages["reply"] = reply.model_copy(
        update={
            "trace": (*reply.trace, TraceHeader(organ_id=HOME_AFFAIRS, timestamp=NOW)),
            "trace_paper": "1",
            "manifest": manifest_for(attachments),
        }
    )
    for code in StatusCode:
        packages[f"status-{code.value}"] = new_status(
            sender=Organization(organ_id=HANOI, organ_name="UBND Thành phố Hà Nội"),
            response_for=ResponseFor(
                organ_id=OFFICE,
                code="202/VPCP-KSTT",
                promulgation_date=NOW.date(),
                document_id=DOCUMENT_ID,
            ),
            status_code=code,
            description=f"Trạng thái {code.value}",
            staff=None if code is StatusCode.ARRIVED else staff,
            at=NOW,
        )
    return packages


def zipped_file(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def test_the_library_reads_every_field_lienthong_writes(
    edxml102: Edxml102, files: Path, credentials: dict[str, Credential], tmp_path: Path
) -> None:
    packages = lienthong_packages(files)
    paths = []
    for name, package in packages.items():
        credential = credentials[sender_of(name)]
        signed = sign(write_package(package), credential.key_pem, credential.cert_pem)
        path = tmp_path / f"{name}.edxml"
        path.write_bytes(signed)
        paths.append(path)
    for name, parsed, package in zip(
        packages, edxml102.parse(paths), packages.values(), strict=True
    ):
        assert parsed_view(parsed) == library_view(package), name
        # The library sees lienthong's XML-DSig signature where it expects one.
        assert parsed["Signature"]["hasSignedInfo"] and parsed["Signature"]["SignatureValue"], name


def test_the_library_reads_what_lienthong_build_writes(
    edxml102: Edxml102, files: Path, tmp_path: Path
) -> None:
    output = tmp_path / "built.edxml"
    result = lienthong(
        "build", "--from", OFFICE, "--sender-name", "Văn phòng Chính phủ",
        "--to", f"{HANOI}=UBND Thành phố Hà Nội", "--to", NGHE_AN,
        "--number", "12", "--notation", "VPCP-TH", "--subject", "V/v thử nghiệm liên thông",
        "--signer", "Nguyễn Văn A", "--attach", files / "quyet-dinh.pdf", "-o", output,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (parsed,) = edxml102.parse([output])
    assert parsed_view(parsed) == library_view(read_package(output.read_bytes()))
    header = parsed["MessageHeader"]
    assert [to["OrganId"] for to in header["To"]] == [HANOI, NGHE_AN]
    assert header["Subject"] == "V/v thử nghiệm liên thông"
    (attachment,) = parsed["Attachment"]
    assert (
        attachment["sha256"] == hashlib.sha256((files / "quyet-dinh.pdf").read_bytes()).hexdigest()
    )


# -- a library package through the running exchange ---------------------------------------------


@pytest.mark.services
async def test_a_library_package_travels_through_the_exchange_to_the_inbox(
    exchange: ExchangeUnderTest, edxml102: Edxml102, files: Path, tmp_path: Path
) -> None:
    office = await exchange.register(OFFICE, "Văn phòng Chính phủ")
    hanoi = await exchange.register(HANOI, "UBND Thành phố Hà Nội")
    spec = document(files, To=[organization(HANOI, "UBND Thành phố Hà Nội")])
    (built,) = await asyncio.to_thread(edxml102.build, [spec], tmp_path / "built")
    signed = sign(built.read_bytes(), office.credential.key_pem, office.credential.cert_pem)

    async with exchange.workers(1), office.client() as client:
        await client.submit(signed, [HANOI])
        await exchange.wait_settled(1)

    (item,) = await exchange.inbox_of(hanoi)
    assert item.body == signed
    assert item.package == read_package(built.read_bytes())
    assert item.package.attachments[0].original() == (files / "bao-cao.txt").read_bytes()
    (receipt,) = await exchange.statuses_of(office)
    assert receipt.is_receipt and receipt.receipt.outcome is TransportOutcome.DELIVERED
    # What the recipient's own library reads from the delivered bytes is what was built.
    delivered = tmp_path / "delivered.edxml"
    delivered.write_bytes(item.body)
    (parsed,) = await asyncio.to_thread(edxml102.parse, [delivered])
    (original,) = await asyncio.to_thread(edxml102.parse, [built])
    assert parsed_view(parsed) == parsed_view(original)
