"""Database roles: workers and gateways log in as roles that cannot change the schema.

Migration 0012 grants the groups lienthong_worker and lienthong_gateway what
their work needs; the schema belongs to the role that migrates. These tests
log in as real login roles of those groups (roles are global to the server:
each test makes its own, ``lienthong_test_...``, and drops it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from prometheus_client import REGISTRY

from exchange import cli
from exchange.demo import demo_document
from exchange.edxml.model import VIETNAM_TIME
from exchange.report import refresh_metrics
from exchange.settings import Settings
from exchange.status import StatusCode, TransportOutcome
from exchange.store import MigrationError, create_pool, migrate, queries
from exchange.store.migrate import Migration, load_migrations
from exchange.store.roles import (
    GATEWAY_GROUP,
    WORKER_GROUP,
    PrivilegedRoleError,
    RolePowers,
    database_name,
    judge_role,
    quote_ident,
    role_powers,
    roles_sql,
)
from tests.db_fixtures import (
    as_role,
    create_login_role,
    drop_database,
    drop_login_role,
    run_sync,
    unique_database_name,
)
from tests.exchange_fixtures import ExchangeUnderTest

REPO = Path(__file__).resolve().parents[2]
SENDER = "000.00.00.G22"
RECIPIENT = "000.00.00.G09"

# What each group may do to each table of the schema (migration 0012); a
# column list means only those columns. A table missing here fails
# test_every_table_has_the_rights_its_users_need: decide what each group
# may do with it, grant that in the migration that makes it, and add it.
READ = {"SELECT"}
APPEND = {"SELECT", "INSERT"}
KEEP = {"SELECT", "INSERT", "UPDATE"}
EXPECTED_RIGHTS: dict[str, dict[str, set[str]]] = {
    WORKER_GROUP: {
        "messages": APPEND,
        "documents": APPEND,
        "events": APPEND,
        "message_state": KEEP,
        "deliveries": KEEP,
        "processing_starts": KEEP,
        "agencies": READ,
        "agency_certificates": READ,
        "chain_heads": READ,
        "schema_migrations": READ,
        "replays": READ,
        "replay_items": READ,
        "gateway_system_agencies": READ,
        "gateway_submissions": READ,
        "gateway_mailbox": READ,
        "gateway_systems": set(),
        # Later tables: the default (0012), read and append. The workers
        # write the seals; the operator log names whoever appends.
        "head_seals": APPEND,
        "operator_actions": APPEND,
        "subscription_copies": APPEND,
        # Its token buckets (0016, 0019): a row updated per token taken.
        "quota_buckets": KEEP,
        # Written by the key-claiming triggers and retention (0018, 0019).
        "message_keys": READ,
        "event_keys": READ,
        "mailbox_keys": READ,
        "detached_partitions": READ,
    },
    GATEWAY_GROUP: {
        "messages": READ,
        "documents": READ,
        "events": READ,
        "message_state": READ,
        "deliveries": READ,
        "processing_starts": set(),
        "agencies": READ,
        "agency_certificates": READ,
        "chain_heads": set(),
        "schema_migrations": READ,
        "replays": set(),
        "replay_items": set(),
        "gateway_system_agencies": READ,
        "gateway_submissions": {"SELECT", "INSERT", "DELETE"},
        "gateway_mailbox": KEEP,
        "gateway_systems": READ,
        "head_seals": READ,
        "operator_actions": READ,
        "subscription_copies": READ,
        "quota_buckets": set(),
        "message_keys": READ,
        "event_keys": READ,
        "mailbox_keys": READ,
        "detached_partitions": READ,
    },
}
EXPECTED_COLUMN_RIGHTS: dict[str, dict[str, set[str]]] = {
    # The directory figures count the agencies an enabled system acts for;
    # the secrets stay unread.
    WORKER_GROUP: {
        "gateway_systems": {
            "SELECT(system_id)",
            "SELECT(enabled)",
            "SELECT(created_at)",
            "SELECT(secret_set_at)",
            "SELECT(last_seen_at)",
        }
    },
    # A gateway notes a system's last contact, and changes nothing else of it.
    GATEWAY_GROUP: {"gateway_systems": {"UPDATE(last_seen_at)"}},
}


@contextlib.asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    """One connection to ``dsn``."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def record_one_message(conn: asyncpg.Connection[asyncpg.Record]) -> int:
    """Record a message as the worker does; its id."""
    body = f"<edXML>{uuid.uuid4()}</edXML>".encode()
    message, created = await queries.record_message(
        conn,
        dedup_key=hashlib.sha256(body).hexdigest(),
        amqp_message_id=None,
        routing_key=RECIPIENT,
        broker_user="someone",
        body=body,
        sha256=hashlib.sha256(body).hexdigest(),
    )
    assert created
    return message.pk


