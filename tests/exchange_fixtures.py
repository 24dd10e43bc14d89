"""A whole exchange for one test: its own vhost, database, CA, agencies and workers.

A pytest plugin (``pytest_plugins = [..., "tests.exchange_fixtures"]``)
built on ``tests.broker_fixtures`` and ``tests.db_fixtures``. Fixture:

* ``exchange``: an :class:`ExchangeUnderTest`, a
  :class:`exchange.demo.LocalExchange` on a fresh vhost and a fresh migrated
  database, with a CA in a temporary keys directory; its workers log in as
  a role of lienthong_worker (``worker_database_url``), not the superuser. Agencies registered
  through it get broker users named ``t<random>-<code>`` (RabbitMQ users are
  global to the broker, so bare codes would collide with a parallel run or
  the demo); the users and the vhost are deleted after the test, the
  database is dropped by ``database_url``.

The fixture enters :func:`isolated_exchange`, one exchange per test; a
module whose tests share one exchange (the hostile corpus) enters it from a
module-scoped fixture of its own, with the settings it needs.

Also helpers the exchange tests share: waiting on the database with a
deadline, queue depths, reading an agency's queues through its own client,
and :class:`RecordingClient`, which keeps the exact bytes an agency published.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from exchange.agency import AgencyCode
from exchange.broker.admin import BrokerAdmin
from exchange.broker.connection import connect
from exchange.broker.topology import WORK_QUEUES
from exchange.client import AgencyClient, InboxItem, Item, StatusItem
from exchange.demo import LocalAgency, LocalExchange
from exchange.settings import Settings, url_user
from tests.broker_fixtures import TEST_VHOST_PREFIX, amqp_url_for

ItemT = TypeVar("ItemT", bound=Item)

# How long a test waits for the workers to decide what it published. A
# message takes milliseconds; the margin is for a loaded CI machine.
SETTLE_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05


class RecordingClient(AgencyClient):
    """An :class:`AgencyClient` that remembers every package it published.

    ``published`` holds ``(bytes, recipients)`` per submit, in order, so a
    test can compare what arrives with exactly what was sent, and send the
    same bytes again.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As :class:`AgencyClient`."""
        super().__init__(*args, **kwargs)
        self.published: list[tuple[bytes, list[str]]] = []

    async def submit(self, package: bytes, recipients: Iterable[AgencyCode | str]) -> list[str]:
        """Publish as the agency would, and remember the bytes."""
        targets = [str(r) for r in recipients]
        self.published.append((package, targets))
        return await super().submit(package, targets)


def recording_client(agency: LocalAgency) -> RecordingClient:
    """A recording client logged in as ``agency``."""
    return RecordingClient(
        agency.code, agency.amqp_url, credential=agency.credential, organization=agency.organization
    )


@dataclass
class ExchangeUnderTest:
    """A :class:`LocalExchange` in an isolated vhost and database, cleaned up after."""

    local: LocalExchange
    admin: BrokerAdmin
    vhost: str
    # Prefix of this test's broker users: t<random>-<code>.
    user_prefix: str
    broker_users: list[str] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        """The settings the workers run with (guest into the vhost, the test database)."""
        return self.local.settings

    @property
    def worker_settings(self) -> Settings:
        """The settings with the database login the workers use (a role of lienthong_worker)."""
        url = self.local.worker_database_url
        return (
            self.settings if url is None else self.settings.model_copy(update={"database_url": url})
        )

    @property
    def agencies(self) -> dict[AgencyCode, LocalAgency]:
        """Every agency registered so far."""
        return self.local.agencies

    def broker_user_for(self, code: str) -> str:
        """The broker user name an agency gets in this test."""
        return f"{self.user_prefix}-{code}"

    async def register(
        self, code: str, name: str | None = None, *, subscriptions: Sequence[str] = ()
    ) -> LocalAgency:
        """Register an agency with a unique broker user (deleted after the test)."""
        user = self.broker_user_for(code)
        # Remembered before the call: a half-made registration is cleaned up too.
        self.broker_users.append(user)
        return await self.local.register(
            code, name or f"Cơ quan {code}", broker_user=user, subscriptions=subscriptions
        )

    def workers(self, count: int = 2) -> contextlib.AbstractAsyncContextManager[None]:
        """Run ``count`` workers for the duration of an ``async with`` block.

        Leaving the block stops them after they finished what they hold: each
        message they were handed is acked or back in the work queue by then.
        """
        return self.local.workers(count)

    # -- the database -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def db(self) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
        """A connection to the exchange's database."""
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            yield conn
        finally:
            await conn.close()

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """The rows of one query."""
        async with self.db() as conn:
            return await conn.fetch(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        """The first value of one query."""
        async with self.db() as conn:
            return await conn.fetchval(query, *args)

    async def wait_settled(self, messages: int, *, timeout: float = SETTLE_TIMEOUT_S) -> None:
        """Wait until ``messages`` messages are decided and their effects confirmed.

        ``published_at`` is set only after the broker confirmed every
        delivery and receipt of a message, so from then on they are in their
        queues. Fails (with what is missing) after ``timeout`` seconds.
        """

        async def settled() -> tuple[bool, str]:
            rows = await self.fetch(
                "SELECT count(*) AS received,"
                " count(*) FILTER (WHERE published_at IS NOT NULL) AS settled"
                " FROM message_state"
            )
            received, done = rows[0]["received"], rows[0]["settled"]
            return done >= messages, f"{done} of {messages} messages settled ({received} received)"

        await wait_for(settled, timeout=timeout)

    # -- the broker -------------------------------------------------------------

    async def queue_depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (nobody consumes it while the test looks)."""
        return sum(await self._ready_in((queue,)))

    async def work_depth(self) -> int:
        """Messages waiting for a worker: in the work queue and every lane."""
        return sum(await self._ready_in(WORK_QUEUES))

    async def _ready_in(self, queues: tuple[str, ...]) -> list[int]:
        """Messages ready in each of ``queues``, read over one connection."""
        connection = await connect(self.settings.amqp_url, name="lienthong-test")
        try:
            channel = await connection.channel()
            counts = []
            for queue in queues:
                declared = await channel.declare_queue(queue, passive=True)
                counts.append(int(declared.declaration_result.message_count or 0))
            return counts
        finally:
            await connection.close()

    async def inbox_of(self, agency: LocalAgency) -> list[InboxItem]:
        """What waits in an agency's inbox, read and acked by the agency's own client.

        Call once the messages are settled: it reads as many items as the
        queue holds at the call, so it needs no idle timeout.
        """
        return await self._take(agency, f"lienthong.inbox.{agency.code}", AgencyClient.inbox)

    async def statuses_of(self, agency: LocalAgency) -> list[StatusItem]:
        """What waits on an agency's status queue, read and acked by its own client."""
        return await self._take(agency, f"lienthong.status.{agency.code}", AgencyClient.statuses)

    async def _take(
        self,
        agency: LocalAgency,
        queue: str,
        source: Callable[..., AsyncIterator[ItemT]],
    ) -> list[ItemT]:
        expected = await self.queue_depth(queue)
        items: list[ItemT] = []
        if expected == 0:
            return items
        async with (
            agency.client() as client,
            contextlib.aclosing(source(client, idle_timeout=SETTLE_TIMEOUT_S)) as stream,
        ):
            async for item in stream:
                items.append(item)
                await item.ack()
                if len(items) == expected:
                    break
        return items


async def wait_for(
    condition: Callable[[], Awaitable[tuple[bool, str]]], *, timeout: float = SETTLE_TIMEOUT_S
) -> None:
    """Poll ``condition`` until it holds; fail with its last explanation at the deadline.

    ``condition`` returns ``(holds, what it saw)``.
    """
    deadline = time.monotonic() + timeout
    while True:
        holds, seen = await condition()
        if holds:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:.0f} s: {seen}")
        await asyncio.sleep(POLL_INTERVAL_S)


