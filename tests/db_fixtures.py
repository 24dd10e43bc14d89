"""PostgreSQL for tests: each test gets a fresh, migrated database of its own.

A pytest plugin (``pytest_plugins = ["tests.db_fixtures"]``). Fixtures:

* ``postgres_url``: the server's DSN from the settings
  (``LIENTHONG_DATABASE_URL``); tests skip when the server does not answer,
  except under CI, where a missing database is a failure;
* ``database_url``: a new database for this test with the schema migrated,
  dropped after it. Cloned from a template migrated once per session, which
  takes a fraction of the time of migrating each time;
* ``module_database_url``: one migrated database shared by the tests of a
  module, for suites whose tests keep out of each other's way (their own
  agency codes) and would rather not pay for a database each;
* ``empty_database_url``: a new database with nothing in it (migration tests);
* ``db_pool`` and ``db``: an asyncpg pool and a connection on ``database_url``,
  opened in the test's own event loop;
* ``worker_database_url``: ``database_url`` logged in as a login role of the
  group ``lienthong_worker`` (not the superuser the other fixtures use), as a
  worker off this host must be. Roles are global to the server: each test
  gets one of its own (``lienthong_test_...``), dropped after it.

The databases are created and dropped from a helper thread with its own
event loop, so these fixtures work with any event-loop scope of the tests.
"""

from __future__ import annotations

import asyncio
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from exchange.settings import Settings
from exchange.store import Connection, Pool, migrate
from exchange.store.db import connect, create_pool
from exchange.store.roles import WORKER_GROUP, create_login, login_url

T = TypeVar("T")

# Every database the tests create starts with this, so a leftover one (from
# a test run that was killed) is easy to recognise and drop by hand.
TEST_DATABASE_PREFIX = "lienthong_test_"


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion in a thread of its own, from synchronous code.

    Never touches the event loop of the calling thread, which pytest-asyncio owns.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def database_dsn(server_url: str, database: str) -> str:
    """The DSN of another database on the same server (same user, host, options)."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + database))


def unique_database_name(purpose: str = "") -> str:
    """A database name no other test, run or process uses."""
    middle = f"{purpose}_" if purpose else ""
    return f"{TEST_DATABASE_PREFIX}{middle}{os.getpid()}_{uuid.uuid4().hex[:12]}"


async def create_database(server_url: str, name: str, template: str | None = None) -> str:
    """Create database ``name`` (a copy of ``template`` if given); return its DSN."""
    admin = await asyncpg.connect(server_url)
    try:
        # Identifiers cannot be query parameters; the names are our own.
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await admin.close()
    return database_dsn(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name``, disconnecting whatever is still connected to it."""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def create_login_role(server_url: str, group: str = WORKER_GROUP) -> tuple[str, str]:
    """A new login role in ``group`` with a name no other test uses: ``(name, password)``."""
    name = unique_database_name(group.removeprefix("lienthong_"))
    password = uuid.uuid4().hex
    admin = await asyncpg.connect(server_url)
    try:
        await create_login(admin, name, group, password)
    finally:
        await admin.close()
    return name, password


async def drop_login_role(server_url: str, name: str) -> None:
    """Drop a login role of :func:`create_login_role` (it owns nothing, holds no rights)."""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
    finally:
        await admin.close()


def as_role(dsn: str, role: str, password: str) -> str:
    """``dsn`` logging in as ``role``."""
    return login_url(dsn, role, password)


async def _migrate_database(dsn: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        return await migrate(connection)
    finally:
        await connection.close()


async def _ping(url: str) -> None:
    connection = await asyncpg.connect(url, timeout=5)
    await connection.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL server the tests use (LIENTHONG_DATABASE_URL)."""
    url = Settings().database_url
    try:
        run_sync(_ping(url))
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        message = f"PostgreSQL does not answer at {url}: {error}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url


class _BackgroundDropper:
    """Drops test databases in a background thread while the next tests run.

    A drop waits on the server's disk (up to a second under load) and nothing
    needs the database once its test is over.
    """

    def __init__(self, server_url: str) -> None:
        self._server_url = server_url
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drop-database")
        self._pending: list[Future[None]] = []

    def drop(self, name: str) -> None:
        """Drop database ``name`` soon."""
        self._pending.append(
            self._executor.submit(asyncio.run, drop_database(self._server_url, name))
        )

    def finish(self) -> None:
        """Wait for every drop; a failed one is reported, since it leaves a database behind."""
        self._executor.shutdown(wait=True)
        failures = [str(f.exception()) for f in self._pending if f.exception() is not None]
        if failures:
            warnings.warn(f"test databases left behind: {failures}", stacklevel=1)


@pytest.fixture(scope="session")
def _dropper(postgres_url: str) -> Iterator[_BackgroundDropper]:
    dropper = _BackgroundDropper(postgres_url)
    yield dropper
    dropper.finish()


@pytest.fixture(scope="session")
def migrated_template(postgres_url: str) -> Iterator[str]:
    """The name of a database migrated once per session, cloned by ``database_url``."""
    name = unique_database_name("template")
    dsn = run_sync(create_database(postgres_url, name))
    try:
        run_sync(_migrate_database(dsn))
        yield name
    finally:
        run_sync(drop_database(postgres_url, name))


@pytest.fixture
def database_url(
    postgres_url: str, migrated_template: str, _dropper: _BackgroundDropper
) -> Iterator[str]:
    """The DSN of a fresh database with the current schema, dropped after the test."""
    name = unique_database_name()
    dsn = run_sync(create_database(postgres_url, name, template=migrated_template))
    try:
        yield dsn
    finally:
        _dropper.drop(name)


@pytest.fixture(scope="module")
def module_database_url(postgres_url: str, migrated_template: str) -> Iterator[str]:
    """The DSN of a database with the current schema shared by one test module."""
    name = unique_database_name("module")
    dsn = run_sync(create_database(postgres_url, name, template=migrated_template))
    try:
        yield dsn
    finally:
        run_sync(drop_database(postgres_url, name))


@pytest.fixture
def empty_database_url(postgres_url: str, _dropper: _BackgroundDropper) -> Iterator[str]:
    """The DSN of a fresh, empty database (no schema), dropped after the test."""
    name = unique_database_name("empty")
    dsn = run_sync(create_database(postgres_url, name))
    try:
        yield dsn
    finally:
        _dropper.drop(name)


@pytest.fixture
async def db_pool(database_url: str) -> AsyncIterator[Pool]:
    """An asyncpg pool on this test's database."""
    pool = await create_pool(Settings(), dsn=database_url)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Connection]:
    """One connection to this test's database."""
    connection = await connect(dsn=database_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def worker_database_url(postgres_url: str, database_url: str) -> Iterator[str]:
    """``database_url`` as a login role of lienthong_worker of this test's own."""
    name, password = run_sync(create_login_role(postgres_url, WORKER_GROUP))
    try:
        yield as_role(database_url, name, password)
    finally:
        run_sync(drop_login_role(postgres_url, name))
