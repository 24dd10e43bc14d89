"""The replay tool (``lienthong replay``): look at refused messages and run them again.

A message the exchange rejected (a CA missing from the trust store, an
agency registered too late) or parked (the database was down through every
retry, a worker died on it) is kept: its exact bytes in the database, and a
parked one also in the queue ``lienthong.parked``. Once the cause is fixed,
an operator replays it through the normal pipeline:

* ``list`` and ``show`` read the record (``--queue`` peeks at the parked queue);
* ``run`` publishes the stored bytes to ``lienthong.work`` again, as the
  exchange's own broker user, with the headers a worker believes only from
  that user (:data:`~exchange.worker.header.REPLAY`, the original routing
  key and broker user), so the worker decides the message again. It is a
  dry run unless ``--yes``; with ``--yes`` it records the replay, publishes
  with confirms, takes the parked copies off ``lienthong.parked`` once their
  replacements are confirmed, waits for each message's new decision and
  prints the outcome counts;
* ``history`` lists the replays executed.

Replaying is idempotent: a delivered message is never published again (the
worker, too, keeps a delivered message delivered), so replaying twice
delivers once. One replay runs at a time (a PostgreSQL advisory lock).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import hashlib
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from exchange.agency import AgencyCode, InvalidAgencyCode
from exchange.broker import headers as header
from exchange.broker.connection import (
    XML_CONTENT_TYPE,
    ConfirmingPublisher,
    PublishError,
    broker_user_of,
    connect,
)
from exchange.broker.origin import dead_letter
from exchange.broker.topology import DEFAULT_EXCHANGE, PARKED_QUEUE, WORK_QUEUE
from exchange.commands import (
    EXIT_OK,
    EXIT_REFUSED,
    CommandError,
    ServiceOptions,
    TimeExpressionError,
    parse_time,
    print_json,
    run,
    settings_from_args,
)
from exchange.edxml.model import VIETNAM_TIME
from exchange.failures import Failure
from exchange.reasons import Reason
from exchange.settings import Settings
from exchange.status import TransportOutcome
from exchange.store import queries
from exchange.store.db import Connection
from exchange.store.db import connect as connect_database
from exchange.store.records import Message, ReplayItemRecord, ReplayRecord

# How long `run --yes` waits for the new decisions. A message takes
# milliseconds; one that hits a transient failure again goes through the retry
# tiers (1 s, 10 s, 1 min, 10 min) and is reported as still pending.
DEFAULT_WAIT_S = 60.0
POLL_INTERVAL_S = 0.2
# Publishes awaited at once: confirms pipeline on one channel, so a window of
# them is many times faster than one by one, and bounded so a replay of
# thousands does not hold thousands of packages in memory.
PUBLISH_WINDOW = 64
# Seconds basic.get waits for the broker's answer on the parked queue.
GET_TIMEOUT_S = 10.0
# `list` shows at most this many rows unless told otherwise.
DEFAULT_LIST_LIMIT = 1000
# Without a terminal, a plain progress line at every tenth of the way, and
# only for sets large enough for progress to matter.
PLAIN_PROGRESS_MIN = 20
BAR_WIDTH = 30


class ReplayError(ValueError):
    """A replay request that cannot be carried out; the message says why and what to do."""


# -- what to replay: filters and selection (pure) ------------------------------


def reason_codes(text: str) -> tuple[str, ...]:
    """The recorded reason codes an operator means by ``text``.

    The full code (``REJECTED_CERT_UNTRUSTED``, ``PARKED_DATABASE``), or the
    name alone (``CERT_UNTRUSTED``, ``DATABASE``), in any case; a transient
    failure's code (``TRANSIENT_DATABASE``) means the parked messages it left.
    """
    code = text.strip().upper()
    if code.startswith("TRANSIENT_"):
        code = "PARKED_" + code.removeprefix("TRANSIENT_")
    if code.startswith(("REJECTED_", "PARKED_")):
        known = Reason.from_code(code) if code.startswith("REJECTED_") else Failure.from_code(code)
        if known is not None:
            return (code,)
    else:
        found = []
        if (reason := Reason.from_code(code)) is not None:
            found.append(reason.code)
        if (failure := Failure.from_code(code)) is not None:
            found.append(failure.parked_code)
        if found:
            return tuple(found)
    known_codes = [r.code for r in Reason] + [f.parked_code for f in Failure]
    raise ReplayError(f"{text!r} is not a reason code; known: {', '.join(known_codes)}")


def _agency(text: str | None, option: str) -> AgencyCode | None:
    if text is None:
        return None
    try:
        return AgencyCode.parse(text)
    except InvalidAgencyCode as error:
        raise ReplayError(f"{option} {text}: {error}") from None


@dataclass(frozen=True)
class Filters:
    """Which refused messages an operator means; every field narrows the set."""

    since: datetime | None = None
    until: datetime | None = None
    sender: AgencyCode | None = None
    recipient: AgencyCode | None = None
    reasons: tuple[str, ...] | None = None
    outcome: TransportOutcome | None = None

    @classmethod
    def parse(
        cls,
        *,
        since: str | None = None,
        until: str | None = None,
        sender: str | None = None,
        recipient: str | None = None,
        reason: str | None = None,
        outcome: str | None = None,
        now: datetime | None = None,
    ) -> Filters:
        """Filters from the command line's words; :class:`ReplayError` says what is wrong."""
        now = now or datetime.now(UTC)
        try:
            start = None if since is None else parse_time(since, now=now)
            end = None if until is None else parse_time(until, now=now)
        except TimeExpressionError as error:
            raise ReplayError(str(error)) from None
        if start is not None and end is not None and start >= end:
            raise ReplayError(f"--since {since} is not before --until {until}")
        refused = {TransportOutcome.REJECTED.value, TransportOutcome.PARKED.value}
        if outcome is not None and outcome not in refused:
            raise ReplayError(f"--outcome {outcome}: only rejected or parked messages replay")
        return cls(
            since=start,
            until=end,
            sender=_agency(sender, "--sender"),
            recipient=_agency(recipient, "--recipient"),
            reasons=None if reason is None else reason_codes(reason),
            outcome=None if outcome is None else TransportOutcome(outcome),
        )

    @property
    def empty(self) -> bool:
        """Whether no filter is set (the whole refused set)."""
        return self == Filters()

    def as_dict(self) -> dict[str, Any]:
        """The filters that are set, as JSON values (for the replay's record)."""
        values = {
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "sender": None if self.sender is None else str(self.sender),
            "recipient": None if self.recipient is None else str(self.recipient),
            "reasons": None if self.reasons is None else list(self.reasons),
            "outcome": None if self.outcome is None else self.outcome.value,
        }
        return {name: value for name, value in values.items() if value is not None}

    def admits(self, entry: Entry) -> bool:
        """Whether a message (taken from the parked queue) passes the filters."""
        at = entry.received_at
        return (
            (self.since is None or (at is not None and at >= self.since))
            and (self.until is None or (at is not None and at < self.until))
            and (self.sender is None or entry.sender == str(self.sender))
            and (self.recipient is None or entry.recipient == str(self.recipient))
            and (self.reasons is None or entry.reason_code in self.reasons)
            and (self.outcome is None or entry.outcome == self.outcome.value)
        )


