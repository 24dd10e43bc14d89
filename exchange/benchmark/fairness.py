"""The fairness phase: one agency floods, another sends a few; how long do the few wait?

Three runs, each of real ``lienthong worker`` processes:

1. **alone**: the other agency's messages at a fixed load, nothing else;
2. **flood, own lanes** (as the client library publishes): the flooding
   agency publishes its messages as fast as the broker confirms them while
   the other publishes as in run 1, each naming its lane;
3. **flood, one lane**: the same without lane headers, so that every
   message waits in one lane, first come first served
   (``LIENTHONG_FAIR_SHARE=0``): what two agencies sharing a lane see.

Each of the other agency's messages is timed from its publish to the later
of its delivery and its receipt; the figures are its percentiles in each
run, and the time the flood took to drain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from exchange.benchmark.processes import Child, percentile, stop_children
from exchange.benchmark.traffic import (
    Observer,
    Publishers,
    Tracker,
    latency_figures,
    publish_messages,
    wait_done,
)
from exchange.benchmark.workload import Planned

StartWorkers = Callable[[dict[str, str]], Awaitable[list[Child]]]


def _figures(
    tracker: Tracker, keys: set[tuple[str, str]], rate: float, wall: float
) -> dict[str, Any]:
    """Percentiles of the messages ``keys`` only (the other agency's)."""
    latencies = [
        (at - tracker.published[key]) * 1000
        for key, at in tracker.done.items()
        if key in keys and key in tracker.published
    ]
    return {
        "p50": round(percentile(latencies, 0.50), 1),
        "p95": round(percentile(latencies, 0.95), 1),
        "p99": round(percentile(latencies, 0.99), 1),
        "max": round(max(latencies), 1),
        "offered_docs_per_s": round(rate, 1),
        "messages": len(latencies),
        "wall_seconds": round(wall, 2),
    }


async def _flood_run(
    name: str,
    flood: Sequence[Planned],
    fair: Sequence[Planned],
    publishers: Publishers,
    observer: Observer,
    rate: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    tracker = Tracker(len(flood) + len(fair))
    observer.tracker = tracker
    started = time.perf_counter()
    try:

        async def both() -> None:
            await asyncio.gather(
                publish_messages(flood, publishers, tracker),
                publish_messages(fair, publishers, tracker, rate=rate),
            )

        wall = await wait_done(name, tracker, progress, started, asyncio.create_task(both()))
    finally:
        observer.tracker = None
    figures = _figures(tracker, {m.key for m in fair}, rate, wall)
    flood_keys = {m.key for m in flood}
    flood_done = [at for key, at in tracker.done.items() if key in flood_keys]
    figures["flood_messages"] = len(flood)
    figures["flood_drain_seconds"] = round(max(flood_done) - started, 2)
    figures["flood_docs_per_s"] = round(len(flood) / (max(flood_done) - started), 1)
    return figures


async def run_fairness(
    alone: Sequence[Planned],
    runs: Sequence[tuple[Sequence[Planned], Sequence[Planned]]],
    publishers: Publishers,
    observer: Observer,
    start_workers: StartWorkers,
    rate: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The three runs (``runs``: the flood and the other's messages of runs 2 and 3)."""
    result: dict[str, Any] = {"rate": rate}
    (lane_flood, lane_fair), (fifo_flood, fifo_fair) = runs
    children = await start_workers({})
    try:
        progress(f"fairness: {len(alone)} messages of one agency alone at {rate:.0f} docs/s")
        tracker = Tracker(len(alone))
        observer.tracker = tracker
        started = time.perf_counter()
        try:
            publishing = asyncio.create_task(
                publish_messages(alone, publishers, tracker, rate=rate)
            )
            wall = await wait_done("fairness alone", tracker, progress, started, publishing)
        finally:
            observer.tracker = None
        result["alone_ms"] = latency_figures(tracker, rate, wall)
        progress(f"fairness: alone {_said(result['alone_ms'])}")
        progress(
            f"fairness: {len(lane_flood)} from the flooder with {len(lane_fair)} of the other, "
            "each in its own lane"
        )
        result["lanes_ms"] = await _flood_run(
            "fairness flood, own lanes",
            lane_flood,
            lane_fair,
            publishers,
            observer,
            rate,
            progress,
        )
        progress(f"fairness: with the flood, own lanes {_said(result['lanes_ms'])}")
    finally:
        await stop_children(children)
    # Without lane headers every message waits in one lane, and no worker
    # moves anything to the bulk queue: one first-come, first-served queue.
    children = await start_workers({"fair_share": "0"})
    publishers.lanes = False
    try:
        progress(
            f"fairness: {len(fifo_flood)} from the flooder with {len(fifo_fair)} of the other, "
            "one lane, first come first served"
        )
        result["first_come_ms"] = await _flood_run(
            "fairness flood, first come first served",
            fifo_flood,
            fifo_fair,
            publishers,
            observer,
            rate,
            progress,
        )
        progress(f"fairness: with the flood, first come {_said(result['first_come_ms'])}")
    finally:
        publishers.lanes = True
        await stop_children(children)
    alone_p99 = result["alone_ms"]["p99"] or 1.0
    result["factor_lanes"] = round(result["lanes_ms"]["p99"] / alone_p99, 1)
    result["factor_first_come"] = round(result["first_come_ms"]["p99"] / alone_p99, 1)
    return result


def _said(figures: dict[str, Any]) -> str:
    """One run's figures in a progress line (kept if a later run fails)."""
    drained = figures.get("flood_drain_seconds")
    flood = f", flood drained in {drained:.0f} s" if drained is not None else ""
    return (
        f"p50 {figures['p50']:.0f} ms, p99 {figures['p99']:.0f} ms, "
        f"max {figures['max']:.0f} ms{flood}"
    )


def fairness_lines(f: dict[str, Any]) -> list[str]:
    """The fairness figures as lines of the bench's table."""
    alone, lanes, fifo = f["alone_ms"], f["lanes_ms"], f["first_come_ms"]

    def line(label: str, lat: dict[str, Any]) -> str:
        return (
            f"{label:<44}p50 {lat['p50']:>7.0f} ms, p99 {lat['p99']:>7.0f} ms, "
            f"max {lat['max']:>7.0f} ms"
        )

    return [
        f"fairness: the other agency's {alone['messages']} messages at "
        f"{f['rate']:.0f} docs/s, publish to delivery and receipt"
        + (f"; lane prefetch {f['lane_prefetch']}" if "lane_prefetch" in f else ""),
        line("  alone", alone),
        line(f"  with {lanes['flood_messages']} flooding, own lanes", lanes)
        + f"  (x{f['factor_lanes']}; flood drained in {lanes['flood_drain_seconds']:.0f} s)",
        line(f"  with {fifo['flood_messages']} flooding, one lane", fifo)
        + f"  (x{f['factor_first_come']}; flood drained in {fifo['flood_drain_seconds']:.0f} s)",
    ]
