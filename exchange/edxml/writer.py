"""Write a package model as edXML bytes, in the shape real packages have.

The output is UTF-8 with an XML declaration, unsigned (the signature module
adds the ``Signature`` to ``edXMLHeader``). Like the packages real senders
produce, the root ``<edXML>`` declares the edXML namespace as the default,
the envelope declares it again with the prefix ``edXML:`` (so the header
reads ``<edXML:From>``), and ``AttachmentEncoded`` follows the envelope.
Elements come in the order of DESIGN.md section 2; dates are written
``yyyy/MM/dd``, timestamps ``yyyy/MM/dd HH:mm:ss`` and ``Bussiness`` is
spelled as on the wire.

Also here: :func:`new_document` and :func:`new_status`, which build a
package from metadata (and files) for the CLI and the client.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from enum import Enum
from pathlib import Path

from lxml import etree

from exchange.edxml import names
from exchange.edxml.model import (
    VIETNAM_TIME,
    Attachment,
    Business,
    Code,
    DocumentPackage,
    DocumentType,
    Manifest,
    ManifestReference,
    Organization,
    OtherInfo,
    PromulgationInfo,
    ResponseFor,
    SignerInfo,
    StaffInfo,
    StatusPackage,
    TraceHeader,
    format_date,
    format_timestamp,
    make_document_id,
)
from exchange.status import BusinessDocType, StatusCode

Element = etree._Element

# Double quotes, as every real package writes it (lxml would use single ones).
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

# Manifest version of every real package.
MANIFEST_VERSION = "1.0"


def write_package(package: DocumentPackage | StatusPackage) -> bytes:
    """The package as edXML bytes (UTF-8, declaration, unsigned)."""
    root = etree.Element(names.ROOT, nsmap={None: names.EDXML_NS})  # type: ignore[dict-item]
    envelope = etree.SubElement(root, names.ENVELOPE, nsmap={"edXML": names.EDXML_NS})
    header = etree.SubElement(envelope, names.HEADER)
    message = etree.SubElement(header, names.MESSAGE_HEADER)
    if isinstance(package, StatusPackage):
        _status(message, package)
        _trace(header, package, None)
    else:
        _document(message, package)
        _trace(header, package, package.business)
        if package.manifest is not None:
            _manifest(etree.SubElement(envelope, names.BODY), package.manifest)
        if package.attachments:
            _attachments(root, package.attachments)
    etree.indent(root, space="  ")
    return _DECLARATION + etree.tostring(root, encoding="UTF-8")


# -- building blocks ------------------------------------------------------------


def _add(parent: Element, name: str, value: object = None) -> Element:
    """Append ``<name>`` (text ``value`` if given) to ``parent``."""
    child = etree.SubElement(parent, names.q(name))
    if value is not None:
        child.text = _wire(value)
    return child


def _wire(value: object) -> str:
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, date):
        return format_date(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):  # the code lists: their wire value
        return str(value.value)
    return str(value)


def _optional(parent: Element, name: str, value: object) -> None:
    """Append ``<name>`` only when there is something to say."""
    if value is not None:
        _add(parent, name, value)


def _texts(parent: Element, container: str, name: str, values: Sequence[str]) -> None:
    if values:
        holder = _add(parent, container)
        for value in values:
            _add(holder, name, value)


def _organization(parent: Element, name: str, organization: Organization) -> None:
    element = _add(parent, name)
    _add(element, "OrganId", organization.organ_id)
    _optional(element, "OrganizationInCharge", organization.organization_in_charge)
    _optional(element, "OrganName", organization.organ_name)
    _optional(element, "OrganAdd", organization.organ_address)
    _optional(element, "Email", organization.email)
    _optional(element, "Telephone", organization.telephone)
    _optional(element, "Fax", organization.fax)
    _optional(element, "Website", organization.website)


def _response_for(parent: Element, response: ResponseFor) -> None:
    element = _add(parent, "ResponseFor")
    _add(element, "OrganId", response.organ_id)
    _add(element, "Code", response.code)
    _optional(element, "PromulgationDate", response.promulgation_date)
    _optional(element, "DocumentId", response.document_id)


def _staff(parent: Element, staff: StaffInfo | None) -> None:
    if staff is None:
        return
    element = _add(parent, "StaffInfo")
    _optional(element, "Department", staff.department)
    _optional(element, "DepartmentId", staff.department_id)
    _optional(element, "Staff", staff.staff)
    _optional(element, "StaffId", staff.staff_id)
    _optional(element, "Mobile", staff.mobile)
    _optional(element, "Email", staff.email)


# -- the header ---------------------------------------------------------------------


def _document(message: Element, package: DocumentPackage) -> None:
    _organization(message, "From", package.sender)
    for recipient in package.recipients:
        _organization(message, "To", recipient)
    _optional(message, "DocumentId", package.document_id)
    code = _add(message, "Code")
    _add(code, "CodeNumber", package.code.code_number)
    _add(code, "CodeNotation", package.code.code_notation)
    _promulgation(message, package.promulgation)
    _document_type(message, package.document_type)
    _add(message, "Subject", package.subject)
    _optional(message, "Content", package.content)
    _signer(message, package.signer)
    _optional(message, "DueDate", package.due_date)
    _other_info(message, package.other_info)
    for response in package.response_for:
        _response_for(message, response)
    _optional(message, "SteeringType", package.steering_type)
    _texts(message, "ResponseForTask", "TaskCode", package.response_for_task)
    _optional(message, "ApplicationType", package.application_type)
    _texts(message, "ToPlaces", "Place", package.to_places)


def _promulgation(message: Element, info: PromulgationInfo) -> None:
    element = _add(message, "PromulgationInfo")
    _optional(element, "Place", info.place)
    _add(element, "PromulgationDate", info.promulgation_date)


def _document_type(message: Element, document_type: DocumentType | None) -> None:
    if document_type is None:
        return
    element = _add(message, "DocumentType")
    _optional(element, "Type", document_type.type)
    _optional(element, "TypeDetail", document_type.type_detail)
    _optional(element, "TypeName", document_type.type_name)


def _signer(message: Element, signer: SignerInfo | None) -> None:
    if signer is None:
        return
    element = _add(message, "SignerInfo")
    _optional(element, "Competence", signer.competence)
    _optional(element, "Position", signer.position)
    _optional(element, "FullName", signer.full_name)


def _other_info(message: Element, info: OtherInfo | None) -> None:
    if info is None:
        return
    element = _add(message, "OtherInfo")
    _optional(element, "Priority", info.priority)
    _optional(element, "SphereOfPromulgation", info.sphere_of_promulgation)
    _optional(element, "TyperNotation", info.typer_notation)
    _optional(element, "PromulgationAmount", info.promulgation_amount)
    _optional(element, "PageAmount", info.page_amount)
    _optional(element, "ReplyFors", info.reply_fors)
    _optional(element, "Direction", info.direction)
    _optional(element, "ReferenceCodes", info.reference_codes)
    _texts(element, "Appendixes", "Appendix", info.appendixes)


def _status(message: Element, package: StatusPackage) -> None:
    _organization(message, "From", package.sender)
    _response_for(message, package.response_for)
    _staff(message, package.staff)
    _add(message, "StatusCode", package.status_code)
    _optional(message, "Description", package.description)
    _add(message, "Timestamp", package.timestamp)


def _trace(
    header: Element, package: DocumentPackage | StatusPackage, business: Business | None
) -> None:
    trace: Sequence[TraceHeader] = package.trace
    extras = (package.trace_paper, package.trace_list_id, package.trace_list_version)
    if not trace and business is None and extras == (None, None, None):
        return
    element = etree.SubElement(header, names.TRACE_HEADER_LIST)
    if package.trace_list_id is not None:
        element.set("id", package.trace_list_id)
    if package.trace_list_version is not None:
        element.set("version", package.trace_list_version)
    # Paper first, where the official library writes it (and the XSD wants it).
    _optional(element, "Paper", package.trace_paper)
    for hop in trace:
        hop_element = _add(element, "TraceHeader")
        _add(hop_element, "OrganId", hop.organ_id)
        _add(hop_element, "Timestamp", hop.timestamp)
    if business is not None:
        _business(element, business)


def _business(parent: Element, business: Business) -> None:
    element = _add(parent, "Bussiness")
    _optional(element, "DocumentId", business.document_id)
    _add(element, "BussinessDocType", business.doc_type)
    _optional(element, "BussinessDocReason", business.reason)
    _optional(element, "Paper", business.paper)
    info = business.document_info
    if info is not None:
        info_element = _add(element, "BussinessDocumentInfo")
        _optional(info_element, "DocumentInfo", info.document_info)
        _optional(info_element, "DocumentReceiver", info.document_receiver)
        if info.receivers:
            receivers = _add(info_element, "ReceiverList")
            for receiver in info.receivers:
                receiver_element = _add(receivers, "Receiver")
                _add(receiver_element, "OrganId", receiver.organ_id)
                _optional(receiver_element, "ReceiverType", receiver.receiver_type)
    if business.replacements:
        replacements = _add(element, "ReplacementInfoList")
        for replacement in business.replacements:
            replacement_element = _add(replacements, "ReplacementInfo")
            _add(replacement_element, "DocumentId", replacement.document_id)
            organ_ids = [str(code) for code in replacement.organ_ids]
            _texts(replacement_element, "OrganIdList", "OrganId", organ_ids)
    _staff(element, business.staff)


# -- the body ---------------------------------------------------------------------------


def _manifest(body: Element, manifest: Manifest) -> None:
    element = etree.SubElement(body, names.MANIFEST)
    if manifest.version is not None:
        element.set("version", manifest.version)
    for reference in manifest.references:
        reference_element = _add(element, "Reference")
        _add(reference_element, "ContentId", reference.content_id)
        _optional(reference_element, "ContentType", reference.content_type)
        _optional(reference_element, "Description", reference.description)
        _optional(reference_element, "AttachmentName", reference.attachment_name)


def _attachments(root: Element, attachments: Iterable[Attachment]) -> None:
    element = etree.SubElement(root, names.ATTACHMENT_ENCODED)
    for attachment in attachments:
        attachment_element = _add(element, "Attachment")
        _add(attachment_element, "ContentId", attachment.content_id)
        _add(attachment_element, "AttachmentName", attachment.attachment_name)
        _optional(attachment_element, "Description", attachment.description)
        _optional(attachment_element, "FieldName", attachment.field_name)
        _optional(attachment_element, "MimeType", attachment.mime_type)
        _optional(attachment_element, "ContentType", attachment.content_type)
        _add(attachment_element, "ContentTransferEncoded", attachment.encoded)


# -- builders ---------------------------------------------------------------------------------


def attachment_from_file(
    path: Path | str, *, content_type: str | None = None, description: str | None = None
) -> Attachment:
    """An attachment holding the file's bytes as they are (zip it first to send it zipped)."""
    path = Path(path)
    guessed = content_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Attachment.from_bytes(
        path.read_bytes(), path.name, content_type=guessed, description=description
    )


