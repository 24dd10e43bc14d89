"""A worker process's broker connections: publishing apart, the lanes over connections of their own.

The broker sends a connection's messages one after another: on a shared
connection a 60 MiB message holds back every other lane's messages and the
confirms of the worker's own publishing for the time it takes to send it.
Read from the broker's management API, through a real worker.
"""

from __future__ import annotations

import urllib.parse
from collections import defaultdict
from typing import Any

import pytest

from exchange.broker.admin import BrokerAdmin
from exchange.broker.topology import BULK_QUEUE, LANE_QUEUES, LANES, WORK_QUEUE
from tests.exchange_fixtures import ExchangeUnderTest, wait_for

pytestmark = pytest.mark.services


async def consumers_by_connection(
    exchange: ExchangeUnderTest, expected: int, connections: int
) -> dict[str, list[str]]:
    """Client-given connection name -> the queues consumed over it.

    Once ``expected`` consumers and ``connections`` connections are listed.
    """
    admin = BrokerAdmin.from_settings(exchange.settings)
    vhost = urllib.parse.quote(exchange.vhost, safe="")
    found: dict[str, list[str]] = {}

    async def listed() -> tuple[bool, str]:
        opened: list[dict[str, Any]] = await admin.request("GET", f"/vhosts/{vhost}/connections")
        named = {
            c["name"]: c.get("client_properties", {}).get("connection_name", "") for c in opened
        }
        consumers: list[dict[str, Any]] = await admin.request("GET", f"/consumers/{vhost}")
        found.clear()
        for name in named.values():
            found[name] = []
        for consumer in consumers:
            # Until the channel's statistics come in (every 5 s), the API
            # gives [] for its details; after a restart, the connection may
            # be listed later than its consumers.
            details = consumer.get("channel_details")
            on = details.get("connection_name") if isinstance(details, dict) else None
            connection = named.get(on, "?") if on else "?"
            found.setdefault(connection, []).append(consumer["queue"]["name"])
        count = sum(len(queues) for queues in found.values())
        unknown = len(found.get("?", []))
        listed = len(named)
        return count >= expected and not unknown and listed >= connections, (
            f"{count} of {expected} consumers and {listed} of {connections} connections "
            f"listed, {unknown} consumers on a connection not listed yet"
        )

    await wait_for(listed, timeout=60)
    return found


async def test_a_worker_publishes_apart_and_reads_each_lane_over_a_connection_of_its_own(
    exchange: ExchangeUnderTest,
) -> None:
    assert exchange.settings.lane_connections == LANES
    workers = 2

    async with exchange.workers(workers):
        # Each worker: the work queue, the bulk queue and every lane.
        found = await consumers_by_connection(exchange, workers * (2 + LANES), 2 + LANES)

    assert found["lienthong-worker-publish"] == [], "the publishing connection consumes nothing"
    assert sorted(found["lienthong-worker"]) == sorted([WORK_QUEUE, BULK_QUEUE] * workers)
    lanes = {name: queues for name, queues in found.items() if "-lanes-" in name}
    assert len(lanes) == LANES
    # One lane a connection, consumed by each worker of the process.
    assert sorted(queue for queues in lanes.values() for queue in set(queues)) == sorted(
        LANE_QUEUES
    )
    assert all(len(queues) == workers and len(set(queues)) == 1 for queues in lanes.values())


async def test_fewer_lane_connections_each_carry_their_share_of_the_lanes(
    exchange: ExchangeUnderTest,
) -> None:
    exchange.local.settings = exchange.settings.model_copy(update={"lane_connections": 3})

    async with exchange.workers(1):
        found = await consumers_by_connection(exchange, 2 + LANES, 2 + 3)

    lanes = {name: queues for name, queues in found.items() if "-lanes-" in name}
    assert sorted(lanes) == [f"lienthong-worker-lanes-{n:02d}" for n in range(3)]
    assert sorted(len(queues) for queues in lanes.values()) == [5, 5, 6]
    assert sorted(q for queues in lanes.values() for q in queues) == sorted(LANE_QUEUES)
    counted: defaultdict[str, int] = defaultdict(int)
    for queues in found.values():
        for queue in queues:
            counted[queue] += 1
    assert set(counted.values()) == {1}, "every queue consumed once"
