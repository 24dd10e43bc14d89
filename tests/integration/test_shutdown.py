"""Graceful shutdown, with real worker processes under load.

SIGTERM makes a worker stop consuming, finish every message it was handed
(acknowledged once its effects are confirmed) or give it back, and exit 0.
Proven on one worker stopped in the middle of a run, and on a rolling
restart of three workers (each in turn stopped with SIGTERM and replaced)
while agencies keep sending: nothing is lost, and since no worker ever
abandons a message half-way, no message is even processed twice.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from exchange.broker.topology import WORK_QUEUES
from tests.crash.checks import (
    Figures,
    check_parked_queue,
    inboxes_drained,
    poll,
    queue_stats,
    reconcile,
    run_audit,
    settled_at_least,
    signed_workload,
    wait_run_complete,
)
from tests.crash.load import Traffic
from tests.crash.supervisor import Supervisor, WorkerRun, worker_env
from tests.exchange_fixtures import ExchangeUnderTest

pytestmark = pytest.mark.services

RUN_TIMEOUT_S = 180.0


def assert_stopped_cleanly(run: WorkerRun) -> None:
    """The worker exited 0 on SIGTERM, said how much it did, and logged no error."""
    assert run.returncode == 0, run.describe()
    assert run.stopped_line is not None, f"{run.describe()}: no 'stopped after' line"
    assert not run.errors, f"{run.describe()}: {run.errors[:5]}"


def assert_each_processed_once(workers: Supervisor) -> None:
    """No message was processed by two workers, or twice by one: none was abandoned."""
    repeated = {pk: n for pk, n in workers.finished_messages().items() if n > 1}
    assert not repeated, f"messages processed more than once: {dict(list(repeated.items())[:10])}"


# -- one worker stopped in the middle of a run --------------------------------------

# 300 document messages and their statuses: a single worker needs several
# seconds, so it is stopped with plenty still waiting.
STOP_RUN_DOCUMENTS = 100
STOP_AFTER_SETTLED = 80


async def test_sigterm_stops_consuming_finishes_what_is_in_flight_and_exits_0(
    exchange: ExchangeUnderTest, tmp_path: Path
) -> None:
    workload = await signed_workload(exchange, STOP_RUN_DOCUMENTS)
    figures = Figures("SIGTERM one worker mid-run")
    started = time.monotonic()
    async with Supervisor(
        worker_env(exchange.settings), workers=1, log_dir=tmp_path / "logs"
    ) as workers:
        async with Traffic(workload) as traffic:
            await traffic.send_documents()
            await settled_at_least(exchange, STOP_AFTER_SETTLED)
            stopped = await workers.terminate(0)
            assert_stopped_cleanly(stopped)
            # The moment it is gone: every message it took is finished (no
            # decision without its effects confirmed), none is held any more,
            # and the rest still waits in the work queue for the next worker.
            unfinished = await exchange.fetchval(
                "SELECT count(*) FROM message_state WHERE published_at IS NULL"
            )
            assert unfinished == 0, "the stopped worker left messages half-done"

            async def released() -> tuple[bool, str]:
                stats = await queue_stats(exchange)
                consumers = sum(stats[name].consumers for name in WORK_QUEUES)
                held = sum(stats[name].messages_unacknowledged for name in WORK_QUEUES)
                return (consumers, held) == (0, 0), (
                    f"{consumers} consumers, {held} unacknowledged"
                )

            await poll(released, timeout=30, what="the stopped worker still holds messages")
            waiting = await exchange.work_depth()
            assert waiting > 0, "the worker drained the queue instead of stopping"
            # A new worker takes over and finishes the run.
            await workers.start_worker(0)
            await wait_run_complete(exchange, workload, traffic, timeout=RUN_TIMEOUT_S)
            await inboxes_drained(exchange, workload)
        figures.seconds = time.monotonic() - started
        decided = await reconcile(exchange, workload, traffic, workers, figures, consumers=1)
        assert decided.counts["parked"] == 0
        assert_each_processed_once(workers)
    if await run_audit(worker_env(exchange.settings)) is not None:
        figures.audit = "lienthong audit clean"
    await check_parked_queue(exchange, decided)
    figures.notes = f"stopped with {waiting} messages waiting; {stopped.stopped_line}"
    print(figures.line())


# -- a rolling restart of three workers during a run --------------------------------

ROLLING_WORKERS = 3
ROLLING_DOCUMENTS = 600  # 1,800 document messages and ~1,800 statuses: long enough that
# every replacement happens while work is left (the workers got faster)
# Each worker is replaced twice, spread over the run.
ROLLING_ROUNDS = 2


async def test_rolling_restart_during_a_run_loses_and_repeats_nothing(
    exchange: ExchangeUnderTest, tmp_path: Path
) -> None:
    workload = await signed_workload(exchange, ROLLING_DOCUMENTS)
    expected = len(workload.document_submissions()) + len(workload.statuses)
    restarts = ROLLING_WORKERS * ROLLING_ROUNDS
    figures = Figures("rolling restart")
    started = time.monotonic()
    stopped: list[WorkerRun] = []
    async with Supervisor(
        worker_env(exchange.settings), workers=ROLLING_WORKERS, log_dir=tmp_path / "logs"
    ) as workers:
        async with Traffic(workload) as traffic:
            await traffic.send_documents()
            # SIGTERM one worker, start its replacement, and again, each
            # time a little more of the run is done, until all were replaced
            # twice; the run goes on meanwhile.
            for step in range(restarts):
                await settled_at_least(exchange, expected * (step + 1) // (restarts + 2))
                old, _ = await workers.replace(step % ROLLING_WORKERS)
                assert_stopped_cleanly(old)
                stopped.append(old)
            await wait_run_complete(exchange, workload, traffic, timeout=RUN_TIMEOUT_S)
            await inboxes_drained(exchange, workload)
        figures.seconds = time.monotonic() - started
        decided = await reconcile(
            exchange, workload, traffic, workers, figures, consumers=ROLLING_WORKERS
        )
        assert decided.counts["parked"] == 0
        assert_each_processed_once(workers)
        # Every replaced worker had taken part in the run.
        done = Counter(run.number for run in stopped for _ in run.finished)
        assert all(done[run.number] > 0 for run in stopped), done
    if await run_audit(worker_env(exchange.settings)) is not None:
        figures.audit = "lienthong audit clean"
    await check_parked_queue(exchange, decided)
    figures.notes = f"{len(stopped)} workers replaced"
    print(figures.line())
