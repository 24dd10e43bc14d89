"""The ledger: what the exchange decides for each message, recorded for good.

It takes what inspection returned (:class:`~exchange.pipeline.CheckedMessage`
or a :class:`~exchange.reasons.Rejection`), looks up the facts that live in
the database, asks the pure decisions of :mod:`exchange.pipeline`, records
the outcome in PostgreSQL, and returns the decided message with the
publications it owes (:class:`Decided`): the package to its recipient, the
receipt to its sender. It never talks to the broker: the caller publishes
what is owed, waits for the confirms, then marks them published here (the
outbox flag). A second pass over the same message (a redelivery after a
crash, a re-publish) finds the first one's decision and owes only what was
not marked.

A message is recorded one of two ways, in a group commit (:class:`GroupCommit`)
shared with the other messages handled at that moment:

* the fast path: new documents for registered recipients, a group of them in
  one statement (:func:`exchange.store.queries.record_delivered_documents`),
  with the outbox flags waiting at that moment;
* the general path, step by step in the group's transaction: everything
  else (statuses, rejections, a message seen before, a DocumentId already
  used for other bytes, a row another worker committed meanwhile, and
  whatever the statement left undone).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, TypeVar

from exchange import metrics
from exchange.agency import AgencyCode
from exchange.broker import headers as header
from exchange.broker.topology import DELIVER_EXCHANGE, STATUS_EXCHANGE
from exchange.directory import Directory
from exchange.edxml.model import VIETNAM_TIME, DocumentPackage, StatusPackage
from exchange.failures import Failure
from exchange.pipeline import CheckedMessage, Envelope, decide_document, decide_status
from exchange.reasons import Reason, Rejection, with_problems
from exchange.receipts import RECEIPT_CONTENT_TYPE, Receipt, ReceiptSigner, receipt_body
from exchange.status import MessageKind, StatusCode, TransportOutcome
from exchange.store import queries
from exchange.store.db import Connection, Pool, again_on_conflict
from exchange.store.records import Message, NewDocument, NewDocumentMessage, StoredDocument

log = logging.getLogger("lienthong.ledger")

# Outcomes a replay decides again; a delivered message stays delivered.
REDECIDED_ON_REPLAY = frozenset({TransportOutcome.REJECTED, TransportOutcome.PARKED})
# A parked row keeps this much of the error text.
MAX_DETAIL_CHARS = 500
# Most messages one database transaction records (see GroupCommit).
GROUP_COMMIT_MAX = 64
# What the record keeps of a message refused before its signature was
# verified (junk): its first bytes, with the hash and size of the whole.
# Enough to see what it was (an XML declaration and a header, or not XML at
# all), little enough that 50 junk messages of 60 MiB cost 3.2 MiB of
# database instead of 3 GiB. The database refuses a cut body longer than
# this (migration 0013).
JUNK_KEPT_BYTES = 64 * 1024


# -- what a decision owes: the outbox ------------------------------------------


@dataclass(frozen=True)
class SubscriptionCopy:
    """A copy of a delivered document for an agency subscribed to the recipient's subtree."""

    message_pk: int
    subscriber: AgencyCode
    pattern: str


