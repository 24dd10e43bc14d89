"""The month partitions of the record (migration 0018): listing, exporting, detaching.

``messages`` is partitioned by ``received_at``, ``events`` by ``recorded_at``,
one partition a calendar month (UTC) named ``<table>_YYYY_MM``. A partition
detached by :func:`detach` leaves a row in ``detached_partitions`` with its
runs of chain positions (:class:`Run`), which the audit crosses the gaps
with and an export is verified offline against.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from exchange.store.db import Connection

PARTITIONED = {"messages": "received_at", "events": "recorded_at"}
"""The partitioned tables of the record, each with the column it is partitioned by."""

MAILBOX = "gateway_mailbox"
"""The gateway's mailbox, partitioned by month of arrival too; not a chain."""

_MONTH_NAME = re.compile(
    r"^(?P<chain>messages|events|gateway_mailbox)_(?P<year>[0-9]{4})_(?P<month>[0-9]{2})$"
)


class PartitionError(RuntimeError):
    """A partition cannot be detached; the message says why."""


@dataclass(frozen=True, slots=True)
class Run:
    """Consecutive chain positions ``first``..``last`` held by one partition.

    ``entry`` is the hash of position ``first - 1`` (the chain's genesis for
    position 1), ``exit`` the hash of ``last``.
    """

    first: int
    last: int
    entry: str
    exit: str


@dataclass(frozen=True, slots=True)
class MonthPartition:
    """One month's partition of a chained table."""

    chain: str
    name: str
    month: date

    @property
    def bounds(self) -> tuple[datetime, datetime]:
        """The partition's range of the partitioning column: [first instant, next month's)."""
        start = datetime(self.month.year, self.month.month, 1, tzinfo=UTC)
        year, month = divmod(self.month.month, 12)
        return start, datetime(self.month.year + year, month + 1, 1, tzinfo=UTC)

    @property
    def label(self) -> str:
        """The month as ``YYYY-MM``."""
        return self.month.strftime("%Y-%m")


@dataclass(frozen=True, slots=True)
class DetachedPartition:
    """A row of ``detached_partitions``."""

    chain: str
    partition: str
    month: date
    rows: int
    runs: tuple[Run, ...]
    last_seq: int | None
    last_hash: str | None
    export_file: str
    export_sha256: str
    dropped: bool
    detached_at: datetime


async def ensure_partitions(conn: Connection, months_ahead: int) -> list[str]:
    """Create this month's partitions and the next ``months_ahead`` months'; the names created."""
    rows = await conn.fetch("SELECT record_partitions_ensure($1) AS name", months_ahead)
    return [row["name"] for row in rows]


async def month_partitions(conn: Connection) -> list[MonthPartition]:
    """Every month partition attached to ``messages``, ``events`` and the mailbox, oldest first."""
    rows = await conn.fetch(
        """
        SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent IN ('messages'::regclass, 'events'::regclass,
                              'gateway_mailbox'::regclass)
        """
    )
    found = []
    for row in rows:
        match = _MONTH_NAME.match(row["name"])
        if match is not None:
            month = date(int(match["year"]), int(match["month"]), 1)
            found.append(MonthPartition(match["chain"], row["name"], month))
    return sorted(found, key=lambda p: (p.month, p.chain))


async def default_partition_rows(conn: Connection) -> dict[str, int]:
    """Rows per table in its DEFAULT partition (rows of a month nobody created)."""
    return {
        chain: await conn.fetchval(f"SELECT count(*) FROM {chain}_default")  # noqa: S608
        for chain in (*PARTITIONED, MAILBOX)
    }


