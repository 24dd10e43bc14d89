"""Traffic of a benchmark run: the agencies' publishers, the fast consumers, the timings.

:class:`Publishers` submit as the agencies do, :class:`Observer` reads every
inbox and status queue and feeds a :class:`Tracker`, which times each
message from its publish to the later of its delivery and its receipt.
Shared by the phases of :mod:`exchange.benchmark.harness` and
:mod:`exchange.benchmark.fairness`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from exchange.benchmark.config import (
    BENCH_DOCUMENT_ID,
    BENCH_SENDER,
    PROGRESS_EVERY_S,
    PUBLISH_WINDOW,
    STALL_TIMEOUT_S,
)
from exchange.benchmark.processes import percentile
from exchange.benchmark.workload import Planned
from exchange.broker import headers as header


@dataclass
class Tracker:
    """Publish, delivery and receipt times of every message of a phase, by its key."""

    expected: int
    published: dict[tuple[str, str], float] = field(default_factory=dict)
    delivered: dict[tuple[str, str], float] = field(default_factory=dict)
    receipted: dict[tuple[str, str], float] = field(default_factory=dict)
    done: dict[tuple[str, str], float] = field(default_factory=dict)
    not_delivered: list[str] = field(default_factory=list)  # receipts of another outcome
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def _check(self, key: tuple[str, str], at: float) -> None:
        if key in self.delivered and key in self.receipted and key not in self.done:
            self.done[key] = at
            if len(self.done) >= self.expected:
                self.complete.set()

    def on_inbox(self, key: tuple[str, str], at: float) -> None:
        """A delivery reached the recipient's inbox."""
        self.delivered.setdefault(key, at)
        self._check(key, at)

    def on_receipt(self, key: tuple[str, str], at: float, outcome: str) -> None:
        """A receipt reached the sender's status queue."""
        if outcome != "delivered":
            self.not_delivered.append(f"{key[0]} to {key[1]}: {outcome}")
            return
        self.receipted.setdefault(key, at)
        self._check(key, at)

    def latencies_ms(self) -> list[float]:
        """Publish to done, per finished message, in milliseconds."""
        return [
            (at - self.published[key]) * 1000
            for key, at in self.done.items()
            if key in self.published
        ]


def latency_figures(tracker: Tracker, offered: float, wall: float) -> dict[str, Any]:
    """Percentiles of a run at ``offered`` docs/s that took ``wall`` seconds."""
    latencies = tracker.latencies_ms()
    return {
        "p50": round(percentile(latencies, 0.50), 1),
        "p95": round(percentile(latencies, 0.95), 1),
        "p99": round(percentile(latencies, 0.99), 1),
        "max": round(max(latencies), 1),
        "offered_docs_per_s": round(offered, 1),
        "achieved_docs_per_s": round(len(latencies) / wall, 1),
        "messages": len(latencies),
    }


class Observer:
    """Fast consumers of every inbox and status queue, feeding the current :class:`Tracker`."""

    def __init__(self, amqp_url: str, codes: Sequence[str]) -> None:
        """Consume the queues of ``codes`` as the vhost's operator (no acks)."""
        self.amqp_url = amqp_url
        self.codes = list(codes)
        self.tracker: Tracker | None = None
        self._connection: Any = None

    async def start(self) -> None:
        """Open the connection and start consuming."""
        from exchange.broker.connection import connect
        from exchange.broker.topology import INBOX_QUEUE_PREFIX, STATUS_QUEUE_PREFIX

        self._connection = await connect(self.amqp_url, name="lienthong-bench-observer")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=2000)
        for code in self.codes:
            inbox = await channel.get_queue(INBOX_QUEUE_PREFIX + code, ensure=True)
            await inbox.consume(self._on_inbox, no_ack=True)
            status = await channel.get_queue(STATUS_QUEUE_PREFIX + code, ensure=True)
            await status.consume(self._on_status, no_ack=True)

    async def close(self) -> None:
        """Stop consuming."""
        if self._connection is not None:
            await self._connection.close()

    async def queue_depth(self, name: str) -> int:
        """Messages waiting in the queue ``name`` now (a passive declare)."""
        channel = await self._connection.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
            return int(queue.declaration_result.message_count or 0)
        finally:
            await channel.close()

    @staticmethod
    def _key(message: Any) -> tuple[str, str]:
        return (
            header.text(message.headers, header.DOCUMENT_ID) or "",
            header.text(message.headers, header.RECIPIENT) or "",
        )

    async def _on_inbox(self, message: Any) -> None:
        if self.tracker is not None:
            self.tracker.on_inbox(self._key(message), time.perf_counter())

    async def _on_status(self, message: Any) -> None:
        if self.tracker is None or header.text(message.headers, header.KIND) != "receipt":
            return  # a forwarded status package, not a receipt
        try:
            outcome = str(json.loads(message.body).get("outcome"))
        except ValueError:
            return
        self.tracker.on_receipt(self._key(message), time.perf_counter(), outcome)


