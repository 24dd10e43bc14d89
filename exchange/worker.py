"""The worker: consume ``lienthong.work``; decide, record, publish, then ack.

For each message, in this order (the order is the guarantee):

1. inspect it (pure checks, :mod:`exchange.pipeline`) off the event loop,
   unless the same bytes were examined moments ago (another recipient's copy
   of the same package: only the envelope's checks run again);
2. in one PostgreSQL transaction: record the raw message (once, by its
   dedup key), look up what the decision needs, record the outcome and its
   effects on documents, deliveries and history;
3. publish the effects (the package to the recipient, the receipt to the
   sender) and wait for the broker's confirms, then mark them published;
4. ack the input.

A crash anywhere leaves the input unacked, so the broker hands it out again;
the dedup key makes the second pass find the first one's decision, and it
only publishes what was not confirmed yet. Receivers may therefore see a
delivery twice, always with the same message id, and drop the repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from exchange import metrics, report
from exchange.agency import AgencyCode, InvalidAgencyCode
from exchange.broker import headers as h
from exchange.broker.connection import (
    XML_CONTENT_TYPE,
    ConfirmingPublisher,
    connect,
    declare,
    settle,
)
from exchange.broker.topology import (
    DELIVER_EXCHANGE,
    PARKING_EXCHANGE,
    RETRY_EXCHANGE,
    RETRY_TIERS,
    STATUS_EXCHANGE,
    WORK_QUEUE,
    core_topology,
)
from exchange.edxml.model import VIETNAM_TIME, DocumentPackage, StatusPackage
from exchange.failures import Failure, classify
from exchange.pipeline import (
    CheckContext,
    Envelope,
    Inspected,
    Inspector,
    decide_document,
    decide_status,
)
from exchange.pki import TrustStore
from exchange.reasons import Reason, Rejection, with_problems
from exchange.receipts import RECEIPT_CONTENT_TYPE, Receipt
from exchange.settings import Settings
from exchange.status import MessageKind, StatusCode, TransportOutcome
from exchange.store import queries
from exchange.store.db import Connection, Pool, create_pool
from exchange.store.migrate import migrate
from exchange.store.records import Message, NewDocument, NewDocumentMessage

log = logging.getLogger("lienthong.worker")

# A directory miss (an agency registered after this worker started) reloads
# the directory, but not more often than this, so a flood of messages from
# an unknown broker user cannot turn into a flood of queries.
DIRECTORY_RELOAD_MIN_S = 1.0
# Registrations change rarely; a periodic reload picks up removals and
# renamed broker users without a restart.
DIRECTORY_MAX_AGE_S = 30.0
# How long a message waits before it is handed back to the broker when even
# its retry or parking failed (the broker itself is failing).
TRANSIENT_BACKOFF_S = 1.0
# A redelivered message whose handling was started more often than this
# (counted in the database, one redelivered message at a time) was being
# handled each time a worker died: it is parked before it is parsed again.
# Well below the work queue's delivery limit, the broker's own backstop.
POISON_STARTS = 3
# A parked row keeps this much of the error text.
MAX_DETAIL_CHARS = 500
# Outcomes a replay decides again; a delivered message stays delivered.
REDECIDED_ON_REPLAY = frozenset({TransportOutcome.REJECTED, TransportOutcome.PARKED})
# How often the watchdog reads the real state of the broker connection, the
# consumers and the database pool into the gauges: a consumer the broker
# cancelled (a silent loss after a broker restart) shows within this time.
# Cheap: it reads the process's own objects, nothing over the network.
WATCH_INTERVAL_S = 1.0
# The directory figures (connectivity, overdue statuses, certificates) cost a
# few queries and change slowly.
DIRECTORY_FIGURES_INTERVAL_S = 60.0


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _deliveries(message: AbstractIncomingMessage) -> int:
    """How many times the broker handed this message out before (quorum queues count)."""
    count = (message.headers or {}).get("x-delivery-count", 0)
    return count if isinstance(count, int) else 0


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def broker_user_of(amqp_url: str) -> str:
    """The broker user an AMQP URL logs in as."""
    return unquote(urlsplit(amqp_url).username or "guest")


@dataclass(frozen=True)
class Origin:
    """Where a message really comes from, whichever way it reached the work queue.

    Straight from an agency, the broker's ``user_id`` and routing key say it.
    Back from a retry queue or sent by the replay tool, the exchange's own
    user published it, and headers carry the original values; those headers
    are believed only then, never from an agency.
    """

    routing_key: str
    broker_user: str | None
    attempts: int = 0
    replay: bool = False
    published_at: datetime | None = None

    @classmethod
    def of(
        cls,
        message: AbstractIncomingMessage,
        trusted_users: frozenset[str],
        gateway_users: frozenset[str] = frozenset(),
    ) -> Origin:
        """The origin of a message as the worker received it.

        A gateway's user publishes for the agency its header names
        (``x-lienthong-agency``): the publisher is then that user acting for
        that agency (:func:`exchange.broker.headers.on_behalf`), believed
        from ``gateway_users`` only.
        """
        headers = message.headers or {}
        user = message.user_id
        agency = _text(headers.get(h.AGENCY))
        if user in gateway_users and agency:
            user = h.on_behalf(user, agency)
        # The AMQP timestamp has whole seconds; the client adds the publish
        # time to the microsecond. Only latency figures use it, so it is
        # taken from anyone.
        stamped = _text(headers.get(h.PUBLISHED_AT))
        published_at = _parse_time(stamped) if stamped else message.timestamp
        if published_at is not None and published_at.tzinfo is None:
            published_at = published_at.replace(tzinfo=UTC)
        if message.user_id not in trusted_users:
            return cls(message.routing_key or "", user, published_at=published_at)
        attempts = headers.get(h.ATTEMPTS, 0)
        return cls(
            routing_key=_text(headers.get(h.RECIPIENT)) or message.routing_key or "",
            broker_user=_text(headers.get(h.ORIGINAL_USER)) or user,
            attempts=attempts if isinstance(attempts, int) else 0,
            replay=headers.get(h.REPLAY) is not None,
            published_at=published_at,
        )

    def headers(self, *, attempts: int, failure: Failure) -> dict[str, Any]:
        """Headers that carry this origin through a retry queue or the parked queue."""
        headers: dict[str, Any] = {
            h.RECIPIENT: self.routing_key,
            h.ATTEMPTS: attempts,
            h.FAILURE: failure.code,
        }
        if self.broker_user:
            headers[h.ORIGINAL_USER] = self.broker_user
        if self.replay:
            # A replay that meets a transient failure is still a replay when
            # it comes back from the retry queue.
            headers[h.REPLAY] = "retried"
        if self.published_at is not None:
            headers[h.PUBLISHED_AT] = self.published_at.isoformat()
        return headers


@dataclass(frozen=True)
class FaultInjector:
    """Kills the worker process at named points, for the crash-safety tests.

    Off unless ``LIENTHONG_FAULT_KILL`` is set, for example
    ``after_receive=0.01,after_commit=0.01,after_publish=0.01``: at each
    point the process SIGKILLs itself with that probability, as a power cut
    or the OOM killer would.
    """

    points: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> FaultInjector:
        """Read ``point=probability,...``."""
        points = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            point, _, probability = item.partition("=")
            if point not in FAULT_POINTS:
                raise ValueError(f"unknown fault point {point!r}; known: {', '.join(FAULT_POINTS)}")
            points[point] = float(probability or 1.0)
        return cls(points)

    def maybe_kill(self, point: str) -> None:
        """SIGKILL this process now, with the probability set for ``point``."""
        probability = self.points.get(point)
        if probability and random.random() < probability:  # noqa: S311 (not cryptography)
            log.warning("fault injection: killing the worker %s", point)
            os.kill(os.getpid(), signal.SIGKILL)


FAULT_POINTS = ("after_receive", "after_commit", "after_publish")


class Directory:
    """The registered agencies, cached: broker user to agency, and who exists."""

    def __init__(self, pool: Pool, gateway_users: frozenset[str] = frozenset()) -> None:
        """A directory read from ``pool`` on first use; ``gateway_users`` may act for agencies."""
        self._pool = pool
        self._gateway_users = gateway_users
        self._by_user: dict[str, AgencyCode] = {}
        self._codes: frozenset[AgencyCode] = frozenset()
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def _reload(self, *, at_most_every: float) -> None:
        async with self._lock:
            if time.monotonic() - self._loaded_at < at_most_every:
                return
            async with self._pool.acquire() as conn:
                agencies = await queries.list_agencies(conn)
            self._by_user = {a.broker_user: a.code for a in agencies}
            self._codes = frozenset(a.code for a in agencies)
            self._loaded_at = time.monotonic()

    async def _fresh(self) -> None:
        if time.monotonic() - self._loaded_at > DIRECTORY_MAX_AGE_S:
            await self._reload(at_most_every=DIRECTORY_MAX_AGE_S)

    async def agency_of_user(self, user: str | None) -> AgencyCode | None:
        """The agency a broker user publishes for, or ``None``."""
        if not user:
            return None
        await self._fresh()
        acting = h.acting_for(user)
        if acting is not None and acting[0] in self._gateway_users:
            # A gateway's user acting for a registered agency publishes for it.
            try:
                agency = AgencyCode.parse(acting[1])
            except InvalidAgencyCode:
                return None
            return agency if await self.is_registered(agency) else None
        if user not in self._by_user:
            await self._reload(at_most_every=DIRECTORY_RELOAD_MIN_S)
        return self._by_user.get(user)

    async def is_registered(self, code: AgencyCode) -> bool:
        """Whether ``code`` is a registered agency."""
        await self._fresh()
        if code not in self._codes:
            await self._reload(at_most_every=DIRECTORY_RELOAD_MIN_S)
        return code in self._codes


@dataclass(frozen=True)
class Publication:
    """One message the worker must publish (and see confirmed) for a decision."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    headers: dict[str, Any]
    content_type: str


