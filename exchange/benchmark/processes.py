"""The worker and pass-through processes, and what they cost: CPU and memory from ``/proc``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exchange.benchmark.config import START_TIMEOUT_S, STOP_TIMEOUT_S

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may hold spaces; count from its ')'.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kb(pid: int) -> dict[str, int]:
    """Peak and current resident memory of a process in KiB (``VmHWM``, ``VmRSS``)."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                found[name] = int(value.split()[0])
    return found


def machine_busy() -> tuple[float, float]:
    """Busy and total jiffies of the whole machine (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return float(sum(values) - idle), float(sum(values))


def service_cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by RabbitMQ (``beam.smp``) and PostgreSQL processes, by service.

    Every such process on the machine counts, the benchmark's or not: on a
    machine running only the benchmark, that is the services' share.
    """
    names = {"beam.smp": "rabbitmq", "postgres": "postgresql"}
    used = dict.fromkeys(names.values(), 0.0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as comm:
                service = names.get(comm.read().strip())
            if service is not None:
                used[service] += cpu_seconds(int(entry))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return used


class Usage:
    """CPU of the machine, the services and this process from its creation to :meth:`figures`."""

    def __init__(self) -> None:
        """Start counting now."""
        self.started = time.perf_counter()
        self.busy, self.total = machine_busy()
        self.services = service_cpu_seconds()
        self.own = cpu_seconds(os.getpid())

    def figures(self) -> dict[str, Any]:
        """``machine_busy_percent`` (of all CPUs) and ``services_cpu_percent`` (of one CPU).

        The agencies' side (publishers and consumers) runs in this process:
        it is the ``load_generator``.
        """
        elapsed = time.perf_counter() - self.started
        busy, total = machine_busy()
        services = service_cpu_seconds()
        own = cpu_seconds(os.getpid())
        used = {name: services[name] - self.services[name] for name in services}
        used["load_generator"] = own - self.own
        return {
            "machine_busy_percent": round(
                100 * (busy - self.busy) / max(1.0, total - self.total), 1
            ),
            "services_cpu_percent": {
                name: round(100 * seconds / elapsed, 1) for name, seconds in used.items()
            },
        }


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (``fraction`` in 0..1)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


@dataclass(frozen=True)
class RssSample:
    """One reading of a worker's resident memory during a run."""

    seconds: float  # since the run started
    mb: float
    done: int  # messages of the run done by then


def rss_trend(samples: Sequence[RssSample], warm_after: int) -> dict[str, float]:
    """First, median, last and largest of ``samples``, and the growth after the warm-up.

    The warm-up ends with the first sample taken once ``warm_after``
    messages were done (the last sample if none was); the growth is from that
    sample to the last one.
    """
    sizes = [sample.mb for sample in samples]
    warm = next((s for s in samples if s.done >= warm_after), samples[-1])
    return {
        "first": round(sizes[0], 1),
        "median": round(statistics.median(sizes), 1),
        "last": round(sizes[-1], 1),
        "max": round(max(sizes), 1),
        "warm_up_s": round(warm.seconds, 1),
        "at_warm_up": round(warm.mb, 1),
        # From the rounded figures, so that it is exactly last - at_warm_up as printed.
        "growth_after_warm_up": round(round(sizes[-1], 1) - round(warm.mb, 1), 1),
    }


# -- processes ------------------------------------------------------------------------


@dataclass
class Child:
    """A worker or pass-through subprocess and its log."""

    process: asyncio.subprocess.Process
    log: Path
    cpu_at_start: float = 0.0
    ready_at: float = 0.0  # ``time.perf_counter()`` when its log said it was ready

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.process.pid

    def figures(self, wall_s: float) -> dict[str, Any]:
        """CPU used since :meth:`mark` and peak memory, while it still runs."""
        used = cpu_seconds(self.pid) - self.cpu_at_start
        memory = memory_kb(self.pid)
        return {
            "pid": self.pid,
            "cpu_s": round(used, 2),
            "cpu_percent": round(100 * used / wall_s, 1) if wall_s > 0 else 0.0,
            "peak_rss_mb": round(memory.get("VmHWM", 0) / 1024, 1),
            "rss_mb": round(memory.get("VmRSS", 0) / 1024, 1),
        }

    def mark(self) -> None:
        """Start counting CPU from now."""
        self.cpu_at_start = cpu_seconds(self.pid)


async def start_children(
    commands: list[list[str]], env: dict[str, str], log_dir: Path, ready_text: str
) -> list[Child]:
    """Start the subprocesses and wait until each logged ``ready_text``.

    Each child's CPU is counted from the moment it is seen ready (its
    ``ready_at``), so its start-up is not.
    """
    children = []
    for number, command in enumerate(commands):
        log = log_dir / f"{Path(command[0]).name}-{number}-{uuid.uuid4().hex[:6]}.log"
        with open(log, "wb") as out:
            process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )
        children.append(Child(process, log))
    deadline = time.monotonic() + START_TIMEOUT_S
    # All watched at once: with a backlog waiting, the first one ready starts
    # draining it, and the drain's clock starts then.
    starting = list(children)
    while starting:
        for child in list(starting):
            if ready_text in child.log.read_text("utf-8", "replace"):
                child.ready_at = time.perf_counter()
                child.mark()
                starting.remove(child)
            elif child.process.returncode is not None or time.monotonic() > deadline:
                await stop_children(children)
                tail = child.log.read_text("utf-8", "replace")[-2000:]
                raise RuntimeError(f"{child.log.name} did not start:\n{tail}")
        if starting:
            await asyncio.sleep(0.05)
    return children


async def stop_children(children: list[Child]) -> None:
    """SIGTERM each (they finish what they hold) and wait; SIGKILL the stuck."""
    for child in children:
        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
    for child in children:
        try:
            await asyncio.wait_for(child.process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.process.wait()


def child_env(settings: Any, **extra: str) -> dict[str, str]:
    """The environment of a worker or pass-through subprocess in the bench vhost and database."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LIENTHONG_")}
    env.update(
        {
            "LIENTHONG_AMQP_URL": settings.amqp_url,
            "LIENTHONG_DATABASE_URL": settings.database_url,
            "LIENTHONG_RABBITMQ_API_URL": settings.rabbitmq_api_url,
            "LIENTHONG_TRUST": str(settings.trust),
            "LIENTHONG_LOG_FORMAT": "json",
            "LIENTHONG_METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # The exchange's receipt key (the workers sign every receipt with it).
    for name in ("receipt_key", "receipt_cert"):
        if (value := getattr(settings, name, None)) is not None:
            env[f"LIENTHONG_{name.upper()}"] = str(value)
    env.update({f"LIENTHONG_{name.upper()}": value for name, value in extra.items()})
    return env


def lienthong_command(*args: str) -> list[str]:
    """``lienthong ARGS...`` of the running interpreter's environment."""
    script = Path(sys.executable).with_name("lienthong")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "exchange"]
    return [*base, *args]


def worker_command() -> list[str]:
    """``lienthong worker`` of the running interpreter's environment."""
    return lienthong_command("worker", "--metrics-port", "0")


def passthrough_command(prefetch: int) -> list[str]:
    """The pass-through consumer (:mod:`exchange.benchmark.passthrough` run as a script)."""
    return [sys.executable, "-m", "exchange.benchmark.passthrough", "--prefetch", str(prefetch)]
