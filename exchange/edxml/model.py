"""The edXML packages of QCVN 102:2016 as immutable values.

Two kinds of package travel over the exchange: a :class:`DocumentPackage`
(a văn bản with its metadata and attached files) and a :class:`StatusPackage`
(what became of a document at one recipient). Both are frozen pydantic
models that compare by value, so ``read_package(write_package(m)) == m``.

The models hold what the package *says*, normalised once: text stripped
(blank optional text is ``None``), agency codes parsed, dates as
:class:`~datetime.date`, timestamps as naive :class:`~datetime.datetime` in
Vietnam's local time to the second (the wire has no zone and no fraction),
code lists as the enums of :mod:`exchange.status`. Attached files keep their
base64 text; :meth:`Attachment.decode` decodes one on demand, so reading the
header of a 20 MB package decodes nothing.

Field names are English renderings of the wire names; each class docstring
gives the element it stands for.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import string
import uuid
import zipfile
import zlib
from datetime import date, datetime, timedelta, timezone
from typing import Annotated, NamedTuple

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from exchange.agency import AgencyCode
from exchange.reasons import Reason, Rejection
from exchange.status import BusinessDocType, Priority, StatusCode, SteeringType

# Vietnam has kept UTC+7 without daylight saving since 1975, so a fixed
# offset is exact and needs no tz database on the worker.
VIETNAM_TIME = timezone(timedelta(hours=7), "ICT")

# Characters XML 1.0 cannot carry at all; a model holding one could never be
# written, so it is refused when the model is built.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean_text(value: object) -> object:
    """Strip text and refuse characters XML cannot carry (before pydantic's checks)."""
    if not isinstance(value, str):
        return value
    value = value.strip()
    bad = _NOT_XML_CHAR.search(value)
    if bad is not None:
        raise ValueError(f"character U+{ord(bad.group()):04X} cannot be written in XML")
    return value


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def _blank_to_none(value: object) -> object:
    cleaned = _clean_text(value)
    return None if cleaned == "" else cleaned


def _to_wire_time(value: datetime) -> datetime:
    """Vietnam local time, naive, to the second: what a wire timestamp can say."""
    if value.tzinfo is not None:
        value = value.astimezone(VIETNAM_TIME).replace(tzinfo=None)
    return value.replace(microsecond=0)


Text = Annotated[str, BeforeValidator(_clean_text), Field(min_length=1)]
"""Required text: stripped, never empty."""

OptionalText = Annotated[str | None, BeforeValidator(_blank_to_none)]
"""Optional text: stripped; blank is ``None``."""

Timestamp = Annotated[datetime, AfterValidator(_to_wire_time)]
"""A wire timestamp: naive Vietnam local time, whole seconds."""


class _Value(BaseModel):
    """Base of every edXML model: immutable, compared by value, no stray fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# -- the parts of a message header -------------------------------------------


class Organization(_Value):
    """An agency as named in ``From`` or ``To`` (cơ quan gửi / nhận)."""

    organ_id: AgencyCode  # OrganId, mã định danh
    organization_in_charge: OptionalText = None  # OrganizationInCharge, cơ quan chủ quản
    organ_name: OptionalText = None  # OrganName
    organ_address: OptionalText = None  # OrganAdd
    email: OptionalText = None
    telephone: OptionalText = None
    fax: OptionalText = None
    website: OptionalText = None


class Code(_Value):
    """``Code``: the number and notation of a document (số, ký hiệu văn bản)."""

    code_number: Text  # CodeNumber, e.g. "7816"
    code_notation: Text  # CodeNotation, e.g. "VPCP-TTĐT"

    def __str__(self) -> str:
        """As written on the document: ``7816/VPCP-TTĐT``."""
        return f"{self.code_number}/{self.code_notation}"


class PromulgationInfo(_Value):
    """``PromulgationInfo``: where and when the document was issued (ban hành)."""

    place: OptionalText = None
    promulgation_date: date


class DocumentType(_Value):
    """``DocumentType``: the kind of document (loại văn bản), as the sender codes it."""

    type: OptionalText = None
    type_detail: OptionalText = None
    type_name: OptionalText = None  # e.g. "Công văn"


class SignerInfo(_Value):
    """``SignerInfo``: who signed the document (người ký)."""

    competence: OptionalText = None  # e.g. "TL. BỘ TRƯỞNG"
    position: OptionalText = None
    full_name: OptionalText = None


class OtherInfo(_Value):
    """``OtherInfo``: urgency, scope, counts and appendixes."""

    priority: Priority | None = None  # độ khẩn
    sphere_of_promulgation: OptionalText = None  # phạm vi ban hành
    typer_notation: OptionalText = None  # ký hiệu người đánh máy
    promulgation_amount: int | None = Field(None, ge=0)  # số bản phát hành
    page_amount: int | None = Field(None, ge=0)  # số trang
    reply_fors: OptionalText = None  # ReplyFors (official library, not the regulation)
    direction: bool | None = None
    reference_codes: OptionalText = None  # ReferenceCodes (official library)
    appendixes: tuple[Text, ...] = ()  # Appendixes/Appendix*


class ResponseFor(_Value):
    """``ResponseFor``: the document this package answers (văn bản được phúc đáp).

    In a status package, ``organ_id`` is the original sender of the document
    the status is about.
    """

    organ_id: AgencyCode
    code: Text  # the document's "number/notation" as one text
    promulgation_date: date | None = None
    document_id: OptionalText = None


class StaffInfo(_Value):
    """``StaffInfo``: the clerk who handled the package (cán bộ xử lý)."""

    department: OptionalText = None
    department_id: OptionalText = None  # DepartmentId (official library, not the regulation)
    staff: OptionalText = None
    staff_id: OptionalText = None  # StaffId (official library)
    mobile: OptionalText = None
    email: OptionalText = None


class TraceHeader(_Value):
    """``TraceHeader``: one hop of the package (each relay appends one).

    ``timestamp`` is ``None`` when a relay wrote a day that does not exist
    (the package's ``warnings`` say which).
    """

    organ_id: AgencyCode
    timestamp: Timestamp | None


class Receiver(_Value):
    """``ReceiverList/Receiver`` of an update: a recipient and its role."""

    organ_id: AgencyCode
    receiver_type: OptionalText = None


class BusinessDocumentInfo(_Value):
    """``BussinessDocumentInfo``: what an update (BussinessDocType 2) changes."""

    document_info: OptionalText = None
    document_receiver: OptionalText = None
    receivers: tuple[Receiver, ...] = ()


class ReplacementInfo(_Value):
    """``ReplacementInfo``: a document being replaced, and at which recipients."""

    document_id: Text
    organ_ids: tuple[AgencyCode, ...] = ()  # OrganIdList/OrganId*


class Business(_Value):
    """``Bussiness`` (sic, as on the wire): what the package does to the document."""

    document_id: OptionalText = None
    doc_type: BusinessDocType  # BussinessDocType: new, revocation, update, replacement
    reason: OptionalText = None  # BussinessDocReason
    paper: OptionalText = None  # whether a paper copy follows
    document_info: BusinessDocumentInfo | None = None
    replacements: tuple[ReplacementInfo, ...] = ()  # ReplacementInfoList
    staff: StaffInfo | None = None


# -- the body ------------------------------------------------------------------


def content_id_key(content_id: str) -> str:
    """The part of a ContentId that identifies the file, without ``cid:`` or brackets.

    Senders write ``cid:209`` on one side and ``209`` on the other; both
    sides name the same file.
    """
    key = content_id.strip()
    if key[:4].lower() == "cid:":
        key = key[4:]
    return key.strip().strip("<>")


class ManifestReference(_Value):
    """``edXMLManifest/Reference``: the manifest's entry for one attached file."""

    content_id: Text  # usually "cid:..."
    content_type: OptionalText = None
    description: OptionalText = None
    attachment_name: OptionalText = None

    @property
    def key(self) -> str:
        """The ContentId without its ``cid:`` prefix, to match an :class:`Attachment`."""
        return content_id_key(self.content_id)


class Manifest(_Value):
    """``edXMLBody/edXMLManifest``: the list of attached files."""

    version: OptionalText = None  # the version attribute, "1.0" in real packages
    references: tuple[ManifestReference, ...] = ()


# The most Attachment.original() unzips: the largest package the exchange
# takes (Settings.max_package_bytes' default); a zip bomb stops there.
ORIGINAL_MAX_BYTES = 64 * 1024 * 1024

# The base64 alphabet, and the ASCII characters str.split() takes for whitespace.
_BASE64_LETTERS = string.ascii_letters.encode() + string.digits.encode() + b"+/"
_SPLIT_WHITESPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"


class Attachment(_Value):
    """``AttachmentEncoded/Attachment``: one attached file, kept base64-encoded.

    ``encoded`` is the ContentTransferEncoded text exactly as received (real
    senders zip each file first; the exchange never looks inside). Call
    :meth:`decode` for the bytes as sent, :meth:`original` for the file as
    its sender had it before zipping.
    """

    content_id: Text
    attachment_name: Text
    description: OptionalText = None
    field_name: OptionalText = None  # FieldName (official library, not the regulation)
    mime_type: OptionalText = None  # MimeType (official library)
    content_type: OptionalText = None
    # Kept out of repr: it can be tens of megabytes. Only stripped, not
    # scanned: base64 is checked when decoded.
    encoded: Annotated[str, BeforeValidator(_strip)] = Field(repr=False)

    @property
    def key(self) -> str:
        """The ContentId without its ``cid:`` prefix, to match a manifest entry."""
        return content_id_key(self.content_id)

    def check(self) -> None:
        """Refuse, as :meth:`decode` would, text that is not strict base64, without decoding it.

        What the worker checks of every attachment (a recipient's QLVB must
        be able to open it): the same rule as :meth:`decode` in about a
        ninth of the time for ASCII text (0.6 against 5.3 ms for a 1 MB
        file), by deleting the alphabet in one C pass and looking at what
        is left: whitespace, and padding at the end only.
        """
        try:
            data = self.encoded.encode("ascii")
        except UnicodeEncodeError:
            self.decode()  # outside ASCII: decode's own rule, whatever the text holds
            return
        rest = data.translate(None, _BASE64_LETTERS)
        padding = rest.count(b"=")
        if rest.translate(None, _SPLIT_WHITESPACE + b"="):
            raise self._not_base64("it holds characters outside the base64 alphabet")
        letters = len(data) - len(rest)
        if (letters + padding) % 4 or padding > 2:
            raise self._not_base64("its length or padding is wrong")
        # Every "=" must be among the last characters, whitespace aside.
        position, seen = len(data) - 1, 0
        while seen < padding:
            if data[position] != ord("="):
                if data[position] not in _SPLIT_WHITESPACE:
                    raise self._not_base64("padding comes before the end")
            else:
                seen += 1
            position -= 1

    def decode(self) -> bytes:
        """The file's bytes; a :class:`Rejection` if the text is not strict base64."""
        compact = "".join(self.encoded.split())
        if len(compact) % 4 or compact.endswith("==="):
            raise self._not_base64("its length or padding is wrong")
        try:
            # Strict mode refuses characters outside the alphabet, surplus
            # padding ("QUJD====") and data after padding, in one C pass.
            return binascii.a2b_base64(compact, strict_mode=True)
        except (binascii.Error, ValueError) as error:
            raise self._not_base64(str(error)) from None

    @property
    def zipped(self) -> bool:
        """Whether the sender zipped the file for the journey.

        The official library's rule, which its parser undoes: ContentType
        ``application/zip`` on a file whose name does not end in ``.zip``
        (it zips every file but pdf, doc, docx, xsl, xslx and zip ones).
        """
        content_type = (self.content_type or "").strip().lower()
        return content_type == "application/zip" and not self.attachment_name.lower().endswith(
            ".zip"
        )

    def original(self, max_bytes: int = ORIGINAL_MAX_BYTES) -> bytes:
        """The file as its sender had it: :meth:`decode`, unzipped when :attr:`zipped`.

        As the official library's parser does, a zipped file is the first
        entry of the zip. A :class:`Rejection` (``BAD_ATTACHMENT``) if the
        text is not base64, the zip is broken or empty, or the file unzips
        to more than ``max_bytes`` (a zip bomb is not read past that).
        """
        data = self.decode()
        if not self.zipped:
            return data
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                entries = archive.infolist()
                if not entries:
                    raise self._bad_zip("the zip holds no file")
                with archive.open(entries[0]) as entry:
                    content = entry.read(max_bytes + 1)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError) as error:
            raise self._bad_zip(
                f"it is labelled application/zip but cannot be unzipped: {error}"
            ) from None
        except (EOFError, zlib.error) as error:
            raise self._bad_zip(f"its zip is truncated or corrupt: {error}") from None
        if len(content) > max_bytes:
            raise self._bad_zip(f"it unzips to more than {max_bytes} bytes")
        return content

    def _bad_zip(self, detail: str) -> Rejection:
        return Rejection.of(
            Reason.BAD_ATTACHMENT,
            f"the attached file {self.attachment_name!r} cannot be opened: {detail}",
            f"AttachmentEncoded/Attachment[{self.content_id}]/ContentTransferEncoded",
        )

    def _not_base64(self, detail: str) -> Rejection:
        return Rejection.of(
            Reason.BAD_ATTACHMENT,
            f"the attached file {self.attachment_name!r} is not valid base64 ({detail})",
            f"AttachmentEncoded/Attachment[{self.content_id}]/ContentTransferEncoded",
        )

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        attachment_name: str,
        *,
        content_type: str | None = "application/octet-stream",
        description: str | None = None,
        content_id: str | None = None,
    ) -> Attachment:
        """An attachment holding ``data`` as given (zip it first if you want it zipped)."""
        return cls(
            content_id=content_id or f"cid:{uuid.uuid4()}",
            attachment_name=attachment_name,
            description=description,
            content_type=content_type,
            encoded=base64.b64encode(data).decode("ascii"),
        )