@contextlib.asynccontextmanager
async def isolated_exchange(
    broker_admin: BrokerAdmin,
    database_url: str,
    keys_dir: Path,
    *,
    worker_database_url: str | None = None,
    amqp_base_url: str | None = None,
    **overrides: Any,
) -> AsyncIterator[ExchangeUnderTest]:
    """A prepared exchange in a vhost of its own, its CA in ``keys_dir``; no agencies yet.

    It runs on ``database_url`` (migrated; the caller drops it) with the
    default settings but for ``overrides`` (``max_package_bytes=...``), on
    the broker of ``amqp_base_url`` (default ``LIENTHONG_AMQP_URL``; a
    cluster's URL names every node) whose management API is
    ``broker_admin``; its workers log in with ``worker_database_url`` when
    given (a role of lienthong_worker: ``tests.db_fixtures.worker_database_url``).
    On leaving, the vhost and the broker users of the agencies registered
    through it are deleted.
    """
    token = uuid.uuid4().hex[:8]
    vhost = f"{TEST_VHOST_PREFIX}exchange-{token}"
    await broker_admin.create_vhost(
        vhost,
        description="pytest tests.exchange_fixtures",
        grant=(broker_admin.user, url_user(amqp_base_url or Settings().amqp_url)),
    )
    under_test: ExchangeUnderTest | None = None
    try:
        settings = Settings().model_copy(
            update={
                "amqp_url": amqp_url_for(vhost, amqp_base_url),
                "database_url": database_url,
                **overrides,
            }
        )
        local = LocalExchange(settings, keys_dir, worker_database_url=worker_database_url)
        under_test = ExchangeUnderTest(local, broker_admin, vhost, user_prefix=f"t{token}")
        await local.prepare()
        yield under_test
    finally:
        if under_test is not None:
            for user in under_test.broker_users:
                await broker_admin.delete_user(user)
        await broker_admin.delete_vhost(vhost)


@pytest.fixture
async def exchange(
    broker_admin: BrokerAdmin, database_url: str, worker_database_url: str, tmp_path: Path
) -> AsyncIterator[ExchangeUnderTest]:
    """A prepared exchange of this test's own: vhost, database, CA; no agencies yet.

    Its workers log in as a role of lienthong_worker, as they must off this
    host; the test's own queries (``exchange.db()``) as the superuser.
    """
    async with isolated_exchange(
        broker_admin, database_url, tmp_path / "keys", worker_database_url=worker_database_url
    ) as under_test:
        yield under_test
