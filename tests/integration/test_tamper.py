"""Tamper evidence: append-only history, hash-chained in the database.

The history tables (``messages``, ``documents``, ``events``) refuse UPDATE,
DELETE and TRUNCATE; every row carries its chain position and hash,
computed by migration 0002's triggers; :func:`exchange.audit.verify_chains`
recomputes the chains and names what was changed behind the exchange's
back. The tampering is done here exactly as an intruder with the superuser
password would: disable the trigger, change or delete, re-enable.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from exchange.audit import (
    ChainWalk,
    add_commands,
    chain_hash,
    cmd_audit,
    verify_chains,
)
from exchange.demo import demo_document
from exchange.edxml.model import VIETNAM_TIME
from exchange.settings import Settings
from exchange.status import MessageKind, StatusCode, TransportOutcome
from exchange.store import queries
from exchange.store.migrate import load_migrations, migrate
from exchange.store.records import ChainHead, ChainLink, NewDocument
from tests.chains import RECIPIENT, SENDER, record_text
from tests.exchange_fixtures import ExchangeUnderTest

# -- the walk over a chain, without a database ------------------------------------

GENESIS = hashlib.sha256(b"lienthong:test").hexdigest()


def _links(contents: list[bytes]) -> list[ChainLink]:
    """A well-formed chain over ``contents``, row ids 10, 11, ..."""
    links, previous = [], GENESIS
    for position, content in enumerate(contents, 1):
        previous = chain_hash(previous, content)
        links.append(ChainLink(9 + position, position, previous, content))
    return links


def _walk(links: list[ChainLink], head: ChainHead | None) -> list[tuple[str, int, int | None]]:
    walk = ChainWalk("test", GENESIS)
    for link in links:
        walk.feed(link)
    status = walk.finish(head)
    return [(p.code, p.chain_seq, p.row_id) for p in status.problems]


def test_walk_accepts_an_intact_chain_and_its_head() -> None:
    links = _links([b"a", b"b", b"c"])
    assert _walk(links, ChainHead("test", 3, links[-1].hash)) == []


def test_walk_names_the_row_whose_content_changed_and_only_it() -> None:
    links = _links([b"a", b"b", b"c"])
    links[1] = ChainLink(11, 2, links[1].hash, b"B")
    assert _walk(links, ChainHead("test", 3, links[-1].hash)) == [("ROW_CHANGED", 2, 11)]


def test_walk_names_the_missing_position_of_a_deleted_row() -> None:
    links = _links([b"a", b"b", b"c", b"d"])
    del links[1]
    assert _walk(links, ChainHead("test", 4, links[-1].hash)) == [("ROWS_MISSING", 2, None)]


def test_walk_finds_the_last_rows_deleted_from_the_head() -> None:
    links = _links([b"a", b"b", b"c"])
    assert _walk(links[:2], ChainHead("test", 3, links[-1].hash)) == [("TAIL_MISSING", 3, None)]


def test_walk_finds_an_empty_chain_whose_head_says_otherwise() -> None:
    assert _walk([], ChainHead("test", 2, "0" * 64)) == [("TAIL_MISSING", 1, None)]


# -- a database filled through the store, as the worker fills it ----------------


@dataclass
class Filled:
    """What :func:`_fill` recorded: the primary keys of its rows."""

    messages: list[int]
    documents: list[int]
    events: list[int]


async def _fill(conn: asyncpg.Connection[asyncpg.Record], documents: int = 3) -> Filled:
    """Documents from SENDER to RECIPIENT, each delivered, then a status 01 for each."""
    for code in (SENDER, RECIPIENT):
        await queries.add_agency(conn, code, f"Cơ quan {code}")
    filled = Filled([], [], [])
    base = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)
    for number in range(documents):
        async with conn.transaction():
            body = f"<edXML>document {number}</edXML>".encode()
            message, _ = await queries.record_message(
                conn,
                dedup_key=queries.dedup_key(str(RECIPIENT), body, "g22"),
                amqp_message_id=f"doc-{number}",
                routing_key=str(RECIPIENT),
                broker_user="g22",
                body=body,
                sha256=hashlib.sha256(body).hexdigest(),
                sender=SENDER,
            )
            stored = await queries.upsert_document(
                conn,
                NewDocument(
                    sender=SENDER,
                    document_id=f"{SENDER},2024/05/06,{number}/VPCP",
                    sha256=message.sha256,
                    subject=f"Văn bản số {number}",
                    promulgation_date=base.date(),
                ),
                first_message_pk=message.pk,
            )
            delivery, _ = await queries.create_delivery(conn, stored.pk, RECIPIENT, message.pk)
            receipt, _ = await queries.append_event(
                conn,
                delivery_pk=delivery.pk,
                message_pk=message.pk,
                code=TransportOutcome.DELIVERED,
            )
            await queries.set_outcome(
                conn,
                message.pk,
                TransportOutcome.DELIVERED,
                kind=MessageKind.DOCUMENT,
                document_pk=stored.pk,
            )
        await queries.mark_published(conn, message.pk)
        async with conn.transaction():
            body = f"<edXML>status 01 of {number}</edXML>".encode()
            status_message, _ = await queries.record_message(
                conn,
                dedup_key=queries.dedup_key(str(SENDER), body, "g09"),
                amqp_message_id=f"status-{number}",
                routing_key=str(SENDER),
                broker_user="g09",
                body=body,
                sha256=hashlib.sha256(body).hexdigest(),
                sender=RECIPIENT,
            )
            status, _ = await queries.append_event(
                conn,
                delivery_pk=delivery.pk,
                message_pk=status_message.pk,
                code=StatusCode.ARRIVED,
                at=base + timedelta(minutes=number),
                description="Đã nhận",
            )
        filled.messages += [message.pk, status_message.pk]
        filled.documents.append(stored.pk)
        filled.events += [receipt.pk, status.pk]
    return filled


@pytest.fixture
async def filled(db: asyncpg.Connection[asyncpg.Record]) -> Filled:
    """This test's database with three documents delivered and reported arrived."""
    return await _fill(db)


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings pointing at this test's database."""
    return Settings().model_copy(update={"database_url": database_url})


