"""``lienthong bench``: the real pipeline under load, next to the limits measured in the same run.

In a vhost and a database of its own (created at the start, deleted at the
end, so it never touches a real exchange), the benchmark registers agencies
on the four levels, signs every package before any clock starts, and runs:

1. **verify only**: bare ``signxml`` verification of the same packages in a
   process pool of as many processes as cores (the least a verifying
   exchange must spend on this machine);
2. **pass-through**: the same messages over the same queues, moved by
   trivial consumers in as many processes as there are workers
   (``lienthong.work`` to the recipient's inbox and a receipt to the
   sender's status queue, with confirms and acks, no checks, no database);
3. **sustained**: the same messages through real ``lienthong worker``
   processes, published as fast as the broker confirms them; throughput is
   messages over the time from the first publish to the last message
   having both its inbox delivery and its receipt;
4. **latency**: more messages at a fixed offered load (by default half the
   sustained throughput), each timed from its publish to the later of its
   delivery and its receipt;
5. **backlog** (only when asked): messages published with no worker
   running, so that they wait in ``lienthong.work``, then drained by
   workers started afterwards; throughput is messages over the time from
   the first worker ready to the last message done.

``--phases`` chooses among them; ``--duration`` turns the sustained run into
one at a fixed offered load for a given time (a long run, to watch memory).

Fast consumers (guest in the bench vhost, no acks) read every inbox and
status queue; every time is taken in this one process, so no clocks need to
agree. CPU and peak memory of each worker process come from ``/proc``, and
its resident memory is sampled every few seconds during the sustained run
and the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

# Message headers the benchmark adds to what it publishes, read only by the
# pass-through consumer (the real worker ignores them): the pass-through must
# route and label like the worker without parsing the package.
BENCH_DOCUMENT_ID = "x-bench-document-id"
BENCH_SENDER = "x-bench-sender"
KIND_HEADER = "x-lienthong-kind"  # exchange.broker.headers.KIND

SIZES = {"5k": 5 * 1024, "100k": 100 * 1024, "1m": 1024 * 1024}
READY_TEXT = "worker consuming lienthong.work"
PASSTHROUGH_READY_TEXT = "passthrough consuming"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
# Publishes awaiting their confirm at once, over every sender: enough to keep
# the broker busy, few enough that one slow confirm does not hide a stall.
PUBLISH_WINDOW = 256
# A phase that makes no progress for this long has failed (a worker died,
# a message was rejected and so never delivered).
STALL_TIMEOUT_S = 60.0
PROGRESS_EVERY_S = 2.0

# The targets on a two-core machine, for 5 KB RSA-2048 packages.
TARGET_DOCS_PER_S = {"5k": 1000.0, "100k": 400.0, "1m": 50.0}
TARGET_PASSTHROUGH_RATIO = 0.6
TARGET_P99_MS = 100.0


@dataclass(frozen=True)
class BenchConfig:
    """What to run: the workload, the workers and the offered load."""

    agencies: int = 24
    size: str = "5k"
    key_type: str = "rsa-2048"
    workers: int = 2
    messages: int = 5000  # sustained and pass-through runs
    latency_messages: int = 2000  # the fixed-load run
    recipients: int = 4  # messages per document (one per recipient)
    rate: float | None = None  # docs/s for the latency run; None: half the sustained
    prefetch: int | None = None  # the workers' prefetch; None: their default
    keep: bool = False  # leave the vhost, database and keys for inspection
    phases: tuple[str, ...] = ("verify", "passthrough", "sustained", "latency")
    backlog: int = 100_000  # messages of the backlog run
    # The sustained run at ``rate`` for this many seconds instead of
    # ``messages`` as fast as confirmed (a long run, to watch memory).
    duration: float | None = None
    sample_every: float = 5.0  # seconds between two samples of each worker's VmRSS

    @property
    def sustained_messages(self) -> int:
        """Messages of the sustained run: ``messages``, or ``rate`` x ``duration``."""
        if self.duration is not None and self.rate is not None:
            return max(1, round(self.rate * self.duration))
        return self.messages


# In the order they run. The backlog comes last: it needs the work queue to
# itself with no worker running, and a drained queue before it.
PHASES = ("verify", "passthrough", "sustained", "latency", "backlog")
QUICK = {"agencies": 6, "messages": 300, "latency_messages": 150, "backlog": 1000}
# The growth of a worker's memory is counted from its first sample after this
# share of a run's messages was done: imports, caches, pools and buffers fill
# up in the first messages, and that is not a leak.
WARM_UP_FRACTION = 0.1


# -- the workload ---------------------------------------------------------------------


def agency_codes(count: int) -> list[str]:
    """``count`` agency codes spread over the four levels, parents before children.

    Level 1: ministries and provinces (``000.00.00.Xnn``); level 2 their
    departments; level 3 and 4 below those, round robin over the levels.
    """
    letters = ("G", "H")
    codes: list[str] = []
    level1: list[str] = []
    level2: list[str] = []
    level3: list[str] = []
    n = 0
    while len(codes) < count:
        n += 1
        level = (n - 1) % 4 + 1
        if level == 1 or not level1:
            code = f"000.00.00.{letters[n % 2]}{10 + n % 90:02d}"
            if code in level1:
                code = f"000.00.00.K{n % 100:02d}"
            level1.append(code)
        elif level == 2 or not level2:
            parent = level1[n % len(level1)]
            code = f"000.00.{n % 100:02d}.{parent[-3:]}"
            level2.append(code)
        elif level == 3 or not level3:
            parent = level2[n % len(level2)]
            code = f"000.{n % 100:02d}.{parent[7:9]}.{parent[-3:]}"
            level3.append(code)
        else:
            parent = level3[n % len(level3)]
            code = f"{n % 1000:03d}.{parent[4:]}"
        if code not in codes:
            codes.append(code)
    return codes


@dataclass(frozen=True)
class SignJob:
    """Everything a pool process needs to build and sign one package."""

    number: int
    notation: str
    sender: tuple[str, str]  # code, name
    recipients: tuple[tuple[str, str], ...]
    attachment_bytes: int
    key_pem: bytes
    chain_pem: tuple[bytes, ...]


@dataclass(frozen=True)
class Planned:
    """One signed message of the workload: one document to one recipient."""

    sender: str
    recipient: str
    document_id: str
    body: bytes

    @property
    def key(self) -> tuple[str, str]:
        """How both the inbox delivery and the receipt name this message."""
        return (self.document_id, self.recipient)


def sign_job(job: SignJob) -> tuple[str, bytes]:
    """Build and sign one document package; returns its DocumentId and bytes (pool function)."""
    from exchange.checks.authorise import document_id_of
    from exchange.checks.signature import sign
    from exchange.edxml.model import (
        Attachment,
        Code,
        DocumentType,
        Organization,
        SignerInfo,
    )
    from exchange.edxml.writer import new_document, write_package

    # Incompressible, as a zipped file is, and the same on every run.
    content = random.Random(job.number).randbytes(max(1, job.attachment_bytes))  # noqa: S311
    package = new_document(
        sender=Organization(organ_id=job.sender[0], organ_name=job.sender[1]),
        recipients=[Organization(organ_id=code, organ_name=name) for code, name in job.recipients],
        code=Code(code_number=str(job.number), code_notation=job.notation),
        subject=f"Thử nghiệm hiệu năng số {job.number}",
        promulgation_date=date.today(),
        place="Hà Nội",
        document_type=DocumentType(type="1", type_detail="0", type_name="Công văn"),
        signer=SignerInfo(competence="TM.", position="Chánh Văn phòng", full_name="Nguyễn Văn A"),
        attachments=[
            Attachment.from_bytes(
                content, "tai-lieu.zip", content_type="application/zip", content_id="cid:1"
            )
        ],
    )
    signed = sign(write_package(package), job.key_pem, list(job.chain_pem))
    return document_id_of(package), signed


def _party(agency: Any) -> tuple[str, str]:
    return (str(agency.code), agency.name)


def verify_chunk(items: list[tuple[bytes, str, str]]) -> int:
    """Bare signxml verification of ``(package, certificate PEM, key type)``s (pool function)."""
    from signxml.algorithms import DigestAlgorithm, SignatureMethod
    from signxml.verifier import SignatureConfiguration, XMLVerifier

    methods = {"rsa": SignatureMethod.RSA_SHA256, "ecdsa": SignatureMethod.ECDSA_SHA256}
    for data, cert_pem, key_type in items:
        config = SignatureConfiguration(
            signature_methods=frozenset({methods[key_type.split("-")[0]]}),
            digest_algorithms=frozenset({DigestAlgorithm.SHA256}),
        )
        XMLVerifier().verify(data, x509_cert=cert_pem, expect_config=config)
    return len(items)


def _warm(_: int) -> int:
    """Import what the pool functions need, before a clock starts (pool function)."""
    import signxml.verifier  # noqa: F401

    import exchange.checks.signature  # noqa: F401

    return os.getpid()


# -- measuring processes ----------------------------------------------------------------

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


class MemorySampler:
    """Reads each worker's ``VmRSS`` every few seconds while a run goes on."""

    def __init__(self, children: Sequence[Child], every: float, tracker: Tracker) -> None:
        """Sample ``children`` every ``every`` seconds, noting how far ``tracker``'s run is."""
        self.children = list(children)
        self.every = every
        self.tracker = tracker
        self.origin = time.perf_counter()
        self.samples: dict[int, list[RssSample]] = {child.pid: [] for child in self.children}
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        """Read every worker's memory now (a worker that is gone is skipped)."""
        seconds = time.perf_counter() - self.origin
        done = len(self.tracker.done)
        for child in self.children:
            with contextlib.suppress(OSError):
                mb = memory_kb(child.pid).get("VmRSS", 0) / 1024
                self.samples[child.pid].append(RssSample(seconds, mb, done))

    async def _run(self) -> None:
        ticks = 0
        while True:
            self.sample()
            ticks += 1
            # On a fixed grid, so a slow read does not stretch the intervals.
            await asyncio.sleep(max(0.0, self.origin + ticks * self.every - time.perf_counter()))

    def start(self, origin: float | None = None) -> None:
        """Take the first sample now and one every ``every`` seconds.

        Their times count from ``origin`` (a ``time.perf_counter()``), by
        default from now.
        """
        self.origin = time.perf_counter() if origin is None else origin
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop, with one last sample taken now."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()

    def figures(self, child: Child) -> dict[str, Any]:
        """``rss_trend_mb`` and ``rss_samples`` (``[seconds, MB]`` pairs) of one worker."""
        samples = self.samples[child.pid]
        if not samples:
            return {}
        warm_after = math.ceil(WARM_UP_FRACTION * self.tracker.expected)
        return {
            "rss_trend_mb": rss_trend(samples, warm_after),
            "rss_samples": [[round(s.seconds, 1), round(s.mb, 1)] for s in samples],
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
    env.update({f"LIENTHONG_{name.upper()}": value for name, value in extra.items()})
    return env


def worker_command() -> list[str]:
    """``lienthong worker`` of the running interpreter's environment."""
    script = Path(sys.executable).with_name("lienthong")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "exchange"]
    return [*base, "worker", "--metrics-port", "0"]


