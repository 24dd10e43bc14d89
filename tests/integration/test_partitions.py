"""The record partitioned by month (migration 0018), and the retention that detaches months.

Against the real PostgreSQL: the migration converts a database with rows and
the chains verify as before; a message is unique for ever whatever month a
copy lands in; a month's query reads only its partition; `lienthong
retention run` exports and detaches the old months and `audit
--verify-chain` still verifies, crossing the detached months only along the
runs they recorded, so that a row deleted next to one is still found.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from exchange.audit import verify_chains
from exchange.retention import cutoff, run_retention, verify_export
from exchange.settings import Settings
from exchange.store import queries
from exchange.store.migrate import load_migrations, migrate
from tests.chains import RECIPIENT, SENDER

pytestmark = pytest.mark.services

JANUARY = datetime(2025, 1, 20, 10, 0, tzinfo=UTC)
FEBRUARY = datetime(2025, 2, 10, 10, 0, tzinfo=UTC)
MARCH = datetime(2025, 3, 5, 10, 0, tzinfo=UTC)


def _settings(url: str) -> Settings:
    return Settings().model_copy(update={"database_url": url})


async def _agencies(conn: asyncpg.Connection) -> None:
    for code in (SENDER, RECIPIENT):
        await queries.add_agency(conn, code, f"Cơ quan {code}")


async def _record(conn: asyncpg.Connection, text: str, at: datetime) -> tuple[int, bool]:
    """A message of ``text`` received at ``at``, in its own transaction (its own position)."""
    body = text.encode()
    async with conn.transaction():
        message, created = await queries.record_message(
            conn,
            dedup_key=queries.dedup_key(str(RECIPIENT), body),
            amqp_message_id=None,
            routing_key=str(RECIPIENT),
            broker_user=None,
            body=body,
            sha256=hashlib.sha256(body).hexdigest(),
            received_at=at,
        )
    return message.pk, created


async def _record_in_old_schema(conn: asyncpg.Connection, text: str, at: datetime) -> int:
    """_record's rows as the code before the migrations under test wrote them."""
    body = text.encode()
    async with conn.transaction():
        pk: int = await conn.fetchval(
            "INSERT INTO messages (dedup_key, routing_key, body, sha256, received_at)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id",
            queries.dedup_key(str(RECIPIENT), body),
            str(RECIPIENT),
            body,
            hashlib.sha256(body).hexdigest(),
            at,
        )
        await conn.execute("INSERT INTO message_state (message_pk) VALUES ($1)", pk)
    return pk


async def _receipts(conn: asyncpg.Connection, stamped: list[tuple[int, datetime]]) -> None:
    """A document of the first message, and one receipt event per message, each at its time."""
    first = stamped[0][0]
    async with conn.transaction():
        document = await conn.fetchval(
            "INSERT INTO documents (sender, document_id, sha256, first_message_pk) "
            "VALUES ($1, 'doc-1', $2, $3) RETURNING id",
            str(SENDER),
            "0" * 64,
            first,
        )
        delivery = await conn.fetchval(
            "INSERT INTO deliveries (document_pk, recipient, message_pk) VALUES ($1, $2, $3) "
            "RETURNING id",
            document,
            str(RECIPIENT),
            first,
        )
    for message_pk, at in stamped:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO events (delivery_pk, message_pk, kind, code, at, recorded_at) "
                "VALUES ($1, $2, 'receipt', 'delivered', $3, $3)",
                delivery,
                message_pk,
                at,
            )


async def _months(conn: asyncpg.Connection) -> None:
    for month in ("2025-01-01", "2025-02-01", "2025-03-01"):
        for table in ("messages", "events", "gateway_mailbox"):
            await conn.execute(
                "SELECT record_partition_create($1, $2::date)",
                table,
                datetime.fromisoformat(month).date(),
            )


