"""PostgreSQL servers of a test's own: a primary and a streaming standby, torn down after.

The failover test needs servers it may stop and promote; the shared server
on 5432 is never touched. :func:`primary_and_standby` makes, in a temporary
directory:

* a primary (``initdb``, trust on loopback only, a ``replication`` entry in
  ``pg_hba.conf``) on a free port, with **synchronous** replication
  (``synchronous_standby_names = '*'``): a commit returns once the standby
  has the transaction, so a commit the exchange acted on (published,
  acknowledged) survives the primary's loss. With asynchronous replication
  the last transactions before a crash may never reach the standby;
* a standby copied from it with ``pg_basebackup -R`` (it streams from the
  primary), on another free port, with no synchronous standby of its own:
  once promoted it is a primary alone, and its commits must not wait for a
  standby that is not there.

The servers run as the current user, or as ``postgres`` when the tests run
as root (``initdb`` refuses root), through ``runuser``. Unix sockets go to the
temporary directory, TCP to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

# Debian's layout: one directory per major version.
POSTGRES_LIBDIR = Path("/usr/lib/postgresql")
# The user the servers run as when the tests run as root.
SERVICE_USER = "postgres"
# initdb, pg_basebackup and a start take seconds; a loaded two-core machine more.
COMMAND_TIMEOUT_S = 120.0
STREAMING_TIMEOUT_S = 60.0
POLL_S = 0.1

# Settings of both servers. fsync off: the servers are thrown away after the
# test and a stop "-m immediate" is a crash of PostgreSQL, not of the kernel,
# whose cache keeps what was written; without it, a loaded machine's disk sets
# the pace of the run.
COMMON_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "max_connections": "100",
    "wal_level": "replica",
    "max_wal_senders": "5",
    "hot_standby": "on",
    "log_min_messages": "warning",
}
PG_HBA = """\
# A test's own servers: trust, on loopback and the Unix socket only.
local   all          all                 trust
host    all          all   127.0.0.1/32  trust
local   replication  all                 trust
host    replication  all   127.0.0.1/32  trust
"""


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's ``bin`` directory (fails the test under CI)."""
    versions = sorted(
        (p for p in POSTGRES_LIBDIR.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        _missing(f"no PostgreSQL server binaries under {POSTGRES_LIBDIR}/*/bin")
    return versions[-1]


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(what)
    pytest.skip(what)


def _as_user() -> list[str]:
    """The prefix that runs a server command as a user initdb accepts."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        _missing(f"running as root and there is no {SERVICE_USER!r} user to run PostgreSQL as")
    if shutil.which("runuser") is None:
        _missing("running as root without runuser to start PostgreSQL as another user")
    return ["runuser", "-u", SERVICE_USER, "--"]


def free_port() -> int:
    """A TCP port nothing listens on at the moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def run(*command: str | Path, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run a command as the servers' user; fail the test with its output if it fails."""
    argv = [*_as_user(), *(str(part) for part in command)]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # Not in the test's process group: a Ctrl-C meant for pytest must
        # not stop a server half-way (the teardown stops them).
        start_new_session=True,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{' '.join(argv)} did not finish in {timeout:.0f} s") from None
    text = output.decode("utf-8", "replace")
    if process.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({process.returncode}):\n{text}")
    return text


@dataclass
class PostgresServer:
    """One PostgreSQL server of the test: a data directory, a port, a log."""

    name: str
    bin: Path
    data: Path
    port: int
    log: Path

    @property
    def url(self) -> str:
        """The server's ``postgres`` database over TCP."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def settings(self, sockets: Path, **more: str) -> None:
        """Append settings to ``postgresql.auto.conf`` (the last value of a name wins)."""
        values = {**COMMON_SETTINGS, "port": str(self.port), **more}
        values["unix_socket_directories"] = f"'{sockets}'"
        lines = "".join(f"{name} = {value}\n" for name, value in values.items())
        with (self.data / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
            conf.write(f"# {self.name} of a lienthong test\n{lines}")

    async def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        await run(self.bin / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")

    async def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (sessions cut, clean), ``immediate`` (as a crash)."""
        await run(self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    async def promote(self) -> None:
        """Make this standby a primary, and wait until it accepts writes."""
        await run(self.bin / "pg_ctl", "-D", self.data, "-w", "-t", "60", "promote")

    async def is_running(self) -> bool:
        """Whether the server's postmaster runs."""
        if not (self.data / "postmaster.pid").exists():
            return False
        try:
            await run(self.bin / "pg_ctl", "-D", self.data, "status", timeout=30)
        except AssertionError:
            return False
        return True

    async def fetchval(self, query: str, *, database: str = "postgres") -> object:
        """One value from this server (a short connect timeout: it may be down)."""
        conn = await asyncpg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/{database}", timeout=10
        )
        try:
            return await conn.fetchval(query, timeout=10)
        finally:
            await conn.close()

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for a failure message."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            return f"(no log: {error})"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class ReplicatedPair:
    """A primary and its standby, and the URL that lists both."""

    primary: PostgresServer
    standby: PostgresServer

    def database_url(self, database: str) -> str:
        """``database`` on whichever of the two is the writable primary (libpq's multi-host URL)."""
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
            f"/{database}?target_session_attrs=read-write"
        )

    async def wait_streaming(self, timeout: float = STREAMING_TIMEOUT_S) -> None:
        """Wait until the standby streams from the primary as its synchronous standby."""
        deadline = time.monotonic() + timeout
        seen: object = None
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                seen = await self.primary.fetchval(
                    "SELECT state || '/' || sync_state FROM pg_stat_replication LIMIT 1"
                )
                if seen == "streaming/sync":
                    return
            await asyncio.sleep(POLL_S)
        raise AssertionError(
            f"the standby is not streaming after {timeout:.0f} s (last seen: {seen}); "
            f"its log:\n{self.standby.log_tail()}"
        )


@contextlib.asynccontextmanager
async def primary_and_standby() -> AsyncIterator[ReplicatedPair]:
    """A primary and its synchronous streaming standby, both running; stopped and deleted after."""
    bin_dir = postgres_bin()
    prefix = _as_user()
    base = Path(tempfile.mkdtemp(prefix="lienthong-pg-"))
    if prefix:
        owner = pwd.getpwnam(SERVICE_USER)
        os.chown(base, owner.pw_uid, owner.pw_gid)
    sockets = base / "sockets"
    primary = PostgresServer(
        "primary", bin_dir, base / "primary", free_port(), base / "primary.log"
    )
    standby = PostgresServer(
        "standby", bin_dir, base / "standby", free_port(), base / "standby.log"
    )
    try:
        await run("mkdir", "-m", "700", sockets)
        await run(
            bin_dir / "initdb",
            "-D",
            primary.data,
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
            "--locale=C",
        )
        _write_as_owner(primary.data / "pg_hba.conf", PG_HBA)
        primary.settings(sockets, synchronous_standby_names="'*'")
        await primary.start()
        await run(
            bin_dir / "pg_basebackup",
            "-d",
            f"host=127.0.0.1 port={primary.port} user=postgres application_name=standby",
            "-D",
            standby.data,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        )
        # Copied from the primary, then its own: its port, and no synchronous
        # standby (promoted, it has none).
        standby.settings(sockets, synchronous_standby_names="''")
        await standby.start()
        pair = ReplicatedPair(primary, standby)
        await pair.wait_streaming()
        yield pair
    finally:
        for server in (standby, primary):
            with contextlib.suppress(AssertionError):
                if await server.is_running():
                    await server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def _write_as_owner(path: Path, text: str) -> None:
    """Replace ``path`` (in a server's data directory) with ``text``, keeping its owner."""
    stat = path.stat()
    path.write_text(text, encoding="utf-8")
    os.chown(path, stat.st_uid, stat.st_gid)
