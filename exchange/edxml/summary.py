"""What a package says, in brief: for a clerk at a terminal or an integrator's script.

:func:`summarize` turns a package read by :mod:`exchange.edxml.reader` into a
:class:`PackageSummary`, the shape ``lienthong show --json`` prints, and
:func:`summary_lines` into the lines ``lienthong show`` prints. Pure: no
file, no network. An attachment is decoded only when the sender's library
zipped it, for the size of the file a reader gets; other sizes are computed
from the base64 text.
"""

from __future__ import annotations

import contextlib
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from exchange.edxml.model import (
    Attachment,
    DocumentPackage,
    Organization,
    ResponseFor,
    StatusPackage,
    format_date,
    format_timestamp,
)
from exchange.reasons import Rejection


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)


class AgencySummary(_Out):
    """An agency as a package names it."""

    code: str
    name: str | None = None


class AttachmentSummary(_Out):
    """One attached file: its name, declared type and size in bytes once decoded."""

    name: str
    content_type: str | None
    size: int
    description: str | None = None
    # Zipped for the journey by the sender's library (Attachment.zipped): the
    # size of the file a reader gets once unzipped; None when it cannot be.
    zipped: bool = False
    original_size: int | None = None


class HopSummary(_Out):
    """One TraceHeader: an agency the package passed, and when."""

    organ_id: str
    timestamp: str | None  # yyyy/MM/dd HH:mm:ss; None when the relay wrote no real day


class AnsweredSummary(_Out):
    """A ResponseFor: the document answered (or, in a status, reported on)."""

    organ_id: str
    code: str
    document_id: str | None
    promulgation_date: str | None


class PackageSummary(_Out):
    """What one package says: the object ``lienthong show --json`` prints per file."""

    kind: Literal["document", "status"]
    sender: str = Field(serialization_alias="from", description="the sender's agency code")
    sender_name: str | None = Field(serialization_alias="from_name")
    to: list[str] = Field(description="the recipients' agency codes, in order")
    recipients: list[AgencySummary]
    document_id: str | None
    code: str | None = None
    subject: str | None = None
    business: str | None = Field(None, description="new, revocation, update or replacement")
    promulgation_date: str | None = None
    place: str | None = None
    due_date: str | None = None
    document_type: str | None = None
    priority: str | None = None
    status_code: str | None = None
    status_description: str | None = None
    timestamp: str | None = None
    response_for: list[AnsweredSummary] = []
    trace: list[HopSummary] = []
    attachments: list[AttachmentSummary] = []
    warnings: list[str] = []


def summarize(package: DocumentPackage | StatusPackage) -> PackageSummary:
    """The summary of a package already read."""
    trace = [
        HopSummary(
            organ_id=str(hop.organ_id),
            timestamp=None if hop.timestamp is None else format_timestamp(hop.timestamp),
        )
        for hop in package.trace
    ]
    if isinstance(package, StatusPackage):
        answered = package.response_for
        return PackageSummary(
            kind="status",
            sender=str(package.sender.organ_id),
            sender_name=package.sender.organ_name,
            to=[str(answered.organ_id)],
            recipients=[AgencySummary(code=str(answered.organ_id))],
            document_id=answered.document_id,
            code=answered.code,
            status_code=package.status_code.value,
            status_description=package.description,
            timestamp=format_timestamp(package.timestamp),
            response_for=[_answered(answered)],
            trace=trace,
            warnings=list(package.warnings),
        )
    other = package.other_info
    return PackageSummary(
        kind="document",
        sender=str(package.sender.organ_id),
        sender_name=package.sender.organ_name,
        to=[str(code) for code in package.recipient_codes],
        recipients=[_agency(recipient) for recipient in package.recipients],
        document_id=package.document_id,
        code=str(package.code),
        subject=package.subject,
        business=package.business_doc_type.name.lower(),
        promulgation_date=_date(package.promulgation.promulgation_date),
        place=package.promulgation.place,
        due_date=_date(package.due_date),
        document_type=package.document_type.type_name if package.document_type else None,
        priority=None if other is None or other.priority is None else other.priority.name.lower(),
        response_for=[_answered(answered) for answered in package.response_for],
        trace=trace,
        attachments=[_attachment(attachment) for attachment in package.attachments],
        warnings=list(package.warnings),
    )


