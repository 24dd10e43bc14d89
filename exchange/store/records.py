"""The rows of the system of record, as immutable values with domain types.

Codes come back as :class:`~exchange.agency.AgencyCode`, code lists as the
enums of :mod:`exchange.status`, times as aware datetimes (UTC from
PostgreSQL). Plain frozen dataclasses: the worker builds many of them per
second, and they never cross a process boundary without a pydantic model
around them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

import asyncpg

from exchange.agency import AgencyCode
from exchange.status import (
    BusinessDocType,
    DeliveryState,
    MessageKind,
    Priority,
    StatusCode,
    TransportOutcome,
)


class EventKind(StrEnum):
    """The two kinds of history of a delivery."""

    RECEIPT = "receipt"  # the exchange's transport outcome, sent to the sender
    STATUS = "status"  # a business status reported by an agency

    @classmethod
    def of(cls, code: StatusCode | TransportOutcome) -> EventKind:
        """The kind an event code belongs to: its vocabulary decides."""
        return cls.STATUS if isinstance(code, StatusCode) else cls.RECEIPT


def _code(text: str | None) -> AgencyCode | None:
    return None if text is None else AgencyCode.parse(text)


@dataclass(frozen=True, slots=True)
class Agency:
    """An agency of the directory (danh bạ cơ quan)."""

    code: AgencyCode
    name: str
    parent: AgencyCode | None
    level: int
    broker_user: str
    subscriptions: tuple[str, ...]
    registered_at: datetime
    # The certificates it may sign with (PEM), oldest first; none: it can
    # receive but not send.
    certificates: tuple[str, ...] = ()
    # Whether its SHA-1 signatures are accepted (legacy software).
    allow_sha1: bool = False
    # When `agency disable` took its access away; None: enabled.
    disabled_at: datetime | None = None

    @property
    def disabled(self) -> bool:
        """Whether the agency is disabled (its messages are refused, its user has no access)."""
        return self.disabled_at is not None

    @property
    def certificate_pem(self) -> str | None:
        """The newest registered certificate, or ``None``."""
        return self.certificates[-1] if self.certificates else None

    @classmethod
    def from_row(cls, row: asyncpg.Record, certificates: tuple[str, ...] = ()) -> Agency:
        """Build from a row of ``agencies`` and its certificates' PEM."""
        return cls(
            code=AgencyCode.parse(row["code"]),
            name=row["name"],
            parent=_code(row["parent"]),
            level=row["level"],
            broker_user=row["broker_user"],
            subscriptions=tuple(row["subscriptions"]),
            registered_at=row["registered_at"],
            certificates=certificates,
            allow_sha1=row["allow_sha1"],
            disabled_at=row["disabled_at"],
        )


@dataclass(frozen=True, slots=True)
class Message:
    """A received message and what the exchange made of it (without its body).

    The first block of fields is the message as received and never changes;
    the second is its ``message_state``, the only part that is updated.
    """

    pk: int
    dedup_key: str
    amqp_message_id: str | None
    routing_key: str
    broker_user: str | None
    sha256: str
    received_at: datetime
    # -- message_state: the mutable part --
    kind: MessageKind
    sender: AgencyCode | None
    outcome: TransportOutcome | None
    reason_code: str | None
    reason_detail: str | None
    document_pk: int | None
    document_id: str | None
    attempts: int
    published_at: datetime | None
    updated_at: datetime
    # The size of the body as received when the record keeps only its start
    # (junk: refused before its signature was verified); None when the
    # record holds the whole body.
    body_size: int | None = None

    @property
    def body_cut(self) -> bool:
        """Whether only the start of the body is kept (it cannot be replayed)."""
        return self.body_size is not None

    @property
    def decided(self) -> bool:
        """Whether the exchange reached an outcome for this message."""
        return self.outcome is not None

    @property
    def published(self) -> bool:
        """Whether every side effect of the outcome was published and confirmed."""
        return self.published_at is not None

    @classmethod
    def from_row(cls, row: asyncpg.Record | Mapping[str, Any]) -> Message:
        """Build from a row of ``messages`` joined with ``message_state``."""
        return cls(
            pk=row["id"],
            dedup_key=row["dedup_key"],
            amqp_message_id=row["amqp_message_id"],
            routing_key=row["routing_key"],
            broker_user=row["broker_user"],
            sha256=row["sha256"],
            received_at=row["received_at"],
            kind=MessageKind(row["kind"]),
            sender=_code(row["sender"]),
            outcome=None if row["outcome"] is None else TransportOutcome(row["outcome"]),
            reason_code=row["reason_code"],
            reason_detail=row["reason_detail"],
            document_pk=row["document_pk"],
            document_id=row["document_id"],
            attempts=row["attempts"],
            published_at=row["published_at"],
            updated_at=row["updated_at"],
            body_size=row.get("body_size"),
        )


