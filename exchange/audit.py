"""The audit: does the record agree with the broker, and is the history untouched?

Two checks an operator runs (``lienthong audit``), and the crash tests end with:

* :func:`audit` reconciles the database with the broker.
  Every received message must be settled (delivered, rejected or parked, and
  its effects published) or still be on its way in a queue: the work queue,
  a retry queue, the parked queue. The broker cannot say *which* messages a
  queue holds without taking them out, so queues are counted: the audit
  finds a discrepancy when more messages are unsettled in the record than
  the queues hold, when the parked queue and the parked rows disagree, or
  when deliveries and their messages tell different stories.
* :func:`verify_chains` recomputes the hash chains of ``messages``,
  ``documents`` and ``events`` (migration 0002) and names
  the first row changed or deleted behind the exchange's back.

Counts are exact when no worker is running: the broker reports messages
ready in a queue exactly (a passive declare), but messages a worker holds
unacknowledged only through the management API's statistics, refreshed
every few seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from exchange.broker.topology import BULK_QUEUE, PARKED_QUEUE, RETRY_TIERS, WORK_QUEUES

# The CLI builds its parser (add_commands) on every run: the broker, the
# database and the settings are imported only when the audit really runs.
if TYPE_CHECKING:
    from exchange.seals import Seal, SealProblem
    from exchange.settings import Settings
    from exchange.store.partitions import DetachedPartition, Run
    from exchange.store.records import (
        ChainHead,
        ChainLink,
        DeliveryMismatch,
        MessageTally,
        UnsettledMessage,
    )

# The queues a received message waits in until it is decided: the work
# queue, the lanes, the bulk queue and one queue per retry delay.
PENDING_QUEUES: tuple[str, ...] = (
    *WORK_QUEUES,
    BULK_QUEUE,
    *(tier.queue for tier in RETRY_TIERS),
)
AUDITED_QUEUES: tuple[str, ...] = (*PENDING_QUEUES, PARKED_QUEUE)
# Rows named per discrepancy; the counts stay exact beyond it.
LISTING_LIMIT = 50


# -- reconciliation (point 7) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueCount:
    """What one queue holds: ready exactly, unacknowledged as far as known."""

    name: str
    exists: bool
    ready: int = 0
    consumers: int = 0
    # Held by consumers, not acknowledged yet: 0 when nobody consumes; from the
    # management API's statistics otherwise (None when it did not answer).
    unacked: int | None = 0

    @property
    def messages(self) -> int:
        """Every message the queue holds, as far as the broker tells."""
        return self.ready + (self.unacked or 0)


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One thing the record and the broker disagree on, with the rows concerned."""

    code: str
    summary: str
    details: tuple[str, ...] = ()
    message_pks: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The result of :func:`audit`: the counts on both sides and every discrepancy."""

    tally: MessageTally
    queues: tuple[QueueCount, ...]
    discrepancies: tuple[Discrepancy, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the record and the broker agree."""
        return not self.discrepancies

    def lines(self) -> Iterator[str]:
        """The report for a terminal."""
        tally = self.tally
        outcomes = ", ".join(f"{name} {count}" for name, count in sorted(tally.outcomes.items()))
        yield (
            f"{tally.received} messages recorded ({outcomes or 'none decided'}); "
            f"{tally.undecided} without an outcome, {tally.unpublished} decided but unpublished"
        )
        for queue in self.queues:
            if not queue.exists:
                yield f"  {queue.name}: missing"
                continue
            unacked = "?" if queue.unacked is None else str(queue.unacked)
            held = f", {unacked} held by {queue.consumers} consumer(s)" if queue.consumers else ""
            yield f"  {queue.name}: {queue.ready} waiting{held}"
        for note in self.notes:
            yield f"note: {note}"
        if self.ok:
            yield "OK: every message is settled or waiting in a queue"
            return
        for discrepancy in self.discrepancies:
            yield f"DISCREPANCY {discrepancy.code}: {discrepancy.summary}"
            for detail in discrepancy.details:
                yield f"  {detail}"

    def to_json(self) -> dict[str, Any]:
        """The report for a program."""
        return {
            "ok": self.ok,
            "messages": {
                "received": self.tally.received,
                "outcomes": dict(self.tally.outcomes),
                "undecided": self.tally.undecided,
                "unpublished": self.tally.unpublished,
            },
            "queues": [{**asdict(queue), "messages": queue.messages} for queue in self.queues],
            "discrepancies": [
                {**asdict(d), "details": list(d.details), "message_pks": list(d.message_pks)}
                for d in self.discrepancies
            ],
            "notes": list(self.notes),
        }


