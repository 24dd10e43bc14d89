"""Connections to PostgreSQL: the pool the worker uses, and the connection type.

Every query function of :mod:`exchange.store.queries` takes a
:data:`Connection`: a plain connection or one borrowed from a pool, so the
caller decides the transaction (the worker: one per message).
"""

from __future__ import annotations

from typing import TypeAlias
from urllib.parse import unquote, urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from exchange.settings import Settings, database_hosts

Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""What the query functions take: a connection, or a pool's proxy for one."""

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
"""A pool of connections to the system of record."""


async def create_pool(settings: Settings, *, dsn: str | None = None) -> Pool:
    """A pool of up to ``settings.db_pool_size`` connections to ``settings.database_url``.

    ``dsn`` overrides the URL (tests point it at their own database). Close
    the pool with ``await pool.close()`` or use it as ``async with``.
    """
    # min_size=1: a worker that starts keeps one connection warm and opens
    # the others as concurrent messages need them.
    pool = await asyncpg.create_pool(
        dsn or settings.database_url,
        min_size=1,
        max_size=settings.db_pool_size,
        reset=_nothing_to_reset,
    )
    return pool


async def _nothing_to_reset(connection: asyncpg.Connection[asyncpg.Record]) -> None:
    """What a connection given back to the pool needs besides ending its transaction: nothing.

    asyncpg rolls back an open transaction itself, then by default sends
    ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every
    release: one more round trip per transaction, for session state the
    exchange never leaves on a pooled connection (its locks and settings are
    transaction-scoped, its cursors live in transactions, it never listens;
    the migration's session lock is released in a ``finally``).
    """


async def connect(settings: Settings | None = None, *, dsn: str | None = None) -> Connection:
    """One connection to ``dsn``, else ``settings.database_url``, for commands and tools."""
    if dsn is None:
        if settings is None:
            raise TypeError("connect() needs the settings or a dsn")
        dsn = settings.database_url
    return await asyncpg.connect(dsn)


def database_address(url: str) -> str:
    """Where ``url`` points, for a log line: ``host:port[,host:port...] database D``.

    Every host of a multi-host URL, in the order they are tried; never the password.
    """
    parts = urlsplit(url)
    # PostgreSQL's default database is the user's name.
    database = unquote(parts.path[1:]) or parts.username or "postgres"
    try:
        hosts = ",".join(str(host) for host in database_hosts(url))
    except ValueError:
        hosts = "(unreadable hosts)"
    return f"{hosts} database {database}"


def is_database_unreachable(error: BaseException) -> bool:
    """Whether connecting failed because the database is not there yet, not because it refused.

    Not there yet: no server listening, the server still starting, out of
    connection slots, the database not created yet, or no writable primary
    among the hosts of a ``target_session_attrs=read-write`` URL (a standby
    not promoted yet). A wrong password or an unknown role is an answer:
    trying again would not change it.
    """
    return isinstance(
        error,
        OSError
        | TimeoutError
        | asyncpg.CannotConnectNowError
        | asyncpg.TooManyConnectionsError
        | asyncpg.InvalidCatalogNameError
        | asyncpg.TargetServerAttributeNotMatched,
    )


async def create_database(server_url: str, name: str) -> None:
    """Create the database ``name`` on the server of ``server_url`` (``lienthong bench``'s own)."""
    server = await asyncpg.connect(server_url)
    try:
        await server.execute(f'CREATE DATABASE "{name}"')
    finally:
        await server.close()


async def drop_database(server_url: str, name: str) -> bool:
    """Drop the database ``name`` on the server of ``server_url``, its sessions ended first.

    Returns whether it existed.
    """
    server = await asyncpg.connect(server_url)
    try:
        if not await server.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        await server.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        return True
    finally:
        await server.close()