@dataclass(frozen=True, slots=True)
class Document:
    """A document (văn bản) as first accepted from its sender."""

    pk: int
    sender: AgencyCode
    document_id: str
    sha256: str
    code_number: str | None
    code_notation: str | None
    subject: str | None
    promulgation_date: date | None
    due_date: date | None
    doc_type: BusinessDocType
    priority: Priority | None
    first_message_pk: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record | Mapping[str, Any]) -> Document:
        """Build from a row of ``documents``."""
        return cls(
            pk=row["id"],
            sender=AgencyCode.parse(row["sender"]),
            document_id=row["document_id"],
            sha256=row["sha256"],
            code_number=row["code_number"],
            code_notation=row["code_notation"],
            subject=row["subject"],
            promulgation_date=row["promulgation_date"],
            due_date=row["due_date"],
            doc_type=BusinessDocType(row["doc_type"]),
            priority=None if row["priority"] is None else Priority(row["priority"]),
            first_message_pk=row["first_message_pk"],
            created_at=row["created_at"],
        )


@dataclass(frozen=True, slots=True)
class NewDocument:
    """What a document message says of its document, as the documents table stores it."""

    sender: AgencyCode
    document_id: str
    sha256: str
    code_number: str | None = None
    code_notation: str | None = None
    subject: str | None = None
    promulgation_date: date | None = None
    due_date: date | None = None
    doc_type: BusinessDocType = BusinessDocType.NEW
    priority: Priority | None = None


@dataclass(frozen=True, slots=True)
class NewDocumentMessage:
    """A document message that passed every check, to a registered recipient, as it is recorded."""

    dedup_key: str
    amqp_message_id: str | None
    routing_key: str
    broker_user: str | None
    body: bytes
    recipient: AgencyCode
    document: NewDocument
    # What the reader let pass (Warnings), one a line: the delivered
    # message's reason_detail, and so its receipt's warnings.
    warnings: str | None = None


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """The answer of :func:`~exchange.store.queries.upsert_document`.

    ``document`` is the row now in the database: the new one when
    ``created``, otherwise the one stored before. ``conflict`` is true when
    that earlier document has other content (another SHA-256) under the same
    id: a reused DocumentId, to be rejected as DUPLICATE_DOCUMENT.
    """

    document: Document
    created: bool
    conflict: bool

    @property
    def pk(self) -> int:
        """The document's primary key."""
        return self.document.pk