def passthrough_command(prefetch: int) -> list[str]:
    """The pass-through consumer (this module run as a script)."""
    return [sys.executable, "-m", "exchange.bench", "passthrough", "--prefetch", str(prefetch)]


# -- the pass-through consumer ----------------------------------------------------------


async def passthrough(amqp_url: str, prefetch: int) -> int:
    """Move ``lienthong.work`` to inbox and status queues as the worker would, checking nothing.

    Per message, in the worker's order: publish the package to the
    recipient's inbox, then a receipt to the sender, each confirmed, then
    ack. Runs until SIGTERM; returns how many messages it moved.
    """
    from exchange.broker import headers as h
    from exchange.broker.connection import ConfirmingPublisher, connect
    from exchange.broker.topology import DELIVER_EXCHANGE, STATUS_EXCHANGE, WORK_QUEUE

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    connection = await connect(amqp_url, name="lienthong-bench-passthrough")
    publisher = await ConfirmingPublisher.open(connection)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.get_queue(WORK_QUEUE, ensure=True)
    tasks: set[asyncio.Task[None]] = set()
    moved = 0

    async def move(message: Any) -> None:
        nonlocal moved
        headers = message.headers or {}
        document_id = _text(headers.get(BENCH_DOCUMENT_ID))
        sender = _text(headers.get(BENCH_SENDER))
        recipient = message.routing_key or ""
        labels = {h.DOCUMENT_ID: document_id, h.RECIPIENT: recipient, h.SENDER: sender}
        await publisher.publish(
            DELIVER_EXCHANGE,
            recipient,
            message.body,
            message_id=f"pt:{message.message_id}",
            headers=labels,
        )
        receipt = json.dumps({"outcome": "delivered", "message_id": message.message_id}).encode()
        await publisher.publish(
            STATUS_EXCHANGE,
            sender,
            receipt,
            message_id=f"pt:{message.message_id}:receipt",
            headers={**labels, h.KIND: "receipt"},
            content_type="application/json",
        )
        await message.ack()
        moved += 1

    def on_message(message: Any) -> Any:
        task = asyncio.create_task(move(message))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return None

    async def consume(message: Any) -> None:
        on_message(message)

    tag = await queue.consume(consume)
    print(PASSTHROUGH_READY_TEXT, flush=True)
    await stop.wait()
    await queue.cancel(tag)
    if tasks:
        await asyncio.wait(set(tasks))
    await connection.close()
    print(f"stopped after {moved} messages", flush=True)
    return moved


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


