"""Sealing the hash chains at commit (migrations 0006 and 0007).

A transaction's rows are inserted without a position; when it commits, the
seal gives exactly the rows it inserted their positions and hashes, in one
pass per chain, under the chain lock. These tests prove what the seal keeps
(the encoding of migration 0002, positions in commit order without gaps,
savepoints) and what migration 0007 added: the seal takes only the
transaction's own rows, so a row inserted with the triggers bypassed stays
named by the audit, and it does not depend on the history of the tables.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Protocol

import asyncpg
import pytest

from exchange.audit import verify_chains
from exchange.settings import Settings
from exchange.status import TransportOutcome
from exchange.store import queries
from exchange.store.db import Connection
from exchange.store.migrate import load_migrations, migrate
from exchange.store.records import NewDocument
from tests.chains import RECIPIENT, SENDER, record_text

pytestmark = pytest.mark.services


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings pointing at this test's database."""
    return Settings().model_copy(update={"database_url": database_url})


@pytest.fixture
async def agencies(db: Connection) -> None:
    """The sender and the recipient of the documents these tests record."""
    for code in (SENDER, RECIPIENT):
        await queries.add_agency(db, code, f"Cơ quan {code}")


class _Recorded(Protocol):
    pk: int
    sha256: str


@dataclass(frozen=True)
class _RecordedEarlier:
    """A message recorded with the columns of an older schema (queries speak the newest)."""

    pk: int
    sha256: str


async def _record_text_in_old_schema(conn: Connection, text: str) -> _RecordedEarlier:
    body = text.encode()
    sha256 = hashlib.sha256(body).hexdigest()
    pk = await conn.fetchval(
        "INSERT INTO messages (dedup_key, routing_key, body, sha256) VALUES ($1, $2, $3, $4)"
        " RETURNING id",
        queries.dedup_key(str(RECIPIENT), body),
        str(RECIPIENT),
        body,
        sha256,
    )
    await conn.execute("INSERT INTO message_state (message_pk) VALUES ($1)", pk)
    return _RecordedEarlier(pk, sha256)


async def _deliver(conn: Connection, message: _Recorded, document_id: str) -> None:
    """The message's document, its delivery and the receipt, as the worker records them."""
    stored = await queries.upsert_document(
        conn,
        NewDocument(
            sender=SENDER,
            document_id=document_id,
            sha256=message.sha256,
            subject="Văn bản có dấu: Điều 1",
        ),
        first_message_pk=message.pk,
    )
    # Not create_delivery: the test runs this before the migrations that
    # added columns to deliveries too, and a delivery is not chained.
    delivery_pk = await conn.fetchval(
        "INSERT INTO deliveries (document_pk, recipient, message_pk) VALUES ($1, $2, $3)"
        " ON CONFLICT (document_pk, recipient) DO NOTHING RETURNING id",
        stored.pk,
        str(RECIPIENT),
        message.pk,
    ) or await conn.fetchval(
        "SELECT id FROM deliveries WHERE document_pk = $1 AND recipient = $2",
        stored.pk,
        str(RECIPIENT),
    )
    await queries.append_event(
        conn, delivery_pk=delivery_pk, message_pk=message.pk, code=TransportOutcome.DELIVERED
    )


async def _positions(conn: Connection, table: str) -> list[tuple[int, int | None]]:
    rows = await conn.fetch(f"SELECT id, chain_seq FROM {table} ORDER BY id")
    return [(row["id"], row["chain_seq"]) for row in rows]


async def _assert_verifies(settings: Settings) -> None:
    report = await verify_chains(settings)
    assert report.ok, list(report.lines())


async def test_a_group_of_many_rows_is_sealed_in_id_order_and_verifies(
    db: Connection, agencies: None, settings: Settings
) -> None:
    async with db.transaction():
        for number in range(40):
            message = await record_text(db, f"group message {number}")
            await _deliver(db, message, f"group-{number // 4}")
    for table, count in (("messages", 40), ("documents", 10), ("events", 40)):
        positions = await _positions(db, table)
        assert [seq for _, seq in positions] == list(range(1, count + 1)), table
    await _assert_verifies(settings)


async def test_groups_committed_by_concurrent_writers_follow_commit_order_without_gaps(
    db_pool: asyncpg.Pool[asyncpg.Record], database_url: str, settings: Settings
) -> None:
    async with db_pool.acquire() as conn:
        for code in (SENDER, RECIPIENT):
            await queries.add_agency(conn, code, f"Cơ quan {code}")

    async def writer(number: int) -> None:
        for group in range(5):
            async with db_pool.acquire() as conn, conn.transaction():
                for step in range(1 + (number + group) % 4):
                    message = await record_text(conn, f"writer {number} group {group} step {step}")
                    await _deliver(conn, message, f"{number}-{group}-{step}")

    await asyncio.wait_for(asyncio.gather(*(writer(n) for n in range(6))), timeout=60)
    await _assert_verifies(settings)
    async with db_pool.acquire() as conn:
        for table in ("messages", "documents", "events"):
            seqs = sorted(seq for _, seq in await _positions(conn, table) if seq is not None)
            assert seqs == list(range(1, len(seqs) + 1)), table


