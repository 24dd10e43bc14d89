"""``lienthong retention``: export, then detach, the record's months older than the retention.

The record (``messages``, ``events``) is partitioned by month (migration
0018). ``retention run`` creates the coming months' partitions, then, for
each month older than ``LIENTHONG_RETENTION_MONTHS`` (unset: keep
everything), writes the partition to a CSV file with a manifest (its runs
of chain positions, size, SHA-256), detaches it and drops it (or keeps it
as a table of its own, ``--keep-table``). ``lienthong audit
--verify-chain`` then verifies the rest of each chain from the recorded
runs and says where each detached month ended and which seal covers it;
``retention verify MANIFEST`` checks an exported file offline.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from exchange.settings import Settings
from exchange.store.db import Connection
from exchange.store.partitions import MonthPartition

# Partitions made ahead of time at each run: a month nobody created goes to
# the DEFAULT partition, which a later partition of that month cannot be
# created over; three months leave a quarter to notice a timer that stopped.
MONTHS_AHEAD = 3


def cutoff(now: datetime, retention_months: int) -> date:
    """The first month kept: months before it are detached.

    With 12 in any day of December 2026, December 2025 is kept and November
    2025 is the last month detached.
    """
    index = now.astimezone(UTC).year * 12 + now.astimezone(UTC).month - 1 - retention_months
    return date(index // 12, index % 12 + 1, 1)


def due(partitions: list[MonthPartition], first_kept: date) -> list[MonthPartition]:
    """The partitions to detach, oldest first (messages before events in a month)."""
    return [p for p in partitions if p.month < first_kept]


@dataclass(frozen=True, slots=True)
class Verification:
    """The offline check of one exported partition."""

    partition: str
    rows: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether the file is whole and its rows chain as its runs say."""
        return not self.problems


