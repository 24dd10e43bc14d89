"""What leaks, and what is judged, by metadata: status Timestamps, subscription copies.

Through the real worker, broker and database: a status dated far from its
arrival is refused with a receipt that says why; a subscription copy is
published by the worker and recorded, so ``trace`` names who received it.
(Parked receipts carrying only the failure's class: tests/integration/test_poison.py.)
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

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
