"""Limits per agency and fairness, through the real worker, broker and database.

Each test fails without the limit it proves: the broker user's connection
limit and topic permission, the inbox's bound (a policy) and what the sender
is told when it is reached, the rate of a publisher (REJECTED_QUOTA), and a
flood from one agency that does not hold back another's documents.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import aiormq
import pytest

from exchange.broker import headers as header
from exchange.broker.admin import BrokerAdmin
from exchange.broker.connection import (
    ConfirmingPublisher,
    PublishRefusedError,
    broker_user_of,
    connect,
)
from exchange.broker.topology import AGENCY_ROUTING_KEY, BULK_QUEUE, SUBMIT_EXCHANGE, WORK_QUEUES
from exchange.client import StatusItem
from exchange.demo import LocalAgency, demo_document
from exchange.failures import Failure
from exchange.reasons import Reason
from exchange.registry import set_agency_rate
from exchange.status import TransportOutcome
from tests.exchange_fixtures import (
    ExchangeUnderTest,
    isolated_exchange,
    recording_client,
    wait_for,
)

pytestmark = pytest.mark.services

SENDER = "000.00.00.G22"
RECIPIENT = "000.00.00.G09"
OTHER_SENDER = "000.00.00.H26"


async def receipts_of(exchange: ExchangeUnderTest, agency: LocalAgency) -> list[Any]:
    """The receipts waiting on an agency's status queue, read by its own client."""
    items: list[StatusItem] = await exchange.statuses_of(agency)
    return [item.receipt for item in items if item.is_receipt]


# -- the broker user: connections, channels, routing keys --------------------------


async def test_agency_user_may_publish_only_agency_codes_and_hold_few_connections(
    broker_admin: BrokerAdmin, database_url: str, tmp_path: Path
) -> None:
    async with isolated_exchange(
        broker_admin,
        database_url,
        tmp_path / "keys",
        agency_max_connections=2,
        agency_max_channels=5,
    ) as exchange:
        sender = await exchange.register(SENDER)
        user = (await exchange.fetch("SELECT broker_user FROM agencies"))[0]["broker_user"]
        assert await broker_admin.user_limits(user) == {"max-connections": 2, "max-channels": 5}
        (permission,) = await broker_admin.topic_permissions(exchange.vhost, user)
        assert (permission.exchange, permission.write) == (SUBMIT_EXCHANGE, AGENCY_ROUTING_KEY)

        connections = []
        try:
            connections.append(await connect(sender.amqp_url, name="limits-1"))
            publisher = await ConfirmingPublisher.open(connections[0])
            # An agency code as the key passes the topic permission (the
            # work queue takes every key).
            await publisher.publish(SUBMIT_EXCHANGE, RECIPIENT, b"<x/>", user_id=user)
            for junk in ("#", "lienthong.work", "000.00.00", "000.00.00.G09.extra"):
                with pytest.raises(PublishRefusedError, match=r"ACCESS_REFUSED|access to topic"):
                    await publisher.publish(SUBMIT_EXCHANGE, junk, b"<x/>", user_id=user)
                print(f"routing key {junk!r}: refused by the broker")
            connections.append(await connect(sender.amqp_url, name="limits-2"))
            with pytest.raises((aiormq.exceptions.AMQPError, ConnectionError)) as refused:
                connections.append(await connect(sender.amqp_url, name="limits-3"))
            print(f"third connection: {refused.value!r}")
        finally:
            for connection in connections:
                with contextlib.suppress(Exception):
                    await connection.close()


# -- the inbox's bound: a policy, and what the sender is told ------------------------