@dataclass(frozen=True)
class Publication:
    """One message to publish (and see confirmed) for a decision."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    headers: dict[str, Any]
    content_type: str
    # Set on a subscription copy: recorded once the broker confirmed it.
    copy: SubscriptionCopy | None = None


def receipt_for(message: Message, recipient: str) -> Receipt:
    """The receipt of a decided message, rebuilt from its record alone.

    Built from the database row (not from the first pass's memory) so that a
    second pass after a crash sends the same receipt.
    """
    assert message.outcome is not None, "only decided messages have receipts"
    detail = message.reason_detail.splitlines() if message.reason_detail else []
    if message.outcome is TransportOutcome.PARKED:
        # A parked row's detail is the exchange's own error text (a database
        # host, a constraint name, a stack frame): for the operator, never
        # for the sender, who learns the failure's class from its code.
        detail = []
    # A delivered message's detail is what the reader let pass; a refused one's, why.
    delivered = message.outcome is TransportOutcome.DELIVERED
    problems, warnings = ([], detail) if delivered else (detail, [])
    reason: Reason | Failure | None = None
    if message.reason_code:
        reason = Reason.from_code(message.reason_code) or Failure.from_code(message.reason_code)
    return Receipt(
        message_id=message.amqp_message_id or f"lienthong:{message.pk}",
        document_id=message.document_id,
        kind=message.kind,
        sender=None if message.sender is None else str(message.sender),
        recipient=recipient,
        outcome=message.outcome,
        reason_code=message.reason_code,
        reason=_sentence(reason.vietnamese if reason else None, problems),
        reason_en=_sentence(reason.english if reason else None, problems),
        problems=problems,
        warnings=warnings,
        sha256=message.sha256,
        at=message.updated_at,
    )


def _sentence(text: str | None, problems: list[str]) -> str | None:
    if text is None:
        return None
    return with_problems(text, problems)


def effects_of(
    message: Message,
    body: bytes,
    recipient: str,
    subscribers: Sequence[tuple[AgencyCode, str]] = (),
    signer: ReceiptSigner | None = None,
) -> list[Publication]:
    """What must be published for a decided message, in publishing order.

    An accepted package goes to its recipient first (the inbox for a
    document, the status queue for a status), then a copy of a document to
    each of ``subscribers`` (agencies subscribed to a subtree holding the
    recipient, with the pattern), then the receipt to its sender, so a
    sender never holds a ``delivered`` receipt for something the broker has
    not confirmed. A rejected message only gets its receipt, and only when
    the publisher is a registered agency to send it to. The receipt is
    signed with ``signer`` (unsigned without one: development).
    """
    effects = []
    headers: dict[str, Any] = {
        header.MESSAGE: message.pk,
        header.KIND: message.kind.value,
        header.RECIPIENT: recipient,
        header.SHA256: message.sha256,
    }
    if message.document_id:
        headers[header.DOCUMENT_ID] = message.document_id
    if message.sender is not None:
        headers[header.SENDER] = str(message.sender)
    if message.outcome is TransportOutcome.DELIVERED:
        exchange = DELIVER_EXCHANGE if message.kind is MessageKind.DOCUMENT else STATUS_EXCHANGE
        effects.append(
            Publication(
                exchange, recipient, body, f"lienthong:{message.pk}", headers, "application/xml"
            )
        )
        if message.kind is MessageKind.DOCUMENT:
            for subscriber, pattern in subscribers:
                if subscriber == message.sender:
                    continue  # the sender has its own document
                effects.append(
                    Publication(
                        DELIVER_EXCHANGE,
                        str(subscriber),
                        body,
                        f"lienthong:{message.pk}",
                        {**headers, header.SUBSCRIPTION: pattern},
                        "application/xml",
                        SubscriptionCopy(message.pk, subscriber, pattern),
                    )
                )
    if message.sender is not None:
        receipt = receipt_for(message, recipient)
        effects.append(
            Publication(
                STATUS_EXCHANGE,
                str(message.sender),
                receipt_body(receipt, signer),
                f"lienthong:{message.pk}:receipt:{receipt.outcome.value}",
                {**headers, header.KIND: "receipt"},
                RECEIPT_CONTENT_TYPE,
            )
        )
    return effects


def waiting_receipt(
    message: Message, recipient: str, failure: Failure, signer: ReceiptSigner | None = None
) -> Publication:
    """A receipt telling the sender its message is recorded but waits (``accepted``).

    Sent when the recipient's queue refuses the delivery (full): the
    decision stands, the package is kept, and the ``delivered`` receipt
    follows once it is delivered. Its message id is the same on every
    attempt, so the sender's software can drop repeats. Signed with
    ``signer``, as every receipt.
    """
    base = receipt_for(message, recipient)
    receipt = base.model_copy(
        update={
            "outcome": TransportOutcome.ACCEPTED,
            "reason_code": failure.code,
            "reason": failure.vietnamese,
            "reason_en": failure.english,
            "problems": [],
            "warnings": [],
        }
    )
    headers: dict[str, Any] = {
        header.MESSAGE: message.pk,
        header.KIND: "receipt",
        header.RECIPIENT: recipient,
        header.SHA256: message.sha256,
    }
    if message.document_id:
        headers[header.DOCUMENT_ID] = message.document_id
    if message.sender is not None:
        headers[header.SENDER] = str(message.sender)
    return Publication(
        STATUS_EXCHANGE,
        str(message.sender),
        receipt_body(receipt, signer),
        f"lienthong:{message.pk}:receipt:{TransportOutcome.ACCEPTED.value}",
        headers,
        RECEIPT_CONTENT_TYPE,
    )


# -- what the ledger takes and gives -------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """A message as it reached the work queue, under its real origin.

    ``routing_key`` and ``broker_user`` are the original ones (a message
    back from a retry queue, or sent by the replay tool, carries them in
    headers); ``replay`` says the replay tool asks for a new decision.
    """

    body: bytes
    routing_key: str
    broker_user: str | None
    amqp_message_id: str | None
    replay: bool = False
    # The lane its publisher named (x-lienthong-lane); not recorded, checked.
    lane: str | None = None

    @cached_property
    def dedup_key(self) -> str:
        """The identity the message is recorded under (see :func:`queries.dedup_key`)."""
        return queries.dedup_key(self.routing_key, self.body, self.broker_user)

    @cached_property
    def sha256(self) -> str:
        """SHA-256 of the body, hex."""
        return hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class Decided:
    """A message's recorded decision, and what it still owes the broker, in order."""

    record: Message
    owed: tuple[Publication, ...]


async def _decided(
    record: Message, arrival: Arrival, directory: Directory, signer: ReceiptSigner | None
) -> Decided:
    if record.published:
        return Decided(record, ())
    subscribers: list[tuple[AgencyCode, str]] = []
    if record.outcome is TransportOutcome.DELIVERED and record.kind is MessageKind.DOCUMENT:
        subscribers = await directory.subscribers_of(AgencyCode.parse(arrival.routing_key))
    owed = effects_of(record, arrival.body, arrival.routing_key, subscribers, signer)
    return Decided(record, tuple(owed))


class Ledger:
    """Decides, records and marks messages in PostgreSQL; owes, never publishes."""

    def __init__(
        self,
        pool: Pool,
        directory: Directory,
        *,
        group_commits: int = 1,
        signer: ReceiptSigner | None = None,
        status_skew: timedelta | None = None,
    ) -> None:
        """A ledger on ``pool``; up to ``group_commits`` groups are written at the same time.

        The receipts it owes are signed with ``signer`` (the exchange's key).
        A status whose Timestamp is more than ``status_skew`` from the
        message's recorded arrival is refused (None: any Timestamp).
        """
        self._pool = pool
        self.directory = directory
        self.signer = signer
        self.status_skew = status_skew
        self._group_commit = GroupCommit(
            pool, at_once=group_commits, fast_path=_record_new_documents
        )

    async def decide(
        self, arrival: Arrival, envelope: Envelope, inspected: CheckedMessage | Rejection
    ) -> Decided:
        """Record the decision on one message (once committed) and what it owes.

        A message seen before keeps its decision, except on a replay of a
        rejected or parked message, which is decided again (a CA added since,
        a database back up).
        """
        # Asked before a connection is taken: a directory miss reloads the
        # directory through the pool, and waiting for a second pooled
        # connection inside the transaction can exhaust the pool (and, while
        # the transaction holds a lock other writers wait for, stall them all).
        registered = (
            isinstance(inspected, CheckedMessage)
            and inspected.kind is MessageKind.DOCUMENT
            and await self.directory.is_registered(inspected.recipient)
        )
        # A new document for a registered recipient takes the fast path
        # (only a document that passed its checks has a registered recipient).
        new_document = None
        if registered:
            assert isinstance(inspected, CheckedMessage)
            new_document = NewDocumentMessage(
                dedup_key=arrival.dedup_key,
                amqp_message_id=arrival.amqp_message_id,
                routing_key=arrival.routing_key,
                broker_user=arrival.broker_user,
                body=arrival.body,
                recipient=inspected.recipient,
                document=_new_document(inspected, envelope.sha256),
                warnings=_warnings(inspected),
            )

        async def general_path(conn: Connection) -> Message:
            return await _record_and_decide(
                conn, arrival, envelope, inspected, registered, self.status_skew
            )

        started = time.perf_counter()
        # Returns once the transaction holding the writes committed.
        record = await self._group_commit.run(
            general_path, order=_lock_order(inspected), fast=new_document
        )
        metrics.STAGE_SECONDS.labels(metrics.STAGE_PERSIST).observe(time.perf_counter() - started)
        return await _decided(record, arrival, self.directory, self.signer)

    async def record_copies(self, copies: Sequence[SubscriptionCopy]) -> None:
        """Record subscription copies the broker confirmed (once each, whatever the passes)."""
        async with self._pool.acquire() as conn:
            await queries.record_subscription_copies(
                conn, [(c.message_pk, str(c.subscriber), c.pattern) for c in copies]
            )

    async def mark_published(self, message_pk: int) -> None:
        """Record that a message's effects are published (with others marked meanwhile)."""
        await self._group_commit.mark(message_pk)

    async def park(
        self, arrival: Arrival, failure: Failure, detail: str, *, attempts: int
    ) -> Decided | None:
        """Record a message parked after a transient failure, and the receipt it owes.

        Returns ``None`` when the message was decided before the failure (it
        was the publishing that failed): the decision stands and what it
        still owes is left to the replay tool.
        """
        publisher = await self.directory.agency_of_user(arrival.broker_user)
        async with self._pool.acquire() as conn, conn.transaction():
            record, _ = await queries.record_message(
                conn,
                dedup_key=arrival.dedup_key,
                amqp_message_id=arrival.amqp_message_id,
                routing_key=arrival.routing_key,
                broker_user=arrival.broker_user,
                body=arrival.body,
                sha256=arrival.sha256,
                sender=publisher,
            )
            if record.decided:
                return None
            record = await queries.set_outcome(
                conn,
                record.pk,
                TransportOutcome.PARKED,
                failure.parked_code,
                detail[:MAX_DETAIL_CHARS],
                sender=publisher,
                # A message parked on its first pass (poison) was still
                # attempted once; the column counts attempts from 1.
                attempts=max(attempts, 1),
            )
        return await _decided(record, arrival, self.directory, self.signer)

    async def earlier_decision(self, arrival: Arrival) -> Decided | None:
        """The decision an earlier pass recorded for this message, and what it still owes.

        ``None`` when it was never decided, or is a replay to decide again.
        """
        async with self._pool.acquire() as conn:
            record = (await queries.messages_by_dedup_key(conn, [arrival.dedup_key])).get(
                arrival.dedup_key
            )
        if record is None or not record.decided:
            return None
        if arrival.replay and record.outcome in REDECIDED_ON_REPLAY:
            return None
        return await _decided(record, arrival, self.directory, self.signer)

    async def take_token(self, publisher: AgencyCode, *, rate: float, burst: int) -> bool:
        """Take one token of ``publisher``'s rate (its token bucket); ``False`` when over it.

        The bucket is a row in PostgreSQL, so it holds across every worker
        process and host (:func:`exchange.store.queries.take_token`).
        """
        async with self._pool.acquire() as conn:
            return await queries.take_token(conn, publisher, default_rate=rate, default_burst=burst)

    async def count_start(self, arrival: Arrival) -> int:
        """Count one more start of handling a redelivered message; returns the starts so far."""
        async with self._pool.acquire() as conn:
            return await queries.count_start(conn, arrival.dedup_key)


# -- the general path ----------------------------------------------------------


async def _record_and_decide(
    conn: Connection,
    arrival: Arrival,
    envelope: Envelope,
    inspected: CheckedMessage | Rejection,
    registered: bool,
    status_skew: timedelta | None = None,
) -> Message:
    """Record the message once, by its dedup key, then decide it unless decided before."""
    body, body_size = kept_body(arrival.body, inspected)
    record, _ = await queries.record_message(
        conn,
        dedup_key=arrival.dedup_key,
        amqp_message_id=arrival.amqp_message_id,
        routing_key=arrival.routing_key,
        broker_user=arrival.broker_user,
        body=body,
        sha256=envelope.sha256,
        sender=envelope.publisher,
        body_size=body_size,
    )
    redecide = (arrival.replay and record.outcome in REDECIDED_ON_REPLAY) or (
        # Refused for its sender's rate, not for what it is: the same bytes
        # sent again later are judged afresh.
        record.reason_code == Reason.QUOTA.code
    )
    if not record.decided or redecide:
        return await _decide(conn, record, envelope, inspected, registered, status_skew)
    if record.published:
        metrics.DUPLICATES.inc()
    return record


def kept_body(body: bytes, inspected: CheckedMessage | Rejection) -> tuple[bytes, int | None]:
    """What the record keeps of a message's body, and its whole size when it keeps less.

    A message refused before its signature was verified (junk: nothing
    proves who sent it, and anyone can send gigabytes of it) keeps its first
    :data:`JUNK_KEPT_BYTES`; the caller records the SHA-256 of the whole.
    Everything else keeps its whole body (``None``): a signed package is
    evidence, and what is parked or delivered may be replayed.
    """
    junk = isinstance(inspected, Rejection) and inspected.before_signature
    if junk and len(body) > JUNK_KEPT_BYTES:
        return body[:JUNK_KEPT_BYTES], len(body)
    return body, None


async def _decide(
    conn: Connection,
    record: Message,
    envelope: Envelope,
    inspected: CheckedMessage | Rejection,
    recipient_registered: bool,
    status_skew: timedelta | None = None,
) -> Message:
    """Record the outcome of a message not decided before (in the caller's transaction)."""
    document_id = None
    kind = MessageKind.UNKNOWN
    try:
        if isinstance(inspected, Rejection):
            raise inspected
        kind, document_id = inspected.kind, inspected.document_id
        # No savepoint: both paths refuse before their first write (or, for a
        # document whose id is taken, after an upsert that wrote nothing), so
        # a refusal leaves nothing behind.
        if isinstance(inspected.package, DocumentPackage):
            return await _accept_document(conn, record, envelope, inspected, recipient_registered)
        return await _accept_status(conn, record, inspected, status_skew)
    except Rejection as rejection:
        return await queries.set_outcome(
            conn,
            record.pk,
            TransportOutcome.REJECTED,
            rejection.reason,
            "\n".join(str(p) for p in rejection.problems) or None,
            kind=kind,
            sender=envelope.publisher,
            document_id=document_id,
        )


async def _accept_document(
    conn: Connection,
    record: Message,
    envelope: Envelope,
    inspected: CheckedMessage,
    registered: bool,
) -> Message:
    # Everything refusable before the first write: a document row written
    # for a recipient then refused would collide with a corrected re-send.
    decide_document(
        inspected, recipient_registered=registered, existing_sha256=None, sha256=envelope.sha256
    )
    stored, delivered = await deliver_document(
        conn,
        message_pk=record.pk,
        recipient=inspected.recipient,
        document=_new_document(inspected, envelope.sha256),
        warnings=_warnings(inspected),
    )
    # Refuses a DocumentId that holds other bytes (then nothing was written).
    decide_document(
        inspected,
        recipient_registered=registered,
        existing_sha256=stored.document.sha256,
        sha256=envelope.sha256,
    )
    assert delivered is not None
    return delivered


async def deliver_document(
    conn: Connection,
    *,
    message_pk: int,
    recipient: AgencyCode,
    document: NewDocument,
    warnings: str | None = None,
) -> tuple[StoredDocument, Message | None]:
    """Deliver a recorded document message, step by step: the general path.

    Stores the document once per (sender, DocumentId); unless that id holds
    other bytes, creates the delivery to ``recipient``, its receipt event and
    the message's outcome (``delivered``, its detail the reader's
    ``warnings``). Returns the stored document and the message's new record,
    ``None`` when the id holds other bytes (``conflict``): then nothing was
    written. Each step is idempotent and reads what a concurrent transaction
    committed meanwhile.
    """
    stored = await queries.upsert_document(conn, document, first_message_pk=message_pk)
    if stored.conflict:
        return stored, None
    delivery, _ = await queries.create_delivery(conn, stored.document.pk, recipient, message_pk)
    await queries.append_event(
        conn, delivery_pk=delivery.pk, message_pk=message_pk, code=TransportOutcome.DELIVERED
    )
    record = await queries.set_outcome(
        conn,
        message_pk,
        TransportOutcome.DELIVERED,
        detail=warnings,
        kind=MessageKind.DOCUMENT,
        sender=document.sender,
        document_pk=stored.document.pk,
        document_id=document.document_id,
    )
    return stored, record


async def _accept_status(
    conn: Connection,
    record: Message,
    inspected: CheckedMessage,
    status_skew: timedelta | None = None,
) -> Message:
    package = inspected.package
    assert isinstance(package, StatusPackage) and inspected.ref is not None
    ref = inspected.ref
    delivery = await queries.get_delivery(
        conn, ref.sender, ref.document_id, ref.recipient, lock=True
    )
    history = None
    if delivery is not None:
        history = [
            (event.at.astimezone(VIETNAM_TIME).replace(tzinfo=None), StatusCode(event.code))
            for event in await queries.list_events(conn, delivery.pk)
            if event.kind.value == "status"
        ]
    # Judged against the recorded arrival, so a replay days later is judged
    # as the status was when it came.
    state = decide_status(inspected, history, arrived_at=record.received_at, skew=status_skew)
    assert delivery is not None  # decide_status refuses a status for no delivery
    await queries.update_delivery_state(conn, delivery.pk, state)
    await queries.append_event(
        conn,
        delivery_pk=delivery.pk,
        message_pk=record.pk,
        code=package.status_code,
        at=_as_aware(package.timestamp),
        description=package.description,
    )
    return await queries.set_outcome(
        conn,
        record.pk,
        TransportOutcome.DELIVERED,
        detail=_warnings(inspected),
        kind=MessageKind.STATUS,
        sender=inspected.sender,
        document_pk=delivery.document_pk,
        document_id=ref.document_id,
    )


# -- the fast path ---------------------------------------------------------------


async def _record_new_documents(
    conn: Connection, messages: list[NewDocumentMessage], flags: list[int]
) -> list[Message | None]:
    """The group's one statement: new documents, recorded and delivered, and outbox flags.

    Returns each message's decided record, or ``None`` for one whose general
    path is still to run: one the statement left undecided or did not write
    (seen before, a DocumentId taken by other bytes, a second copy in the
    group).
    """
    recorded = await queries.record_delivered_documents(conn, messages, flags)
    return [record if record is not None and record.decided else None for record in recorded]


def _warnings(inspected: CheckedMessage) -> str | None:
    """The package's warnings as a delivered message records them: one a line."""
    return "\n".join(inspected.package.warnings) or None


def _new_document(inspected: CheckedMessage, sha256: str) -> NewDocument:
    """The document row a document message that passed its checks brings."""
    package = inspected.package
    assert isinstance(package, DocumentPackage)
    return NewDocument(
        sender=inspected.sender,
        document_id=inspected.document_id,
        sha256=sha256,
        code_number=package.code.code_number,
        code_notation=package.code.code_notation,
        subject=package.subject,
        promulgation_date=package.promulgation.promulgation_date,
        due_date=package.due_date,
        doc_type=package.business_doc_type,
        priority=package.other_info.priority if package.other_info else None,
    )


def _as_aware(moment: datetime) -> datetime:
    """Package timestamps are Vietnam local time; the database wants an instant."""
    return moment if moment.tzinfo else moment.replace(tzinfo=VIETNAM_TIME)


def _lock_order(inspected: CheckedMessage | Rejection) -> str:
    """The key of the rows a message's writes lock: its document (see GroupCommit)."""
    if isinstance(inspected, Rejection):
        return ""
    if inspected.ref is not None:  # a status locks the delivery of the document it reports on
        return f"{inspected.ref.sender}\x00{inspected.ref.document_id}"
    return f"{inspected.sender}\x00{inspected.document_id}"


# -- the group commit ------------------------------------------------------------

T = TypeVar("T")


@dataclass(eq=False)
class _Pending:
    """A message's writes waiting for the next group, and where its result goes."""

    writes: Callable[[Connection], Awaitable[Any]]
    # The key that orders writes in the group (see GroupCommit).
    order: str
    # What the group's one statement takes instead of ``writes``, if it can.
    fast: Any
    done: asyncio.Future[Any]


# An outbox flag waiting for the next group: the message, and who waits.
_Flag = tuple[int, asyncio.Future[None]]

# Writes the fast-path messages of a group (their ``fast`` values) and sets
# outbox flags, in one statement on its own; returns, for each message, its
# result, or None when its writes are still to run.
FastPath = Callable[[Connection, list[Any], list[int]], Awaitable[list[Any]]]


class GroupCommit:
    """Record the decisions of messages handled at once together: a group commit.

    Every message's record is hash-chained, and a transaction holds the
    chain's lock while it commits (migration 0006), so commits that record
    messages run one after the other, each paying its own lock hand-over and
    WAL flush. Here the writes of every message that waits while a group is
    written go into the next one, together: one lock and one flush for the
    group. A lone message is written at once: no waiting for company.

    The fast-path messages of a group (those run with a ``fast`` value, when
    the group commit has a ``fast_path`` function: in the ledger, new
    documents for registered recipients) are written by that function in
    one statement, committed on its own, with the outbox flags waiting at
    that moment (:meth:`mark`): one round trip for the group. The others,
    and any the statement leaves undone, run their ``writes`` in one
    transaction. Should one message's writes fail (a transient error), that
    transaction is written again with each message's writes in a savepoint
    of their own, so that only that message fails; writes are plain
    database work, safe to run again. Nobody learns the outcome of its
    writes before the commit, so a message is still published only once its
    decision is durable, and acked only once published.

    The groups of several workers are written at the same time and only
    their commits queue up. Two groups that touch the same rows (the copies
    of one document sent to several recipients land in different workers)
    take their row locks in the order of ``order`` (the document), so that
    one waits for the other instead of both waiting for each other.
    """

    def __init__(
        self,
        pool: Pool,
        *,
        most: int = GROUP_COMMIT_MAX,
        at_once: int = 1,
        fast_path: FastPath | None = None,
    ) -> None:
        """Group commits on connections of ``pool``, at most ``most`` messages each.

        Up to ``at_once`` groups are written at the same time, each on its
        own connection: a message that arrives while a group is being
        written starts the next group at once instead of waiting for it
        (round trips are slow on a busy machine).
        """
        self._pool = pool
        self._most = most
        self._at_once = at_once
        self._fast_path = fast_path
        self._waiting: list[_Pending] = []
        self._flags: list[_Flag] = []
        self._flushers: set[asyncio.Task[None]] = set()

    async def run(
        self, writes: Callable[[Connection], Awaitable[T]], order: str = "", fast: Any = None
    ) -> T:
        """Run ``writes`` in the next group; return its result once committed.

        Within a group, writes run in the order of ``order``, then of
        arrival. With ``fast`` (not None), the group's one statement may do
        the writes instead (see the class).
        """
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(writes, order, fast, done))
        self._start_flusher(self._at_once)
        return await done

    async def mark(self, message_pk: int) -> None:
        """Set the outbox flag of ``message_pk`` with the next group; return once committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flags.append((message_pk, done))
        # While a group is being written, the flag waits for the next one:
        # it rides in the next group's statement instead of one of its own.
        self._start_flusher(1)
        await done

    def _start_flusher(self, most: int) -> None:
        """Start writing at once, unless ``most`` flushers are running already."""
        # A flusher whose loop just ended is done at once (its done callbacks
        # run later): count the running ones, not the ones not yet discarded.
        self._flushers = {flusher for flusher in self._flushers if not flusher.done()}
        if len(self._flushers) < most:
            self._flushers.add(asyncio.create_task(self._flush()))

    async def _flush(self) -> None:
        while self._waiting or self._flags:
            group, self._waiting = self._waiting[: self._most], self._waiting[self._most :]
            flags, self._flags = self._flags[: self._most], self._flags[self._most :]
            group.sort(key=lambda pending: pending.order)
            try:
                await self._commit(group, flags)
            except BaseException as error:
                # The commit (or the connection) failed: nothing of the group
                # is durable, every message in it failed.
                for pending in group:
                    _settle(pending.done, error=error)
                for _, done in flags:
                    _settle(done, error=error)
                if isinstance(error, asyncio.CancelledError):
                    raise

    async def _commit(self, group: list[_Pending], flags: list[_Flag]) -> None:
        fast = [pending for pending in group if pending.fast is not None]
        if self._fast_path is not None and fast:
            group, flags = await self._in_one_statement(fast, group, flags)
        if flags:
            await self._set_flags(flags)
        if not group:
            return
        try:
            results = await self._together(group)
        except Exception as error:
            if len(group) == 1:
                _settle(group[0].done, error=error)
                return
            # One message's writes failed and took the others' with them:
            # again, each in a savepoint of its own, so that only it fails.
            await self._separately(group)
            return
        for pending, result in zip(group, results, strict=True):
            _settle(pending.done, result=result)

    async def _in_one_statement(
        self,
        fast: list[_Pending],
        group: list[_Pending],
        flags: list[_Flag],
    ) -> tuple[list[_Pending], list[_Flag]]:
        """The fast-path messages and the flags in one statement; returns what is left to do."""
        assert self._fast_path is not None
        try:
            async with self._pool.acquire() as conn:
                results = await self._fast_path(
                    conn, [pending.fast for pending in fast], [pk for pk, _ in flags]
                )
        except Exception:
            # Nothing of the statement is durable; each message's writes run
            # in the transaction, where a failure stays its own.
            log.warning(
                "a group's one statement failed; its messages are written apart", exc_info=True
            )
            return group, flags
        for _, flagged in flags:
            _settle(flagged)
        written = set()
        for pending, result in zip(fast, results, strict=True):
            if result is not None:
                _settle(pending.done, result=result)
                written.add(id(pending))
        return [pending for pending in group if id(pending) not in written], []

    async def _set_flags(self, flags: list[_Flag]) -> None:
        error: Exception | None = None

        async def mark() -> None:
            async with self._pool.acquire() as conn:
                await queries.mark_published_many(conn, [pk for pk, _ in flags])

        try:
            await again_on_conflict(mark)
        except Exception as failure:
            # Each of its messages fails as if its own flag could not be set:
            # it takes the retry path, and its effects are published again,
            # which the clients drop as repeats.
            error = failure
        for _, done in flags:
            _settle(done, error=error)

    async def _together(self, group: list[_Pending]) -> list[Any]:
        """Every message's writes in one transaction, no savepoints: the usual case.

        Run again when PostgreSQL aborted it for a deadlock with another
        worker's group: nothing of it was written.
        """

        async def write() -> list[Any]:
            async with self._pool.acquire() as conn, conn.transaction():
                return [await pending.writes(conn) for pending in group]

        return await again_on_conflict(write)

    async def _separately(self, group: list[_Pending]) -> None:
        """One transaction, each message's writes in a savepoint: a failure stays its own."""
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        async with self._pool.acquire() as conn, conn.transaction():
            for pending in group:
                try:
                    async with conn.transaction():
                        outcomes.append((pending.done, await pending.writes(conn), None))
                except Exception as error:
                    outcomes.append((pending.done, None, error))
        for done, result, failure in outcomes:
            _settle(done, result=result, error=failure)


def _settle(
    done: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None
) -> None:
    """Tell a waiting message its outcome (unless it stopped waiting)."""
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)
