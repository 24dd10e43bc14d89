"""The worker: consume ``lienthong.work``; inspect, record, publish, then ack.

For each message, in this order (the order is the guarantee):

1. inspect it (pure checks, :mod:`exchange.pipeline`) off the event loop,
   unless the same bytes were examined moments ago (another recipient's copy
   of the same package: only the envelope's checks run again);
2. hand the result to the ledger (:mod:`exchange.ledger`), which records the
   raw message once (by its dedup key), decides, records the outcome and its
   effects on documents, deliveries and history in a PostgreSQL group
   commit, and returns the publications owed;
3. publish them (the package to the recipient, the receipt to the sender)
   and wait for the broker's confirms, then have the ledger mark them
   published;
4. ack the input.

A transient failure sends the message to a retry queue, or parks it after
the last one (the ledger records the parking and owes the sender a receipt).
A crash anywhere leaves the input unacked, so the broker hands it out again;
the dedup key makes the second pass find the first one's decision, and it
only publishes what was not confirmed yet. Receivers may therefore see a
delivery twice, always with the same message id, and drop the repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from exchange import metrics
from exchange.agency import AgencyCode
from exchange.broker.connection import (
    DEFAULT_EXCHANGE,
    XML_CONTENT_TYPE,
    ConfirmingPublisher,
    PublishNackedError,
    QueueFullError,
    broker_address,
    broker_user_of,
    connect_quietly,
    has_consumer,
    is_broker_unreachable,
    settle,
)
from exchange.broker.origin import Origin, delivery_count
from exchange.broker.topology import (
    BULK_QUEUE,
    DELIVER_EXCHANGE,
    PARKING_EXCHANGE,
    RETRY_EXCHANGE,
    RETRY_TIERS,
    STATUS_EXCHANGE,
    WORK_QUEUE,
    deal_lanes,
)
from exchange.checks.schema import check_schema_files, use_schema_dir
from exchange.directory import Directory, refuse_trusted_users
from exchange.failures import Failure, classify, is_fatal
from exchange.installation import BrokenInstallation
from exchange.ledger import Arrival, Ledger, Publication, waiting_receipt
from exchange.pipeline import CheckCache, CheckContext, CheckedMessage, Envelope
from exchange.pki import Revocations, TrustStore, load_revocations
from exchange.reasons import Reason, Rejection
from exchange.receipts import ReceiptKeyError, ReceiptSigner
from exchange.receipts import schema_path as receipt_schema_path
from exchange.settings import Settings
from exchange.status import TransportOutcome
from exchange.store import queries
from exchange.store.db import Pool, create_pool, database_address, is_database_unreachable
from exchange.store.migrate import load_migrations
from exchange.store.records import Message
from exchange.store.roles import judge_role, role_powers

log = logging.getLogger("lienthong.worker")

# A nacked publish to an agency's queue is tried again this many times, this
# far apart, before the queue counts as full: a quorum queue that lost its
# leader nacks until a new one is elected, about a second on a LAN
# (tests/integration/test_rabbitmq_cluster.py), and a receipt saying
# "inbox full" would be wrong.
NACK_RETRIES = 3
NACK_RETRY_S = 1.0

T = TypeVar("T")

# How long a message waits before it is handed back to the broker when even
# its retry or parking failed (the broker itself is failing).
TRANSIENT_BACKOFF_S = 1.0
# A redelivered message whose handling was started more often than this
# (counted in the database, one redelivered message at a time) was being
# handled each time a worker died: it is parked before it is parsed again.
# Well below the work queue's delivery limit, the broker's own backstop.
POISON_STARTS = 3
# How often the watchdog reads the real state of the broker connection, the
# consumers and the database pool into the gauges: a consumer the broker
# cancelled (a silent loss after a broker restart) shows within this time.
# Cheap: it reads the process's own objects, nothing over the network.
WATCH_INTERVAL_S = 1.0
# The bulk queue's prefetch while a flood is being moved out of the work queue
# (Worker._pace_bulk): enough to keep the flood going, little enough that the
# moving, and the other senders' messages behind it, get the worker first.
BULK_PREFETCH_WHILE_MOVING = 2
# The work queue counts as calm this long after the last message moved.
BULK_CALM_S = 1.0
BULK_PACE_INTERVAL_S = 0.2
# The directory figures (connectivity, overdue statuses, certificates) cost a
# few queries and change slowly.
DIRECTORY_FIGURES_INTERVAL_S = 60.0
# A worker started before RabbitMQ or PostgreSQL tries again after this,
# doubling each time up to the most: a service starting answers within
# seconds, and one that stays down is not asked many times a second.
STARTUP_FIRST_PAUSE_S = 0.5
STARTUP_MOST_PAUSE_S = 8.0
# Bodies larger than this are hashed (SHA-256, the dedup key) in a thread,
# not on the event loop: about a millisecond of hashing.
HASH_OFF_LOOP_BYTES = 1024 * 1024


def _hash(arrival: Arrival, envelope: Envelope) -> None:
    """Compute and keep the hashes the checks and the ledger read (cached properties)."""
    _ = envelope.sha256, arrival.dedup_key


def arrival_of(message: AbstractIncomingMessage, origin: Origin) -> Arrival:
    """The message as the ledger records it, under its origin."""
    return Arrival(
        message.body,
        origin.routing_key,
        origin.broker_user,
        message.message_id,
        replay=origin.replay,
        lane=origin.lane,
    )


class ByteBudget:
    """At most ``limit`` package bytes in hand at once, shared by a process's workers.

    A message holds its body's size from before its checks until it is
    acked (:meth:`hold`); one that does not fit waits. A message that fits
    in the room left goes ahead of larger ones waiting (waiters are let in
    in arrival order, each as soon as it fits), so a flood of large
    packages does not hold up an agency's small ones; a large one waits at
    most until the bytes in hand leave it room, which the prefetch bounds
    (size the budget above the largest package plus the prefetch's worth of
    usual ones, docs/operations.md). A package larger than the whole
    budget waits for it to be empty and is then handled alone. :attr:`peak`
    is the most ever held (for tests and sizing); the gauge
    ``lienthong_worker_bytes_in_hand`` follows the current figure.
    """

    def __init__(self, limit: int) -> None:
        """A budget of ``limit`` bytes (> 0)."""
        if limit <= 0:
            raise ValueError(f"a byte budget needs a positive limit, not {limit}")
        self.limit = limit
        self.in_hand = 0
        self.peak = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes (at most the whole budget) for the block; wait until they fit."""
        share = max(0, min(size, self.limit))
        await self._acquire(share)
        try:
            yield
        finally:
            self._release(share)

    async def _acquire(self, share: int) -> None:
        if self.in_hand + share <= self.limit:
            self._take(share)
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((share, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release(share)  # granted just as it was cancelled
            else:
                self._waiting.remove((share, turn))
                self._wake()
            raise

    def _take(self, share: int) -> None:
        self.in_hand += share
        self.peak = max(self.peak, self.in_hand)
        metrics.BYTES_IN_HAND.set(self.in_hand)

    def _release(self, share: int) -> None:
        self.in_hand -= share
        metrics.BYTES_IN_HAND.set(self.in_hand)
        self._wake()

    def _wake(self) -> None:
        """Let in, in arrival order, every waiter that fits in the room left."""
        for share, turn in list(self._waiting):
            if turn.done():
                self._waiting.remove((share, turn))
            elif self.in_hand + share <= self.limit:
                self._waiting.remove((share, turn))
                self._take(share)
                turn.set_result(None)


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


class Worker:
    """One consumer of the work queue, with its database pool and publisher."""

    def __init__(
        self,
        settings: Settings,
        *,
        trust: TrustStore,
        pool: Pool,
        connection: AbstractRobustConnection,
        publishing: AbstractRobustConnection | None = None,
        lane_connections: Sequence[AbstractRobustConnection] = (),
        prefetch: int | None = None,
        revocations: Revocations | None = None,
        signer: ReceiptSigner | None = None,
        budget: ByteBudget | None = None,
    ) -> None:
        """A worker over open broker connections and a database pool; ``signer`` signs receipts.

        It consumes on ``connection`` and publishes on ``publishing`` (by
        default the same): the broker sends a connection's frames in order,
        so on one connection the confirm of a delivery waits behind every
        large message being delivered to the worker, and a publisher the
        broker throttles (flow control, an alarm) slows the consumers'
        acks with it. For the same reason the lanes are read over
        ``lane_connections`` (by default ``connection``), dealt out among
        them: a large message delays only the lanes of its own connection.
        ``budget`` bounds the package bytes in hand, shared
        with the other workers of the process; by default one of
        ``settings.handling_bytes`` of its own.
        """
        self.settings = settings
        self.budget = budget or ByteBudget(settings.handling_bytes)
        # SHA-1 and the signing certificates are allowed per agency, by the
        # directory (decide_and_publish() hands its SigningRights to the checks).
        self.check_cache = CheckCache(
            CheckContext(trust=trust, limits=settings, revocations=revocations),
            max_bytes=settings.check_memory_mb * 2**20,
        )
        self.pool = pool
        self.connection = connection
        self.publishing = publishing or connection
        self.lane_connections = tuple(lane_connections) or (connection,)
        self.prefetch = prefetch or settings.prefetch
        self.gateway_users = frozenset(settings.gateway_users)
        self.directory = Directory(pool, self.gateway_users)
        self.own_user = broker_user_of(settings.amqp_url)
        # Broker users of the exchange itself (workers, the replay tool):
        # only messages they published may carry the original sender, the
        # recipient and the attempt count in headers.
        self.trusted_users = frozenset(
            {
                self.own_user,
                *settings.exchange_users,
                *([broker_user_of(settings.replay_amqp_url)] if settings.replay_amqp_url else []),
            }
        )
        self.faults = FaultInjector.parse(settings.fault_kill)
        self._publisher: ConfirmingPublisher | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._redelivered_lane = asyncio.Semaphore(1)
        self.ledger = Ledger(
            pool,
            self.directory,
            group_commits=settings.group_commits,
            signer=signer,
            status_skew=timedelta(seconds=settings.status_timestamp_skew_s),
        )
        self.processed = 0
        # An error no retry can fix (is_fatal) that stopped this worker.
        self.fatal: BaseException | None = None
        self._stop: asyncio.Event | None = None
        # The channel and consumer tag of the work queue's consumer, for the
        # watchdog (is_consuming).
        self._channel: AbstractChannel | None = None
        self._consumer_tag: str | None = None
        # The lanes' channels, one on each lane connection, with their consumer tags.
        self._lane_consumers: list[tuple[AbstractChannel, str]] = []
        # Set once the worker's consumers are cancelled on the way out.
        self._not_consuming = asyncio.Event()
        # Messages of each sender (its broker user) this worker holds now,
        # from either queue: past settings.fair_share, the sender's next
        # messages from the work queue are moved to the bulk queue.
        self._in_hand: dict[str | None, int] = {}
        self.moved = 0
        self._last_move = 0.0
        self._bulk_prefetch_idle = max(1, self.prefetch // 2)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish what is in flight.

        A fatal error (:func:`~exchange.failures.is_fatal`) sets ``stop``
        itself and is kept in :attr:`fatal`.
        """
        self._stop = stop
        self._publisher = await ConfirmingPublisher.open(self.publishing)
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        # Declared (passively), not just named: aio-pika's robust channel
        # restores only the consumers of queues it declared, so a consumer on
        # get_queue(ensure=False) is silently gone after a broker restart.
        queue = await channel.get_queue(WORK_QUEUE, ensure=True)
        # The bulk queue on a channel of its own, with a prefetch of its own
        # (see _pace_bulk): a flood moved there gets a share of the worker,
        # never all of it.
        bulk_channel = await self.connection.channel()
        await bulk_channel.set_qos(prefetch_count=self._bulk_prefetch_idle)
        bulk = await bulk_channel.get_queue(BULK_QUEUE, ensure=True)
        bulk_tag = await bulk.consume(self._on_unmovable_message)
        # The lanes dealt out among the lane connections, a channel on each,
        # each consumer with the lane prefetch: a flooding sender's lane
        # gives the worker that many messages, and the other lanes theirs
        # beside them, over other connections.
        lane_channels: list[AbstractChannel] = []
        lane_consumers: list[tuple[AbstractChannel, AbstractQueue, str]] = []
        dealt = deal_lanes(len(self.lane_connections))
        for lane_connection, names in zip(self.lane_connections, dealt, strict=True):
            lane_channel = await lane_connection.channel()
            await lane_channel.set_qos(prefetch_count=self.settings.lane_prefetch)
            lane_channels.append(lane_channel)
            for name in names:
                lane = await lane_channel.get_queue(name, ensure=True)
                lane_tag = await lane.consume(self._on_unmovable_message)
                lane_consumers.append((lane_channel, lane, lane_tag))
        tag = await queue.consume(self._on_message)
        self._channel, self._consumer_tag = channel, tag
        self._lane_consumers = [(on, lane_tag) for on, _, lane_tag in lane_consumers]
        pacer = asyncio.create_task(self._pace_bulk(bulk_channel, stop))
        log.info(
            "worker consuming %s and %d lanes over %d connections (prefetch %d, %d a lane)",
            WORK_QUEUE,
            len(lane_consumers),
            len(self.lane_connections),
            self.prefetch,
            self.settings.lane_prefetch,
        )
        try:
            await stop.wait()
        finally:
            pacer.cancel()
            self._consumer_tag = None
            self._lane_consumers = []
            await asyncio.gather(
                queue.cancel(tag),
                bulk.cancel(bulk_tag),
                *(lane.cancel(lane_tag) for _, lane, lane_tag in lane_consumers),
                return_exceptions=True,
            )
            self._not_consuming.set()
            # Messages already handed to us are finished, not abandoned:
            # each one ends acked (done) or nacked (back to the queue). Again
            # until none is left: a delivery the broker sent before the cancel
            # reached it starts its task while the first ones finish.
            while self._tasks:
                await asyncio.wait(set(self._tasks))
            for opened_channel in lane_channels:
                with contextlib.suppress(Exception):
                    await opened_channel.close()
            with contextlib.suppress(Exception):
                await bulk_channel.close()
            with contextlib.suppress(Exception):
                await channel.close()
            await self._publisher.close()

    async def is_consuming(self) -> bool:
        """Whether every consumer of this worker (work queue, lanes) is on an open channel now.

        Read from the channel itself, not from what the worker asked for: a
        consumer the broker cancelled (its queue deleted or lost), or one a
        reconnection did not restore, no longer counts.
        """
        channel, tag = self._channel, self._consumer_tag
        lanes = list(self._lane_consumers)
        if channel is None or tag is None or not lanes:
            return False
        consumers = [(channel, tag), *lanes]
        return all([await has_consumer(on, consumer) for on, consumer in consumers])

    def _start(self, message: AbstractIncomingMessage, *, movable: bool) -> None:
        task = asyncio.create_task(self.handle_delivery(message, movable=movable))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._start(message, movable=True)

    async def _on_unmovable_message(self, message: AbstractIncomingMessage) -> None:
        # From the bulk queue (already moved), or from a lane: a lane holds
        # one sender's messages (or a few senders'), each lane with its own
        # prefetch, so there is nothing to move out of its way.
        self._start(message, movable=False)

    async def handle_delivery(
        self, message: AbstractIncomingMessage, *, movable: bool = False
    ) -> None:
        """Process one message to its end: acked once its effects are confirmed.

        A permanent problem ends as a rejection (inside :meth:`decide_and_publish`); a
        transient one sends the message to a retry queue, or parks it after
        the last retry; only if even that fails does it go back to the work
        queue (and a broker that keeps failing will park it by its delivery
        limit). A fatal error (the exchange's own files are broken) is no
        fault of the message: it goes back to the work queue, for a worker
        that can judge it, and this worker stops.
        """
        origin = Origin.of(message, self.trusted_users, self.gateway_users)
        sender = origin.broker_user
        share = self.settings.fair_share
        if (
            movable
            and share
            and not origin.replay
            and self._in_hand.get(sender, 0) >= share
            and await self._move_to_bulk(message, origin)
        ):
            return
        self._in_hand[sender] = self._in_hand.get(sender, 0) + 1
        metrics.IN_FLIGHT.inc()
        try:
            if message.redelivered or delivery_count(message):
                # One redelivered message at a time: if a worker dies now, the
                # one being handled is the suspect, not every message it held.
                async with self._redelivered_lane, self.budget.hold(len(message.body)):
                    await self._settle_delivery(message, origin, redelivered=True)
            else:
                # Large packages wait here, before their checks, until their
                # bytes fit in the process's budget (LIENTHONG_HANDLING_BYTES).
                async with self.budget.hold(len(message.body)):
                    await self._settle_delivery(message, origin, redelivered=False)
        except Exception as error:
            if is_fatal(error):
                await self._give_back_and_stop(message, error)
                return
            # Even the retry or parking path failed (the broker is going
            # away): hand the message back; it is redelivered when the
            # broker is back, and counts towards its delivery limit.
            log.exception("could not finish message %s; returned to the queue", message.message_id)
            await asyncio.sleep(TRANSIENT_BACKOFF_S)
            with contextlib.suppress(Exception):
                await settle(message, ack=False)
        finally:
            metrics.IN_FLIGHT.dec()
            left = self._in_hand[sender] - 1
            if left:
                self._in_hand[sender] = left
            else:
                del self._in_hand[sender]

    async def _move_to_bulk(self, message: AbstractIncomingMessage, origin: Origin) -> bool:
        """Move a message of a sender that has its fair share in hand to the bulk queue.

        Published (confirmed) under the exchange's own user with the headers
        of its origin, as a retry is, then acknowledged: nothing is decided
        or recorded, and the dedup key is unchanged. ``False`` if the move
        failed: the caller handles the message itself (a copy the broker
        took after all is a duplicate, which the dedup key absorbs).
        """
        assert self._publisher is not None
        try:
            await self._publisher.publish(
                DEFAULT_EXCHANGE,
                BULK_QUEUE,
                message.body,
                message_id=message.message_id,
                headers=origin.headers(attempts=origin.attempts, failure=None),
                content_type=message.content_type or XML_CONTENT_TYPE,
                user_id=self.own_user,
            )
        except Exception as error:
            log.warning("could not move message %s to bulk: %s", message.message_id, error)
            return False
        # Unacknowledged (the channel closed), it comes back and is moved or
        # handled again: a duplicate, which the dedup key absorbs.
        with contextlib.suppress(Exception):
            await settle(message, ack=True)
        self.moved += 1
        self._last_move = time.monotonic()
        metrics.MOVED_TO_BULK.inc()
        return True

    async def _pace_bulk(self, bulk_channel: AbstractChannel, stop: asyncio.Event) -> None:
        """Slow the bulk queue down while a flood is being moved out of the work queue.

        Moving is cheap (a publish, a confirm, an ack) but it needs the
        worker's event loop and CPU; while the bulk queue's messages take
        them, every message behind the flood in the work queue waits for the
        flood to be moved. So while messages are being moved (one in the last
        :data:`BULK_CALM_S`), the bulk queue's prefetch is
        :data:`BULK_PREFETCH_WHILE_MOVING`; once the work queue is calm, half
        the worker's prefetch, so a flood alone uses the whole worker.
        """
        slow = False
        while not stop.is_set():
            moving = time.monotonic() - self._last_move < BULK_CALM_S
            if moving != slow:
                prefetch = BULK_PREFETCH_WHILE_MOVING if moving else self._bulk_prefetch_idle
                try:
                    await bulk_channel.set_qos(prefetch_count=prefetch)
                    slow = moving
                except Exception as error:  # the channel is being restored: next round
                    log.debug("could not set the bulk queue's prefetch: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), BULK_PACE_INTERVAL_S)

    async def _give_back_and_stop(
        self, message: AbstractIncomingMessage, error: BaseException
    ) -> None:
        if self.fatal is None:
            self.fatal = error
            log.critical("stopping the worker: %s", error)
        if self._stop is not None:
            self._stop.set()
            # Handed back once no consumer of this worker can take it again.
            await self._not_consuming.wait()
        with contextlib.suppress(Exception):
            await settle(message, ack=False)

    async def _settle_delivery(
        self, message: AbstractIncomingMessage, origin: Origin, *, redelivered: bool
    ) -> None:
        arrival = arrival_of(message, origin)
        if redelivered:
            try:
                starts = await self.ledger.count_start(arrival)
            except Exception as error:
                if is_fatal(error):
                    raise
                await self._retry_or_park(message, origin, classify(error), error)
                await settle(message, ack=True)
                return
            if starts > POISON_STARTS:
                # Decided before a worker died with it: only its effects are
                # owed, and publishing them parses nothing, so it is no poison.
                if not await self._publish_owed(arrival):
                    await self._park(
                        message, origin, Failure.POISON, f"handling started {starts} times"
                    )
                await settle(message, ack=True)
                return
        self.faults.maybe_kill("after_receive")
        try:
            record = await self.decide_and_publish(arrival)
        except Exception as error:  # anything not a Rejection is transient, or fatal
            if is_fatal(error):
                raise
            await self._retry_or_park(message, origin, classify(error), error)
            await settle(message, ack=True)
            return
        self.faults.maybe_kill("after_publish")
        await settle(message, ack=True)
        self.processed += 1
        self._observe(record, origin)

    async def decide_and_publish(self, arrival: Arrival) -> Message:
        """Inspect, decide and record, publish, mark: one message; returns its record."""
        publisher = await self.directory.agency_of_user(arrival.broker_user)
        disabled = publisher is not None and await self.directory.is_disabled(publisher)
        rights = await self.directory.signing_rights()
        if self.check_cache.context.rights is not rights:
            self.check_cache.use(rights=rights)
        envelope = Envelope(arrival.body, arrival.routing_key, publisher, disabled, arrival.lane)
        if len(arrival.body) > HASH_OFF_LOOP_BYTES:
            # Hashing 60 MiB takes a tenth of a second; off the event loop
            # (hashlib lets go of the GIL), the other messages move meanwhile.
            await asyncio.get_running_loop().run_in_executor(None, _hash, arrival, envelope)
        inspected: CheckedMessage | Rejection
        if await self._over_rate(publisher, arrival, disabled=disabled):
            # Refused before it costs a parse: recorded, and the receipt says why.
            inspected = Rejection.of(Reason.QUOTA)
        else:
            inspected = await self._check(envelope)
        decided = await self.ledger.decide(arrival, envelope, inspected)
        self.faults.maybe_kill("after_commit")
        record = decided.record
        if not record.published:
            started = time.perf_counter()
            try:
                await self._publish(decided.owed)
            except QueueFullError as error:
                await self._tell_sender_it_waits(record, arrival, error)
                raise
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
                "message_id": arrival.amqp_message_id,
                "message_pk": record.pk,
                "document_id": record.document_id,
                "sender": None if record.sender is None else str(record.sender),
                "recipient": arrival.routing_key,
                "broker_user": arrival.broker_user,
                "kind": record.kind.value,
                "outcome": record.outcome.value if record.outcome else "undecided",
                "reason_code": record.reason_code,
            },
        )
        return record

    async def _over_rate(
        self, publisher: AgencyCode | None, arrival: Arrival, *, disabled: bool
    ) -> bool:
        """Whether ``publisher`` is over its rate (takes a token of its bucket otherwise).

        Replays (an operator's) and messages of unknown or disabled senders
        (refused anyway) take no token.
        """
        if publisher is None or disabled or arrival.replay:
            return False
        allowed = await self.ledger.take_token(
            publisher, rate=self.settings.quota_rate_per_s, burst=self.settings.quota_burst
        )
        return not allowed

    async def _tell_sender_it_waits(
        self, record: Message, arrival: Arrival, error: QueueFullError
    ) -> None:
        """Tell the sender its message is recorded but the recipient's queue is full.

        Best effort: the sender's own status queue may be full as well; the
        message is retried either way (:meth:`_retry_or_park`).
        """
        log.warning(
            "message %s waits: %s",
            record.pk,
            error,
            extra={"message_pk": record.pk, "recipient": arrival.routing_key},
        )
        if record.sender is None or error.routing_key == str(record.sender):
            return
        try:
            await self._publish(
                [
                    waiting_receipt(
                        record, arrival.routing_key, Failure.QUEUE_FULL, self.ledger.signer
                    )
                ]
            )
        except Exception as failure:
            log.warning("could not tell the sender of message %s: %s", record.pk, failure)

    async def _check(self, envelope: Envelope) -> CheckedMessage | Rejection:
        """The pure checks, off the event loop, unless the same bytes were examined moments ago."""
        timings: dict[str, float] = {}
        inspected: CheckedMessage | Rejection
        try:
            recalled = self.check_cache.recall(envelope)
            if recalled is None:
                inspected = await asyncio.get_running_loop().run_in_executor(
                    None, self.check_cache.check, envelope, timings
                )
            else:
                inspected = recalled
                metrics.CHECKS_REUSED.inc()
        except Rejection as rejection:
            inspected = rejection
        for stage, seconds in timings.items():
            metrics.STAGE_SECONDS.labels(stage).observe(seconds)
        return inspected

    async def _publish(self, publications: Iterable[Publication]) -> None:
        """Publish, each confirmed; then record the subscription copies among them.

        The copies are recorded before the outbox flag is set: a crash in
        between publishes them again on the next pass (receivers drop the
        repeat by its message id) and records them once.
        """
        assert self._publisher is not None, "run() opens the publisher"
        copies = []
        for publication in publications:
            await self._publish_one(publication)
            if publication.copy is not None:
                copies.append(publication.copy)
        if copies:
            await self.ledger.record_copies(copies)
            metrics.SUBSCRIPTION_COPIES.inc(len(copies))

    async def _publish_one(self, publication: Publication) -> None:
        """Publish one publication, confirmed; a full agency queue is a :class:`QueueFullError`.

        The broker nacks a publish to a full queue (the agencies' queues are
        bounded with reject-publish), and also, for a few seconds, one to a
        quorum queue whose leader was lost, until a new one is elected (the
        publisher takes a new channel after a nack). Only a queue that still
        refuses after :data:`NACK_RETRIES` more tries, :data:`NACK_RETRY_S`
        apart, is full: the sender is not told of a full inbox that was a
        failover.
        """
        assert self._publisher is not None, "run() opens the publisher"
        for attempt in range(NACK_RETRIES + 1):
            try:
                await self._publisher.publish(
                    publication.exchange,
                    publication.routing_key,
                    publication.body,
                    message_id=publication.message_id,
                    headers=publication.headers,
                    content_type=publication.content_type,
                )
                return
            except PublishNackedError as error:
                if publication.exchange not in (DELIVER_EXCHANGE, STATUS_EXCHANGE):
                    raise
                if attempt == NACK_RETRIES:
                    raise QueueFullError(
                        error.exchange, error.routing_key, error.message_id, "the queue is full"
                    ) from error
                await asyncio.sleep(NACK_RETRY_S)

    async def _set_outbox_flag(self, message_pk: int) -> None:
        """Record that a message's effects are published (with others published meanwhile)."""
        await self.ledger.mark_published(message_pk)

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
            headers=origin.headers(attempts=origin.attempts + 1, failure=failure.code),
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
            headers=origin.headers(attempts=origin.attempts, failure=failure.code),
            content_type=message.content_type or XML_CONTENT_TYPE,
            user_id=self.own_user,
        )
        metrics.PARKED.labels(failure.code).inc()
        # The parked queue holds it now; recording it is best effort (the
        # database may be why it is parked): the audit lists parked messages
        # that have no row, and the replay tool takes them from the queue.
        try:
            decided = await self.ledger.park(
                arrival_of(message, origin), failure, detail, attempts=origin.attempts
            )
            if decided is not None:
                await self._publish(decided.owed)
                await self.ledger.mark_published(decided.record.pk)
        except Exception as error:
            log.error("parked message %s is not recorded: %s", message.message_id, error)

    async def _publish_owed(self, arrival: Arrival) -> bool:
        """Finish a message decided on an earlier pass: publish what it still owes.

        Returns ``False`` when it was never decided (or is a replay to decide
        again), or when the database cannot say: then it may be poison.
        """
        try:
            decided = await self.ledger.earlier_decision(arrival)
            if decided is None:
                return False
            if not decided.record.published:
                await self._publish(decided.owed)
                await self.ledger.mark_published(decided.record.pk)
        except Exception as error:
            log.warning(
                "cannot tell whether message %s was decided: %s", arrival.amqp_message_id, error
            )
            return False
        return True


RefreshFigures = Callable[[Pool], Awaitable[None]]


async def watch(
    workers: list[Worker],
    connections: Sequence[AbstractRobustConnection],
    pool: Pool,
    stop: asyncio.Event,
    refresh_figures: RefreshFigures | None = None,
) -> None:
    """Keep the gauges of real state current until ``stop``: the watchdog.

    Every :data:`WATCH_INTERVAL_S`: broker connected or not, consumers this
    process really has, database pool usage; every
    :data:`DIRECTORY_FIGURES_INTERVAL_S`: ``refresh_figures`` (the
    directory figures, :func:`exchange.report.refresh_metrics` for
    ``lienthong worker``).
    """
    figures_due = 0.0
    while not stop.is_set():
        # A watchdog that fails must not stop the workers: it says so and
        # looks again next round.
        try:
            connected = all(not c.is_closed and c.connected.is_set() for c in connections)
            metrics.BROKER_CONNECTED.set(int(connected))
            metrics.CONSUMERS.set(sum([await worker.is_consuming() for worker in workers]))
            idle = pool.get_idle_size()
            metrics.DB_POOL_CONNECTIONS.labels("busy").set(pool.get_size() - idle)
            metrics.DB_POOL_CONNECTIONS.labels("idle").set(idle)
            metrics.DB_POOL_MAX_CONNECTIONS.set(pool.get_max_size())
            if refresh_figures is not None and time.monotonic() >= figures_due:
                figures_due = time.monotonic() + DIRECTORY_FIGURES_INTERVAL_S
                await refresh_figures(pool)
        except Exception as error:
            log.warning("watchdog: %s", error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), WATCH_INTERVAL_S)


def check_installation() -> None:
    """Load every file the package ships; :class:`BrokenInstallation` if one is missing or broken.

    The XSDs are what a worker needs to judge any package; the migrations
    or the receipt schema missing mean a damaged installation all the same.
    """
    check_schema_files()
    load_migrations()
    if not receipt_schema_path().is_file():
        raise BrokenInstallation(f"{receipt_schema_path()} is missing; reinstall lienthong")


def load_receipt_signer(settings: Settings, *, at: datetime | None = None) -> ReceiptSigner | None:
    """The exchange's receipt signer (``receipt_key``, ``receipt_cert``), checked before a start.

    :class:`~exchange.receipts.ReceiptKeyError` when they are not set (unless
    ``unsigned_receipts``: then ``None``, and a warning), cannot be read, do
    not match, lack the receipt-signing ExtendedKeyUsage, or the certificate
    is not valid at ``at`` (now): a worker must not send receipts nobody can
    verify.
    """
    if settings.receipt_key is None or settings.receipt_cert is None:
        if settings.receipt_key is not None or settings.receipt_cert is not None:
            raise ReceiptKeyError(
                "LIENTHONG_RECEIPT_KEY and LIENTHONG_RECEIPT_CERT go together; set both"
            )
        if settings.unsigned_receipts:
            log.warning(
                "receipts are sent unsigned (LIENTHONG_UNSIGNED_RECEIPTS): they prove nothing "
                "to a third party; development only"
            )
            return None
        raise ReceiptKeyError(
            "no receipt key: set LIENTHONG_RECEIPT_KEY and LIENTHONG_RECEIPT_CERT to the "
            "exchange's key and certificate (`lienthong keys issue-exchange`), or "
            "LIENTHONG_UNSIGNED_RECEIPTS=true on a development exchange"
        )
    signer = ReceiptSigner.load(settings.receipt_key, settings.receipt_cert)
    moment = at or datetime.now(UTC)
    certificate = signer.certificate
    if not certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc:
        raise ReceiptKeyError(
            f"the receipt certificate {settings.receipt_cert} is valid from "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now: receipts it "
            "signed would not verify; issue a new one"
        )
    return signer


class StartupError(RuntimeError):
    """A service did not answer in ``LIENTHONG_STARTUP_WAIT``; the message says which and why."""


async def open_when_ready(
    service: str,
    address: str,
    open_service: Callable[[], Awaitable[T]],
    is_unreachable: Callable[[BaseException], bool],
    *,
    wait_s: float,
    since: float,
    stop: asyncio.Event,
) -> T | None:
    """``open_service()``, tried again while ``service`` does not answer, until ``since + wait_s``.

    ``since`` is when the start began (:func:`time.monotonic`): the services
    share one wait. Each failed attempt logs a line (which service, where,
    why, when the next attempt comes); the pause doubles from
    :data:`STARTUP_FIRST_PAUSE_S` to :data:`STARTUP_MOST_PAUSE_S`. Raises
    :class:`StartupError` once the wait is spent (at once with 0), and lets
    an error ``is_unreachable`` does not accept (a refused login) through at
    once. Returns ``None`` if ``stop`` is set while waiting.
    """
    deadline = since + wait_s
    pause = STARTUP_FIRST_PAUSE_S
    attempt = 1
    while True:
        try:
            return await open_service()
        except Exception as error:
            if not is_unreachable(error):
                raise
            cause = str(error) or type(error).__name__
            left = deadline - time.monotonic()
            if left <= 0:
                waited = f" after {wait_s:g} s" if wait_s else ""
                raise StartupError(
                    f"cannot reach {service} at {address}{waited} ({cause}); is it running? "
                    "(LIENTHONG_STARTUP_WAIT sets how long a starting worker waits for it)"
                ) from None
            pause = min(pause, left)
            log.warning(
                "cannot reach %s at %s yet (attempt %d: %s); trying again in %.1f s, "
                "for up to %.1f s more",
                service,
                address,
                attempt,
                cause,
                pause,
                left,
                extra={"service": service, "attempt": attempt},
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause)
        if stop.is_set():
            return None
        pause = min(pause * 2, STARTUP_MOST_PAUSE_S)
        attempt += 1


def observe_revocations(revocations: Revocations) -> None:
    """Set the revocation metrics from what a worker process holds now."""
    metrics.CRL_LISTS.set(len(revocations))
    metrics.CRL_STALE_ISSUERS.set(len(revocations.stale()))
    updates = revocations.next_updates().values()
    metrics.CRL_EARLIEST_NEXT_UPDATE.set(
        min(u.timestamp() for u in updates) if updates else float("inf")
    )


def observe_receipt_signer(signer: ReceiptSigner | None) -> None:
    """Set the receipt certificate's expiry gauge (0 without one: unsigned receipts)."""
    expiry = 0.0 if signer is None else signer.certificate.not_valid_after_utc.timestamp()
    metrics.RECEIPT_CERTIFICATE_EXPIRY.set(expiry)


class TrustKeeper:
    """The trust anchors, revocation lists and receipt key of a worker process, reloaded as it runs.

    :meth:`reload` reads the files again and hands them to every worker's
    checks and ledger; a message being inspected finishes with what it
    started with, the next one uses the new. Files that cannot be read, or a
    receipt certificate not valid now, leave the previous ones in use
    (logged, counted as a failed reload).
    """

    def __init__(self, settings: Settings, workers: Sequence[Worker]) -> None:
        """A keeper for ``workers``, reading what ``settings`` names."""
        self.settings = settings
        self.workers = workers

    async def reload(self, *, trust: bool) -> bool:
        """Read the revocation lists again; with ``trust``, the trust anchors and receipt key too.

        The receipt key and certificate are read again from the same files
        (``LIENTHONG_RECEIPT_KEY``, ``LIENTHONG_RECEIPT_CERT``): the next
        certificate is put in place of the current one before it expires.
        """
        try:
            store = None
            if trust and self.settings.trust is not None:
                TrustStore.forget(self.settings.trust)
                store = TrustStore.load(self.settings.trust)
            revocations = load_revocations(self.settings)
            signer = load_receipt_signer(self.settings) if trust else None
        except (OSError, ValueError) as error:
            metrics.TRUST_RELOADS.labels("failed").inc()
            log.error(
                "could not reload the trust anchors, revocation lists or receipt key: %s", error
            )
            return False
        for worker in self.workers:
            worker.check_cache.use(trust=store, revocations=revocations)
            if trust:
                worker.ledger.signer = signer
                await worker.directory.reload()
        if trust:
            observe_receipt_signer(signer)
        observe_revocations(revocations)
        metrics.TRUST_RELOADS.labels("ok").inc()
        stale = revocations.stale()
        if stale:
            log.error(
                "revocation lists out of date (certificates of these CAs are refused): %s",
                "; ".join(
                    f"{s.issuer} (nextUpdate {s.next_update:%Y-%m-%d %H:%M} UTC)" for s in stale
                ),
            )
        log.info(
            "reloaded %s%d revocation list(s)",
            "the trust anchors, the receipt key and " if trust else "",
            len(revocations),
        )
        return True

    async def run(self, stop: asyncio.Event, reload_now: asyncio.Event) -> None:
        """Reload every ``crl_reload_s`` seconds; at once, with the anchors, on ``reload_now``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reload_now.wait(), self.settings.crl_reload_s)
            if stop.is_set():
                return
            asked = reload_now.is_set()
            reload_now.clear()
            await self.reload(trust=asked)


class Sealer:
    """Seals the chains' heads every ``seal_interval_s`` (exchange/seals.py).

    Every worker process holding the sealing key runs one; a database lock
    and the last seal's age make one seal per interval, whichever process
    writes it. A failure (the time-stamp authority down) is logged and
    counted, and tried again at the next check.
    """

    def __init__(self, settings: Settings, pool: Pool) -> None:
        """A sealer for the database of ``pool``."""
        self.settings = settings
        self.pool = pool

    async def seal_if_due(self) -> None:
        """Seal now if the last seal is an interval old."""
        from exchange.seals import seal_if_due

        try:
            async with self.pool.acquire() as conn:
                seal = await seal_if_due(conn, self.settings)
        # Whatever stops this seal (the authority, the database, the key file)
        # must not stop the next: sealing is retried at the next check.
        except Exception as error:
            metrics.SEALS.labels("failed").inc()
            log.error("could not seal the chains' heads: %s", error)
            return
        if seal is not None:
            metrics.SEALS.labels("ok").inc()
            metrics.LAST_SEAL.set(seal.sealed_at.timestamp())

    async def run(self, stop: asyncio.Event) -> None:
        """Check at once, then every interval (at most every minute) until ``stop``."""
        check_every = min(self.settings.seal_interval_s, 60.0)
        while not stop.is_set():
            await self.seal_if_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), check_every)


async def run_workers(
    settings: Settings,
    *,
    count: int = 1,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[list[Worker]], Awaitable[None]] | None = None,
    metrics_port: int | None = None,
    refresh_figures: RefreshFigures | None = None,
) -> int:
    """Run ``count`` workers in this process until ``stop`` (or SIGINT/SIGTERM).

    With ``metrics_port``, the process serves its metrics on that port
    (:func:`exchange.metrics.serve`) while the workers run. The watchdog
    calls ``refresh_figures`` with the database pool every
    :data:`DIRECTORY_FIGURES_INTERVAL_S` (:func:`watch`).

    The trust anchors and revocation lists are reloaded every
    ``settings.crl_reload_s`` seconds (the lists) and on SIGHUP (both, and
    the directory), while messages keep flowing (:class:`TrustKeeper`).

    Before anything else the shipped files are loaded (a worker without its
    schemas could judge no package: :func:`check_installation`).
    PostgreSQL and RabbitMQ are waited for, up to ``settings.startup_wait``
    seconds in all (:func:`open_when_ready`), then :class:`StartupError`.
    Without a usable receipt key the start stops at once
    (:func:`load_receipt_signer`, :class:`~exchange.receipts.ReceiptKeyError`). An
    agency whose broker user is one of the exchange's own
    (``settings.trusted_broker_users``) stops the start with
    :class:`~exchange.directory.TrustedUserError`; a database role that can
    change the schema, on a database off this host, with
    :class:`~exchange.store.roles.PrivilegedRoleError`. A worker
    that meets a fatal error while it runs stops, and it is raised here.
    """
    if settings.trust is None:
        raise RuntimeError(
            "no trust anchors: set LIENTHONG_TRUST (or --trust) to the CA certificate(s)"
        )
    trust = TrustStore.load(settings.trust)
    revocations = load_revocations(settings)
    signer = load_receipt_signer(settings)
    use_schema_dir(settings.schema_dir)
    check_installation()
    stop = stop or asyncio.Event()
    reload_now = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    # SIGHUP: read the trust anchors, the revocation lists and the directory
    # again, without stopping (what is in flight finishes as it started).
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reload_now.set)
    workers: list[Worker] = []
    since = time.monotonic()
    async with contextlib.AsyncExitStack() as opened:  # closed in reverse order
        # First: a port already taken fails the start before anything else.
        if metrics_port:
            opened.callback(metrics.serve(metrics_port, settings.metrics_host))
        pool = await open_when_ready(
            "PostgreSQL",
            database_address(settings.database_url),
            lambda: create_pool(settings),
            is_database_unreachable,
            wait_s=settings.startup_wait,
            since=since,
            stop=stop,
        )
        if pool is None:
            return 0
        opened.push_async_callback(pool.close)
        async with pool.acquire() as conn:
            refuse_trusted_users(await queries.list_agencies(conn), settings.trusted_broker_users)
            powers = await role_powers(conn)
        # A worker's login changes no schema; off this host that is refused
        # (PrivilegedRoleError), on it a warning and the gauge say so.
        metrics.DATABASE_ROLE_PRIVILEGED.set(1 if powers.can_change_schema else 0)
        warning = judge_role(powers, settings.database_url, "worker")
        if warning is not None:
            log.warning("%s", warning)
        connection = await open_when_ready(
            "RabbitMQ",
            broker_address(settings.amqp_url),
            lambda: connect_quietly(settings.amqp_url, name="lienthong-worker"),
            is_broker_unreachable,
            wait_s=settings.startup_wait,
            since=since,
            stop=stop,
        )
        if connection is None:
            return 0
        opened.push_async_callback(connection.close)
        # Publishing and the lanes on connections of their own (see Worker): a
        # confirm, or another lane's message, never waits behind a large
        # delivery, nor a consumer behind a throttled publisher.
        publishing = await connect_quietly(settings.amqp_url, name="lienthong-worker-publish")
        opened.push_async_callback(publishing.close)
        openings = await asyncio.gather(
            *(
                connect_quietly(settings.amqp_url, name=f"lienthong-worker-lanes-{number:02d}")
                for number in range(settings.lane_connections)
            ),
            return_exceptions=True,
        )
        lane_connections = [c for c in openings if not isinstance(c, BaseException)]
        for lane_connection in lane_connections:
            opened.push_async_callback(lane_connection.close)
        for failed in openings:
            if isinstance(failed, BaseException):
                raise failed
        connections = (connection, publishing, *lane_connections)
        # One budget for the process: memory is the process's, however many workers.
        budget = ByteBudget(settings.handling_bytes)
        workers = [
            Worker(
                settings,
                trust=trust,
                pool=pool,
                connection=connection,
                publishing=publishing,
                lane_connections=lane_connections,
                revocations=revocations,
                signer=signer,
                budget=budget,
            )
            for _ in range(count)
        ]
        observe_revocations(revocations)
        observe_receipt_signer(signer)
        watchdog = asyncio.create_task(watch(workers, connections, pool, stop, refresh_figures))
        keeper = asyncio.create_task(TrustKeeper(settings, workers).run(stop, reload_now))
        opened.callback(keeper.cancel)
        if settings.seal_key is not None and settings.seal_interval_s > 0:
            sealer = asyncio.create_task(Sealer(settings, pool).run(stop))
            opened.callback(sealer.cancel)
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
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)
    fatal = next((w.fatal for w in workers if w.fatal is not None), None)
    if fatal is not None:
        raise fatal
    return sum(w.processed for w in workers)