async def _as_intruder(
    conn: asyncpg.Connection[asyncpg.Record], table: str, statement: str, *args: Any
) -> None:
    """Run ``statement`` with every trigger of ``table`` disabled, as a superuser can."""
    await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER ALL")
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER ALL")


def _problems(report: Any) -> list[tuple[str, str, int, int | None]]:
    return [(p.chain, p.code, p.chain_seq, p.row_id) for p in report.problems]


# -- append-only ----------------------------------------------------------------


@pytest.mark.services
@pytest.mark.parametrize("table", ["messages", "documents", "events"])
async def test_history_rows_cannot_be_updated(
    db: asyncpg.Connection[asyncpg.Record], filled: Filled, table: str
) -> None:
    column = {"messages": "routing_key", "documents": "subject", "events": "description"}[table]
    with pytest.raises(asyncpg.RestrictViolationError, match=f"table {table} is append-only"):
        await db.execute(f"UPDATE {table} SET {column} = 'x' WHERE id = $1", 1)


@pytest.mark.services
@pytest.mark.parametrize("table", ["messages", "documents", "events"])
async def test_history_rows_cannot_be_deleted_or_truncated(
    db: asyncpg.Connection[asyncpg.Record], filled: Filled, table: str
) -> None:
    with pytest.raises(asyncpg.RestrictViolationError, match=f"table {table} is append-only"):
        await db.execute(f"DELETE FROM {table}")
    with pytest.raises(asyncpg.RestrictViolationError, match=f"table {table} is append-only"):
        await db.execute(f"TRUNCATE {table} CASCADE")
    assert await db.fetchval(f"SELECT count(*) FROM {table}") > 0


@pytest.mark.services
async def test_chain_heads_change_only_through_the_triggers(
    db: asyncpg.Connection[asyncpg.Record], filled: Filled
) -> None:
    with pytest.raises(asyncpg.RestrictViolationError, match="chain_heads"):
        await db.execute("UPDATE chain_heads SET seq = 0 WHERE chain = 'messages'")
    with pytest.raises(asyncpg.RestrictViolationError, match="chain_heads"):
        await db.execute("DELETE FROM chain_heads")
    assert await db.fetchval("SELECT seq FROM chain_heads WHERE chain = 'messages'") == len(
        filled.messages
    )


# -- the chains as the triggers build them -----------------------------------------


