"""A starting worker waiting for its services: the retry loop and what it says, without I/O."""

from __future__ import annotations

import asyncio
import logging
import time

import aiormq.exceptions
import asyncpg
import pytest

from exchange import worker
from exchange.broker.connection import broker_address, is_broker_unreachable
from exchange.store.db import database_address, is_database_unreachable
from exchange.worker import StartupError, open_when_ready

ADDRESS = "127.0.0.1:5432 database lienthong"


class Service:
    """Fails ``failures`` times with ``error``, then answers ``"open"``."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def open(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "open"


@pytest.fixture(autouse=True)
def short_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "STARTUP_FIRST_PAUSE_S", 0.001)
    monkeypatch.setattr(worker, "STARTUP_MOST_PAUSE_S", 0.004)


async def wait_for(service: Service, wait_s: float, stop: asyncio.Event | None = None) -> object:
    return await open_when_ready(
        "PostgreSQL",
        ADDRESS,
        service.open,
        is_database_unreachable,
        wait_s=wait_s,
        since=time.monotonic(),
        stop=stop or asyncio.Event(),
    )


async def test_a_service_not_up_yet_is_tried_again_with_a_line_each_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = Service(3, ConnectionRefusedError(111, "Connection refused"))
    with caplog.at_level(logging.WARNING, logger="lienthong.worker"):
        assert await wait_for(service, 60) == "open"
    assert service.calls == 4
    lines = [record for record in caplog.records if record.name == "lienthong.worker"]
    assert [record.__dict__["attempt"] for record in lines] == [1, 2, 3]
    assert {record.__dict__["service"] for record in lines} == {"PostgreSQL"}
    for number, record in enumerate(lines, 1):
        assert record.getMessage().startswith(
            f"cannot reach PostgreSQL at {ADDRESS} yet (attempt {number}: "
            "[Errno 111] Connection refused); trying again in "
        )


async def test_a_database_not_created_yet_is_waited_for() -> None:
    service = Service(1, asyncpg.InvalidCatalogNameError('database "lienthong" does not exist'))
    assert await wait_for(service, 60) == "open"


async def test_with_no_wait_the_first_failure_is_one_sentence(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = Service(1, ConnectionRefusedError(111, "Connection refused"))
    with pytest.raises(StartupError) as raised:
        await wait_for(service, 0)
    assert str(raised.value) == (
        f"cannot reach PostgreSQL at {ADDRESS} ([Errno 111] Connection refused); is it "
        "running? (LIENTHONG_STARTUP_WAIT sets how long a starting worker waits for it)"
    )
    assert service.calls == 1
    assert not [record for record in caplog.records if record.name == "lienthong.worker"]


async def test_the_wait_ends_with_one_sentence_naming_it() -> None:
    service = Service(10**9, ConnectionRefusedError(111, "Connection refused"))
    with pytest.raises(
        StartupError, match=r"at 127\.0\.0\.1:5432 database lienthong after 0\.05 s"
    ):
        await wait_for(service, 0.05)
    assert service.calls > 1


async def test_a_refused_login_is_not_waited_for() -> None:
    service = Service(1, asyncpg.InvalidPasswordError("password authentication failed"))
    with pytest.raises(asyncpg.InvalidPasswordError):
        await wait_for(service, 60)
    assert service.calls == 1


async def test_a_stop_while_waiting_ends_the_wait_without_an_error() -> None:
    stop = asyncio.Event()
    stop.set()
    service = Service(10**9, ConnectionRefusedError(111, "Connection refused"))
    assert await wait_for(service, 60, stop) is None
    assert service.calls == 1


def test_addresses_name_host_port_and_database_or_vhost_never_the_password() -> None:
    assert (
        database_address("postgresql://lt:secret@db.example:6432/lienthong")
        == "db.example:6432 database lienthong"
    )
    assert database_address("postgresql://postgres@127.0.0.1/") == (
        "127.0.0.1:5432 database postgres"
    )
    assert broker_address("amqp://w:secret@mq.example:5671/lien%2Fthong") == (
        "mq.example:5671 vhost lien/thong"
    )
    assert broker_address("amqp://guest:guest@127.0.0.1/") == "127.0.0.1:5672 vhost /"


def test_what_counts_as_not_there_yet() -> None:
    assert is_database_unreachable(ConnectionRefusedError())
    assert is_database_unreachable(
        asyncpg.CannotConnectNowError("the database system is starting up")
    )
    assert not is_database_unreachable(asyncpg.InvalidPasswordError("no"))
    assert is_broker_unreachable(aiormq.exceptions.AMQPConnectionError(111, "refused"))
    assert is_broker_unreachable(ConnectionRefusedError())
    assert not is_broker_unreachable(
        aiormq.exceptions.ProbableAuthenticationError("ACCESS_REFUSED")
    )
