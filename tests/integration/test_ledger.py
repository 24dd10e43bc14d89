"""The ledger on the real PostgreSQL, with no broker: decisions recorded, publications owed.

Packages are really signed and inspected (:class:`exchange.pipeline.CheckCache`);
what the ledger returns is checked against what the database then holds.
Nothing is published: the ledger only says what is owed.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from exchange.agency import AgencyCode
from exchange.broker import headers as header
from exchange.broker.topology import DELIVER_EXCHANGE, STATUS_EXCHANGE
from exchange.checks.authorise import document_id_of
from exchange.checks.signature import sign
from exchange.directory import Directory
from exchange.edxml.model import (
    VIETNAM_TIME,
    Code,
    DocumentPackage,
    DocumentType,
    Organization,
    ResponseFor,
    SignerInfo,
)
from exchange.edxml.writer import new_document, new_status, write_package
from exchange.failures import Failure
from exchange.ledger import Arrival, Decided, Ledger
from exchange.pipeline import CheckCache, CheckContext, CheckedMessage, Envelope
from exchange.reasons import Reason, Rejection
from exchange.status import MessageKind, StatusCode, TransportOutcome
from exchange.store import queries
from exchange.store.db import Pool
from exchange.store.records import EventKind
from tests.keys import AGENCY_NAMES, TestPKI

pytestmark = pytest.mark.services

SENDER = AgencyCode.parse("000.00.00.G22")
MINISTRY = AgencyCode.parse("000.00.00.G09")
HANOI = AgencyCode.parse("000.00.00.H26")
# Each agency's broker user, as the directory maps them.
USERS = {SENDER: "vpcp", MINISTRY: "bnv", HANOI: "hanoi"}


class Desk:
    """A ledger over a directory of three agencies, and what the worker would inspect with."""

    def __init__(self, pool: Pool, pki: TestPKI) -> None:
        self.pool = pool
        self.pki = pki
        self.directory = Directory(pool)
        self.ledger = Ledger(pool, self.directory, group_commits=2)
        self.check_cache = CheckCache(CheckContext(trust=pki.trust), max_bytes=2**20)
        self.credentials = {code: pki.agency(str(code)) for code in USERS}

    def organization(self, code: AgencyCode) -> Organization:
        return Organization(organ_id=code, organ_name=AGENCY_NAMES[str(code)])

    def document(self, number: int = 15) -> tuple[DocumentPackage, bytes]:
        """A letter from the Government Office to the ministry and Hà Nội, and its signed bytes."""
        today = datetime.now(VIETNAM_TIME).date()
        package = new_document(
            sender=self.organization(SENDER),
            recipients=[self.organization(MINISTRY), self.organization(HANOI)],
            code=Code(code_number=str(number), code_notation="VPCP-TH"),
            subject="Về việc triển khai trục liên thông",
            promulgation_date=today,
            place="Hà Nội",
            document_type=DocumentType(type="1", type_detail="0", type_name="Công văn"),
            signer=SignerInfo(competence="TM.", position="Chánh Văn phòng", full_name="Nguyễn A"),
            due_date=today + timedelta(days=10),
        )
        return package, self.signed(SENDER, write_package(package))

    def status(self, document: DocumentPackage, reporter: AgencyCode, code: StatusCode) -> bytes:
        """``reporter``'s signed status ``code`` for ``document``."""
        response_for = ResponseFor(
            organ_id=document.sender.organ_id,
            code=f"{document.code.code_number}/{document.code.code_notation}",
            promulgation_date=document.promulgation.promulgation_date,
            document_id=document_id_of(document),
        )
        package = new_status(
            sender=self.organization(reporter), response_for=response_for, status_code=code
        )
        return self.signed(reporter, write_package(package))

    def signed(self, code: AgencyCode, data: bytes) -> bytes:
        credential = self.credentials[code]
        return sign(data, credential.key_pem, credential.cert_pem)

    async def decide(
        self, body: bytes, to: AgencyCode, publisher: AgencyCode = SENDER, *, replay: bool = False
    ) -> Decided:
        """What the worker does with one message: inspect it, then hand it to the ledger."""
        arrival = Arrival(body, str(to), USERS[publisher], f"id-{to}-{len(body)}", replay=replay)
        envelope = Envelope(body, str(to), publisher)
        inspected: CheckedMessage | Rejection
        try:
            inspected = self.check_cache.check(envelope)
        except Rejection as rejection:
            inspected = rejection
        return await self.ledger.decide(arrival, envelope, inspected)