@pytest.mark.services
async def test_rows_are_chained_in_insertion_order_and_verify(
    db: asyncpg.Connection[asyncpg.Record], filled: Filled, settings: Settings
) -> None:
    rows = await db.fetch("SELECT id, chain_seq FROM messages ORDER BY id")
    assert [row["chain_seq"] for row in rows] == list(range(1, len(filled.messages) + 1))
    report = await verify_chains(settings)
    assert report.ok, list(report.lines())
    assert {c.chain: c.rows for c in report.chains} == {
        "messages": len(filled.messages),
        "documents": len(filled.documents),
        "events": len(filled.events),
        "operator_actions": 0,
    }


@pytest.mark.services
async def test_a_redelivery_and_a_rolled_back_savepoint_leave_no_gap(
    db: asyncpg.Connection[asyncpg.Record], filled: Filled, settings: Settings
) -> None:
    body = b"<edXML>document 0</edXML>"
    again, created = await queries.record_message(
        db,
        dedup_key=queries.dedup_key(str(RECIPIENT), body, "g22"),
        amqp_message_id="doc-0",
        routing_key=str(RECIPIENT),
        broker_user="g22",
        body=body,
        sha256=hashlib.sha256(body).hexdigest(),
    )
    assert not created
    async with db.transaction():
        with pytest.raises(RuntimeError):
            async with db.transaction():  # a savepoint, as the worker's _decide uses
                await queries.upsert_document(
                    db,
                    NewDocument(sender=SENDER, document_id="rolled back", sha256="0" * 64),
                    first_message_pk=again.pk,
                )
                raise RuntimeError("refused half-way")
        kept = await queries.upsert_document(
            db,
            NewDocument(sender=SENDER, document_id="kept", sha256="1" * 64),
            first_message_pk=again.pk,
        )
    assert await db.fetchval("SELECT chain_seq FROM documents WHERE id = $1", kept.pk) == (
        len(filled.documents) + 1
    )
    assert (await verify_chains(settings)).ok


@pytest.mark.services
async def test_concurrent_writers_extend_each_chain_without_forks_or_deadlocks(
    db_pool: asyncpg.Pool[asyncpg.Record], settings: Settings
) -> None:
    async with db_pool.acquire() as conn:
        for code in (SENDER, RECIPIENT):
            await queries.add_agency(conn, code, f"Cơ quan {code}")

    async def writer(number: int) -> None:
        for step in range(10):
            async with db_pool.acquire() as conn, conn.transaction():
                message = await record_text(conn, f"writer {number} step {step}")
                stored = await queries.upsert_document(
                    conn,
                    NewDocument(
                        sender=SENDER, document_id=f"{number}-{step}", sha256=message.sha256
                    ),
                    first_message_pk=message.pk,
                )
                delivery, _ = await queries.create_delivery(conn, stored.pk, RECIPIENT, message.pk)
                await queries.append_event(
                    conn,
                    delivery_pk=delivery.pk,
                    message_pk=message.pk,
                    code=TransportOutcome.DELIVERED,
                )

    writers = 10  # the pool's size: every connection inserting at once
    await asyncio.wait_for(asyncio.gather(*(writer(n) for n in range(writers))), timeout=30)
    report = await verify_chains(settings)
    assert report.ok, list(report.lines())
    assert [(c.chain, c.rows, c.head_seq) for c in report.chains] == [
        *((chain, writers * 10, writers * 10) for chain in ("messages", "documents", "events")),
        ("operator_actions", 0, 0),
    ]


@pytest.mark.services
async def test_rows_are_chained_when_their_transaction_commits_in_commit_order(
    db_pool: asyncpg.Pool[asyncpg.Record], settings: Settings
) -> None:
    """Migration 0006: writers do not wait for each other until they commit."""
    async with db_pool.acquire() as first, db_pool.acquire() as second:
        early = first.transaction()
        await early.start()
        early_pk = (await record_text(first, "inserted first, committed last")).pk
        # Unchained until the commit: the row has no position yet, and the
        # lock is not held, so another writer inserts and commits meanwhile.
        unchained = "SELECT chain_seq IS NULL FROM messages WHERE id = $1"
        assert await first.fetchval(unchained, early_pk)
        async with second.transaction():
            late_pk = (
                await asyncio.wait_for(record_text(second, "inserted last, committed first"), 5)
            ).pk
        await early.commit()
    async with db_pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, chain_seq FROM messages ORDER BY chain_seq")
    assert [(row["id"], row["chain_seq"]) for row in rows] == [(late_pk, 1), (early_pk, 2)]
    report = await verify_chains(settings)
    assert report.ok, list(report.lines())