# -- what the worker's role may not do ---------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE intruder (id int)",
        "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE INDEX intruder ON messages (routing_key)",
        "ALTER TABLE messages ADD COLUMN intruder text",
        "ALTER TABLE messages DISABLE TRIGGER append_only",
        "ALTER TABLE messages DROP CONSTRAINT message_sha256_matches_body",
        "DROP TABLE events",
        "DROP FUNCTION refuse_history_change() CASCADE",
        "TRUNCATE messages, documents, events CASCADE",
        "TRUNCATE message_state",
        "CREATE TRIGGER intruder BEFORE INSERT ON agencies "
        "FOR EACH ROW EXECUTE FUNCTION chain_unsealed()",
        "SET session_replication_role = replica",
        "SELECT chain_seal_all('messages', 1)",
        "GRANT lienthong_gateway TO CURRENT_USER",
    ],
)
async def test_the_worker_role_cannot_change_the_schema(
    worker_database_url: str, statement: str
) -> None:
    async with connected(worker_database_url) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE messages SET routing_key = '000.00.00.H26'",
        "UPDATE messages SET chain_seq = NULL, chain_hash = NULL",
        "DELETE FROM messages",
        "UPDATE chain_heads SET seq = 0",
        "DELETE FROM message_state",
        "DELETE FROM processing_starts",
        "UPDATE agencies SET broker_user = 'mine'",
        "INSERT INTO agency_certificates (agency, sha256, certificate_pem) VALUES ('x', 'y', 'z')",
        "UPDATE gateway_systems SET enabled = true",
        "SELECT secret FROM gateway_systems",
        "INSERT INTO replays (os_user, host, broker_user, selection) VALUES ('a', 'b', 'c', '{}')",
    ],
)
async def test_the_worker_role_cannot_rewrite_the_record_or_the_directory(
    database_url: str, worker_database_url: str, statement: str
) -> None:
    async with connected(database_url) as owner:
        await record_one_message(owner)
    async with connected(worker_database_url) as conn:
        # Refused for want of the right, before any trigger is asked.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    async with connected(database_url) as owner:
        assert await owner.fetchval("SELECT count(*) FROM messages") == 1


async def test_the_worker_role_appends_and_the_seal_runs_as_the_owner(
    worker_database_url: str,
) -> None:
    async with connected(worker_database_url) as conn:
        assert not (await role_powers(conn)).can_change_schema
        pk = await record_one_message(conn)
        # Sealed at commit by the owner's trigger: the worker holds no UPDATE
        # right on messages or chain_heads.
        row = await conn.fetchrow("SELECT chain_seq, chain_hash FROM messages WHERE id = $1", pk)
        assert row["chain_seq"] == 1 and row["chain_hash"] is not None
        assert await conn.fetchval("SELECT seq FROM chain_heads WHERE chain = 'messages'") == 1
        # Its state it keeps: updated, once decided.
        decided = await queries.set_outcome(conn, pk, TransportOutcome.PARKED, "TRANSIENT_X")
        assert decided.outcome is TransportOutcome.PARKED


async def test_a_month_partition_is_reached_only_through_its_parent(database_url: str) -> None:
    async with connected(database_url) as conn:
        partitions = await conn.fetch(
            "SELECT c.relname FROM pg_class c WHERE c.relispartition AND c.relkind = 'r'"
            " AND c.relnamespace = current_schema()::regnamespace"
        )
        created = await conn.fetchval("SELECT record_partition_create('messages', '2031-05-01')")
        rights = await conn.fetch(
            "SELECT table_name, grantee, privilege_type FROM information_schema.table_privileges"
            " WHERE table_schema = current_schema() AND grantee = ANY($1::text[])"
            " AND table_name = ANY($2::text[])",
            [WORKER_GROUP, GATEWAY_GROUP],
            [row["relname"] for row in partitions] + ["messages_2031_05"],
        )
    assert partitions and created
    assert [tuple(row) for row in rights] == []