def receipt_for(message: Message, recipient: str) -> Receipt:
    """The receipt of a decided message, rebuilt from its record alone.

    Built from the database row (not from the first pass's memory) so that a
    second pass after a crash sends the same receipt.
    """
    assert message.outcome is not None, "only decided messages have receipts"
    detail = message.reason_detail.splitlines() if message.reason_detail else []
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


def effects_of(message: Message, body: bytes, recipient: str) -> list[Publication]:
    """What must be published for a decided message, in publishing order.

    An accepted package goes to its recipient first (the inbox for a
    document, the status queue for a status), then the receipt to its
    sender, so a sender never holds a ``delivered`` receipt for something
    the broker has not confirmed. A rejected message only gets its receipt,
    and only when the publisher is a registered agency to send it to.
    """
    effects = []
    headers: dict[str, Any] = {
        h.MESSAGE: message.pk,
        h.KIND: message.kind.value,
        h.RECIPIENT: recipient,
        h.SHA256: message.sha256,
    }
    if message.document_id:
        headers[h.DOCUMENT_ID] = message.document_id
    if message.sender is not None:
        headers[h.SENDER] = str(message.sender)
    if message.outcome is TransportOutcome.DELIVERED:
        exchange = DELIVER_EXCHANGE if message.kind is MessageKind.DOCUMENT else STATUS_EXCHANGE
        effects.append(
            Publication(
                exchange, recipient, body, f"lienthong:{message.pk}", headers, "application/xml"
            )
        )
    if message.sender is not None:
        receipt = receipt_for(message, recipient)
        effects.append(
            Publication(
                STATUS_EXCHANGE,
                str(message.sender),
                receipt.to_bytes(),
                f"lienthong:{message.pk}:receipt:{receipt.outcome.value}",
                {**headers, h.KIND: "receipt"},
                RECEIPT_CONTENT_TYPE,
            )
        )
    return effects