@pytest.mark.services
async def test_a_position_cannot_be_set_by_the_inserter(
    db: asyncpg.Connection[asyncpg.Record], filled: Filled
) -> None:
    async with db.transaction():
        pk = (await record_text(db, "wants position 1")).pk
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await db.execute(
                "UPDATE messages SET chain_seq = 1, chain_hash = repeat('0', 64) WHERE id = $1", pk
            )
    other = (await record_text(db, "an event's message")).pk
    await db.execute(
        "INSERT INTO events (delivery_pk, message_pk, kind, code, at, chain_seq, chain_hash) "
        "SELECT delivery_pk, $1, kind, code, at, 1, repeat('0', 64) FROM events LIMIT 1",
        other,
    )
    seqs = await db.fetch("SELECT chain_seq FROM events ORDER BY chain_seq")
    assert [row["chain_seq"] for row in seqs] == list(range(1, len(filled.events) + 2))


@pytest.mark.services
async def test_a_row_inserted_with_the_triggers_bypassed_is_named_unchained(
    db: asyncpg.Connection[asyncpg.Record], filled: Filled, settings: Settings
) -> None:
    await db.execute("SET session_replication_role = replica")
    try:
        pk = (await record_text(db, "behind the exchange's back")).pk
    finally:
        await db.execute("SET session_replication_role = DEFAULT")
    report = await verify_chains(settings)
    assert _problems(report) == [("messages", "UNCHAINED", len(filled.messages) + 1, pk)]
    assert "has no chain position" in report.problems[0].sentence


@pytest.mark.services
async def test_migration_chains_the_rows_recorded_before_it(empty_database_url: str) -> None:
    shipped = load_migrations()
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, [m for m in shipped if m.version == 1])
        # Rows as 0001 stored them, without chain columns.
        await conn.execute(
            "INSERT INTO messages (dedup_key, routing_key, body, sha256) "
            "SELECT repeat(to_hex(n), 64), 'k', b, "
            "encode(sha256(b), 'hex') FROM generate_series(10, 14) n, "
            "LATERAL (SELECT convert_to(n::text, 'UTF8') AS b) body"
        )
        await migrate(conn, shipped)
        rows = await conn.fetch("SELECT id, chain_seq FROM messages ORDER BY id")
        assert [row["chain_seq"] for row in rows] == [1, 2, 3, 4, 5]
        # The next row continues the chain.
        body = b"after the migration"
        await queries.record_message(
            conn,
            dedup_key=queries.dedup_key("k", body),
            amqp_message_id=None,
            routing_key="k",
            broker_user=None,
            body=body,
            sha256=hashlib.sha256(body).hexdigest(),
        )
    finally:
        await conn.close()
    report = await verify_chains(Settings().model_copy(update={"database_url": empty_database_url}))
    assert report.ok, list(report.lines())
    assert report.chains[0].rows == 6


# -- tampering, each kind found and named ----------------------------------------


@pytest.mark.services
async def test_changed_message_body_is_named(
    db: asyncpg.Connection[asyncpg.Record], filled: Filled, settings: Settings
) -> None:
    target = filled.messages[2]
    forged = b"<edXML>another document</edXML>"
    # The sha256 column too, or its CHECK constraint would refuse the forgery.
    await _as_intruder(
        db,
        "messages",
        "UPDATE messages SET body = $2, sha256 = $3 WHERE id = $1",
        target,
        forged,
        hashlib.sha256(forged).hexdigest(),
    )
    report = await verify_chains(settings)
    assert not report.ok
    assert _problems(report) == [("messages", "ROW_CHANGED", 3, target)]
    assert f"messages row id {target} (chain position 3)" in report.problems[0].sentence


@pytest.mark.services
async def test_changed_status_code_is_named(
    db: asyncpg.Connection[asyncpg.Record], filled: Filled, settings: Settings
) -> None:
    status_event = filled.events[3]  # the status 01 of the second document
    await _as_intruder(db, "events", "UPDATE events SET code = '06' WHERE id = $1", status_event)
    report = await verify_chains(settings)
    assert _problems(report) == [("events", "ROW_CHANGED", 4, status_event)]


@pytest.mark.services
async def test_changed_document_subject_is_named(
    db: asyncpg.Connection[asyncpg.Record], filled: Filled, settings: Settings
) -> None:
    document = filled.documents[0]
    await _as_intruder(
        db, "documents", "UPDATE documents SET subject = 'Khác' WHERE id = $1", document
    )
    assert _problems(await verify_chains(settings)) == [("documents", "ROW_CHANGED", 1, document)]


