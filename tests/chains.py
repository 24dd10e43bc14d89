"""What the hash-chain tests (test_tamper, test_chain_sealing) share: agencies, a message."""

from __future__ import annotations

import hashlib

from exchange.agency import AgencyCode
from exchange.store import Connection, queries
from exchange.store.records import Message

SENDER = AgencyCode.parse("000.00.00.G22")  # Văn phòng Chính phủ
RECIPIENT = AgencyCode.parse("000.00.00.G09")  # Bộ Nội vụ


async def record_text(conn: Connection, text: str) -> Message:
    """A message of ``text`` to RECIPIENT, recorded as the worker records one."""
    body = text.encode()
    message, _ = await queries.record_message(
        conn,
        dedup_key=queries.dedup_key(str(RECIPIENT), body),
        amqp_message_id=None,
        routing_key=str(RECIPIENT),
        broker_user=None,
        body=body,
        sha256=hashlib.sha256(body).hexdigest(),
    )
    return message
