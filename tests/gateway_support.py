"""A gateway in front of a test's exchange, and a client that speaks to it as the SDK does.

:func:`running_gateway` starts an :class:`exchange.gateway.app.Gateway` on the
test's vhost and database (its mover refreshing every 0.2 s) and yields a
:class:`GatewayUnderTest`: an httpx client on the ASGI application, in
process, plus helpers to register systems and call operations signed as the
SDK signs them. :func:`serving` also puts it on a real port (uvicorn), for
clients outside the process (the Java SDK).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from exchange.agency import AgencyCode
from exchange.gateway import auth
from exchange.gateway.app import Gateway, create_app
from exchange.gateway.protocol import sdk_hash
from exchange.pki import TrustStore
from exchange.store import gateway as store
from exchange.store.roles import GATEWAY_GROUP
from tests.db_fixtures import as_role, create_login_role, drop_login_role
from tests.exchange_fixtures import ExchangeUnderTest, wait_for

BASE_PATH = "/XrdAdapter/adapter"


@dataclass
class GatewayUnderTest:
    """A running gateway, its ASGI client, and the systems registered on it."""

    exchange: ExchangeUnderTest
    gateway: Gateway
    http: httpx.AsyncClient
    secrets: dict[str, str] = field(default_factory=dict)

    async def add_system(self, system_id: str, agencies: Sequence[AgencyCode | str]) -> str:
        """Register a system (as ``lienthong system add`` does); returns its secret."""
        secret = secrets.token_urlsafe(24)
        async with self.exchange.db() as conn:
            await store.add_system(
                conn, system_id, secret, [AgencyCode.parse(str(a)) for a in agencies]
            )
        self.secrets[system_id] = secret
        assert self.gateway.mover is not None
        await self.gateway.mover.sync()
        return secret

    async def call(
        self,
        operation: str,
        system_id: str,
        params: Mapping[str, str] | None = None,
        *,
        body: bytes = b"{}",
        secret: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        """POST one operation signed as the SDK signs it; the JSON reply."""
        signed = auth.sign_request(
            system_id,
            self.secrets[system_id] if secret is None else secret,
            {**(params or {}), "Content-Type": "application/json"},
        )
        response = await self.http.post(
            f"{BASE_PATH}/{operation}",
            content=body,
            headers=[*signed, *(headers or [])],
        )
        assert response.status_code == 200, response.text
        reply: dict[str, Any] = response.json()
        return reply

    async def send(
        self,
        system_id: str,
        sender: AgencyCode | str,
        package: bytes,
        *,
        message_type: str = "edoc",
        hash_file: str | None = None,
    ) -> dict[str, Any]:
        """``sendEdoc`` as the SDK sends it: the file then CRLF, its shortened hash."""
        return await self.call(
            "sendEdoc",
            system_id,
            {
                "from": str(sender),
                "servicetype": "eDoc",
                "messagetype": message_type,
                "hash-file": hash_file or sdk_hash(hashlib.sha256(package).digest()),
            },
            body=package + b"\r\n",
        )

    async def received(self, system_id: str, message_type: str = "edoc") -> list[dict[str, Any]]:
        """``getReceivedEdocList``'s items (asserting the call succeeded)."""
        reply = await self.call(
            "getReceivedEdocList",
            system_id,
            {"servicetype": "eDoc", "messagetype": message_type},
        )
        assert reply["ErrorCode"] == "0", reply
        items: list[dict[str, Any]] = reply["data"]
        return items

    async def wait_received(
        self, system_id: str, count: int, message_type: str = "edoc"
    ) -> list[dict[str, Any]]:
        """Poll ``getReceivedEdocList`` until ``count`` items are listed at once."""
        seen: list[dict[str, Any]] = []

        async def listed() -> tuple[bool, str]:
            nonlocal seen
            # A fresh lease each poll: items listed by an earlier poll come back.
            async with self.exchange.db() as conn:
                await conn.execute("UPDATE gateway_mailbox SET leased_until = NULL")
            seen = await self.received(system_id, message_type)
            return len(seen) >= count, f"{len(seen)} of {count} {message_type} items listed"

        await wait_for(listed)
        return seen

    async def get(self, system_id: str, doc_id: str) -> bytes:
        """``getEdoc``'s package, decoded."""
        reply = await self.call("getEdoc", system_id, {"docId": doc_id, "filePath": "/tmp/x"})
        assert reply["ErrorCode"] == "0", reply
        return base64.b64decode(reply["data"])

    async def confirm(self, system_id: str, doc_id: str, status: str = "done") -> dict[str, Any]:
        """``updateStatus`` as real integrators call it (lower-case docid only)."""
        return await self.call("updateStatus", system_id, {"docid": doc_id, "status": status})


@contextlib.asynccontextmanager
async def running_gateway(exchange: ExchangeUnderTest) -> AsyncIterator[GatewayUnderTest]:
    """A started gateway on ``exchange`` (whose settings name guest a gateway user).

    It logs in to the database as a role of lienthong_gateway of its own, as
    it must off this host (dropped afterwards).
    """
    server = exchange.settings.database_url
    role, password = await create_login_role(server, GATEWAY_GROUP)
    settings = exchange.settings.model_copy(
        update={"database_url": as_role(server, role, password)}
    )
    assert settings.trust is not None
    gateway = Gateway(
        settings,
        trust=TrustStore.load(settings.trust),
        keys_dir=exchange.local.keys_dir,
        mover_refresh_s=0.2,
    )
    try:
        await gateway.start()
        app = create_app(gateway, manage_lifetime=False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway"
        ) as http:
            yield GatewayUnderTest(exchange, gateway, http)
    finally:
        await gateway.close()
        await drop_login_role(server, role)


def trust_gateway(exchange: ExchangeUnderTest) -> None:
    """Make the exchange's workers believe the agency header of guest, the gateway's user."""
    exchange.local.settings = exchange.local.settings.model_copy(
        update={"gateway_users": ["guest"]}
    )


@contextlib.asynccontextmanager
async def serving(under_test: GatewayUnderTest) -> AsyncIterator[str]:
    """The gateway's application on a real port of 127.0.0.1; yields the SDK's endpoint."""
    app = create_app(under_test.gateway, manage_lifetime=False)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="off", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}{BASE_PATH}"
    finally:
        server.should_exit = True
        await task
