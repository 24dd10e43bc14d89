"""The exchange on a real three-node RabbitMQ cluster, through a node failure and a rolling restart.

The test starts three RabbitMQ nodes of its own on this machine
(:mod:`tests.cluster`), joins them, and prepares an exchange there: every
queue a quorum queue replicated on the three nodes. Three ``lienthong
worker`` processes and the six agencies' systems (:mod:`tests.crash.load`)
connect with one ``LIENTHONG_AMQP_URL`` naming the three nodes. Under a
steady load, the node that leads ``lienthong.work`` is killed (SIGKILL: a
machine that fails), stays away a while and comes back; then each node in
turn is stopped and started again, as an upgrade does. Afterwards
(:mod:`tests.crash.checks`): every message decided once, each application
handed each of its documents exactly once, the same worker processes
consuming (they moved to another node by themselves), the broker clean and
``lienthong audit`` clean.

The figures (messages, time to recover, latency percentiles before, during
and after each disruption) are printed (``pytest -s``) and reported in
docs/operations.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from exchange.broker.admin import BrokerAdmin
from exchange.broker.topology import INBOX_QUEUE_PREFIX, LANE_QUEUES, WORK_QUEUE
from exchange.client import AgencyClient
from exchange.store.queries import dedup_key
from tests.cluster import RabbitCluster, installed, rabbit_cluster
from tests.crash.checks import (
    Figures,
    _fetch,
    check_parked_queue,
    inboxes_drained,
    reconcile,
    run_audit,
    settled_at_least,
    signed_workload,
    wait_run_complete,
)
from tests.crash.load import Submission, Traffic
from tests.crash.supervisor import Supervisor, worker_env
from tests.exchange_fixtures import ExchangeUnderTest, isolated_exchange

pytestmark = [pytest.mark.cluster, pytest.mark.services]

WORKERS = 3
# 240 documents to 3 recipients (4 tampered) and a status for each of the
# 708 genuine deliveries: some 1,400 messages, half sent around the node
# failure, half during the rolling restart.
DOCUMENTS = 240
# Each half is sent at a steady pace over about this long, so the load runs
# before, during and after each disruption.
FAILURE_PHASE_S = 45.0
ROLLING_PHASE_S = 60.0
# The killed leader stays away this long: several reconnection attempts.
NODE_AWAY_S = 10.0
RUN_TIMEOUT_S = 300.0
# Submissions sent together, then a pause (the pace of a phase).
BATCH = 6


@pytest.fixture
def rabbitmq_installed() -> None:
    """Skip without rabbitmq-server, except in CI, where its absence is a failure."""
    if installed():
        return
    if os.environ.get("CI", "").lower() in {"true", "1"}:
        pytest.fail("CI must run the cluster test: rabbitmq-server is not installed")
    pytest.skip("rabbitmq-server is not installed: no cluster to start")


@pytest.fixture
async def cluster(rabbitmq_installed: None, tmp_path: Path) -> AsyncIterator[RabbitCluster]:
    """Three RabbitMQ nodes of this test's own, joined; stopped and deleted afterwards."""
    async with rabbit_cluster(tmp_path / "cluster") as started:
        yield started


@pytest.fixture
async def clustered(
    cluster: RabbitCluster, database_url: str, tmp_path: Path
) -> AsyncIterator[ExchangeUnderTest]:
    """An exchange prepared on the cluster: LIENTHONG_AMQP_URL names the three nodes."""
    admin = BrokerAdmin(cluster.api_url())
    async with isolated_exchange(
        admin,
        database_url,
        tmp_path / "keys",
        amqp_base_url=cluster.amqp_url(),
        rabbitmq_api_url=cluster.api_url(),
    ) as under_test:
        yield under_test


@dataclass
class TimedTraffic(Traffic):
    """:class:`Traffic` that remembers when each message was first offered to the broker."""

    first_attempt: dict[str, float] = field(default_factory=dict)  # dedup key -> epoch s

    async def submit(self, client: AgencyClient, body: bytes, recipient: str) -> None:
        """Publish as :class:`Traffic` does, noting the time of the first attempt."""
        self.first_attempt.setdefault(dedup_key(recipient, body, client.broker_user), time.time())
        await super().submit(client, body, recipient)


async def send_paced(traffic: Traffic, submissions: Sequence[Submission], seconds: float) -> None:
    """Send ``submissions`` in small batches spread over about ``seconds``."""
    batches = [submissions[i : i + BATCH] for i in range(0, len(submissions), BATCH)]
    pause = seconds / max(len(batches), 1)
    for batch in batches:
        await traffic.send_documents(batch)
        await asyncio.sleep(pause)


