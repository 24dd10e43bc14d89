"""Crash safety (issue 4, point 4), with real processes, a real broker and a real database.

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

import time
from pathlib import Path

import pytest

from exchange.worker import FAULT_POINTS
from tests.crash.checks import (
    Figures,
    check_parked_queue,
    inboxes_drained,
    reconcile,
    run_audit,
    signed_workload,
    wait_run_complete,
)
from tests.crash.load import Traffic
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
# Messages a worker holds at once. A killed worker's messages all go back
# with their delivery count raised, and straight to the next worker, so a
# message held by four dying workers in a row is parked as poison although
# it killed none (a design limit of counting deliveries, reported). With
# the default 32 and kills this frequent, that parks a few innocent
# messages a run, and the broker's own delivery limit dead-letters some
# without a record; holding 4 makes four deaths in a row unlikely.
KILL_RUN_PREFETCH = "4"
KILL_RUN_POOL = "4"
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
    if await run_audit(worker_env(exchange.settings)) is not None:
        figures.audit = "lienthong audit clean"
    await check_parked_queue(exchange, decided)
    print(figures.line())