async def test_full_inbox_tells_the_sender_the_document_waits_and_delivers_it_once_read(
    broker_admin: BrokerAdmin, database_url: str, tmp_path: Path
) -> None:
    # One package fills the inbox: the next one is refused by the broker.
    async with isolated_exchange(
        broker_admin, database_url, tmp_path / "keys", inbox_max_bytes=1
    ) as exchange:
        sender = await exchange.register(SENDER)
        recipient = await exchange.register(RECIPIENT)
        first = demo_document(sender, [recipient], 1, "VPCP-TH", "Văn bản thứ nhất")
        second = demo_document(sender, [recipient], 2, "VPCP-TH", "Văn bản thứ hai")
        async with exchange.workers(1), recording_client(sender) as client:
            await client.send_document(first)
            await exchange.wait_settled(1)
            await client.send_document(second)

            async def sender_told() -> tuple[bool, str]:
                depth = await exchange.queue_depth(f"lienthong.status.{sender.code}")
                return depth >= 2, f"{depth} receipts for the sender"

            await wait_for(sender_told)
            receipts = await receipts_of(exchange, sender)
            waiting = [r for r in receipts if r.outcome is TransportOutcome.ACCEPTED]
            assert len(waiting) == 1, receipts
            assert waiting[0].reason_code == Failure.QUEUE_FULL.code
            assert waiting[0].document_id is not None and "2/VPCP-TH" in waiting[0].document_id
            print(f"sender told: {waiting[0].reason_code}: {waiting[0].reason}")
            # Nothing lost: recorded, and delivered once the recipient reads its inbox.
            assert await exchange.queue_depth(f"lienthong.inbox.{recipient.code}") == 1
            started = time.monotonic()
            assert len(await exchange.inbox_of(recipient)) == 1
            # The next retry delivers it: 1 s, or 10 s or 1 min if an
            # attempt met the inbox still full (a loaded machine).
            await exchange.wait_settled(2, timeout=90)
            print(f"delivered {time.monotonic() - started:.1f} s after the inbox was read")
            (delivered,) = await receipts_of(exchange, sender)
            assert delivered.outcome is TransportOutcome.DELIVERED
            assert delivered.document_id == waiting[0].document_id
            assert len(await exchange.inbox_of(recipient)) == 1


# -- the rate of a publisher: a token bucket in PostgreSQL --------------------------