@dataclass(frozen=True)
class Selection:
    """What ``replay run`` was asked to take: message ids, ``--all``, filters, or the queue."""

    ids: tuple[int, ...] = ()
    all: bool = False
    filters: Filters = field(default_factory=Filters)
    from_queue: bool = False

    def check(self) -> None:
        """Refuse a request that names nothing, or mixes ways of choosing."""
        if self.from_queue and self.ids:
            raise ReplayError(
                "--from-queue takes what waits in lienthong.parked; it cannot be "
                "combined with message ids (replay those in a separate run)"
            )
        if self.ids and (self.all or not self.filters.empty):
            raise ReplayError("give message ids, or --all, or filters: not several at once")
        if self.all and not self.filters.empty:
            raise ReplayError("--all takes every refused message; drop it to use filters")
        if not (self.ids or self.all or self.from_queue or not self.filters.empty):
            raise ReplayError(
                "say what to replay: message ids, --all, filters (--since, --sender, "
                "--reason ...), or --from-queue"
            )

    def as_dict(self) -> dict[str, Any]:
        """What was asked, as JSON values (for the replay's record)."""
        return {
            "ids": list(self.ids),
            "all": self.all,
            "from_queue": self.from_queue,
            "filters": self.filters.as_dict(),
        }


# -- one message, and what a replay does with it (pure) --------------------------


class Source(StrEnum):
    """Where a replayed message's bytes come from."""

    DATABASE = "database"
    PARKED_QUEUE = "parked_queue"


class Action(StrEnum):
    """What a replay does with one message."""

    REPLAY = "replay"  # publish it to lienthong.work again
    SKIP = "skip"  # leave it (see the note)
    REMOVE = "remove"  # a stale parked copy of a delivered message: take it off the queue


@dataclass(frozen=True)
class Entry:
    """A refused message as the replay tool sees it, and what a replay would do with it."""

    dedup_key: str
    message_pk: int | None
    source: Source
    received_at: datetime | None
    sender: str | None
    recipient: str
    broker_user: str | None
    outcome: str | None
    reason_code: str | None
    attempts: int
    amqp_message_id: str | None
    sha256: str
    action: Action = Action.REPLAY
    note: str | None = None

    @property
    def label(self) -> str:
        """How the operator names it: the message id, or its SHA-256 when it has no row."""
        return str(self.message_pk) if self.message_pk is not None else f"sha256:{self.sha256[:12]}"

    def as_dict(self) -> dict[str, Any]:
        """JSON values, for ``--json``."""
        return {
            "id": self.message_pk,
            "source": self.source.value,
            "received_at": None if self.received_at is None else self.received_at.isoformat(),
            "sender": self.sender,
            "recipient": self.recipient,
            "broker_user": self.broker_user,
            "outcome": self.outcome,
            "reason_code": self.reason_code,
            "attempts": self.attempts,
            "message_id": self.amqp_message_id,
            "sha256": self.sha256,
            "action": self.action.value,
            "note": self.note,
        }


def judge(message: Message, source: Source = Source.DATABASE) -> tuple[Action, str | None]:
    """What a replay does with a recorded message, and why when it does not replay it."""
    outcome = message.outcome
    if message.broker_user is None:
        # The worker would take the replay tool's own user for the publisher
        # and record another message; without a user_id nobody can say who
        # sent it, so a replay could not decide it differently anyway.
        return Action.SKIP, "published without a user_id: its publisher is unknown"
    if message.body_size is not None:
        return Action.SKIP, (
            f"refused for good before its signature was verified: the record keeps only the "
            f"first bytes of its {message.body_size} (with their SHA-256), not the package, "
            "so it cannot be replayed; its sender must send it again"
        )
    if outcome in (TransportOutcome.REJECTED, TransportOutcome.PARKED):
        return Action.REPLAY, None
    if outcome is None:
        if source is Source.PARKED_QUEUE:
            return Action.REPLAY, "recorded without a decision; the parked copy is the live one"
        return Action.SKIP, "not decided yet: being processed or waiting in a retry queue"
    if not message.published:
        return Action.REPLAY, f"{outcome.value}, but its effects were never confirmed"
    if source is Source.PARKED_QUEUE:
        return Action.REMOVE, f"already {outcome.value}; its stale parked copy is removed"
    return Action.SKIP, f"already {outcome.value}; a replay would not publish it again"


