"""PostgreSQL failover: the primary lost mid-run, its standby promoted, nothing lost or twice.

The test runs a primary and a synchronous streaming standby of its own
(:mod:`tests.pg_servers`, never the shared server), and an exchange whose
``LIENTHONG_DATABASE_URL`` lists both with ``target_session_attrs=read-write``.
Worker processes (:mod:`tests.crash.supervisor`) and a ``lienthong gateway``
process run on it while the agencies' systems (:mod:`tests.crash.load`) send
signed documents and report statuses. A quarter of the way in, the primary
is stopped as by a crash (``pg_ctl stop -m immediate``); a few seconds
later (a failover manager's reaction) the standby is promoted. Then:

* the same worker processes carry on: their pools drop the dead
  connections and open new ones on whichever host is writable now; the
  messages that failed meanwhile went through the retry queues;
* every message is recorded once and decided as it deserves, each
  application got each document once, each sender each receipt and status
  once (:func:`tests.crash.checks.reconcile`); nothing parked;
* ``lienthong audit`` and ``lienthong audit --verify-chain`` are clean on
  the new primary: the hash chains run unbroken across the failover;
* the gateway that lived through it answers healthy again, takes a package
  over HTTP and lists the document delivered to another of its agencies.

The figures (messages, time to recover, failures retried) are printed
(``pytest -s``) and written in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from exchange.broker.admin import BrokerAdmin
from exchange.demo import LocalAgency, demo_document
from exchange.edxml.writer import write_package
from exchange.gateway.auth import sign_request
from exchange.gateway.protocol import sdk_hash
from tests.conftest import REPO
from tests.crash.checks import (
    Figures,
    check_parked_queue,
    inboxes_drained,
    reconcile,
    run_audit,
    settled_at_least,
    signed_workload,
    wait_run_complete,
)
from tests.crash.load import Traffic
from tests.crash.supervisor import Supervisor, worker_command, worker_env
from tests.exchange_fixtures import ExchangeUnderTest, isolated_exchange, wait_for
from tests.gateway_support import BASE_PATH, trust_gateway
from tests.pg_servers import ReplicatedPair, free_port, primary_and_standby

# Runs its own PostgreSQL servers, and needs the shared RabbitMQ.
pytestmark = pytest.mark.services

DATABASE = "lienthong_failover"
WORKERS = 2
# ~600 messages: 100 documents to 3 recipients (2 tampered) and a status for
# each genuine delivery. The failover, not the volume, is the point.
DOCUMENTS = 100
# Between the primary's loss and the standby's promotion: what a failover
# manager (Patroni, CloudNativePG) takes to notice and act, shortened. Long
# enough for messages to fail, wait in the 1 s tier and fail again.
PROMOTION_DELAY_S = 5.0
RUN_TIMEOUT_S = 180.0
# Gateway agencies: not among the workload's six, whose applications read
# their inboxes over AMQP (the gateway's mover would take their documents).
GW_SENDER, GW_RECIPIENT = "000.00.00.H49", "000.00.02.H49"
GW_SYSTEM = "FAILOVER-GW"
HEALTH_POLL_S = 0.2


@dataclass
class Recovery:
    """When things happened, on the test's monotonic clock."""

    lost: float = 0.0  # the primary stopped
    promoted: float = 0.0  # pg_ctl promote returned
    first_settled: float = 0.0  # a message settled on the new primary
    gateway_down: float | None = None  # the gateway's /healthz first failed
    gateway_back: float | None = None  # and first answered OK after the promotion


async def _settled(exchange: ExchangeUnderTest) -> int:
    value = await exchange.fetchval(
        "SELECT count(*) FROM message_state WHERE published_at IS NOT NULL"
    )
    return int(value)


async def _first_settlement_after(exchange: ExchangeUnderTest, recovery: Recovery) -> None:
    """Wait for the first message settled on the new primary; note when."""
    baseline = await _settled(exchange)

    async def more() -> tuple[bool, str]:
        now = await _settled(exchange)
        return now > baseline, f"{now} settled, {baseline} at the promotion"

    await wait_for(more, timeout=RUN_TIMEOUT_S)
    recovery.first_settled = time.monotonic()


# -- the gateway process ------------------------------------------------------------


@dataclass
class GatewayProcess:
    """A ``lienthong gateway`` process, its address and the system registered on it."""

    process: asyncio.subprocess.Process
    base: str
    secret: str
    log: Path

    async def call(
        self, http: httpx.AsyncClient, operation: str, params: dict[str, str], body: bytes
    ) -> dict[str, Any]:
        """POST one operation signed as the SDK signs it; the JSON reply."""
        headers = sign_request(GW_SYSTEM, self.secret, params)
        response = await http.post(
            f"{self.base}{BASE_PATH}/{operation}", content=body, headers=headers
        )
        reply: dict[str, Any] = response.json()
        return reply