@dataclass(frozen=True)
class Window:
    """A stretch of the run: its name and its start and end (epoch seconds)."""

    name: str
    start: float
    end: float


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` percentile (nearest rank) of ``values``; 0 when there are none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


async def latencies(
    exchange: ExchangeUnderTest, traffic: TimedTraffic
) -> list[tuple[float, float, float]]:
    """``(first attempt, settled, latency)`` per message: from the sender's first publish
    attempt to the record saying its effects are confirmed on the broker."""
    rows = await _fetch(
        exchange,
        "SELECT m.dedup_key, extract(epoch FROM s.published_at)::float8 AS settled"
        " FROM messages m JOIN message_state s ON s.message_pk = m.id"
        " WHERE s.published_at IS NOT NULL",
    )
    found = []
    for row in rows:
        started = traffic.first_attempt.get(row["dedup_key"])
        if started is not None:
            found.append((started, row["settled"], row["settled"] - started))
    return found


def describe(window: Window, samples: list[tuple[float, float, float]]) -> str:
    """Messages first offered in ``window``: how many, p50, p99, max latency."""
    inside = [latency for started, _, latency in samples if window.start <= started < window.end]
    return (
        f"{window.name} ({window.end - window.start:.0f} s): {len(inside)} messages, "
        f"p50 {percentile(inside, 0.50) * 1000:.0f} ms, p99 {percentile(inside, 0.99) * 1000:.0f} "
        f"ms, max {max(inside, default=0.0) * 1000:.0f} ms"
    )


def recovery_s(killed_at: float, samples: list[tuple[float, float, float]]) -> float:
    """Seconds from the kill until a message first offered after it was settled."""
    after = [settled for started, settled, _ in samples if started >= killed_at]
    return min(after) - killed_at if after else float("inf")


def node_moves(workers: Supervisor) -> int:
    """How many times the workers' connections moved to another node (their log lines)."""
    moves = 0
    for run in workers.runs:
        for line in run.log.read_text("utf-8", "replace").splitlines():
            with_json = line.startswith("{")
            text = json.loads(line).get("message", "") if with_json else line
            moves += "reconnecting to node" in text
    return moves


async def test_a_three_node_cluster_loses_its_leader_and_restarts_each_node_losing_nothing(
    cluster: RabbitCluster, clustered: ExchangeUnderTest, tmp_path: Path
) -> None:
    exchange = clustered
    vhost = exchange.vhost
    workload = await signed_workload(exchange, DOCUMENTS)
    # Every queue of the exchange is replicated on the three nodes.
    everyone = sorted(node.name for node in cluster.nodes)
    for queue in (WORK_QUEUE, *LANE_QUEUES, f"{INBOX_QUEUE_PREFIX}000.00.00.G22"):
        _, members = await cluster.quorum_members(vhost, queue)
        assert sorted(members) == everyone, (queue, members)

    documents = workload.document_submissions()
    half = len(documents) // 2
    expected = len(documents) + len(workload.statuses)
    figures = Figures("RabbitMQ cluster: leader killed, rolling restart")
    windows: list[Window] = []
    started = time.monotonic()
    async with Supervisor(
        worker_env(exchange.settings), workers=WORKERS, log_dir=tmp_path / "logs"
    ) as workers:
        async with TimedTraffic(workload) as traffic:
            # 1. The node leading lienthong.work fails mid-run, then comes back.
            run_start = time.time()
            sending = asyncio.create_task(send_paced(traffic, documents[:half], FAILURE_PHASE_S))
            await settled_at_least(exchange, half // 3)
            leader_name, _ = await cluster.quorum_members(vhost, WORK_QUEUE)
            leader = cluster.node_of(leader_name)
            lanes_led = [
                lane
                for lane in LANE_QUEUES
                if (await cluster.quorum_members(vhost, lane))[0] == leader_name
            ]
            print(f"{leader.name} leads lienthong.work and {len(lanes_led)} of the lanes")
            killed_at = time.time()
            windows.append(Window("steady, three nodes", run_start, killed_at))
            await cluster.kill_node(leader)
            # Its absence is the scenario, not a wait for a result.
            await asyncio.sleep(NODE_AWAY_S)
            restarting_at = time.time()
            await cluster.start_node(leader)
            await cluster.wait_all_running()
            back_at = time.time()
            windows.append(Window(f"leader {leader.name} away", killed_at, back_at))
            await sending
            new_leader, _ = await cluster.quorum_members(vhost, WORK_QUEUE)

            # 2. Each node in turn stopped and started again, as an upgrade does.
            rolling_at = time.time()
            windows.append(Window("after the leader came back", back_at, rolling_at))
            sending = asyncio.create_task(send_paced(traffic, documents[half:], ROLLING_PHASE_S))
            for node in cluster.nodes:
                await cluster.wait_safe_to_stop(node)
                await cluster.restart_node(node)
                await cluster.wait_all_running()
            await sending
            windows.append(Window("rolling restart", rolling_at, time.time()))

            await wait_run_complete(exchange, workload, traffic, timeout=RUN_TIMEOUT_S)
            await inboxes_drained(exchange, workload)
        figures.seconds = time.monotonic() - started
        decided = await reconcile(exchange, workload, traffic, workers, figures, consumers=WORKERS)
        # The same worker processes throughout: they moved to other nodes by themselves.
        assert len(workers.runs) == WORKERS, [run.describe() for run in workers.runs]
        assert decided.counts["parked"] == 0, decided.counts
        samples = await latencies(exchange, traffic)
        moves = node_moves(workers)
    assert decided.counts["messages"] == expected, (decided.counts, expected)
    assert await run_audit(worker_env(exchange.settings)) is not None
    figures.audit = "lienthong audit clean"
    await check_parked_queue(exchange, decided)

    # The two nodes left served on their own: a message offered after the kill
    # was through before the killed node was started again.
    recovery = recovery_s(killed_at, samples)
    assert killed_at + recovery < restarting_at, (recovery, restarting_at - killed_at)
    figures.notes = (
        f"leader {leader.name} killed for {NODE_AWAY_S:.0f} s (new leader {new_leader}), "
        f"then each node restarted; first message offered after the kill settled "
        f"{recovery:.1f} s after it; worker connections moved node {moves} times; "
        f"{len(traffic.app_errors)} application reconnects"
    )
    print()
    print(figures.line())
    for window in windows:
        if any(window.start <= started < window.end for started, _, _ in samples):
            print("  " + describe(window, samples))
    all_samples = Window("whole run", run_start, time.time())
    print("  " + describe(all_samples, samples))
    print(f"  on {os.cpu_count()} cores, shared with whatever else runs on the machine")
