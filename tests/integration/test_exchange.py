"""The exchange end to end, on the real RabbitMQ and PostgreSQL.

Agencies publish through their own broker users, workers run in-process
(:meth:`exchange.demo.LocalExchange.workers`), and every outcome is read
where an agency would read it: its inbox and status queues. The tests wait
on the database (a message's ``published_at`` is set only once the broker
confirmed its delivery and receipt), never on a bare sleep, so every
assertion about a queue is made when the queue already holds all it will.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from exchange.agency import AgencyCode
from exchange.checks.authorise import document_id_of
from exchange.demo import LocalAgency, demo_document
from exchange.edxml.model import VIETNAM_TIME, ResponseFor
from exchange.edxml.writer import new_status, write_package
from exchange.reasons import Reason
from exchange.receipts import Receipt
from exchange.status import MessageKind, StatusCode, TransportOutcome
from tests.exchange_fixtures import ExchangeUnderTest, recording_client

pytestmark = pytest.mark.services

SENDER = "000.00.00.G22"  # Văn phòng Chính phủ
RECIPIENTS = (
    "000.00.00.G09",  # Bộ Nội vụ
    "000.00.00.H26",  # UBND Thành phố Hà Nội
    "000.46.24.H44",  # UBND xã Sơn Vi, Lâm Thao, Phú Thọ
)
BYSTANDER = "000.00.01.H26"  # Sở Nội vụ Hà Nội: registered, not addressed
NEAR_MISS = ("000.00.25.H44", "*.*.25.H44")  # another district, its own subtree only
DISTRICT = ("000.00.24.H44", "*.*.24.H44")  # the commune's district, subscribed to it


async def inbox_bodies(exchange: ExchangeUnderTest, agency: LocalAgency) -> list[bytes]:
    """The packages waiting in an agency's inbox, as its client receives them."""
    return [item.body for item in await exchange.inbox_of(agency)]