# -- the agencies' side: publishing and fast consumers ----------------------------------


@dataclass
class Tracker:
    """Publish, delivery and receipt times of every message of a phase, by its key."""

    expected: int
    published: dict[tuple[str, str], float] = field(default_factory=dict)
    delivered: dict[tuple[str, str], float] = field(default_factory=dict)
    receipted: dict[tuple[str, str], float] = field(default_factory=dict)
    done: dict[tuple[str, str], float] = field(default_factory=dict)
    not_delivered: list[str] = field(default_factory=list)  # receipts of another outcome
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def _check(self, key: tuple[str, str], at: float) -> None:
        if key in self.delivered and key in self.receipted and key not in self.done:
            self.done[key] = at
            if len(self.done) >= self.expected:
                self.complete.set()

    def on_inbox(self, key: tuple[str, str], at: float) -> None:
        """A delivery reached the recipient's inbox."""
        self.delivered.setdefault(key, at)
        self._check(key, at)

    def on_receipt(self, key: tuple[str, str], at: float, outcome: str) -> None:
        """A receipt reached the sender's status queue."""
        if outcome != "delivered":
            self.not_delivered.append(f"{key[0]} to {key[1]}: {outcome}")
            return
        self.receipted.setdefault(key, at)
        self._check(key, at)

    def latencies_ms(self) -> list[float]:
        """Publish to done, per finished message, in milliseconds."""
        return [
            (at - self.published[key]) * 1000
            for key, at in self.done.items()
            if key in self.published
        ]


def latency_figures(tracker: Tracker, offered: float, wall: float) -> dict[str, Any]:
    """Percentiles of a run at ``offered`` docs/s that took ``wall`` seconds."""
    latencies = tracker.latencies_ms()
    return {
        "p50": round(percentile(latencies, 0.50), 1),
        "p95": round(percentile(latencies, 0.95), 1),
        "p99": round(percentile(latencies, 0.99), 1),
        "max": round(max(latencies), 1),
        "offered_docs_per_s": round(offered, 1),
        "achieved_docs_per_s": round(len(latencies) / wall, 1),
        "messages": len(latencies),
    }


class Observer:
    """Fast consumers of every inbox and status queue, feeding the current :class:`Tracker`."""

    def __init__(self, amqp_url: str, codes: Sequence[str]) -> None:
        """Consume the queues of ``codes`` as the vhost's operator (no acks)."""
        self.amqp_url = amqp_url
        self.codes = list(codes)
        self.tracker: Tracker | None = None
        self._connection: Any = None

    async def start(self) -> None:
        """Open the connection and start consuming."""
        import aio_pika

        from exchange.broker.topology import INBOX_QUEUE_PREFIX, STATUS_QUEUE_PREFIX

        self._connection = await aio_pika.connect(self.amqp_url)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=2000)
        for code in self.codes:
            inbox = await channel.get_queue(INBOX_QUEUE_PREFIX + code, ensure=True)
            await inbox.consume(self._on_inbox, no_ack=True)
            status = await channel.get_queue(STATUS_QUEUE_PREFIX + code, ensure=True)
            await status.consume(self._on_status, no_ack=True)

    async def close(self) -> None:
        """Stop consuming."""
        if self._connection is not None:
            await self._connection.close()

    async def queue_depth(self, name: str) -> int:
        """Messages waiting in the queue ``name`` now (a passive declare)."""
        channel = await self._connection.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
            return int(queue.declaration_result.message_count or 0)
        finally:
            await channel.close()

    @staticmethod
    def _key(message: Any) -> tuple[str, str]:
        headers = message.headers or {}
        return (_text(headers.get("x-document-id")), _text(headers.get("x-recipient")))

    async def _on_inbox(self, message: Any) -> None:
        if self.tracker is not None:
            self.tracker.on_inbox(self._key(message), time.perf_counter())

    async def _on_status(self, message: Any) -> None:
        if self.tracker is None or _text((message.headers or {}).get(KIND_HEADER)) != "receipt":
            return  # a forwarded status package, not a receipt
        try:
            outcome = str(json.loads(message.body).get("outcome"))
        except ValueError:
            return
        self.tracker.on_receipt(self._key(message), time.perf_counter(), outcome)


class Publishers:
    """One confirming publisher per sending agency, logged in as its own broker user."""

    def __init__(self, urls: dict[str, str], users: dict[str, str]) -> None:
        """Publishers for agencies ``code -> AMQP URL`` with ``code -> broker user``."""
        self.urls = urls
        self.users = users
        self._connections: list[Any] = []
        self._publishers: dict[str, Any] = {}

    async def start(self) -> None:
        """Connect every agency."""
        from exchange.broker.connection import ConfirmingPublisher, connect

        for code, url in self.urls.items():
            connection = await connect(url, name=f"lienthong-bench-{code}")
            self._connections.append(connection)
            self._publishers[code] = await ConfirmingPublisher.open(connection)

    async def close(self) -> None:
        """Disconnect."""
        for connection in self._connections:
            with contextlib.suppress(Exception):
                await connection.close()

    async def publish(self, message: Planned, tracker: Tracker) -> None:
        """Submit one message as its sender does, recording when it was published."""
        from exchange.broker import headers as h
        from exchange.broker.topology import SUBMIT_EXCHANGE

        tracker.published[message.key] = time.perf_counter()
        await self._publishers[message.sender].publish(
            SUBMIT_EXCHANGE,
            message.recipient,
            message.body,
            message_id=str(uuid.uuid4()),
            user_id=self.users[message.sender],
            headers={
                h.PUBLISHED_AT: datetime.now(UTC).isoformat(),
                BENCH_DOCUMENT_ID: message.document_id,
                BENCH_SENDER: message.sender,
            },
        )