def summary_lines(summary: PackageSummary) -> list[str]:
    """The summary as aligned lines for a terminal (without the file name)."""
    rows: list[tuple[str, str]] = []

    def row(label: str, value: object) -> None:
        if value not in (None, "", []):
            rows.append((label, str(value)))

    row("From", _named(AgencySummary(code=summary.sender, name=summary.sender_name)))
    for n, recipient in enumerate(summary.recipients):
        row("To" if n == 0 else "", _named(recipient))
    row("DocumentId", summary.document_id)
    row("Code", summary.code)
    if summary.kind == "status":
        row("Status", " ".join(filter(None, (summary.status_code, summary.status_description))))
        row("Timestamp", summary.timestamp)
    row("Subject", summary.subject)
    row("Type", summary.document_type)
    promulgated = ", ".join(filter(None, (summary.promulgation_date, summary.place)))
    row("Promulgated", promulgated)
    row("Due", summary.due_date)
    row("Priority", summary.priority)
    for n, answered in enumerate(summary.response_for):
        if summary.kind == "document":
            dated = f" of {answered.promulgation_date}" if answered.promulgation_date else ""
            row("Answers" if n == 0 else "", f"{answered.organ_id} {answered.code}{dated}")
    for n, hop in enumerate(summary.trace):
        row("Trace" if n == 0 else "", f"{hop.organ_id}  {hop.timestamp or '(no real day)'}")
    for n, attached in enumerate(summary.attachments):
        unzipped = ""
        if attached.zipped:
            unzipped = (
                f", zipped: {_size(attached.original_size)} unzipped"
                if attached.original_size is not None
                else ", zipped: cannot be unzipped"
            )
        row(
            "Attachments" if n == 0 else "",
            f"{attached.name} ({attached.content_type or 'no type'}, "
            f"{_size(attached.size)}{unzipped})",
        )
    for n, warning in enumerate(summary.warnings):
        row("Warnings" if n == 0 else "", warning)
    width = max(len(label) for label, _ in rows) + 2
    return [f"  {(label + ':') if label else '':<{width}}{value}" for label, value in rows]


def decoded_size(attachment: Attachment) -> int:
    """The size in bytes of an attachment once decoded, from its base64 text alone."""
    text = attachment.encoded
    letters = len(text) - sum(text.count(space) for space in " \t\r\n")
    padding = len(text.rstrip()) - len(text.rstrip().rstrip("="))
    return max(letters * 3 // 4 - padding, 0)


def _agency(organization: Organization) -> AgencySummary:
    return AgencySummary(code=str(organization.organ_id), name=organization.organ_name)


def _answered(answered: ResponseFor) -> AnsweredSummary:
    return AnsweredSummary(
        organ_id=str(answered.organ_id),
        code=answered.code,
        document_id=answered.document_id,
        promulgation_date=_date(answered.promulgation_date),
    )


def _attachment(attachment: Attachment) -> AttachmentSummary:
    original_size = None
    if attachment.zipped:
        with contextlib.suppress(Rejection):
            original_size = len(attachment.original())
    return AttachmentSummary(
        name=attachment.attachment_name,
        content_type=attachment.content_type,
        size=decoded_size(attachment),
        description=attachment.description,
        zipped=attachment.zipped,
        original_size=original_size,
    )


def _date(value: date | datetime | None) -> str | None:
    return None if value is None else format_date(value)


def _named(agency: AgencySummary) -> str:
    return f"{agency.code} {agency.name}" if agency.name not in (None, agency.code) else agency.code


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.1f} MiB"
