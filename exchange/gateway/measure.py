"""The gateway's metrics: each answer counted and timed, the mailboxes and systems measured.

:func:`observe` is a :data:`~exchange.gateway.app.Observer` (``Gateway.observers``);
:func:`refresh` computes the figures that come from PostgreSQL (mailbox
depth per agency level, the oldest unconfirmed item's age, the longest
silence of a system), which :func:`keep_refreshed` repeats while the
gateway runs. Every metric is declared in :mod:`exchange.metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from exchange import metrics
from exchange.agency import AgencyCode, InvalidAgencyCode
from exchange.gateway.submit import MESSAGE_TYPES
from exchange.store import gateway as store
from exchange.store.db import Pool

Observer = Callable[[str, str, float, str | None], None]

log = logging.getLogger("exchange.gateway")

# How often the figures from PostgreSQL are computed: two small queries,
# well under Prometheus's usual 15-60 s scrape interval.
REFRESH_EVERY_S = 30.0
# The agency levels (labels of GATEWAY_MAILBOX_ITEMS), every one exported,
# so a level whose mailboxes empty reads 0 and not its last value.
LEVELS = ("1", "2", "3", "4")
# An operation label outside the protocol's: the path is the client's to
# choose, and a label must stay one of a small fixed set.
UNKNOWN_OPERATION = "unknown"


def observer(operations: tuple[str, ...]) -> Observer:
    """The observer to add to ``Gateway.observers``: counts and times every answer.

    Operations not in ``operations`` are counted as ``unknown``.
    """
    known = frozenset(operations)

    def observe(operation: str, outcome: str, seconds: float, system: str | None) -> None:
        label = operation if operation in known else UNKNOWN_OPERATION
        metrics.GATEWAY_REQUESTS.labels(label, outcome).inc()
        metrics.GATEWAY_REQUEST_SECONDS.labels(label).observe(seconds)

    return observe


def depths_by_level(depths: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """Items per (agency level, message type), every level and type present, from per agency."""
    totals = {(level, kind): 0 for level in LEVELS for kind in MESSAGE_TYPES}
    for (agency, kind), count in depths.items():
        try:
            level = str(AgencyCode.parse(agency).level)
        except InvalidAgencyCode:
            continue  # the directory holds only valid codes; a stray row is not a level
        totals[(level, kind)] = totals.get((level, kind), 0) + count
    return totals


def age_s(moment: datetime | None, now: datetime) -> float:
    """Seconds from ``moment`` to ``now``; 0 for none (or a moment ahead of the clock)."""
    return 0.0 if moment is None else max((now - moment).total_seconds(), 0.0)


async def refresh(pool: Pool) -> None:
    """Compute the mailbox and system figures from PostgreSQL into the gauges."""
    async with pool.acquire() as conn:
        depths = await store.mailbox_depths(conn)
        oldest = await store.oldest_unconfirmed(conn)
        contact = await store.least_recent_contact(conn)
    now = datetime.now(UTC)
    for (level, kind), count in depths_by_level(depths).items():
        metrics.GATEWAY_MAILBOX_ITEMS.labels(level, kind).set(count)
    metrics.GATEWAY_OLDEST_UNCONFIRMED_AGE.set(age_s(oldest, now))
    metrics.GATEWAY_LONGEST_SILENCE.set(age_s(contact, now))
    metrics.GATEWAY_FIGURES_REFRESHED.set(time.time())


async def keep_refreshed(pool: Pool, stop: asyncio.Event, every_s: float = REFRESH_EVERY_S) -> None:
    """Run :func:`refresh` every ``every_s`` until ``stop``; a failed round is logged, not fatal.

    The figures then keep their last values and
    ``lienthong_gateway_figures_timestamp_seconds`` stops moving.
    """
    while not stop.is_set():
        try:
            await refresh(pool)
        except Exception:
            log.warning("the gateway's mailbox figures could not be computed", exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