async def test_document_reaches_exactly_its_recipients_and_subscribers_then_statuses_flow_back(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(SENDER, "Văn phòng Chính phủ")
    recipients = [await exchange.register(code) for code in RECIPIENTS]
    bystander = await exchange.register(BYSTANDER)
    near_miss = await exchange.register(NEAR_MISS[0], subscriptions=[NEAR_MISS[1]])
    district = await exchange.register(DISTRICT[0], subscriptions=[DISTRICT[1]])
    document = demo_document(sender, recipients, 101, "VPCP-TH", "Về việc liên thông văn bản")

    async with exchange.workers(2):
        async with recording_client(sender) as client:
            message_ids = await client.send_document(document)
            ((signed, addressed),) = client.published
        assert addressed == list(RECIPIENTS)
        await exchange.wait_settled(3)

        # Each recipient's inbox holds the signed package, byte for byte.
        for recipient in recipients:
            assert await inbox_bodies(exchange, recipient) == [signed], f"inbox of {recipient.code}"
        # The district's subscription to *.*.24.H44 covers the commune.
        assert await inbox_bodies(exchange, district) == [signed]
        for outsider in (sender, bystander, near_miss):
            assert await exchange.queue_depth(f"lienthong.inbox.{outsider.code}") == 0, (
                f"{outsider.code} received a document addressed to others"
            )

        # Three receipts, one per recipient, and nothing else.
        news = await exchange.statuses_of(sender)
        assert all(item.is_receipt for item in news)
        receipts = sorted((item.receipt for item in news), key=lambda r: r.recipient)
        assert [r.recipient for r in receipts] == sorted(RECIPIENTS)
        digest = hashlib.sha256(signed).hexdigest()
        for receipt in receipts:
            assert receipt.outcome is TransportOutcome.DELIVERED
            assert receipt.kind is MessageKind.DOCUMENT
            assert receipt.document_id == document_id_of(document)
            assert receipt.sender == SENDER
            assert receipt.sha256 == digest
            assert receipt.reason_code is None
        assert sorted(r.message_id for r in receipts) == sorted(message_ids)

        # Each recipient reports 01 then 03; the sender gets each status
        # package exactly as the recipient signed it.
        reported: dict[bytes, str] = {}
        base = datetime.now(VIETNAM_TIME).replace(tzinfo=None, microsecond=0)
        for recipient in recipients:
            async with recording_client(recipient) as client:
                await client.report_status(document, StatusCode.ARRIVED, "Đã nhận", at=base)
                await client.report_status(
                    document, StatusCode.ACCEPTED, "Đã vào sổ", at=base + timedelta(seconds=1)
                )
            for body, targets in client.published:
                assert targets == [SENDER]
                reported[body] = str(recipient.code)
        await exchange.wait_settled(3 + 6)

    forwarded = await exchange.statuses_of(sender)
    assert not any(item.is_receipt for item in forwarded)
    assert sorted(item.body for item in forwarded) == sorted(reported)
    for item in forwarded:
        assert item.sender == reported[item.body]
        assert item.status.response_for.document_id == document_id_of(document)
    seen = sorted((reported[item.body], item.status.status_code.value) for item in forwarded)
    assert seen == sorted((code, step) for code in RECIPIENTS for step in ("01", "03"))

    # Each reporter got the receipts of its two statuses.
    for recipient in recipients:
        own = [item.receipt for item in await exchange.statuses_of(recipient)]
        assert [(r.kind, r.outcome, r.recipient) for r in own] == [
            (MessageKind.STATUS, TransportOutcome.DELIVERED, SENDER)
        ] * 2
    states = await exchange.fetch("SELECT recipient, state FROM deliveries ORDER BY recipient")
    assert [(row["recipient"], row["state"]) for row in states] == [
        (code, "03") for code in sorted(RECIPIENTS)
    ]
    # Nobody else heard anything.
    for outsider in (bystander, near_miss, district):
        assert await exchange.queue_depth(f"lienthong.status.{outsider.code}") == 0


# -- refusals -------------------------------------------------------------------

GOVERNMENT_OFFICE = "000.00.00.G22"
MINISTRY = "000.00.00.G09"
HANOI = "000.00.00.H26"
UNREGISTERED = "000.00.00.G17"  # a well-formed code nobody registered


@dataclass(frozen=True)
class Sent:
    """One message as its publisher sent it."""

    publisher: LocalAgency
    message_id: str
    body: bytes
    routing_key: str


async def expect_rejection(
    exchange: ExchangeUnderTest,
    publisher: LocalAgency,
    body: bytes,
    routing_key: str,
    reason: Reason,
    *,
    settled_before: int = 0,
    problem: str = "",
) -> Receipt:
    """Publish ``body`` as ``publisher`` and prove it is refused (see :func:`assert_rejected`)."""
    async with publisher.client() as client:
        (message_id,) = await client.submit(body, [routing_key])
    sent = Sent(publisher, message_id, body, routing_key)
    return await assert_rejected(
        exchange, sent, reason, settled_before=settled_before, problem=problem
    )


async def assert_rejected(
    exchange: ExchangeUnderTest,
    sent: Sent,
    reason: Reason,
    *,
    settled_before: int = 0,
    problem: str = "",
) -> Receipt:
    """Prove the message ``sent`` was refused for ``reason`` and went nowhere.

    The publisher's status queue must hold exactly one receipt saying so
    (in Vietnamese for the clerk, naming the ``problem``), the record must say
    rejected with no delivery and no history, and no inbox may hold anything:
    callers read the inboxes empty before. ``settled_before`` counts the
    messages the test sent before this one.
    """
    await exchange.wait_settled(settled_before + 1)

    news = await exchange.statuses_of(sent.publisher)
    assert len(news) == 1 and news[0].is_receipt, [item.body for item in news]
    receipt = news[0].receipt
    assert receipt.outcome is TransportOutcome.REJECTED
    assert receipt.reason_code == reason.code, receipt.reason_en
    assert receipt.reason is not None and receipt.reason.startswith(reason.vietnamese.rstrip("."))
    assert problem in receipt.reason, receipt.reason
    assert receipt.message_id == sent.message_id
    assert receipt.recipient == sent.routing_key
    assert receipt.sha256 == hashlib.sha256(sent.body).hexdigest()

    (record,) = await exchange.fetch(
        "SELECT m.id, s.outcome, s.reason_code FROM messages m"
        " JOIN message_state s ON s.message_pk = m.id WHERE m.amqp_message_id = $1",
        sent.message_id,
    )
    assert (record["outcome"], record["reason_code"]) == ("rejected", reason.code)
    assert (
        await exchange.fetchval(
            "SELECT count(*) FROM deliveries WHERE message_pk = $1", record["id"]
        )
        == 0
    )
    assert (
        await exchange.fetchval("SELECT count(*) FROM events WHERE message_pk = $1", record["id"])
        == 0
    )
    for code in exchange.agencies:
        assert await exchange.queue_depth(f"lienthong.inbox.{code}") == 0, (
            f"a refused package reached the inbox of {code}"
        )
    return receipt


async def test_package_breaking_the_schema_is_rejected_with_the_schema_reason(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    recipient = await exchange.register(MINISTRY)
    document = demo_document(sender, [recipient], 7, "VPCP", "Trích yếu ngắn")
    written = write_package(document)
    too_long = written.replace("Trích yếu ngắn".encode(), ("Trích yếu " * 60).encode())
    without_subject = re.sub(rb"\s*<edXML:Subject>.*?</edXML:Subject>", b"", written)
    assert too_long != written and without_subject != written

    async with exchange.workers(1), sender.client() as client:
        await expect_rejection(
            exchange,
            sender,
            client.sign(too_long),
            MINISTRY,
            Reason.SCHEMA_INVALID,
            problem="Subject",
        )
        await expect_rejection(
            exchange,
            sender,
            client.sign(without_subject),
            MINISTRY,
            Reason.MISSING_FIELD,
            settled_before=1,
            problem="Subject",
        )


async def test_package_changed_after_signing_is_rejected_as_badly_signed(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    recipient = await exchange.register(MINISTRY)
    document = demo_document(sender, [recipient], 8, "VPCP", "Về việc cấp kinh phí")
    async with sender.client() as client:
        signed = client.sign(document)
    tampered = signed.replace("cấp kinh phí".encode(), "thu hồi kinh phí".encode())
    assert tampered != signed

    async with exchange.workers(1):
        await expect_rejection(exchange, sender, tampered, MINISTRY, Reason.SIGNATURE_INVALID)


async def test_package_claiming_another_sender_is_rejected_whoever_signed_it(
    exchange: ExchangeUnderTest,
) -> None:
    forger = await exchange.register(HANOI)
    victim = await exchange.register(GOVERNMENT_OFFICE)
    recipient = await exchange.register(MINISTRY)
    # The victim's letterhead: From names the Government Office.
    document = demo_document(victim, [recipient], 9, "VPCP", "Văn bản giả mạo")
    async with forger.client() as forger_client, victim.client() as victim_client:
        signed_by_forger = forger_client.sign(document)
        signed_by_victim = victim_client.sign(document)

    async with exchange.workers(1):
        # Signed with the forger's own key: From and the certificate disagree.
        await expect_rejection(
            exchange,
            forger,
            signed_by_forger,
            MINISTRY,
            Reason.SENDER_MISMATCH,
            problem=HANOI,
        )
        # A genuine package of the victim, replayed by the forger's broker user.
        await expect_rejection(
            exchange,
            forger,
            signed_by_victim,
            MINISTRY,
            Reason.SENDER_MISMATCH,
            settled_before=1,
            problem=f"published by {HANOI}",
        )
    # The victim was told nothing: it sent nothing.
    assert await exchange.queue_depth(f"lienthong.status.{GOVERNMENT_OFFICE}") == 0


async def test_genuine_package_is_delivered_after_another_agency_replayed_it(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    co_recipient = await exchange.register(HANOI)
    recipient = await exchange.register(MINISTRY)
    document = demo_document(sender, [co_recipient, recipient], 14, "VPCP", "Gửi hai nơi")
    async with sender.client() as client:
        signed = client.sign(document)

    reused = REGISTRY.get_sample_value("lienthong_checks_reused_total") or 0.0
    async with exchange.workers(1):
        # A co-recipient holds the signed bytes and gets to the ministry first.
        await expect_rejection(exchange, co_recipient, signed, MINISTRY, Reason.SENDER_MISMATCH)
        async with sender.client() as client:
            await client.submit(signed, [MINISTRY])
        await exchange.wait_settled(2)

    (receipt,) = [item.receipt for item in await exchange.statuses_of(sender)]
    assert receipt.outcome is TransportOutcome.DELIVERED
    assert [item.body for item in await exchange.inbox_of(recipient)] == [signed]
    # The same bytes: the worker examined them once (for the impostor's copy,
    # refused by the envelope checks alone) and reused that for the sender's.
    assert REGISTRY.get_sample_value("lienthong_checks_reused_total") == reused + 1


async def test_document_for_an_unregistered_agency_is_rejected_and_can_be_sent_again_corrected(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    recipient = await exchange.register(MINISTRY)
    stranger = LocalAgency(
        AgencyCode.parse(UNREGISTERED), "Bộ Tài chính", sender.credential, sender.amqp_url
    )
    wrong = demo_document(sender, [stranger], 10, "VPCP", "Gửi nhầm nơi nhận")
    corrected = demo_document(sender, [recipient], 10, "VPCP", "Gửi nhầm nơi nhận")
    # The same letter (same number, same day), so the same DocumentId.
    assert document_id_of(wrong) == document_id_of(corrected)

    async with exchange.workers(1), sender.client() as client:
        await expect_rejection(
            exchange,
            sender,
            client.sign(wrong),
            UNREGISTERED,
            Reason.UNKNOWN_RECIPIENT,
            problem=UNREGISTERED,
        )
        # The refused package left no document behind to collide with.
        assert await exchange.fetchval("SELECT count(*) FROM documents") == 0
        await client.send_document(corrected)
        await exchange.wait_settled(2)

    (receipt,) = [item.receipt for item in await exchange.statuses_of(sender)]
    assert (receipt.outcome, receipt.reason_code) == (TransportOutcome.DELIVERED, None)
    assert len(await exchange.inbox_of(recipient)) == 1


async def test_document_published_to_an_agency_not_in_its_to_is_rejected(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    addressee = await exchange.register(MINISTRY)
    other = await exchange.register(HANOI)
    document = demo_document(sender, [addressee], 11, "VPCP", "Chỉ gửi Bộ Nội vụ")
    async with sender.client() as client:
        signed = client.sign(document)

    async with exchange.workers(1):
        await expect_rejection(
            exchange, sender, signed, str(other.code), Reason.NOT_ADDRESSED, problem=HANOI
        )


async def test_status_for_a_document_never_delivered_to_the_reporter_is_rejected(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    recipient = await exchange.register(MINISTRY)
    outsider = await exchange.register(HANOI)
    document = demo_document(sender, [recipient], 12, "VPCP", "Chỉ gửi Bộ Nội vụ")

    async with exchange.workers(1):
        async with sender.client() as client:
            await client.send_document(document)
        await exchange.wait_settled(1)
        assert len(await exchange.inbox_of(recipient)) == 1
        assert len(await exchange.statuses_of(sender)) == 1  # its delivery receipt

        async with recording_client(outsider) as client:
            message_id = await client.report_status(document, StatusCode.ARRIVED, "Đã nhận")
            ((status, _),) = client.published
        await assert_rejected(
            exchange,
            Sent(outsider, message_id, status, GOVERNMENT_OFFICE),
            Reason.UNKNOWN_DOCUMENT,
            settled_before=1,
            problem=document_id_of(document),
        )
    # The document's sender hears nothing of it.
    assert await exchange.queue_depth(f"lienthong.status.{GOVERNMENT_OFFICE}") == 0


async def test_status_that_cannot_follow_the_current_one_is_rejected(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    recipient = await exchange.register(MINISTRY)
    document = demo_document(sender, [recipient], 13, "VPCP", "Báo cáo trước ngày 30")
    done_at = datetime.now(VIETNAM_TIME).replace(tzinfo=None, microsecond=0)

    async with exchange.workers(1):
        async with sender.client() as client:
            await client.send_document(document)
        await exchange.wait_settled(1)
        assert len(await exchange.inbox_of(recipient)) == 1
        async with recording_client(recipient) as client:
            # An automated QLVB may report 06 at once; nothing may follow it.
            await client.report_status(document, StatusCode.DONE, "Đã xong", at=done_at)
            await exchange.wait_settled(2)
            assert len(await exchange.statuses_of(recipient)) == 1  # 06 delivered
            message_id = await client.report_status(
                document, StatusCode.PROCESSING, "Đang xử lý", at=done_at + timedelta(seconds=1)
            )
            (_, (status, _)) = client.published
        await assert_rejected(
            exchange,
            Sent(recipient, message_id, status, GOVERNMENT_OFFICE),
            Reason.ILLEGAL_TRANSITION,
            settled_before=2,
            problem="06",
        )
    # The sender heard of the delivery and of 06, never of the refused 05.
    news = await exchange.statuses_of(sender)
    assert [item.is_receipt for item in news] == [True, False]
    assert news[1].status.status_code is StatusCode.DONE
    assert await exchange.fetchval("SELECT state FROM deliveries") == "06"


@pytest.mark.samples
async def test_unsigned_real_world_package_is_rejected_as_unsigned(
    exchange: ExchangeUnderTest, samples_dir: Path
) -> None:
    # edoc_update.edxml comes from a real axis: From 000.00.00.G22, To
    # 000.00.00.H41 among others, and a placeholder where the signature goes.
    package = (samples_dir / "edoc_update.edxml").read_bytes()
    sender = await exchange.register("000.00.00.G22")
    await exchange.register("000.00.00.H41")

    async with exchange.workers(1):
        await expect_rejection(exchange, sender, package, "000.00.00.H41", Reason.SIGNATURE_MISSING)


async def test_impossible_day_relayed_from_another_agency_is_delivered_with_a_warning(
    exchange: ExchangeUnderTest,
) -> None:
    """A reply whose ResponseFor dates the answered letter 31 April: delivered, and the
    sender's receipt (and the status's) says which element held which impossible day."""
    sender = await exchange.register(HANOI)
    recipient = await exchange.register(MINISTRY)
    answered = ResponseFor(
        organ_id=AgencyCode.parse(MINISTRY),
        code="12/BNV-VP",
        promulgation_date=date(2024, 4, 30),
        document_id=f"{MINISTRY},2024/04/30,12/BNV-VP",
    )
    document = demo_document(sender, [recipient], 31, "UBND-VP", "Trả lời Công văn số 12/BNV-VP")
    document = document.model_copy(update={"response_for": (answered,)})
    written = write_package(document)
    relayed = written.replace(
        b"<edXML:PromulgationDate>2024/04/30<", b"<edXML:PromulgationDate>2024/04/31<"
    )
    assert relayed != written

    async with exchange.workers(1):
        async with sender.client() as client:
            signed = client.sign(relayed)
            await client.submit(signed, [MINISTRY])
        await exchange.wait_settled(1)
        (receipt,) = [item.receipt for item in await exchange.statuses_of(sender)]
        assert receipt.outcome is TransportOutcome.DELIVERED
        assert receipt.reason_code is None and receipt.problems == []
        (warning,) = receipt.warnings
        assert warning.startswith("MessageHeader/ResponseFor[1]/PromulgationDate:")
        assert "'2024/04/31'" in warning
        assert [item.body for item in await exchange.inbox_of(recipient)] == [signed]

        # The recipient's status names the document by the same relayed day.
        status = new_status(
            sender=recipient.organization,
            response_for=ResponseFor(
                organ_id=sender.code,
                code="31/UBND-VP",
                promulgation_date=date(2024, 4, 30),
                document_id=document_id_of(document),
            ),
            status_code=StatusCode.ARRIVED,
        )
        status_bytes = write_package(status).replace(b">2024/04/30<", b">2024/04/31<")
        async with recipient.client() as client:
            await client.submit(client.sign(status_bytes), [HANOI])
        await exchange.wait_settled(2)
    (status_receipt,) = [item.receipt for item in await exchange.statuses_of(recipient)]
    assert status_receipt.outcome is TransportOutcome.DELIVERED
    assert [w.split(":")[0] for w in status_receipt.warnings] == [
        "MessageHeader/ResponseFor/PromulgationDate"
    ]
