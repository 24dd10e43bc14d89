"""A worker's start: it waits for services not up yet, and refuses to run without its schemas.

Real ``lienthong worker`` processes on the real RabbitMQ and PostgreSQL: a
worker pointed at a database that does not exist yet, or at a port where
nothing listens yet, logs a line each attempt and keeps trying; once the
database is created, or a forwarder to RabbitMQ opens on that port, it
starts consuming. With ``LIENTHONG_STARTUP_WAIT=0`` it exits 2 at once with
one line. A worker whose schema files are missing never takes a message:
it refuses to start, and one whose files vanish while it runs gives the
message back and stops, never retrying nor parking it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from exchange.broker.topology import PARKED_QUEUE, RETRY_TIERS
from exchange.checks import schema
from exchange.demo import demo_document
from exchange.installation import BrokenInstallation
from exchange.settings import Settings
from exchange.worker import run_workers
from tests.crash.supervisor import (
    READY_TEXT,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    worker_command,
    worker_env,
)
from tests.db_fixtures import create_database, drop_database, unique_database_name
from tests.exchange_fixtures import ExchangeUnderTest

pytestmark = pytest.mark.services

WAITING_TEXT = "cannot reach "
# Attempts a test sees fail before it brings the service up: more than one
# proves the worker keeps trying rather than failing on the first.
ATTEMPTS_BEFORE_SERVICE = 3


@dataclass
class WorkerProcess:
    """A ``lienthong worker`` process whose log lines (JSON, stderr) the test reads as they come."""

    process: asyncio.subprocess.Process
    lines: list[dict[str, object] | str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    @contextlib.asynccontextmanager
    async def started(cls, env: dict[str, str]) -> AsyncIterator[WorkerProcess]:
        """Start the worker; on leaving, stop it (SIGTERM) if it still runs."""
        process = await asyncio.create_subprocess_exec(
            *worker_command(),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        worker = cls(process)
        reader = asyncio.create_task(worker._read())
        try:
            yield worker
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
                except TimeoutError:
                    process.kill()
                    await process.wait()
            await reader

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                self.lines.append(json.loads(text))
            except ValueError:
                self.lines.append(text)
            self._changed.set()
        self._changed.set()

    def messages(self, text: str) -> list[str]:
        """The log messages that contain ``text``."""
        found = [line.get("message", "") for line in self.lines if isinstance(line, dict)]
        return [str(message) for message in found if text in str(message)]

    async def wait_until(self, holds: Callable[[], bool], what: str) -> None:
        """Wait until ``holds()`` (checked at each new line); fail if the process ends first."""
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while not holds():
            if self.process.stderr is not None and self.process.stderr.at_eof():
                await self.process.wait()
                pytest.fail(
                    f"the worker exited {self.process.returncode} before {what}: {self.lines}"
                )
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                pytest.fail(f"gave up waiting for {what}: {self.lines}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def stop(self) -> tuple[int, str]:
        """SIGTERM; the exit status and what it printed on stdout."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.stdout is not None
        out = await asyncio.wait_for(self.process.stdout.read(), STOP_TIMEOUT_S)
        return await self.process.wait(), out.decode()


async def run_to_end(env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``lienthong worker`` until it exits by itself: status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *worker_command(), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), START_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def free_port() -> int:
    """A TCP port nothing listens on (the test opens it later itself)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def with_port(url: str, port: int) -> str:
    """``url`` pointed at 127.0.0.1:``port``, user, password and path kept."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def with_database(url: str, name: str) -> str:
    """``url`` with another database name."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@contextlib.asynccontextmanager
async def forwarder(port: int, target: str) -> AsyncIterator[None]:
    """Listen on ``port`` and pipe every connection to ``target``'s host and port."""
    parts = urlsplit(target)
    host, target_port = parts.hostname or "127.0.0.1", parts.port or 5672

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    opened: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, target_port)
        opened.extend((writer, upstream_writer))
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for writer in opened:
            writer.close()


def only_line(stderr: str) -> str:
    """The one line a command that could not run prints; fails if there are more."""
    lines = stderr.strip("\n").splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- waiting for the services -----------------------------------------------------------


async def test_a_worker_started_before_its_database_exists_waits_then_starts(
    exchange: ExchangeUnderTest, postgres_url: str, migrated_template: str
) -> None:
    name = unique_database_name("later")
    env = worker_env(
        exchange.settings.model_copy(
            update={"database_url": with_database(exchange.settings.database_url, name)}
        )
    )
    try:
        async with WorkerProcess.started(env) as worker:
            await worker.wait_until(
                lambda: len(worker.messages(WAITING_TEXT)) >= ATTEMPTS_BEFORE_SERVICE,
                f"{ATTEMPTS_BEFORE_SERVICE} attempts",
            )
            assert worker.process.returncode is None
            waiting = worker.messages(WAITING_TEXT)
            assert all(f"PostgreSQL at 127.0.0.1:5432 database {name}" in m for m in waiting)
            assert all(f'database "{name}" does not exist' in m for m in waiting)
            assert [f"attempt {n}:" in m for n, m in enumerate(waiting, 1)] == [True] * len(waiting)

            await create_database(postgres_url, name, template=migrated_template)
            await worker.wait_until(lambda: bool(worker.messages(READY_TEXT)), "consuming")
            status, out = await worker.stop()
        assert status == 0
        assert "stopped after 0 messages" in out
    finally:
        await drop_database(postgres_url, name)