def entry_of(message: Message, source: Source = Source.DATABASE) -> Entry:
    """The entry of a recorded message."""
    action, note = judge(message, source)
    return Entry(
        dedup_key=message.dedup_key,
        message_pk=message.pk,
        source=source,
        received_at=message.received_at,
        sender=None if message.sender is None else str(message.sender),
        recipient=message.routing_key,
        broker_user=message.broker_user,
        outcome=None if message.outcome is None else message.outcome.value,
        reason_code=message.reason_code,
        attempts=message.attempts,
        amqp_message_id=message.amqp_message_id,
        sha256=message.sha256,
        action=action,
        note=note,
    )


@dataclass(frozen=True)
class ParkedOrigin:
    """Where a message in ``lienthong.parked`` came from, and the reason it is parked."""

    routing_key: str | None
    broker_user: str | None
    reason_code: str

    def dedup_key(self, body: bytes) -> str:
        """The identity the worker records this message under (see :func:`queries.dedup_key`)."""
        return queries.dedup_key(self.routing_key or "", body, self.broker_user)


def parked_origin(
    routing_key: str | None,
    user_id: str | None,
    headers: Mapping[str, Any] | None,
    trusted_users: frozenset[str],
) -> ParkedOrigin:
    """The original routing key and broker user of a parked message, and why it is parked.

    Decoded by :func:`exchange.broker.origin.dead_letter`; the reason is the
    parked code of the worker's failure, else poison when the broker
    dead-lettered it after too many deliveries, else an internal error.
    """
    letter = dead_letter(routing_key, user_id, headers, trusted_users)
    failure = Failure.from_code(letter.failure or "")
    if failure is None:
        failure = Failure.POISON if letter.delivery_limit else Failure.INTERNAL
    return ParkedOrigin(letter.routing_key, letter.broker_user, failure.parked_code)


def replay_headers(entry: Entry, replay_pk: int) -> dict[str, Any]:
    """The headers that make a worker decide ``entry`` again, as its original publisher sent it."""
    headers: dict[str, Any] = {header.REPLAY: replay_pk, header.RECIPIENT: entry.recipient}
    if entry.broker_user:
        headers[header.ORIGINAL_USER] = entry.broker_user
    return headers


def is_new_decision(message: Message, since: datetime) -> bool:
    """Whether ``message`` was decided after ``since`` and its effects are confirmed."""
    return message.outcome is not None and message.published and message.updated_at > since


# -- the summary (pure) ----------------------------------------------------------


@dataclass
class Summary:
    """The outcome counts of one replay."""

    selected: int = 0
    published: int = 0
    failed: int = 0
    skipped: int = 0
    removed: int = 0
    delivered: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    parked: Counter[str] = field(default_factory=Counter)
    pending: int = 0

    @property
    def complete(self) -> bool:
        """Whether every message published got a new decision."""
        return self.failed == 0 and self.pending == 0

    @property
    def all_delivered(self) -> bool:
        """Whether everything replayed is now delivered."""
        return self.complete and not self.rejected and not self.parked

    def as_dict(self) -> dict[str, Any]:
        """JSON values (recorded in ``replays.result``)."""
        return {
            "selected": self.selected,
            "published": self.published,
            "failed": self.failed,
            "skipped": self.skipped,
            "removed": self.removed,
            "delivered": self.delivered,
            "rejected": dict(sorted(self.rejected.items())),
            "parked": dict(sorted(self.parked.items())),
            "pending": self.pending,
        }

    def lines(self) -> list[str]:
        """The summary for a terminal."""

        def by_reason(counts: Counter[str]) -> str:
            total = sum(counts.values())
            detail = ", ".join(f"{code}: {n}" for code, n in sorted(counts.items()))
            return f"{total}" + (f" ({detail})" if detail else "")

        lines = [
            f"replayed {self.published} of {self.selected} selected"
            + (f", {self.failed} could not be published" if self.failed else "")
            + (f", {self.skipped} skipped" if self.skipped else "")
            + (f", {self.removed} stale parked copies removed" if self.removed else ""),
            f"  delivered:       {self.delivered}",
            f"  rejected again:  {by_reason(self.rejected)}",
            f"  parked again:    {by_reason(self.parked)}",
        ]
        if self.pending:
            lines.append(
                f"  pending:         {self.pending} (no new decision yet: workers not running, "
                "or retrying a transient failure; see `lienthong replay list`)"
            )
        return lines


def summarise(entries: Iterable[Entry], decisions: Mapping[str, Message]) -> Summary:
    """Count what became of a replay's entries, given the new decisions by dedup key.

    ``entries`` carry the action taken (after publishing: a failed publish is
    a SKIP with a note starting ``publish failed``).
    """
    summary = Summary()
    for entry in entries:
        summary.selected += 1
        if entry.action is Action.REMOVE:
            summary.removed += 1
            continue
        if entry.action is Action.SKIP:
            if entry.note and entry.note.startswith(PUBLISH_FAILED):
                summary.failed += 1
            else:
                summary.skipped += 1
            continue
        summary.published += 1
        decision = decisions.get(entry.dedup_key)
        if decision is None or decision.outcome is None:
            summary.pending += 1
        elif decision.outcome is TransportOutcome.REJECTED:
            summary.rejected[decision.reason_code or "?"] += 1
        elif decision.outcome is TransportOutcome.PARKED:
            summary.parked[decision.reason_code or "?"] += 1
        else:
            summary.delivered += 1
    return summary


PUBLISH_FAILED = "publish failed"


# -- progress (pure line, thin printer) -------------------------------------------


def progress_line(label: str, done: int, total: int, width: int = BAR_WIDTH) -> str:
    """``label [######......] done/total  pct%``."""
    fraction = done / total if total else 1.0
    filled = round(width * fraction)
    bar = "#" * filled + "." * (width - filled)
    return f"{label} [{bar}] {done}/{total} {int(fraction * 100):3d}%"