@pytest.mark.services
async def test_row_rewritten_with_a_recomputed_hash_breaks_the_next_link(
    db: asyncpg.Connection[asyncpg.Record], filled: Filled, settings: Settings
) -> None:
    # A cleverer intruder recomputes the changed row's hash as the trigger
    # would; the next row still hashes the original one.
    first, second = filled.events[0], filled.events[1]
    await _as_intruder(
        db,
        "events",
        "UPDATE events SET code = 'rejected', reason_code = 'REJECTED_X' WHERE id = $1",
        first,
    )
    await _as_intruder(
        db,
        "events",
        "UPDATE events e SET chain_hash = chain_link(chain_genesis('events'), chain_content(e)) "
        "WHERE id = $1",
        first,
    )
    report = await verify_chains(settings)
    assert _problems(report) == [("events", "ROW_CHANGED", 2, second)]
    assert f"row before it (position 1, row id {first})" in report.problems[0].sentence


@pytest.mark.services
async def test_deleted_message_is_named_by_its_position(
    db: asyncpg.Connection[asyncpg.Record], filled: Filled, settings: Settings
) -> None:
    victim = filled.messages[1]  # the status message of the first document
    await _as_intruder(db, "events", "DELETE FROM events WHERE message_pk = $1", victim)
    await _as_intruder(
        db, "message_state", "DELETE FROM message_state WHERE message_pk = $1", victim
    )
    await _as_intruder(db, "messages", "DELETE FROM messages WHERE id = $1", victim)
    report = await verify_chains(settings)
    problems = _problems(report)
    assert ("messages", "ROWS_MISSING", 2, None) in problems
    assert ("events", "ROWS_MISSING", 2, None) in problems
    sentence = next(p.sentence for p in report.problems if p.chain == "messages")
    assert "position 2 is missing" in sentence
    assert f"(row id {victim})" in sentence


@pytest.mark.services
async def test_deleted_last_event_is_found_against_the_head(
    db: asyncpg.Connection[asyncpg.Record], filled: Filled, settings: Settings
) -> None:
    await _as_intruder(db, "events", "DELETE FROM events WHERE id = $1", filled.events[-1])
    report = await verify_chains(settings)
    assert _problems(report) == [("events", "TAIL_MISSING", len(filled.events), None)]


@pytest.mark.services
async def test_insert_after_a_deleted_last_row_keeps_the_gap(
    db: asyncpg.Connection[asyncpg.Record], filled: Filled, settings: Settings
) -> None:
    await _as_intruder(db, "documents", "DELETE FROM documents WHERE id = $1", filled.documents[-1])
    stored = await queries.upsert_document(
        db,
        NewDocument(sender=SENDER, document_id="later", sha256="2" * 64),
        first_message_pk=filled.messages[0],
    )
    gone = len(filled.documents)
    assert _problems(await verify_chains(settings)) == [("documents", "ROWS_MISSING", gone, None)]
    assert await db.fetchval("SELECT chain_seq FROM documents WHERE id = $1", stored.pk) == gone + 1


# -- after a real run of the exchange, through the command ------------------------


def _command_line(argv: list[str]) -> int:
    """``lienthong audit ...`` as the CLI will run it (its own event loop)."""
    parser = argparse.ArgumentParser(prog="lienthong")
    commands = parser.add_subparsers(dest="command", required=True)
    services = argparse.ArgumentParser(add_help=False)
    services.add_argument("--amqp-url")
    services.add_argument("--database-url")
    services.add_argument("--rabbitmq-api-url")
    add_commands(commands, services)
    args = parser.parse_args(argv)
    assert args.handler is cmd_audit
    return int(args.handler(args))


@pytest.fixture
async def after_a_run(exchange: ExchangeUnderTest) -> AsyncIterator[ExchangeUnderTest]:
    """Two agencies, two documents and their statuses 01 and 03, all settled."""
    sender = await exchange.register(str(SENDER), "Văn phòng Chính phủ")
    recipient = await exchange.register(str(RECIPIENT), "Bộ Nội vụ")
    documents = [demo_document(sender, [recipient], n, "VPCP", f"Văn bản {n}") for n in (1, 2)]
    async with exchange.workers(2):
        async with sender.client() as client:
            for document in documents:
                await client.send_document(document)
        await exchange.wait_settled(2)
        at = datetime.now(VIETNAM_TIME).replace(tzinfo=None, microsecond=0)
        async with recipient.client() as client:
            for document in documents:
                await client.report_status(document, StatusCode.ARRIVED, "Đã nhận", at=at)
                await client.report_status(
                    document, StatusCode.ACCEPTED, "Đã vào sổ", at=at + timedelta(seconds=1)
                )
        await exchange.wait_settled(6)
    yield exchange