async def drop_mailbox_month(conn: Connection, partition: MonthPartition) -> int | None:
    """Detach and drop a month of the mailbox whose items are all confirmed (``done``).

    They are copies of messages the record holds, so nothing is exported.
    Returns the items dropped, or ``None`` (nothing done) when an item of
    that month still waits for its system.
    """
    async with conn.transaction():
        await conn.execute(f"LOCK TABLE {partition.name} IN SHARE MODE")
        row = await conn.fetchrow(
            f"SELECT count(*) FILTER (WHERE state <> 'done'), count(*) "  # noqa: S608
            f"FROM {partition.name}"
        )
        assert row is not None  # an aggregate always returns a row
        waiting, items = row[0], row[1]
        if waiting:
            return None
        await conn.execute(f"ALTER TABLE {MAILBOX} DETACH PARTITION {partition.name}")
        await conn.execute(f"DROP TABLE {partition.name}")
    result: int = items
    return result


def _range_condition(partition: MonthPartition) -> str:
    """The WHERE condition that selects exactly this partition (so the planner prunes to it)."""
    start, end = partition.bounds
    column = PARTITIONED[partition.chain]
    return f"t.{column} >= '{start.isoformat()}' AND t.{column} < '{end.isoformat()}'"


async def _hash_at(conn: Connection, chain: str, seq: int) -> str | None:
    """The hash of position ``seq``: genesis, a row still there, or a detached run's exit."""
    if seq == 0:
        genesis: str = await conn.fetchval("SELECT chain_genesis($1)", chain)
        return genesis
    stored: str | None = await conn.fetchval(
        f"SELECT chain_hash FROM {chain} WHERE chain_seq = $1",  # noqa: S608 (a constant table)
        seq,
    )
    if stored is not None:
        return stored
    for detached in await detached_partitions(conn, chain):
        for run in detached.runs:
            if run.last == seq:
                return run.exit
    return None


async def runs_of(conn: Connection, partition: MonthPartition) -> tuple[int, list[Run]]:
    """The partition's row count and its runs of chain positions, with entry and exit hashes.

    Raises :class:`PartitionError` when a row has no position (inserted
    behind the triggers' back) or the hash before a run is nowhere: the
    chain is broken there and the audit says how.
    """
    rows = await conn.fetch(
        f"""
        SELECT min(chain_seq) AS first, max(chain_seq) AS last, count(*) AS n,
               count(*) FILTER (WHERE chain_seq IS NULL) AS unchained
        FROM (SELECT t.chain_seq, t.chain_seq - row_number() OVER (ORDER BY t.chain_seq) AS run
              FROM {partition.chain} t WHERE {_range_condition(partition)}) numbered
        GROUP BY run ORDER BY min(chain_seq)
        """  # noqa: S608 (constant names and bounds from the catalog)
    )
    total = sum(row["n"] for row in rows)
    if any(row["unchained"] for row in rows):
        raise PartitionError(
            f"{partition.name} holds rows without a chain position: run "
            "`lienthong audit --verify-chain`, which names them, before detaching it"
        )
    runs = []
    for row in rows:
        entry = await _hash_at(conn, partition.chain, row["first"] - 1)
        exit_hash = await _hash_at(conn, partition.chain, row["last"])
        if entry is None or exit_hash is None:
            raise PartitionError(
                f"{partition.name}: the hash before chain position {row['first']} is neither "
                "in the table nor in a detached partition: the chain is broken there (run "
                "`lienthong audit --verify-chain`)"
            )
        runs.append(Run(row["first"], row["last"], entry, exit_hash))
    return total, runs


@dataclass(frozen=True, slots=True)
class Export:
    """A partition written to a file: the CSV and its manifest."""

    file: Path
    manifest: Path
    rows: int
    size: int
    sha256: str


