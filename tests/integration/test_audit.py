"""The audit: the record reconciled with the broker's queues.

First the reconciliation alone, as a pure function of counts and rows; then
against a real run of the exchange (its own vhost and database), where the
record is disturbed through the store API or, for the mutable state, with
plain SQL, and the audit must say so.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aio_pika
import pytest

from exchange.audit import (
    AuditReport,
    QueueCount,
    add_commands,
    audit,
    reconcile,
    vhost_of,
)
from exchange.broker.topology import (
    BULK_QUEUE,
    PARKED_QUEUE,
    PARKING_EXCHANGE,
    RETRY_TIERS,
    WORK_QUEUE,
    WORK_QUEUES,
)
from exchange.demo import LocalAgency, demo_document
from exchange.edxml.model import VIETNAM_TIME
from exchange.status import StatusCode, TransportOutcome
from exchange.store import queries
from exchange.store.records import DeliveryMismatch, MessageTally, UnsettledMessage
from tests.exchange_fixtures import ExchangeUnderTest

SENDER = "000.00.00.G22"  # Văn phòng Chính phủ
RECIPIENT = "000.00.00.H26"  # UBND Thành phố Hà Nội

NOW = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)


# -- reconciliation, without services ----------------------------------------------


def _tally(
    *,
    delivered: int = 0,
    parked: int = 0,
    undecided: int = 0,
    unpublished: int = 0,
    parked_published: int | None = None,
) -> MessageTally:
    outcomes = {name: n for name, n in (("delivered", delivered), ("parked", parked)) if n}
    return MessageTally(
        received=delivered + parked + undecided,
        outcomes=outcomes,
        undecided=undecided,
        unpublished=unpublished,
        parked_published=parked if parked_published is None else parked_published,
    )


def _queues(work: int = 0, retry: int = 0, parked: int = 0) -> list[QueueCount]:
    counts = [QueueCount(WORK_QUEUE, True, ready=work)]
    counts += [
        QueueCount(t.queue, True, ready=retry if i == 0 else 0) for i, t in enumerate(RETRY_TIERS)
    ]
    return [*counts, QueueCount(PARKED_QUEUE, True, ready=parked)]


def _unsettled(pk: int, outcome: TransportOutcome | None = None) -> UnsettledMessage:
    return UnsettledMessage(pk, NOW, RECIPIENT, "g22", outcome, None, 1)


def _codes(found: list[object]) -> list[str]:
    return [d.code for d in found]  # type: ignore[attr-defined]


def test_settled_record_and_empty_queues_agree() -> None:
    assert reconcile(_tally(delivered=5), _queues()) == []


def test_message_without_outcome_and_no_queue_is_a_discrepancy_naming_it() -> None:
    found = reconcile(_tally(delivered=5, undecided=1), _queues(), [_unsettled(7)])
    assert _codes(found) == ["NO_OUTCOME"]
    assert found[0].message_pks == (7,)
    assert "message 7 received" in found[0].details[0]
    assert "no queue holds any message" in found[0].summary


@pytest.mark.parametrize("where", [{"work": 1}, {"retry": 1}])
def test_message_without_outcome_is_accounted_for_by_a_waiting_message(
    where: dict[str, int],
) -> None:
    assert reconcile(_tally(undecided=1), _queues(**where), [_unsettled(7)]) == []


def test_more_unsettled_messages_than_waiting_ones_is_a_discrepancy() -> None:
    unsettled = [_unsettled(7), _unsettled(8, TransportOutcome.DELIVERED)]
    found = reconcile(_tally(undecided=1, unpublished=1), _queues(work=1), unsettled)
    assert _codes(found) == ["NO_OUTCOME", "UNPUBLISHED"]
    assert found[1].message_pks == (8,)
    assert "at least 1 unsettled message(s) are in no queue" in found[1].summary


def test_parked_rows_and_parked_queue_must_match() -> None:
    assert reconcile(_tally(parked=2), _queues(parked=2)) == []
    (more_rows,) = reconcile(_tally(parked=2), _queues(parked=1))
    assert more_rows.code == "PARKED_MISMATCH"
    assert "1 parked row(s) have no message" in more_rows.summary
    (more_queued,) = reconcile(_tally(parked=0), _queues(parked=1))
    assert "1 parked message(s) have no parked row" in more_queued.summary


def test_a_message_parked_before_its_row_was_written_accounts_for_an_unsettled_one() -> None:
    # Decided, publishing failed, parked: the row says delivered-unpublished
    # and its bytes wait in the parked queue.
    found = reconcile(
        _tally(delivered=1, unpublished=1),
        _queues(parked=1),
        [_unsettled(3, TransportOutcome.DELIVERED)],
    )
    assert _codes(found) == ["PARKED_MISMATCH"]


def test_deliveries_disagreeing_with_their_messages_are_discrepancies() -> None:
    marked = DeliveryMismatch(4, 9, RECIPIENT, None, False, NOW)
    unmarked = DeliveryMismatch(None, 10, RECIPIENT, TransportOutcome.DELIVERED, True, None)
    found = reconcile(_tally(delivered=2), _queues(), [], [marked], [unmarked])
    assert _codes(found) == ["DELIVERY_WITHOUT_MESSAGE", "DELIVERED_NOT_MARKED"]
    assert found[0].message_pks == (9,) and found[1].message_pks == (10,)
    assert "no delivery row" in found[1].details[0]


def test_missing_queue_is_a_discrepancy() -> None:
    queues = [QueueCount(WORK_QUEUE, False), *_queues()[1:]]
    assert _codes(reconcile(_tally(), queues)) == ["QUEUE_MISSING"]


def test_vhost_is_read_from_the_amqp_url() -> None:
    assert vhost_of("amqp://u:p@h:5672/") == "/"
    assert vhost_of("amqp://u:p@h:5672") == "/"
    assert vhost_of("amqp://u:p@h:5672/%2F") == "/"
    assert vhost_of("amqp://u:p@h/lienthong-test-x") == "lienthong-test-x"


# -- against a run of the exchange -----------------------------------------------


def _command_line(argv: list[str]) -> int:
    """``lienthong audit ...`` as the CLI will run it (its own event loop)."""
    parser = argparse.ArgumentParser(prog="lienthong")
    commands = parser.add_subparsers(dest="command", required=True)
    services = argparse.ArgumentParser(add_help=False)
    services.add_argument("--amqp-url")
    services.add_argument("--database-url")
    services.add_argument("--rabbitmq-api-url")
    add_commands(commands, services)
    args = parser.parse_args(argv)
    return int(args.handler(args))


def _services(exchange: ExchangeUnderTest) -> list[str]:
    return [
        "--amqp-url",
        exchange.settings.amqp_url,
        "--database-url",
        exchange.settings.database_url,
    ]


@pytest.fixture
async def settled(exchange: ExchangeUnderTest) -> AsyncIterator[ExchangeUnderTest]:
    """A document delivered and reported arrived, every message settled, workers stopped."""
    sender = await exchange.register(SENDER, "Văn phòng Chính phủ")
    recipient = await exchange.register(RECIPIENT, "UBND Thành phố Hà Nội")
    document = demo_document(sender, [recipient], 1, "VPCP", "Về việc kiểm tra")
    async with exchange.workers(2):
        async with sender.client() as client:
            await client.send_document(document)
        await exchange.wait_settled(1)
        at = datetime.now(VIETNAM_TIME).replace(tzinfo=None, microsecond=0)
        async with recipient.client() as client:
            await client.report_status(document, StatusCode.ARRIVED, "Đã nhận", at=at)
        await exchange.wait_settled(2)
    yield exchange


async def _record_without_outcome(exchange: ExchangeUnderTest) -> int:
    body = b"<edXML>recorded, never decided</edXML>"
    async with exchange.db() as conn:
        message, created = await queries.record_message(
            conn,
            dedup_key=queries.dedup_key(RECIPIENT, body, "someone"),
            amqp_message_id="lost-1",
            routing_key=RECIPIENT,
            broker_user="someone",
            body=body,
            sha256=hashlib.sha256(body).hexdigest(),
        )
    assert created
    return message.pk


@pytest.mark.services
async def test_clean_run_audits_ok_and_a_message_without_outcome_in_no_queue_does_not(
    settled: ExchangeUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    report = await audit(settled.settings)
    assert report.ok, list(report.lines())
    assert report.tally.received == 2
    assert report.tally.outcomes == {"delivered": 2}
    assert {q.name for q in report.queues} == {*WORK_QUEUES, BULK_QUEUE, PARKED_QUEUE} | {
        t.queue for t in RETRY_TIERS
    }
    assert await asyncio.to_thread(_command_line, ["audit", *_services(settled)]) == 0
    assert "OK: every message is settled" in capsys.readouterr().out

    lost = await _record_without_outcome(settled)
    report = await audit(settled.settings)
    assert [(d.code, d.message_pks) for d in report.discrepancies] == [("NO_OUTCOME", (lost,))]

    assert await asyncio.to_thread(_command_line, ["audit", *_services(settled)]) == 1
    out = capsys.readouterr().out
    assert "DISCREPANCY NO_OUTCOME: 1 message(s) recorded without an outcome" in out
    assert f"message {lost} received" in out
    assert await asyncio.to_thread(_command_line, ["audit", "--json", *_services(settled)]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["ok"] is False
    assert [(d["code"], d["message_pks"]) for d in answer["discrepancies"]] == [
        ("NO_OUTCOME", [lost])
    ]


@pytest.mark.services
async def test_message_waiting_in_the_work_queue_is_accounted_for(
    settled: ExchangeUnderTest,
) -> None:
    sender: LocalAgency = settled.agencies[next(iter(settled.agencies))]
    recipient = next(a for a in settled.agencies.values() if a is not sender)
    # No worker runs: the document waits in its sender's lane.
    async with sender.client() as client:
        await client.send_document(demo_document(sender, [recipient], 2, "VPCP", "Chờ xử lý"))
    # ... while a worker that took it had recorded it before dying.
    await _record_without_outcome(settled)
    report = await audit(settled.settings)
    assert report.ok, list(report.lines())
    assert sum(q.ready for q in report.queues if q.name in WORK_QUEUES) == 1


@pytest.mark.services
async def test_parked_queue_holding_a_message_without_a_parked_row_is_reported(
    settled: ExchangeUnderTest,
) -> None:
    connection = await aio_pika.connect(settled.settings.amqp_url)
    try:
        # Confirmed: the message is in the parked queue when publish returns.
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(PARKING_EXCHANGE)
        await exchange.publish(aio_pika.Message(b"<edXML>poison</edXML>"), routing_key=RECIPIENT)
    finally:
        await connection.close()
    report: AuditReport = await audit(settled.settings)
    assert [d.code for d in report.discrepancies] == ["PARKED_MISMATCH"]
    assert (
        "0 message(s) recorded as parked, 1 in lienthong.parked" in report.discrepancies[0].summary
    )


@pytest.mark.services
async def test_delivery_state_disagreeing_with_its_message_is_reported(
    settled: ExchangeUnderTest,
) -> None:
    document_message = await settled.fetchval(
        "SELECT message_pk FROM message_state WHERE kind = 'document'"
    )
    # The outbox flag lost (mutable state, no trigger guards it): the delivery
    # still says delivered, and nothing is left in a queue to publish it.
    async with settled.db() as conn:
        await conn.execute(
            "UPDATE message_state SET published_at = NULL WHERE message_pk = $1", document_message
        )
    report = await audit(settled.settings)
    assert [(d.code, d.message_pks) for d in report.discrepancies] == [
        ("UNPUBLISHED", (document_message,)),
        ("DELIVERY_WITHOUT_MESSAGE", (document_message,)),
    ]
    async with settled.db() as conn:
        await conn.execute("UPDATE message_state SET published_at = now()")
        await conn.execute("UPDATE deliveries SET delivered_at = NULL")
    report = await audit(settled.settings)
    assert [(d.code, d.message_pks) for d in report.discrepancies] == [
        ("DELIVERED_NOT_MARKED", (document_message,))
    ]
