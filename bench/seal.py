"""What sealing the hash chains costs PostgreSQL at commit (migrations 0006, 0007).

Usage::

    .venv/bin/python bench/seal.py [--upto VERSION] [--messages N]
        [--writers 1,4] [--groups 1,3,16] [--server] [--top] [--verify] [--json]

Creates a scratch database (``lienthong_test_sealbench_*``, dropped at the
end) on the server of the settings (``LIENTHONG_DATABASE_URL``), applies the
shipped migrations up to ``--upto`` (all by default; ``--upto 6`` measures
the sealing of 0006), records ``--prefill`` messages so that the tables are
not empty, then for each number of concurrent writers and each group size
runs transactions shaped like the worker's group commit: per message
:func:`~exchange.store.queries.record_message` (a body of about 5 KB, base64
like an attachment) and :func:`~exchange.ledger.deliver_document` (the
ledger's general path: a new document for one message in four, the same
document to the next three recipients), then COMMIT, which seals.

It prints per run the wall time of a transaction and of its COMMIT (the
seal, the wait for the chain lock, the WAL flush) and, from
pg_stat_statements (reset for the scratch database only), the mean time per
transaction of the sealing function called by the trigger and of the wait
for the chain lock.

With ``--server`` the transactions are run by a procedure inside the
server instead (one writer, ``synchronous_commit = off``): no round trips,
so the COMMIT time is the seal's own cost, with the least noise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import statistics
import time
import uuid
from typing import Any

import asyncpg

from exchange.agency import AgencyCode
from exchange.ledger import deliver_document
from exchange.settings import Settings
from exchange.store import queries
from exchange.store.migrate import load_migrations, migrate
from exchange.store.records import NewDocument

SENDER = AgencyCode.parse("000.00.00.G22")
RECIPIENTS = [AgencyCode.parse(f"000.00.00.G{n:02d}") for n in (1, 2, 3, 9)]
BODY_BYTES = 5 * 1024

# The worker's transactions, run by the server itself: COMMIT is timed inside.
SERVER_BENCH = """
CREATE TABLE bench_bodies AS
    SELECT n, decode(string_agg(md5(random()::text || n || g), ''), 'hex') AS raw
    FROM generate_series(1, 64) n, generate_series(1, 240) g GROUP BY n;
CREATE PROCEDURE bench_transactions(
    transactions int, grp int, INOUT commit_ms float8 DEFAULT 0, INOUT total_ms float8 DEFAULT 0
)
LANGUAGE plpgsql AS $$
DECLARE
    k int := 0; message bigint; received timestamptz; document bigint; delivery bigint;
    body bytea;
    recipients text[] := '{000.00.00.G01,000.00.00.G02,000.00.00.G03,000.00.00.G09}';
    started timestamptz := clock_timestamp(); committing timestamptz;
BEGIN
    FOR i IN 1..transactions LOOP
        FOR j IN 1..grp LOOP
            k := k + 1;
            SELECT convert_to(encode(raw, 'base64'), 'UTF8') INTO body
            FROM bench_bodies WHERE n = 1 + k % 64;
            INSERT INTO messages
                (dedup_key, amqp_message_id, routing_key, broker_user, body, sha256)
            VALUES (encode(sha256(convert_to(random()::text || clock_timestamp(), 'UTF8')), 'hex'),
                    'bench-' || k, recipients[1 + k % 4], 'g22', body, encode(sha256(body), 'hex'))
            RETURNING id, received_at INTO message, received;
            INSERT INTO message_state (message_pk, kind, sender, received_at)
            VALUES (message, 'document', '000.00.00.G22', received);
            IF document IS NULL OR k % 4 = 0 THEN
                INSERT INTO documents (sender, document_id, sha256, subject, first_message_pk)
                VALUES ('000.00.00.G22', 'bench ' || message || ' ' || random(),
                        encode(sha256(body), 'hex'), 'Văn bản số ' || k, message)
                RETURNING id INTO document;
            END IF;
            INSERT INTO deliveries (document_pk, recipient, message_pk)
            VALUES (document, recipients[1 + k % 4], message) RETURNING id INTO delivery;
            INSERT INTO events (delivery_pk, message_pk, kind, code, at)
            VALUES (delivery, message, 'receipt', 'delivered', now());
        END LOOP;
        committing := clock_timestamp();
        COMMIT;
        commit_ms := commit_ms + extract(epoch FROM clock_timestamp() - committing) * 1000;
    END LOOP;
    total_ms := extract(epoch FROM clock_timestamp() - started) * 1000;
