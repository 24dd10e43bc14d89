"""Pytest fixtures for tests that talk to the real RabbitMQ, each in its own vhost.

Load as a plugin (``pytest_plugins = ["tests.broker_fixtures"]`` in
tests/conftest.py). Every test module gets a vhost of its own, created through
the management API with a unique name and deleted with everything in it at
the end, so tests never see each other's queues or messages, even when run
in parallel; agency users (which RabbitMQ keeps outside vhosts) get unique
names and are deleted too.

Fixtures:
- ``broker_admin``: a :class:`BrokerAdmin` for ``LIENTHONG_RABBITMQ_API_URL``
  (the tests skip when the management API does not answer).
- ``make_vhost``: creates more isolated vhosts on demand within a module.
- ``broker_vhost``: the module's vhost (``.name``, ``.amqp_url``).
- ``amqp_connection``: an aio-pika robust connection to ``broker_vhost``.
- ``make_agency_user``: provisions agency users in ``broker_vhost``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import secrets
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from exchange.agency import AgencyCode
from exchange.broker.admin import AgencyUser, BrokerAdmin, BrokerAdminError
from exchange.broker.connection import connect
from exchange.broker.topology import WORK_QUEUES
from exchange.registry import url_for_user
from exchange.settings import Settings, url_user

# Every test vhost starts with this, so a crashed run's leftovers are easy to
# find and delete (`rabbitmqctl list_vhosts | grep lienthong-test-`).
TEST_VHOST_PREFIX = "lienthong-test-"

T = TypeVar("T")


def _run(call: Callable[[], Awaitable[T]]) -> T:
    """Run one admin call to completion from synchronous code.

    In a thread of its own, so that it works both in a fixture and inside an
    async test whose event loop is running (it blocks that loop for the few
    milliseconds an admin call takes).
    """

    async def wrapper() -> T:
        return await call()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, wrapper()).result()


async def take_waiting(channel: AbstractChannel) -> list[AbstractIncomingMessage]:
    """Take (and ack) every message waiting for a worker: the work queue and every lane."""
    taken = []
    for name in WORK_QUEUES:
        queue = await channel.get_queue(name)
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            taken.append(message)
    return taken


def amqp_url_for(vhost: str, base_url: str | None = None) -> str:
    """``base_url`` (default ``LIENTHONG_AMQP_URL``) pointed at ``vhost``."""
    parts = urllib.parse.urlsplit(base_url or Settings().amqp_url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(vhost, safe="")))


@dataclass(frozen=True)
class BrokerVhost:
    """An isolated vhost: its name and the AMQP URL that connects into it as guest."""

    name: str
    amqp_url: str


@dataclass(frozen=True)
class ProvisionedAgency:
    """An agency user made for a test: its name, password and the URL to log in with."""

    code: AgencyCode
    user: AgencyUser
    password: str
    amqp_url: str

    @property
    def name(self) -> str:
        """The broker user name (what ``user_id`` must be)."""
        return self.user.name


@pytest.fixture(scope="session")
def broker_admin() -> BrokerAdmin:
    """The management API client; skips the test when the API does not answer."""
    admin = BrokerAdmin.from_settings(Settings())
    try:
        _run(admin.overview)
    except BrokerAdminError as error:
        pytest.skip(f"RabbitMQ's management API is not available: {error}")
    return admin


@pytest.fixture(scope="module")
def make_vhost(
    broker_admin: BrokerAdmin, request: pytest.FixtureRequest
) -> Iterator[Callable[[], BrokerVhost]]:
    """A factory of fresh vhosts (guest has full access), all deleted after the module."""
    created: list[str] = []
    module = request.module.__name__.rsplit(".", 1)[-1]

    def make() -> BrokerVhost:
        name = f"{TEST_VHOST_PREFIX}{module}-{uuid.uuid4().hex[:8]}"
        description = f"pytest {request.module.__name__}"
        grant = (broker_admin.user, url_user(Settings().amqp_url))
        _run(lambda: broker_admin.create_vhost(name, description=description, grant=grant))
        created.append(name)
        return BrokerVhost(name, amqp_url_for(name))

    yield make
    for name in created:
        _run(partial(broker_admin.delete_vhost, name))


@pytest.fixture(scope="module")
def broker_vhost(make_vhost: Callable[[], BrokerVhost]) -> BrokerVhost:
    """The test module's own vhost, deleted with everything in it afterwards."""
    return make_vhost()


@pytest.fixture
async def amqp_connection(broker_vhost: BrokerVhost) -> AsyncIterator[AbstractRobustConnection]:
    """A robust aio-pika connection into the module's vhost, closed after the test."""
    connection = await connect(broker_vhost.amqp_url, name="pytest")
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def make_agency_user(
    broker_admin: BrokerAdmin, broker_vhost: BrokerVhost
) -> Iterator[Callable[[str], ProvisionedAgency]]:
    """A factory provisioning agency users in ``broker_vhost``, deleted after the test.

    Users are global to the broker, so each gets a unique name
    (``test-<random>-<code>``) rather than the bare code.
    """
    created: list[str] = []

    def make(code: str) -> ProvisionedAgency:
        agency = AgencyCode.parse(code)
        name = f"test-{uuid.uuid4().hex[:8]}-{agency}"
        password = secrets.token_urlsafe(16)
        created.append(name)
        user = _run(
            lambda: broker_admin.provision_agency_user(
                agency, password, vhost=broker_vhost.name, user=name
            )
        )
        # Over the exchange's TLS (its CA and client certificate), logging in
        # with the agency's password.
        url = url_for_user(broker_vhost.amqp_url, name, password)
        return ProvisionedAgency(agency, user, password, url)

    yield make
    for name in created:
        _run(partial(broker_admin.delete_user, name))