class Publishers:
    """One confirming publisher per sending agency, logged in as its own broker user."""

    def __init__(self, urls: dict[str, str], users: dict[str, str]) -> None:
        """Publishers for agencies ``code -> AMQP URL`` with ``code -> broker user``."""
        self.urls = urls
        self.users = users
        # Whether each sender names its lane, as the client library does;
        # without, every message shares one lane (first come, first served).
        self.lanes = True
        self._connections: list[Any] = []
        self._publishers: dict[str, Any] = {}

    async def start(self) -> None:
        """Connect every agency."""
        from exchange.broker.connection import ConfirmingPublisher, connect

        for code, url in self.urls.items():
            connection = await connect(url, name=f"lienthong-bench-{code}")
            self._connections.append(connection)
            self._publishers[code] = await ConfirmingPublisher.open(connection)

    async def close(self) -> None:
        """Disconnect."""
        for connection in self._connections:
            with contextlib.suppress(Exception):
                await connection.close()

    async def publish(self, message: Planned, tracker: Tracker) -> None:
        """Submit one message as its sender does, recording when it was published."""
        from exchange.broker.topology import SUBMIT_EXCHANGE

        tracker.published[message.key] = time.perf_counter()
        await self._publishers[message.sender].publish(
            SUBMIT_EXCHANGE,
            message.recipient,
            message.body,
            message_id=str(uuid.uuid4()),
            user_id=self.users[message.sender],
            headers={
                header.PUBLISHED_AT: datetime.now(UTC).isoformat(),
                BENCH_DOCUMENT_ID: message.document_id,
                BENCH_SENDER: message.sender,
                **({header.LANE: message.sender} if self.lanes else {}),
            },
        )


async def publish_messages(
    messages: Sequence[Planned],
    publishers: Publishers,
    tracker: Tracker,
    *,
    rate: float | None = None,
) -> None:
    """Publish ``messages`` as fast as the broker confirms them, or at ``rate`` per second.

    At most :data:`PUBLISH_WINDOW` await their confirm at once; returns once
    every one is confirmed, or raises on the first that fails.
    """
    window = asyncio.Semaphore(PUBLISH_WINDOW)
    failures: list[BaseException] = []
    pending: set[asyncio.Task[None]] = set()

    async def one(message: Planned) -> None:
        try:
            await publishers.publish(message, tracker)
        except BaseException as error:  # raised below, the run fails
            failures.append(error)
        finally:
            window.release()

    started = time.perf_counter()
    try:
        for index, message in enumerate(messages):
            if rate is not None:
                delay = started + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await window.acquire()
            if failures:
                break
            task = asyncio.create_task(one(message))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(set(pending))
    finally:
        for task in pending:
            task.cancel()
    if failures:
        raise RuntimeError(f"a publish failed: {failures[0]!r}")


async def watch_publishing(
    name: str, publishing: asyncio.Task[None], tracker: Tracker, progress: Callable[[str], None]
) -> None:
    """Wait for ``publishing`` with nothing consuming, reporting progress; fail if it stalls.

    A message is only published once an earlier one was confirmed, so
    publishes that stop growing mean confirms that stopped coming.
    """
    last, last_change = 0, time.monotonic()
    next_line = time.monotonic() + PROGRESS_EVERY_S
    while not publishing.done():
        await asyncio.wait({publishing}, timeout=0.25)
        if len(tracker.published) != last:
            last, last_change = len(tracker.published), time.monotonic()
        elif time.monotonic() - last_change > STALL_TIMEOUT_S:
            publishing.cancel()
            raise RuntimeError(f"{name}: publishing stalled at {last} of {tracker.expected}")
        if time.monotonic() >= next_line:
            next_line += PROGRESS_EVERY_S
            progress(f"{name}: {last} of {tracker.expected} published")
    await publishing


async def wait_done(
    name: str,
    tracker: Tracker,
    progress: Callable[[str], None],
    started: float,
    publishing: asyncio.Task[None] | None = None,
) -> float:
    """Wait until every message of ``tracker`` is done; the seconds from ``started`` to the last.

    Fails when ``publishing`` fails, when a message is not delivered, or when
    no message is done for :data:`STALL_TIMEOUT_S`.
    """
    last_done, last_change = 0, time.monotonic()
    next_line = time.monotonic() + PROGRESS_EVERY_S
    while not tracker.complete.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tracker.complete.wait(), 0.25)
        if publishing is not None and publishing.done() and publishing.exception() is not None:
            raise RuntimeError(f"{name}: {publishing.exception()}")
        if tracker.not_delivered:
            raise RuntimeError(f"{name}: not delivered: {tracker.not_delivered[:3]}")
        if len(tracker.done) != last_done:
            last_done, last_change = len(tracker.done), time.monotonic()
        elif time.monotonic() - last_change > STALL_TIMEOUT_S:
            if publishing is not None:
                publishing.cancel()
            raise RuntimeError(
                f"{name}: stalled at {last_done} of {tracker.expected} messages "
                f"({len(tracker.delivered)} delivered, {len(tracker.receipted)} receipts)"
            )
        if time.monotonic() >= next_line:
            next_line += PROGRESS_EVERY_S
            elapsed = time.perf_counter() - started
            progress(
                f"{name}: {len(tracker.published)} published, {len(tracker.done)} of "
                f"{tracker.expected} done ({len(tracker.done) / elapsed:.0f} docs/s so far)"
            )
    if publishing is not None:
        await publishing
    return max(tracker.done.values()) - started


async def run_phase(
    name: str,
    messages: list[Planned],
    publishers: Publishers,
    observer: Observer,
    progress: Callable[[str], None],
    *,
    rate: float | None = None,
    tracker: Tracker | None = None,
) -> tuple[Tracker, float]:
    """Publish ``messages`` (as fast as confirmed, or at ``rate`` per second) and wait for all.

    Returns the tracker (``tracker`` if given, e.g. to a
    :class:`MemorySampler`) and the seconds from the first publish to the
    last message done.
    """
    tracker = tracker or Tracker(len(messages))
    observer.tracker = tracker
    started = time.perf_counter()
    publishing = asyncio.create_task(publish_messages(messages, publishers, tracker, rate=rate))
    try:
        wall = await wait_done(name, tracker, progress, started, publishing)
    finally:
        observer.tracker = None
    return tracker, wall
