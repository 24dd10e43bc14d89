"""The run: publishers and fast consumers on the agencies' side, each phase, the figures.

:func:`run_bench` runs the phases (see :mod:`exchange.benchmark`);
:func:`table` prints its figures; :func:`drop_run` deletes what a
``--keep`` run left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from exchange.benchmark.config import (
    PASSTHROUGH_READY_TEXT,
    READY_TEXT,
    SIZES,
    TARGET_DOCS_PER_S,
    TARGET_P99_MS,
    TARGET_PASSTHROUGH_RATIO,
    WARM_UP_FRACTION,
    BenchConfig,
)
from exchange.benchmark.processes import (
    Child,
    RssSample,
    Usage,
    child_env,
    memory_kb,
    passthrough_command,
    rss_trend,
    start_children,
    stop_children,
    worker_command,
)
from exchange.benchmark.traffic import (
    Observer,
    Publishers,
    Tracker,
    latency_figures,
    publish_messages,
    run_phase,
    wait_done,
    watch_publishing,
)
from exchange.benchmark.workload import (
    Planned,
    SignJob,
    agency_codes,
    party,
    sign_job,
    verify_chunk,
    warm,
)

if TYPE_CHECKING:
    from exchange.demo import LocalExchange
    from exchange.pki import KeyType
    from exchange.registry import GatewayUser
    from exchange.settings import Settings


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
    from exchange.broker.topology import WORK_QUEUES

    tracker = Tracker(len(messages))
    observer.tracker = tracker
    children: list[Child] = []
    try:
        progress(f"backlog: publishing {len(messages)} messages, no worker running")
        started = time.perf_counter()
        publishing = asyncio.create_task(publish_messages(messages, publishers, tracker))
        await watch_publishing("backlog", publishing, tracker, progress)
        publish_seconds = time.perf_counter() - started
        queued = sum([await observer.queue_depth(name) for name in WORK_QUEUES])
        progress(
            f"backlog: published in {publish_seconds:.1f} s "
            f"({len(messages) / publish_seconds:.0f} docs/s), {queued} waiting for workers"
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


# The burst the bench gives every agency (agencies.burst is an integer).
UNLIMITED_BURST = 2**31 - 1


@dataclass(frozen=True)
class FairnessPlan:
    """The fairness phase's signed messages: the other agency alone, then two floods."""

    alone: list[Planned]
    runs: list[tuple[list[Planned], list[Planned]]]


