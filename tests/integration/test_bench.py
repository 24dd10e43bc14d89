"""``lienthong bench``: the figures it reports are all there and hang together.

The pure parts first (the agencies it registers, percentiles, when a
message counts as done, the target verdicts); then one tiny ``--quick`` run
through the command line against the real RabbitMQ, PostgreSQL and worker
processes, whose JSON must carry every key with positive, consistent
numbers, and which must leave no vhost or database behind. No test asserts
a wall-clock figure: the machine decides those.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import asyncpg
import pytest

from exchange.agency import AgencyCode
from exchange.bench import (
    BenchConfig,
    Tracker,
    add_commands,
    agency_codes,
    config_of,
    percentile,
    targets,
)
from exchange.broker.admin import BrokerAdmin, BrokerAdminError
from exchange.settings import Settings


def test_agency_codes_cover_the_four_levels_without_repeats() -> None:
    codes = agency_codes(12)
    parsed = [AgencyCode.parse(code) for code in codes]
    assert len(set(codes)) == 12
    assert {code.level for code in parsed} == {1, 2, 3, 4}


def test_agency_codes_put_every_parent_before_its_children() -> None:
    codes = agency_codes(24)
    seen: set[AgencyCode] = set()
    for code in (AgencyCode.parse(c) for c in codes):
        if code.parent is not None:
            assert code.parent in seen, f"{code} comes before its parent {code.parent}"
        seen.add(code)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0


async def test_a_message_is_done_only_once_both_its_delivery_and_its_receipt_arrived() -> None:
    tracker = Tracker(expected=1)
    key = ("doc", "000.00.00.H26")
    tracker.published[key] = 1.0
    tracker.on_inbox(key, 1.5)
    assert not tracker.done
    tracker.on_receipt(key, 1.25, "delivered")
    assert tracker.done == {key: 1.25}
    assert tracker.complete.is_set()
    assert tracker.latencies_ms() == [250.0]


async def test_a_receipt_of_another_outcome_is_reported_and_not_counted_as_done() -> None:
    tracker = Tracker(expected=1)
    key = ("doc", "000.00.00.H26")
    tracker.on_inbox(key, 1.0)
    tracker.on_receipt(key, 1.0, "rejected")
    assert not tracker.done
    assert tracker.not_delivered == ["doc to 000.00.00.H26: rejected"]


def test_targets_say_which_are_met() -> None:
    result = {
        "throughput_docs_per_s": 1200.0,
        "passthrough_ratio": 0.5,
        "latency_ms": {"p99": 80.0},
    }
    verdicts = targets(result, BenchConfig(size="5k"))
    assert verdicts["throughput_docs_per_s"]["met"] is True
    assert verdicts["passthrough_ratio"]["met"] is False
    assert verdicts["p99_ms"]["met"] is True
    assert targets(result, BenchConfig(size="1m"))["throughput_docs_per_s"]["wanted"] == 50.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lienthong")
    services = argparse.ArgumentParser(add_help=False)
    for option in ("--amqp-url", "--database-url", "--rabbitmq-api-url"):
        services.add_argument(option)
    add_commands(parser.add_subparsers(dest="command"), services)
    return parser


def test_quick_sets_small_defaults_that_options_override() -> None:
    quick = config_of(_parser().parse_args(["bench", "--quick"]))
    full = config_of(_parser().parse_args(["bench"]))
    assert quick.messages < full.messages
    assert quick.agencies < full.agencies
    chosen = config_of(_parser().parse_args(["bench", "--quick", "--messages", "7"]))
    assert chosen.messages == 7


async def _database_exists(name: str) -> bool:
    server = await asyncpg.connect(Settings().database_url)
    try:
        return bool(await server.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await server.close()


def test_a_tiny_quick_run_reports_every_figure_and_cleans_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = BrokerAdmin.from_settings()
    try:
        asyncio.run(admin.overview())
    except BrokerAdminError as error:
        pytest.skip(f"RabbitMQ's management API is not available: {error}")
    args = _parser().parse_args(
        [
            "bench",
            "--quick",
            "--agencies",
            "3",
            "--recipients",
            "2",
            "--messages",
            "12",
            "--latency-messages",
            "6",
            "--workers",
            "1",
            "--json",
        ]
    )
    assert args.handler(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "sustained:" in captured.err  # progress lines go to stderr

    assert result["throughput_docs_per_s"] > 0
    assert result["passthrough_docs_per_s"] > 0
    assert result["verify_only_per_s"] > 0
    assert result["passthrough_ratio"] == pytest.approx(
        result["throughput_docs_per_s"] / result["passthrough_docs_per_s"], rel=0.01
    )
    latency = result["latency_ms"]
    assert latency["messages"] == 6
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert len(result["workers"]) == 1
    worker = result["workers"][0]
    assert worker["cpu_s"] > 0 and worker["peak_rss_mb"] > 0
    assert worker["peak_rss_mb"] >= worker["rss_mb_at_end"] > 0

    vhosts = asyncio.run(admin.request("GET", "/vhosts"))
    assert result["vhost"] not in {v["name"] for v in vhosts}
    assert not asyncio.run(_database_exists(result["database"]))
