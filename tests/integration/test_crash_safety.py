"""Crash safety, with real processes, a real broker and a real database.

Each test runs ``lienthong worker`` subprocesses under a supervisor
(:mod:`tests.crash.supervisor`) while the agencies' systems
(:mod:`tests.crash.load`) send thousands of signed messages: documents to
three recipients each, a few tampered ones, and the status every recipient
reports when a document reaches its application. Something then goes
wrong: workers SIGKILL themselves at each step of handling a message, the
broker restarts, the database stops for 30 s. Afterwards
(:mod:`tests.crash.checks`) every message is decided once, as it deserves,
each application was handed each of its documents exactly once, and the
exchange recovered by itself.

The broker and database tests restart the services every other test uses:
they are marked ``disruptive`` (``pytest -m "not disruptive"`` leaves them
out) and always leave the services running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from exchange.worker import FAULT_POINTS
from tests.crash.checks import (
    Figures,
    check_parked_queue,
    inboxes_drained,
    reconcile,
    run_audit,
    settled_at_least,
    signed_workload,
    wait_run_complete,
)
from tests.crash.load import Traffic
from tests.crash.services import (
    broker_kept_running,
    database_kept_running,
    require,
    start_broker,
    start_database,
    stop_broker,
    stop_database,
)
from tests.crash.supervisor import Supervisor, worker_env
from tests.exchange_fixtures import ExchangeUnderTest

pytestmark = pytest.mark.services

WORKERS = 3


# -- 1. workers killed at every step ------------------------------------------------

# ~2,000 messages: 350 documents to 3 recipients each (7 of them tampered),
# and a status 01 for each of the 1,029 genuine deliveries.
KILL_RUN_DOCUMENTS = 350
# Per message and step: about 30 kills over the run, every step hit.
KILL_PROBABILITY = 0.005
# Messages a worker holds at once: the defaults. A killed worker's messages
# all go back with their delivery count raised; the worker blames only the
# redelivered message it was handling (counted in processing_starts), so
# none of its innocent neighbours may end parked.
KILL_RUN_PREFETCH = "32"
KILL_RUN_POOL = "10"
KILL_RUN_TIMEOUT_S = 240.0


async def test_workers_killed_at_every_step_lose_nothing_and_repeat_nothing(
    exchange: ExchangeUnderTest, tmp_path: Path
) -> None:
    workload = await signed_workload(exchange, KILL_RUN_DOCUMENTS)
    faults = ",".join(f"{point}={KILL_PROBABILITY}" for point in FAULT_POINTS)
    env = worker_env(
        exchange.settings, fault_kill=faults, prefetch=KILL_RUN_PREFETCH, db_pool_size=KILL_RUN_POOL
    )
    figures = Figures("SIGKILL at each step")
    started = time.monotonic()
    async with Supervisor(env, workers=WORKERS, log_dir=tmp_path / "logs") as workers:
        async with Traffic(workload) as traffic:
            await traffic.send_documents()
            await wait_run_complete(exchange, workload, traffic, timeout=KILL_RUN_TIMEOUT_S)
            await inboxes_drained(exchange, workload)
        figures.seconds = time.monotonic() - started
        # The supervisor restarted each killed worker; each step killed some.
        assert set(workers.kills) == set(FAULT_POINTS), workers.kills
        decided = await reconcile(exchange, workload, traffic, workers, figures, consumers=WORKERS)
        # No message killed a worker by itself: none may be parked as poison.
        assert decided.counts["parked"] == 0, decided.counts
    if await run_audit(worker_env(exchange.settings)) is not None:
        figures.audit = "lienthong audit clean"
    await check_parked_queue(exchange, decided)
    print(figures.line())


# -- a run through an outage (2 and 3) ------------------------------------------------

RUN_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class Outage:
    """A service taken down in the middle of a run, and brought back."""

    name: str
    # Starts the service again after the run, whatever happened.
    kept_running: Callable[[], AbstractAsyncContextManager[None]]
    stop: Callable[[], Awaitable[None]]
    start: Callable[[], Awaitable[None]]
    seconds: float


@dataclass
class OutageRun:
    """What a run through an outage leaves for its test to check and report."""

    figures: Figures
    workers: Supervisor
    traffic: Traffic


async def run_through_outage(
    exchange: ExchangeUnderTest, outage: Outage, documents: int, log_dir: Path
) -> OutageRun:
    """Send ``documents`` and their statuses, with ``outage`` a quarter of the way in.

    Then the run must reconcile, with the same worker processes it started
    (they reconnected by themselves, none died or needed restarting),
    nothing parked, the audit clean and the parked queue empty.
    """
    workload = await signed_workload(exchange, documents)
    expected = len(workload.document_submissions()) + len(workload.statuses)
    figures = Figures(outage.name)
    started = time.monotonic()
    async with (
        outage.kept_running(),
        Supervisor(worker_env(exchange.settings), workers=WORKERS, log_dir=log_dir) as workers,
    ):
        async with Traffic(workload) as traffic:
            sending = asyncio.create_task(traffic.send_documents())
            await settled_at_least(exchange, expected // 4)
            await outage.stop()
            # The outage itself: its length is the scenario, not a wait for a result.
            await asyncio.sleep(outage.seconds)
            await outage.start()
            await sending
            await wait_run_complete(exchange, workload, traffic, timeout=RUN_TIMEOUT_S)
            await inboxes_drained(exchange, workload)
        figures.seconds = time.monotonic() - started
        decided = await reconcile(exchange, workload, traffic, workers, figures, consumers=WORKERS)
        assert len(workers.runs) == WORKERS, [run.describe() for run in workers.runs]
        assert decided.counts["parked"] == 0
    if await run_audit(worker_env(exchange.settings)) is not None:
        figures.audit = "lienthong audit clean"
    await check_parked_queue(exchange, decided)
    return OutageRun(figures, workers, traffic)


# -- 2. RabbitMQ restarted during a run -------------------------------------------

# ~900 messages: 150 documents to 3 recipients (3 tampered) and their statuses.
BROKER_RUN_DOCUMENTS = 150
# How long the broker stays down: several reconnection attempts of the
# workers and clients (every 2 s).
BROKER_OUTAGE_S = 5.0


@pytest.mark.disruptive
async def test_broker_restarted_during_a_run_loses_nothing_and_workers_reconnect(
    exchange: ExchangeUnderTest, tmp_path: Path
) -> None:
    require("rabbitmqctl")
    outage = Outage(
        "RabbitMQ restart", broker_kept_running, stop_broker, start_broker, BROKER_OUTAGE_S
    )
    run = await run_through_outage(exchange, outage, BROKER_RUN_DOCUMENTS, tmp_path / "logs")
    reconnects = len(run.traffic.app_errors)
    run.figures.notes = f"broker down {BROKER_OUTAGE_S:.0f} s; {reconnects} app reconnects"
    print(run.figures.line())


# -- 3. PostgreSQL stopped for 30 s during a run -----------------------------------

# ~600 messages: the outage, not the volume, is the point (and the 1 min
# retry tier sets the pace).
DATABASE_RUN_DOCUMENTS = 100
DATABASE_OUTAGE_S = 30.0


@pytest.mark.disruptive
async def test_database_stopped_for_30_s_messages_retry_and_end_delivered(
    exchange: ExchangeUnderTest, tmp_path: Path
) -> None:
    require("pg_ctlcluster", "pg_isready")
    outage = Outage(
        "PostgreSQL stopped 30 s",
        database_kept_running,
        stop_database,
        start_database,
        DATABASE_OUTAGE_S,
    )
    run = await run_through_outage(exchange, outage, DATABASE_RUN_DOCUMENTS, tmp_path / "logs")
    # Nothing was parked (the run checked): messages went through the retry
    # tiers (a 30 s outage outlasts the 1 s and 10 s waits, so some waited a
    # minute) and came back to be delivered.
    retries = run.workers.retries()
    assert {"1s", "10s", "1m"} <= set(retries), retries
    assert "10m" not in retries, retries
    run.figures.notes = f"database down {DATABASE_OUTAGE_S:.0f} s"
    print(run.figures.line())
