"""What leaks, and what is judged, by metadata: status Timestamps, subscription copies.

Through the real worker, broker and database: a status dated far from its
arrival is refused with a receipt that says why; a subscription copy is
published by the worker and recorded, so ``trace`` names who received it.
(Parked receipts carrying only the failure's class: tests/integration/test_poison.py.)
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timedelta

import pytest

from exchange.broker import headers as header
from exchange.demo import demo_document
from exchange.edxml.model import VIETNAM_TIME
from exchange.reasons import Reason
from exchange.status import MessageKind, StatusCode, TransportOutcome
from tests.exchange_fixtures import ExchangeUnderTest

pytestmark = pytest.mark.services

SENDER = "000.00.00.G22"  # Văn phòng Chính phủ
RECIPIENT = "000.00.00.H26"  # UBND Thành phố Hà Nội


async def test_status_timestamp_far_from_its_arrival_is_refused_and_a_near_one_accepted(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(SENDER)
    recipient = await exchange.register(RECIPIENT)
    document = demo_document(sender, [recipient], 7, "VPCP", "Về việc giờ báo trạng thái")
    now = datetime.now(VIETNAM_TIME).replace(tzinfo=None, microsecond=0)
    skew = timedelta(seconds=exchange.settings.status_timestamp_skew_s)
    async with exchange.workers(1):
        async with sender.client() as client:
            await client.send_document(document)
        await exchange.wait_settled(1)
        async with recipient.client() as client:
            # A QLVB whose clock is a year ahead, then one a week behind.
            await client.report_status(document, StatusCode.ARRIVED, "Đã nhận", at=now + 365 * skew)
            await exchange.wait_settled(2)
            await client.report_status(document, StatusCode.ARRIVED, "Đã nhận", at=now - 7 * skew)
            await exchange.wait_settled(3)
            # Within the setting: accepted, though hours late.
            await client.report_status(document, StatusCode.ARRIVED, "Đã nhận", at=now - skew / 2)
            await exchange.wait_settled(4)

    receipts = [item.receipt for item in await exchange.statuses_of(recipient)]
    assert [(r.kind, r.outcome, r.reason_code) for r in receipts] == [
        (MessageKind.STATUS, TransportOutcome.REJECTED, Reason.BAD_TIMESTAMP.code),
        (MessageKind.STATUS, TransportOutcome.REJECTED, Reason.BAD_TIMESTAMP.code),
        (MessageKind.STATUS, TransportOutcome.DELIVERED, None),
    ]
    ahead, behind, _ = receipts
    assert ahead.reason is not None and ahead.reason.startswith(
        Reason.BAD_TIMESTAMP.vietnamese.rstrip(".")
    )
    assert "ahead of the exchange's time of arrival" in ahead.reason
    assert "behind the exchange's time of arrival" in (behind.reason or "")
    # Only the accepted status reached the sender and the delivery's history.
    forwarded = await exchange.statuses_of(sender)
    assert [item.is_receipt for item in forwarded] == [True, False]
    assert await exchange.fetchval("SELECT state FROM deliveries") == StatusCode.ARRIVED.value
    assert await exchange.fetchval("SELECT count(*) FROM events WHERE kind = 'status'") == 1


COMMUNE = "000.46.24.H44"  # UBND xã Sơn Vi, Lâm Thao, Phú Thọ
DISTRICT = ("000.00.24.H44", "*.*.24.H44")  # the commune's district, subscribed to it
NEAR_MISS = ("000.00.25.H44", "*.*.25.H44")  # another district, its own subtree only


async def test_subscription_copy_is_published_by_the_worker_recorded_and_traced(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(SENDER)
    commune = await exchange.register(COMMUNE)
    district = await exchange.register(DISTRICT[0], subscriptions=[DISTRICT[1]])
    near_miss = await exchange.register(NEAR_MISS[0], subscriptions=[NEAR_MISS[1]])
    document = demo_document(sender, [commune], 8, "VPCP", "Về việc sao gửi cấp trên")
    async with exchange.workers(1):
        async with sender.client() as client:
            await client.send_document(document)
        await exchange.wait_settled(1)

    # The copy: the same package, saying whom it was addressed to and why it came.
    (delivered,) = await exchange.inbox_of(commune)
    (copy,) = await exchange.inbox_of(district)
    assert copy.body == delivered.body
    headers = copy.message.headers or {}
    assert (headers[header.RECIPIENT], headers[header.SUBSCRIPTION]) == (COMMUNE, DISTRICT[1])
    assert await exchange.inbox_of(near_miss) == []
    # Recorded...
    rows = await exchange.fetch(
        "SELECT c.subscriber, c.pattern, m.routing_key FROM subscription_copies c"
        " JOIN messages m ON m.id = c.message_pk"
    )
    assert [tuple(row) for row in rows] == [(DISTRICT[0], DISTRICT[1], COMMUNE)]
    # ... so that `lienthong trace` names who received a copy.
    document_id = delivered.package.document_id
    assert document_id is not None
    traced = await lienthong(
        "trace", document_id, "--json", "--database-url", exchange.settings.database_url
    )
    ((recipient,),) = [trace["recipients"] for trace in json.loads(traced)]
    assert recipient["recipient"] == COMMUNE
    assert [(c["subscriber"], c["pattern"]) for c in recipient["copies"]] == [DISTRICT]
    text = await lienthong("trace", document_id, "--database-url", exchange.settings.database_url)
    assert f"copy    to {DISTRICT[0]}" in text and f"(subscribed to {DISTRICT[1]})" in text


async def lienthong(*args: str) -> str:
    """Run the ``lienthong`` command as an operator would; its standard output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exchange",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()