async def test_every_table_has_the_rights_its_users_need(database_url: str) -> None:
    async with connected(database_url) as conn:
        tables = {
            row["relname"]
            for row in await conn.fetch(
                "SELECT c.relname FROM pg_class c WHERE c.relkind IN ('r', 'p')"
                " AND NOT c.relispartition"
                " AND c.relnamespace = current_schema()::regnamespace"
            )
        }
        table_rights = await conn.fetch(
            "SELECT grantee, table_name, privilege_type FROM information_schema.table_privileges"
            " WHERE table_schema = current_schema() AND grantee = ANY($1::text[])",
            [WORKER_GROUP, GATEWAY_GROUP],
        )
        column_rights = await conn.fetch(
            "SELECT grantee, table_name, column_name, privilege_type"
            " FROM information_schema.column_privileges"
            " WHERE table_schema = current_schema() AND grantee = ANY($1::text[])",
            [WORKER_GROUP, GATEWAY_GROUP],
        )
    for group, expected in EXPECTED_RIGHTS.items():
        assert set(expected) == tables, f"{group}: tables without a decided line, or gone"
        actual = {table: set[str]() for table in tables}
        for row in table_rights:
            if row["grantee"] == group:
                actual[row["table_name"]].add(row["privilege_type"])
        assert actual == expected, group
        # Rights on whole tables show in column_privileges too: only the others.
        columns: dict[str, set[str]] = {}
        for row in column_rights:
            if row["grantee"] == group and row["privilege_type"] not in actual[row["table_name"]]:
                columns.setdefault(row["table_name"], set()).add(
                    f"{row['privilege_type']}({row['column_name']})"
                )
        assert columns == EXPECTED_COLUMN_RIGHTS[group], group


# -- a worker as that role, end to end ---------------------------------------------------


async def test_a_worker_logged_in_as_the_worker_role_delivers_and_reports(
    exchange: ExchangeUnderTest, worker_database_url: str, postgres_url: str
) -> None:
    assert exchange.local.worker_database_url == worker_database_url
    sender = await exchange.register(SENDER)
    recipient = await exchange.register(RECIPIENT)
    document = demo_document(sender, [recipient], 21, "VPCP", "Gửi bằng vai trò của worker")
    async with exchange.workers(1):
        async with connected(postgres_url) as admin:
            roles = await admin.fetch(
                "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = $1",
                database_name(exchange.settings.database_url),
            )
        # The worker's pool keeps a connection open, as the role of lienthong_worker.
        worker_role = urlsplit(worker_database_url).username
        assert worker_role in {row["usename"] for row in roles}
        assert REGISTRY.get_sample_value("lienthong_database_role_privileged") == 0
        async with sender.client() as client:
            await client.send_document(document)
        await exchange.wait_settled(1)
        (delivered,) = await exchange.inbox_of(recipient)
        assert delivered.package.code == document.code
        async with recipient.client() as client:
            await client.report_status(
                document,
                StatusCode.ACCEPTED,
                "Đã vào sổ",
                at=datetime.now(VIETNAM_TIME).replace(tzinfo=None) - timedelta(seconds=1),
            )
        await exchange.wait_settled(2)

    assert await exchange.fetchval("SELECT state FROM deliveries") == "03"
    assert await exchange.fetchval("SELECT count(*) FROM messages WHERE chain_seq IS NULL") == 0
    assert await exchange.fetchval("SELECT count(*) FROM events WHERE chain_seq IS NULL") == 0
    assert await exchange.fetchval("SELECT seq FROM chain_heads WHERE chain = 'events'") == 2