def _describe_unsettled(message: UnsettledMessage) -> str:
    when = message.received_at.isoformat(timespec="seconds")
    who = f"from broker user {message.broker_user}" if message.broker_user else "from nobody known"
    state = (
        "no outcome"
        if message.outcome is None
        else f"{message.outcome.value}, effects not published"
    )
    last = f", last failure {message.reason_code}" if message.reason_code else ""
    return (
        f"message {message.pk} received {when} {who} for {message.routing_key}: "
        f"{state}{last} (attempts {message.attempts})"
    )


def _describe_delivery(mismatch: DeliveryMismatch) -> str:
    delivery = (
        f"delivery {mismatch.delivery_pk}"
        if mismatch.delivery_pk is not None
        else "no delivery row"
    )
    outcome = mismatch.outcome.value if mismatch.outcome else "no outcome"
    published = "published" if mismatch.published else "not published"
    marked = (
        f"marked delivered {mismatch.delivered_at.isoformat(timespec='seconds')}"
        if mismatch.delivered_at
        else "not marked delivered"
    )
    return (
        f"message {mismatch.message_pk} to {mismatch.recipient} ({outcome}, {published}): "
        f"{delivery} {marked}"
    )


def reconcile(
    tally: MessageTally,
    queues: Iterable[QueueCount],
    unsettled: Iterable[UnsettledMessage] = (),
    marked_not_delivered: Iterable[DeliveryMismatch] = (),
    delivered_not_marked: Iterable[DeliveryMismatch] = (),
) -> list[Discrepancy]:
    """Every discrepancy between the record's counts and rows and the queues' counts.

    Pure: the facts in, the discrepancies out. ``unsettled`` and the
    mismatches are the (possibly truncated) listings that name the rows;
    the counts decide.
    """
    by_name = {queue.name: queue for queue in queues}
    found: list[Discrepancy] = []
    missing = [name for name in AUDITED_QUEUES if name in by_name and not by_name[name].exists]
    if missing:
        found.append(
            Discrepancy(
                "QUEUE_MISSING",
                f"{', '.join(missing)} do(es) not exist on the broker; "
                "`lienthong init` declares the core topology",
            )
        )

    parked = by_name.get(PARKED_QUEUE)
    parked_depth = parked.messages if parked is not None else 0
    parked_rows = tally.outcomes.get("parked", 0)
    # The parked queue first holds the parked messages whose receipt went
    # out; whatever it holds beyond them may be an unsettled message parked
    # before its row was written (the database was down).
    spare_parked = max(parked_depth - tally.parked_published, 0)
    pending = sum(by_name[name].messages for name in PENDING_QUEUES if name in by_name)
    room = pending + spare_parked
    if tally.unsettled > room:
        listed = list(unsettled)
        undecided = [m for m in listed if m.outcome is None]
        unpublished = [m for m in listed if m.outcome is not None]
        lost = tally.unsettled - room
        where = (
            f"the work and retry queues hold {pending} message(s)"
            + (f" and the parked queue {spare_parked} more" if spare_parked else "")
            if room
            else "no queue holds any message"
        )
        if tally.undecided:
            found.append(
                Discrepancy(
                    "NO_OUTCOME",
                    f"{tally.undecided} message(s) recorded without an outcome, and {where}: "
                    f"at least {lost} unsettled message(s) are in no queue and will never "
                    "be decided",
                    tuple(_describe_unsettled(m) for m in undecided),
                    tuple(m.pk for m in undecided),
                )
            )
        if tally.unpublished:
            found.append(
                Discrepancy(
                    "UNPUBLISHED",
                    f"{tally.unpublished} message(s) decided but their delivery or receipt "
                    f"was never confirmed by the broker, and {where}: at least {lost} "
                    "unsettled message(s) are in no queue; `lienthong replay` publishes "
                    "what they owe",
                    tuple(_describe_unsettled(m) for m in unpublished),
                    tuple(m.pk for m in unpublished),
                )
            )

    if parked is not None and parked.exists and parked_rows != parked_depth:
        if parked_depth > parked_rows:
            why = (
                f"{parked_depth - parked_rows} parked message(s) have no parked row "
                "(parked while the database was down, or dead-lettered by the broker "
                "as poison); `lienthong replay --from-queue` takes them"
            )
        else:
            why = (
                f"{parked_rows - parked_depth} parked row(s) have no message in the parked "
                "queue (taken off it by hand?); `lienthong replay` replays them from the record"
            )
        found.append(
            Discrepancy(
                "PARKED_MISMATCH",
                f"{parked_rows} message(s) recorded as parked, {parked_depth} in "
                f"{PARKED_QUEUE}: {why}",
            )
        )

    marked = list(marked_not_delivered)
    if marked:
        found.append(
            Discrepancy(
                "DELIVERY_WITHOUT_MESSAGE",
                f"{len(marked)}{'+' if len(marked) >= LISTING_LIMIT else ''} "
                "delivery(ies) marked delivered whose message is not delivered and published",
                tuple(_describe_delivery(m) for m in marked),
                tuple(m.message_pk for m in marked),
            )
        )
    unmarked = list(delivered_not_marked)
    if unmarked:
        found.append(
            Discrepancy(
                "DELIVERED_NOT_MARKED",
                f"{len(unmarked)}{'+' if len(unmarked) >= LISTING_LIMIT else ''} "
                "document message(s) delivered and published whose delivery is not "
                "marked delivered",
                tuple(_describe_delivery(m) for m in unmarked),
                tuple(m.message_pk for m in unmarked),
            )
        )
    return found


def vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL connects to (``/`` when the URL names none)."""
    path = urllib.parse.urlsplit(amqp_url).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


async def count_queues(settings: Settings) -> tuple[list[QueueCount], list[str]]:
    """Count the audited queues; returns the counts and notes on their precision.

    Ready messages come from a passive declare (exact, now). Only when a
    queue has consumers are its unacknowledged messages asked of the
    management API, whose statistics lag a few seconds.
    """
    from exchange.broker.connection import connect, queue_counts

    counts: list[QueueCount] = []
    notes: list[str] = []
    connection = await connect(settings.amqp_url, name="lienthong-audit")
    try:
        for name in AUDITED_QUEUES:
            found = await queue_counts(connection, name)
            if found is None:
                counts.append(QueueCount(name, exists=False))
            else:
                ready, consumers = found
                counts.append(QueueCount(name, exists=True, ready=ready, consumers=consumers))
    finally:
        await connection.close()
    if any(queue.consumers for queue in counts):
        counts = await _add_unacked(settings, counts, notes)
    return counts, notes


async def _add_unacked(
    settings: Settings, counts: list[QueueCount], notes: list[str]
) -> list[QueueCount]:
    from exchange.broker.admin import BrokerAdmin, BrokerAdminError

    try:
        stats = {
            queue.name: queue
            for queue in await BrokerAdmin.from_settings(settings).list_queues(
                vhost_of(settings.amqp_url)
            )
        }
    except (BrokerAdminError, ValueError) as error:
        notes.append(
            f"workers are consuming and the management API did not answer ({error}); "
            "messages they hold are not counted: run the audit with the workers stopped"
        )
        return [
            QueueCount(q.name, q.exists, q.ready, q.consumers, None if q.consumers else 0)
            for q in counts
        ]
    notes.append(
        "workers are consuming: the messages they hold are counted from the management "
        "API's statistics, a few seconds old; for exact counts run the audit with the "
        "workers stopped"
    )
    return [
        QueueCount(
            q.name,
            q.exists,
            q.ready,
            q.consumers,
            stats[q.name].messages_unacknowledged if q.consumers and q.name in stats else 0,
        )
        for q in counts
    ]


async def audit(settings: Settings) -> AuditReport:
    """Reconcile the database with the broker of ``settings``.

    The queues are counted first and the record read second: a message
    leaves its queue only once it is settled in the record, so a message
    moving between the two while the audit runs is counted on at least one
    side and raises no false alarm.
    """
    from exchange.store import queries
    from exchange.store.db import connect

    counts, notes = await count_queues(settings)
    conn = await connect(settings)
    try:
        # One snapshot, so the counts and the listings agree with each other.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            tally = await queries.tally_messages(conn)
            unsettled = (
                await queries.unsettled_messages(conn, LISTING_LIMIT) if tally.unsettled else []
            )
            marked = await queries.deliveries_marked_but_message_not(conn, LISTING_LIMIT)
            unmarked = await queries.delivered_documents_not_marked(conn, LISTING_LIMIT)
    finally:
        await conn.close()
    discrepancies = reconcile(tally, counts, unsettled, marked, unmarked)
    return AuditReport(tally, tuple(counts), tuple(discrepancies), tuple(notes))


# -- the hash chains (point 8) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """A place where a chain shows that its history was changed."""

    chain: str
    # ROW_CHANGED, ROWS_MISSING, TAIL_MISSING, HEAD_MISMATCH, PAST_HEAD, NO_HEAD, UNCHAINED
    code: str
    chain_seq: int
    row_id: int | None
    sentence: str


@dataclass(frozen=True, slots=True)
class ChainStatus:
    """One verified chain: how long it is, where it ends, what is wrong with it."""

    chain: str
    rows: int
    head_seq: int
    head_hash: str
    problems: tuple[ChainProblem, ...]

    @property
    def ok(self) -> bool:
        """Whether every row matches its hash and none is missing."""
        return not self.problems


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The result of :func:`verify_chains`, one status per chain."""

    chains: tuple[ChainStatus, ...]
    # The seals (exchange.seals): those that do not hold, and the chains
    # that no longer have a sealed head.
    seal_problems: tuple[SealProblem, ...] = ()
    seals: int = 0
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every chain verified, and against every seal."""
        return all(chain.ok for chain in self.chains) and not self.seal_problems

    @property
    def problems(self) -> tuple[ChainProblem, ...]:
        """Every problem, chain by chain, each chain's in chain order."""
        return tuple(problem for chain in self.chains for problem in chain.problems)

    def lines(self) -> Iterator[str]:
        """The report for a terminal: per chain its length and head, then each problem."""
        for chain in self.chains:
            verdict = "OK" if chain.ok else f"{len(chain.problems)} problem(s)"
            yield (
                f"{chain.chain}: {chain.rows} rows, head {chain.head_seq} "
                f"{chain.head_hash}: {verdict}"
            )
            for index, problem in enumerate(chain.problems):
                first = "first: " if index == 0 else ""
                yield f"  {first}{problem.sentence}"
        for note in self.notes:
            yield f"note: {note}"
        for seal_problem in self.seal_problems:
            yield f"SEAL {seal_problem.code}: {seal_problem.sentence}"
        if self.ok:
            yield (
                f"OK: every chain verifies, and against {self.seals} seal(s)"
                if self.seals
                else "OK: every chain verifies; keep the heads above to compare with later"
            )
        else:
            yield "TAMPERED: the history was changed behind the exchange's back"

    def to_json(self) -> dict[str, Any]:
        """The report for a program."""
        return {
            "ok": self.ok,
            "chains": [
                {
                    "chain": chain.chain,
                    "rows": chain.rows,
                    "head_seq": chain.head_seq,
                    "head_hash": chain.head_hash,
                    "ok": chain.ok,
                    "problems": [asdict(problem) for problem in chain.problems],
                }
                for chain in self.chains
            ],
            "seals": self.seals,
            "seal_problems": [asdict(problem) for problem in self.seal_problems],
            "notes": list(self.notes),
        }