async def _plan_fairness(
    config: BenchConfig,
    agencies: list[Any],
    token: str,
    attachment: int,
    fan_out: int,
    progress: Callable[[str], None],
) -> FairnessPlan:
    """Agency 0 floods, agency 1 sends a few; to the other agencies, every message distinct."""
    flooder, other, *recipients = agencies
    fan_out = max(1, min(fan_out, len(recipients)))
    jobs: list[SignJob] = []
    number = 0

    def job(sender: Any, notation: str, count: int) -> None:
        nonlocal number
        number += 1
        to = tuple(party(recipients[(number + k) % len(recipients)]) for k in range(count))
        jobs.append(
            SignJob(
                number,
                f"{notation}-{token}",
                party(sender),
                to,
                attachment,
                sender.credential.key_pem,
                tuple(sender.credential.cert_chain_pem),
            )
        )

    flood_documents = -(-config.flood // fan_out)
    for _ in range(2 * flood_documents):
        job(flooder, "FLOOD", fan_out)
    for _ in range(3 * config.flood_others):
        job(other, "FAIR", 1)
    progress(f"fairness: signing {len(jobs)} packages")
    signed, _ = await _sign_all(jobs, progress)
    messages = [
        [Planned(j.sender[0], recipient, document_id, body) for recipient, _ in j.recipients]
        for j, (document_id, body) in zip(jobs, signed, strict=True)
    ]
    floods = [m for group in messages[: 2 * flood_documents] for m in group]
    fair = [m for group in messages[2 * flood_documents :] for m in group]
    first, second = floods[: len(floods) // 2], floods[len(floods) // 2 :]
    n = config.flood_others
    return FairnessPlan(
        alone=fair[:n],
        runs=[(first[: config.flood], fair[n : 2 * n]), (second[: config.flood], fair[2 * n :])],
    )


@dataclass(frozen=True)
class GatewayPlan:
    """The gateway phase's agencies, broker user and signed packages."""

    sender: str
    recipient: str
    user: GatewayUser
    throughput: list[bytes]
    round_trip: list[bytes]


async def _prepare_gateway(
    config: BenchConfig,
    local: LocalExchange,
    token: str,
    key_type: KeyType,
    codes: list[str],
    attachment: int,
    progress: Callable[[str], None],
) -> GatewayPlan:
    """Two more agencies behind the gateway, its broker user, their packages signed."""
    from exchange.agency import AgencyCode
    from exchange.benchmark.gateway import gateway_user
    from exchange.registry import provision_gateway_user

    sender_code, recipient_code = agency_codes(len(codes) + 2)[len(codes) :]
    for code in (sender_code, recipient_code):
        await local.register(
            code, f"Cơ quan {code}", broker_user=f"b{token}-{code}", key_type=key_type
        )
    user = await provision_gateway_user(local.settings, gateway_user(token))
    sender = local.agencies[AgencyCode.parse(sender_code)]
    recipient = local.agencies[AgencyCode.parse(recipient_code)]
    count = config.gateway_messages + config.gateway_round_trips
    jobs = [
        SignJob(
            n,
            f"GW-{token}",
            party(sender),
            (party(recipient),),
            attachment,
            sender.credential.key_pem,
            tuple(sender.credential.cert_chain_pem),
        )
        for n in range(1, count + 1)
    ]
    progress(f"gateway: {sender_code} sends to {recipient_code}; signing {count} packages")
    signed, _ = await _sign_all(jobs, progress)
    bodies = [body for _, body in signed]
    return GatewayPlan(
        sender_code,
        recipient_code,
        user,
        bodies[: config.gateway_messages],
        bodies[config.gateway_messages :],
    )


async def _verify_only(messages: list[Planned], certs: dict[str, str], key_type: str) -> float:
    """Bare verifications per second of ``messages`` on a pool of one process per core."""
    cores = os.cpu_count() or 1
    items = [(m.body, certs[m.sender], key_type) for m in messages]
    chunk = max(1, min(50, len(items) // (cores * 4) or 1))
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=cores) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, warm, i) for i in range(cores * 2)))
        # One untimed round, so every process has verified before the clock.
        await asyncio.gather(
            *(loop.run_in_executor(pool, verify_chunk, items[:1]) for _ in range(cores * 2))
        )
        started = time.perf_counter()
        done = await asyncio.gather(*(loop.run_in_executor(pool, verify_chunk, c) for c in chunks))
        elapsed = time.perf_counter() - started
    return sum(done) / elapsed