def verify_export(manifest_path: Path) -> Verification:
    """Check an export against its manifest, without a database.

    The file's size and SHA-256 must be the manifest's; its rows, in chain
    order, must form exactly the manifest's runs: each row's hash is
    SHA-256(previous hash || its encoded content), from each run's entry
    hash to its exit hash. The manifest's runs are those the database
    recorded (``detached_partitions``, printed by ``audit --verify-chain``);
    the content's encoding can be checked against the columns by loading
    the file back into PostgreSQL (docs/operations.md).
    """
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    data = manifest_path.parent / manifest["file"]
    problems: list[str] = []
    digest = hashlib.sha256()
    with data.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != manifest["sha256"] or data.stat().st_size != manifest["bytes"]:
        problems.append(f"{data.name} is not the file exported: its size or SHA-256 differs")
    runs = {int(run["first"]): run for run in manifest["runs"]}
    csv.field_size_limit(sys.maxsize)
    rows, expected, last_hash, current = 0, None, "", None
    with data.open(newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            rows += 1
            seq = int(row["chain_seq"])
            if seq != expected:
                if (
                    current is not None
                    and expected is not None
                    and expected - 1 != int(current["last"])
                ):
                    problems.append(f"run from {current['first']} stops at {expected - 1}")
                current = runs.get(seq)
                if current is None:
                    problems.append(f"position {seq} starts no run of the manifest")
                    break
                last_hash = str(current["entry"])
            content = bytes.fromhex(row["chain_content"])
            computed = hashlib.sha256(bytes.fromhex(last_hash) + content).hexdigest()
            if computed != row["chain_hash"]:
                problems.append(f"row id {row['id']} (position {seq}) does not match its hash")
            last_hash = row["chain_hash"]
            if current is not None and seq == int(current["last"]) and last_hash != current["exit"]:
                problems.append(f"the run ending at {seq} does not end at its exit hash")
            expected = seq + 1
    if rows != manifest["rows"]:
        problems.append(f"the file holds {rows} rows, the manifest says {manifest['rows']}")
    return Verification(manifest["partition"], rows, tuple(problems))


async def run_retention(
    settings: Settings,
    *,
    export_dir: Path,
    dry_run: bool,
    keep_table: bool,
    months: int | None,
    now: datetime | None = None,
) -> list[str]:
    """Create the coming partitions; export and detach the months past the retention.

    Returns the lines to print.
    """
    from exchange.store import partitions
    from exchange.store.db import connect

    retention = months if months is not None else settings.retention_months
    lines: list[str] = []
    conn = await connect(settings)
    try:
        if not dry_run:
            for name in await partitions.ensure_partitions(conn, MONTHS_AHEAD):
                lines.append(f"created partition {name}")
        for chain, count in (await partitions.default_partition_rows(conn)).items():
            if count:
                lines.append(
                    f"warning: {chain}_default holds {count} row(s) of months without a "
                    "partition; they stay there (docs/operations.md, Partitions)"
                )
        if retention is None:
            lines.append("retention: keep everything (LIENTHONG_RETENTION_MONTHS is not set)")
            return lines
        first_kept = cutoff(now or datetime.now(UTC), retention)
        todo = due(await partitions.month_partitions(conn), first_kept)
        if not todo:
            lines.append(f"nothing to detach: every month from {first_kept:%Y-%m} on is kept")
        for partition in todo:
            if partition.chain == partitions.MAILBOX:
                lines.append(await _mailbox_month(conn, partition, dry_run))
                continue
            rows, runs = await partitions.runs_of(conn, partition)
            span = (
                f"chain positions {runs[0].first} to {max(r.last for r in runs)} in "
                f"{len(runs)} run(s)"
                if runs
                else "no rows"
            )
            if dry_run:
                lines.append(f"would export and detach {partition.name} ({rows} rows, {span})")
                continue
            exported = await partitions.export(conn, partition, export_dir, rows, runs)
            await partitions.detach(conn, partition, exported, runs, drop=not keep_table)
            kept = f", kept as {partition.name}_detached" if keep_table else ", dropped"
            lines.append(
                f"detached {partition.name} ({rows} rows, {span}) to {exported.file} "
                f"sha256 {exported.sha256}{kept}"
            )
    finally:
        await conn.close()
    return lines


async def _mailbox_month(conn: Connection, partition: MonthPartition, dry_run: bool) -> str:
    """Drop a month of the gateway's mailbox once every item of it is confirmed."""
    from exchange.store import partitions

    if dry_run:
        return f"would drop {partition.name} if every item in it is confirmed"
    dropped = await partitions.drop_mailbox_month(conn, partition)
    if dropped is None:
        return f"kept {partition.name}: items of it are not confirmed by their systems yet"
    return f"dropped {partition.name} ({dropped} confirmed items, copies of recorded messages)"


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    services_parent: argparse.ArgumentParser,
) -> None:
    """Add ``lienthong retention run`` and ``retention verify`` to the CLI."""
    command = commands.add_parser(
        "retention",
        help="export and detach the record's months past the retention; verify an export",
        description="The record (messages, events) is partitioned by month. `run` creates "
        "the coming months' partitions and exports then detaches the months older than "
        "LIENTHONG_RETENTION_MONTHS; `verify` checks an exported month offline.",
    )
    sub = command.add_subparsers(dest="retention_command", required=True)
    run = sub.add_parser(
        "run",
        parents=[services_parent],
        help="create the coming partitions; export and detach the months past the retention",
    )
    run.add_argument(
        "--export-dir",
        type=Path,
        required=True,
        help="where each detached month is written (<partition>.csv and .json)",
    )
    run.add_argument("--dry-run", action="store_true", help="say what would be detached")
    run.add_argument(
        "--keep-table",
        action="store_true",
        help="keep each detached partition as a table <partition>_detached instead of dropping it",
    )
    run.add_argument(
        "--months",
        type=int,
        help="months kept, overriding LIENTHONG_RETENTION_MONTHS for this run",
    )
    run.set_defaults(handler=cmd_retention_run)
    verify = sub.add_parser("verify", help="check exported months against their manifests")
    verify.add_argument("manifest", nargs="+", type=Path, help="<partition>.json files")
    verify.set_defaults(handler=cmd_retention_verify)


def cmd_retention_run(args: argparse.Namespace) -> int:
    """Run the retention and print what it did."""
    from exchange.commands import EXIT_OK, CommandError, run, settings_from_args
    from exchange.store.partitions import PartitionError

    if args.months is not None and args.months < 1:
        raise CommandError("--months must be 1 or more (unset keeps everything)")
    settings = settings_from_args(args)

    async def go() -> int:
        try:
            lines = await run_retention(
                settings,
                export_dir=args.export_dir,
                dry_run=args.dry_run,
                keep_table=args.keep_table,
                months=args.months,
            )
        except PartitionError as error:
            raise CommandError(str(error)) from None
        except OSError as error:
            raise CommandError(f"cannot write the export: {error}") from None
        for line in lines:
            print(line)
        return EXIT_OK

    return run(go())


def cmd_retention_verify(args: argparse.Namespace) -> int:
    """Verify each export offline; exit 1 when one does not hold."""
    from exchange.commands import EXIT_OK, EXIT_REFUSED, CommandError

    ok = True
    for manifest in args.manifest:
        try:
            result = verify_export(manifest)
        except (OSError, ValueError, KeyError) as error:
            raise CommandError(f"cannot read the export {manifest}: {error}") from None
        if result.ok:
            print(f"{result.partition}: {result.rows} rows, every run chains: OK")
        else:
            ok = False
            print(f"{result.partition}: {len(result.problems)} problem(s)")
            for problem in result.problems:
                print(f"  {problem}")
    return EXIT_OK if ok else EXIT_REFUSED
