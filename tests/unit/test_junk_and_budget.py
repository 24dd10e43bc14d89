"""Pure pieces of issue-15 limits: the byte budget, what the record keeps of junk, status time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from exchange.edxml.model import VIETNAM_TIME
from exchange.ledger import JUNK_KEPT_BYTES, kept_body
from exchange.pipeline import check_status_time
from exchange.reasons import Reason, Rejection
from exchange.worker import ByteBudget


async def test_a_message_that_fits_goes_ahead_of_a_larger_one_waiting() -> None:
    budget = ByteBudget(100)
    order: list[str] = []
    first = budget.hold(60)
    await first.__aenter__()

    async def handle(name: str, size: int) -> None:
        async with budget.hold(size):
            order.append(name)

    large = asyncio.create_task(handle("large", 80))
    await asyncio.sleep(0)
    small = asyncio.create_task(handle("small", 30))
    await asyncio.sleep(0)
    assert order == ["small"]  # 60 + 30 fit; 60 + 80 do not
    await first.__aexit__(None, None, None)
    await asyncio.gather(large, small)
    assert order == ["small", "large"]
    assert (budget.in_hand, budget.peak) == (0, 90)


async def test_a_package_larger_than_the_budget_waits_for_it_empty_and_holds_it_all() -> None:
    budget = ByteBudget(100)
    seen: list[int] = []

    async def handle(size: int) -> None:
        async with budget.hold(size):
            seen.append(budget.in_hand)
            await asyncio.sleep(0.01)

    await asyncio.gather(handle(10), handle(500), handle(10))
    assert max(seen) <= 100 and 100 in seen
    assert budget.in_hand == 0


async def test_a_waiter_cancelled_gives_its_place_back() -> None:
    budget = ByteBudget(100)
    holding = budget.hold(100)
    await holding.__aenter__()

    async def wait() -> None:
        async with budget.hold(50):
            pass

    waiter = asyncio.create_task(wait())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await holding.__aexit__(None, None, None)
    assert budget.in_hand == 0
    async with budget.hold(100):
        assert budget.in_hand == 100


def test_junk_keeps_its_start_and_its_size_a_signed_refusal_its_whole_body() -> None:
    body = b"x" * (JUNK_KEPT_BYTES * 3)
    junk = Rejection.of(Reason.NOT_WELL_FORMED, "line 1")
    junk.before_signature = True
    assert kept_body(body, junk) == (body[:JUNK_KEPT_BYTES], len(body))
    # Small junk is kept whole (nothing to save); a refusal after the signature too.
    assert kept_body(body[:100], junk) == (body[:100], None)
    signed = Rejection.of(Reason.NOT_ADDRESSED, "not in To")
    assert kept_body(body, signed) == (body, None)


def test_check_status_time_refuses_a_timestamp_too_far_from_arrival() -> None:
    class Status:  # the one field check_status_time reads
        def __init__(self, at: datetime) -> None:
            self.timestamp = at

    arrived = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
    local = arrived.astimezone(VIETNAM_TIME).replace(tzinfo=None)
    day = timedelta(days=1)
    check_status_time(Status(local + day), arrived, day)  # type: ignore[arg-type]
    check_status_time(Status(local - day), arrived, day)  # type: ignore[arg-type]
    for far in (local + day + timedelta(seconds=1), local - 2 * day):
        with pytest.raises(Rejection) as refused:
            check_status_time(Status(far), arrived, day)  # type: ignore[arg-type]
        assert refused.value.reason is Reason.BAD_TIMESTAMP
    check_status_time(Status(local + 400 * day), arrived, None)  # type: ignore[arg-type]