def chain_hash(previous: str, content: bytes) -> str:
    """The hash of a row whose content is ``content`` after the row hashed ``previous``.

    Migration 0002's ``chain_link``: hex(sha256(previous as bytes || content)).
    """
    return hashlib.sha256(bytes.fromhex(previous) + content).hexdigest()


@dataclass
class ChainWalk:
    """Verifies one chain row by row (pure: the rows are fed in chain order).

    Each row's hash is recomputed from the stored hash of the row before it,
    so every changed row is named, not only the first: after a problem the
    walk carries on from what is stored.
    """

    chain: str
    genesis: str
    rows: int = 0
    last_seq: int = 0
    last_hash: str = ""
    last_id: int | None = None
    problems: list[ChainProblem] = field(default_factory=list)
    # Positions whose stored hash a seal pinned (exchange.seals), and the
    # hash stored there now.
    watched: frozenset[int] = frozenset()
    stored: dict[int, str] = field(default_factory=dict)
    # The runs of positions of detached partitions, by their first position
    # (exchange.store.partitions): a gap is crossed along them only.
    runs: Mapping[int, Run] = field(default_factory=dict)
    detached_rows: int = 0

    def __post_init__(self) -> None:
        self.last_hash = self.genesis

    def _cross_detached(self, until: int) -> None:
        """Cross the detached runs that start where the walk is, up to position ``until``.

        A run is crossed only if its entry hash is the hash the walk has
        reached: rows deleted next to a detached month still leave a gap.
        """
        while self.last_seq + 1 < until:
            run = self.runs.get(self.last_seq + 1)
            if run is None or run.entry != self.last_hash:
                return
            self.detached_rows += run.last - run.first + 1
            self.last_seq, self.last_hash, self.last_id = run.last, run.exit, None
            if run.last in self.watched:
                self.stored[run.last] = run.exit

    def feed(self, link: ChainLink) -> None:
        """Check the next row of the chain."""
        self.rows += 1
        if link.seq is None or link.hash is None:
            # Sorted last: every chained row came before it.
            self._problem(
                "UNCHAINED",
                self.last_seq + 1,
                link.row_id,
                f"{self.chain} row id {link.row_id} has no chain position: it was inserted "
                "with the triggers bypassed, behind the exchange's back",
            )
            return
        if self.runs and link.seq > self.last_seq + 1:
            self._cross_detached(link.seq)
        expected_seq = self.last_seq + 1
        if link.seq != expected_seq:
            self._problem(
                "ROWS_MISSING", expected_seq, None, self._gap(expected_seq, link.seq, link.row_id)
            )
        elif chain_hash(self.last_hash, link.content) != link.hash:
            before = (
                f" or the row before it (position {self.last_seq}, row id {self.last_id}) "
                "was rewritten with a new hash"
                if self.last_id is not None
                else ""
            )
            self._problem(
                "ROW_CHANGED",
                link.seq,
                link.row_id,
                f"{self.chain} row id {link.row_id} (chain position {link.seq}) does not match "
                f"its chain hash: it was changed after it was recorded,{before}",
            )
        self.last_seq, self.last_hash, self.last_id = link.seq, link.hash, link.row_id
        if link.seq in self.watched:
            self.stored[link.seq] = link.hash

    def _gap(self, expected_seq: int, seq: int, row_id: int) -> str:
        count = seq - expected_seq
        positions = (
            f"position {expected_seq} is"
            if count == 1
            else f"positions {expected_seq} to {seq - 1} are"
        )
        after = f"row id {self.last_id}" if self.last_id is not None else "the start"
        guess = (
            f" (row id {self.last_id + 1})"
            if count == 1 and self.last_id is not None and row_id == self.last_id + 2
            else ""
        )
        return (
            f"{self.chain} chain {positions} missing: {count} row(s) deleted{guess} "
            f"between {after} and row id {row_id}"
        )

    def finish(self, head: ChainHead | None) -> ChainStatus:
        """Compare the end of the chain with its head and return the verdict."""
        if head is None:
            self._problem(
                "NO_HEAD",
                self.last_seq,
                self.last_id,
                f"the chain {self.chain} has no row in chain_heads: it was deleted",
            )
            return self._status(self.last_seq, self.last_hash)
        if self.runs and head.seq > self.last_seq:
            self._cross_detached(head.seq + 1)
        if head.seq > self.last_seq:
            count = head.seq - self.last_seq
            after = f"after row id {self.last_id}" if self.last_id is not None else "all of them"
            self._problem(
                "TAIL_MISSING",
                self.last_seq + 1,
                None,
                f"{self.chain} ends at chain position {self.last_seq} but its head is at "
                f"{head.seq}: the last {count} row(s) were deleted ({after})",
            )
        elif head.seq < self.last_seq:
            self._problem(
                "PAST_HEAD",
                head.seq + 1,
                self.last_id,
                f"{self.chain} has rows past its head (position {head.seq}), up to position "
                f"{self.last_seq} (row id {self.last_id}): inserted with the triggers disabled",
            )
        elif head.hash != self.last_hash:
            self._problem(
                "HEAD_MISMATCH",
                head.seq,
                self.last_id,
                f"the head of {self.chain} does not match its last row (position {head.seq}, "
                f"row id {self.last_id}): the row's hash or the head was changed",
            )
        return self._status(head.seq, head.hash)

    def _status(self, head_seq: int, head_hash: str) -> ChainStatus:
        return ChainStatus(self.chain, self.rows, head_seq, head_hash, tuple(self.problems))

    def _problem(self, code: str, seq: int, row_id: int | None, sentence: str) -> None:
        self.problems.append(ChainProblem(self.chain, code, seq, row_id, sentence))