# -- DocumentId ----------------------------------------------------------------


class DocumentIdParts(NamedTuple):
    """A DocumentId split by the convention ``<sender>,<yyyy/MM/dd>,<number>/<notation>``."""

    sender: str  # as written; may not be a well-formed agency code
    promulgation_date: date | None  # None when the date part is not a real date
    code_number: str
    code_notation: str


_DOCUMENT_ID_DATE = re.compile(r"([0-9]{4})/([0-9]{1,2})/([0-9]{1,2})")


def split_document_id(document_id: str) -> DocumentIdParts | None:
    """Split a DocumentId by the convention, or ``None`` if it does not follow it.

    Real packages break the convention (a UUID, a sender code that disagrees
    with ``From``, a 30 February), so nothing is rejected for it; a date
    part that is not a real date gives ``promulgation_date=None``.
    """
    parts = [part.strip() for part in document_id.split(",", 2)]
    if len(parts) != 3 or not all(parts):
        return None
    sender, date_text, code = parts
    number, slash, notation = code.partition("/")
    if not slash or not number.strip() or not notation.strip():
        return None
    promulgation_date: date | None = None
    match = _DOCUMENT_ID_DATE.fullmatch(date_text)
    if match is None:
        return None
    try:
        promulgation_date = date(*(int(group) for group in match.groups()))
    except ValueError:
        promulgation_date = None
    return DocumentIdParts(sender, promulgation_date, number.strip(), notation.strip())