@pytest.mark.services
async def test_chain_verifies_after_a_run_and_names_a_status_changed_afterwards(
    after_a_run: ExchangeUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    exchange = after_a_run
    url = ["--database-url", exchange.settings.database_url]
    assert await asyncio.to_thread(_command_line, ["audit", "--verify-chain", *url]) == 0
    clean = capsys.readouterr().out
    assert "messages: 6 rows" in clean and "events: 6 rows" in clean
    assert "OK: every chain verifies" in clean

    # The first 03 reported becomes a 06 ("done") behind the exchange's back.
    event = await exchange.fetchval(
        "SELECT min(id) FROM events WHERE kind = 'status' AND code = '03'"
    )
    position = await exchange.fetchval("SELECT chain_seq FROM events WHERE id = $1", event)
    async with exchange.db() as conn:
        await _as_intruder(conn, "events", "UPDATE events SET code = '06' WHERE id = $1", event)

    assert await asyncio.to_thread(_command_line, ["audit", "--verify-chain", *url]) == 1
    tampered = capsys.readouterr().out
    assert f"first: events row id {event} (chain position {position}) does not match" in tampered
    assert "TAMPERED" in tampered

    assert await asyncio.to_thread(_command_line, ["audit", "--verify-chain", "--json", *url]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["ok"] is False
    (events,) = [chain for chain in answer["chains"] if chain["chain"] == "events"]
    assert [(p["code"], p["row_id"]) for p in events["problems"]] == [("ROW_CHANGED", event)]


# -- junk: a cut body stays tamper-evident (migration 0013) -------------------------------


@pytest.mark.services
@pytest.mark.parametrize(
    ("change", "args"),
    [
        ("body = $2", (b"junk 0000 " + b"\x01" * 100,)),  # the bytes kept
        ("body_size = $2", (70_000_000,)),  # the size received
        ("sha256 = $2", ("0" * 64,)),  # the hash of the whole
        ("body_size = NULL, sha256 = encode(sha256(body), 'hex')", ()),  # passed off as whole
    ],
)
async def test_a_cut_junk_row_changed_in_any_way_is_named(
    db: asyncpg.Connection[asyncpg.Record], settings: Settings, change: str, args: tuple[Any, ...]
) -> None:
    received = b"junk 0000 " + bytes(range(256)) * 4096  # 1 MiB, not XML
    kept = received[: 64 * 1024]
    async with db.transaction():
        before, _ = await queries.record_message(
            db,
            dedup_key=queries.dedup_key(str(RECIPIENT), b"before"),
            amqp_message_id=None,
            routing_key=str(RECIPIENT),
            broker_user=None,
            body=b"before",
            sha256=hashlib.sha256(b"before").hexdigest(),
        )
        junk, _ = await queries.record_message(
            db,
            dedup_key=queries.dedup_key(str(RECIPIENT), received),
            amqp_message_id=None,
            routing_key=str(RECIPIENT),
            broker_user=None,
            body=kept,
            sha256=hashlib.sha256(received).hexdigest(),
            body_size=len(received),
        )
    assert (junk.body_size, before.body_size) == (len(received), None)
    assert (await verify_chains(settings)).ok
    # The database refuses a cut row that keeps more than 64 KiB, or claims a whole body.
    with pytest.raises(asyncpg.CheckViolationError, match="message_sha256_matches_body"):
        await queries.record_message(
            db,
            dedup_key=queries.dedup_key(str(RECIPIENT), received + b"!"),
            amqp_message_id=None,
            routing_key=str(RECIPIENT),
            broker_user=None,
            body=received[: 64 * 1024 + 1],
            sha256=hashlib.sha256(received).hexdigest(),
            body_size=len(received),
        )

    statement = f"UPDATE messages SET {change} WHERE id = $1"
    await _as_intruder(db, "messages", statement, junk.pk, *args)
    report = await verify_chains(settings)
    assert _problems(report) == [("messages", "ROW_CHANGED", 2, junk.pk)]
