"""A database URL of several hosts: a host that never answers does not keep the pool from the next.

The failover test (test_database_failover) loses its primary as a process:
the port refuses at once. A primary whose machine is gone, or hangs, does
not refuse; it never answers. Here such a host (a port that accepts and
says nothing) comes first in the URL, the test's own database second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from exchange.settings import Settings
from exchange.store.db import connect, create_pool

pytestmark = pytest.mark.services

PER_HOST_S = 1.0


@contextlib.asynccontextmanager
async def silent_host() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """A port of 127.0.0.1 that takes connections and never says a word; the connections taken."""
    taken: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken.append(writer)
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], taken
    finally:
        for writer in taken:
            writer.close()
        server.close()
        await server.wait_closed()


def behind(silent_port: int, database_url: str) -> str:
    """``database_url`` with the silent host listed first, asking for the writable primary."""
    parts = urlsplit(database_url)
    login, _, hosts = parts.netloc.rpartition("@")
    netloc = f"{login}@127.0.0.1:{silent_port},{hosts}"
    return parts._replace(netloc=netloc, query="target_session_attrs=read-write").geturl()


async def test_a_first_host_that_never_answers_gets_its_own_time_then_the_next_is_used(
    database_url: str,
) -> None:
    async with silent_host() as (port, taken):
        url = behind(port, database_url)
        # asyncpg alone: one timeout for every host, spent on the first.
        with pytest.raises(TimeoutError):
            await asyncpg.connect(url, timeout=3 * PER_HOST_S)
        settings = Settings().model_copy(
            update={"database_url": url, "db_connect_timeout": PER_HOST_S}
        )
        started = time.monotonic()
        pool = await create_pool(settings)
        try:
            assert await pool.fetchval("SELECT current_database()") == urlsplit(
                database_url
            ).path.lstrip("/")
            opened = time.monotonic() - started
            tried = len(taken)
            # A second connection goes to the host that took the first: the
            # silent one is not asked again while the primary stays put.
            async with pool.acquire() as first, pool.acquire() as second:
                assert first is not second
                assert await second.fetchval("SELECT 1") == 1
            assert len(taken) == tried, "the silent host was tried again"
        finally:
            await pool.close()
        one = await connect(settings)
        await one.close()
    print(
        f"pool opened past a silent first host in {opened:.1f} s "
        f"({PER_HOST_S:.0f} s per host); asyncpg's single timeout never reached the second"
    )
