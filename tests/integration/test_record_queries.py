"""The replay filters and the overdue report on the indexes of migration 0020.

Against the real PostgreSQL: the replay list keeps what each filter names
and the overdue count what is overdue, with generic plans (what a prepared
statement settles on) and custom plans alike; the writers keep a state's
time received and a delivery's DueDate equal to its message's and its
document's; and each query's generic plan can read its partial index (its
conditions imply the index's predicate) and only the months it names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pytest

from exchange.agency import AgencyCode
from exchange.status import TransportOutcome
from exchange.store import Connection, queries
from exchange.store.records import NewDocument, NewDocumentMessage

pytest_plugins = ["tests.db_fixtures"]
pytestmark = pytest.mark.services

GOVERNMENT_OFFICE = AgencyCode.parse("000.00.00.G22")
HOME_AFFAIRS = AgencyCode.parse("000.00.00.G09")
PHU_THO = AgencyCode.parse("000.00.00.H44")

JANUARY = datetime(2025, 1, 1, tzinfo=UTC)
FEBRUARY = datetime(2025, 2, 1, tzinfo=UTC)
MARCH = datetime(2025, 3, 1, tzinfo=UTC)
APRIL = datetime(2025, 4, 1, tzinfo=UTC)

PLAN_MODES = ("force_generic_plan", "force_custom_plan")
REJECTED = TransportOutcome.REJECTED
PARKED = TransportOutcome.PARKED
DELIVERED = TransportOutcome.DELIVERED


@dataclass(frozen=True)
class Recorded:
    pk: int
    received_at: datetime
    sender: AgencyCode
    recipient: AgencyCode
    outcome: TransportOutcome
    reason: str | None


async def _directory(conn: Connection) -> None:
    for code in (GOVERNMENT_OFFICE, HOME_AFFAIRS, PHU_THO):
        await queries.add_agency(conn, code, f"Cơ quan {code}")
    for month in (JANUARY, FEBRUARY, MARCH):
        for table in ("messages", "events"):
            await conn.execute("SELECT record_partition_create($1, $2::date)", table, month.date())


async def _receive(
    conn: Connection, n: int, at: datetime, sender: AgencyCode, recipient: AgencyCode
) -> int:
    body = f"<edXML>message {n}</edXML>".encode()
    message, _ = await queries.record_message(
        conn,
        dedup_key=queries.dedup_key(str(recipient), body),
        amqp_message_id=None,
        routing_key=str(recipient),
        broker_user=None,
        body=body,
        sha256=hashlib.sha256(body).hexdigest(),
        sender=sender,
        received_at=at,
    )
    return message.pk


# Received over three months, from two senders to two recipients; two of
# them at the same instant (ordered by id). Delivered ones are never listed.
SHAPES: list[tuple[datetime, AgencyCode, AgencyCode, TransportOutcome, str | None]] = [
    (JANUARY.replace(day=5), GOVERNMENT_OFFICE, HOME_AFFAIRS, REJECTED, "REJECTED_SIGNATURE"),
    (JANUARY.replace(day=9), PHU_THO, HOME_AFFAIRS, PARKED, "PARKED_TRANSIENT"),
    (JANUARY.replace(day=20), GOVERNMENT_OFFICE, PHU_THO, DELIVERED, None),
    (FEBRUARY, GOVERNMENT_OFFICE, PHU_THO, REJECTED, "REJECTED_NOT_WELL_FORMED"),
    (FEBRUARY.replace(day=3), PHU_THO, HOME_AFFAIRS, REJECTED, "REJECTED_SIGNATURE"),
    (FEBRUARY.replace(day=3), GOVERNMENT_OFFICE, HOME_AFFAIRS, REJECTED, "REJECTED_SIGNATURE"),
    (FEBRUARY.replace(day=14), GOVERNMENT_OFFICE, HOME_AFFAIRS, PARKED, "PARKED_TRANSIENT"),
    (FEBRUARY.replace(day=28, hour=23), PHU_THO, PHU_THO, DELIVERED, None),
    (MARCH, GOVERNMENT_OFFICE, HOME_AFFAIRS, REJECTED, "REJECTED_SIGNATURE"),
    (MARCH.replace(day=30), PHU_THO, PHU_THO, PARKED, "PARKED_TRANSIENT"),
]


@pytest.fixture
async def refused(db: Connection) -> list[Recorded]:
    await _directory(db)
    recorded = []
    for n, (at, sender, recipient, outcome, reason) in enumerate(SHAPES):
        pk = await _receive(db, n, at, sender, recipient)
        await queries.set_outcome(db, pk, outcome, reason)
        recorded.append(Recorded(pk, at, sender, recipient, outcome, reason))
    return recorded


# Each replay filter (as `lienthong replay list` passes them) against what it names.
FILTERS: list[dict[str, Any]] = [
    {},
    {"since": FEBRUARY, "until": MARCH},
    {"since": FEBRUARY},
    {"until": FEBRUARY},
    {"sender": GOVERNMENT_OFFICE},
    {"sender": GOVERNMENT_OFFICE, "since": FEBRUARY, "until": MARCH},
    {"recipient": HOME_AFFAIRS, "since": FEBRUARY},
    {"reason_codes": ["REJECTED_SIGNATURE"]},
    {"reason_codes": ["REJECTED_SIGNATURE", "PARKED_TRANSIENT"], "sender": PHU_THO},
    {"outcomes": (PARKED,)},
    {"outcomes": (PARKED, DELIVERED), "since": FEBRUARY},
    {"sender": GOVERNMENT_OFFICE, "reason_codes": ["REJECTED_SIGNATURE"], "limit": 2},
    {"since": FEBRUARY, "until": MARCH, "limit": 1},
    {"sender": HOME_AFFAIRS},
]


def _named(recorded: Iterable[Recorded], **given: Any) -> list[int]:
    outcomes = given.get("outcomes", queries.REFUSED_OUTCOMES)
    kept = [
        r
        for r in recorded
        if r.outcome in queries.REFUSED_OUTCOMES
        and r.outcome in outcomes
        and r.received_at >= given.get("since", datetime.min.replace(tzinfo=UTC))
        and r.received_at < given.get("until", datetime.max.replace(tzinfo=UTC))
        and given.get("sender", r.sender) == r.sender
        and given.get("recipient", r.recipient) == r.recipient
        and r.reason in given.get("reason_codes", [r.reason])
    ]
    kept.sort(key=lambda r: (r.received_at, r.pk))
    return [r.pk for r in kept][: given.get("limit")]


@pytest.mark.parametrize("plan_mode", PLAN_MODES)
async def test_each_replay_filter_lists_the_refused_messages_it_names_oldest_first(
    db: Connection, refused: list[Recorded], plan_mode: str
) -> None:
    await db.execute(f"SET plan_cache_mode = {plan_mode}")
    for given in FILTERS:
        # Twice: an asyncpg statement is prepared once and executed again.
        for _ in range(2):
            listed = await queries.list_refused(db, **given)
            assert [m.pk for m in listed] == _named(refused, **given), given
    (one,) = await queries.list_refused(db, since=MARCH.replace(day=30))
    assert (one.routing_key, one.sender, one.reason_code) == (
        str(PHU_THO),
        PHU_THO,
        "PARKED_TRANSIENT",
    )


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return "'{" + ",".join(value) + "}'"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    return f"'{value}'"


async def _plan(db: Connection, name: str, query: str, args: list[Any], mode: str) -> str:
    """The plan of ``query`` prepared as asyncpg prepares it, generic or custom."""
    await db.execute(f"PREPARE {name} AS {query}")
    await db.execute(f"SET plan_cache_mode = {mode}")
    # Without a sequential scan when another path exists: the tables here
    # are a few pages, where reading them whole costs least; what is proven
    # is that the index is a path at all for the query as written.
    await db.execute("SET enable_seqscan = off")
    rows = await db.fetch(f"EXPLAIN EXECUTE {name}({', '.join(map(_literal, args))})")
    return "\n".join(row[0] for row in rows)


@pytest.mark.parametrize("plan_mode", PLAN_MODES)
async def test_a_months_replay_list_reads_that_months_refused_states_and_messages(
    db: Connection, refused: list[Recorded], plan_mode: str
) -> None:
    query, args = queries.refused_query(
        since=FEBRUARY,
        until=MARCH,
        sender=None,
        recipient=None,
        reason_codes=None,
        outcomes=queries.REFUSED_OUTCOMES,
        limit=None,
    )
    plan = await _plan(db, "month", query, args, plan_mode)
    print(plan)
    assert "message_state_refused_received" in plan
    assert "messages_2025_02" in plan
    for other in ("messages_2025_01", "messages_2025_03", "messages_default"):
        assert other not in plan


@pytest.mark.parametrize("plan_mode", PLAN_MODES)
async def test_one_senders_replay_list_reads_that_senders_refused_states(
    db: Connection, refused: list[Recorded], plan_mode: str
) -> None:
    query, args = queries.refused_query(
        since=FEBRUARY,
        until=MARCH,
        sender=GOVERNMENT_OFFICE,
        recipient=None,
        reason_codes=["REJECTED_SIGNATURE"],
        outcomes=queries.REFUSED_OUTCOMES,
        limit=100,
    )
    plan = await _plan(db, "sender", query, args, plan_mode)
    print(plan)
    assert "message_state_refused_sender" in plan
    assert "messages_2025_01" not in plan


# -- the overdue report ------------------------------------------------------------------


def _document(n: int, due: date | None) -> NewDocument:
    return NewDocument(
        sender=GOVERNMENT_OFFICE,
        document_id=f"000.00.00.G22,2025/01/0{n},{n}/VPCP",
        sha256=hashlib.sha256(f"<edXML>document {n}</edXML>".encode()).hexdigest(),
        due_date=due,
    )


def _document_message(n: int, due: date | None, recipient: AgencyCode) -> NewDocumentMessage:
    body = f"<edXML>document {n}</edXML>".encode()
    return NewDocumentMessage(
        dedup_key=queries.dedup_key(str(recipient), body),
        amqp_message_id=None,
        routing_key=str(recipient),
        broker_user=str(GOVERNMENT_OFFICE),
        body=body,
        recipient=recipient,
        document=_document(n, due),
    )


async def _delivery_pks(db: Connection, message_pk: int) -> list[int]:
    rows = await db.fetch("SELECT id FROM deliveries WHERE message_pk = $1", message_pk)
    return [row["id"] for row in rows]


async def test_the_writers_copy_the_time_received_and_the_due_date(db: Connection) -> None:
    await _directory(db)
    due = date(2025, 2, 1)
    # The worker's usual path: one statement for messages, documents, deliveries.
    batch = await queries.record_delivered_documents(
        db,
        [
            _document_message(1, due, HOME_AFFAIRS),
            _document_message(1, due, PHU_THO),
            _document_message(2, None, HOME_AFFAIRS),
        ],
    )
    assert all(m is not None for m in batch)
    # A document already recorded, delivered to one more recipient in another call.
    (later,) = await queries.record_delivered_documents(
        db, [_document_message(1, due, GOVERNMENT_OFFICE)]
    )
    assert later is not None
    # The general path: record_message, upsert_document, create_delivery.
    pk = await _receive(db, 3, FEBRUARY, GOVERNMENT_OFFICE, PHU_THO)
    stored = await queries.upsert_document(db, _document(3, date(2025, 3, 1)), first_message_pk=pk)
    await queries.create_delivery(db, stored.pk, PHU_THO, pk)

    assert await db.fetchval("SELECT count(*) FROM message_state") == 5
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 5
    assert not await db.fetch(
        "SELECT s.message_pk FROM message_state s JOIN messages m ON m.id = s.message_pk"
        " WHERE s.received_at IS DISTINCT FROM m.received_at"
    )
    assert not await db.fetch(
        "SELECT v.id FROM deliveries v JOIN documents d ON d.id = v.document_pk"
        " WHERE v.due_date IS DISTINCT FROM d.due_date"
    )
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE due_date IS NULL") == 1


@pytest.mark.parametrize("plan_mode", PLAN_MODES)
async def test_the_overdue_count_and_list_keep_the_open_deliveries_past_their_due_date(
    db: Connection, plan_mode: str
) -> None:
    await _directory(db)
    today = date(2025, 3, 1)
    # (DueDate, state, withdrawn, delivered): overdue only when due before
    # today, delivered, not withdrawn, and neither returned (02) nor done (06).
    cases = [
        (date(2025, 2, 1), None, False, True, True),
        (date(2025, 1, 15), "01", False, True, True),
        (date(2025, 2, 27), "04", False, True, True),
        (date(2025, 2, 1), "02", False, True, False),
        (date(2025, 2, 1), "06", False, True, False),
        (date(2025, 2, 1), "01", True, True, False),
        (date(2025, 2, 1), None, False, False, False),
        (today, None, False, True, False),
        (None, None, False, True, False),
    ]
    overdue = []
    for n, (due, state, withdrawn, delivered, is_overdue) in enumerate(cases, 1):
        (message,) = await queries.record_delivered_documents(
            db, [_document_message(n, due, HOME_AFFAIRS)], []
        )
        assert message is not None
        if delivered:
            await queries.mark_published(db, message.pk)
        await db.execute(
            "UPDATE deliveries SET state = $2, withdrawn = $3 WHERE message_pk = $1",
            message.pk,
            state,
            withdrawn,
        )
        if is_overdue:
            overdue.append((due, _document(n, due).document_id))
    await db.execute(f"SET plan_cache_mode = {plan_mode}")
    for _ in range(2):
        assert await queries.count_overdue_deliveries(db, today) == len(overdue)
        rows = await queries.list_overdue_deliveries(db, today, 2)
        assert [(r["due_date"], r["document_id"]) for r in rows] == sorted(overdue)[:2]

    count = "SELECT count(*) FROM deliveries v " + queries._OVERDUE_WHERE
    plan = await _plan(db, "overdue", count, [today.isoformat()], plan_mode)
    print(plan)
    assert "deliveries_overdue" in plan
    assert "documents" not in plan