async def test_a_worker_started_before_its_broker_answers_waits_then_starts(
    exchange: ExchangeUnderTest,
) -> None:
    port = free_port()
    settings = exchange.settings
    env = worker_env(settings.model_copy(update={"amqp_url": with_port(settings.amqp_url, port)}))
    async with WorkerProcess.started(env) as worker:
        await worker.wait_until(
            lambda: len(worker.messages(WAITING_TEXT)) >= ATTEMPTS_BEFORE_SERVICE,
            f"{ATTEMPTS_BEFORE_SERVICE} attempts",
        )
        assert worker.process.returncode is None
        waiting = worker.messages(WAITING_TEXT)
        assert all(f"RabbitMQ at 127.0.0.1:{port} vhost {exchange.vhost}" in m for m in waiting)
        assert not any("guest" in m for m in waiting), "a log line shows the credentials"

        async with forwarder(port, settings.amqp_url):
            await worker.wait_until(lambda: bool(worker.messages(READY_TEXT)), "consuming")
            status, out = await worker.stop()
    assert status == 0
    assert "stopped after 0 messages" in out


@pytest.mark.parametrize("service", ["PostgreSQL", "RabbitMQ"])
async def test_with_no_startup_wait_a_worker_without_its_services_exits_2_with_one_line(
    exchange: ExchangeUnderTest, service: str
) -> None:
    # As a role of lienthong_worker: as the superuser, a worker on this host
    # would also log a warning that its role can change the schema.
    settings = exchange.worker_settings
    if service == "PostgreSQL":
        missing = unique_database_name("never")
        broken = {"database_url": with_database(settings.database_url, missing)}
    else:
        broken = {"amqp_url": with_port(settings.amqp_url, free_port())}
    env = worker_env(settings.model_copy(update=broken), startup_wait="0")

    status, out, err = await run_to_end(env)

    assert status == 2
    line = only_line(err)
    assert line.startswith(f"lienthong: cannot reach {service} at 127.0.0.1:"), line
    assert "LIENTHONG_STARTUP_WAIT" in line
    assert out == ""


# -- the schema files -------------------------------------------------------------------


async def test_a_worker_without_its_schema_files_refuses_to_start_with_one_line(
    exchange: ExchangeUnderTest, tmp_path: Path
) -> None:
    env = worker_env(exchange.settings, schema_dir=str(tmp_path))

    status, out, err = await run_to_end(env)

    assert status == 2
    line = only_line(err)
    assert line == (
        f"lienthong: cannot load the edXML schema {tmp_path / 'edxml-document.xsd'} "
        "(no such file); reinstall lienthong, or point LIENTHONG_SCHEMA_DIR at a folder "
        "holding every XSD"
    )
    assert out == ""


async def test_a_worker_whose_schema_files_vanish_gives_the_message_back_and_stops(
    exchange: ExchangeUnderTest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sender = await exchange.register("000.00.00.G22")
    recipient = await exchange.register("000.00.00.H26")
    document = demo_document(sender, [recipient], 17, "VPCP-TH", "Về việc cài đặt")
    ready = asyncio.Event()

    async def started(_: object) -> None:
        # The files go once the worker runs: each executor thread compiles
        # the XSDs on its first message, and finds them gone.
        monkeypatch.setattr(schema, "_directory", tmp_path / "removed")
        ready.set()

    stop = asyncio.Event()
    workers = asyncio.create_task(run_workers(exchange.settings, stop=stop, on_ready=started))
    await asyncio.wait({workers, asyncio.create_task(ready.wait())}, return_when="FIRST_COMPLETED")
    async with sender.client() as client:
        await client.send_document(document)

    with pytest.raises(BrokenInstallation, match="edxml-document"):
        await asyncio.wait_for(workers, START_TIMEOUT_S)

    # The message waits in the work queue for a worker that can judge it:
    # neither retried, nor parked, nor recorded, nor answered.
    assert await exchange.work_depth() == 1
    for queue in (PARKED_QUEUE, *(tier.queue for tier in RETRY_TIERS)):
        assert await exchange.queue_depth(queue) == 0, queue
    assert await exchange.fetchval("SELECT count(*) FROM messages") == 0
    assert await exchange.queue_depth(f"lienthong.status.{sender.code}") == 0


def test_the_startup_wait_defaults_to_a_minute() -> None:
    assert Settings().startup_wait == 60.0
