"""Worker subprocesses under supervision: started, restarted after SIGKILL, stopped with SIGTERM.

Each worker is a real ``lienthong worker`` process (one consumer each), with
its output in a log file of its own. The supervisor reads the output as it
comes, to know when a worker consumes, where a fault injection killed it,
which messages it finished and how it stopped. A worker that dies by
SIGKILL (fault injection, or the test) is started again at once, as
systemd's ``Restart=always`` would; any other death is a failure the test
reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from exchange.settings import Settings

# The worker logs one JSON object a line (LIENTHONG_LOG_FORMAT=json); these
# are the texts and fields the supervisor reads.
READY_TEXT = "worker consuming lienthong.work"  # its consumer is registered
KILLED_AT = re.compile(r"fault injection: killing the worker (?P<point>\w+)")
FINISHED_TEXT = "message "  # with message_pk and outcome: process() finished a message
# What ``lienthong worker`` prints (not logs) when it stopped on SIGTERM or SIGINT.
STOPPED_LINE = re.compile(r"stopped after (?P<count>\d+) messages")

# A worker imports lxml, signxml, cryptography, asyncpg and aio-pika before
# it consumes: a second or two, more on a loaded two-core machine.
START_TIMEOUT_S = 60.0
# SIGTERM lets a worker finish what it holds (a few messages of
# milliseconds each, or a confirm timeout of 30 s at worst).
STOP_TIMEOUT_S = 45.0
# Before starting again a worker that died of something other than SIGKILL.
RESTART_PAUSE_S = 1.0


def worker_command() -> list[str]:
    """The ``lienthong worker`` command of the virtualenv running the tests."""
    script = Path(sys.executable).with_name("lienthong")
    if script.exists():
        return [str(script), "worker"]
    return [sys.executable, "-m", "exchange", "worker"]


def worker_env(settings: Settings, *, fault_kill: str = "", **extra: str) -> dict[str, str]:
    """The environment of a worker subprocess running with ``settings``.

    ``fault_kill`` is ``LIENTHONG_FAULT_KILL`` (``point=probability,...``);
    ``extra`` are more ``LIENTHONG_*`` settings by lower-case name.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("LIENTHONG_")}
    env.update(
        {
            "LIENTHONG_AMQP_URL": settings.amqp_url,
            "LIENTHONG_DATABASE_URL": settings.database_url,
            "LIENTHONG_RABBITMQ_API_URL": settings.rabbitmq_api_url,
            "LIENTHONG_TRUST": str(settings.trust),
            "LIENTHONG_FAULT_KILL": fault_kill,
            "LIENTHONG_LOG_FORMAT": "json",
            # Several worker processes on one host: no metrics endpoint.
            "LIENTHONG_METRICS_PORT": "0",
            # Log lines reach the supervisor as they are written.
            "PYTHONUNBUFFERED": "1",
        }
    )
    # The exchange's receipt key (the workers sign every receipt with it).
    for name in ("receipt_key", "receipt_cert"):
        if (value := getattr(settings, name)) is not None:
            env[f"LIENTHONG_{name.upper()}"] = str(value)
    env.update({f"LIENTHONG_{name.upper()}": value for name, value in extra.items()})
    return env


@dataclass
class WorkerRun:
    """One worker process, from its start to its end."""

    slot: int
    number: int  # the how-many-th worker the supervisor started
    process: asyncio.subprocess.Process
    log: Path
    started: float = field(default_factory=time.monotonic)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    killed_at: str | None = None  # the fault point that killed it, if one did
    terminated: bool = False  # the supervisor sent it SIGTERM
    stopped_line: str | None = None  # "stopped after N messages"
    finished: list[int] = field(default_factory=list)  # pks of messages it finished
    retries: Counter[str] = field(default_factory=Counter)  # tier -> messages sent there
    errors: list[str] = field(default_factory=list)  # Traceback and ERROR lines
    returncode: int | None = None

    @property
    def killed(self) -> bool:
        """Whether the process died by SIGKILL."""
        return self.returncode == -signal.SIGKILL

    def describe(self) -> str:
        """A line for a failure message: which worker, how it ended, where its log is."""
        how = (
            f"exit {self.returncode}"
            if self.returncode is None or self.returncode >= 0
            else f"signal {signal.Signals(-self.returncode).name}"
        )
        where = f"slot {self.slot}, pid {self.process.pid}"
        return f"worker #{self.number} ({where}): {how}; {self.log}"