def _as_aware(moment: datetime) -> datetime:
    """Package timestamps are Vietnam local time; the database wants an instant."""
    return moment if moment.tzinfo else moment.replace(tzinfo=VIETNAM_TIME)


T = TypeVar("T")

# Most messages one database transaction records (see GroupCommit).
GROUP_COMMIT_MAX = 64


@dataclass(eq=False)
class _Pending:
    """A message's writes waiting for the next group, and where its result goes."""

    writes: Callable[[Connection], Awaitable[Any]]
    # The key that orders writes in the group (see GroupCommit).
    order: str
    # What the group's one statement takes instead of ``writes``, if it can.
    usual: Any
    done: asyncio.Future[Any]


# An outbox flag waiting for the next group: the message, and who waits.
_Flag = tuple[int, asyncio.Future[None]]

# Writes the usual messages of a group (their ``usual``) and sets outbox
# flags, in one statement on its own; returns, for each message, its result,
# or None when its writes are still to run.
Usual = Callable[[Connection, list[Any], list[int]], Awaitable[list[Any]]]


class GroupCommit:
    """Record the decisions of messages handled at once together: a group commit.

    Every message's record is hash-chained, and a transaction holds the
    chain's lock while it commits (migration 0006), so commits that record
    messages run one after the other, each paying its own lock hand-over and
    WAL flush. Here the writes of every message that waits while a group is
    written go into the next one, together: one lock and one flush for the
    group. A lone message is written at once: no waiting for company.

    The usual messages of a group (those run with a ``usual`` value, when
    the group commit has a ``usual`` function: in the worker, new documents
    for registered recipients) are written by that function in one statement,
    committed on its own, with the outbox flags waiting at that moment
    (:meth:`mark`): one round trip for the group. The others, and any the
    statement leaves undone, run their ``writes`` in one transaction. Should
    one message's writes fail (a transient error), that transaction is
    written again with each message's writes in a savepoint of their own,
    so that only that message fails; writes are plain database work, safe to
    run again. Nobody learns the outcome of its writes before the commit, so
    a message is still published only once its decision is durable, and
    acked only once published.

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
        usual: Usual | None = None,
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
        self._usual = usual
        self._waiting: list[_Pending] = []
        self._flags: list[_Flag] = []
        self._flushers: set[asyncio.Task[None]] = set()

    async def run(
        self, writes: Callable[[Connection], Awaitable[T]], order: str = "", usual: Any = None
    ) -> T:
        """Run ``writes`` in the next group; return its result once committed.

        Within a group, writes run in the order of ``order``, then of
        arrival. With ``usual`` (not None), the group's one statement may do
        the writes instead (see the class).
        """
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(writes, order, usual, done))
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
        usual = [pending for pending in group if pending.usual is not None]
        if self._usual is not None and usual:
            group, flags = await self._in_one_statement(usual, group, flags)
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
        usual: list[_Pending],
        group: list[_Pending],
        flags: list[_Flag],
    ) -> tuple[list[_Pending], list[_Flag]]:
        """The usual messages and the flags in one statement; returns what is left to do."""
        assert self._usual is not None
        try:
            async with self._pool.acquire() as conn:
                results = await self._usual(
                    conn, [pending.usual for pending in usual], [pk for pk, _ in flags]
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
        for pending, result in zip(usual, results, strict=True):
            if result is not None:
                _settle(pending.done, result=result)
                written.add(id(pending))
        return [pending for pending in group if id(pending) not in written], []

    async def _set_flags(self, flags: list[_Flag]) -> None:
        error: Exception | None = None
        try:
            async with self._pool.acquire() as conn:
                await queries.mark_published_many(conn, [pk for pk, _ in flags])
        except Exception as failure:
            # Each of its messages fails as if its own flag could not be set:
            # it takes the retry path, and its effects are published again,
            # which the clients drop as repeats.
            error = failure
        for _, done in flags:
            _settle(done, error=error)

    async def _together(self, group: list[_Pending]) -> list[Any]:
        """Every message's writes in one transaction, no savepoints: the usual case."""
        async with self._pool.acquire() as conn, conn.transaction():
            return [await pending.writes(conn) for pending in group]

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


