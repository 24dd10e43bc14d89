"""A real deadlock between two transactions: the victim runs again and goes through.

Two connections take the same two rows in opposite orders, as a worker
marking a batch of messages published and another taking their deliveries
one by one for a group of statuses do. PostgreSQL aborts the one that
waited first (after its deadlock_timeout); :func:`again_on_conflict` runs
it again once the other committed.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from exchange.store.db import again_on_conflict

pytestmark = pytest.mark.services


async def test_the_victim_of_a_deadlock_is_run_again_and_both_transactions_commit(
    database_url: str,
) -> None:
    first = await asyncpg.connect(database_url)
    second = await asyncpg.connect(database_url)
    try:
        await first.execute(
            "CREATE TABLE crossing (id int PRIMARY KEY, touched int NOT NULL DEFAULT 0);"
            "INSERT INTO crossing (id) VALUES (1), (2)"
        )
        attempts = 0
        holding_two = asyncio.Event()

        async def one_then_two() -> None:
            nonlocal attempts
            attempts += 1
            async with first.transaction():
                await first.execute("UPDATE crossing SET touched = touched + 1 WHERE id = 1")
                holding_two.set()  # the other side holds row 2 by now
                await first.execute("UPDATE crossing SET touched = touched + 1 WHERE id = 2")

        async with second.transaction():
            await second.execute("SELECT 1 FROM crossing WHERE id = 2 FOR UPDATE")
            running = asyncio.create_task(again_on_conflict(one_then_two))
            await holding_two.wait()
            await asyncio.sleep(0.2)  # the first now waits for row 2
            await second.execute("SELECT 1 FROM crossing WHERE id = 1 FOR UPDATE")
        await running

        assert attempts == 2, "the first transaction was the deadlock's victim once"
        rows = await first.fetch("SELECT id, touched FROM crossing ORDER BY id")
        assert [(r["id"], r["touched"]) for r in rows] == [(1, 1), (2, 1)]
    finally:
        await first.close()
        await second.close()
