"""`lienthong gateway` and `lienthong system` as processes, and gateways side by side.

The commands run as an operator runs them (``python -m exchange ...``)
against the test's own vhost and database; the gateway serves HTTPS with a
certificate of the test's CA and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator

import aio_pika
import httpx
import pytest

from exchange.broker import headers as header
from exchange.demo import LocalAgency, demo_document
from exchange.edxml.writer import write_package
from exchange.gateway.auth import sign_request
from exchange.gateway.protocol import sdk_hash
from tests.conftest import REPO
from tests.exchange_fixtures import ExchangeUnderTest, wait_for
from tests.gateway_support import BASE_PATH, running_gateway, trust_gateway

pytestmark = pytest.mark.services

G22, H26 = "000.00.00.G22", "000.00.00.H26"


def _env(exchange: ExchangeUnderTest) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LIENTHONG_AMQP_URL": exchange.settings.amqp_url,
        "LIENTHONG_DATABASE_URL": exchange.settings.database_url,
        "LIENTHONG_LOG_FORMAT": "json",
    }


async def _lienthong(
    exchange: ExchangeUnderTest, *args: str, stdin: bytes | None = None
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exchange",
        *args,
        env=_env(exchange),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def agencies(exchange: ExchangeUnderTest) -> AsyncIterator[dict[str, LocalAgency]]:
    """G22 and H26 registered; guest is a gateway user for the workers."""
    trust_gateway(exchange)
    yield {code: await exchange.register(code) for code in (G22, H26)}


async def test_system_commands_add_list_disable_and_rotate(
    exchange: ExchangeUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    keys = str(exchange.local.keys_dir)
    code, out, _ = await _lienthong(
        exchange, "system", "add", "00.53.W00", "--agency", G22, "--agency", H26, "--keys", keys
    )
    assert code == 0, out
    secret = out.split("secret (shown once): ")[1].split()[0]
    assert len(secret) >= 32
    assert f"{G22}: the gateway signs its unsigned packages" in out
    code, _, err = await _lienthong(exchange, "system", "add", "00.53.W00", "--agency", G22)
    assert code == 2 and "exists" in err and "Traceback" not in err
    code, _, err = await _lienthong(exchange, "system", "add", "X1", "--agency", "000.00.00.H49")
    assert code == 2 and "000.00.00.H49" in err
    code, out, _ = await _lienthong(exchange, "system", "list", "--json")
    (listed,) = json.loads(out)
    assert listed["agencies"] == [G22, H26] and listed["enabled"] is True
    assert "secret" not in listed and secret not in out
    assert (await _lienthong(exchange, "system", "disable", "00.53.W00"))[0] == 0
    code, out, _ = await _lienthong(exchange, "system", "list")
    assert "disabled" in out
    code, out, _ = await _lienthong(exchange, "system", "rotate-secret", "00.53.W00")
    assert code == 0 and secret not in out
    stored = await exchange.fetchval("SELECT secret FROM gateway_systems")
    assert stored in out and stored != secret
    chosen = "a-secret-from-standard-input"
    code, out, _ = await _lienthong(
        exchange,
        "system",
        "rotate-secret",
        "00.53.W00",
        "--secret-stdin",
        stdin=f"{chosen}\n".encode(),
    )
    assert code == 0 and await exchange.fetchval("SELECT secret FROM gateway_systems") == chosen
    code, _, err = await _lienthong(
        exchange, "system", "rotate-secret", "00.53.W00", "--secret", "short"
    )
    assert code == 2 and "at least 16" in err


async def test_the_gateway_serves_https_and_stops_on_sigterm(
    exchange: ExchangeUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    keys = exchange.local.keys_dir
    code, out, _ = await _lienthong(exchange, "system", "add", "SYS-A", "--agency", G22)
    assert code == 0, out
    secret = out.split("secret (shown once): ")[1].split()[0]
    port, metrics_port = _free_port(), _free_port()
    assert exchange.settings.trust is not None
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exchange",
        "gateway",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--trust",
        str(exchange.settings.trust),
        "--keys",
        str(keys),
        "--tls-cert",
        str(keys / f"{H26}.cert.pem"),
        "--tls-key",
        str(keys / f"{H26}.key.pem"),
        env=_env(exchange),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(verify=False) as client:

            async def healthy() -> tuple[bool, str]:
                try:
                    response = await client.get(f"https://127.0.0.1:{port}/healthz")
                except httpx.TransportError as error:
                    return False, str(error)
                return response.json() == {"status": "OK"}, response.text

            await wait_for(healthy)
            package = write_package(
                demo_document(agencies[G22], [agencies[H26]], 3, "VPCP-TH", "Qua HTTPS")
            )
            headers = sign_request(
                "SYS-A",
                secret,
                {
                    "from": G22,
                    "servicetype": "eDoc",
                    "messagetype": "edoc",
                    "hash-file": sdk_hash(hashlib.sha256(package).digest()),
                },
            )
            response = await client.post(
                f"https://127.0.0.1:{port}{BASE_PATH}/sendEdoc",
                content=package + b"\r\n",
                headers=headers,
            )
            assert response.json()["ErrorCode"] == "0", response.text
            # The process's metrics, on loopback: the request just answered.
            scraped = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert (
                'lienthong_gateway_requests_total{operation="sendEdoc",outcome="0"} 1.0'
                in scraped.text
            )
            assert "lienthong_gateway_request_seconds_bucket" in scraped.text
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            _, err = await process.communicate()
        assert process.returncode == 0, err.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_two_gateways_and_a_redelivery_put_each_message_once_in_the_mailbox(
    exchange: ExchangeUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    async with running_gateway(exchange) as first, running_gateway(exchange) as second:
        await first.add_system("SYS-B", [H26])
        assert second.gateway.mover is not None
        await second.gateway.mover.sync()
        connection = await aio_pika.connect(exchange.settings.amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            deliver = await channel.get_exchange("lienthong.deliver", ensure=False)
            for number in range(10):
                message = aio_pika.Message(
                    f"<document {number}/>".encode(),
                    message_id=f"lienthong:{number}",
                    headers={header.KIND: "document", header.SENDER: G22, header.RECIPIENT: H26},
                )
                await deliver.publish(message, H26)
                if number % 2 == 0:  # the same message again, as after a worker's crash
                    await deliver.publish(message, H26)
        finally:
            await connection.close()

        async def moved() -> tuple[bool, str]:
            depth = await exchange.queue_depth(f"lienthong.inbox.{H26}")
            rows = await exchange.fetchval("SELECT count(*) FROM gateway_mailbox")
            return depth == 0 and rows == 10, f"{rows} rows, {depth} left in the queue"

        await wait_for(moved)
        items = await first.received("SYS-B")
        assert sorted(item["docId"] for item in items) == sorted({item["docId"] for item in items})
        assert len(items) == 10


async def test_gateway_user_creates_the_broker_user_with_the_gateways_permissions(
    exchange: ExchangeUnderTest,
) -> None:
    from exchange.broker.topology import gateway_permissions
    from exchange.registry import vhost_of

    name = f"gw-{os.getpid()}-{id(exchange) % 100000}"
    try:
        code, out, err = await _lienthong(exchange, "gateway-user", name, "--json")
        assert code == 0, err
        created = json.loads(out)
        assert created["user"] == name and len(created["password"]) >= 16
        vhost = vhost_of(exchange.settings.amqp_url)
        assert await exchange.admin.get_permissions(vhost, name) == gateway_permissions()
        # The login works, and may publish to lienthong.submit only.
        connection = await aio_pika.connect(created["amqp_url"])
        try:
            channel = await connection.channel()
            submit = await channel.get_exchange("lienthong.submit", ensure=False)
            await submit.publish(aio_pika.Message(b"x", user_id=name), "000.00.00.G22")
        finally:
            await connection.close()
        # Again, from standard input: a new password, the same permissions.
        code, out, err = await _lienthong(
            exchange, "gateway-user", name, "--password-stdin", stdin=b"p" * 32 + b"\n"
        )
        assert code == 0, err
        assert "password (shown once): " + "p" * 32 in out
        assert f'LIENTHONG_GATEWAY_USERS must list it: ["{name}"]' in out
    finally:
        await exchange.admin.delete_user(name)