async def _record_usual_messages(
    conn: Connection, messages: list[NewDocumentMessage], flags: list[int]
) -> list[Message | None]:
    """The group's one statement (GroupCommit): new documents, recorded and delivered, and flags.

    Returns each message's decided record, or None for one whose writes are
    still to run: one the statement left undecided or did not write (seen
    before, a DocumentId taken by other bytes), and a second copy of the
    same message, or of the same document to the same recipient, in one
    group (a re-publish racing its first copy), which the statement cannot
    take twice.
    """
    chosen: list[NewDocumentMessage] = []
    keys: set[str] = set()
    routes: set[tuple[str, str, str]] = set()
    for message in messages:
        route = (str(message.document.sender), message.document.document_id, str(message.recipient))
        if message.dedup_key not in keys and route not in routes:
            chosen.append(message)
        keys.add(message.dedup_key)
        routes.add(route)
    recorded = dict(
        zip(
            (id(message) for message in chosen),
            await queries.record_delivered_documents(conn, chosen, flags),
            strict=True,
        )
    )
    results: list[Message | None] = []
    for message in messages:
        record = recorded.get(id(message))
        results.append(record if record is not None and record.decided else None)
    return results


def _warnings(inspected: Inspected) -> str | None:
    """The package's warnings as a delivered message records them: one a line."""
    return "\n".join(inspected.package.warnings) or None


def _new_document(inspected: Inspected, sha256: str) -> NewDocument:
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


def _lock_order(inspected: Inspected | Rejection) -> str:
    """The key of the rows a message's writes lock: its document (see GroupCommit)."""
    if isinstance(inspected, Rejection):
        return ""
    if inspected.ref is not None:  # a status locks the delivery of the document it reports on
        return f"{inspected.ref.sender}\x00{inspected.ref.document_id}"
    return f"{inspected.sender}\x00{inspected.document_id}"


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


