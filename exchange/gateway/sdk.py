"""A Python stand-in for the axis SDK: the demo's and the bench's QLVB behind the gateway.

:class:`VxpClient` calls the operations over HTTP exactly as SDKVXP-2.0.0
does (headers signed by :func:`exchange.gateway.auth.sign_request`, the
package followed by CRLF, the shortened ``hash-file``), with the standard
library's HTTP client in a thread: what the demo and the bench need, and no
more. Real systems use the SDK itself (tests/java/VxpDriver.java drives it).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from exchange.gateway.auth import sign_request
from exchange.gateway.protocol import sdk_hash

# The SDK waits for ever; the demo and the bench give up after this.
HTTP_TIMEOUT_S = 150.0


class VxpError(RuntimeError):
    """The gateway answered FAIL: its ErrorCode and ErrorDesc."""

    def __init__(self, operation: str, code: str, description: str) -> None:
        super().__init__(f"{operation}: {code} {description}")
        self.code = code
        self.description = description


@dataclass(frozen=True)
class VxpClient:
    """One system's calls to a gateway: ``endpoint`` as the SDK is configured with it."""

    endpoint: str
    system_id: str
    secret: str

    def _post(self, operation: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
        parts = urlsplit(self.endpoint)
        connection_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = connection_class(
            parts.hostname or "127.0.0.1", parts.port, timeout=HTTP_TIMEOUT_S
        )
        try:
            connection.request(
                "POST", f"{parts.path.rstrip('/')}/{operation}", body=body, headers=dict(headers)
            )
            response = connection.getresponse()
            return response.read()
        finally:
            connection.close()

    async def call(
        self, operation: str, params: dict[str, str] | None = None, body: bytes = b"{}"
    ) -> dict[str, Any]:
        """POST one operation, signed; the JSON reply. :class:`VxpError` when it says FAIL."""
        headers = sign_request(
            self.system_id, self.secret, {**(params or {}), "Content-Type": "application/json"}
        )
        raw = await asyncio.to_thread(self._post, operation, headers, body)
        reply: dict[str, Any] = json.loads(raw)
        if reply.get("status") != "OK":
            raise VxpError(operation, str(reply.get("ErrorCode")), str(reply.get("ErrorDesc")))
        return reply

    async def send_edoc(self, sender: str, package: bytes, message_type: str = "edoc") -> str:
        """``sendEdoc``: the package as the SDK sends a file; returns the DocId."""
        reply = await self.call(
            "sendEdoc",
            {
                "from": sender,
                "servicetype": "eDoc",
                "messagetype": message_type,
                "hash-file": sdk_hash(hashlib.sha256(package).digest()),
            },
            package + b"\r\n",
        )
        return str(reply["DocId"])

    async def received(self, message_type: str = "edoc") -> list[dict[str, Any]]:
        """``getReceivedEdocList``: what waits for the system's agencies."""
        reply = await self.call(
            "getReceivedEdocList", {"servicetype": "eDoc", "messagetype": message_type}
        )
        items: list[dict[str, Any]] = reply["data"]
        return items

    async def get_edoc(self, doc_id: str) -> bytes:
        """``getEdoc``: one item's package, decoded."""
        reply = await self.call("getEdoc", {"docId": doc_id, "filePath": ""})
        return base64.b64decode(reply["data"])

    async def update_status(self, doc_id: str, status: str = "done") -> None:
        """``updateStatus``: ``done`` takes the item off the lists."""
        await self.call("updateStatus", {"docid": doc_id, "status": status})
