"""Versioned migrations against the real PostgreSQL: once, in order, locked, unchanged."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from exchange.store.migrate import (
    ChangedMigrationError,
    Migration,
    MigrationError,
    load_migrations,
    migrate,
)

pytest_plugins = ["tests.db_fixtures"]

SHIPPED = load_migrations()
TABLES = {"agencies", "messages", "message_state", "documents", "deliveries", "events"}


async def _tables(connection: asyncpg.Connection) -> set[str]:
    rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {row["tablename"] for row in rows}


# -- the files (no database) --------------------------------------------------


def test_shipped_migrations_are_numbered_from_one_without_duplicates() -> None:
    versions = [migration.version for migration in SHIPPED]
    assert versions[0] == 1
    assert versions == sorted(set(versions))


def test_misnamed_migration_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("SELECT 1;")
    (tmp_path / "2_second.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match=r"2_second\.sql"):
        load_migrations(tmp_path)


def test_two_migrations_with_one_number_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("SELECT 1;")
    (tmp_path / "0001_other.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match="share number 1"):
        load_migrations(tmp_path)


def test_migrations_are_loaded_in_version_order_whatever_the_listing(tmp_path: Path) -> None:
    for name in ("0010_ten.sql", "0002_two.sql", "0001_one.sql", "README.md"):
        (tmp_path / name).write_text("SELECT 1;")
    assert [m.label for m in load_migrations(tmp_path)] == ["0001_one", "0002_two", "0010_ten"]


def test_checksum_ignores_line_endings_but_not_content() -> None:
    unix = Migration(1, "one", "CREATE TABLE t (a int);\nSELECT 1;\n")
    windows = replace(unix, sql=unix.sql.replace("\n", "\r\n"))
    changed = replace(unix, sql=unix.sql.replace("int", "bigint"))
    assert unix.checksum == windows.checksum
    assert unix.checksum != changed.checksum


# -- against PostgreSQL --------------------------------------------------------


@pytest.mark.services
async def test_migrate_builds_the_schema_in_an_empty_database(empty_database_url: str) -> None:
    connection = await asyncpg.connect(empty_database_url)
    try:
        applied = await migrate(connection)
        assert applied == [migration.label for migration in SHIPPED]
        assert TABLES | {"schema_migrations"} <= await _tables(connection)
        rows = await connection.fetch(
            "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
        )
        assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
            (m.version, m.name, m.checksum) for m in SHIPPED
        ]
        assert all(r["applied_at"] is not None for r in rows)
    finally:
        await connection.close()


@pytest.mark.services
async def test_migrating_twice_applies_nothing_the_second_time(empty_database_url: str) -> None:
    connection = await asyncpg.connect(empty_database_url)
    try:
        assert await migrate(connection)
        assert await migrate(connection) == []
        assert await connection.fetchval("SELECT count(*) FROM schema_migrations") == len(SHIPPED)
    finally:
        await connection.close()


@pytest.mark.services
async def test_only_new_migrations_are_applied(empty_database_url: str) -> None:
    extra = Migration(9001, "add_a_table", "CREATE TABLE added_later (id int);")
    connection = await asyncpg.connect(empty_database_url)
    try:
        await migrate(connection)
        assert await migrate(connection, [*SHIPPED, extra]) == ["9001_add_a_table"]
        assert "added_later" in await _tables(connection)
    finally:
        await connection.close()


@pytest.mark.services
async def test_migration_changed_after_it_was_applied_is_refused(
    empty_database_url: str,
) -> None:
    connection = await asyncpg.connect(empty_database_url)
    try:
        await migrate(connection)
        first = SHIPPED[0]
        tampered = [replace(first, sql=first.sql + "\nCREATE TABLE sneaked_in (id int);\n")]
        with pytest.raises(ChangedMigrationError, match=first.label):
            await migrate(connection, tampered + SHIPPED[1:])
        assert "sneaked_in" not in await _tables(connection)
    finally:
        await connection.close()


@pytest.mark.services
async def test_database_migrated_by_a_newer_version_is_refused(empty_database_url: str) -> None:
    connection = await asyncpg.connect(empty_database_url)
    try:
        await migrate(connection)
        await connection.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')"
        )
        with pytest.raises(MigrationError, match="9999_future"):
            await migrate(connection)
    finally:
        await connection.close()


@pytest.mark.services
async def test_failing_migration_leaves_nothing_behind(empty_database_url: str) -> None:
    broken = Migration(
        9002, "broken", "CREATE TABLE half_done (id int);\nSELECT no_such_function();"
    )
    connection = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await migrate(connection, [*SHIPPED, broken])
        # The earlier migrations committed, the broken one rolled back whole.
        assert "half_done" not in await _tables(connection)
        versions = await connection.fetch("SELECT version FROM schema_migrations")
        assert {r["version"] for r in versions} == {m.version for m in SHIPPED}
        # ...and the lock was released: a fixed run goes through.
        fixed = replace(broken, sql="CREATE TABLE half_done (id int);")
        assert await migrate(connection, [*SHIPPED, fixed]) == ["9002_broken"]
    finally:
        await connection.close()


@pytest.mark.services
async def test_concurrent_migrations_apply_each_migration_once(empty_database_url: str) -> None:
    # A slow migration widens the window in which the second run would
    # race the first without the advisory lock.
    slow = Migration(9003, "slow", "SELECT pg_sleep(0.3); CREATE TABLE after_sleep (id int);")
    migrations = [*SHIPPED, slow]
    connections = [await asyncpg.connect(empty_database_url) for _ in range(2)]
    try:
        results = await asyncio.gather(*(migrate(c, migrations) for c in connections))
        applied = sorted(results, key=len)
        assert applied == [[], [m.label for m in migrations]]
        count = await connections[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(migrations)
    finally:
        for connection in connections:
            await connection.close()


@pytest.mark.services
async def test_migrate_borrows_a_connection_from_a_pool(empty_database_url: str) -> None:
    pool = await asyncpg.create_pool(empty_database_url, min_size=1, max_size=2)
    try:
        assert await migrate(pool) == [m.label for m in SHIPPED]
        assert await migrate(pool) == []
    finally:
        await pool.close()


async def test_message_bodies_are_stored_without_compression(db: asyncpg.Connection) -> None:
    """Migration 0008: packages are mostly compressed attachments; pglz only costs time."""
    storage = await db.fetchval(
        "SELECT attstorage FROM pg_attribute"
        " WHERE attrelid = 'messages'::regclass AND attname = 'body'"
    )
    assert storage == b"e"  # EXTERNAL: out of line, uncompressed ("char" comes as bytes)