async def publish_messages(
    messages: Sequence[Planned],
    publishers: Publishers,
    tracker: Tracker,
    *,
    rate: float | None = None,
) -> None:
    """Publish ``messages`` as fast as the broker confirms them, or at ``rate`` per second.

    At most :data:`PUBLISH_WINDOW` await their confirm at once; returns once
    every one is confirmed, or raises on the first that fails.
    """
    window = asyncio.Semaphore(PUBLISH_WINDOW)
    failures: list[BaseException] = []
    pending: set[asyncio.Task[None]] = set()

    async def one(message: Planned) -> None:
        try:
            await publishers.publish(message, tracker)
        except BaseException as error:  # raised below, the run fails
            failures.append(error)
        finally:
            window.release()

    started = time.perf_counter()
    try:
        for index, message in enumerate(messages):
            if rate is not None:
                delay = started + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await window.acquire()
            if failures:
                break
            task = asyncio.create_task(one(message))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(set(pending))
    finally:
        for task in pending:
            task.cancel()
    if failures:
        raise RuntimeError(f"a publish failed: {failures[0]!r}")


async def watch_publishing(
    name: str, publishing: asyncio.Task[None], tracker: Tracker, progress: Callable[[str], None]
) -> None:
    """Wait for ``publishing`` with nothing consuming, reporting progress; fail if it stalls.

    A message is only published once an earlier one was confirmed, so
    publishes that stop growing mean confirms that stopped coming.
    """
    last, last_change = 0, time.monotonic()
    next_line = time.monotonic() + PROGRESS_EVERY_S
    while not publishing.done():
        await asyncio.wait({publishing}, timeout=0.25)
        if len(tracker.published) != last:
            last, last_change = len(tracker.published), time.monotonic()
        elif time.monotonic() - last_change > STALL_TIMEOUT_S:
            publishing.cancel()
            raise RuntimeError(f"{name}: publishing stalled at {last} of {tracker.expected}")
        if time.monotonic() >= next_line:
            next_line += PROGRESS_EVERY_S
            progress(f"{name}: {last} of {tracker.expected} published")
    await publishing


async def wait_done(
    name: str,
    tracker: Tracker,
    progress: Callable[[str], None],
    started: float,
    publishing: asyncio.Task[None] | None = None,
) -> float:
    """Wait until every message of ``tracker`` is done; the seconds from ``started`` to the last.

    Fails when ``publishing`` fails, when a message is not delivered, or when
    no message is done for :data:`STALL_TIMEOUT_S`.
    """
    last_done, last_change = 0, time.monotonic()
    next_line = time.monotonic() + PROGRESS_EVERY_S
    while not tracker.complete.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tracker.complete.wait(), 0.25)
        if publishing is not None and publishing.done() and publishing.exception() is not None:
            raise RuntimeError(f"{name}: {publishing.exception()}")
        if tracker.not_delivered:
            raise RuntimeError(f"{name}: not delivered: {tracker.not_delivered[:3]}")
        if len(tracker.done) != last_done:
            last_done, last_change = len(tracker.done), time.monotonic()
        elif time.monotonic() - last_change > STALL_TIMEOUT_S:
            if publishing is not None:
                publishing.cancel()
            raise RuntimeError(
                f"{name}: stalled at {last_done} of {tracker.expected} messages "
                f"({len(tracker.delivered)} delivered, {len(tracker.receipted)} receipts)"
            )
        if time.monotonic() >= next_line:
            next_line += PROGRESS_EVERY_S
            elapsed = time.perf_counter() - started
            progress(
                f"{name}: {len(tracker.published)} published, {len(tracker.done)} of "
                f"{tracker.expected} done ({len(tracker.done) / elapsed:.0f} docs/s so far)"
            )
    if publishing is not None:
        await publishing
    return max(tracker.done.values()) - started


async def run_phase(
    name: str,
    messages: list[Planned],
    publishers: Publishers,
    observer: Observer,
    progress: Callable[[str], None],
    *,
    rate: float | None = None,
    tracker: Tracker | None = None,
) -> tuple[Tracker, float]:
    """Publish ``messages`` (as fast as confirmed, or at ``rate`` per second) and wait for all.

    Returns the tracker (``tracker`` if given, e.g. to a
    :class:`MemorySampler`) and the seconds from the first publish to the
    last message done.
    """
    tracker = tracker or Tracker(len(messages))
    observer.tracker = tracker
    started = time.perf_counter()
    publishing = asyncio.create_task(publish_messages(messages, publishers, tracker, rate=rate))
    try:
        wall = await wait_done(name, tracker, progress, started, publishing)
    finally:
        observer.tracker = None
    return tracker, wall


