"""``lienthong bench``: its options, and the command that runs the harness or drops a kept run."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import exchange.benchmark
from exchange.benchmark.config import PHASES, QUICK, SIZES, BenchConfig


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    services_parent: argparse.ArgumentParser,
) -> None:
    """Add ``lienthong bench`` to the CLI."""
    from exchange.pki import KeyType

    command = commands.add_parser(
        "bench",
        parents=[services_parent],
        help="benchmark the real pipeline against the machine's limits",
        description=(exchange.benchmark.__doc__ or "").split("\n\n")[0],
    )
    command.add_argument("--quick", action="store_true", help="a small run (under a minute)")
    command.add_argument("--agencies", type=int, help="agencies, over four levels (default 24)")
    command.add_argument("--size", choices=sorted(SIZES), default="5k", help="package size")
    command.add_argument(
        "--key-type",
        choices=[KeyType.RSA_2048.value, KeyType.ECDSA_P256.value],
        default=KeyType.RSA_2048.value,
    )
    command.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    command.add_argument(
        "--phases",
        help=(
            f"comma-separated, of {','.join(PHASES)} (run in that order; default: all but "
            "backlog, or only backlog with --backlog, only sustained with --duration, both "
            "with both)"
        ),
    )
    command.add_argument(
        "--messages",
        type=int,
        help="messages of the sustained run, and of verify only and pass-through (5000)",
    )
    command.add_argument(
        "--latency-messages", type=int, help="messages of the fixed-load run (2000)"
    )
    command.add_argument(
        "--rate",
        type=float,
        help=(
            "offered load of the latency run, and of the sustained run with --duration, docs/s "
            "(default: half the sustained throughput)"
        ),
    )
    command.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help=(
            "the sustained run publishes at --rate for this long (rate x duration messages) "
            "instead of --messages as fast as confirmed: a long run to watch the workers' memory"
        ),
    )
    command.add_argument(
        "--backlog",
        type=int,
        metavar="N",
        help=(
            "messages of the backlog run: queued with no worker running, then drained "
            "(100000; 1000 with --quick)"
        ),
    )
    command.add_argument(
        "--gateway-messages",
        type=int,
        metavar="N",
        help="packages sent through the gateway's sendEdoc as fast as answered (1000; 100 with "
        "--quick)",
    )
    command.add_argument(
        "--gateway-round-trips",
        type=int,
        metavar="N",
        help="packages timed from sendEdoc to getEdoc at a fixed load (300; 50 with --quick)",
    )
    command.add_argument(
        "--flood",
        type=int,
        metavar="N",
        help="the fairness phase: messages one agency floods with (20000; 1000 with --quick)",
    )
    command.add_argument(
        "--flood-others",
        type=int,
        metavar="N",
        help="the fairness phase: messages another agency sends meanwhile (100; 50 with --quick)",
    )
    command.add_argument(
        "--fair-rate",
        type=float,
        metavar="DOCS_PER_S",
        help="the fairness phase: the other agency's offered load (10 docs/s)",
    )
    command.add_argument(
        "--sample-every",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between samples of each worker's VmRSS (sustained and backlog; default 5)",
    )
    command.add_argument(
        "--recipients", type=int, default=4, help="recipients per document (default 4)"
    )
    command.add_argument("--prefetch", type=int, help="the workers' prefetch")
    command.add_argument(
        "--keep", action="store_true", help="keep the vhost, database and keys (for an audit)"
    )
    command.add_argument(
        "--drop",
        metavar="TOKEN",
        help="only delete what the --keep run with this token left (vhost, users, database)",
    )
    command.add_argument("--json", action="store_true", help="print the figures as JSON")
    command.set_defaults(handler=cmd_bench)


def config_of(args: argparse.Namespace) -> BenchConfig:
    """The configuration the options ask for (``--quick`` sets smaller defaults)."""
    defaults: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in (
        "agencies",
        "messages",
        "latency_messages",
        "backlog",
        "gateway_messages",
        "gateway_round_trips",
        "flood",
        "flood_others",
        "fair_rate",
    ):
        if getattr(args, name) is not None:
            defaults[name] = getattr(args, name)
    if defaults.get("agencies", 2) < 2:
        raise ValueError("at least 2 agencies")
    if args.phases is not None:
        asked = {phase.strip() for phase in args.phases.split(",") if phase.strip()}
        unknown = asked - set(PHASES)
        if unknown or not asked:
            raise ValueError(f"--phases: choose from {','.join(PHASES)}")
    elif args.backlog is not None or args.duration is not None:
        asked = set()
        if args.duration is not None:
            asked.add("sustained")
        if args.backlog is not None:
            asked.add("backlog")
    else:
        asked = set(BenchConfig.phases)
    phases = tuple(phase for phase in PHASES if phase in asked)
    if args.duration is not None and (args.duration <= 0 or not args.rate):
        raise ValueError("--duration needs --rate (the offered load, docs/s) and a positive time")
    if "latency" in phases and "sustained" not in phases and not args.rate:
        raise ValueError("the latency run without the sustained run needs --rate")
    for name in ("gateway_messages", "gateway_round_trips"):
        if "gateway" in phases and defaults.get(name, getattr(BenchConfig, name)) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: at least 1")
    if "fairness" in phases:
        if defaults.get("agencies", BenchConfig.agencies) < 3:
            raise ValueError("the fairness phase needs at least 3 agencies")
        for name in ("flood", "flood_others"):
            if defaults.get(name, getattr(BenchConfig, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: at least 1")
        if defaults.get("fair_rate", BenchConfig.fair_rate) <= 0:
            raise ValueError("--fair-rate: a positive number of docs/s")
    if "backlog" in phases and defaults.get("backlog", BenchConfig.backlog) < 1:
        raise ValueError("--backlog: at least 1 message")
    if args.sample_every <= 0:
        raise ValueError("--sample-every: a positive number of seconds")
    return BenchConfig(
        size=args.size,
        key_type=args.key_type,
        workers=args.workers,
        rate=args.rate,
        recipients=args.recipients,
        prefetch=args.prefetch,
        keep=args.keep,
        phases=phases,
        duration=args.duration,
        sample_every=args.sample_every,
        **defaults,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark; print the table or the JSON; progress goes to stderr."""
    from exchange.benchmark.harness import drop_run, run_bench, table
    from exchange.commands import EXIT_OK, CommandError, print_json, run, settings_from_args

    # The bench makes its own vhost and database on these servers.
    settings = settings_from_args(args)
    if args.drop:

        async def drop() -> int:
            for line in await drop_run(args.drop, settings):
                print(f"deleted {line}")
            return EXIT_OK

        try:
            return run(drop())
        except ValueError as error:
            raise CommandError(str(error)) from None
    try:
        config = config_of(args)
    except ValueError as error:
        raise CommandError(str(error)) from None

    def progress(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    async def bench() -> int:
        result = await run_bench(config, settings, progress)
        if args.json:
            print_json(result)
        else:
            print(table(result))
        return EXIT_OK

    return run(bench())