def manifest_for(attachments: Iterable[Attachment]) -> Manifest:
    """The manifest listing ``attachments``, one Reference each."""
    return Manifest(
        version=MANIFEST_VERSION,
        references=tuple(
            ManifestReference(
                content_id=a.content_id,
                content_type=a.content_type,
                description=a.description,
                attachment_name=a.attachment_name,
            )
            for a in attachments
        ),
    )


def _now() -> datetime:
    return datetime.now(VIETNAM_TIME).replace(tzinfo=None, microsecond=0)


def new_document(
    *,
    sender: Organization,
    recipients: Sequence[Organization],
    code: Code,
    subject: str,
    promulgation_date: date,
    place: str,
    document_type: DocumentType,
    signer: SignerInfo,
    attachments: Sequence[Attachment] = (),
    document_id: str | None = None,
    business: Business | None = None,
    sent_at: datetime | None = None,
    **header: object,
) -> DocumentPackage:
    """A new document package from its metadata and files, ready to be signed and sent.

    The DocumentId defaults to the convention
    ``<sender>,<yyyy/MM/dd>,<number>/<notation>``; the trace starts with the
    sender at ``sent_at`` (now, in Vietnam time, by default); the manifest
    lists every attachment; ``business`` defaults to a new document (type 0).
    ``place``, ``document_type`` and ``signer`` are required here although
    the model lets a received package lack them: the exchange's schema check
    (schemas/edxml-document.xsd) refuses a document without them, and so do
    recipients' registers. Other header fields (``content``, ``due_date``,
    ``other_info``, ``response_for``, ``steering_type``, ``to_places``) pass
    through as keywords. Raises pydantic's ``ValidationError`` for metadata
    the model refuses.
    """
    return DocumentPackage.model_validate(
        {
            "sender": sender,
            "recipients": tuple(recipients),
            "document_id": document_id
            or make_document_id(sender.organ_id, promulgation_date, code),
            "code": code,
            "promulgation": PromulgationInfo(place=place, promulgation_date=promulgation_date),
            "subject": subject,
            "document_type": document_type,
            "signer": signer,
            "trace": (TraceHeader(organ_id=sender.organ_id, timestamp=sent_at or _now()),),
            "business": business or Business(doc_type=BusinessDocType.NEW),
            "manifest": manifest_for(attachments),
            "attachments": tuple(attachments),
            **header,
        }
    )


def new_status(
    *,
    sender: Organization,
    response_for: ResponseFor,
    status_code: StatusCode,
    description: str | None = None,
    staff: StaffInfo | None = None,
    at: datetime | None = None,
) -> StatusPackage:
    """A status package: ``sender`` reports ``status_code`` for the document ``response_for``."""
    return StatusPackage(
        sender=sender,
        response_for=response_for,
        status_code=status_code,
        description=description,
        staff=staff,
        timestamp=at or _now(),
    )