async def run_backlog(
    messages: list[Planned],
    publishers: Publishers,
    observer: Observer,
    start_workers: Callable[[], Awaitable[list[Child]]],
    sample_every: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Queue ``messages`` with no worker running, then start the workers and time the drain.

    The drain runs from the first worker ready to the last message having
    both its delivery and its receipt; each worker's memory is sampled
    meanwhile. Returns the ``backlog`` figures.
    """
    from exchange.broker.topology import WORK_QUEUE

    tracker = Tracker(len(messages))
    observer.tracker = tracker
    children: list[Child] = []
    try:
        progress(f"backlog: publishing {len(messages)} messages, no worker running")
        started = time.perf_counter()
        publishing = asyncio.create_task(publish_messages(messages, publishers, tracker))
        await watch_publishing("backlog", publishing, tracker, progress)
        publish_seconds = time.perf_counter() - started
        queued = await observer.queue_depth(WORK_QUEUE)
        progress(
            f"backlog: published in {publish_seconds:.1f} s "
            f"({len(messages) / publish_seconds:.0f} docs/s), {queued} waiting in {WORK_QUEUE}"
        )
        launched = time.perf_counter()
        children = await start_workers()
        drain_started = min(child.ready_at for child in children)
        progress("backlog: draining, worker pids " + " ".join(str(c.pid) for c in children))
        sampler = MemorySampler(children, sample_every, tracker)
        usage = Usage()
        sampler.start(origin=drain_started)
        try:
            drain_seconds = await wait_done("backlog", tracker, progress, drain_started)
        finally:
            await sampler.stop()
        figures: dict[str, Any] = {
            "messages": len(messages),
            "published": len(tracker.published),
            "publish_seconds": round(publish_seconds, 2),
            "publish_docs_per_s": round(len(messages) / publish_seconds, 1),
            "queued_before_drain": queued,
            "workers_start_seconds": round(drain_started - launched, 2),
            "drained": len(tracker.done),
            "drain_seconds": round(drain_seconds, 2),
            "drain_docs_per_s": round(len(tracker.done) / drain_seconds, 1),
            "wall_seconds": round(drain_started + drain_seconds - started, 2),
        }
        figures.update(usage.figures())
        figures["workers"] = [
            child.figures(drain_seconds) | sampler.figures(child) for child in children
        ]
        progress(f"backlog: drained at {figures['drain_docs_per_s']:.0f} docs/s")
        return figures
    finally:
        observer.tracker = None
        await stop_children(children)


# -- the run ----------------------------------------------------------------------------


def _vhost_url(amqp_url: str, vhost: str) -> str:
    parts = urlsplit(amqp_url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


def _database_url(server_url: str, name: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path="/" + name))


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        total_kb = int(meminfo.readline().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(total_kb / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


async def _sign_all(
    jobs: list[SignJob], progress: Callable[[str], None]
) -> tuple[list[tuple[str, bytes]], float]:
    """Every package signed on a pool of one process per core, and the seconds it took."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = [loop.run_in_executor(pool, sign_job, job) for job in jobs]
        results = await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    progress(f"signed {len(jobs)} packages in {elapsed:.1f} s")
    return list(results), elapsed


async def _verify_only(messages: list[Planned], certs: dict[str, str], key_type: str) -> float:
    """Bare verifications per second of ``messages`` on a pool of one process per core."""
    cores = os.cpu_count() or 1
    items = [(m.body, certs[m.sender], key_type) for m in messages]
    chunk = max(1, min(50, len(items) // (cores * 4) or 1))
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=cores) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, _warm, i) for i in range(cores * 2)))
        # One untimed round, so every process has verified before the clock.
        await asyncio.gather(
            *(loop.run_in_executor(pool, verify_chunk, items[:1]) for _ in range(cores * 2))
        )
        started = time.perf_counter()
        done = await asyncio.gather(*(loop.run_in_executor(pool, verify_chunk, c) for c in chunks))
        elapsed = time.perf_counter() - started
    return sum(done) / elapsed