async def test_the_seal_encodes_each_row_as_chain_content_does(
    db: Connection, agencies: None
) -> None:
    """The seal's encoding (migration 0007) is 0002's chain_content, byte for byte."""
    async with db.transaction():
        plain = await record_text(db, "<edXML>plain</edXML>")
        await _deliver(db, plain, "encoding-1")
        body = "<edXML>Công văn số 12/VPCP-TH\n\u0000\U0001f600</edXML>".encode()
        await queries.record_message(
            db,
            dedup_key=queries.dedup_key("key with spaces", body, "g22"),
            amqp_message_id="id:with=signs\n",
            routing_key="key with spaces",
            broker_user="g22",
            body=body,
            sha256=hashlib.sha256(body).hexdigest(),
        )
        await db.execute(
            "INSERT INTO documents (sender, document_id, sha256, code_number, code_notation, "
            "subject, promulgation_date, due_date, doc_type, priority, first_message_pk, "
            "created_at) VALUES ($1, 'Số 7/QĐ', repeat('a', 64), '7', 'QĐ-TTg', '', "
            "'1969-12-31', 'infinity', '3', '4', $2, '1970-01-01 00:00:00.000001+00')",
            str(SENDER),
            plain.pk,
        )
        await db.execute(
            "INSERT INTO events (delivery_pk, message_pk, kind, code, reason_code, description, "
            "at) SELECT id, $1, 'status', '06', 'REJECTED_X', 'Đã xử lý; \"quoted\"', "
            "'-infinity' FROM deliveries LIMIT 1",
            plain.pk,
        )
    for table in ("messages", "documents", "events"):
        mismatched = await db.fetchval(
            f"SELECT count(*) FROM {table} t "
            "WHERE chain_field('chain_seq', t.chain_seq::text) || chain_content_tail(t) "
            "IS DISTINCT FROM chain_content(t)"
        )
        assert mismatched == 0, table
        unsealed = await db.fetchval(f"SELECT count(*) FROM {table} WHERE chain_seq IS NULL")
        assert unsealed == 0, table


async def test_rows_of_a_rolled_back_savepoint_leave_nothing_and_a_released_one_is_sealed(
    db: Connection, agencies: None, settings: Settings
) -> None:
    async with db.transaction():
        first = await record_text(db, "before the savepoints")
        with pytest.raises(RuntimeError):
            async with db.transaction():
                dropped = await record_text(db, "in a rolled-back savepoint")
                await _deliver(db, dropped, "rolled back")
                raise RuntimeError("refused half-way")
        async with db.transaction():
            kept = await record_text(db, "in a released savepoint")
            await _deliver(db, kept, "released")
        last = await record_text(db, "after the savepoints")
    assert await _positions(db, "messages") == [(first.pk, 1), (kept.pk, 2), (last.pk, 3)]
    assert [seq for _, seq in await _positions(db, "events")] == [1]
    assert await db.fetchval("SELECT count(*) FROM messages WHERE id = $1", dropped.pk) == 0
    await _assert_verifies(settings)


async def test_a_row_inserted_with_the_triggers_bypassed_stays_unchained_after_later_commits(
    db: Connection, settings: Settings
) -> None:
    """The next commit must not adopt it: the audit would no longer see it (0006 did)."""
    sealed = await record_text(db, "recorded by the exchange")
    await db.execute("SET session_replication_role = replica")
    try:
        intruder = (await record_text(db, "behind the exchange's back")).pk
    finally:
        await db.execute("SET session_replication_role = DEFAULT")
    later = await record_text(db, "recorded after it")
    assert await _positions(db, "messages") == [(sealed.pk, 1), (intruder, None), (later.pk, 2)]
    report = await verify_chains(settings)
    assert [(p.chain, p.code, p.row_id) for p in report.problems] == [
        ("messages", "UNCHAINED", intruder)
    ]


async def test_rows_are_sealed_even_when_the_transaction_loses_its_noted_ids(
    db: Connection, settings: Settings
) -> None:
    async with db.transaction():
        first = await record_text(db, "noted, then forgotten")
        await db.execute("RESET ALL")
        second = await record_text(db, "noted again")
        await db.execute("SELECT set_config('lienthong.unsealed_messages', '', true)")
    assert await _positions(db, "messages") == [(first.pk, 1), (second.pk, 2)]
    await _assert_verifies(settings)


