"""Versioned schema migrations: numbered SQL files applied once, in order.

The files are ``exchange/store/migrations/NNNN_name.sql``. :func:`migrate`
applies those the database has not seen, each in its own transaction, and
records each in ``schema_migrations`` with the SHA-256 of its text. The whole
run holds a PostgreSQL advisory lock, so workers starting together queue up
behind one another: the first applies, the others find nothing left to do.

An applied migration is history: if its file changes afterwards, the schema
in the database no longer says what the file says, and :func:`migrate`
refuses to go on (:class:`ChangedMigrationError`). Fix it with a new
migration, never by editing an old one.

Migrations run as the schema's owner (``lienthong init`` with
``LIENTHONG_OWNER_DATABASE_URL``). A process working as a role that may not
change the schema (a worker, a gateway: :mod:`exchange.store.roles`) may
still call :func:`migrate`: with nothing to apply it changes nothing, and
with something to apply it stops with a :class:`MigrationError` that says to
run ``lienthong init`` as the owner.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import asyncpg

from exchange.installation import BrokenInstallation
from exchange.store.db import Connection

# Session-level advisory lock key of the migration run. Any constant works as
# long as nothing else in the database uses it: these are the first eight
# bytes of SHA-256("lienthong.migrate"), as a signed 64-bit integer.
MIGRATION_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"lienthong.migrate").digest()[:8], "big", signed=True
)

_FILE_NAME = re.compile(r"(?P<version>[0-9]{4})_(?P<name>[a-z0-9_]+)\.sql")

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migrations cannot be applied; the message says why and what to do."""


class ChangedMigrationError(MigrationError):
    """An applied migration's file was changed after it was applied."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its number, its name and its SQL."""

    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        """The file name without ``.sql``, e.g. ``0001_system_of_record``."""
        return f"{self.version:04d}_{self.name}"

    @property
    def checksum(self) -> str:
        """SHA-256 of the SQL, with line endings normalised (a Windows checkout is no change)."""
        return hashlib.sha256(self.sql.replace("\r\n", "\n").encode("utf-8")).hexdigest()


def load_migrations(folder: Traversable | None = None) -> list[Migration]:
    """Every migration in ``folder`` (default: those shipped with the package), in order.

    Raises :class:`MigrationError` for a misnamed file or two files with one
    number, and :class:`~exchange.installation.BrokenInstallation` when the
    shipped migrations are missing or unreadable.
    """
    if folder is None:
        shipped = resources.files("exchange.store") / "migrations"
        try:
            migrations = _load(shipped)
        except OSError as error:
            raise BrokenInstallation(
                f"cannot read the migrations in {shipped} ({error.strerror or error}); "
                "reinstall lienthong"
            ) from None
        if not migrations:
            raise BrokenInstallation(f"no migrations in {shipped}; reinstall lienthong")
        return migrations
    return _load(folder)


def _load(folder: Traversable) -> list[Migration]:
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name!r} is not named NNNN_name.sql "
                "(four digits, an underscore, lower-case letters, digits and underscores)"
            )
        version = int(match["version"])
        if version in found:
            raise MigrationError(
                f"migrations {found[version].label!r} and {entry.name!r} share number {version}"
            )
        found[version] = Migration(version, match["name"], entry.read_text(encoding="utf-8"))
    return [found[version] for version in sorted(found)]


async def migrate(
    target: asyncpg.Pool | Connection, migrations: list[Migration] | None = None
) -> list[str]:
    """Apply the migrations the database lacks; return their labels, in order.

    ``target`` is a pool (a connection is borrowed for the run) or a
    connection that is not inside a transaction. ``migrations`` defaults to
    those shipped with the package; tests pass their own.
    """
    if isinstance(target, asyncpg.Pool):
        async with target.acquire() as connection:
            return await _migrate(connection, migrations)
    return await _migrate(target, migrations)


async def _migrate(connection: Connection, migrations: list[Migration] | None) -> list[str]:
    if migrations is None:
        migrations = load_migrations()
    # Session-level, not transaction-level: the lock must outlive the one
    # transaction per migration. Released in `finally`, and by PostgreSQL
    # itself if this process dies holding it.
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        # Under the lock: two workers creating the ledger at once would
        # otherwise collide even with IF NOT EXISTS. Only when missing: a
        # role that may not create in the schema fails even IF NOT EXISTS.
        if not await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
            try:
                await connection.execute(_CREATE_LEDGER)
            except asyncpg.InsufficientPrivilegeError as error:
                raise await _not_the_owner(connection, "create the schema", error) from None
        applied = {
            row["version"]: (row["name"], row["checksum"])
            for row in await connection.fetch(
                "SELECT version, name, checksum FROM schema_migrations"
            )
        }
        _check_history(applied, migrations)
        done: list[str] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            try:
                async with connection.transaction():
                    await connection.execute(migration.sql)
                    await connection.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.InsufficientPrivilegeError as error:
                raise await _not_the_owner(
                    connection, f"apply migration {migration.label}", error
                ) from None
            done.append(migration.label)
        return done
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def _not_the_owner(
    connection: Connection, what: str, error: asyncpg.InsufficientPrivilegeError
) -> MigrationError:
    role = await connection.fetchval("SELECT current_user")
    return MigrationError(
        f"role {role!r} may not {what} ({error}); migrations run as the schema's owner: "
        "`lienthong init` with LIENTHONG_OWNER_DATABASE_URL (docs/operations.md)"
    )


def _check_history(applied: dict[int, tuple[str, str]], migrations: list[Migration]) -> None:
    """Refuse to run when the database's history and the files disagree."""
    known = {migration.version: migration for migration in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {version:04d}_{name}, which this version of "
                "lienthong does not know: the database was migrated by a newer version; "
                "upgrade lienthong"
            )
        if migration.checksum != checksum:
            raise ChangedMigrationError(
                f"migration {migration.label} was changed after it was applied to this "
                f"database (checksum {checksum[:12]}... recorded, {migration.checksum[:12]}... "
                "in the file); restore the file and put the change in a new migration"
            )