async def run_bench(config: BenchConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    """Run every phase of the benchmark and return its figures (see the module's docstring)."""
    import asyncpg

    from exchange.broker.admin import FULL_ACCESS, BrokerAdmin
    from exchange.demo import LocalExchange
    from exchange.pki import KeyType
    from exchange.settings import Settings

    key_type = KeyType(config.key_type)
    base = Settings()
    token = uuid.uuid4().hex[:8]
    vhost = f"lienthong-bench-{token}"
    database = f"lienthong_bench_{token}"
    admin = BrokerAdmin.from_settings(base)
    work_dir = Path(tempfile.mkdtemp(prefix="lienthong-bench-"))
    users: list[str] = []
    result: dict[str, Any] = {
        "config": asdict(config),
        "machine": machine(),
        "vhost": vhost,
        "database": database,
    }
    children: list[Child] = []
    observer: Observer | None = None
    publishers: Publishers | None = None
    try:
        await admin.create_vhost(vhost, description="lienthong bench (deleted after the run)")
        server = await asyncpg.connect(base.database_url)
        try:
            await server.execute(f'CREATE DATABASE "{database}"')
        finally:
            await server.close()
        progress(f"vhost {vhost}, database {database}, files in {work_dir}")
        await admin.set_permissions(vhost, admin.user, FULL_ACCESS)
        settings = base.model_copy(
            update={
                "amqp_url": _vhost_url(base.amqp_url, vhost),
                "database_url": _database_url(base.database_url, database),
            }
        )
        local = LocalExchange(settings, work_dir / "keys")
        await local.prepare()
        codes = agency_codes(config.agencies)
        for code in codes:
            user = f"b{token}-{code}"
            users.append(user)
            await local.register(code, f"Cơ quan {code}", broker_user=user, key_type=key_type)
        progress(
            f"registered {len(codes)} agencies on levels "
            f"{sorted({local.agencies[c].code.level for c in local.agencies})}"
        )
        settings = local.settings

        # The workload: document n from agency n mod A to the next
        # ``recipients`` agencies, one message per recipient (as a directive
        # addressed to several agencies is sent); signed once per document.
        # Every message is a distinct (document, recipient): the exchange
        # would take a second one as a duplicate, so nothing is reused, not
        # even between phases.
        target = SIZES[config.size]
        agencies = [local.agencies[c] for c in local.agencies]
        fan_out = max(1, min(config.recipients, len(agencies) - 1))
        first = agencies[0]
        probe = sign_job(
            SignJob(
                0,
                "PROBE",
                _party(first),
                tuple(_party(a) for a in agencies[1 : 1 + fan_out]),
                1,
                first.credential.key_pem,
                tuple(first.credential.cert_chain_pem),
            )
        )[1]
        attachment = max(1, (target - len(probe)) * 3 // 4)
        phases = set(config.phases)
        sustained_count = (
            config.sustained_messages if phases & {"verify", "passthrough", "sustained"} else 0
        )
        latency_count = config.latency_messages if "latency" in phases else 0
        backlog_count = config.backlog if "backlog" in phases else 0
        total = sustained_count + latency_count + backlog_count
        documents = -(-total // fan_out)
        jobs = []
        for n in range(1, documents + 1):
            index = n % len(agencies)
            sender = agencies[index]
            to = tuple(
                _party(agencies[(index + step) % len(agencies)]) for step in range(1, fan_out + 1)
            )
            jobs.append(
                SignJob(
                    n,
                    f"BENCH-{token}",
                    _party(sender),
                    to,
                    attachment,
                    sender.credential.key_pem,
                    tuple(sender.credential.cert_chain_pem),
                )
            )
        progress(
            f"signing {documents} packages of about {target // 1024} KB ({key_type.value}) "
            f"for {total} messages"
        )
        signed, signing_seconds = await _sign_all(jobs, progress)
        result["signing_seconds"] = round(signing_seconds, 1)
        planned = [
            Planned(job.sender[0], recipient, document_id, body)
            for job, (document_id, body) in zip(jobs, signed, strict=True)
            for recipient, _ in job.recipients
        ][:total]
        # Messages of one document interleaved with others', not back to back.
        random.Random(total).shuffle(planned)  # noqa: S311 (not cryptography)
        sustained_set = planned[:sustained_count]
        latency_set = planned[sustained_count : sustained_count + latency_count]
        backlog_set = planned[sustained_count + latency_count :]
        # The limits are measured on --messages of them (all but in a --duration run).
        limits_set = sustained_set[: config.messages]
        result["package_bytes"] = round(statistics.mean(len(p.body) for p in planned))

        if "verify" in phases:
            # Limit 1: bare verification on every core.
            certs = {str(a.code): a.credential.cert_pem.decode() for a in agencies}
            progress("verify only: bare signxml on a process pool")
            verify_rate = await _verify_only(limits_set, certs, key_type.value)
            result["verify_only_per_s"] = round(verify_rate, 1)
            progress(f"verify only: {verify_rate:.0f} packages/s on {os.cpu_count()} processes")

        observer = Observer(settings.amqp_url, [str(c) for c in local.agencies])
        await observer.start()
        urls = {str(a.code): a.amqp_url for a in agencies}
        publishers = Publishers(
            urls, {str(a.code): u for a, u in zip(agencies, users, strict=True)}
        )
        await publishers.start()
        prefetch = config.prefetch or settings.prefetch
        log_dir = work_dir / "logs"
        log_dir.mkdir()

        if "passthrough" in phases:
            # Limit 2: pass-through over the same queues.
            env = child_env(settings)
            children = await start_children(
                [passthrough_command(prefetch)] * config.workers,
                env,
                log_dir,
                PASSTHROUGH_READY_TEXT,
            )
            progress(f"pass-through: {config.workers} processes, {len(limits_set)} messages")
            _, wall = await run_phase("pass-through", limits_set, publishers, observer, progress)
            result["passthrough_docs_per_s"] = round(len(limits_set) / wall, 1)
            progress(f"pass-through: {result['passthrough_docs_per_s']:.0f} docs/s")
            await stop_children(children)
            children = []

        # The real pipeline: sustained, then at a fixed load, then a backlog.
        extra = {"prefetch": str(config.prefetch)} if config.prefetch else {}
        worker_env = child_env(settings, **extra)
        workers = [worker_command()] * config.workers
        if phases & {"sustained", "latency"}:
            children = await start_children(workers, worker_env, log_dir, READY_TEXT)
            progress("worker pids: " + " ".join(str(child.pid) for child in children))
        if "sustained" in phases:
            for child in children:
                child.mark()
            offered = config.rate if config.duration is not None else None
            how = f" at {offered:.0f} docs/s for {config.duration:.0f} s" if offered else ""
            progress(
                f"sustained: {config.workers} worker processes, {len(sustained_set)} messages{how}"
            )
            tracker = Tracker(len(sustained_set))
            sampler = MemorySampler(children, config.sample_every, tracker)
            usage = Usage()
            sampler.start()
            try:
                _, wall = await run_phase(
                    "sustained",
                    sustained_set,
                    publishers,
                    observer,
                    progress,
                    rate=offered,
                    tracker=tracker,
                )
            finally:
                await sampler.stop()
            throughput = len(sustained_set) / wall
            result["throughput_docs_per_s"] = round(throughput, 1)
            result["sustained_messages"] = len(sustained_set)
            result["sustained_seconds"] = round(wall, 2)
            result.update(usage.figures())
            result["workers"] = [child.figures(wall) | sampler.figures(child) for child in children]
            if offered is not None:
                result["sustained_offered_docs_per_s"] = round(offered, 1)
                result["sustained_latency_ms"] = latency_figures(tracker, offered, wall)
            progress(f"sustained: {throughput:.0f} docs/s")

        if "latency" in phases:
            rate = config.rate or result["throughput_docs_per_s"] / 2
            progress(f"latency: {len(latency_set)} messages at {rate:.0f} docs/s")
            tracker, wall = await run_phase(
                "latency", latency_set, publishers, observer, progress, rate=rate
            )
            result["latency_ms"] = latency_figures(tracker, rate, wall)
            result.setdefault("workers", [child.figures(wall) for child in children])
        for figures, child in zip(result.get("workers", []), children, strict=True):
            memory = memory_kb(child.pid)
            figures["peak_rss_mb"] = round(memory.get("VmHWM", 0) / 1024, 1)
            figures["rss_mb_at_end"] = round(memory.get("VmRSS", 0) / 1024, 1)
        await stop_children(children)
        children = []

        if "backlog" in phases:
            result["backlog"] = await run_backlog(
                backlog_set,
                publishers,
                observer,
                lambda: start_children(workers, worker_env, log_dir, READY_TEXT),
                config.sample_every,
                progress,
            )

        if "passthrough_docs_per_s" in result and "throughput_docs_per_s" in result:
            result["passthrough_ratio"] = round(
                result["throughput_docs_per_s"] / result["passthrough_docs_per_s"], 3
            )
        result["targets"] = targets(result, config)
        if config.keep:
            result["kept"] = {
                "drop_with": f"lienthong bench --drop {token}",
                "amqp_url": settings.amqp_url,
                "database_url": settings.database_url,
                "trust": str(settings.trust),
                "files": str(work_dir),
            }
        return result
    finally:
        if children:
            await stop_children(children)
        if publishers is not None:
            await publishers.close()
        if observer is not None:
            await observer.close()
        if not config.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
            try:
                await drop_run(token)
            except Exception as error:  # the broker or the database is away: say what to run
                progress(
                    f"could not delete this run's vhost, users or database ({error}); "
                    f"once the services are back: lienthong bench --drop {token}"
                )


async def drop_run(token: str) -> list[str]:
    """Delete what a run left: its vhost, broker users and database; says what went.

    For a ``--keep`` run, and for one whose own cleanup failed (it prints
    its token).
    """
    import asyncpg

    from exchange.broker.admin import BrokerAdmin
    from exchange.settings import Settings

    if not token.isalnum():
        raise ValueError(f"not a bench run's token: {token!r}")
    base = Settings()
    admin = BrokerAdmin.from_settings(base)
    gone = []
    users = await admin.request("GET", "/users")
    for user in users:
        if str(user["name"]).startswith(f"b{token}-") and await admin.delete_user(user["name"]):
            gone.append(f"broker user {user['name']}")
    if await admin.delete_vhost(f"lienthong-bench-{token}"):
        gone.append(f"vhost lienthong-bench-{token}")
    server = await asyncpg.connect(base.database_url)
    try:
        database = f"lienthong_bench_{token}"
        if await server.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            await server.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
            gone.append(f"database {database}")
    finally:
        await server.close()
    return gone


def targets(result: dict[str, Any], config: BenchConfig) -> dict[str, Any]:
    """Each of the issue's targets that this run measured: wanted, measured, met.

    A sustained run at a fixed offered load (``--duration``) measures what
    was offered, not the throughput: it is not judged against that target.
    """
    found: dict[str, Any] = {}

    def judge(name: str, wanted: float, measured: float, *, at_most: bool = False) -> None:
        met = measured <= wanted if at_most else measured >= wanted
        found[name] = {"wanted": wanted, "measured": measured, "met": met}

    wanted = TARGET_DOCS_PER_S.get(config.size)
    if wanted is not None and "throughput_docs_per_s" in result and config.duration is None:
        judge("throughput_docs_per_s", wanted, result["throughput_docs_per_s"])
    if wanted is not None and "backlog" in result:
        judge("backlog_drain_docs_per_s", wanted, result["backlog"]["drain_docs_per_s"])
    if "passthrough_ratio" in result and config.duration is None:
        judge("passthrough_ratio", TARGET_PASSTHROUGH_RATIO, result["passthrough_ratio"])
    if "latency_ms" in result:
        judge("p99_ms", TARGET_P99_MS, result["latency_ms"]["p99"], at_most=True)
    return found


def _worker_lines(workers: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"{'worker pid':<12}{'CPU s':>8}{'CPU %':>8}{'peak RSS MB':>13}"
        f"{'RSS MB first / median / last / max':>38}{'growth after warm-up':>23}"
    ]
    for w in workers:
        line = f"{w['pid']:<12}{w['cpu_s']:>8.1f}{w['cpu_percent']:>8.0f}{w['peak_rss_mb']:>13.1f}"
        trend = w.get("rss_trend_mb")
        if trend is not None:
            rss = f"{trend['first']:.1f} / {trend['median']:.1f} / {trend['last']:.1f} / "
            rss += f"{trend['max']:.1f}"
            growth = f"{trend['growth_after_warm_up']:+.1f} MB (from {trend['warm_up_s']:.0f} s)"
            line += f"{rss:>38}{growth:>23}"
        lines.append(line)
    return lines


def _usage_line(label: str, figures: dict[str, Any], cpus: int) -> str:
    services = figures["services_cpu_percent"]
    return (
        f"{label:<44}{figures['machine_busy_percent']:>10.0f} %  (of {cpus} CPUs; RabbitMQ "
        f"{services['rabbitmq']:.0f} %, PostgreSQL {services['postgresql']:.0f} %, "
        f"load generator {services['load_generator']:.0f} % of one CPU)"
    )


def table(result: dict[str, Any]) -> str:
    """The figures as text (of the phases that ran)."""
    c, m = result["config"], result["machine"]
    phases = c["phases"]
    runs = []
    if "sustained" in phases:
        runs.append(f"{result.get('sustained_messages', c['messages'])} messages sustained")
    if "latency" in phases:
        runs.append(f"{c['latency_messages']} at fixed load")
    if "backlog" in phases:
        runs.append(f"a backlog of {c['backlog']}")
    lines = [
        f"machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB, {m['platform']}",
        f"workload: {c['agencies']} agencies, {result['package_bytes'] / 1024:.0f} KB packages, "
        f"{c['key_type']}, {c['workers']} worker processes; {', '.join(runs) or 'no run'} "
        f"(signed in {result['signing_seconds']:.1f} s)",
        "",
    ]
    if "verify_only_per_s" in result:
        lines.append(
            f"{'verify only (bare signxml, all cores)':<44}{result['verify_only_per_s']:>10.0f} /s"
        )
    if "passthrough_docs_per_s" in result:
        lines.append(
            f"{'pass-through (no checks, no database)':<44}"
            f"{result['passthrough_docs_per_s']:>10.0f} docs/s"
        )
    if "throughput_docs_per_s" in result:
        label = "sustained (all checks, every guarantee)"
        line = f"{label:<44}{result['throughput_docs_per_s']:>10.0f} docs/s"
        if "sustained_offered_docs_per_s" in result:
            lat = result["sustained_latency_ms"]
            line += (
                f"  (offered {result['sustained_offered_docs_per_s']:.0f} docs/s for "
                f"{result['sustained_seconds']:.0f} s; p50 {lat['p50']:.0f} ms, "
                f"p99 {lat['p99']:.0f} ms)"
            )
        elif "passthrough_ratio" in result:
            line += f"  ({result['passthrough_ratio']:.2f} of pass-through)"
        lines.append(line)
        lines.append(_usage_line("machine busy during the sustained run", result, m["cpus"]))
    if "latency_ms" in result:
        lat = result["latency_ms"]
        lines.append(
            f"latency at {lat['offered_docs_per_s']:.0f} docs/s offered: p50 {lat['p50']:.0f} ms, "
            f"p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms"
        )
    if "workers" in result:
        lines += ["", "workers over the sustained run:", *_worker_lines(result["workers"])]
    if "backlog" in result:
        b = result["backlog"]
        lines += [
            *([""] if lines[-1] else []),
            f"{'backlog published, no worker running':<44}{b['publish_docs_per_s']:>10.0f} docs/s"
            f"  ({b['published']} in {b['publish_seconds']:.1f} s; "
            f"{b['queued_before_drain']} waiting)",
            f"{'backlog drained (all checks)':<44}{b['drain_docs_per_s']:>10.0f} docs/s"
            f"  ({b['drained']} in {b['drain_seconds']:.1f} s; workers started in "
            f"{b['workers_start_seconds']:.1f} s; {b['wall_seconds']:.1f} s from the first "
            "publish)",
            _usage_line("machine busy during the drain", b, m["cpus"]),
            "",
            "workers over the drain:",
            *_worker_lines(b["workers"]),
        ]
    lines.append("")
    for name, t in result.get("targets", {}).items():
        verdict = "met" if t["met"] else "NOT met"
        lines.append(f"target {name}: wanted {t['wanted']}, measured {t['measured']}: {verdict}")
    return "\n".join(lines)


# -- the command line -------------------------------------------------------------------


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    services_parent: argparse.ArgumentParser,
) -> None:
    """Add ``lienthong bench`` to the CLI."""
    from exchange.pki import KeyType

    command = commands.add_parser(
        "bench",
        parents=[services_parent],
        help="benchmark the real pipeline against the machine's limits",
        description=(__doc__ or "").split("\n\n")[0],
    )
    command.add_argument("--quick", action="store_true", help="a small run (under a minute)")
    command.add_argument("--agencies", type=int, help="agencies, over four levels (default 24)")
    command.add_argument("--size", choices=sorted(SIZES), default="5k", help="package size")
    command.add_argument(
        "--key-type",
        choices=[KeyType.RSA_2048.value, KeyType.ECDSA_P256.value],
        default=KeyType.RSA_2048.value,
    )
    command.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    command.add_argument(
        "--phases",
        help=(
            f"comma-separated, of {','.join(PHASES)} (run in that order; default: all but "
            "backlog, or only backlog with --backlog, only sustained with --duration, both "
            "with both)"
        ),
    )
    command.add_argument(
        "--messages",
        type=int,
        help="messages of the sustained run, and of verify only and pass-through (5000)",
    )
    command.add_argument(
        "--latency-messages", type=int, help="messages of the fixed-load run (2000)"
    )
    command.add_argument(
        "--rate",
        type=float,
        help=(
            "offered load of the latency run, and of the sustained run with --duration, docs/s "
            "(default: half the sustained throughput)"
        ),
    )
    command.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help=(
            "the sustained run publishes at --rate for this long (rate x duration messages) "
            "instead of --messages as fast as confirmed: a long run to watch the workers' memory"
        ),
    )
    command.add_argument(
        "--backlog",
        type=int,
        metavar="N",
        help=(
            "messages of the backlog run: queued with no worker running, then drained "
            "(100000; 1000 with --quick)"
        ),
    )
    command.add_argument(
        "--sample-every",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between samples of each worker's VmRSS (sustained and backlog; default 5)",
    )
    command.add_argument(
        "--recipients", type=int, default=4, help="recipients per document (default 4)"
    )
    command.add_argument("--prefetch", type=int, help="the workers' prefetch")
    command.add_argument(
        "--keep", action="store_true", help="keep the vhost, database and keys (for an audit)"
    )
    command.add_argument(
        "--drop",
        metavar="TOKEN",
        help="only delete what the --keep run with this token left (vhost, users, database)",
    )
    command.add_argument("--json", action="store_true", help="print the figures as JSON")
    command.set_defaults(handler=cmd_bench)


def config_of(args: argparse.Namespace) -> BenchConfig:
    """The configuration the options ask for (``--quick`` sets smaller defaults)."""
    defaults: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in ("agencies", "messages", "latency_messages", "backlog"):
        if getattr(args, name) is not None:
            defaults[name] = getattr(args, name)
    if defaults.get("agencies", 2) < 2:
        raise ValueError("at least 2 agencies")
    if args.phases is not None:
        asked = {phase.strip() for phase in args.phases.split(",") if phase.strip()}
        unknown = asked - set(PHASES)
        if unknown or not asked:
            raise ValueError(f"--phases: choose from {','.join(PHASES)}")
    elif args.backlog is not None or args.duration is not None:
        asked = set()
        if args.duration is not None:
            asked.add("sustained")
        if args.backlog is not None:
            asked.add("backlog")
    else:
        asked = set(BenchConfig.phases)
    phases = tuple(phase for phase in PHASES if phase in asked)
    if args.duration is not None and (args.duration <= 0 or not args.rate):
        raise ValueError("--duration needs --rate (the offered load, docs/s) and a positive time")
    if "latency" in phases and "sustained" not in phases and not args.rate:
        raise ValueError("the latency run without the sustained run needs --rate")
    if "backlog" in phases and defaults.get("backlog", BenchConfig.backlog) < 1:
        raise ValueError("--backlog: at least 1 message")
    if args.sample_every <= 0:
        raise ValueError("--sample-every: a positive number of seconds")
    return BenchConfig(
        size=args.size,
        key_type=args.key_type,
        workers=args.workers,
        rate=args.rate,
        recipients=args.recipients,
        prefetch=args.prefetch,
        keep=args.keep,
        phases=phases,
        duration=args.duration,
        sample_every=args.sample_every,
        **defaults,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark; print the table or the JSON; progress goes to stderr."""
    from exchange.commands import EXIT_OK, CommandError, run

    if args.amqp_url or args.database_url or args.rabbitmq_api_url:
        # The bench makes its own vhost and database on these servers.
        for name, env in (
            ("amqp_url", "LIENTHONG_AMQP_URL"),
            ("database_url", "LIENTHONG_DATABASE_URL"),
            ("rabbitmq_api_url", "LIENTHONG_RABBITMQ_API_URL"),
        ):
            if getattr(args, name):
                os.environ[env] = getattr(args, name)
    if args.drop:

        async def drop() -> int:
            for line in await drop_run(args.drop):
                print(f"deleted {line}")
            return EXIT_OK

        try:
            return run(drop())
        except ValueError as error:
            raise CommandError(str(error)) from None
    try:
        config = config_of(args)
    except ValueError as error:
        raise CommandError(str(error)) from None

    def progress(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    async def bench() -> int:
        result = await run_bench(config, progress)
        print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else table(result))
        return EXIT_OK

    return run(bench())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m exchange.bench passthrough``: the pass-through consumer process."""
    parser = argparse.ArgumentParser(prog="python -m exchange.bench")
    parser.add_argument("mode", choices=["passthrough"])
    parser.add_argument("--prefetch", type=int, default=32)
    args = parser.parse_args(argv)
    from exchange import aio
    from exchange.settings import Settings

    aio.run(passthrough(Settings().amqp_url, args.prefetch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