END
$$;
"""


def _body(rng: random.Random, number: int) -> bytes:
    payload = base64.b64encode(rng.randbytes(BODY_BYTES * 3 // 4)).decode()
    return f"<edXML><n>{number}</n><a>{payload}</a></edXML>".encode()


class Writer:
    """One connection recording groups of messages, as a worker's group commit does."""

    def __init__(self, conn: asyncpg.Connection, tag: str, seed: int) -> None:
        self.conn = conn
        self.tag = tag
        self.rng = random.Random(seed)
        self.count = 0
        self.document: NewDocument | None = None

    async def message(self) -> None:
        """Record one message and its delivery."""
        self.count += 1
        body = _body(self.rng, self.count)
        recipient = RECIPIENTS[self.count % len(RECIPIENTS)]
        message, _ = await queries.record_message(
            self.conn,
            dedup_key=queries.dedup_key(str(recipient), body, self.tag),
            amqp_message_id=f"{self.tag}-{self.count}",
            routing_key=str(recipient),
            broker_user="g22",
            body=body,
            sha256=hashlib.sha256(body).hexdigest(),
            sender=SENDER,
        )
        if self.document is None or self.count % len(RECIPIENTS) == 0:
            self.document = NewDocument(
                sender=SENDER,
                document_id=f"{SENDER},2024/05/06,{self.tag}-{self.count}/VPCP",
                sha256=hashlib.sha256(f"{self.tag}-{self.count}".encode()).hexdigest(),
                subject=f"Văn bản số {self.count}",
            )
        await deliver_document(
            self.conn, message_pk=message.pk, recipient=recipient, document=self.document
        )

    async def transaction(self, group: int) -> tuple[float, float]:
        """One group in one transaction; returns its wall time and its COMMIT's."""
        started = time.perf_counter()
        transaction = self.conn.transaction()
        await transaction.start()
        try:
            for _ in range(group):
                await self.message()
        except BaseException:
            await transaction.rollback()
            raise
        committing = time.perf_counter()
        await transaction.commit()
        done = time.perf_counter()
        return done - started, done - committing


async def _reset_statements(conn: asyncpg.Connection, dbid: int) -> None:
    await conn.execute("SELECT pg_stat_statements_reset(0, $1::oid, 0)", dbid)


async def _statement_ms(conn: asyncpg.Connection, dbid: int, prefix: str) -> float:
    """Total execution time of the statements starting with ``prefix``."""
    total: float = await conn.fetchval(
        "SELECT coalesce(sum(total_exec_time), 0) FROM pg_stat_statements "
        "WHERE dbid = $1 AND query LIKE $2",
        dbid,
        prefix + "%",
    )
    return total


async def _top(conn: asyncpg.Connection, dbid: int, limit: int = 12) -> list[str]:
    rows = await conn.fetch(
        "SELECT calls, total_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS q "
        "FROM pg_stat_statements WHERE dbid = $1 ORDER BY total_exec_time DESC LIMIT $2",
        dbid,
        limit,
    )
    return [
        f"    {r['calls']:>7} calls {r['total_exec_time']:>9.1f} ms "
        f"{r['total_exec_time'] / max(r['calls'], 1):>7.3f} ms/call  {r['q']}"
        for r in rows
    ]