@dataclass(frozen=True, slots=True)
class Delivery:
    """One document at one recipient, with its current business state."""

    pk: int
    document_pk: int
    recipient: AgencyCode
    message_pk: int
    state: DeliveryState
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Delivery:
        """Build from a row of ``deliveries``."""
        return cls(
            pk=row["id"],
            document_pk=row["document_pk"],
            recipient=AgencyCode.parse(row["recipient"]),
            message_pk=row["message_pk"],
            state=DeliveryState(
                latest=None if row["state"] is None else StatusCode(row["state"]),
                recall_pending=row["recall_pending"],
                withdrawn=row["withdrawn"],
            ),
            delivered_at=row["delivered_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a delivery's history: a receipt or a business status."""

    pk: int
    delivery_pk: int
    message_pk: int
    kind: EventKind
    code: StatusCode | TransportOutcome
    reason_code: str | None
    description: str | None
    at: datetime
    recorded_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Event:
        """Build from a row of ``events``."""
        kind = EventKind(row["kind"])
        code: StatusCode | TransportOutcome = (
            StatusCode(row["code"]) if kind is EventKind.STATUS else TransportOutcome(row["code"])
        )
        return cls(
            pk=row["id"],
            delivery_pk=row["delivery_pk"],
            message_pk=row["message_pk"],
            kind=kind,
            code=code,
            reason_code=row["reason_code"],
            description=row["description"],
            at=row["at"],
            recorded_at=row["recorded_at"],
        )


@dataclass(frozen=True, slots=True)
class CopyTrace:
    """A subscription copy of a document: who received it, through which pattern, when."""

    subscriber: AgencyCode
    subscriber_name: str
    pattern: str
    published_at: datetime


@dataclass(frozen=True, slots=True)
class RecipientTrace:
    """A document's life at one recipient: the delivery and its history, oldest first.

    ``copies``: the subscription copies of what was delivered to it.
    """

    recipient_name: str
    delivery: Delivery
    events: tuple[Event, ...]
    copies: tuple[CopyTrace, ...] = ()


@dataclass(frozen=True, slots=True)
class DocumentTrace:
    """The timeline of one document: submitted, then per recipient delivered and each status."""

    document: Document
    submitted_at: datetime
    recipients: tuple[RecipientTrace, ...]


@dataclass(frozen=True, slots=True)
class SenderViewRow:
    """One line of the table a sender sees: a document at a recipient."""

    document_pk: int
    document_id: str
    subject: str | None
    submitted_at: datetime
    recipient: AgencyCode
    recipient_name: str
    state: DeliveryState
    # The latest status event of any code (13, 15, 16 included), and when.
    latest_code: StatusCode | None
    latest_at: datetime | None
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    """One executed replay: who, when, what was asked, and what came of it."""

    pk: int
    started_at: datetime
    finished_at: datetime | None
    os_user: str
    host: str
    broker_user: str
    selection: dict[str, Any]
    state: str
    result: dict[str, Any] | None
    items: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ReplayRecord:
        """Build from a row of ``replays`` with its item count."""
        return cls(
            pk=row["id"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            os_user=row["os_user"],
            host=row["host"],
            broker_user=row["broker_user"],
            selection=json.loads(row["selection"]),
            state=row["state"],
            result=None if row["result"] is None else json.loads(row["result"]),
            items=row["items"],
        )


@dataclass(frozen=True, slots=True)
class ReplayItemRecord:
    """What one replay did with one message (a row of ``replay_items``)."""

    replay_pk: int
    dedup_key: str
    message_pk: int | None
    source: str
    action: str
    note: str | None
    outcome_before: str | None
    reason_before: str | None
    outcome_after: str | None
    reason_after: str | None
    decided_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ReplayItemRecord:
        """Build from a row of ``replay_items``."""
        return cls(
            replay_pk=row["replay_pk"],
            dedup_key=row["dedup_key"],
            message_pk=row["message_pk"],
            source=row["source"],
            action=row["action"],
            note=row["note"],
            outcome_before=row["outcome_before"],
            reason_before=row["reason_before"],
            outcome_after=row["outcome_after"],
            reason_after=row["reason_after"],
            decided_at=row["decided_at"],
        )


@dataclass(frozen=True, slots=True)
class MessageTally:
    """How many received messages stand where (the audit's side of the record)."""

    received: int
    # Per outcome: delivered, rejected, parked (and accepted, if ever used).
    outcomes: dict[str, int]
    # Recorded without an outcome: being processed, or waiting for a retry.
    undecided: int
    # Decided, but the outcome's effects were never confirmed by the broker.
    unpublished: int
    # Parked messages whose receipt was published (their bytes wait in
    # lienthong.parked until a replay takes them).
    parked_published: int

    @property
    def unsettled(self) -> int:
        """Messages not yet in a terminal, published state."""
        return self.undecided + self.unpublished


@dataclass(frozen=True, slots=True)
class UnsettledMessage:
    """A received message without an outcome, or whose outcome is unpublished."""

    pk: int
    received_at: datetime
    routing_key: str
    broker_user: str | None
    outcome: TransportOutcome | None
    reason_code: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class DeliveryMismatch:
    """A delivery whose ``delivered_at`` disagrees with its message's record."""

    delivery_pk: int | None
    message_pk: int
    recipient: str
    outcome: TransportOutcome | None
    published: bool
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where a chain ends, as ``chain_heads`` remembers it."""

    chain: str
    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class ChainLink:
    """One row of a chain: its id, position, stored hash and canonical content."""

    row_id: int
    seq: int | None  # None: never chained (inserted with the triggers bypassed)
    hash: str | None
    # chain_content(row) as the database encodes the row now.
    content: bytes
