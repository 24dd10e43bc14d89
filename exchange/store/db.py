"""Connections to PostgreSQL: the pool the worker uses, and the connection type.

Every query function of :mod:`exchange.store.queries` takes a
:data:`Connection`: a plain connection or one borrowed from a pool, so the
caller decides the transaction (the worker: one per message).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from exchange.settings import (
    DEFAULT_DB_CONNECT_TIMEOUT_S,
    DatabaseHost,
    Settings,
    database_hosts,
)

Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""What the query functions take: a connection, or a pool's proxy for one."""

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
"""A pool of connections to the system of record."""

T = TypeVar("T")

# A deadlock or a serialization failure aborts one of the transactions
# involved, and PostgreSQL expects the application to run it again. Two
# workers meet so when one marks a batch of messages published (their
# deliveries, in the database's order) while the other takes the same
# deliveries one by one for the statuses of a group.
CONFLICT_ATTEMPTS = 4
CONFLICT_PAUSE_S = 0.02


def is_conflict(error: BaseException) -> bool:
    """Whether PostgreSQL aborted a transaction as a deadlock's or a serialization's victim."""
    return isinstance(
        error,
        asyncpg.exceptions.DeadlockDetectedError | asyncpg.exceptions.SerializationError,
    )


async def again_on_conflict(
    run: Callable[[], Awaitable[T]], *, attempts: int = CONFLICT_ATTEMPTS
) -> T:
    """``run()``, run again when PostgreSQL aborted it for a conflict (:func:`is_conflict`).

    ``run`` opens its own transaction (or is one statement): nothing of an
    aborted attempt is left. Up to ``attempts`` in all, after a random pause
    that grows with each, so that the two sides of a deadlock do not meet
    again; the last conflict is raised.
    """
    for attempt in range(1, attempts):
        try:
            return await run()
        except Exception as error:
            if not is_conflict(error):
                raise
        pause = random.uniform(0.5, 1.5) * CONFLICT_PAUSE_S * attempt  # noqa: S311 (a jitter)
        await asyncio.sleep(pause)
    return await run()


async def create_pool(settings: Settings, *, dsn: str | None = None) -> Pool:
    """A pool of up to ``settings.db_pool_size`` connections to ``settings.database_url``.

    ``dsn`` overrides the URL (tests point it at their own database). Close
    the pool with ``await pool.close()`` or use it as ``async with``.
    """
    url = dsn or settings.database_url
    # min_size=1: a worker that starts keeps one connection warm and opens
    # the others as concurrent messages need them. Every new connection
    # (a dead one is dropped and replaced when next acquired) goes through
    # the host list again: after a failover, to the new primary.
    pool = await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=settings.db_pool_size,
        reset=_nothing_to_reset,
        connect=HostList(url, settings.db_connect_timeout).connect,
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
    timeout = DEFAULT_DB_CONNECT_TIMEOUT_S if settings is None else settings.db_connect_timeout
    return await HostList(dsn, timeout).connect()


def host_url(url: str, host: DatabaseHost) -> str:
    """``url`` with ``host`` as its only host: user, database and parameters kept."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    login = f"{userinfo}@" if userinfo else ""
    query = [
        (name, value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if name not in ("host", "port")
    ]
    if host.host.startswith("/"):
        # A socket directory cannot be written in the authority.
        netloc = login
        query += [("host", host.host), ("port", str(host.port))]
    else:
        name = f"[{host.host}]" if ":" in host.host else quote(host.host, safe="")
        netloc = f"{login}{name}:{host.port}"
    # Written out: urlunsplit drops the "//" of an empty authority.
    encoded = f"?{urlencode(query)}" if query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{parts.path}{encoded}{fragment}"


class HostList:
    """Connections to the first host of a database URL that takes one, each host given its time.

    asyncpg tries the hosts of a multi-host URL in order, but within one
    timeout for them all: a first host that never answers (its machine gone,
    no TCP reset) uses it up, and the second is never tried. Here each host
    gets ``timeout`` seconds, and the next connection tries first the host
    that took the last one (the primary stays where it is until a failover).
    A host that answers "no" for good (a wrong password) stops the attempt.
    """

    def __init__(self, url: str, timeout: float) -> None:
        """The hosts of ``url``; ``timeout`` seconds for each."""
        hosts = database_hosts(url)
        self.urls = [url] if len(hosts) == 1 else [host_url(url, host) for host in hosts]
        self.timeout = timeout
        self._first = 0

    async def connect(self, *_dsn: object, **options: Any) -> asyncpg.Connection[asyncpg.Record]:
        """A connection to the first host that takes it (``options`` go to asyncpg.connect).

        Raises the last host's error when none does.
        """
        order = [self._first, *(i for i in range(len(self.urls)) if i != self._first)]
        error: BaseException | None = None
        for index in order:
            try:
                connection: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(
                    self.urls[index], timeout=self.timeout, **options
                )
            except Exception as failure:
                if not is_database_unreachable(failure):
                    raise
                error = failure
                continue
            self._first = index
            return connection
        assert error is not None
        raise error


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