class Progress:
    """A progress bar redrawn in place on a terminal; plain lines every tenth otherwise."""

    def __init__(
        self, label: str, total: int, stream: IO[str] | None = None, tty: bool | None = None
    ) -> None:
        """Progress over ``total`` steps, written to ``stream`` (default stderr)."""
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._tenth = -1

    def update(self, done: int) -> None:
        """Show that ``done`` steps are done."""
        self.done = done
        if self.tty:
            self.stream.write("\r" + progress_line(self.label, done, self.total))
            self.stream.flush()
            return
        if self.total < PLAIN_PROGRESS_MIN:
            return
        tenth = done * 10 // self.total
        if tenth > self._tenth:
            self._tenth = tenth
            self.stream.write(f"{self.label}: {done}/{self.total}\n")
            self.stream.flush()

    def finish(self) -> None:
        """End the bar's line."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# -- reading the record ---------------------------------------------------------------


def trusted_users(settings: Settings) -> frozenset[str]:
    """The exchange's own broker users, whose headers a worker believes."""
    return frozenset(
        {
            broker_user_of(settings.amqp_url),
            broker_user_of(replay_url(settings)),
            *settings.exchange_users,
        }
    )


def replay_url(settings: Settings) -> str:
    """Where the replay tool connects: its own user (``replay_amqp_url``), else ``amqp_url``."""
    return settings.replay_amqp_url or settings.amqp_url


@contextlib.asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[Connection]:
    conn = await connect_database(settings)
    try:
        yield conn
    finally:
        await conn.close()


async def list_messages(
    settings: Settings, filters: Filters, *, limit: int | None = DEFAULT_LIST_LIMIT
) -> list[Entry]:
    """The rejected and parked messages recorded in the database, oldest first."""
    async with _database(settings) as conn:
        messages = await _refused(conn, filters, limit=limit)
    return [entry_of(m) for m in messages]


async def _refused(conn: Connection, filters: Filters, *, limit: int | None) -> list[Message]:
    return await queries.list_refused(
        conn,
        since=filters.since,
        until=filters.until,
        sender=filters.sender,
        recipient=filters.recipient,
        reason_codes=filters.reasons,
        outcomes=queries.REFUSED_OUTCOMES if filters.outcome is None else (filters.outcome,),
        limit=limit,
    )


@dataclass(frozen=True)
class Detail:
    """One message in full, for ``replay show``."""

    message: Message
    size: int
    body_sha256: str
    history: list[tuple[ReplayRecord, ReplayItemRecord]]
    body: bytes

    @property
    def reason(self) -> str | None:
        """The reason's sentence, in English."""
        code = self.message.reason_code
        if code is None:
            return None
        known = Reason.from_code(code) or Failure.from_code(code)
        return None if known is None else known.english

    def as_dict(self) -> dict[str, Any]:
        """JSON values, for ``--json`` (without the body)."""
        m = self.message
        return {
            **entry_of(m).as_dict(),
            "dedup_key": m.dedup_key,
            "kind": m.kind.value,
            "document_id": m.document_id,
            "reason": self.reason,
            "reason_detail": m.reason_detail,
            "published_at": None if m.published_at is None else m.published_at.isoformat(),
            "updated_at": m.updated_at.isoformat(),
            "size": self.size,
            "sha256_of_body": self.body_sha256,
            # Junk: the size received; "size" and "sha256_of_body" are of the bytes kept.
            "size_received": m.body_size,
            "replays": [
                {
                    "replay": replay.pk,
                    "started_at": replay.started_at.isoformat(),
                    "os_user": replay.os_user,
                    "broker_user": replay.broker_user,
                    "action": item.action,
                    "note": item.note,
                    "outcome_before": item.outcome_before,
                    "reason_before": item.reason_before,
                    "outcome_after": item.outcome_after,
                    "reason_after": item.reason_after,
                }
                for replay, item in self.history
            ],
        }


async def show_message(settings: Settings, pk: int) -> Detail:
    """One recorded message in full, with its replays; :class:`ReplayError` if unknown."""
    async with _database(settings) as conn:
        message = await queries.get_message(conn, pk)
        body = await queries.message_body(conn, pk)
        if message is None or body is None:
            raise ReplayError(f"no message {pk} is recorded (see `lienthong replay list`)")
        history = await queries.replays_of_message(conn, message)
    return Detail(message, len(body), hashlib.sha256(body).hexdigest(), history, body)


async def replay_history(settings: Settings, *, limit: int | None = None) -> list[ReplayRecord]:
    """The replays executed, the latest first."""
    async with _database(settings) as conn:
        return await queries.list_replays(conn, limit)


# -- the parked queue -------------------------------------------------------------------


@dataclass
class Held:
    """Messages taken from ``lienthong.parked`` and not acknowledged yet, by dedup key.

    Until acknowledged they are safe: if the tool dies, or closes the
    channel, the broker puts them back.
    """

    by_key: dict[str, list[AbstractIncomingMessage]] = field(default_factory=dict)

    def add(self, key: str, message: AbstractIncomingMessage) -> None:
        """Hold one more copy of the message ``key``."""
        self.by_key.setdefault(key, []).append(message)

    async def ack(self, key: str) -> int:
        """Take every held copy of ``key`` off the queue; returns how many."""
        copies = self.by_key.pop(key, [])
        for copy in copies:
            await copy.ack()
        return len(copies)