async def test_publisher_over_its_rate_is_refused_quota_with_a_receipt_and_may_send_again(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(SENDER)
    recipient = await exchange.register(RECIPIENT)
    # Two at once, then one every 20 seconds: the four below are sent within
    # a second or two, so two of them are over the rate.
    await set_agency_rate(exchange.settings, sender.code, rate_per_s=0.05, burst=2)
    documents = [
        demo_document(sender, [recipient], n, "VPCP-TH", f"Văn bản {n}") for n in range(1, 5)
    ]
    async with exchange.workers(2), recording_client(sender) as client:
        for document in documents:
            await client.send_document(document)
        await exchange.wait_settled(4)
        receipts = await receipts_of(exchange, sender)
        outcomes = sorted((r.outcome.value, r.reason_code or "") for r in receipts)
        print(f"receipts: {outcomes}")
        assert outcomes == [
            ("delivered", ""),
            ("delivered", ""),
            ("rejected", Reason.QUOTA.code),
            ("rejected", Reason.QUOTA.code),
        ]
        refused = next(r for r in receipts if r.reason_code == Reason.QUOTA.code)
        assert refused.reason is not None and "gửi lại" in refused.reason
        # Recorded like every message (the audit sees it), not lost: the
        # sender sends the same bytes again once under its rate.
        assert (
            await exchange.fetchval(
                "SELECT count(*) FROM message_state WHERE reason_code = $1", Reason.QUOTA.code
            )
            == 2
        )
        body = next(sent for sent, _ in client.published if _sha256(sent) == refused.sha256)
        await set_agency_rate(exchange.settings, sender.code, rate_per_s=100, burst=10)
        await client.submit(body, [recipient.code])

        async def resent() -> tuple[bool, str]:
            depth = await exchange.queue_depth(f"lienthong.status.{sender.code}")
            return depth >= 1, f"{depth} receipts after the resend"

        await wait_for(resent)
        (again,) = await receipts_of(exchange, sender)
        assert (again.outcome, again.sha256) == (TransportOutcome.DELIVERED, refused.sha256)
        assert len(await exchange.inbox_of(recipient)) == 3


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# -- fairness: a flood does not hold back another agency ----------------------------

FLOOD = 400
OTHERS = 5


async def test_flood_from_one_agency_does_not_hold_back_another_agencys_documents(
    exchange: ExchangeUnderTest,
) -> None:
    flooder = await exchange.register(SENDER)
    other = await exchange.register(OTHER_SENDER)
    recipient = await exchange.register(RECIPIENT)
    await set_agency_rate(exchange.settings, flooder.code, rate_per_s=1000, burst=100_000)
    tag = uuid.uuid4().hex[:4].upper()
    # Queued before any worker runs, as a burst of 20,000 would be: one
    # queue would hold the flood in front of the other agency's documents.
    async with recording_client(flooder) as client:
        flood = [
            client.sign(demo_document(flooder, [recipient], n, f"F{tag}", f"Lũ {n}"))
            for n in range(1, FLOOD + 1)
        ]
        for body in flood:
            await client.submit(body, [recipient.code])
    async with recording_client(other) as client:
        for n in range(1, OTHERS + 1):
            await client.send_document(demo_document(other, [recipient], n, f"O{tag}", f"Khác {n}"))
    depths = {name: await exchange.queue_depth(name) for name in WORK_QUEUES}
    # Each agency's messages wait in the lane its code hashes to; these two
    # codes hash to two lanes (a pair sharing a lane has one chance in LANES).
    assert sorted(depth for depth in depths.values() if depth) == [OTHERS, FLOOD], depths
    async with exchange.workers(1):
        await exchange.wait_settled(FLOOD + OTHERS, timeout=300)
    rows = await exchange.fetch(
        "SELECT s.sender, s.updated_at FROM message_state s ORDER BY s.updated_at, s.message_pk"
    )
    order = [str(row["sender"]) for row in rows]
    others_done = [i for i, sender in enumerate(order) if sender == str(other.code)]
    flood_before = sum(1 for sender in order[: others_done[-1]] if sender == str(flooder.code))
    assert await exchange.queue_depth(BULK_QUEUE) == 0
    print(
        f"the other agency's {OTHERS} documents were decided after {flood_before} of the "
        f"flood's {FLOOD} (positions {others_done}, median {statistics.median(others_done)})"
    )
    # First come, first served, all of the flood would be decided first; in
    # its own lane, what the worker holds of it at most (prefetch of a lane
    # and of the work queue), whatever the flood's length.
    settings = exchange.settings
    assert flood_before <= settings.lane_prefetch + settings.prefetch


async def test_a_message_naming_another_agencys_lane_is_refused_with_a_receipt(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(SENDER)
    other = await exchange.register(OTHER_SENDER)
    recipient = await exchange.register(RECIPIENT)
    async with recording_client(sender) as client:
        body = client.sign(demo_document(sender, [recipient], 1, "VPCP-TH", "Làn của người khác"))
    connection = await connect(sender.amqp_url)
    try:
        publisher = await ConfirmingPublisher.open(connection)
        await publisher.publish(
            SUBMIT_EXCHANGE,
            str(recipient.code),
            body,
            user_id=broker_user_of(sender.amqp_url),
            headers={header.LANE: str(other.code)},
        )
    finally:
        await connection.close()
    async with exchange.workers(1):
        await exchange.wait_settled(1)
    (receipt,) = await receipts_of(exchange, sender)
    print(f"sender told: {receipt.reason_code}: {receipt.reason}")
    assert (receipt.outcome, receipt.reason_code) == (
        TransportOutcome.REJECTED,
        Reason.SENDER_MISMATCH.code,
    )
    assert receipt.reason is not None and str(other.code) in receipt.reason
    assert await exchange.inbox_of(recipient) == []