def _gateway_env(exchange: ExchangeUnderTest) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIENTHONG_")},
        "PYTHONPATH": str(REPO),
        "LIENTHONG_AMQP_URL": exchange.settings.amqp_url,
        "LIENTHONG_DATABASE_URL": exchange.settings.database_url,
        "LIENTHONG_LOG_FORMAT": "json",
    }


@contextlib.asynccontextmanager
async def gateway_process(exchange: ExchangeUnderTest, log: Path) -> AsyncIterator[GatewayProcess]:
    """``lienthong gateway`` on a free port for one system acting for the two gateway agencies."""
    command = [sys.executable, "-m", "exchange"]
    add = await asyncio.create_subprocess_exec(
        *command,
        "system",
        "add",
        GW_SYSTEM,
        "--agency",
        GW_SENDER,
        "--agency",
        GW_RECIPIENT,
        "--keys",
        str(exchange.local.keys_dir),
        env=_gateway_env(exchange),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await add.communicate()
    assert add.returncode == 0, out.decode()
    secret = out.decode().split("secret (shown once): ")[1].split()[0]
    port = free_port()
    assert exchange.settings.trust is not None
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *command,
            "gateway",
            "--port",
            str(port),
            "--metrics-port",
            "0",
            "--trust",
            str(exchange.settings.trust),
            "--keys",
            str(exchange.local.keys_dir),
            env=_gateway_env(exchange),
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        gateway = GatewayProcess(process, f"http://127.0.0.1:{port}", secret, log)
        async with httpx.AsyncClient(timeout=10) as http:

            async def healthy() -> tuple[bool, str]:
                try:
                    response = await http.get(f"{gateway.base}/healthz")
                except httpx.TransportError as error:
                    return False, repr(error)
                return response.status_code == 200, response.text

            await wait_for(healthy, timeout=60)
        yield gateway
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()


async def watch_gateway_health(
    gateway: GatewayProcess, recovery: Recovery, stop: asyncio.Event
) -> None:
    """Note when the gateway's /healthz first fails after the loss, and answers again."""
    async with httpx.AsyncClient(timeout=5) as http:
        while not stop.is_set():
            try:
                ok = (await http.get(f"{gateway.base}/healthz")).status_code == 200
            except httpx.TransportError:
                ok = False
            now = time.monotonic()
            if recovery.lost and not ok and recovery.gateway_down is None:
                recovery.gateway_down = now
            if recovery.promoted and ok and recovery.gateway_back is None:
                recovery.gateway_back = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEALTH_POLL_S)


async def gateway_round_trip(
    exchange: ExchangeUnderTest, gateway: GatewayProcess, agencies: dict[str, LocalAgency]
) -> None:
    """A package sent over HTTP after the failover reaches the recipient's mailbox."""
    package = write_package(
        demo_document(
            agencies[GW_SENDER], [agencies[GW_RECIPIENT]], 7, "UBND-VP", "Sau khi đổi máy chủ"
        )
    )
    params = {
        "from": GW_SENDER,
        "servicetype": "eDoc",
        "messagetype": "edoc",
        "hash-file": sdk_hash(hashlib.sha256(package).digest()),
    }
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await gateway.call(http, "sendEdoc", params, package + b"\r\n")
        assert reply["ErrorCode"] == "0", reply
        listed: list[dict[str, Any]] = []

        async def delivered() -> tuple[bool, str]:
            nonlocal listed
            answer = await gateway.call(
                http,
                "getReceivedEdocList",
                {"servicetype": "eDoc", "messagetype": "edoc", "Content-Type": "application/json"},
                b"{}",
            )
            assert answer["ErrorCode"] == "0", answer
            # The system's documents: the one sent (receipts are messagetype=status).
            listed = list(answer["data"])
            return bool(listed), f"{len(listed)} documents listed for the gateway's system"

        await wait_for(delivered, timeout=60)
    assert len(listed) == 1, listed
    rows = await exchange.fetchval(
        "SELECT count(*) FROM gateway_mailbox WHERE agency = $1 AND kind = 'document'",
        GW_RECIPIENT,
    )
    assert rows == 1


# -- the test -------------------------------------------------------------------------