class ParkedQueue:
    """``lienthong.parked`` on a channel of its own: take, hold, ack or give back."""

    def __init__(self, connection: AbstractRobustConnection) -> None:
        """The parked queue, reached through ``connection``."""
        self._connection = connection
        self._channel: Any = None

    async def __aenter__(self) -> ParkedQueue:
        self._channel = await self._connection.channel()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Closing the channel hands back every message taken and not acked.
        with contextlib.suppress(Exception):
            await self._channel.close()

    async def take_all(self) -> list[AbstractIncomingMessage]:
        """Every message waiting now, unacknowledged (each taken once: basic.get
        does not hand out a message this channel holds)."""
        queue = await self._channel.get_queue(PARKED_QUEUE, ensure=False)
        taken: list[AbstractIncomingMessage] = []
        while (
            message := await queue.get(no_ack=False, fail=False, timeout=GET_TIMEOUT_S)
        ) is not None:
            taken.append(message)
        return taken


def _queue_entry(
    message: AbstractIncomingMessage,
    recorded: Mapping[str, Message],
    agencies: Mapping[str, str],
    trusted: frozenset[str],
) -> tuple[str, Entry]:
    """The entry of a message found in the parked queue (keyed by its dedup key)."""
    origin = parked_origin(message.routing_key, message.user_id, message.headers, trusted)
    body = message.body
    sha256 = hashlib.sha256(body).hexdigest()
    recipient = origin.routing_key or ""
    key = origin.dedup_key(body)
    row = recorded.get(key)
    if row is not None:
        return key, entry_of(row, Source.PARKED_QUEUE)
    parked_at = message.timestamp
    if parked_at is not None and parked_at.tzinfo is None:
        parked_at = parked_at.replace(tzinfo=UTC)
    action, note = Action.REPLAY, "parked without a database row"
    if origin.broker_user is None:
        action, note = Action.SKIP, "published without a user_id: its publisher is unknown"
    if origin.routing_key is None:
        action, note = Action.SKIP, "its recipient is unknown (no x-recipient, no x-death key)"
    entry = Entry(
        dedup_key=key,
        message_pk=None,
        source=Source.PARKED_QUEUE,
        received_at=parked_at,
        sender=agencies.get(origin.broker_user or ""),
        recipient=recipient,
        broker_user=origin.broker_user,
        outcome=TransportOutcome.PARKED.value,
        reason_code=origin.reason_code,
        attempts=1,
        amqp_message_id=message.message_id,
        sha256=sha256,
        action=action,
        note=note,
    )
    return key, entry


async def _queue_entries(
    conn: Connection, parked: ParkedQueue, filters: Filters, trusted: frozenset[str]
) -> tuple[list[Entry], Held, dict[str, bytes]]:
    """The parked queue's messages that pass ``filters``: entries, held copies, bodies.

    Messages that do not pass are given back at once.
    """
    taken = await parked.take_all()
    origins = [parked_origin(m.routing_key, m.user_id, m.headers, trusted) for m in taken]
    keys = [o.dedup_key(m.body) for o, m in zip(origins, taken, strict=True)]
    recorded = await queries.messages_by_dedup_key(conn, keys)
    agencies = {a.broker_user: str(a.code) for a in await queries.list_agencies(conn)}
    held = Held()
    bodies: dict[str, bytes] = {}
    entries: dict[str, Entry] = {}
    for message in taken:
        key, entry = _queue_entry(message, recorded, agencies, trusted)
        if not filters.admits(entry):
            await message.nack(requeue=True)
            continue
        held.add(key, message)
        bodies[key] = message.body
        entries.setdefault(key, entry)
    return list(entries.values()), held, bodies


async def _hold_copies(parked: ParkedQueue, keys: set[str], trusted: frozenset[str]) -> Held:
    """Hold the parked copies of the messages ``keys`` (acked once replayed); give back the rest."""
    held = Held()
    if not keys:
        return held
    for message in await parked.take_all():
        origin = parked_origin(message.routing_key, message.user_id, message.headers, trusted)
        key = origin.dedup_key(message.body)
        if key in keys:
            held.add(key, message)
        else:
            await message.nack(requeue=True)
    return held


# -- planning and running a replay ---------------------------------------------------


async def _database_entries(conn: Connection, selection: Selection) -> list[Entry]:
    if selection.ids:
        found = await queries.get_messages(conn, selection.ids)
        entries = []
        for pk in dict.fromkeys(selection.ids):  # in the order given, each once
            message = found.get(pk)
            if message is None:
                raise ReplayError(f"no message {pk} is recorded (see `lienthong replay list`)")
            entries.append(entry_of(message))
        return entries
    return [entry_of(m) for m in await _refused(conn, selection.filters, limit=None)]


async def plan_replay(settings: Settings, selection: Selection) -> list[Entry]:
    """What ``run`` would do, changing nothing (the dry run).

    With ``from_queue`` the parked queue is read and every message given
    back (the broker counts one more delivery of each; nothing else changes).
    """
    selection.check()
    async with _database(settings) as conn:
        if not selection.from_queue:
            return await _database_entries(conn, selection)
        connection = await connect(replay_url(settings), name="lienthong-replay")
        try:
            async with ParkedQueue(connection) as parked:
                entries, _, _ = await _queue_entries(
                    conn, parked, selection.filters, trusted_users(settings)
                )
        finally:
            await connection.close()
        return entries


@dataclass
class ReplayRun:
    """An executed replay: its id, each entry as done, the new decisions and their counts."""

    replay_pk: int
    entries: list[Entry]
    decisions: dict[str, Message]
    summary: Summary

    def as_dict(self) -> dict[str, Any]:
        """JSON values, for ``--json``."""
        return {
            "replay": self.replay_pk,
            "summary": self.summary.as_dict(),
            "messages": [
                {
                    **entry.as_dict(),
                    "new_outcome": None
                    if (d := self.decisions.get(entry.dedup_key)) is None or d.outcome is None
                    else d.outcome.value,
                    "new_reason_code": None if d is None else d.reason_code,
                    "new_id": None if d is None else d.pk,
                }
                for entry in self.entries
            ],
        }