class Worker:
    """One consumer of the work queue, with its database pool and publisher."""

    def __init__(
        self,
        settings: Settings,
        *,
        trust: TrustStore,
        pool: Pool,
        connection: AbstractRobustConnection,
        prefetch: int | None = None,
    ) -> None:
        """A worker over an open broker connection and database pool."""
        self.settings = settings
        self.inspector = Inspector(
            CheckContext(trust=trust, limits=settings, allow_sha1=settings.allow_sha1),
            max_bytes=settings.check_memory_mb * 2**20,
        )
        self.pool = pool
        self.connection = connection
        self.prefetch = prefetch or settings.prefetch
        self.gateway_users = frozenset(settings.gateway_users)
        self.directory = Directory(pool, self.gateway_users)
        self.own_user = broker_user_of(settings.amqp_url)
        # Broker users of the exchange itself (workers, the replay tool):
        # only messages they published may carry the original sender, the
        # recipient and the attempt count in headers.
        self.trusted_users = frozenset({self.own_user, *settings.exchange_users})
        self.faults = FaultInjector.parse(settings.fault_kill)
        self._publisher: ConfirmingPublisher | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._redelivered_lane = asyncio.Semaphore(1)
        self._group_commit = GroupCommit(
            pool, at_once=settings.group_commits, usual=_record_usual_messages
        )
        self.processed = 0
        # The channel and consumer tag of the work queue's consumer, for the
        # watchdog (is_consuming).
        self._channel: AbstractChannel | None = None
        self._consumer_tag: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish what is in flight."""
        self._publisher = await ConfirmingPublisher.open(self.connection)
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        # Declared (passively), not just named: aio-pika's robust channel
        # restores only the consumers of queues it declared, so a consumer on
        # get_queue(ensure=False) is silently gone after a broker restart.
        queue = await channel.get_queue(WORK_QUEUE, ensure=True)
        tag = await queue.consume(self._on_message)
        self._channel, self._consumer_tag = channel, tag
        log.info("worker consuming %s (prefetch %d)", WORK_QUEUE, self.prefetch)
        try:
            await stop.wait()
        finally:
            self._consumer_tag = None
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
            # Messages already handed to us are finished, not abandoned:
            # each one ends acked (done) or nacked (back to the queue).
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            with contextlib.suppress(Exception):
                await channel.close()
            await self._publisher.close()

    async def is_consuming(self) -> bool:
        """Whether this worker's consumer is registered on an open channel right now.

        Read from the channel itself, not from what the worker asked for: a
        consumer the broker cancelled (its queue deleted or lost), or one a
        reconnection did not restore, no longer counts.
        """
        channel, tag = self._channel, self._consumer_tag
        if channel is None or tag is None or channel.is_closed:
            return False
        try:
            underlay = await channel.get_underlay_channel()
        except aiormq.exceptions.ChannelInvalidStateError:
            return False
        # aiormq's channel drops a consumer's tag when the broker cancels it.
        consumers = underlay.consumers if isinstance(underlay, aiormq.Channel) else {}
        return not underlay.is_closed and tag in consumers

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(self.handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Process one message to its end: acked once its effects are confirmed.

        A permanent problem ends as a rejection (inside :meth:`process`); a
        transient one sends the message to a retry queue, or parks it after
        the last retry; only if even that fails does it go back to the work
        queue (and a broker that keeps failing will park it by its delivery
        limit).
        """
        origin = Origin.of(message, self.trusted_users, self.gateway_users)
        metrics.IN_FLIGHT.inc()
        try:
            if message.redelivered or _deliveries(message):
                # One redelivered message at a time: if a worker dies now, the
                # one being handled is the suspect, not every message it held.
                async with self._redelivered_lane:
                    await self._handle(message, origin, redelivered=True)
            else:
                await self._handle(message, origin, redelivered=False)
        except Exception:
            # Even the retry or parking path failed (the broker is going
            # away): hand the message back; it is redelivered when the
            # broker is back, and counts towards its delivery limit.
            log.exception("could not finish message %s; returned to the queue", message.message_id)
            await asyncio.sleep(TRANSIENT_BACKOFF_S)
            with contextlib.suppress(Exception):
                await settle(message, ack=False)
        finally:
            metrics.IN_FLIGHT.dec()

    async def _handle(
        self, message: AbstractIncomingMessage, origin: Origin, *, redelivered: bool
    ) -> None:
        if redelivered:
            key = queries.dedup_key(origin.routing_key, message.body, origin.broker_user)
            try:
                async with self.pool.acquire() as conn:
                    starts = await queries.count_start(conn, key)
            except Exception as error:
                await self._retry_or_park(message, origin, classify(error), error)
                await settle(message, ack=True)
                return
            if starts > POISON_STARTS:
                # Decided before a worker died with it: only its effects are
                # owed, and publishing them parses nothing, so it is no poison.
                if not await self._publish_owed(message, origin):
                    await self._park(
                        message, origin, Failure.POISON, f"handling started {starts} times"
                    )
                await settle(message, ack=True)
                return
        self.faults.maybe_kill("after_receive")
        try:
            record = await self.process(
                message.body,
                routing_key=origin.routing_key,
                broker_user=origin.broker_user,
                amqp_message_id=message.message_id,
                replay=origin.replay,
            )
        except Exception as error:  # classified: anything not a Rejection is transient
            await self._retry_or_park(message, origin, classify(error), error)
            await settle(message, ack=True)
            return
        self.faults.maybe_kill("after_publish")
        await settle(message, ack=True)
        self.processed += 1
        self._observe(record, origin)

    def _observe(self, record: Message, origin: Origin) -> None:
        outcome = record.outcome.value if record.outcome else "undecided"
        metrics.MESSAGES.labels(record.kind.value, outcome).inc()
        if record.outcome is TransportOutcome.REJECTED and record.reason_code:
            metrics.REJECTIONS.labels(record.reason_code).inc()
        if origin.published_at is not None and record.outcome is TransportOutcome.DELIVERED:
            latency = (datetime.now(UTC) - origin.published_at).total_seconds()
            metrics.END_TO_END_SECONDS.labels(record.kind.value).observe(max(latency, 0.0))

    async def _retry_or_park(
        self,
        message: AbstractIncomingMessage,
        origin: Origin,
        failure: Failure,
        error: BaseException,
    ) -> None:
        """Send a message that failed for a transient reason to its next retry tier, or park it."""
        if origin.attempts >= len(RETRY_TIERS):
            await self._park(message, origin, failure, str(error))
            return
        tier = RETRY_TIERS[origin.attempts]
        log.warning(
            "%s on message %s (attempt %d): %s; retrying in %s",
            failure.code,
            message.message_id,
            origin.attempts + 1,
            error,
            tier.name,
            extra={
                "message_id": message.message_id,
                "recipient": origin.routing_key,
                "broker_user": origin.broker_user,
                "outcome": "retry",
                "failure": failure.code,
                "attempt": origin.attempts + 1,
                "tier": tier.name,
            },
        )
        assert self._publisher is not None
        await self._publisher.publish(
            RETRY_EXCHANGE,
            tier.routing_key,
            message.body,
            message_id=message.message_id,
            headers=origin.headers(attempts=origin.attempts + 1, failure=failure),
            content_type=message.content_type or XML_CONTENT_TYPE,
            user_id=self.own_user,
        )
        metrics.RETRIES.labels(tier.name, failure.code).inc()

    async def _park(
        self, message: AbstractIncomingMessage, origin: Origin, failure: Failure, detail: str
    ) -> None:
        """Park a message: into ``lienthong.parked``, into the record, and tell its sender."""
        log.error(
            "parking message %s: %s (%s)",
            message.message_id,
            failure.code,
            detail,
            extra={
                "message_id": message.message_id,
                "recipient": origin.routing_key,
                "broker_user": origin.broker_user,
                "outcome": TransportOutcome.PARKED.value,
                "failure": failure.code,
                "attempt": origin.attempts,
            },
        )
        assert self._publisher is not None
        await self._publisher.publish(
            PARKING_EXCHANGE,
            origin.routing_key,
            message.body,
            message_id=message.message_id,
            headers=origin.headers(attempts=origin.attempts, failure=failure),
            content_type=message.content_type or XML_CONTENT_TYPE,
            user_id=self.own_user,
        )
        metrics.PARKED.labels(failure.code).inc()
        # The parked queue holds it now; recording it is best effort (the
        # database may be why it is parked): the audit lists parked messages
        # that have no row, and the replay tool takes them from the queue.
        try:
            await self._record_parked(message.body, origin, failure, detail, message.message_id)
        except Exception as error:
            log.error("parked message %s is not recorded: %s", message.message_id, error)

    async def _publish_owed(self, message: AbstractIncomingMessage, origin: Origin) -> bool:
        """Finish a message decided on an earlier pass: publish what it still owes.

        Returns ``False`` when it was never decided (or is a replay to decide
        again), or when the database cannot say: then it may be poison.
        """
        key = queries.dedup_key(origin.routing_key, message.body, origin.broker_user)
        try:
            async with self.pool.acquire() as conn:
                record = (await queries.messages_by_dedup_key(conn, [key])).get(key)
                if record is None or not record.decided:
                    return False
                if origin.replay and record.outcome in REDECIDED_ON_REPLAY:
                    return False
                if not record.published:
                    await self._publish(effects_of(record, message.body, origin.routing_key))
                    await queries.mark_published(conn, record.pk)
        except Exception as error:
            log.warning("cannot tell whether message %s was decided: %s", message.message_id, error)
            return False
        return True

    async def _record_parked(
        self, body: bytes, origin: Origin, failure: Failure, detail: str, message_id: str | None
    ) -> None:
        publisher = await self.directory.agency_of_user(origin.broker_user)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                record, _ = await queries.record_message(
                    conn,
                    dedup_key=queries.dedup_key(origin.routing_key, body, origin.broker_user),
                    amqp_message_id=message_id,
                    routing_key=origin.routing_key,
                    broker_user=origin.broker_user,
                    body=body,
                    sha256=hashlib.sha256(body).hexdigest(),
                    sender=publisher,
                )
                if record.decided:
                    # Decided before the failure (it was the publishing that
                    # failed): the decision stands and its effects are still
                    # owed; the replay tool publishes them.
                    return
                record = await queries.set_outcome(
                    conn,
                    record.pk,
                    TransportOutcome.PARKED,
                    failure.parked_code,
                    detail[:MAX_DETAIL_CHARS],
                    sender=publisher,
                    # A message parked on its first pass (poison) was still
                    # attempted once; the column counts attempts from 1.
                    attempts=max(origin.attempts, 1),
                )
            await self._publish(effects_of(record, body, origin.routing_key))
            await queries.mark_published(conn, record.pk)

    async def process(
        self,
        body: bytes,
        *,
        routing_key: str,
        broker_user: str | None,
        amqp_message_id: str | None,
        replay: bool = False,
    ) -> Message:
        """Decide, record and publish one message; returns its record.

        A message seen before keeps its decision, except on a replay of a
        rejected or parked message, which is decided again (a CA added since,
        a database back up).
        """
        publisher = await self.directory.agency_of_user(broker_user)
        envelope = Envelope(body, routing_key, publisher)
        loop = asyncio.get_running_loop()
        inspected: Inspected | Rejection
        timings: dict[str, float] = {}
        try:
            recalled = self.inspector.recall(envelope)
            if recalled is None:
                inspected = await loop.run_in_executor(
                    None, self.inspector.inspect, envelope, timings
                )
            else:
                inspected = recalled
                metrics.CHECKS_REUSED.inc()
        except Rejection as rejection:
            inspected = rejection
        for stage, seconds in timings.items():
            metrics.STAGE_SECONDS.labels(stage).observe(seconds)
        # Asked before a connection is taken: a directory miss reloads the
        # directory through the pool, and waiting for a second pooled
        # connection inside the transaction can exhaust the pool (and, while
        # the transaction holds a lock other writers wait for, stall them all).
        registered = (
            isinstance(inspected, Inspected)
            and inspected.kind is MessageKind.DOCUMENT
            and await self.directory.is_registered(inspected.recipient)
        )

        key = queries.dedup_key(routing_key, body, broker_user)
        # The usual case, a new document for a registered recipient, is
        # recorded and delivered in one statement (with the other usual
        # messages of its group, see GroupCommit).
        usual = None
        if registered:  # only a document that passed its checks has a registered recipient
            assert isinstance(inspected, Inspected)
            usual = NewDocumentMessage(
                dedup_key=key,
                amqp_message_id=amqp_message_id,
                routing_key=routing_key,
                broker_user=broker_user,
                body=body,
                recipient=inspected.recipient,
                document=_new_document(inspected, envelope.sha256),
                warnings=_warnings(inspected),
            )

        async def writes(conn: Connection) -> Message:
            if usual is not None:
                recorded = await queries.record_delivered_document(conn, usual)
                if recorded is not None:
                    if recorded.decided:
                        return recorded
                    return await self._decide(conn, recorded, envelope, inspected, registered)
            record, _ = await queries.record_message(
                conn,
                dedup_key=key,
                amqp_message_id=amqp_message_id,
                routing_key=routing_key,
                broker_user=broker_user,
                body=body,
                sha256=envelope.sha256,
                sender=publisher,
            )
            redecide = replay and record.outcome in REDECIDED_ON_REPLAY
            if not record.decided or redecide:
                record = await self._decide(conn, record, envelope, inspected, registered)
            elif record.published:
                metrics.DUPLICATES.inc()
            return record

        started = time.perf_counter()
        # Returns once the transaction holding these writes committed.
        record = await self._group_commit.run(writes, order=_lock_order(inspected), usual=usual)
        metrics.STAGE_SECONDS.labels(metrics.STAGE_PERSIST).observe(time.perf_counter() - started)
        self.faults.maybe_kill("after_commit")
        if not record.published:
            started = time.perf_counter()
            await self._publish(effects_of(record, body, routing_key))
            await self._set_outbox_flag(record.pk)
            metrics.STAGE_SECONDS.labels(metrics.STAGE_PUBLISH).observe(
                time.perf_counter() - started
            )
        log.info(
            "message %s %s: %s%s",
            record.pk,
            record.kind.value,
            record.outcome.value if record.outcome else "undecided",
            f" {record.reason_code}" if record.reason_code else "",
            extra={
                "message_id": amqp_message_id,
                "message_pk": record.pk,
                "document_id": record.document_id,
                "sender": None if record.sender is None else str(record.sender),
                "recipient": routing_key,
                "broker_user": broker_user,
                "kind": record.kind.value,
                "outcome": record.outcome.value if record.outcome else "undecided",
                "reason_code": record.reason_code,
            },
        )
        return record

    async def _set_outbox_flag(self, message_pk: int) -> None:
        """Record that a message's effects are published (with others published meanwhile)."""
        await self._group_commit.mark(message_pk)

    async def _decide(
        self,
        conn: Connection,
        record: Message,
        envelope: Envelope,
        inspected: Inspected | Rejection,
        recipient_registered: bool,
    ) -> Message:
        """Record the outcome of a message never decided before (in the caller's transaction)."""
        document_id = None
        kind = MessageKind.UNKNOWN
        try:
            if isinstance(inspected, Rejection):
                raise inspected
            kind, document_id = inspected.kind, inspected.document_id
            # No savepoint: both paths refuse before their first write (or,
            # for a document whose id is taken, after an upsert that wrote
            # nothing), so a refusal leaves nothing behind.
            if isinstance(inspected.package, DocumentPackage):
                return await self._accept_document(
                    conn, record, envelope, inspected, recipient_registered
                )
            return await self._accept_status(conn, record, inspected)
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
        self,
        conn: Connection,
        record: Message,
        envelope: Envelope,
        inspected: Inspected,
        registered: bool,
    ) -> Message:
        # Everything refusable before the first write: a document row written
        # for a recipient then refused would collide with a corrected re-send.
        decide_document(
            inspected, recipient_registered=registered, existing_sha256=None, sha256=envelope.sha256
        )
        document = _new_document(inspected, envelope.sha256)
        # In one round trip; None when a row committed by a concurrent
        # transaction was out of the statement's sight.
        delivered = await queries.deliver_document(
            conn,
            message_pk=record.pk,
            recipient=inspected.recipient,
            document=document,
            warnings=_warnings(inspected),
        )
        if delivered is not None:
            stored, accepted = delivered
            if accepted is not None:
                return accepted
        else:
            stored = await queries.upsert_document(conn, document, first_message_pk=record.pk)
        # Nothing was written when the id was taken by other bytes.
        decide_document(
            inspected,
            recipient_registered=registered,
            existing_sha256=stored.document.sha256,
            sha256=envelope.sha256,
        )
        delivery, _ = await queries.create_delivery(
            conn, stored.document.pk, inspected.recipient, record.pk
        )
        await queries.append_event(
            conn, delivery_pk=delivery.pk, message_pk=record.pk, code=TransportOutcome.DELIVERED
        )
        return await queries.set_outcome(
            conn,
            record.pk,
            TransportOutcome.DELIVERED,
            detail=_warnings(inspected),
            kind=MessageKind.DOCUMENT,
            sender=inspected.sender,
            document_pk=stored.document.pk,
            document_id=inspected.document_id,
        )

    async def _accept_status(
        self, conn: Connection, record: Message, inspected: Inspected
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
        state = decide_status(inspected, history)
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

    async def _publish(self, publications: list[Publication]) -> None:
        assert self._publisher is not None, "run() opens the publisher"
        for publication in publications:
            await self._publisher.publish(
                publication.exchange,
                publication.routing_key,
                publication.body,
                message_id=publication.message_id,
                headers=publication.headers,
                content_type=publication.content_type,
            )


async def prepare(settings: Settings) -> None:
    """Bring the database schema and the core broker topology up to date."""
    pool = await create_pool(settings)
    try:
        await migrate(pool)
    finally:
        await pool.close()
    connection = await connect(settings.amqp_url, name="lienthong-init")
    try:
        channel = await connection.channel()
        await declare(channel, core_topology())
    finally:
        await connection.close()


async def watch(
    workers: list[Worker], connection: AbstractRobustConnection, pool: Pool, stop: asyncio.Event
) -> None:
    """Keep the gauges of real state current until ``stop``: the watchdog.

    Every :data:`WATCH_INTERVAL_S`: broker connected or not, consumers this
    process really has, database pool usage; every
    :data:`DIRECTORY_FIGURES_INTERVAL_S`: the directory figures of
    :func:`exchange.report.refresh_metrics`.
    """
    figures_due = 0.0
    while not stop.is_set():
        # A watchdog that fails must not stop the workers: it says so and
        # looks again next round.
        try:
            connected = not connection.is_closed and connection.connected.is_set()
            metrics.BROKER_CONNECTED.set(int(connected))
            metrics.CONSUMERS.set(sum([await worker.is_consuming() for worker in workers]))
            idle = pool.get_idle_size()
            metrics.DB_POOL_CONNECTIONS.labels("busy").set(pool.get_size() - idle)
            metrics.DB_POOL_CONNECTIONS.labels("idle").set(idle)
            metrics.DB_POOL_MAX_CONNECTIONS.set(pool.get_max_size())
            if time.monotonic() >= figures_due:
                figures_due = time.monotonic() + DIRECTORY_FIGURES_INTERVAL_S
                await report.refresh_metrics(pool)
        except Exception as error:
            log.warning("watchdog: %s", error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), WATCH_INTERVAL_S)


