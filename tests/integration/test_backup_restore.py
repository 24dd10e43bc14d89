"""A backup of the record restored elsewhere: the hash chains verify, with the same heads.

docs/operations.md ("Backups and restores") says to check every restore
with ``lienthong audit --verify-chain`` and compare the heads with those kept
elsewhere. This proves it for a logical backup (``pg_dump`` in custom
format, ``pg_restore`` into a new database, as the database's owner would
restore it, triggers on): the restored chains verify, end at the same heads,
and the exchange goes on sealing new rows after them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.audit import ChainReport, verify_chains
from exchange.settings import Settings
from exchange.status import TransportOutcome
from exchange.store import queries
from exchange.store.db import Connection, connect
from exchange.store.records import NewDocument
from tests.chains import RECIPIENT, SENDER, record_text
from tests.db_fixtures import create_database, drop_database, run_sync, unique_database_name

pytestmark = pytest.mark.services


def tool(name: str) -> str:
    """A PostgreSQL client program (Debian package postgresql-client, with the server)."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (apt-get install postgresql-client)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def restored_database_url(postgres_url: str) -> Iterator[str]:
    """An empty database to restore into, dropped after the test."""
    name = unique_database_name("restore")
    dsn = run_sync(create_database(postgres_url, name))
    try:
        yield dsn
    finally:
        run_sync(drop_database(postgres_url, name))


async def record_documents(conn: Connection, count: int, prefix: str) -> None:
    """``count`` documents to RECIPIENT, delivered, as the worker records them."""
    for number in range(count):
        async with conn.transaction():
            message = await record_text(conn, f"{prefix} message {number}")
            stored = await queries.upsert_document(
                conn,
                NewDocument(
                    sender=SENDER,
                    document_id=f"{prefix}-{number}",
                    sha256=hashlib.sha256(f"{prefix} {number}".encode()).hexdigest(),
                    subject="Văn bản sao lưu",
                ),
                first_message_pk=message.pk,
            )
            delivery, _ = await queries.create_delivery(conn, stored.pk, RECIPIENT, message.pk)
            await queries.append_event(
                conn,
                delivery_pk=delivery.pk,
                message_pk=message.pk,
                code=TransportOutcome.DELIVERED,
            )


def heads(report: ChainReport) -> dict[str, tuple[int, str]]:
    return {chain.chain: (chain.head_seq, chain.head_hash) for chain in report.chains}


async def chains_of(dsn: str) -> ChainReport:
    report = await verify_chains(Settings().model_copy(update={"database_url": dsn}))
    assert report.ok, list(report.lines())
    return report


async def test_a_restored_backup_verifies_with_the_same_heads_and_the_chains_go_on(
    db: Connection, database_url: str, restored_database_url: str, tmp_path: Path
) -> None:
    pg_dump, pg_restore = tool("pg_dump"), tool("pg_restore")
    for code in (SENDER, RECIPIENT):
        await queries.add_agency(db, code, f"Cơ quan {code}")
    await record_documents(db, 25, "before")
    kept = heads(await chains_of(database_url))

    backup = tmp_path / "lienthong.dump"
    run(pg_dump, "--format=custom", f"--file={backup}", f"--dbname={database_url}")
    run(
        pg_restore,
        "--exit-on-error",
        "--no-owner",
        f"--dbname={restored_database_url}",
        str(backup),
    )
    print(f"backup: {backup.stat().st_size} bytes; heads kept: {kept}")

    restored = heads(await chains_of(restored_database_url))
    assert restored == kept
    assert restored["messages"][0] == 25

    # The restored database is the record from now on: new rows chain on.
    conn = await connect(dsn=restored_database_url)
    try:
        await record_documents(conn, 3, "after")
    finally:
        await conn.close()
    grown = heads(await chains_of(restored_database_url))
    assert grown["messages"][0] == kept["messages"][0] + 3
    assert grown["events"][0] == kept["events"][0] + 3