def who() -> tuple[str, str]:
    """The OS user and host running the tool (recorded with each replay)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = f"uid {os.getuid()}"
    return user, socket.gethostname()


ProgressFactory = Callable[[str, int], Progress]

# How replay_items records an entry before publishing (migration 0003).
_RECORDED_ACTION = {Action.REPLAY: "planned", Action.SKIP: "skipped", Action.REMOVE: "removed"}


async def run_replay(
    settings: Settings,
    selection: Selection,
    *,
    wait: float = DEFAULT_WAIT_S,
    progress: ProgressFactory | None = None,
) -> ReplayRun:
    """Replay the selected messages through the workers, record it, and count the outcomes.

    Raises :class:`ReplayError` when another replay is running or the
    selection names an unknown message.
    """
    selection.check()
    make_progress = progress or (lambda label, total: Progress(label, total))
    trusted = trusted_users(settings)
    broker_user = broker_user_of(replay_url(settings))
    async with _database(settings) as conn:
        if not await queries.try_replay_lock(conn):
            raise ReplayError(
                "another replay is running; wait for it to finish (see `lienthong replay history`)"
            )
        connection = await connect(replay_url(settings), name="lienthong-replay")
        try:
            publisher = await ConfirmingPublisher.open(connection)
            async with ParkedQueue(connection) as parked:
                bodies: dict[str, bytes] = {}
                if selection.from_queue:
                    entries, held, bodies = await _queue_entries(
                        conn, parked, selection.filters, trusted
                    )
                else:
                    entries = await _database_entries(conn, selection)
                    # A parked message (or one whose effects were owed when
                    # it was parked) has a copy in lienthong.parked, which
                    # the replay supersedes: the audit counts that queue.
                    parked_keys = {
                        e.dedup_key
                        for e in entries
                        if e.action is Action.REPLAY and e.outcome != TransportOutcome.REJECTED
                    }
                    held = await _hold_copies(parked, parked_keys, trusted)
                os_user, host = who()
                replay_pk = await queries.start_replay(
                    conn,
                    os_user=os_user,
                    host=host,
                    broker_user=broker_user,
                    selection=selection.as_dict(),
                )
                await queries.add_replay_items(
                    conn,
                    replay_pk,
                    (
                        (
                            e.dedup_key,
                            e.message_pk,
                            e.source.value,
                            _RECORDED_ACTION[e.action],
                            e.note,
                            e.outcome,
                            e.reason_code,
                        )
                        for e in entries
                    ),
                )
                since = await queries.database_now(conn)
                entries = await _publish(
                    conn, publisher, entries, bodies, held, replay_pk, broker_user, make_progress
                )
            await publisher.close()
        finally:
            await connection.close()
        published = [e.dedup_key for e in entries if e.action is Action.REPLAY]
        decisions = await _wait_for_decisions(conn, published, since, wait, make_progress)
        await queries.set_replay_item_decisions(conn, replay_pk, decisions.values())
        summary = summarise(entries, decisions)
        await queries.finish_replay(
            conn, replay_pk, complete=summary.complete, result=summary.as_dict()
        )
        await queries.release_replay_lock(conn)
    return ReplayRun(replay_pk, entries, decisions, summary)


async def _publish(
    conn: Connection,
    publisher: ConfirmingPublisher,
    entries: list[Entry],
    bodies: dict[str, bytes],
    held: Held,
    replay_pk: int,
    broker_user: str,
    make_progress: ProgressFactory,
) -> list[Entry]:
    """Publish the entries to replay, a window at a time; returns the entries as done.

    A parked copy is acknowledged (taken off ``lienthong.parked``) only
    after its replacement is confirmed in the work queue.
    """
    for entry in entries:
        if entry.action is Action.REMOVE:
            await held.ack(entry.dedup_key)
    to_publish = [e for e in entries if e.action is Action.REPLAY]
    done: dict[str, Entry] = {}
    bar = make_progress("publishing", len(to_publish))
    for start in range(0, len(to_publish), PUBLISH_WINDOW):
        window = to_publish[start : start + PUBLISH_WINDOW]
        payloads = []
        for entry in window:
            body = bodies.get(entry.dedup_key)
            if body is None:
                assert entry.message_pk is not None  # database entries have rows
                body = await queries.message_body(conn, entry.message_pk)
                assert body is not None  # messages are never deleted
            payloads.append(body)
        results = await asyncio.gather(
            *(
                publisher.publish(
                    DEFAULT_EXCHANGE,
                    WORK_QUEUE,
                    body,
                    message_id=entry.amqp_message_id,
                    headers=replay_headers(entry, replay_pk),
                    content_type=XML_CONTENT_TYPE,
                    user_id=broker_user,
                )
                for entry, body in zip(window, payloads, strict=True)
            ),
            return_exceptions=True,
        )
        for entry, result in zip(window, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, (PublishError, TimeoutError)):
                    raise result
                note = f"{PUBLISH_FAILED}: {result}"
                done[entry.dedup_key] = replace(entry, action=Action.SKIP, note=note)
                await queries.set_replay_item_action(
                    conn, replay_pk, entry.dedup_key, "failed", note
                )
                continue
            await held.ack(entry.dedup_key)
            await queries.set_replay_item_action(conn, replay_pk, entry.dedup_key, "published")
        bar.update(start + len(window))
    bar.finish()
    return [done.get(e.dedup_key, e) for e in entries]


async def _wait_for_decisions(
    conn: Connection,
    keys: Sequence[str],
    since: datetime,
    wait: float,
    make_progress: ProgressFactory,
) -> dict[str, Message]:
    """Poll the record until each message has a new decision, or ``wait`` seconds passed."""
    decisions: dict[str, Message] = {}
    pending = set(keys)
    bar = make_progress("waiting for decisions", len(keys))
    deadline = time.monotonic() + wait
    while pending:
        for key, message in (await queries.messages_by_dedup_key(conn, pending)).items():
            if is_new_decision(message, since):
                decisions[key] = message
                pending.discard(key)
        bar.update(len(decisions))
        if not pending or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL_INTERVAL_S)
    bar.finish()
    return decisions


# -- the command line -------------------------------------------------------------------


def _local(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment.astimezone(VIETNAM_TIME):%Y-%m-%d %H:%M:%S}"


def entry_table(entries: Sequence[Entry], *, with_notes: bool = False) -> list[str]:
    """Entries as aligned lines for a terminal (times in Vietnam time)."""
    lines = [
        f"{'ID':>8}  {'received (UTC+7)':<19}  {'sender':<13}  {'recipient':<13}  "
        f"{'outcome':<9}  {'reason':<30}  attempts"
    ]
    for e in entries:
        line = (
            f"{e.label:>8}  {_local(e.received_at):<19}  {e.sender or '-':<13}  "
            f"{e.recipient or '-':<13}  {e.outcome or '-':<9}  {e.reason_code or '-':<30}  "
            f"{e.attempts}"
        )
        if with_notes and e.note:
            line += f"  ({e.note})"
        lines.append(line)
    return lines


def _outcome_counts(entries: Sequence[Entry]) -> str:
    counts = Counter(e.outcome or "undecided" for e in entries)
    return ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))


def _filters(args: argparse.Namespace) -> Filters:
    return Filters.parse(
        since=args.since,
        until=args.until,
        sender=args.sender,
        recipient=args.recipient,
        reason=args.reason,
        outcome=args.outcome,
    )


def _command(
    body: Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    """A handler running ``body`` with the command's settings; replay errors become sentences."""

    def handler(args: argparse.Namespace) -> int:
        try:
            return run(body(args, settings_from_args(args)))
        except ReplayError as error:
            raise CommandError(str(error)) from None

    return handler