async def export(
    conn: Connection, partition: MonthPartition, directory: Path, rows: int, runs: list[Run]
) -> Export:
    """Write the partition's rows (every column, and each row's encoded chain content) to
    ``<directory>/<partition>.csv``, and its manifest (runs, size, SHA-256) beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{partition.name}.csv"
    await conn.copy_from_query(
        f"SELECT t.*, encode(chain_content(t), 'hex') AS chain_content "  # noqa: S608
        f"FROM {partition.chain} t WHERE {_range_condition(partition)} ORDER BY t.chain_seq",
        output=target,
        format="csv",
        header=True,
    )
    digest = hashlib.sha256()
    with target.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    size = target.stat().st_size
    manifest = directory / f"{partition.name}.json"
    manifest.write_text(
        json.dumps(
            {
                "chain": partition.chain,
                "partition": partition.name,
                "month": partition.label,
                "rows": rows,
                "runs": [asdict(run) for run in runs],
                "file": target.name,
                "bytes": size,
                "sha256": digest.hexdigest(),
                "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return Export(target, manifest, rows, size, digest.hexdigest())


async def detach(
    conn: Connection,
    partition: MonthPartition,
    exported: Export,
    runs: list[Run],
    *,
    drop: bool,
) -> None:
    """Detach the exported partition (and drop it, or keep it as ``<name>_detached``),
    recording its runs, in one transaction.

    Raises :class:`PartitionError`, changing nothing, when the partition
    changed since it was exported.
    """
    async with conn.transaction():
        await conn.execute(f"LOCK TABLE {partition.name} IN SHARE MODE")
        now_rows, now_runs = await runs_of(conn, partition)
        if now_rows != exported.rows or now_runs != runs:
            raise PartitionError(
                f"{partition.name} changed since it was exported ({exported.rows} rows, "
                f"now {now_rows}): run the retention again"
            )
        last = runs[-1] if runs else None
        await conn.execute(
            """
            INSERT INTO detached_partitions
                (chain, partition, month, rows, runs, last_seq, last_hash,
                 export_file, export_bytes, export_sha256, dropped)
            VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11)
            """,
            partition.chain,
            partition.name,
            partition.month,
            exported.rows,
            json.dumps([asdict(run) for run in runs]),
            None if last is None else max(run.last for run in runs),
            None if last is None else max(runs, key=lambda run: run.last).exit,
            exported.file.name,
            exported.size,
            exported.sha256,
            drop,
        )
        await conn.execute(f"ALTER TABLE {partition.chain} DETACH PARTITION {partition.name}")
        if drop:
            await conn.execute(f"DROP TABLE {partition.name}")
        else:
            await conn.execute(f"ALTER TABLE {partition.name} RENAME TO {partition.name}_detached")


def _run(value: dict[str, Any]) -> Run:
    return Run(int(value["first"]), int(value["last"]), str(value["entry"]), str(value["exit"]))


async def detached_partitions(
    conn: Connection, chain: str | None = None
) -> list[DetachedPartition]:
    """The partitions detached so far (of ``chain``, or all), oldest month first.

    None in a database not yet migrated to 0018 (the audit reads it too).
    """
    if await conn.fetchval("SELECT to_regclass('detached_partitions')") is None:
        return []
    rows = await conn.fetch(
        """
        SELECT chain, partition, month, rows, runs::text AS runs, last_seq, last_hash,
               export_file, export_sha256, dropped, detached_at
        FROM detached_partitions WHERE $1::text IS NULL OR chain = $1
        ORDER BY month, chain
        """,
        chain,
    )
    return [
        DetachedPartition(
            chain=row["chain"],
            partition=row["partition"],
            month=row["month"],
            rows=row["rows"],
            runs=tuple(_run(run) for run in json.loads(row["runs"])),
            last_seq=row["last_seq"],
            last_hash=row["last_hash"],
            export_file=row["export_file"],
            export_sha256=row["export_sha256"],
            dropped=row["dropped"],
            detached_at=row["detached_at"],
        )
        for row in rows
    ]


__all__ = [
    "MAILBOX",
    "PARTITIONED",
    "DetachedPartition",
    "Export",
    "MonthPartition",
    "PartitionError",
    "Run",
    "default_partition_rows",
    "detach",
    "detached_partitions",
    "drop_mailbox_month",
    "ensure_partitions",
    "export",
    "month_partitions",
    "runs_of",
]
