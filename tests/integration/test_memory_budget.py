"""A worker's memory is bounded by bytes, not only by the prefetch count.

Through the real worker, broker and database: packages of about 1.4 MB
queued before the worker starts all arrive at once (the prefetch is 32);
with LIENTHONG_HANDLING_BYTES at twice a package's size, never more than
that is in hand at once, and every package is still delivered. The same
batch with a budget that never binds shows the worker would otherwise hold
many more: the scenario does press on the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from exchange.benchmark.workload import document_package
from exchange.demo import LocalAgency
from exchange.report import refresh_metrics
from exchange.worker import Worker, run_workers
from tests.exchange_fixtures import ExchangeUnderTest, recording_client

pytestmark = pytest.mark.services

SENDER = "000.00.00.G22"  # Văn phòng Chính phủ
RECIPIENT = "000.00.00.H26"  # UBND Thành phố Hà Nội
PACKAGES = 10
ATTACHMENT_BYTES = 1_000_000


@contextlib.asynccontextmanager
async def running(exchange: ExchangeUnderTest, handling_bytes: int) -> AsyncIterator[Worker]:
    """One worker with this byte budget (prefetch as configured), for the block."""
    settings = exchange.settings.model_copy(update={"handling_bytes": handling_bytes})
    stop = asyncio.Event()
    started: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()

    async def ready(workers: list[Worker]) -> None:
        started.set_result(workers[0])

    task = asyncio.create_task(
        run_workers(settings, count=1, stop=stop, on_ready=ready, refresh_figures=refresh_metrics)
    )
    try:
        done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        yield started.result()
    finally:
        stop.set()
        await task


async def queue_batch(sender: LocalAgency, recipient: LocalAgency, first: int) -> list[int]:
    """Publish a batch of large packages (the worker not running); their sizes."""
    sizes = []
    async with recording_client(sender) as client:
        for number in range(first, first + PACKAGES):
            package = document_package(
                (SENDER, "Văn phòng Chính phủ"),
                [(RECIPIENT, "UBND Thành phố Hà Nội")],
                attachment_bytes=ATTACHMENT_BYTES,
                number=number,
            )
            await client.send_document(package)
            sizes.append(len(client.published[-1][0]))
    assert str(recipient.code) == RECIPIENT
    return sizes


async def test_a_worker_holds_no_more_package_bytes_than_its_budget_and_loses_nothing(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(SENDER)
    recipient = await exchange.register(RECIPIENT)
    assert exchange.settings.prefetch >= PACKAGES

    # Unbounded (a budget no batch reaches): how much the worker holds at once.
    sizes = await queue_batch(sender, recipient, 1)
    async with running(exchange, handling_bytes=2**40) as worker:
        await exchange.wait_settled(PACKAGES)
        unbounded_peak = worker.budget.peak
    # Bounded at two packages.
    budget = 2 * max(sizes)
    sizes += await queue_batch(sender, recipient, 1 + PACKAGES)
    async with running(exchange, handling_bytes=budget) as worker:
        await exchange.wait_settled(2 * PACKAGES)
        bounded_peak, in_hand_after = worker.budget.peak, worker.budget.in_hand

    print(
        f"\npackages of {min(sizes)}-{max(sizes)} bytes, {PACKAGES} queued per batch, "
        f"prefetch {exchange.settings.prefetch}: at most {unbounded_peak} bytes in hand "
        f"without a binding budget ({unbounded_peak / max(sizes):.1f} packages), "
        f"{bounded_peak} with a budget of {budget} ({bounded_peak / max(sizes):.1f} packages)"
    )
    assert unbounded_peak > budget, "the batch never pressed on the budget; the test proves nothing"
    assert max(sizes) <= bounded_peak <= budget
    assert in_hand_after == 0
    # Nothing lost: every package delivered, once.
    assert len(await exchange.inbox_of(recipient)) == 2 * PACKAGES
    outcomes = await exchange.fetch("SELECT outcome, count(*) FROM message_state GROUP BY 1")
    assert [(row["outcome"], row["count"]) for row in outcomes] == [("delivered", 2 * PACKAGES)]


async def test_a_package_larger_than_the_whole_budget_is_handled_alone(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(SENDER)
    recipient = await exchange.register(RECIPIENT)
    sizes = await queue_batch(sender, recipient, 1)
    budget = min(sizes) // 2
    async with running(exchange, handling_bytes=budget) as worker:
        await exchange.wait_settled(PACKAGES)
        peak = worker.budget.peak
    print(f"\nbudget {budget} bytes, packages of {min(sizes)}+ bytes: at most {peak} in hand")
    assert peak == budget  # each alone, holding the whole budget
    assert len(await exchange.inbox_of(recipient)) == PACKAGES