async def test_a_worker_as_the_superuser_on_this_host_is_warned_of_and_counted(
    exchange: ExchangeUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    exchange.local.worker_database_url = None  # the superuser of the test server
    with caplog.at_level(logging.WARNING, logger="lienthong.worker"):
        async with exchange.workers(1):
            assert REGISTRY.get_sample_value("lienthong_database_role_privileged") == 1
    (warning,) = [r.getMessage() for r in caplog.records if "change its schema" in r.getMessage()]
    assert "is a superuser" in warning and "lienthong init --create-login" in warning


async def test_a_worker_whose_login_is_in_no_group_stops_at_start_with_one_line(
    exchange: ExchangeUnderTest, postgres_url: str
) -> None:
    role, password = unique_database_name("nogroup"), uuid.uuid4().hex
    async with connected(postgres_url) as admin:
        await admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    try:
        # A process of its own: a worker handles signals, in a main thread.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "exchange",
            "worker",
            "--database-url",
            as_role(exchange.settings.database_url, role, password),
            "--amqp-url",
            exchange.settings.amqp_url,
            "--trust",
            str(exchange.settings.trust),
            "--metrics-port",
            "0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO), "LIENTHONG_LOG_FORMAT": "text"},
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == cli.EXIT_ERROR, (out, err)
        (line,) = [x for x in err.decode().splitlines() if x.startswith("lienthong: ")]
        assert line.startswith("lienthong: PostgreSQL at ")
        assert "permission denied for table agencies" in line
        assert f"(role {role})" in line and "member of lienthong_worker" in line
    finally:
        await drop_login(postgres_url, role)


async def test_the_directory_figures_are_computed_as_the_worker_role(
    worker_database_url: str,
) -> None:
    async with await create_pool(Settings(), dsn=worker_database_url) as pool:
        await refresh_metrics(pool)


# -- the judgement of a role ---------------------------------------------------------------


async def test_role_powers_tell_the_superuser_from_the_worker_role(
    database_url: str, worker_database_url: str
) -> None:
    async with connected(database_url) as conn:
        superuser = await role_powers(conn)
    async with connected(worker_database_url) as conn:
        worker = await role_powers(conn)
    assert superuser.superuser and superuser.can_change_schema
    assert not worker.can_change_schema
    assert (worker.superuser, worker.owned_tables, worker.owns_schema, worker.creates) == (
        False,
        (),
        False,
        False,
    )


@pytest.mark.parametrize(
    "powers",
    [
        RolePowers("postgres", "public", True, (), False, False),
        RolePowers("lienthong_owner", "public", False, ("agencies", "events"), True, True),
        RolePowers("careless", "public", False, (), False, True),
    ],
)
def test_a_role_that_can_change_the_schema_is_refused_off_this_host_and_warned_of_on_it(
    powers: RolePowers,
) -> None:
    off_host = "postgresql://w:pw@db.example.vn:5432/lienthong?sslmode=verify-full"
    with pytest.raises(PrivilegedRoleError, match="refused off this host") as refused:
        judge_role(powers, off_host, "worker")
    assert powers.explain() in str(refused.value)
    assert "db.example.vn" in str(refused.value)
    warning = judge_role(powers, "postgresql://postgres@127.0.0.1/lienthong", "worker")
    assert warning is not None and "allowed on this host only" in warning
    fit = RolePowers("w1", "public", False, (), False, False)
    assert judge_role(fit, off_host, "worker") is None


# -- migrations run as the owner -----------------------------------------------------------


async def test_migrations_as_a_plain_owner_role_give_the_worker_role_its_work(
    postgres_url: str, migrated_template: str
) -> None:
    """Owner and worker both non-superusers, as in production: the migrations and the work pass."""
    owner, owner_password = unique_database_name("owner"), uuid.uuid4().hex
    worker, worker_password = run_sync(create_login_role(postgres_url, WORKER_GROUP))
    name = unique_database_name("owned")
    try:
        async with connected(postgres_url) as admin:
            # A plain login role (no CREATEROLE: the groups exist already).
            await admin.execute(f"CREATE ROLE \"{owner}\" LOGIN PASSWORD '{owner_password}'")
            await admin.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        dsn = as_role(postgres_url.rsplit("/", 1)[0] + "/" + name, owner, owner_password)
        async with connected(dsn) as conn:
            applied = await migrate(conn)
            assert applied == [m.label for m in load_migrations()]
            powers = await role_powers(conn)
            assert not powers.superuser and "messages" in powers.owned_tables
            assert await migrate(conn) == []
        async with connected(as_role(dsn, worker, worker_password)) as conn:
            assert not (await role_powers(conn)).can_change_schema
            pk = await record_one_message(conn)
            assert await conn.fetchval("SELECT chain_seq FROM messages WHERE id = $1", pk) == 1
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("UPDATE messages SET broker_user = 'forged'")
    finally:
        run_sync(drop_database(postgres_url, name))
        run_sync(drop_login_role(postgres_url, owner))
        run_sync(drop_login_role(postgres_url, worker))


async def test_migrate_as_the_worker_role_changes_nothing_or_says_to_run_init_as_the_owner(
    worker_database_url: str,
) -> None:
    async with connected(worker_database_url) as conn:
        assert await migrate(conn) == []
        pending = [*load_migrations(), Migration(9999, "later", "CREATE TABLE later (id int);")]
        with pytest.raises(MigrationError, match="lienthong init") as refused:
            await migrate(conn, pending)
        assert "9999_later" in str(refused.value)
        assert await conn.fetchval("SELECT to_regclass('later')") is None


async def test_migrate_as_the_worker_role_on_an_empty_database_says_to_run_init_as_the_owner(
    postgres_url: str, empty_database_url: str, migrated_template: str
) -> None:
    role, password = run_sync(create_login_role(postgres_url, WORKER_GROUP))
    try:
        async with connected(as_role(empty_database_url, role, password)) as conn:
            with pytest.raises(MigrationError, match="may not create the schema"):
                await migrate(conn)
    finally:
        run_sync(drop_login_role(postgres_url, role))


# -- the command ---------------------------------------------------------------------------


def test_init_prints_the_sql_of_the_roles_without_connecting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = cli.main(
        [
            "init",
            "--roles-sql",
            "--database-url",
            "postgresql://nobody:pw@unreachable.invalid/lienthong_prod?sslmode=verify-full",
            "--create-login",
            "worker_hanoi_1",
        ]
    )
    out = capsys.readouterr().out
    assert status == cli.EXIT_OK
    assert out == roles_sql("lienthong_prod", login="worker_hanoi_1")
    assert "CREATE DATABASE lienthong_prod OWNER lienthong_owner;" in out
    assert f"CREATE ROLE worker_hanoi_1 LOGIN PASSWORD 'CHANGE-ME' IN ROLE {WORKER_GROUP};" in out
    assert quote_ident("Worker-1") == '"Worker-1"' and quote_ident('a"b') == '"a""b"'


async def test_init_creates_a_login_role_for_a_worker_and_prints_its_url(
    exchange: ExchangeUnderTest,
    postgres_url: str,
    capsys: pytest.CaptureFixture[str],
    lienthong_run: Callable[..., Awaitable[int]],
) -> None:
    name = unique_database_name("login")
    try:
        status = await lienthong_run(
            "init",
            "--database-url",
            exchange.settings.database_url,
            "--amqp-url",
            exchange.settings.amqp_url,
            "--create-login",
            name,
        )
        out = capsys.readouterr().out
        assert status == cli.EXIT_OK, out
        url = out.splitlines()[-1].removeprefix("LIENTHONG_DATABASE_URL=")
        async with connected(url) as conn:
            assert await conn.fetchval("SELECT current_user") == name
            assert await conn.fetchval("SELECT pg_has_role($1, 'MEMBER')", WORKER_GROUP)
            assert not (await role_powers(conn)).can_change_schema
        status = await lienthong_run(
            "init",
            "--database-url",
            exchange.settings.database_url,
            "--amqp-url",
            exchange.settings.amqp_url,
            "--create-login",
            name,
        )
        err = capsys.readouterr().err
        assert status == cli.EXIT_ERROR
        assert err == (
            f"lienthong: database role {name!r} exists already; change its password "
            "with ALTER ROLE, or choose another name\n"
        )
    finally:
        await drop_login(postgres_url, name)


async def test_init_migrates_as_the_owner_and_not_as_the_processes_role(
    exchange: ExchangeUnderTest,
    postgres_url: str,
    empty_database_url: str,
    capsys: pytest.CaptureFixture[str],
    lienthong_run: Callable[..., Awaitable[int]],
) -> None:
    role, password = await create_login_role(postgres_url, WORKER_GROUP)
    as_worker = as_role(empty_database_url, role, password)
    try:
        status = await lienthong_run(
            "init", "--database-url", as_worker, "--amqp-url", exchange.settings.amqp_url
        )
        err = capsys.readouterr().err
        assert status == cli.EXIT_ERROR
        (line,) = err.splitlines()
        assert f"role '{role}' may not create the schema" in line
        assert "LIENTHONG_OWNER_DATABASE_URL" in line

        status = await lienthong_run(
            "init",
            "--database-url",
            as_worker,
            "--owner-database-url",
            empty_database_url,
            "--amqp-url",
            exchange.settings.amqp_url,
            "--json",
        )
        assert status == cli.EXIT_OK, capsys.readouterr().err
        async with connected(as_worker) as conn:
            newest = load_migrations()[-1].version
            assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == newest
            assert not (await role_powers(conn)).can_change_schema
    finally:
        await drop_login(postgres_url, role)


async def drop_login(server_url: str, name: str) -> None:
    """Drop a login role from the test's own event loop."""
    async with connected(server_url) as admin:
        await admin.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.fixture
def lienthong_run() -> Callable[..., Awaitable[int]]:
    """``lienthong ARGS...`` in a thread of its own (the command runs its own event loop)."""

    async def run(*argv: str) -> int:
        return await asyncio.to_thread(cli.main, list(argv))

    return run
