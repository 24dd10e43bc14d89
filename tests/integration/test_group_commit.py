"""The ledger's group commit: messages handled at once share one transaction, safely.

Against a real PostgreSQL (this test's own database): writes submitted
together land in fewer transactions than there are writes; nobody hears
its result before the commit; one message's failing writes are rolled back
alone (its savepoint) while the others' are committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from exchange.ledger import GroupCommit
from exchange.store.db import Connection, Pool

pytestmark = pytest.mark.services


async def _probe(pool: Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE group_probe (n int PRIMARY KEY, tx bigint NOT NULL)")


def _insert(n: int) -> Callable[[Connection], Awaitable[int]]:
    async def writes(conn: Connection) -> int:
        tx: int = await conn.fetchval(
            "INSERT INTO group_probe (n, tx) VALUES ($1, txid_current()) RETURNING tx", n
        )
        return tx

    return writes


async def test_writes_submitted_together_share_transactions_and_all_commit(db_pool: Pool) -> None:
    await _probe(db_pool)
    group = GroupCommit(db_pool)
    txs = await asyncio.gather(*(group.run(_insert(n)) for n in range(40)))
    async with db_pool.acquire() as conn:
        rows = await conn.fetch("SELECT n, tx FROM group_probe ORDER BY n")
    assert [r["n"] for r in rows] == list(range(40))
    assert [r["tx"] for r in rows] == txs
    assert len(set(txs)) < 40  # grouped: fewer transactions than writes


async def test_a_result_is_returned_only_once_its_transaction_committed(db_pool: Pool) -> None:
    await _probe(db_pool)
    group = GroupCommit(db_pool)
    seen_committed: list[bool] = []

    async def one(n: int) -> None:
        await group.run(_insert(n))
        # Another connection sees the row: it was committed, not just written.
        async with db_pool.acquire() as other:
            found = await other.fetchval("SELECT count(*) FROM group_probe WHERE n = $1", n)
        seen_committed.append(found == 1)

    await asyncio.gather(*(one(n) for n in range(10)))
    assert seen_committed == [True] * 10


async def test_one_failing_message_is_rolled_back_alone(db_pool: Pool) -> None:
    await _probe(db_pool)
    group = GroupCommit(db_pool)

    async def fails(conn: Connection) -> int:
        await conn.execute("INSERT INTO group_probe (n, tx) VALUES (1000, 0)")
        await conn.execute("INSERT INTO group_probe (n, tx) VALUES (1, 0)")  # duplicate key
        return -1

    calls = [group.run(_insert(n)) for n in range(5)]
    calls.insert(3, group.run(fails))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert sum(isinstance(o, Exception) for o in outcomes) == 1
    assert isinstance(outcomes[3], Exception)
    async with db_pool.acquire() as conn:
        kept = [r["n"] for r in await conn.fetch("SELECT n FROM group_probe ORDER BY n")]
    assert kept == [0, 1, 2, 3, 4]  # 1000 went with its savepoint


async def test_a_failed_commit_fails_every_message_of_the_group(db_pool: Pool) -> None:
    await _probe(db_pool)
    async with db_pool.acquire() as conn:
        # Checked at commit: the duplicate is only found when the group commits.
        await conn.execute(
            "ALTER TABLE group_probe"
            " ADD CONSTRAINT tx_once UNIQUE (tx) DEFERRABLE INITIALLY DEFERRED"
        )
    group = GroupCommit(db_pool)

    async def same_tx(conn: Connection) -> None:
        await conn.execute("INSERT INTO group_probe (n, tx) VALUES (100, 7)")

    async def same_tx_again(conn: Connection) -> None:
        await conn.execute("INSERT INTO group_probe (n, tx) VALUES (101, 7)")

    outcomes = await asyncio.gather(
        group.run(same_tx), group.run(same_tx_again), return_exceptions=True
    )
    assert all(isinstance(o, Exception) for o in outcomes)
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM group_probe") == 0


async def test_a_lone_failing_message_fails_and_leaves_nothing(db_pool: Pool) -> None:
    await _probe(db_pool)
    group = GroupCommit(db_pool)

    async def fails(conn: Connection) -> None:
        await conn.execute("INSERT INTO group_probe (n, tx) VALUES (1, 0)")
        await conn.execute("INSERT INTO group_probe (n, tx) VALUES (1, 0)")  # duplicate key

    with pytest.raises(Exception, match="duplicate key"):
        await group.run(fails)
    assert await group.run(_insert(2)) > 0  # the group commit still works afterwards
    async with db_pool.acquire() as conn:
        assert [r["n"] for r in await conn.fetch("SELECT n FROM group_probe")] == [2]


@pytest.mark.parametrize("at_once", [1, 3])
async def test_writes_submitted_as_the_last_group_ends_are_written(
    db_pool: Pool, at_once: int
) -> None:
    """The writer of the previous group has just finished: a new one must start."""
    await _probe(db_pool)
    group = GroupCommit(db_pool, at_once=at_once)
    for n in range(5):
        # Awaited directly (wait_for's task would add a turn of the loop and
        # hide the case): the next run starts as the last one's writer ends.
        async with asyncio.timeout(10):
            await group.run(_insert(n))
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM group_probe") == 5


async def test_several_groups_are_written_at_once_and_in_their_order(db_pool: Pool) -> None:
    await _probe(db_pool)
    group = GroupCommit(db_pool, at_once=3, most=4)
    order: list[int] = []

    def ordered(n: int) -> Callable[[Connection], Awaitable[int]]:
        insert = _insert(n)

        async def writes(conn: Connection) -> int:
            order.append(n)
            return await insert(conn)

        return writes

    # Submitted in reverse; each group runs its writes in the order given.
    txs = await asyncio.gather(
        *(group.run(ordered(n), order=f"{n:03d}") for n in range(11, -1, -1))
    )
    assert len(set(txs)) > 1
    by_tx: dict[int, list[int]] = {}
    for n in order:
        by_tx.setdefault(txs[11 - n], []).append(n)
    assert all(ns == sorted(ns) for ns in by_tx.values()), by_tx


# -- the fast path: messages in one statement, and the outbox flags ---------------------


async def _insert_even(conn: Connection, numbers: list[int], flags: list[int]) -> list[int | None]:
    """A stand-in for the ledger's one statement: inserts the even numbers, leaves the odd.

    Flags go to a table of their own; one statement, as in the ledger.
    """
    rows = await conn.fetch(
        """
        WITH flagged AS (INSERT INTO group_flags (pk) SELECT unnest($2::int[]))
        INSERT INTO group_probe (n, tx)
        SELECT n, txid_current() FROM unnest($1::int[]) AS n WHERE n % 2 = 0
        RETURNING n, tx
        """,
        numbers,
        flags,
    )
    done = {row["n"]: row["tx"] for row in rows}
    return [done.get(n) for n in numbers]


async def _probe_flags(pool: Pool) -> None:
    await _probe(pool)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE group_flags (pk int PRIMARY KEY)")


async def test_fast_path_messages_and_flags_share_one_statement_and_the_rest_runs_its_writes(
    db_pool: Pool,
) -> None:
    await _probe_flags(db_pool)
    group = GroupCommit(db_pool, fast_path=_insert_even)
    results = await asyncio.gather(
        *(group.run(_insert(n), fast=n) for n in range(20)),
        *(group.mark(pk) for pk in range(100, 110)),
    )
    txs = results[:20]
    async with db_pool.acquire() as conn:
        rows = await conn.fetch("SELECT n, tx FROM group_probe ORDER BY n")
        flags = [r["pk"] for r in await conn.fetch("SELECT pk FROM group_flags ORDER BY pk")]
    assert [r["n"] for r in rows] == list(range(20))
    assert [r["tx"] for r in rows] == txs
    # The even numbers were written by the statement, the odd by their own writes,
    # never in the same transaction.
    even = {txs[n] for n in range(0, 20, 2)}
    odd = {txs[n] for n in range(1, 20, 2)}
    assert not even & odd
    assert len(even) < 10  # grouped
    assert flags == list(range(100, 110))


async def test_messages_without_a_fast_path_value_never_go_to_the_statement(db_pool: Pool) -> None:
    await _probe_flags(db_pool)
    taken: list[int] = []

    async def fast_path(conn: Connection, numbers: list[int], flags: list[int]) -> list[int | None]:
        taken.extend(numbers)
        return await _insert_even(conn, numbers, flags)

    group = GroupCommit(db_pool, fast_path=fast_path)
    await asyncio.gather(*(group.run(_insert(n), fast=n if n < 4 else None) for n in range(8)))
    assert sorted(taken) == [0, 1, 2, 3]


async def test_a_failing_statement_leaves_every_message_to_its_own_writes(db_pool: Pool) -> None:
    """Nothing of the statement is durable; the messages and flags are written apart."""
    await _probe_flags(db_pool)

    async def broken(conn: Connection, numbers: list[int], flags: list[int]) -> list[int | None]:
        # One statement in the ledger; a transaction here, so that it fails as a whole.
        async with conn.transaction():
            await conn.execute("INSERT INTO group_flags (pk) VALUES (999)")
            await conn.execute("SELECT 1/0")
        return []

    group = GroupCommit(db_pool, fast_path=broken)
    txs = await asyncio.gather(*(group.run(_insert(n), fast=n) for n in range(6)), group.mark(7))
    async with db_pool.acquire() as conn:
        assert [r["n"] for r in await conn.fetch("SELECT n FROM group_probe ORDER BY n")] == list(
            range(6)
        )
        assert await conn.fetchval("SELECT count(*) FROM group_flags") == 0
    assert all(isinstance(tx, int) for tx in txs[:6])