async def _client_runs(
    args: argparse.Namespace, dsn: str, conn: asyncpg.Connection, dbid: int
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    conns = [await asyncpg.connect(dsn) for _ in range(max(args.writers))]
    try:
        for writers in args.writers:
            for group in args.groups:
                pool = [
                    Writer(conns[n], f"w{writers}g{group}n{n}", 1000 * writers + 10 * group + n)
                    for n in range(writers)
                ]
                for writer in pool:  # the sessions' plans are made before measuring
                    await writer.transaction(group)
                await _reset_statements(conn, dbid)
                count = max(args.messages // group, 10)
                latencies: list[float] = []
                commits: list[float] = []

                async def loop(
                    writer: Writer,
                    count: int = count,
                    group: int = group,
                    latencies: list[float] = latencies,
                    commits: list[float] = commits,
                ) -> None:
                    for _ in range(count):
                        latency, commit = await writer.transaction(group)
                        latencies.append(latency)
                        commits.append(commit)

                started = time.perf_counter()
                await asyncio.gather(*(loop(w) for w in pool))
                wall = time.perf_counter() - started
                transactions = count * writers
                result = {
                    "mode": "client",
                    "writers": writers,
                    "group": group,
                    "transactions": transactions,
                    "messages_per_s": transactions * group / wall,
                    "transaction_ms": statistics.fmean(latencies) * 1000,
                    "commit_ms": statistics.fmean(commits) * 1000,
                    "commit_ms_p50": statistics.median(commits) * 1000,
                    "seal_ms": await _statement_ms(conn, dbid, "SELECT chain_seal_all")
                    / transactions,
                    "lock_wait_ms": await _statement_ms(conn, dbid, "SELECT pg_advisory_xact_lock")
                    / transactions,
                }
                results.append(result)
                print(
                    f"writers {writers} group {group:>2}: {transactions} tx, "
                    f"{result['messages_per_s']:7.1f} msg/s, transaction "
                    f"{result['transaction_ms']:6.2f} ms, COMMIT {result['commit_ms']:6.2f} ms "
                    f"(p50 {result['commit_ms_p50']:6.2f}); per tx: seal "
                    f"{result['seal_ms']:6.3f} ms, lock wait {result['lock_wait_ms']:6.3f} ms"
                )
                if args.top:
                    print("\n".join(await _top(conn, dbid)))
    finally:
        for c in conns:
            await c.close()
    return results


async def _server_runs(
    args: argparse.Namespace, conn: asyncpg.Connection, dbid: int
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    await conn.execute(SERVER_BENCH)
    await conn.execute("SET synchronous_commit = off")
    for group in args.groups:
        count = max(args.messages // group, 10)
        await conn.fetchrow("CALL bench_transactions(20, $1)", group)
        await _reset_statements(conn, dbid)
        row = await conn.fetchrow("CALL bench_transactions($1, $2)", count, group)
        assert row is not None
        result = {
            "mode": "server",
            "writers": 1,
            "group": group,
            "transactions": count,
            "transaction_ms": row["total_ms"] / count,
            "commit_ms": row["commit_ms"] / count,
            "seal_ms": await _statement_ms(conn, dbid, "SELECT chain_seal_all") / count,
        }
        results.append(result)
        print(
            f"server, group {group:>2}: {count} tx, transaction {result['transaction_ms']:6.3f} "
            f"ms, COMMIT {result['commit_ms']:6.3f} ms, seal {result['seal_ms']:6.3f} ms"
        )
        if args.top:
            print("\n".join(await _top(conn, dbid)))
    return results


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Create the scratch database, run the measurements, drop the database."""
    server = args.database_url or Settings().database_url
    name = f"lienthong_test_sealbench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = server.rsplit("/", 1)[0] + "/" + name
    try:
        conn = await asyncpg.connect(dsn)
        try:
            shipped = [m for m in load_migrations() if args.upto is None or m.version <= args.upto]
            applied = await migrate(conn, shipped)
            print(f"database {name}: {', '.join(applied)}")
            await queries.add_agency(conn, SENDER, "Văn phòng Chính phủ")
            for code in RECIPIENTS:
                await queries.add_agency(conn, code, f"Cơ quan {code}")
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            dbid = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = $1", name)
            warm = Writer(conn, "prefill", 0)
            for _ in range(args.prefill // 16):
                await warm.transaction(16)
            if not args.no_vacuum:
                await conn.execute("VACUUM ANALYZE")
            if args.server:
                results = await _server_runs(args, conn, dbid)
            else:
                results = await _client_runs(args, dsn, conn, dbid)
        finally:
            await conn.close()
        if args.verify:
            from exchange.audit import verify_chains

            report = await verify_chains(Settings().model_copy(update={"database_url": dsn}))
            print("\n".join(report.lines()))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return results


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    """Parse the command line and run the measurements."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--database-url", help="the server (default: the settings')")
    parser.add_argument("--upto", type=int, help="apply the migrations up to this version only")
    parser.add_argument(
        "--messages", type=int, default=1600, help="messages per writer and run (default 1600)"
    )
    parser.add_argument("--writers", type=_numbers, default=[1, 4], help="e.g. 1,4")
    parser.add_argument("--groups", type=_numbers, default=[1, 3, 16], help="e.g. 1,3,16")
    parser.add_argument("--prefill", type=int, default=4000, help="messages recorded first")
    parser.add_argument(
        "--no-vacuum",
        action="store_true",
        help="no VACUUM ANALYZE after the prefill (as on a fresh database with autovacuum off)",
    )
    parser.add_argument("--server", action="store_true", help="transactions run by the server")
    parser.add_argument("--top", action="store_true", help="print the costliest statements")
    parser.add_argument("--verify", action="store_true", help="verify the chains at the end")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