def make_document_id(sender: AgencyCode, promulgation_date: date, code: Code) -> str:
    """The conventional DocumentId of a document: ``000.00.00.G22,2015/09/30,7816/VPCP``."""
    return f"{sender},{format_date(promulgation_date)},{code}"


def format_date(value: date) -> str:
    """A date as the wire writes it: ``yyyy/MM/dd``."""
    return f"{value.year:04d}/{value.month:02d}/{value.day:02d}"


def format_timestamp(value: datetime) -> str:
    """A timestamp as the wire writes it: ``yyyy/MM/dd HH:mm:ss`` (Vietnam time)."""
    value = _to_wire_time(value)
    return f"{format_date(value)} {value.hour:02d}:{value.minute:02d}:{value.second:02d}"


# -- the packages --------------------------------------------------------------

Warnings = tuple[str, ...]
"""What a reader let pass in a package and reports: each ``"<element path>: <what>"``.

A day that does not exist in a part the sender relays from others (the
trace, the documents answered or replaced) is one: the sender cannot
correct another agency's data, so the package goes through and the
warning travels with its receipt. Not written to the wire.
"""


class DocumentPackage(_Value):
    """A document package: one văn bản, its metadata, its route and its files."""

    sender: Organization  # From
    recipients: tuple[Organization, ...] = Field(min_length=1)  # To [1..n]
    document_id: OptionalText = None
    code: Code
    promulgation: PromulgationInfo  # PromulgationInfo
    document_type: DocumentType | None = None
    subject: Text  # trích yếu
    content: OptionalText = None
    signer: SignerInfo | None = None  # SignerInfo
    due_date: date | None = None  # hạn xử lý
    other_info: OtherInfo | None = None
    response_for: tuple[ResponseFor, ...] = ()
    steering_type: SteeringType | None = None
    # ResponseForTask/TaskCode* and ApplicationType: official library, not the regulation.
    response_for_task: tuple[Text, ...] = ()
    application_type: OptionalText = None
    to_places: tuple[Text, ...] = ()  # ToPlaces/Place*, nơi nhận as printed
    trace: tuple[TraceHeader, ...] = Field(min_length=1)  # TraceHeaderList/TraceHeader
    business: Business | None = None  # TraceHeaderList/Bussiness
    # TraceHeaderList's Paper child and id and version attributes: official library.
    trace_paper: OptionalText = None
    trace_list_id: OptionalText = None
    trace_list_version: OptionalText = None
    manifest: Manifest | None = None  # edXMLBody/edXMLManifest
    attachments: tuple[Attachment, ...] = ()  # AttachmentEncoded/Attachment*
    warnings: Warnings = ()  # what the reader let pass, not written to the wire

    @property
    def business_doc_type(self) -> BusinessDocType:
        """What the package does; a package without ``Bussiness`` sends a new document."""
        return self.business.doc_type if self.business is not None else BusinessDocType.NEW

    @property
    def recipient_codes(self) -> tuple[AgencyCode, ...]:
        """The agency code of every ``To``, in order."""
        return tuple(recipient.organ_id for recipient in self.recipients)

    @property
    def document_id_parts(self) -> DocumentIdParts | None:
        """The DocumentId split by the convention, if it has one that follows it."""
        return split_document_id(self.document_id) if self.document_id else None

    def attachment(self, content_id: str) -> Attachment | None:
        """The attached file with this ContentId (``cid:`` or not), if any."""
        key = content_id_key(content_id)
        return next((a for a in self.attachments if a.key == key), None)


class StatusPackage(_Value):
    """A status package: one agency reports what became of one document."""

    sender: Organization  # From: the reporting agency
    response_for: ResponseFor  # the document, and its original sender
    staff: StaffInfo | None = None  # StaffInfo
    status_code: StatusCode
    description: OptionalText = None
    timestamp: Timestamp
    # Statuses usually carry no TraceHeaderList; one that passed relays may.
    trace: tuple[TraceHeader, ...] = ()
    # TraceHeaderList's Paper child and id and version attributes: official library.
    trace_paper: OptionalText = None
    trace_list_id: OptionalText = None
    trace_list_version: OptionalText = None
    warnings: Warnings = ()  # what the reader let pass, not written to the wire


Package = DocumentPackage | StatusPackage
