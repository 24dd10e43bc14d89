"""Anchored history: seals of the chains' heads catch a superuser who rewrites a whole chain.

The intruder here has the PostgreSQL superuser's rights and uses them as
such an intruder would: triggers off (``session_replication_role =
replica``), a row changed, and every hash after it recomputed with the
database's own functions, head included, so that the chain alone verifies.
The seals, signed with a key the database never holds, still say what the
head was; ``verify_chains`` reports which chain, which seal, since when.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509

from exchange.audit import verify_chains
from exchange.pki import create_ca
from exchange.seals import SealError, load_seals, seal_heads, seal_if_due, verify_timestamp
from exchange.settings import Settings
from exchange.store.db import Connection, connect
from tests.chains import record_text
from tests.exchange_fixtures import ExchangeUnderTest, wait_for
from tests.tsa import local_tsa, make_tsa_certificate

pytestmark = pytest.mark.services


def sealing_settings(base: Settings, keys: Path, **more: object) -> Settings:
    """``base`` with a sealing key and certificate made in ``keys``."""
    create_ca(keys, common_name="lienthong sealing key (test)", stem="seal")
    return base.model_copy(
        update={
            "seal_key": keys / "seal.key.pem",
            "seal_cert": keys / "seal.cert.pem",
            **more,
        }
    )


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """This test's database, and a sealing key of its own."""
    base = Settings().model_copy(update={"database_url": database_url})
    return sealing_settings(base, tmp_path / "seal")


async def record(conn: Connection, count: int, label: str) -> None:
    """``count`` messages, each in its own transaction, as the worker records them."""
    for number in range(count):
        await record_text(conn, f"<edXML>{label} {number}</edXML>")


async def rewrite_messages_from(conn: Connection, position: int) -> None:
    """Change the message at ``position`` and recompute every hash after it, head included.

    What a superuser can do: the chain alone no longer shows it.
    """
    body = b"<edXML>what the intruder wants the record to say</edXML>"
    await conn.execute("SET session_replication_role = replica")
    try:
        await conn.execute(
            "UPDATE messages SET body = $1, sha256 = $2 WHERE chain_seq = $3",
            body,
            hashlib.sha256(body).hexdigest(),
            position,
        )
        await conn.execute(
            f"""
            DO $$
            DECLARE
                previous text;
                m messages%ROWTYPE;
            BEGIN
                SELECT coalesce(
                    (SELECT chain_hash FROM messages WHERE chain_seq = {position - 1}),
                    chain_genesis('messages')
                ) INTO previous;
                FOR m IN SELECT * FROM messages WHERE chain_seq >= {position}
                         ORDER BY chain_seq LOOP
                    previous := chain_link(previous, chain_content(m));
                    UPDATE messages SET chain_hash = previous WHERE id = m.id;
                END LOOP;
                UPDATE chain_heads SET hash = previous WHERE chain = 'messages';
            END
            $$
            """
        )
    finally:
        await conn.execute("RESET session_replication_role")


def seal_codes(report: object) -> list[tuple[str, str | None, int | None]]:
    """(code, chain, seal) of each seal problem of a chain report."""
    return [(p.code, p.chain, p.seal) for p in report.seal_problems]  # type: ignore[attr-defined]


async def test_a_whole_chain_rewritten_by_a_superuser_is_caught_by_the_seals(
    db: Connection, settings: Settings
) -> None:
    await record(db, 3, "before the first seal")
    first = await seal_heads(db, settings)
    await record(db, 3, "between the seals")
    second = await seal_heads(db, settings)
    await record(db, 2, "after the second seal")
    assert (first.number, second.number) == (1, 2)
    assert first.heads()["messages"][0] == 3 and second.heads()["messages"][0] == 6
    assert second.content()["previous"] == first.digest

    before = await verify_chains(settings)
    assert before.ok, list(before.lines())
    assert before.seals == 2

    await rewrite_messages_from(db, 5)

    # The chain alone verifies: this is the rewrite the seals are for.
    unsealed = await verify_chains(settings.model_copy(update={"seal_cert": None}))
    assert unsealed.ok, list(unsealed.lines())
    assert "2 seal(s) not checked" in unsealed.notes[0]

    report = await verify_chains(settings)
    lines = list(report.lines())
    print("\n".join(lines))
    assert not report.ok
    assert seal_codes(report) == [("SEAL_REWRITTEN", "messages", 2)]
    (problem,) = report.seal_problems
    # Which chain, which seal, since when: the rows after seal 1's position.
    assert "position 6" in problem.sentence and "seal 2" in problem.sentence
    assert "still matches seal 1" in problem.sentence and "position 3" in problem.sentence
    assert lines[-1].startswith("TAMPERED")


async def test_a_rewrite_reaching_back_before_every_seal_is_caught_too(
    db: Connection, settings: Settings
) -> None:
    await record(db, 4, "sealed")
    await seal_heads(db, settings)
    await rewrite_messages_from(db, 1)
    report = await verify_chains(settings)
    assert seal_codes(report) == [("SEAL_REWRITTEN", "messages", 1)]
    assert "no earlier seal matches" in report.seal_problems[0].sentence