async def verify_chains(settings: Settings) -> ChainReport:
    """Recompute every hash chain of the database of ``settings``, and check it against the seals.

    Reads everything in one REPEATABLE READ snapshot, so rows the exchange
    inserts meanwhile are either wholly in (row and head) or wholly out.
    The seals count only if signed by a certificate of
    ``settings.seal_cert``, which the verifier reads from its own disk,
    never from the database.
    """
    from exchange.seals import (
        SealProblem,
        check_seals,
        load_seals,
        needed_positions,
        read_certificates,
    )
    from exchange.store import partitions, queries
    from exchange.store.db import connect

    conn = await connect(settings)
    statuses = []
    stored: dict[str, dict[int, str]] = {}
    lengths: dict[str, int] = {}
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            seals = await load_seals(conn)
            positions = needed_positions(seals)
            heads = await queries.chain_heads(conn)
            detached = await partitions.detached_partitions(conn)
            for chain in queries.CHAINED_TABLES:
                walk = ChainWalk(
                    chain,
                    await queries.chain_genesis(conn, chain),
                    watched=frozenset(positions.get(chain, ())),
                    runs={
                        run.first: run
                        for part in detached
                        if part.chain == chain
                        for run in part.runs
                    },
                )
                async for link in queries.chain_links(conn, chain):
                    walk.feed(link)
                statuses.append(walk.finish(heads.get(chain)))
                stored[chain] = walk.stored
                lengths[chain] = walk.last_seq
    finally:
        await conn.close()
    notes: list[str] = [_detached_note(part, seals) for part in detached]
    seal_problems: list[SealProblem] = []
    if settings.seal_cert is None:
        if seals:
            notes.append(
                f"{len(seals)} seal(s) not checked: set LIENTHONG_SEAL_CERT to the sealing "
                "certificate (kept off the database) to check the chains against them"
            )
    else:
        certificates = read_certificates(settings.seal_cert, "LIENTHONG_SEAL_CERT")
        tsa = (
            read_certificates(settings.tsa_cert, "LIENTHONG_TSA_CERT")
            if settings.tsa_cert is not None
            else []
        )
        seal_problems = check_seals(
            seals,
            stored,
            lengths,
            detached={
                chain: [
                    (run.first, run.last - 1)
                    for part in detached
                    if part.chain == chain
                    for run in part.runs
                ]
                for chain in queries.CHAINED_TABLES
            },
            certificates=certificates,
            tsa_certificates=tsa,
            interval_s=settings.seal_interval_s,
        )
        if not seals and any(lengths.values()):
            seal_problems.append(
                SealProblem(
                    "NO_SEAL",
                    None,
                    None,
                    "the chains have rows but no seal: run `lienthong audit --seal` (and a "
                    "worker with LIENTHONG_SEAL_KEY seals at the interval), or the seals "
                    "were deleted",
                )
            )
    return ChainReport(tuple(statuses), tuple(seal_problems), len(seals), tuple(notes))