@pytest.fixture
async def desk(db_pool: Pool, tmp_path: Path) -> Desk:
    async with db_pool.acquire() as conn:
        for code, user in USERS.items():
            await queries.add_agency(conn, code, AGENCY_NAMES[str(code)], broker_user=user)
    return Desk(db_pool, TestPKI.create(tmp_path))


def _receipt(decided: Decided) -> dict[str, object]:
    receipt = decided.owed[-1]
    assert receipt.exchange == STATUS_EXCHANGE and receipt.headers[header.KIND] == "receipt"
    loaded: dict[str, object] = json.loads(receipt.body)
    return loaded


async def test_a_document_is_delivered_and_owes_its_package_then_its_receipt(desk: Desk) -> None:
    package, body = desk.document()
    decided = await desk.decide(body, MINISTRY)
    record = decided.record
    assert (record.outcome, record.kind, record.sender) == (
        TransportOutcome.DELIVERED,
        MessageKind.DOCUMENT,
        SENDER,
    )
    assert record.document_id == document_id_of(package) and not record.published
    delivery, receipt = decided.owed
    assert (delivery.exchange, delivery.routing_key, delivery.body) == (
        DELIVER_EXCHANGE,
        str(MINISTRY),
        body,
    )
    assert delivery.message_id == f"lienthong:{record.pk}"
    assert receipt.routing_key == str(SENDER)
    assert _receipt(decided)["outcome"] == "delivered"
    async with desk.pool.acquire() as conn:
        assert await queries.get_message(conn, record.pk) == record
        found = await queries.get_delivery(conn, SENDER, record.document_id or "", MINISTRY)
        assert found is not None and found.message_pk == record.pk
    await desk.ledger.mark_published(record.pk)
    async with desk.pool.acquire() as conn:
        marked = await queries.get_message(conn, record.pk)
    assert marked is not None and marked.published


async def test_a_status_is_applied_to_its_delivery_and_owes_the_status_then_its_receipt(
    desk: Desk,
) -> None:
    package, body = desk.document()
    await desk.decide(body, MINISTRY)
    status = desk.status(package, MINISTRY, StatusCode.ARRIVED)
    decided = await desk.decide(status, SENDER, MINISTRY)
    record = decided.record
    assert (record.outcome, record.kind, record.sender) == (
        TransportOutcome.DELIVERED,
        MessageKind.STATUS,
        MINISTRY,
    )
    forwarded, receipt = decided.owed
    assert (forwarded.exchange, forwarded.routing_key, forwarded.body) == (
        STATUS_EXCHANGE,
        str(SENDER),
        status,
    )
    assert receipt.routing_key == str(MINISTRY)
    async with desk.pool.acquire() as conn:
        delivery = await queries.get_delivery(conn, SENDER, document_id_of(package), MINISTRY)
        assert delivery is not None and delivery.state.latest is StatusCode.ARRIVED
        events = await queries.list_events(conn, delivery.pk)
    # The status is dated by its Timestamp (whole seconds): compared without order.
    assert {(e.kind, e.code, e.message_pk) for e in events} == {
        (EventKind.RECEIPT, TransportOutcome.DELIVERED, delivery.message_pk),
        (EventKind.STATUS, StatusCode.ARRIVED, record.pk),
    }


async def test_a_rejection_is_recorded_with_its_reason_and_owes_only_a_receipt(
    desk: Desk,
) -> None:
    package, body = desk.document()
    # Hà Nội reports on a document it was never sent: no delivery to speak of.
    status = desk.status(package, HANOI, StatusCode.ARRIVED)
    decided = await desk.decide(status, SENDER, HANOI)
    assert decided.record.outcome is TransportOutcome.REJECTED
    assert decided.record.reason_code == Reason.UNKNOWN_DOCUMENT.code
    (receipt,) = decided.owed
    assert receipt.routing_key == str(HANOI)
    assert _receipt(decided)["reason_code"] == Reason.UNKNOWN_DOCUMENT.code
    # A package to an agency not in its To is refused by inspection; recorded all the same.
    refused = await desk.decide(body, AgencyCode.parse("000.00.00.H49"))
    assert refused.record.reason_code == Reason.NOT_ADDRESSED.code
    async with desk.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 0
        assert await conn.fetchval("SELECT count(*) FROM messages") == 2


