"""Poison messages: parked once their handling was started too often, and only they."""

from __future__ import annotations

import aio_pika

from exchange.broker.connection import connect
from exchange.broker.topology import WORK_QUEUES
from exchange.demo import demo_document
from exchange.failures import Failure
from exchange.status import TransportOutcome
from exchange.store import queries
from exchange.worker import POISON_STARTS
from tests.exchange_fixtures import ExchangeUnderTest, recording_client

SENDER, RECIPIENT = "000.00.00.G22", "000.00.00.H26"


async def _redeliver_once(exchange: ExchangeUnderTest) -> None:
    """Take the waiting message off its lane and hand it back, as a dying worker would."""
    connection = await connect(exchange.settings.amqp_url, name="pytest-dying-worker")
    try:
        channel = await connection.channel()
        for name in WORK_QUEUES:
            queue = await channel.get_queue(name, ensure=False)
            message = await queue.get(timeout=5, fail=False)
            if message is not None:
                assert isinstance(message, aio_pika.abc.AbstractIncomingMessage)
                await message.nack(requeue=True)
                return
        raise AssertionError("no message waits for a worker")
    finally:
        await connection.close()


async def test_message_whose_handling_was_started_too_often_is_parked_with_a_receipt(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(SENDER)
    recipient = await exchange.register(RECIPIENT)
    async with recording_client(sender) as client:
        await client.send_document(demo_document(sender, [recipient], 9, "VPCP", "Độc"))
        ((package, _),) = client.published
    await _redeliver_once(exchange)
    key = queries.dedup_key(RECIPIENT, package, exchange.broker_user_for(SENDER))
    # Earlier workers died while handling it, POISON_STARTS times.
    await exchange.fetchval(
        "INSERT INTO processing_starts (dedup_key, starts) VALUES ($1, $2)", key, POISON_STARTS
    )
    async with exchange.workers(1):
        await exchange.wait_settled(1)
    outcome, reason = (
        await exchange.fetch(
            "SELECT s.outcome, s.reason_code FROM messages m "
            "JOIN message_state s ON s.message_pk = m.id WHERE m.dedup_key = $1",
            key,
        )
    )[0]
    assert (outcome, reason) == (TransportOutcome.PARKED.value, "PARKED_POISON")
    assert await exchange.queue_depth("lienthong.parked") == 1
    assert await exchange.inbox_of(recipient) == []
    (item,) = await exchange.statuses_of(sender)
    receipt = item.receipt
    assert receipt.outcome is TransportOutcome.PARKED
    # The sender learns the failure's class; the exchange's own error text
    # stays in the record, for the operator.
    assert (receipt.reason_code, receipt.reason, receipt.reason_en, receipt.problems) == (
        "PARKED_POISON",
        Failure.POISON.vietnamese,
        Failure.POISON.english,
        [],
    )
    detail = await exchange.fetchval(
        "SELECT s.reason_detail FROM messages m "
        "JOIN message_state s ON s.message_pk = m.id WHERE m.dedup_key = $1",
        key,
    )
    assert detail == f"handling started {POISON_STARTS + 1} times"
    assert detail.encode() not in item.body


async def test_redelivered_message_below_the_limit_is_handled_normally(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(SENDER)
    recipient = await exchange.register(RECIPIENT)
    async with recording_client(sender) as client:
        await client.send_document(demo_document(sender, [recipient], 10, "VPCP", "Lành"))
        ((package, _),) = client.published
    await _redeliver_once(exchange)
    async with exchange.workers(1):
        await exchange.wait_settled(1)
    key = queries.dedup_key(RECIPIENT, package, exchange.broker_user_for(SENDER))
    assert (
        await exchange.fetchval("SELECT starts FROM processing_starts WHERE dedup_key = $1", key)
        == 1
    )
    assert len(await exchange.inbox_of(recipient)) == 1
