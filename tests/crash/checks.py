"""After a run: nothing lost, nothing twice, and everything recovered by itself.

Checked where each party would look:

* the database (the system of record): one ``messages`` row per distinct
  message submitted (no more, no fewer), each decided as its content
  deserves (a genuine document or status delivered, a tampered document
  rejected for its signature), its effects confirmed (``published_at``);
  one document per genuine document, one delivery per (document,
  recipient), one receipt event and one status event per delivery;
* each recipient's application: handed each of its documents exactly once,
  byte for byte as signed;
* each agency's status queue, read through its client: one receipt per
  message it submitted and one forwarded status per (document it sent,
  recipient), each exactly once;
* the broker: the work queue empty with nothing unacknowledged and its
  consumers back, the retry and parked queues empty, the inboxes drained;
* ``lienthong audit``, when the command exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage

from exchange.broker import headers as header
from exchange.broker.admin import BrokerAdminError, QueueStats
from exchange.broker.connection import connect
from exchange.broker.topology import PARKED_QUEUE, RETRY_TIERS, WORK_QUEUES
from exchange.client import StatusItem
from exchange.failures import Failure
from exchange.reasons import Reason
from exchange.store.queries import dedup_key
from tests.crash.load import Submission, Traffic, Workload, build_workload, register_agencies
from tests.crash.supervisor import Supervisor, worker_command
from tests.exchange_fixtures import ExchangeUnderTest

# A tampered document fails its signature check.
TAMPERED_REASON = Reason.SIGNATURE_INVALID
# The management API refreshes queue statistics every 5 s by default.
BROKER_SETTLE_S = 30.0
POLL_S = 0.2
# How long a status queue may stay silent before its reader gives up on an
# item it still expects. Every effect is already in its queue when the run
# is settled, but a loaded machine can pause deliveries for longer than a
# moment, which a short idle timeout would take for the end of the queue.
STATUS_IDLE_S = 5.0
# Once every expected item is in, the reader goes on until the queue is
# quiet this long: repeats (at-least-once publishing, the same message id)
# are dropped by the client, anything else is unexpected.
STATUS_TAIL_IDLE_S = 1.0


async def poll(
    condition: Callable[[], Awaitable[tuple[bool, str]]], *, timeout: float, what: str
) -> None:
    """Poll ``condition`` until it holds; fail with what it last saw at the deadline.

    A condition that raises (the database or the broker is down for the
    test's own reasons) has not held yet.
    """
    deadline = time.monotonic() + timeout
    seen = "nothing yet"
    while True:
        try:
            holds, seen = await condition()
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            # A database URL of several hosts, none of them the writable primary yet.
            asyncpg.TargetServerAttributeNotMatched,
            BrokerAdminError,
        ) as error:
            holds, seen = False, f"{seen} (last look failed: {error!r})"
        if holds:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: gave up after {timeout:.0f} s: {seen}")
        await asyncio.sleep(POLL_S)


async def _fetch(exchange: ExchangeUnderTest, query: str) -> list[asyncpg.Record]:
    """Rows of one query; short timeouts, so a stopped database fails the look fast."""
    conn = await asyncpg.connect(exchange.settings.database_url, timeout=5)
    try:
        return await conn.fetch(query, timeout=10)
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


async def settled_at_least(
    exchange: ExchangeUnderTest, count: int, *, timeout: float = 180.0
) -> None:
    """Wait until at least ``count`` messages are decided and their effects confirmed."""

    async def enough() -> tuple[bool, str]:
        done = (
            await _fetch(
                exchange, "SELECT count(*) FROM message_state WHERE published_at IS NOT NULL"
            )
        )[0][0]
        return done >= count, f"{done} of {count} messages settled"

    await poll(enough, timeout=timeout, what="the run made no progress")


async def wait_run_complete(
    exchange: ExchangeUnderTest, workload: Workload, traffic: Traffic, *, timeout: float
) -> None:
    """Wait until every document and every status it triggers is decided and published.

    The statuses are submitted by the recipients' applications as documents
    reach them, so the run is complete when the database holds every
    document message and one status message per delivery, all settled, and
    the applications reported a status for every delivery.
    """
    documents = len(workload.document_submissions())

    async def complete() -> tuple[bool, str]:
        (row,) = await _fetch(
            exchange,
            "SELECT count(*) AS received,"
            " count(*) FILTER (WHERE s.outcome IS NOT NULL AND s.published_at IS NOT NULL)"
            " AS settled,"
            " (SELECT count(*) FROM deliveries) AS deliveries"
            " FROM messages m LEFT JOIN message_state s ON s.message_pk = m.id",
        )
        reported = len(traffic.reported)
        expected = documents + reported
        done = row["settled"] == row["received"] == expected and reported == row["deliveries"]
        return done, (
            f"{row['settled']} of {expected} messages settled ({row['received']} received), "
            f"{reported} statuses reported by the applications for {row['deliveries']} deliveries"
        )

    await poll(complete, timeout=timeout, what="the run did not complete")


# A genuine message may end parked only as poison: it was in flight on
# workers that died too often (see the report on innocent neighbours).
POISON = Failure.POISON.parked_code


@dataclass
class Decided:
    """What the database decided for each submitted message, by dedup key."""

    outcomes: dict[str, tuple[str, str | None]]  # dedup key -> (outcome, reason code)
    recorded_as: dict[str, tuple[str, str]]  # dedup key -> (kind, DocumentId or "?")
    counts: dict[str, int]

    def outcome(self, submission: Submission) -> str:
        """``delivered``, ``rejected`` or ``parked``."""
        return self.outcomes[submission.dedup_key][0]

    def delivered(self, submission: Submission) -> bool:
        """Whether the message was delivered."""
        return self.outcome(submission) == "delivered"

    def parked(self) -> set[str]:
        """Dedup keys of the parked messages."""
        return {key for key, (outcome, _) in self.outcomes.items() if outcome == "parked"}


def submitted(workload: Workload, traffic: Traffic) -> list[Submission]:
    """Every distinct message of the run: the documents and the statuses reported."""
    statuses = [
        s for s in workload.status_submissions() if (s.document_id, s.publisher) in traffic.reported
    ]
    return workload.document_submissions() + statuses


async def check_database(
    exchange: ExchangeUnderTest, workload: Workload, traffic: Traffic
) -> Decided:
    """Every distinct message once, decided as deserved, its effects recorded once."""
    submissions = submitted(workload, traffic)
    expected = {s.dedup_key: s for s in submissions}
    assert len(expected) == len(submissions), "the workload repeats a message"
    rows = await exchange.fetch(
        "SELECT m.dedup_key, s.kind, s.outcome, s.reason_code, s.document_id, s.published_at"
        " FROM messages m LEFT JOIN message_state s ON s.message_pk = m.id"
    )
    recorded = Counter(row["dedup_key"] for row in rows)
    assert not [k for k, n in recorded.items() if n > 1], "a message is recorded twice"
    missing = set(expected) - set(recorded)
    extra = set(recorded) - set(expected)
    assert not missing, f"{len(missing)} submitted messages have no record"
    assert not extra, f"{len(extra)} records match no submitted message"
    wrong = []
    outcomes: dict[str, tuple[str, str | None]] = {}
    recorded_as: dict[str, tuple[str, str]] = {}
    for row in rows:
        submission = expected[row["dedup_key"]]
        got = (row["kind"], row["outcome"], row["reason_code"])
        # A package refused before it was read (its signature is checked
        # first) is of unknown kind.
        allowed = (
            [
                (submission.kind, "rejected", TAMPERED_REASON.code),
                ("unknown", "rejected", TAMPERED_REASON.code),
            ]
            if submission.tampered
            else [(submission.kind, "delivered", None), ("unknown", "parked", POISON)]
        )
        if got not in allowed or row["published_at"] is None:
            wrong.append(
                f"{submission.kind} {submission.document_id} to {submission.routing_key}: "
                f"{got}, published_at {row['published_at']}; expected one of {allowed}, published"
            )
        outcomes[row["dedup_key"]] = (row["outcome"], row["reason_code"])
        recorded_as[row["dedup_key"]] = (row["kind"], row["document_id"] or "?")
    assert not wrong, f"{len(wrong)} messages decided wrongly or unpublished: {wrong[:10]}"
    decided = Decided(outcomes, recorded_as, {})

    delivered_documents = [
        s for s in workload.document_submissions() if not s.tampered and decided.delivered(s)
    ]
    documents = await exchange.fetch("SELECT sender, document_id FROM documents")
    assert sorted((r["sender"], r["document_id"]) for r in documents) == sorted(
        {(s.publisher, s.document_id) for s in delivered_documents}
    ), "the documents table is not one row per delivered document"

    status_delivered = {
        (s.document_id, s.publisher): decided.delivered(s)
        for s in submissions
        if s.kind == "status"
    }
    deliveries = await exchange.fetch(
        "SELECT d.document_id, v.recipient, v.state,"
        " count(e.id) FILTER (WHERE e.kind = 'receipt') AS receipts,"
        " count(e.id) FILTER (WHERE e.kind = 'status') AS statuses,"
        " count(e.id) FILTER (WHERE e.kind = 'status' AND e.code = '01') AS arrived"
        " FROM deliveries v JOIN documents d ON d.id = v.document_pk"
        " LEFT JOIN events e ON e.delivery_pk = v.id"
        " GROUP BY d.document_id, v.recipient, v.state"
    )
    assert sorted((r["document_id"], r["recipient"]) for r in deliveries) == sorted(
        (s.document_id, s.routing_key) for s in delivered_documents
    ), "the deliveries table is not one row per delivered (document, recipient)"
    uneven = []
    for r in deliveries:
        reported = status_delivered.get((r["document_id"], r["recipient"]), False)
        want = ("01", 1, 1, 1) if reported else (None, 1, 0, 0)
        if (r["state"], r["receipts"], r["statuses"], r["arrived"]) != want:
            uneven.append(dict(r))
    assert not uneven, f"deliveries without one receipt and one status 01 each: {uneven[:10]}"
    events = await exchange.fetchval("SELECT count(*) FROM events")
    assert events == len(deliveries) + sum(status_delivered.values()), "events of no delivery"
    decided.counts = {
        "messages": len(rows),
        "documents": len(documents),
        "deliveries": len(deliveries),
        "events": events,
        "rejected": sum(1 for o, _ in outcomes.values() if o == "rejected"),
        "parked": len(decided.parked()),
    }
    return decided


def check_applications(traffic: Traffic, workload: Workload, decided: Decided) -> None:
    """Each recipient's application was handed each delivered document once, unaltered."""
    delivered = [s for s in workload.document_submissions() if decided.delivered(s)]
    for code in workload.agencies:
        seen = traffic.seen.get(code, Counter())
        expected = Counter(s.document_id for s in delivered if s.routing_key == code)
        twice = sorted(d for d, n in seen.items() if n > 1)
        assert not twice, f"the application of {code} was handed documents twice: {twice[:10]}"
        assert seen == expected, (
            f"the application of {code} saw {len(seen)} documents, expected {len(expected)}; "
            f"missing {sorted(set(expected) - set(seen))[:10]}, "
            f"unexpected {sorted(set(seen) - set(expected))[:10]}"
        )
    assert not traffic.altered, f"documents delivered with other bytes: {traffic.altered[:10]}"
    assert traffic.reported == {(s.document_id, s.routing_key) for s in delivered}


def _status_key(item: StatusItem) -> tuple[str, ...]:
    """What a status queue item is, as check_status_queues counts it."""
    if item.is_receipt:
        r = item.receipt
        return (
            "receipt",
            r.kind.value,
            r.document_id or "?",
            r.recipient,
            r.outcome.value,
            r.reason_code or "",
        )
    status = item.status
    return ("status", status.response_for.document_id or "?", str(status.sender.organ_id))


async def check_status_queues(
    exchange: ExchangeUnderTest, workload: Workload, traffic: Traffic, decided: Decided
) -> int:
    """Each agency's client hands it one receipt per message it sent, one status per report.

    Returns the number of items read.
    """
    by_id = workload.by_id
    expected: dict[str, Counter[tuple[str, ...]]] = {code: Counter() for code in workload.agencies}
    for s in submitted(workload, traffic):
        outcome, reason = decided.outcomes[s.dedup_key]
        # As recorded (checked against the plan by check_database): a message
        # refused or parked before it was read has no kind, maybe no DocumentId.
        kind, document_id = decided.recorded_as[s.dedup_key]
        key = ("receipt", kind, document_id, s.routing_key, outcome, reason or "")
        expected[s.publisher][key] += 1
        if s.kind == "status" and outcome == "delivered":
            expected[by_id[s.document_id].sender][("status", s.document_id, s.publisher)] += 1
    read = 0
    for code, agency in workload.agencies.items():
        seen: Counter[tuple[str, ...]] = Counter()
        wanted = sum(expected[code].values())
        async with agency.client() as client:
            # Until every expected item is in (patiently), then the rest.
            for idle in (STATUS_IDLE_S, STATUS_TAIL_IDLE_S):
                async with contextlib.aclosing(client.statuses(idle_timeout=idle)) as items:
                    async for item in items:
                        seen[_status_key(item)] += 1
                        await item.ack()
                        read += 1
                        if idle == STATUS_IDLE_S and sum(seen.values()) >= wanted:
                            break
        twice = [key for key, n in seen.items() if n > 1 and expected[code][key] < n]
        assert not twice, f"{code}'s client handed it items twice: {twice[:10]}"
        assert seen == expected[code], (
            f"{code}'s status queue: missing {list((expected[code] - seen).items())[:5]}, "
            f"unexpected {list((seen - expected[code]).items())[:5]}"
        )
    return read


async def drain(amqp_url: str, queue: str) -> list[AbstractIncomingMessage]:
    """Take every message out of ``queue`` (acknowledged), until a second brings none."""
    taken: list[AbstractIncomingMessage] = []
    connection = await connect(amqp_url, name="lienthong-test")
    try:
        channel = await connection.channel()
        source = await channel.get_queue(queue, ensure=False)
        async with source.iterator(timeout=STATUS_IDLE_S) as messages:
            with contextlib.suppress(TimeoutError):
                async for message in messages:
                    await message.ack()
                    taken.append(message)
    finally:
        await connection.close()
    return taken


async def check_parked_queue(exchange: ExchangeUnderTest, decided: Decided) -> None:
    """``lienthong.parked`` holds exactly the messages parked in the database (drained)."""
    held = set()
    for message in await drain(exchange.settings.amqp_url, PARKED_QUEUE):
        headers = message.headers or {}
        recipient = headers.get(header.RECIPIENT) or message.routing_key or ""
        user = headers.get(header.ORIGINAL_USER) or message.user_id
        recipient = recipient.decode() if isinstance(recipient, bytes) else str(recipient)
        user = user.decode() if isinstance(user, bytes) else user
        held.add(dedup_key(recipient, message.body, user))
    assert held == decided.parked(), (
        f"parked queue holds {len(held)} messages, the database {len(decided.parked())} parked; "
        f"{len(held - decided.parked())} only in the queue, "
        f"{len(decided.parked() - held)} only in the database"
    )


async def queue_stats(exchange: ExchangeUnderTest) -> Mapping[str, QueueStats]:
    """Every queue of the exchange's vhost by name (statistics lag a few seconds)."""
    return {q.name: q for q in await exchange.admin.list_queues(exchange.vhost)}


async def check_broker(exchange: ExchangeUnderTest, *, consumers: int) -> None:
    """The queues are as after a clean run: nothing waiting, nothing held, consumers back.

    Polled, since the management API's counts lag behind by seconds.
    """
    retry_queues = [tier.queue for tier in RETRY_TIERS]

    async def clean() -> tuple[bool, str]:
        stats = await queue_stats(exchange)
        problems = []
        for name in WORK_QUEUES:
            work = stats[name]
            if (work.messages_ready, work.messages_unacknowledged) != (0, 0):
                problems.append(
                    f"{name}: {work.messages_ready} ready, "
                    f"{work.messages_unacknowledged} unacknowledged"
                )
            if work.consumers != consumers:
                problems.append(f"{name}: {work.consumers} consumers, expected {consumers}")
        for name, queue in stats.items():
            if name not in (*WORK_QUEUES, PARKED_QUEUE) and queue.messages:
                problems.append(f"{name}: {queue.messages} messages")
        for name in (*retry_queues, PARKED_QUEUE):
            if name not in stats:
                problems.append(f"{name} is missing")
        return not problems, "; ".join(problems)

    await poll(clean, timeout=BROKER_SETTLE_S, what="the broker is not back to clean")


async def run_audit(env: Mapping[str, str]) -> str | None:
    """Run ``lienthong audit`` if the command exists; fail on a non-zero exit.

    Returns its output, or ``None`` when there is no such command yet.
    """
    command = worker_command()[:-1]
    probe = await asyncio.create_subprocess_exec(
        *command,
        "audit",
        "--help",
        env=dict(env),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    if await probe.wait() != 0:
        return None
    audit = await asyncio.create_subprocess_exec(
        *command,
        "audit",
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(audit.communicate(), timeout=120)
    text = output.decode("utf-8", "replace")
    assert audit.returncode == 0, f"lienthong audit found discrepancies:\n{text}"
    return text


async def signed_workload(exchange: ExchangeUnderTest, documents: int) -> Workload:
    """Register the six agencies and sign their documents and statuses (off the event loop)."""
    agencies = await register_agencies(exchange)
    return await asyncio.to_thread(build_workload, agencies, documents)


async def inboxes_drained(exchange: ExchangeUnderTest, workload: Workload) -> None:
    """Wait until the applications took everything from their inboxes, repeats included."""

    async def drained() -> tuple[bool, str]:
        depths = {
            code: await exchange.queue_depth(f"lienthong.inbox.{code}")
            for code in workload.agencies
        }
        return not any(depths.values()), f"inbox depths {depths}"

    await poll(drained, timeout=30, what="the inboxes were not drained")


async def reconcile(
    exchange: ExchangeUnderTest,
    workload: Workload,
    traffic: Traffic,
    workers: Supervisor,
    figures: Figures,
    *,
    consumers: int,
) -> Decided:
    """Every check of :mod:`tests.crash.checks` that needs the workers still running."""
    assert not workers.unexpected, "workers died of something else: " + "; ".join(
        run.describe() for run in workers.unexpected
    )
    decided = await check_database(exchange, workload, traffic)
    check_applications(traffic, workload, decided)
    await check_status_queues(exchange, workload, traffic, decided)
    await check_broker(exchange, consumers=consumers)
    figures.messages = decided.counts["messages"]
    figures.parked = decided.counts["parked"]
    figures.publishes = traffic.publishes
    figures.publish_retries = traffic.publish_retries
    figures.kills = workers.kills
    figures.workers_started = len(workers.runs)
    figures.processed_more_than_once = sum(1 for n in workers.finished_messages().values() if n > 1)
    figures.retries = workers.retries()
    return decided


@dataclass
class Figures:
    """What a run did, for the report: sizes, faults, time."""

    name: str
    messages: int = 0
    publishes: int = 0
    publish_retries: int = 0
    kills: Counter[str] | None = None
    workers_started: int = 0
    processed_more_than_once: int = 0
    parked: int = 0
    retries: Counter[str] | None = None
    seconds: float = 0.0
    audit: str = "lienthong audit not available"
    notes: str = ""

    def line(self) -> str:
        """One line, printed at the end of the test (``pytest -s`` shows it)."""
        kills = dict(self.kills or {})
        return (
            f"[{self.name}] {self.messages} messages ({self.publishes} publishes, "
            f"{self.publish_retries} retried), {sum(kills.values())} kills {kills}, "
            f"{self.workers_started} workers started, "
            f"{self.processed_more_than_once} messages processed more than once, "
            f"{self.parked} innocent messages parked as poison, "
            f"retries {dict(self.retries or {})}, {self.seconds:.1f} s, {self.audit}"
            + (f"; {self.notes}" if self.notes else "")
        )