async def test_a_seal_forced_early_by_set_constraints_is_continued_at_commit(
    db: Connection, agencies: None, settings: Settings
) -> None:
    async with db.transaction():
        first = await record_text(db, "sealed early")
        await db.execute("SET CONSTRAINTS ALL IMMEDIATE")
        assert await _positions(db, "messages") == [(first.pk, 1)]
        await db.execute("SET CONSTRAINTS ALL DEFERRED")
        second = await record_text(db, "sealed at commit")
        await _deliver(db, second, "after the early seal")
    assert await _positions(db, "messages") == [(first.pk, 1), (second.pk, 2)]
    await _assert_verifies(settings)


async def test_an_early_seal_in_a_rolled_back_savepoint_is_undone_and_done_again(
    db: Connection, settings: Settings
) -> None:
    async with db.transaction():
        first = await record_text(db, "sealed early, then unsealed by the rollback")
        with pytest.raises(RuntimeError):
            async with db.transaction():
                await db.execute("SET CONSTRAINTS ALL IMMEDIATE")
                assert await _positions(db, "messages") == [(first.pk, 1)]
                raise RuntimeError("rolled back")
        assert await _positions(db, "messages") == [(first.pk, None)]
        second = await record_text(db, "sealed at commit")
    assert await _positions(db, "messages") == [(first.pk, 1), (second.pk, 2)]
    await _assert_verifies(settings)


async def test_a_chain_without_its_head_refuses_to_commit(db: Connection) -> None:
    await db.execute("ALTER TABLE chain_heads DISABLE TRIGGER ALL")
    try:
        await db.execute("DELETE FROM chain_heads WHERE chain = 'messages'")
    finally:
        await db.execute("ALTER TABLE chain_heads ENABLE TRIGGER ALL")
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="no head"):
        await record_text(db, "nowhere to chain it")
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_chains_sealed_before_migration_0007_go_on_after_it(
    empty_database_url: str,
) -> None:
    shipped = load_migrations()
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, [m for m in shipped if m.version <= 6])
        for code in (SENDER, RECIPIENT):
            # The agencies table as 0006 left it (queries speak the newest schema).
            await conn.execute(
                "INSERT INTO agencies (code, name, parent, level, broker_user)"
                " VALUES ($1, $2, $3, $4, $5)",
                str(code),
                f"Cơ quan {code}",
                None if code.parent is None else str(code.parent),
                code.level,
                str(code),
            )
        async with conn.transaction():
            for number in range(3):
                earlier = await _record_text_in_old_schema(conn, f"sealed by 0006 {number}")
                await _deliver(conn, earlier, f"a{number}")
        assert await migrate(conn, shipped) == [m.label for m in shipped if m.version > 6]
        async with conn.transaction():
            for number in range(3):
                message = await record_text(conn, f"sealed by 0007 {number}")
                await _deliver(conn, message, f"b{number}")
        assert [seq for _, seq in await _positions(conn, "messages")] == [1, 2, 3, 4, 5, 6]
    finally:
        await conn.close()
    await _assert_verifies(Settings().model_copy(update={"database_url": empty_database_url}))


async def test_a_transaction_of_thousands_of_rows_is_sealed_whole(
    db: Connection, settings: Settings
) -> None:
    """More ids than one setting holds (they move to lienthong.unsealed_messages_earlier)."""
    async with db.transaction():
        await db.execute(
            "INSERT INTO messages (dedup_key, routing_key, body, sha256) "
            "SELECT encode(sha256(convert_to('bulk ' || n, 'UTF8')), 'hex'), 'k', b, "
            "encode(sha256(b), 'hex') FROM generate_series(1, 3000) n, "
            "LATERAL (SELECT convert_to('body ' || n, 'UTF8') AS b) body"
        )
        single = await record_text(db, "one more, in its own statement")
    positions = await _positions(db, "messages")
    assert [seq for _, seq in positions] == list(range(1, 3002))
    assert positions[-1] == (single.pk, 3001)
    await _assert_verifies(settings)


@pytest.mark.parametrize(
    "dedup_key", ["a" * 63, "a" * 65, "A" * 64, "g" * 64, "é" * 32, "a" * 63 + "\n"]
)
async def test_the_hex_constraints_refuse_what_they_refused_before(
    db: Connection, dedup_key: str
) -> None:
    """Migration 0007 rewrote `~ '^[0-9a-f]{64}$'` in a cheaper form: same refusals."""
    assert not await db.fetchval("SELECT $1 ~ '^[0-9a-f]{64}$'", dedup_key)
    body = b"<edXML/>"
    with pytest.raises(asyncpg.CheckViolationError, match="format"):
        await db.execute(
            "INSERT INTO messages (dedup_key, routing_key, body, sha256) VALUES ($1, 'k', $2, $3)",
            dedup_key,
            body,
            hashlib.sha256(body).hexdigest(),
        )