async def test_seals_deleted_forged_or_cut_off_are_named(
    db: Connection, settings: Settings, tmp_path: Path
) -> None:
    await record(db, 2, "one")
    await seal_heads(db, settings)
    await record(db, 2, "two")
    await seal_heads(db, settings)
    await record(db, 2, "three")
    await seal_heads(db, settings)
    # A seal signed with another key, after rewriting the chain: worthless.
    intruder = sealing_settings(settings, tmp_path / "intruder")
    await db.execute("SET session_replication_role = replica")
    try:
        await db.execute("DELETE FROM head_seals WHERE number = 2")
    finally:
        await db.execute("RESET session_replication_role")
    forged = await seal_heads(db, intruder)
    assert forged.number == 4

    report = await verify_chains(settings)
    print("\n".join(report.lines()))
    assert seal_codes(report) == [("SEAL_MISSING", None, 3), ("SEAL_FORGED", None, 4)]

    # Rows recorded before a seal, deleted with the head moved back.
    await db.execute("SET session_replication_role = replica")
    try:
        await db.execute("DELETE FROM messages WHERE chain_seq > 4")
        await db.execute(
            "UPDATE chain_heads SET seq = 4,"
            " hash = (SELECT chain_hash FROM messages WHERE chain_seq = 4) WHERE chain = 'messages'"
        )
    finally:
        await db.execute("RESET session_replication_role")
    cut = await verify_chains(settings)
    assert ("SEAL_BEYOND_END", "messages", 3) in seal_codes(cut)


async def test_sealing_is_refused_without_a_key_and_the_seal_table_is_append_only(
    db: Connection, settings: Settings
) -> None:
    with pytest.raises(SealError, match="LIENTHONG_SEAL_KEY"):
        await seal_heads(db, settings.model_copy(update={"seal_key": None}))
    await seal_heads(db, settings)
    with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
        await db.execute("UPDATE head_seals SET algorithm = 'none'")
    with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
        await db.execute("DELETE FROM head_seals")


async def test_one_seal_per_interval_whichever_process_asks(
    database_url: str, settings: Settings
) -> None:
    due = settings.model_copy(update={"seal_interval_s": 3600.0})
    connections = [await connect(dsn=database_url) for _ in range(4)]
    try:
        written = await asyncio.gather(*(seal_if_due(c, due) for c in connections))
        again = await seal_if_due(connections[0], due)
        seals = await load_seals(connections[0])
    finally:
        for c in connections:
            await c.close()
    assert sum(seal is not None for seal in written) == 1
    assert again is None
    assert [s.number for s in seals] == [1]


async def test_the_seals_are_time_stamped_by_a_configured_authority(
    db: Connection, settings: Settings, tmp_path: Path
) -> None:
    await record(db, 2, "stamped")
    with local_tsa(tmp_path / "tsa") as tsa:
        stamped = settings.model_copy(update={"tsa_url": tsa.url, "tsa_cert": tsa.certificate})
        seal = await seal_heads(db, stamped)
        assert len(tsa.requests) == 1
    assert seal.tsa_token is not None and seal.tsa_time is not None
    print(f"seal {seal.number}: time-stamped {seal.tsa_time.isoformat()} by the local authority")
    assert abs((seal.tsa_time - seal.sealed_at).total_seconds()) < 300
    digest = hashlib.sha256(seal.payload).digest()
    stamped_cert = _read(tsa.certificate)
    assert verify_timestamp(seal.tsa_token, digest, [stamped_cert]) == seal.tsa_time
    with pytest.raises(SealError, match="other data"):
        verify_timestamp(seal.tsa_token, hashlib.sha256(b"other").digest(), [stamped_cert])
    other = make_tsa_certificate(tmp_path / "other-tsa", "another authority")
    with pytest.raises(SealError, match="not trusted"):
        verify_timestamp(seal.tsa_token, digest, [_read(other)])
    assert (await verify_chains(stamped)).ok

    # A token changed in the database no longer verifies.
    token = bytearray(seal.tsa_token)
    token[-5] ^= 0xFF
    await db.execute("SET session_replication_role = replica")
    try:
        await db.execute("UPDATE head_seals SET tsa_token = $1", bytes(token))
    finally:
        await db.execute("RESET session_replication_role")
    report = await verify_chains(stamped)
    assert seal_codes(report) == [("SEAL_TSA_INVALID", None, 1)]


async def test_an_authority_that_does_not_answer_stops_the_seal(
    db: Connection, settings: Settings
) -> None:
    unreachable = settings.model_copy(
        update={"tsa_url": "http://127.0.0.1:9/", "tsa_timeout_s": 2.0}
    )
    with pytest.raises(SealError, match="did not answer"):
        await seal_heads(db, unreachable)
    assert await load_seals(db) == []


async def test_workers_seal_at_the_interval(exchange: ExchangeUnderTest, tmp_path: Path) -> None:
    exchange.local.settings = sealing_settings(
        exchange.settings, tmp_path / "seal", seal_interval_s=0.5
    )
    async with exchange.workers(1):

        async def sealed_twice() -> tuple[bool, str]:
            count = await exchange.fetchval("SELECT count(*) FROM head_seals")
            return count >= 2, f"{count} seal(s)"

        await wait_for(sealed_twice)
    rows = await exchange.fetch("SELECT number, sealed_by FROM head_seals ORDER BY number")
    assert [r["number"] for r in rows][:2] == [1, 2]
    assert (await verify_chains(exchange.settings)).ok


def _read(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())