def _print_json(value: Any) -> None:
    print_json(value)


async def _list(args: argparse.Namespace, settings: Settings) -> int:

    filters = _filters(args)
    limit = args.limit or None
    if args.queue:
        entries = await plan_replay(settings, Selection(filters=filters, from_queue=True))
        entries = entries[:limit] if limit else entries
    else:
        entries = await list_messages(settings, filters, limit=limit)
    if args.json:
        _print_json([e.as_dict() for e in entries])
        return EXIT_OK
    where = "in lienthong.parked" if args.queue else "recorded"
    if not entries:
        print(f"no rejected or parked messages {where} match")
        return EXIT_OK
    print("\n".join(entry_table(entries, with_notes=args.queue)))
    shown = f"{len(entries)} message(s) {where} ({_outcome_counts(entries)})"
    if limit is not None and len(entries) == limit:
        shown += f"; the first {limit} shown, narrow with filters or raise --limit"
    print(shown)
    return EXIT_OK


async def _show(args: argparse.Namespace, settings: Settings) -> int:
    from exchange.operator_log import reading

    # With --body: recorded in the operator log before the body is read.
    await reading()
    detail = await show_message(settings, args.id)
    if args.body == "-":
        sys.stdout.buffer.write(detail.body)
        sys.stdout.buffer.flush()
        return EXIT_OK
    if args.body:
        Path(args.body).write_bytes(detail.body)
    if args.json:
        _print_json(detail.as_dict())
        return EXIT_OK
    m = detail.message
    fields = [
        ("id", str(m.pk)),
        ("received", f"{_local(m.received_at)} (UTC+7)"),
        ("message id", m.amqp_message_id or "-"),
        ("recipient", m.routing_key),
        ("broker user", m.broker_user or "-"),
        ("sender", "-" if m.sender is None else str(m.sender)),
        ("kind", m.kind.value),
        ("document id", m.document_id or "-"),
        ("outcome", m.outcome.value if m.outcome else "undecided"),
        ("reason", f"{m.reason_code}: {detail.reason or ''}" if m.reason_code else "-"),
        ("attempts", str(m.attempts)),
        ("decided", _local(m.updated_at)),
        ("effects confirmed", _local(m.published_at)),
        ("size", f"{detail.size} bytes"),
        ("sha256", detail.body_sha256 + ("" if detail.body_sha256 == m.sha256 else " (!)")),
    ]
    if m.body_size is not None:
        # Junk: the record keeps the start of the body and the whole one's hash and size.
        fields[-2:] = [
            ("size", f"{m.body_size} bytes received, the first {detail.size} kept"),
            ("sha256", f"{m.sha256} (of the whole body received)"),
            ("kept", f"sha256 {detail.body_sha256} (of the bytes kept); not replayable"),
        ]
    for name, value in fields:
        print(f"{name + ':':<19}{value}")
    if m.reason_detail:
        print("problems:")
        for problem in m.reason_detail.splitlines():
            print(f"  - {problem}")
    if detail.history:
        print("replays:")
        for replay, item in detail.history:
            after = item.outcome_after or ("pending" if item.action == "published" else "-")
            print(
                f"  replay {replay.pk}  {_local(replay.started_at)}  by {replay.os_user}"
                f"@{replay.host} as {replay.broker_user}: {item.action}, "
                f"{item.outcome_before or '-'} -> {after}"
                + (f" {item.reason_after}" if item.reason_after else "")
                + (f" ({item.note})" if item.note else "")
            )
    else:
        print("replays:           none")
    if args.body:
        kept = " (only the start kept of what was received)" if m.body_size is not None else ""
        print(f"package written to {args.body}{kept}")
    return EXIT_OK


def _selection(args: argparse.Namespace) -> Selection:
    return Selection(
        ids=tuple(args.ids), all=args.all, filters=_filters(args), from_queue=args.from_queue
    )