async def _audit_chains(env: dict[str, str]) -> str:
    """``lienthong audit --verify-chain``; fails the test unless every chain verifies."""
    process = await asyncio.create_subprocess_exec(
        *worker_command()[:-1],
        "audit",
        "--verify-chain",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    text = output.decode("utf-8", "replace")
    assert process.returncode == 0, f"the hash chains do not verify:\n{text}"
    return text


async def _gateway_back(recovery: Recovery) -> tuple[bool, str]:
    return recovery.gateway_back is not None, "the gateway's /healthz has not answered OK yet"


async def _run(
    pair: ReplicatedPair, exchange: ExchangeUnderTest, tmp_path: Path
) -> tuple[Figures, Recovery, str]:
    trust_gateway(exchange)
    gateway_agencies = {code: await exchange.register(code) for code in (GW_SENDER, GW_RECIPIENT)}
    workload = await signed_workload(exchange, DOCUMENTS)
    expected = len(workload.document_submissions()) + len(workload.statuses)
    # The workers believe the gateway's agency header (trust_gateway's users).
    env = worker_env(exchange.settings, gateway_users=json.dumps(exchange.settings.gateway_users))
    figures = Figures("PostgreSQL failover")
    recovery = Recovery()
    started = time.monotonic()
    stop_watch = asyncio.Event()
    async with (
        gateway_process(exchange, tmp_path / "gateway.log") as gateway,
        Supervisor(env, workers=WORKERS, log_dir=tmp_path / "logs") as workers,
    ):
        watcher = asyncio.create_task(watch_gateway_health(gateway, recovery, stop_watch))
        try:
            async with Traffic(workload) as traffic:
                sending = asyncio.create_task(traffic.send_documents())
                await settled_at_least(exchange, expected // 4)
                await pair.primary.stop("immediate")
                recovery.lost = time.monotonic()
                # The failover manager's reaction time: the scenario, not a wait for a result.
                await asyncio.sleep(PROMOTION_DELAY_S)
                await pair.standby.promote()
                recovery.promoted = time.monotonic()
                await _first_settlement_after(exchange, recovery)
                await sending
                await wait_run_complete(exchange, workload, traffic, timeout=RUN_TIMEOUT_S)
                await inboxes_drained(exchange, workload)
            figures.seconds = time.monotonic() - started
            decided = await reconcile(
                exchange, workload, traffic, workers, figures, consumers=WORKERS
            )
            # The same processes throughout: they reconnected by themselves.
            assert len(workers.runs) == WORKERS, [run.describe() for run in workers.runs]
            assert decided.counts["parked"] == 0, decided.counts
            # Messages in flight when the primary went failed, waited in the
            # retry queues, and came back to be delivered once.
            retries = workers.retries()
            assert "1s" in retries, retries
            assert "10m" not in retries, retries
            await wait_for(lambda: _gateway_back(recovery), timeout=60)
            await gateway_round_trip(exchange, gateway, gateway_agencies)
        finally:
            stop_watch.set()
            await watcher
        assert gateway.process.returncode is None, gateway.log.read_text()
    in_recovery = await pair.standby.fetchval("SELECT pg_is_in_recovery()")
    assert in_recovery is False
    if await run_audit(env) is not None:
        figures.audit = "lienthong audit clean"
    chains = await _audit_chains(env)
    await check_parked_queue(exchange, decided)
    return figures, recovery, chains


async def test_primary_lost_mid_run_standby_promoted_nothing_lost_nothing_twice_chains_verify(
    broker_admin: BrokerAdmin, tmp_path: Path
) -> None:
    async with primary_and_standby() as pair:
        await pair.primary.fetchval(f'CREATE DATABASE "{DATABASE}"')
        database_url = pair.database_url(DATABASE)
        async with isolated_exchange(broker_admin, database_url, tmp_path / "keys") as exchange:
            figures, recovery, chains = await _run(pair, exchange, tmp_path)
    retried = sum((figures.retries or {}).values())
    gateway = (
        f"gateway unhealthy {recovery.gateway_down - recovery.lost:.1f} s after the loss, "
        f"healthy {recovery.gateway_back - recovery.promoted:.1f} s after the promotion"
        if recovery.gateway_down is not None and recovery.gateway_back is not None
        else "gateway never reported unhealthy"
    )
    figures.notes = (
        f"primary stopped (immediate), standby promoted {recovery.promoted - recovery.lost:.1f} s "
        f"later; first message settled on the new primary "
        f"{recovery.first_settled - recovery.promoted:.1f} s after the promotion "
        f"({recovery.first_settled - recovery.lost:.1f} s after the loss); "
        f"{retried} failures retried; {gateway}; chains: {chains.strip().splitlines()[-1]}"
    )
    print(figures.line())