async def run_bench(
    config: BenchConfig, base: Settings, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Run every phase of the benchmark and return its figures (see :mod:`exchange.benchmark`).

    ``base`` names the servers: the run makes its vhost and database on them.
    """
    from exchange.agency import AgencyCode
    from exchange.broker.admin import BrokerAdmin
    from exchange.demo import LocalExchange
    from exchange.pki import KeyType
    from exchange.registry import set_agency_rate
    from exchange.settings import url_user
    from exchange.store.db import create_database

    key_type = KeyType(config.key_type)
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
        await admin.create_vhost(
            vhost,
            description="lienthong bench (deleted after the run)",
            grant=(admin.user, url_user(base.amqp_url)),
        )
        await create_database(base.database_url, database)
        progress(f"vhost {vhost}, database {database}, files in {work_dir}")
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
        # The bench measures the pipeline, not the agencies' rates: each
        # agency may publish as fast as it can (the token is still taken).
        for code in codes:
            await set_agency_rate(
                local.settings, AgencyCode.parse(code), rate_per_s=1e6, burst=UNLIMITED_BURST
            )
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
                party(first),
                tuple(party(a) for a in agencies[1 : 1 + fan_out]),
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
                party(agencies[(index + step) % len(agencies)]) for step in range(1, fan_out + 1)
            )
            jobs.append(
                SignJob(
                    n,
                    f"BENCH-{token}",
                    party(sender),
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
        result["package_bytes"] = (
            round(statistics.mean(len(p.body) for p in planned)) if planned else len(probe)
        )
        fairness_plan = None
        if "fairness" in phases:
            fairness_plan = await _plan_fairness(
                config, agencies, token, attachment, fan_out, progress
            )
        gateway_plan = None
        if "gateway" in phases:
            gateway_plan = await _prepare_gateway(
                config, local, token, key_type, codes, attachment, progress
            )

        if "verify" in phases:
            # Limit 1: bare verification on every core.
            certs = {str(a.code): a.credential.cert_pem.decode() for a in agencies}
            progress("verify only: bare signxml on a process pool")
            verify_rate = await _verify_only(limits_set, certs, key_type.value)
            result["verify_only_per_s"] = round(verify_rate, 1)
            progress(f"verify only: {verify_rate:.0f} packages/s on {os.cpu_count()} processes")

        # The AMQP agencies' queues only: the gateway's mover empties its agencies'.
        observer = Observer(settings.amqp_url, codes)
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
        if gateway_plan is not None:
            # The workers believe the agency the gateway's user names.
            extra["gateway_users"] = json.dumps([gateway_plan.user.name])
        worker_env = child_env(settings, **extra)
        workers = [worker_command()] * config.workers
        if phases & {"sustained", "latency", "gateway"}:
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
            result["cpu_ms_per_doc"] = cpu_per_document(result)
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
        if gateway_plan is not None:
            from exchange.benchmark.gateway import run_gateway_phase

            result["gateway"] = await run_gateway_phase(
                settings,
                gateway_plan.user.amqp_url,
                local.keys_dir,
                log_dir,
                gateway_plan.sender,
                gateway_plan.recipient,
                gateway_plan.throughput,
                gateway_plan.round_trip,
                None,
                progress,
            )
        for figures, child in zip(result.get("workers", []), children, strict=True):
            memory = memory_kb(child.pid)
            figures["peak_rss_mb"] = round(memory.get("VmHWM", 0) / 1024, 1)
            figures["rss_mb_at_end"] = round(memory.get("VmRSS", 0) / 1024, 1)
        await stop_children(children)
        children = []

        if fairness_plan is not None:
            from exchange.benchmark.fairness import run_fairness

            async def start_fair_workers(more: dict[str, str]) -> list[Child]:
                return await start_children(
                    workers, child_env(settings, **extra, **more), log_dir, READY_TEXT
                )

            result["fairness"] = await run_fairness(
                fairness_plan.alone,
                fairness_plan.runs,
                publishers,
                observer,
                start_fair_workers,
                config.fair_rate,
                progress,
            )
            result["fairness"]["lane_prefetch"] = settings.lane_prefetch

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
                await drop_run(token, base)
            except Exception as error:  # the broker or the database is away: say what to run
                progress(
                    f"could not delete this run's vhost, users or database ({error}); "
                    f"once the services are back: lienthong bench --drop {token}"
                )


async def drop_run(token: str, base: Settings) -> list[str]:
    """Delete what a run left: its vhost, broker users and database; says what went.

    For a ``--keep`` run, and for one whose own cleanup failed (it prints
    its token).
    """
    from exchange.broker.admin import BrokerAdmin
    from exchange.store.db import drop_database

    if not token.isalnum():
        raise ValueError(f"not a bench run's token: {token!r}")
    admin = BrokerAdmin.from_settings(base)
    gone = []
    users = await admin.request("GET", "/users")
    for user in users:
        if str(user["name"]).startswith(f"b{token}-") and await admin.delete_user(user["name"]):
            gone.append(f"broker user {user['name']}")
    if await admin.delete_vhost(f"lienthong-bench-{token}"):
        gone.append(f"vhost lienthong-bench-{token}")
    database = f"lienthong_bench_{token}"
    if await drop_database(base.database_url, database):
        gone.append(f"database {database}")
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


def cpu_per_document(result: dict[str, Any]) -> dict[str, float]:
    """CPU milliseconds each document of the sustained run cost: the whole machine's, and
    RabbitMQ's, PostgreSQL's, the workers' and the load generator's share of it.

    The figure that scales: N documents a second need N times this of CPU,
    wherever the processes run (on one machine, or a cluster's nodes).
    """
    messages = int(result["sustained_messages"])
    seconds = float(result["sustained_seconds"])
    cpus = int(result["machine"]["cpus"])
    services = result["services_cpu_percent"]

    def per_doc(cpu_seconds: float) -> float:
        return round(1000 * cpu_seconds / max(messages, 1), 2)

    return {
        "machine": per_doc(result["machine_busy_percent"] / 100 * cpus * seconds),
        "rabbitmq": per_doc(services["rabbitmq"] / 100 * seconds),
        "postgresql": per_doc(services["postgresql"] / 100 * seconds),
        "workers": per_doc(sum(worker["cpu_s"] for worker in result["workers"])),
        "load_generator": per_doc(services["load_generator"] / 100 * seconds),
    }


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
    if "gateway" in phases:
        runs.append(f"{c['gateway_messages']} + {c['gateway_round_trips']} through the gateway")
    if "fairness" in phases:
        runs.append(f"a flood of {c['flood']} beside {c['flood_others']}")
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
        if "cpu_ms_per_doc" in result:
            cpu = result["cpu_ms_per_doc"]
            lines.append(
                f"{'CPU per document (sustained)':<44}{cpu['machine']:>10.1f} ms  (RabbitMQ "
                f"{cpu['rabbitmq']:.1f}, PostgreSQL {cpu['postgresql']:.1f}, workers "
                f"{cpu['workers']:.1f}, load generator {cpu['load_generator']:.1f})"
            )
    if "latency_ms" in result:
        lat = result["latency_ms"]
        lines.append(
            f"latency at {lat['offered_docs_per_s']:.0f} docs/s offered: p50 {lat['p50']:.0f} ms, "
            f"p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms"
        )
    if "gateway" in result:
        g = result["gateway"]
        trip = g["round_trip_ms"]
        process = g["gateway_process"]
        lines += [
            f"{'gateway: sendEdoc (checks before the reply)':<44}"
            f"{g['send_edoc_docs_per_s']:>10.0f} docs/s  ({g['messages']} packages, "
            f"{g['send_concurrency']} requests at once; the gateway process "
            f"{process['cpu_percent']:.0f} % of one CPU)",
            f"{'gateway: sendEdoc to getEdoc (whole path)':<44}"
            f"{g['through_docs_per_s']:>10.0f} docs/s",
            f"gateway round trip sendEdoc -> getEdoc at {trip['offered_docs_per_s']:.0f} docs/s "
            f"offered: p50 {trip['p50']:.0f} ms, p95 {trip['p95']:.0f} ms, "
            f"p99 {trip['p99']:.0f} ms, max {trip['max']:.0f} ms",
        ]
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
    if "fairness" in result:
        from exchange.benchmark.fairness import fairness_lines

        lines += [*([""] if lines[-1] else []), *fairness_lines(result["fairness"])]
    lines.append("")
    for name, t in result.get("targets", {}).items():
        verdict = "met" if t["met"] else "NOT met"
        lines.append(f"target {name}: wanted {t['wanted']}, measured {t['measured']}: {verdict}")
    return "\n".join(lines)