async def run_workers(
    settings: Settings,
    *,
    count: int = 1,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[list[Worker]], Awaitable[None]] | None = None,
    metrics_port: int | None = None,
) -> int:
    """Run ``count`` workers in this process until ``stop`` (or SIGINT/SIGTERM).

    With ``metrics_port``, the process serves its metrics on that port
    (:func:`exchange.metrics.serve`) while the workers run.
    """
    if settings.trust is None:
        raise RuntimeError(
            "no trust anchors: set LIENTHONG_TRUST (or --trust) to the CA certificate(s)"
        )
    trust = TrustStore.load(settings.trust)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    # First: a port already taken fails the start before anything else.
    stop_serving = metrics.serve(metrics_port) if metrics_port else None
    try:
        pool = await create_pool(settings)
        connection = await connect(settings.amqp_url, name="lienthong-worker")
        workers = [
            Worker(settings, trust=trust, pool=pool, connection=connection) for _ in range(count)
        ]
        watchdog = asyncio.create_task(watch(workers, connection, pool, stop))
        try:
            runs = [asyncio.create_task(w.run(stop)) for w in workers]
            if on_ready is not None:
                await on_ready(workers)
            await asyncio.gather(*runs)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            metrics.CONSUMERS.set(0)
            metrics.BROKER_CONNECTED.set(0)
            await connection.close()
            await pool.close()
    finally:
        if stop_serving is not None:
            stop_serving()
    return sum(w.processed for w in workers)
