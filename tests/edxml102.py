"""The official edXML library (EdXML102-0.0.3.jar) as a test partner: it builds and parses packages.

Document-management systems build their edXML with this Java library, so
what it writes must pass the exchange, and what the exchange delivers must
read the same in it. The jar stays where ``../shared/clients/README.md``
puts it (``../shared/clients/edxml102/``, seen from the repository), never
copied here; its dependencies are Debian's (``libjdom2-java``,
``libguava-java``, ``libcommons-codec-java``, ``libslf4j-java``, installed by
``scripts/setup.sh`` with ``default-jdk-headless``), from /usr/share/java/.

:func:`compile_driver` compiles ``tests/java/Edxml102Driver.java`` into a
directory (once per session), or skips the test saying what is missing.
:meth:`Edxml102.run` hands the driver a batch of requests in one JVM;
:func:`library_view` renders a package model the way the driver reports
what the library parsed, so the two compare with ``==``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exchange.edxml.model import (
    DocumentPackage,
    Organization,
    ResponseFor,
    StaffInfo,
    StatusPackage,
    TraceHeader,
    format_date,
    format_timestamp,
)

REPO = Path(__file__).resolve().parents[1]
JAR = (REPO / ".." / "shared" / "clients" / "edxml102" / "EdXML102-0.0.3.jar").resolve()
DRIVER = REPO / "tests" / "java" / "Edxml102Driver.java"
JAVA_LIBRARIES = Path("/usr/share/java")
# The jars the library needs, and the Debian package of each.
DEBIAN_JARS = {
    "jdom2.jar": "libjdom2-java",
    "guava.jar": "libguava-java",
    "commons-codec.jar": "libcommons-codec-java",
    "slf4j-api.jar": "libslf4j-java",
    "slf4j-nop.jar": "libslf4j-java",
}
# The driver's whole batch; a JVM start and a few packages take a second or two.
RUN_TIMEOUT_S = 300


def missing() -> str | None:
    """Why the library cannot run here, or ``None`` when it can."""
    for tool in ("java", "javac"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH (install the Debian package default-jdk-headless)"
    if not JAR.is_file():
        return f"the official edXML library is not at {JAR}"
    for jar, package in DEBIAN_JARS.items():
        if not (JAVA_LIBRARIES / jar).is_file():
            return f"{JAVA_LIBRARIES / jar} is missing (install the Debian package {package})"
    return None


class LibraryError(AssertionError):
    """The library (or the driver) failed on a request; the message is the Java stack trace."""


@dataclass(frozen=True)
class Edxml102:
    """The compiled driver, with the classpath to run it and a scratch directory."""

    classes: Path
    classpath: str
    scratch: Path

    def run(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run a batch of requests in one JVM; raise :class:`LibraryError` if one failed."""
        request_file = self.scratch / "requests.json"
        response_file = self.scratch / "responses.json"
        request_file.write_text(json.dumps(requests, ensure_ascii=False), encoding="utf-8")
        response_file.unlink(missing_ok=True)
        completed = subprocess.run(
            [
                "java",
                # The library leaves its temporary files behind: keep them here.
                f"-Djava.io.tmpdir={self.scratch}",
                "-cp",
                f"{self.classes}:{self.classpath}",
                "Edxml102Driver",
                str(request_file),
                str(response_file),
            ],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        if completed.returncode != 0 or not response_file.is_file():
            raise LibraryError(f"the driver failed ({completed.returncode}): {completed.stderr}")
        responses: list[dict[str, Any]] = json.loads(response_file.read_text(encoding="utf-8"))
        for request, response in zip(requests, responses, strict=True):
            if "error" in response:
                raise LibraryError(f"{request['op']} failed in the library:\n{response['error']}")
        return responses

    def build(self, specs: list[dict[str, Any]], directory: Path) -> list[Path]:
        """Build a package per spec with the library's builders; the files it wrote."""
        directory.mkdir(parents=True, exist_ok=True)
        requests = [{"op": "build", "spec": spec, "dir": str(directory)} for spec in specs]
        return [Path(response["file"]) for response in self.run(requests)]

    def parse(self, files: list[Path]) -> list[dict[str, Any]]:
        """What the library's parsers read from each file (a status if it has a StatusCode)."""
        requests = [
            {
                "op": "parse-status" if b"StatusCode>" in file.read_bytes() else "parse-document",
                "file": str(file),
            }
            for file in files
        ]
        return self.run(requests)


def compile_driver(directory: Path) -> Edxml102:
    """Compile the driver into ``directory``; skip the test when Java or a jar is missing."""
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    classpath = ":".join([str(JAR), *(str(JAVA_LIBRARIES / jar) for jar in DEBIAN_JARS)])
    classes = directory / "classes"
    completed = subprocess.run(
        ["javac", "-encoding", "UTF-8", "-d", str(classes), "-cp", classpath, str(DRIVER)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, f"the driver does not compile:\n{completed.stderr}"
    scratch = directory / "scratch"
    scratch.mkdir()
    return Edxml102(classes, classpath, scratch)


# -- a package model as the driver reports what the library parsed ------------------------


def library_view(package: DocumentPackage | StatusPackage) -> dict[str, Any]:
    """The fields the library's parser would give for ``package``, in the driver's JSON.

    Follows the library's own defaults for what is absent (Type 2,
    TypeDetail -1, PromulgationAmount and PageAmount 1, Priority and
    SteeringType 0, Direction false), its ``cid:`` handling (the manifest's
    ContentId without one ``cid:``, the attachment's with one), and its
    unzipping (an attachment's ``sha256`` is that of
    :meth:`~exchange.edxml.model.Attachment.original`). What the library
    never reads back (TraceHeaderList's id, version and Paper) is left out.
    """
    view: dict[str, Any] = {}
    if package.trace:
        view["TraceHeaderList"] = _trace_view(package)
    if isinstance(package, StatusPackage):
        view["MessageHeader"] = {
            "From": _organization(package.sender),
            "ResponseFor": _response_for(package.response_for),
            "StaffInfo": _staff(package.staff),
            "StatusCode": package.status_code.value,
            "Description": package.description,
            "Timestamp": format_timestamp(package.timestamp),
        }
        return view
    other = package.other_info
    document_type = package.document_type
    view["MessageHeader"] = {
        "From": _organization(package.sender),
        "To": [_organization(to) for to in package.recipients],
        "DocumentId": package.document_id,
        "Code": {
            "CodeNumber": package.code.code_number,
            "CodeNotation": package.code.code_notation,
        },
        "PromulgationInfo": {
            "Place": package.promulgation.place,
            "PromulgationDate": format_date(package.promulgation.promulgation_date),
        },
        "DocumentType": None
        if document_type is None
        else {
            "Type": _number(document_type.type, 2),
            "TypeDetail": _number(document_type.type_detail, -1),
            "TypeName": document_type.type_name,
        },
        "Subject": package.subject,
        "Content": package.content,
        "SignerInfo": None
        if package.signer is None
        else {
            "Competence": package.signer.competence,
            "Position": package.signer.position,
            "FullName": package.signer.full_name,
        },
        "DueDate": format_date(package.due_date) if package.due_date else None,
        "ToPlaces": list(package.to_places),
        "OtherInfo": None
        if other is None
        else {
            "Priority": _number(other.priority.value if other.priority else None, 0),
            "SphereOfPromulgation": other.sphere_of_promulgation,
            "TyperNotation": other.typer_notation,
            "PromulgationAmount": _number(other.promulgation_amount, 1),
            "PageAmount": _number(other.page_amount, 1),
            "ReplyFors": other.reply_fors,
            "Direction": bool(other.direction),
            "ReferenceCodes": other.reference_codes,
            "Appendixes": list(other.appendixes),
        },
        "ResponseFor": [_response_for(response) for response in package.response_for],
        "SteeringType": _number(package.steering_type.value if package.steering_type else None, 0),
        "ResponseForTask": list(package.response_for_task) or None,
        "ApplicationType": package.application_type,
    }
    if view["MessageHeader"]["DocumentType"] is None:
        del view["MessageHeader"]["DocumentType"]
    if view["MessageHeader"]["SignerInfo"] is None:
        del view["MessageHeader"]["SignerInfo"]
    if view["MessageHeader"]["OtherInfo"] is None:
        del view["MessageHeader"]["OtherInfo"]
    if package.manifest is not None:
        view["edXMLManifest"] = {
            "version": package.manifest.version,
            "Reference": [
                {
                    "ContentId": _without_one_cid(reference.content_id),
                    "ContentType": reference.content_type,
                    "Description": reference.description,
                    "AttachmentName": reference.attachment_name,
                }
                for reference in package.manifest.references
            ],
        }
    view["Attachment"] = [
        {
            "ContentId": "cid:" + _without_one_cid(attachment.content_id),
            "AttachmentName": attachment.attachment_name,
            "Description": attachment.description,
            "ContentType": attachment.content_type,
            "FieldName": attachment.field_name,
            "MimeType": attachment.mime_type,
            "sha256": hashlib.sha256(attachment.original()).hexdigest(),
        }
        for attachment in package.attachments
    ]
    return view


def parsed_view(parsed: dict[str, Any]) -> dict[str, Any]:
    """What the driver reported, less what :func:`library_view` leaves out.

    The Signature (the model holds none), TraceHeaderList's id, version and
    Paper (the library never reads them back), and an attachment's
    ``format`` and ``file`` (where the library put it).
    """
    view = {key: value for key, value in parsed.items() if key != "Signature"}
    if "TraceHeaderList" in view:
        trace = dict(view["TraceHeaderList"])
        for key in ("id", "version", "Paper"):
            trace.pop(key)
        view["TraceHeaderList"] = trace
    if "Attachment" in view:
        view["Attachment"] = [
            {key: value for key, value in attachment.items() if key not in ("format", "file")}
            for attachment in view["Attachment"]
        ]
    return view


def _number(value: str | int | None, default: int) -> int:
    return default if value is None else int(value)


def _without_one_cid(content_id: str) -> str:
    return content_id[4:] if content_id.startswith("cid:") else content_id


def _organization(organization: Organization) -> dict[str, Any]:
    return {
        "OrganId": str(organization.organ_id),
        "OrganizationInCharge": organization.organization_in_charge,
        "OrganName": organization.organ_name,
        "OrganAdd": organization.organ_address,
        "Email": organization.email,
        "Telephone": organization.telephone,
        "Fax": organization.fax,
        "Website": organization.website,
    }


def _response_for(response: ResponseFor) -> dict[str, Any]:
    return {
        "OrganId": str(response.organ_id),
        "Code": response.code,
        "PromulgationDate": format_date(response.promulgation_date)
        if response.promulgation_date
        else None,
        "DocumentId": response.document_id,
    }


def _staff(staff: StaffInfo | None) -> dict[str, Any] | None:
    if staff is None:
        return None
    return {
        "Department": staff.department,
        "DepartmentId": staff.department_id,
        "Staff": staff.staff,
        "StaffId": staff.staff_id,
        "Email": staff.email,
        "Mobile": staff.mobile,
    }


def _hop(hop: TraceHeader) -> dict[str, Any]:
    return {"OrganId": str(hop.organ_id), "Timestamp": format_timestamp(hop.timestamp)}


def _trace_view(package: DocumentPackage | StatusPackage) -> dict[str, Any]:
    trace: dict[str, Any] = {"TraceHeader": [_hop(hop) for hop in package.trace]}
    business = package.business if isinstance(package, DocumentPackage) else None
    if business is not None:
        info = business.document_info
        trace["Bussiness"] = {
            "DocumentId": business.document_id,
            "BussinessDocType": business.doc_type.value,
            "BussinessDocReason": business.reason,
            "Paper": business.paper,
            "BussinessDocumentInfo": []
            if info is None
            else [
                {
                    "DocumentInfo": info.document_info,
                    "DocumentReceiver": info.document_receiver,
                    "ReceiverList": [
                        [
                            {"OrganId": str(r.organ_id), "ReceiverType": r.receiver_type}
                            for r in info.receivers
                        ]
                    ]
                    if info.receivers
                    else [],
                }
            ],
            "ReplacementInfoList": [
                [
                    {
                        "DocumentId": replacement.document_id,
                        "OrganIdList": [str(code) for code in replacement.organ_ids],
                    }
                    for replacement in business.replacements
                ]
            ]
            if business.replacements
            else [],
            "StaffInfo": [] if business.staff is None else [_staff(business.staff)],
        }
    return trace