async def _run_command(args: argparse.Namespace, settings: Settings) -> int:
    from exchange.operator_log import note

    selection = _selection(args)
    if not args.yes:
        entries = await plan_replay(settings, selection)
        chosen = [e for e in entries if e.action is Action.REPLAY]
        left = [e for e in entries if e.action is not Action.REPLAY]
        if args.json:
            _print_json(
                {
                    "dry_run": True,
                    "would_replay": len(chosen),
                    "messages": [e.as_dict() for e in entries],
                }
            )
            return EXIT_OK
        if chosen:
            print(f"would replay {len(chosen)} message(s):")
            print("\n".join(entry_table(chosen, with_notes=True)))
        if left:
            print(f"would not replay {len(left)} message(s):")
            print("\n".join(entry_table(left, with_notes=True)))
        print(
            f"dry run: {len(chosen)} message(s) would be replayed; nothing was changed. "
            "Add --yes to replay them."
        )
        note("dry run")
        return EXIT_OK
    done = await run_replay(settings, selection, wait=args.wait)
    note(f"replay {done.replay_pk}")
    if args.json:
        _print_json(done.as_dict())
    else:
        print(f"replay {done.replay_pk} (recorded; see `lienthong replay history`)")
        print("\n".join(done.summary.lines()))
    return EXIT_OK if done.summary.all_delivered else EXIT_REFUSED


async def _history(args: argparse.Namespace, settings: Settings) -> int:

    replays = await replay_history(settings, limit=args.limit or None)
    if args.json:
        _print_json(
            [
                {
                    "replay": r.pk,
                    "started_at": r.started_at.isoformat(),
                    "finished_at": None if r.finished_at is None else r.finished_at.isoformat(),
                    "os_user": r.os_user,
                    "host": r.host,
                    "broker_user": r.broker_user,
                    "selection": r.selection,
                    "state": r.state,
                    "result": r.result,
                    "messages": r.items,
                }
                for r in replays
            ]
        )
        return EXIT_OK
    if not replays:
        print("no replay has been run")
        return EXIT_OK
    for r in replays:
        print(
            f"replay {r.pk}  {_local(r.started_at)}  by {r.os_user}@{r.host} as {r.broker_user}  "
            f"{r.state}  {r.items} message(s)  asked: {describe_selection(r.selection)}"
        )
        if r.result is not None:
            print(f"    {describe_result(r.result)}")
    return EXIT_OK


def describe_selection(selection: Mapping[str, Any]) -> str:
    """A recorded selection in a few words."""
    parts = []
    if selection.get("ids"):
        parts.append("ids " + ",".join(str(i) for i in selection["ids"]))
    if selection.get("all"):
        parts.append("--all")
    if selection.get("from_queue"):
        parts.append("--from-queue")
    for name, value in (selection.get("filters") or {}).items():
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        parts.append(f"--{name} {shown}")
    return " ".join(parts) or "-"


def describe_result(result: Mapping[str, Any]) -> str:
    """Recorded outcome counts in a line."""

    def total(value: Any) -> int:
        return sum(value.values()) if isinstance(value, Mapping) else int(value or 0)

    return (
        f"published {result.get('published', 0)}, delivered {result.get('delivered', 0)}, "
        f"rejected {total(result.get('rejected'))}, parked {total(result.get('parked'))}, "
        f"pending {result.get('pending', 0)}, skipped {result.get('skipped', 0)}, "
        f"failed {result.get('failed', 0)}"
    )


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    options: ServiceOptions,
) -> None:
    """Add ``lienthong replay`` (list, show, run, history) to the command line.

    ``list`` (``--queue`` reads the parked queue) and ``run`` use RabbitMQ and
    PostgreSQL; ``show`` and ``history`` only PostgreSQL.
    """
    broker_and_database = [options.amqp, options.database]
    replay = commands.add_parser(
        "replay", help="list, show and replay rejected and parked messages"
    )
    actions = replay.add_subparsers(dest="replay_command", required=True, metavar="ACTION")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--since", metavar="T", help="received at or after T (2024-05-01, 2h)")
    filters.add_argument("--until", metavar="T", help="received before T")
    filters.add_argument("--sender", metavar="CODE", help="the sending agency")
    filters.add_argument("--recipient", metavar="CODE", help="the recipient (routing key)")
    filters.add_argument("--reason", metavar="CODE", help="reason code, e.g. CERT_UNTRUSTED")
    filters.add_argument("--outcome", choices=["rejected", "parked"])

    listing = actions.add_parser(
        "list", parents=[*broker_and_database, filters], help="rejected and parked messages"
    )
    listing.add_argument(
        "--queue", action="store_true", help="what waits in lienthong.parked (given back)"
    )
    listing.add_argument(
        "--limit", type=int, default=DEFAULT_LIST_LIMIT, help="at most this many (0: all)"
    )
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_command(_list))

    show = actions.add_parser("show", parents=[options.database], help="one message in full")
    show.add_argument("id", type=int, help="the message's id (from `replay list`)")
    show.add_argument("--body", metavar="FILE", help="write the package to FILE (- for stdout)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_command(_show))

    run = actions.add_parser(
        "run",
        parents=[*broker_and_database, filters],
        help="replay messages through the workers (a dry run unless --yes)",
    )
    run.add_argument("ids", nargs="*", type=int, metavar="ID", help="message ids")
    run.add_argument("--all", action="store_true", help="every rejected and parked message")
    run.add_argument(
        "--from-queue",
        action="store_true",
        help="take the messages waiting in lienthong.parked (also those with no record)",
    )
    run.add_argument("--yes", action="store_true", help="replay (without it: a dry run)")
    run.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help="how long to wait for the new decisions",
    )
    run.add_argument("--json", action="store_true")
    run.set_defaults(handler=_command(_run_command))

    history = actions.add_parser(
        "history", parents=[options.database], help="the replays run, who ran them and the result"
    )
    history.add_argument("--limit", type=int, default=50, help="at most this many (0: all)")
    history.add_argument("--json", action="store_true")
    history.set_defaults(handler=_command(_history))
