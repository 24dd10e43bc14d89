"""Stopping and starting the local RabbitMQ and PostgreSQL, and always starting them again.

The disruptive tests take the shared services down on purpose. Every
function here that stops one is paired with a context manager that, however
the test ends, leaves the service running and answering: other suites (and
the next test) rely on it. The commands are those of ``scripts/setup.sh``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

# Generous: a broker with many quorum queues, on a loaded two-core machine,
# takes some seconds to stop and to start.
COMMAND_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 60.0
POSTGRES_CONFIG = Path("/etc/postgresql")


async def run(*command: str, timeout: float = COMMAND_TIMEOUT_S, check: bool = True) -> int:
    """Run a service command (through sudo when not root); fail the test if it fails."""
    if os.geteuid() != 0 and shutil.which("sudo"):
        command = ("sudo", "-n", *command)
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{' '.join(command)} did not finish in {timeout:.0f} s") from None
    if check and process.returncode != 0:
        text = output.decode("utf-8", "replace")
        raise AssertionError(f"{' '.join(command)} failed ({process.returncode}): {text}")
    return process.returncode or 0


def require(*tools: str) -> None:
    """Skip the test when a service tool is missing (no local services to restart)."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"cannot restart the local services without {', '.join(missing)}")


# -- RabbitMQ ---------------------------------------------------------------------


async def stop_broker() -> None:
    """Stop the RabbitMQ application (the Erlang node stays up): every connection drops."""
    await run("rabbitmqctl", "stop_app")


async def start_broker() -> None:
    """Start the RabbitMQ application and wait until it serves."""
    await run("rabbitmqctl", "start_app")
    await run("rabbitmqctl", "await_startup", timeout=READY_TIMEOUT_S)


@asynccontextmanager
async def broker_kept_running() -> AsyncIterator[None]:
    """However the block ends, RabbitMQ is running after it."""
    try:
        yield
    finally:
        await start_broker()


# -- PostgreSQL -------------------------------------------------------------------


def postgres_version() -> str:
    """The installed PostgreSQL major version (the newest, as scripts/setup.sh picks)."""
    versions = [p.name for p in POSTGRES_CONFIG.iterdir() if p.name.isdigit()]
    if not versions:
        pytest.skip(f"no PostgreSQL cluster configured under {POSTGRES_CONFIG}")
    return max(versions, key=int)


async def stop_database() -> None:
    """Stop the PostgreSQL cluster (fast shutdown: sessions are cut)."""
    await run("pg_ctlcluster", "--skip-systemctl-redirect", postgres_version(), "main", "stop")


async def database_ready() -> bool:
    """Whether PostgreSQL accepts connections."""
    return await run("pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432", check=False) == 0


async def start_database() -> None:
    """Start the PostgreSQL cluster, if it is not running, and wait until it accepts."""
    if not await database_ready():
        # "already running" is not an error worth failing the test's cleanup for.
        await run(
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            postgres_version(),
            "main",
            "start",
            check=False,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not await database_ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"PostgreSQL not accepting {READY_TIMEOUT_S:.0f} s after start")
        await asyncio.sleep(0.5)


@asynccontextmanager
async def database_kept_running() -> AsyncIterator[None]:
    """However the block ends, PostgreSQL is running after it."""
    try:
        yield
    finally:
        await start_database()