async def test_parking_records_the_message_and_returns_the_receipt_it_owes(desk: Desk) -> None:
    _, body = desk.document()
    arrival = Arrival(body, str(MINISTRY), USERS[SENDER], "id-parked")
    decided = await desk.ledger.park(arrival, Failure.DATABASE, "database down", attempts=4)
    assert decided is not None
    record = decided.record
    assert (record.outcome, record.reason_code, record.attempts, record.sender) == (
        TransportOutcome.PARKED,
        Failure.DATABASE.parked_code,
        4,
        SENDER,
    )
    # Only the receipt: the parked queue's copy is the worker's to publish.
    (receipt,) = decided.owed
    assert receipt.routing_key == str(SENDER)
    assert _receipt(decided)["outcome"] == "parked"
    # A message decided before its failure keeps its decision and owes nothing new.
    _, other = desk.document(16)
    delivered = await desk.decide(other, MINISTRY)
    again = Arrival(other, str(MINISTRY), USERS[SENDER], f"id-{MINISTRY}-{len(other)}")
    assert await desk.ledger.park(again, Failure.BROKER, "broker away", attempts=4) is None
    async with desk.pool.acquire() as conn:
        kept = await queries.get_message(conn, delivered.record.pk)
    assert kept is not None and kept.outcome is TransportOutcome.DELIVERED


async def test_a_redelivery_finds_the_earlier_decision_and_owes_only_what_is_not_marked(
    desk: Desk,
) -> None:
    _, body = desk.document()
    first = await desk.decide(body, MINISTRY)
    again = await desk.decide(body, MINISTRY)
    assert again.record.pk == first.record.pk and again.owed == first.owed
    await desk.ledger.mark_published(first.record.pk)
    settled = await desk.decide(body, MINISTRY)
    assert settled.record.pk == first.record.pk and settled.owed == ()
    arrival = Arrival(body, str(MINISTRY), USERS[SENDER], None)
    earlier = await desk.ledger.earlier_decision(arrival)
    assert earlier is not None and earlier.record.published and earlier.owed == ()
    async with desk.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 1
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 1


async def test_a_replay_decides_a_refused_message_again(desk: Desk) -> None:
    package, _ = desk.document()
    status = desk.status(package, MINISTRY, StatusCode.ARRIVED)
    refused = await desk.decide(status, SENDER, MINISTRY)
    assert refused.record.outcome is TransportOutcome.REJECTED
    arrival = Arrival(status, str(SENDER), USERS[MINISTRY], None, replay=True)
    assert await desk.ledger.earlier_decision(arrival) is None  # to be decided again
    _, body = desk.document()
    await desk.decide(body, MINISTRY)  # the document arrives after all
    replayed = await desk.decide(status, SENDER, MINISTRY, replay=True)
    assert replayed.record.pk == refused.record.pk
    assert replayed.record.outcome is TransportOutcome.DELIVERED


async def test_a_group_with_a_duplicate_records_and_delivers_each_message_once(
    desk: Desk,
) -> None:
    """Copies of one message decided at once share one record; each recipient one delivery."""
    _, body = desk.document()
    await desk.directory.is_registered(MINISTRY)  # loaded now: the three arrive together
    decided = await asyncio.gather(
        desk.decide(body, MINISTRY), desk.decide(body, MINISTRY), desk.decide(body, HANOI)
    )
    assert all(d.record.outcome is TransportOutcome.DELIVERED for d in decided)
    assert decided[0].record.pk == decided[1].record.pk != decided[2].record.pk
    # One group: both messages were recorded by the same statement (one transaction time).
    assert decided[0].record.received_at == decided[2].record.received_at
    assert decided[0].record.document_pk == decided[2].record.document_pk
    async with desk.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 2
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 2
        assert await conn.fetchval("SELECT count(*) FROM documents") == 1