# -- the command ------------------------------------------------------------------


def _detached_note(part: DetachedPartition, seals: Sequence[Seal]) -> str:
    """Where a detached partition ended in its chain, and the first seal past it."""
    covering = next(
        (
            seal.number
            for seal in seals
            if part.last_seq is not None
            and seal.heads().get(part.chain, (0, ""))[0] >= part.last_seq
        ),
        None,
    )
    covered = f"covered by seal {covering}" if covering is not None else "not covered by a seal yet"
    return (
        f"partition {part.partition} ({part.month:%Y-%m}, {part.rows} rows, exported to "
        f"{part.export_file} sha256 {part.export_sha256}) detached at chain position "
        f"{part.last_seq}, hash {part.last_hash}, {covered}"
    )


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    services_parent: argparse.ArgumentParser,
) -> None:
    """Add ``lienthong audit`` (with ``--verify-chain`` and ``--json``) to the CLI."""
    command = commands.add_parser(
        "audit",
        parents=[services_parent],
        help="reconcile the record with the broker, or verify the history's hash chains",
        description="Without options: check that every received message is settled or "
        "waiting in a queue (exact when no worker runs). With --verify-chain: recompute "
        "the hash chains of messages, documents, events and the operator log, and check "
        "them against the seals of their heads (database only). With --seal: sign the "
        "heads now. Exit status 0 when all is well, 1 when something is found.",
    )
    command.add_argument(
        "--verify-chain",
        action="store_true",
        help="recompute the hash chains and name the first row changed or deleted",
    )
    command.add_argument(
        "--seal",
        action="store_true",
        help="sign (and time-stamp, with LIENTHONG_TSA_URL) the chains' heads now; recorded "
        "in the operator log",
    )
    command.add_argument("--json", action="store_true", help="machine-readable output")
    command.set_defaults(handler=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    """Run the audit or the chain verification and print the report."""
    from exchange.commands import (
        EXIT_OK,
        EXIT_REFUSED,
        CommandError,
        print_json,
        run,
        settings_from_args,
    )

    settings = settings_from_args(args)

    async def seal_run() -> int:
        from exchange.operator_log import note
        from exchange.seals import SealError, seal_heads
        from exchange.store.db import connect

        conn = await connect(settings)
        try:
            seal = await seal_heads(conn, settings)
        except SealError as error:
            raise CommandError(str(error)) from None
        finally:
            await conn.close()
        note(f"seal {seal.number}")
        if args.json:
            print_json(seal.as_dict())
            return EXIT_OK
        stamped = (
            f", time-stamped {seal.tsa_time.isoformat(timespec='seconds')} by the authority"
            if seal.tsa_time is not None
            else ""
        )
        print(f"seal {seal.number} at {seal.sealed_at.isoformat(timespec='seconds')}{stamped}")
        for chain, (seq, head) in sorted(seal.heads().items()):
            print(f"  {chain}: position {seq} {head}")
        print(f"  digest {seal.digest} (signed with {seal.algorithm})")
        return EXIT_OK

    if args.seal:
        if args.verify_chain:
            raise CommandError("--seal and --verify-chain are separate runs; give one")
        return run(seal_run())

    async def audit_run() -> int:
        from exchange.seals import SealError

        try:
            report: AuditReport | ChainReport = (
                await verify_chains(settings) if args.verify_chain else await audit(settings)
            )
        except SealError as error:
            raise CommandError(str(error)) from None
        if args.json:
            print_json(report.to_json())
        else:
            for line in report.lines():
                print(line)
        sys.stdout.flush()
        return EXIT_OK if report.ok else EXIT_REFUSED

    return run(audit_run())


__all__ = [
    "AuditReport",
    "ChainProblem",
    "ChainReport",
    "ChainStatus",
    "ChainWalk",
    "Discrepancy",
    "QueueCount",
    "add_commands",
    "audit",
    "chain_hash",
    "count_queues",
    "reconcile",
    "verify_chains",
]