@pytest.fixture
async def interleaved(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """Messages and events of January to March 2025 whose positions interleave.

    Positions follow commits, months the time received: January holds
    messages 1-3 and 5 (a late commit), February 4, 6 and 7, March 8.
    """
    conn = await asyncpg.connect(database_url)
    try:
        await _agencies(conn)
        await _months(conn)
        stamped = []
        for n, at in enumerate(
            (JANUARY, JANUARY, JANUARY, FEBRUARY, JANUARY, FEBRUARY, FEBRUARY, MARCH), 1
        ):
            pk, _ = await _record(conn, f"message {n}", at)
            stamped.append((pk, at))
        await _receipts(conn, stamped)
        yield conn
    finally:
        await conn.close()


async def test_a_database_with_rows_is_converted_and_its_chains_still_verify(
    empty_database_url: str,
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        everything = load_migrations()
        await migrate(conn, [m for m in everything if m.version < 18])
        await _agencies(conn)
        stamped = [
            (await _record_in_old_schema(conn, f"before {n}", at), at)
            for n, at in enumerate((JANUARY, FEBRUARY, JANUARY, MARCH), 1)
        ]
        await _receipts(conn, stamped)
        before = await verify_chains(_settings(empty_database_url))
        assert before.ok, list(before.lines())

        assert await migrate(conn, everything) == [m.label for m in everything if m.version >= 18]

        after = await verify_chains(_settings(empty_database_url))
        print(*after.lines(), sep="\n")
        assert after.ok
        assert [(c.chain, c.rows, c.head_seq, c.head_hash) for c in after.chains] == [
            (c.chain, c.rows, c.head_seq, c.head_hash) for c in before.chains
        ]
        placed = await conn.fetch(
            "SELECT tableoid::regclass::text AS part, count(*) AS n FROM messages GROUP BY 1"
        )
        assert {row["part"]: row["n"] for row in placed} == {
            "messages_2025_01": 2,
            "messages_2025_02": 1,
            "messages_2025_03": 1,
        }
        # Each state knows when its message was received (migration 0020).
        assert await conn.fetchval(
            "SELECT count(*) FROM messages m JOIN message_state s ON s.message_pk = m.id"
            " WHERE s.received_at = m.received_at"
        ) == len(stamped)
        # Recorded after the conversion: chained on from the same head.
        await _record(conn, "after", datetime.now(UTC))
        assert (await verify_chains(_settings(empty_database_url))).ok
    finally:
        await conn.close()


async def test_a_message_is_recorded_once_whatever_month_its_copy_lands_in(
    interleaved: asyncpg.Connection,
) -> None:
    first_pk, _ = await _record(interleaved, "message 1", JANUARY)
    again_pk, created = await _record(interleaved, "message 1", MARCH)
    assert (again_pk, created) == (first_pk, False)
    assert await interleaved.fetchval("SELECT count(*) FROM messages") == 8


async def test_a_months_query_reads_only_that_months_partition(
    interleaved: asyncpg.Connection,
) -> None:
    for table, column in (("messages", "received_at"), ("events", "recorded_at")):
        plan = "\n".join(
            row[0]
            for row in await interleaved.fetch(
                f"EXPLAIN SELECT * FROM {table} WHERE {column} >= $1 AND {column} < $2",
                datetime(2025, 2, 1, tzinfo=UTC),
                datetime(2025, 3, 1, tzinfo=UTC),
            )
        )
        print(plan)
        assert f"{table}_2025_02" in plan
        assert f"{table}_2025_01" not in plan
        assert f"{table}_2025_03" not in plan
        assert f"{table}_default" not in plan


async def test_retention_detaches_old_months_and_the_chains_still_verify(
    interleaved: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    now = datetime(2025, 3, 20, tzinfo=UTC)
    assert cutoff(now, 1).isoformat() == "2025-02-01"
    lines = await run_retention(
        _settings(database_url),
        export_dir=tmp_path,
        dry_run=False,
        keep_table=False,
        months=1,
        now=now,
    )
    print(*lines, sep="\n")
    assert [line.split(" (")[0] for line in lines if line.startswith("detached")] == [
        "detached events_2025_01",
        "detached messages_2025_01",
    ]
    assert await interleaved.fetchval("SELECT to_regclass('messages_2025_01')") is None
    manifest = json.loads((tmp_path / "messages_2025_01.json").read_text())
    assert [(run["first"], run["last"]) for run in manifest["runs"]] == [(1, 3), (5, 5)]

    report = await verify_chains(_settings(database_url))
    print(*report.lines(), sep="\n")
    assert report.ok
    assert any(
        note.startswith("partition messages_2025_01 (2025-01, 4 rows")
        and "detached at chain position 5" in note
        for note in report.notes
    )
    assert {c.chain: c.rows for c in report.chains}["messages"] == 4
    for name in ("messages_2025_01", "events_2025_01"):
        verified = verify_export(tmp_path / f"{name}.json")
        assert verified.ok, verified.problems
        assert verified.rows == 4

    # A message is still unique for ever: its month is gone, its key is not.
    assert (await _record(interleaved, "message 2", MARCH))[1] is False


async def test_a_row_deleted_next_to_a_detached_month_is_still_found(
    interleaved: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    await run_retention(
        _settings(database_url),
        export_dir=tmp_path,
        dry_run=False,
        keep_table=True,
        months=1,
        now=datetime(2025, 3, 20, tzinfo=UTC),
    )
    assert await interleaved.fetchval("SELECT to_regclass('messages_2025_01_detached')")
    # Position 6 follows January's run [5, 5]: deleted behind the triggers' back.
    await interleaved.execute("SET session_replication_role = replica")
    await interleaved.execute("DELETE FROM messages WHERE chain_seq = 6")
    await interleaved.execute("SET session_replication_role = origin")
    report = await verify_chains(_settings(database_url))
    print(*report.lines(), sep="\n")
    assert not report.ok
    problems = [(p.chain, p.code, p.chain_seq) for p in report.problems]
    assert problems == [("messages", "ROWS_MISSING", 6)]


async def test_a_changed_export_does_not_verify(
    interleaved: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    await run_retention(
        _settings(database_url),
        export_dir=tmp_path,
        dry_run=False,
        keep_table=False,
        months=1,
        now=datetime(2025, 3, 20, tzinfo=UTC),
    )
    exported = tmp_path / "messages_2025_01.csv"
    lines = exported.read_text().splitlines(keepends=True)
    # The last field is the row's encoded content: change its last digit.
    row = lines[2].rstrip("\n")
    lines[2] = row[:-1] + ("0" if row[-1] != "0" else "1") + "\n"
    exported.write_text("".join(lines))
    verified = verify_export(tmp_path / "messages_2025_01.json")
    print(verified.problems)
    assert not verified.ok
    assert any("size or SHA-256" in problem for problem in verified.problems)
    assert any("position 2) does not match its hash" in problem for problem in verified.problems)


async def _mail(conn: asyncpg.Connection, doc_id: str, at: datetime) -> list[asyncpg.Record]:
    return await conn.fetch(
        "INSERT INTO gateway_mailbox (doc_id, queue, message_id, agency, message_type, kind,"
        " body, received_at) VALUES ($1, 'inbox.x', 'm-1', $2, 'edoc', 'document', 'b', $3)"
        " ON CONFLICT DO NOTHING RETURNING id",
        doc_id,
        str(RECIPIENT),
        at,
    )


async def test_a_mailbox_month_is_dropped_once_every_item_of_it_is_confirmed(
    interleaved: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    assert len(await _mail(interleaved, "a" * 24, JANUARY)) == 1

    async def retention() -> list[str]:
        lines = await run_retention(
            _settings(database_url),
            export_dir=tmp_path,
            dry_run=False,
            keep_table=False,
            months=1,
            now=datetime(2025, 3, 20, tzinfo=UTC),
        )
        print(*lines, sep="\n")
        return [line for line in lines if "gateway_mailbox_2025_01" in line]

    assert [line.split(":")[0] for line in await retention()] == ["kept gateway_mailbox_2025_01"]
    await interleaved.execute("UPDATE gateway_mailbox SET state = 'done'")
    assert await retention() == [
        "dropped gateway_mailbox_2025_01 (1 confirmed items, copies of recorded messages)"
    ]
    assert await interleaved.fetchval("SELECT to_regclass('gateway_mailbox_2025_01')") is None
    # Its key stays: a redelivery of the same AMQP message adds nothing.
    assert await _mail(interleaved, "b" * 24, MARCH) == []