class Supervisor:
    """Runs ``workers`` worker processes with ``env``; restarts those killed by SIGKILL.

    Use as ``async with Supervisor(...) as workers:``; leaving the block
    stops every worker with SIGTERM and fails if one does not exit cleanly.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        workers: int,
        log_dir: Path,
        restart: bool = True,
    ) -> None:
        """Supervise ``workers`` processes; their logs go to ``log_dir``."""
        self.env = dict(env)
        self.count = workers
        self.log_dir = log_dir
        self.restart = restart
        self.runs: list[WorkerRun] = []
        self.live: dict[int, WorkerRun] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.log_dir.mkdir(parents=True, exist_ok=True)

    # -- figures ------------------------------------------------------------------

    @property
    def kills(self) -> Counter[str]:
        """Workers killed by SIGKILL, by fault point ("external" when none logged one)."""
        return Counter(run.killed_at or "external" for run in self.runs if run.killed)

    @property
    def unexpected(self) -> list[WorkerRun]:
        """Workers that died of something other than SIGKILL, or exited without being told."""
        return [
            run
            for run in self.runs
            if run.returncode is not None
            and not run.killed
            and not (run.terminated and run.returncode == 0)
        ]

    def finished_messages(self) -> Counter[int]:
        """How many times each message pk was finished, over every worker."""
        return Counter(pk for run in self.runs for pk in run.finished)

    def retries(self) -> Counter[str]:
        """Messages sent to each retry tier, over every worker."""
        total: Counter[str] = Counter()
        for run in self.runs:
            total.update(run.retries)
        return total

    # -- starting -----------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        failed = exc_info[0] is not None
        await self.stop(check=not failed)

    async def start(self) -> None:
        """Start every worker and wait until each consumes."""
        for slot in range(self.count):
            await self._spawn(slot)
        await self.wait_ready()

    async def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the worker in every slot consumes (restarted ones included)."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = [run for run in self.live.values() if not run.ready.is_set()]
            if not waiting and len(self.live) == self.count:
                return
            if time.monotonic() > deadline:
                stuck = [*waiting, *self.unexpected]
                raise AssertionError(
                    "workers did not start consuming: " + "; ".join(r.describe() for r in stuck)
                )
            await asyncio.sleep(0.05)

    async def _spawn(self, slot: int) -> WorkerRun:
        number = len(self.runs) + 1
        log = self.log_dir / f"worker-{number:03d}-slot{slot}.log"
        process = await asyncio.create_subprocess_exec(
            *worker_command(),
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Its own process group: a SIGINT meant for pytest is not for it.
            start_new_session=True,
        )
        run = WorkerRun(slot, number, process, log)
        self.runs.append(run)
        self.live[slot] = run
        watcher = asyncio.create_task(self._watch(run))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return run

    async def _watch(self, run: WorkerRun) -> None:
        """Copy the worker's output to its log, read it, and restart the worker if killed."""
        assert run.process.stdout is not None
        with run.log.open("w", encoding="utf-8") as log:
            async for raw in run.process.stdout:
                line = raw.decode("utf-8", "replace")
                log.write(line)
                self._read(run, line)
        run.returncode = await run.process.wait()
        run.ended.set()
        if self.live.get(run.slot) is run:
            del self.live[run.slot]
        if self.restart and not self._stopping and not run.terminated:
            if not run.killed:
                # Died of something else (recorded in ``unexpected``): started
                # again all the same, as a service manager would, after a pause.
                await asyncio.sleep(RESTART_PAUSE_S)
            if not self._stopping:
                await self._spawn(run.slot)

    @staticmethod
    def _read(run: WorkerRun, line: str) -> None:
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            if match := STOPPED_LINE.search(line):
                run.stopped_line = match[0]
            elif line.startswith("Traceback"):
                run.errors.append(line.rstrip())
            return
        text = str(entry.get("message", ""))
        if text.startswith(READY_TEXT):
            run.ready.set()
        elif text.startswith(FINISHED_TEXT) and "message_pk" in entry and "outcome" in entry:
            run.finished.append(int(entry["message_pk"]))
        elif "tier" in entry:
            run.retries[str(entry["tier"])] += 1
        elif match := KILLED_AT.search(text):
            run.killed_at = match["point"]
        if entry.get("level") in ("error", "critical") or "exception" in entry:
            run.errors.append(text)

    # -- stopping -----------------------------------------------------------------

    async def terminate(self, slot: int, timeout: float = STOP_TIMEOUT_S) -> WorkerRun:
        """SIGTERM the worker in ``slot`` and wait for it to exit (no restart)."""
        run = self.live[slot]
        del self.live[slot]
        run.terminated = True
        run.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(run.ended.wait(), timeout)
        except TimeoutError:
            run.process.kill()
            await run.ended.wait()
            raise AssertionError(
                f"{run.describe()} did not exit {timeout:.0f} s after SIGTERM"
            ) from None
        return run

    async def start_worker(self, slot: int) -> WorkerRun:
        """Start a worker in an empty ``slot`` and wait until it consumes."""
        assert slot not in self.live, f"slot {slot} has a worker"
        run = await self._spawn(slot)
        await self.wait_ready()
        return run

    async def replace(self, slot: int) -> tuple[WorkerRun, WorkerRun]:
        """A rolling-restart step: SIGTERM the worker in ``slot``, start a new one there.

        Returns the old run (ended) and the new one (consuming).
        """
        old = await self.terminate(slot)
        return old, await self.start_worker(slot)

    async def kill(self, slot: int) -> WorkerRun:
        """SIGKILL the worker in ``slot`` from outside (it is restarted)."""
        run = self.live[slot]
        run.process.kill()
        await run.ended.wait()
        return run

    async def stop(self, *, check: bool = True, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every worker and wait; with ``check``, fail unless each exited 0."""
        self._stopping = True
        runs = list(self.live.values())
        self.live.clear()
        for run in runs:
            run.terminated = True
            with contextlib.suppress(ProcessLookupError):
                run.process.send_signal(signal.SIGTERM)
        late = []
        deadline = time.monotonic() + timeout
        for run in runs:
            try:
                await asyncio.wait_for(run.ended.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                late.append(run)
                with contextlib.suppress(ProcessLookupError):
                    run.process.kill()
                await run.ended.wait()
        for watcher in list(self._watchers):
            with contextlib.suppress(Exception):
                await watcher
        if check:
            assert not late, "workers ignored SIGTERM: " + "; ".join(r.describe() for r in late)
            assert not self.unexpected, "workers died unexpectedly: " + "; ".join(
                run.describe() for run in self.unexpected
            )
