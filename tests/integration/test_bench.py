"""``lienthong bench``: the figures it reports are all there and hang together.

The pure parts first (the agencies it registers, percentiles, when a
message counts as done, the memory trend, the target verdicts, the phases
the options choose); then one tiny ``--quick`` run and one tiny backlog run
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
from exchange.benchmark.commands import add_commands, config_of
from exchange.benchmark.config import BenchConfig
from exchange.benchmark.harness import Tracker, cpu_per_document, targets
from exchange.benchmark.processes import RssSample, percentile, rss_trend
from exchange.benchmark.workload import agency_codes
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


def test_memory_growth_counts_from_the_first_sample_after_the_warm_up() -> None:
    samples = [
        RssSample(0.0, 60.0, 0),
        RssSample(5.0, 70.0, 50),
        RssSample(10.0, 72.0, 120),
        RssSample(15.0, 71.0, 400),
        RssSample(20.0, 75.0, 1000),
    ]
    trend = rss_trend(samples, warm_after=100)
    assert trend["first"] == 60.0
    assert trend["median"] == 71.0
    assert trend["last"] == 75.0
    assert trend["max"] == 75.0
    assert trend["warm_up_s"] == 10.0
    assert trend["at_warm_up"] == 72.0
    assert trend["growth_after_warm_up"] == 3.0


def test_memory_growth_is_nil_when_the_warm_up_ends_with_the_last_sample() -> None:
    samples = [RssSample(0.0, 60.0, 0), RssSample(1.0, 66.0, 10)]
    trend = rss_trend(samples, warm_after=100)
    assert trend["warm_up_s"] == 1.0
    assert trend["growth_after_warm_up"] == 0.0


def test_memory_growth_is_the_difference_of_the_figures_printed() -> None:
    # 77.46 - 73.14 = 4.32 would round to 4.3, but the table prints 77.5 and 73.1.
    samples = [RssSample(0.0, 73.14, 200), RssSample(5.0, 77.46, 400)]
    trend = rss_trend(samples, warm_after=100)
    assert (trend["at_warm_up"], trend["last"]) == (73.1, 77.5)
    assert trend["growth_after_warm_up"] == 4.4


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


def test_a_run_at_a_fixed_offered_load_is_not_judged_on_throughput() -> None:
    result = {"throughput_docs_per_s": 50.0, "backlog": {"drain_docs_per_s": 1100.0}}
    verdicts = targets(result, BenchConfig(duration=600.0, rate=50.0))
    assert "throughput_docs_per_s" not in verdicts
    assert verdicts["backlog_drain_docs_per_s"]["met"] is True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lienthong")
    services = argparse.ArgumentParser(add_help=False)
    for option in ("--amqp-url", "--database-url", "--rabbitmq-api-url"):
        services.add_argument(option)
    add_commands(parser.add_subparsers(dest="command"), services)
    return parser


def test_cpu_per_document_shares_the_machines_cpu_of_the_sustained_run() -> None:
    result = {
        "sustained_messages": 1000,
        "sustained_seconds": 4.0,
        "machine": {"cpus": 2},
        # 75 % of 2 CPUs for 4 s: 6 CPU-seconds for 1000 documents.
        "machine_busy_percent": 75.0,
        "services_cpu_percent": {"rabbitmq": 50.0, "postgresql": 25.0, "load_generator": 20.0},
        "workers": [{"cpu_s": 1.5}, {"cpu_s": 1.0}],
    }
    assert cpu_per_document(result) == {
        "machine": 6.0,
        "rabbitmq": 2.0,
        "postgresql": 1.0,
        "workers": 2.5,
        "load_generator": 0.8,
    }


def test_quick_sets_small_defaults_that_options_override() -> None:
    quick = config_of(_parser().parse_args(["bench", "--quick"]))
    full = config_of(_parser().parse_args(["bench"]))
    assert quick.messages < full.messages
    assert quick.agencies < full.agencies
    chosen = config_of(_parser().parse_args(["bench", "--quick", "--messages", "7"]))
    assert chosen.messages == 7
    assert quick.gateway_messages < full.gateway_messages
    assert quick.gateway_round_trips < full.gateway_round_trips


def test_the_options_choose_the_phases() -> None:
    def phases(*options: str) -> tuple[str, ...]:
        return config_of(_parser().parse_args(["bench", *options])).phases

    assert phases() == ("verify", "passthrough", "sustained", "latency", "gateway")
    assert phases("--phases", "gateway,sustained") == ("sustained", "gateway")
    assert phases("--backlog", "100") == ("backlog",)
    assert phases("--duration", "600", "--rate", "50") == ("sustained",)
    assert phases("--backlog", "9", "--duration", "60", "--rate", "5") == ("sustained", "backlog")
    assert phases("--phases", "backlog,verify") == ("verify", "backlog")
    assert config_of(_parser().parse_args(["bench", "--quick", "--phases", "backlog"])).backlog


def test_a_long_run_needs_its_offered_load_and_a_phase_must_exist() -> None:
    for options in (["--duration", "600"], ["--phases", "latency"], ["--phases", "warp"]):
        with pytest.raises(ValueError):
            config_of(_parser().parse_args(["bench", *options]))


def test_a_run_of_given_duration_publishes_rate_times_duration_messages() -> None:
    config = config_of(_parser().parse_args(["bench", "--duration", "600", "--rate", "50"]))
    assert config.sustained_messages == 30_000
    assert BenchConfig(messages=7).sustained_messages == 7


async def _database_exists(name: str) -> bool:
    server = await asyncpg.connect(Settings().database_url)
    try:
        return bool(await server.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await server.close()


def _management_api() -> BrokerAdmin:
    admin = BrokerAdmin.from_settings(Settings())
    try:
        asyncio.run(admin.overview())
    except BrokerAdminError as error:
        pytest.skip(f"RabbitMQ's management API is not available: {error}")
    return admin


def _assert_memory_sampled(worker: dict[str, object]) -> None:
    samples = worker["rss_samples"]
    assert isinstance(samples, list) and samples
    seconds = [at for at, _ in samples]
    assert seconds == sorted(seconds) and seconds[0] >= 0
    assert all(mb > 0 for _, mb in samples)
    trend = worker["rss_trend_mb"]
    assert isinstance(trend, dict)
    assert trend["first"] == samples[0][1] and trend["last"] == samples[-1][1]
    assert trend["max"] == max(mb for _, mb in samples) >= trend["median"]
    assert trend["growth_after_warm_up"] == pytest.approx(trend["last"] - trend["at_warm_up"])


def test_a_tiny_quick_run_reports_every_figure_and_cleans_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = _management_api()
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
            "--gateway-messages",
            "8",
            "--gateway-round-trips",
            "4",
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
    cpu = result["cpu_ms_per_doc"]
    assert cpu["machine"] > 0 and cpu["workers"] > 0
    assert worker["peak_rss_mb"] >= worker["rss_mb_at_end"] > 0
    _assert_memory_sampled(worker)
    assert "backlog" not in result
    # The gateway phase, next to the AMQP path: every package sent came out of
    # the recipient's mailbox.
    gateway = result["gateway"]
    assert gateway["messages"] == 8
    assert gateway["send_edoc_docs_per_s"] >= gateway["through_docs_per_s"] > 0
    trip = gateway["round_trip_ms"]
    assert trip["messages"] == 4
    assert 0 < trip["p50"] <= trip["p95"] <= trip["p99"] <= trip["max"]
    assert gateway["gateway_process"]["cpu_s"] > 0
    token = result["vhost"].removeprefix("lienthong-bench-")
    users = {user["name"] for user in asyncio.run(admin.request("GET", "/users"))}
    assert f"b{token}-gateway" not in users

    vhosts = asyncio.run(admin.request("GET", "/vhosts"))
    assert result["vhost"] not in {v["name"] for v in vhosts}
    assert not asyncio.run(_database_exists(result["database"]))


def test_a_tiny_backlog_is_queued_without_workers_then_drained_whole(
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = _management_api()
    args = _parser().parse_args(
        [
            "bench",
            "--quick",
            "--agencies",
            "3",
            "--recipients",
            "2",
            "--backlog",
            "200",
            "--workers",
            "2",
            "--sample-every",
            "0.2",
            "--json",
        ]
    )
    assert args.handler(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "backlog: draining" in captured.err

    # Only the backlog ran.
    assert result["config"]["phases"] == ["backlog"]
    assert "throughput_docs_per_s" not in result and "workers" not in result
    backlog = result["backlog"]
    # Every message waited in the work queue before a worker started, and
    # every one was then both delivered and receipted.
    assert backlog["messages"] == backlog["published"] == 200
    assert backlog["queued_before_drain"] == 200
    assert backlog["drained"] == 200
    assert backlog["publish_docs_per_s"] > 0 and backlog["drain_docs_per_s"] > 0
    assert backlog["drain_docs_per_s"] == pytest.approx(200 / backlog["drain_seconds"], rel=0.02)
    assert backlog["wall_seconds"] >= backlog["drain_seconds"] > 0
    assert result["signing_seconds"] > 0
    assert set(backlog["services_cpu_percent"]) == {"rabbitmq", "postgresql", "load_generator"}
    assert len(backlog["workers"]) == 2
    for worker in backlog["workers"]:
        assert worker["cpu_s"] > 0 and worker["peak_rss_mb"] > 0
        _assert_memory_sampled(worker)
    assert "backlog_drain_docs_per_s" in result["targets"]

    vhosts = asyncio.run(admin.request("GET", "/vhosts"))
    assert result["vhost"] not in {v["name"] for v in vhosts}
    assert not asyncio.run(_database_exists(result["database"]))
