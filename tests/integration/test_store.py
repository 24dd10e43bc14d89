"""The query layer against the real PostgreSQL: exactly-once effect, constraints, read views."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from exchange.agency import AgencyCode
from exchange.ledger import deliver_document
from exchange.reasons import Reason
from exchange.settings import Settings
from exchange.status import (
    BusinessDocType,
    DeliveryState,
    MessageKind,
    Priority,
    StatusCode,
    TransportOutcome,
    next_state,
)
from exchange.store import Connection, queries
from exchange.store.db import create_pool
from exchange.store.queries import (
    AgencyConflictError,
    AgencyExistsError,
    AgencyNotFoundError,
    dedup_key,
)
from exchange.store.records import EventKind, Message, NewDocument, NewDocumentMessage
from tests.db_fixtures import create_database, drop_database, unique_database_name

pytest_plugins = ["tests.db_fixtures"]

GOVERNMENT_OFFICE = AgencyCode.parse("000.00.00.G22")
HOME_AFFAIRS = AgencyCode.parse("000.00.00.G09")
PHU_THO = AgencyCode.parse("000.00.00.H44")
PHU_THO_DISTRICT = AgencyCode.parse("000.00.24.H44")
PHU_THO_COMMUNE = AgencyCode.parse("000.46.24.H44")

NAMES = {
    GOVERNMENT_OFFICE: "Văn phòng Chính phủ",
    HOME_AFFAIRS: "Bộ Nội vụ",
    PHU_THO: "UBND tỉnh Phú Thọ",
    PHU_THO_DISTRICT: "UBND huyện Lâm Thao",
    PHU_THO_COMMUNE: "UBND xã Sơn Vi",
}


@pytest.fixture
async def directory(db: Connection) -> Connection:
    """The test database with the agencies of NAMES registered (in scrambled order)."""
    for code in sorted(NAMES, key=str, reverse=True):
        await queries.add_agency(db, code, NAMES[code])
    return db


async def _receive(
    conn: Connection,
    body: bytes = b"<edXML>package</edXML>",
    routing_key: AgencyCode = HOME_AFFAIRS,
    **state: object,
) -> tuple[Message, bool]:
    """Record a message the way the worker does."""
    return await queries.record_message(
        conn,
        dedup_key=dedup_key(str(routing_key), body),
        amqp_message_id="9d8a3c1e-0000-4000-8000-000000000001",
        routing_key=str(routing_key),
        broker_user=str(GOVERNMENT_OFFICE),
        body=body,
        sha256=hashlib.sha256(body).hexdigest(),
        **state,  # type: ignore[arg-type]
    )


async def _document_to(
    conn: Connection,
    recipients: list[AgencyCode],
    document_id: str = "000.00.00.G22,2024/05/06,7816/VPCP-TTĐT",
    body: bytes = b"<edXML>document 7816</edXML>",
) -> tuple[int, dict[AgencyCode, int], dict[AgencyCode, int]]:
    """A document sent by the Government Office to recipients, delivered and published.

    Returns the document's pk, and per recipient its delivery pk and message pk.
    """
    deliveries: dict[AgencyCode, int] = {}
    messages: dict[AgencyCode, int] = {}
    document_pk = 0
    for recipient in recipients:
        message, _ = await _receive(conn, body, recipient, kind=MessageKind.DOCUMENT)
        stored = await queries.upsert_document(
            conn,
            NewDocument(
                sender=GOVERNMENT_OFFICE,
                document_id=document_id,
                sha256=message.sha256,
                code_number="7816",
                code_notation="VPCP-TTĐT",
                subject="Về việc triển khai trục liên thông văn bản",
                promulgation_date=date(2024, 5, 6),
                priority=Priority.URGENT,
            ),
            first_message_pk=message.pk,
        )
        document_pk = stored.pk
        delivery, _ = await queries.create_delivery(conn, stored.pk, recipient, message.pk)
        await queries.set_outcome(
            conn,
            message.pk,
            TransportOutcome.DELIVERED,
            sender=GOVERNMENT_OFFICE,
            document_pk=stored.pk,
        )
        await queries.append_event(
            conn, delivery_pk=delivery.pk, message_pk=message.pk, code=TransportOutcome.DELIVERED
        )
        await queries.mark_published(conn, message.pk)
        deliveries[recipient] = delivery.pk
        messages[recipient] = message.pk
    return document_pk, deliveries, messages


async def _report(
    conn: Connection,
    delivery_pk: int,
    reporter: AgencyCode,
    code: StatusCode,
    at: datetime,
) -> None:
    """A status package from ``reporter``, recorded and applied the way the worker does."""
    body = f"<edXML>status {code.value} from {reporter} at {at.isoformat()}</edXML>".encode()
    message, _ = await _receive(conn, body, GOVERNMENT_OFFICE, kind=MessageKind.STATUS)
    await queries.append_event(
        conn, delivery_pk=delivery_pk, message_pk=message.pk, code=code, at=at
    )
    current = await queries.get_delivery(
        conn,
        GOVERNMENT_OFFICE,
        "000.00.00.G22,2024/05/06,7816/VPCP-TTĐT",
        reporter,
        lock=True,
    )
    assert current is not None
    await queries.update_delivery_state(conn, delivery_pk, next_state(current.state, code))
    await queries.set_outcome(conn, message.pk, TransportOutcome.DELIVERED, sender=reporter)


pytestmark = pytest.mark.services


# -- dedup key (pure) -----------------------------------------------------------


def test_dedup_key_changes_with_the_routing_key_and_with_the_body() -> None:
    key = dedup_key("000.00.00.G09", b"<edXML/>")
    assert key == dedup_key("000.00.00.G09", b"<edXML/>")
    assert key != dedup_key("000.00.00.H26", b"<edXML/>")
    assert key != dedup_key("000.00.00.G09", b"<edXML />")
    # No key/body split can imitate another.
    assert dedup_key("ab", b"c") != dedup_key("a", b"bc")
    assert dedup_key("000.00.00.G09", b"x", "agency-a") != dedup_key("000.00.00.G09", b"x", "b")
    assert dedup_key("k", b"x", "ab") != dedup_key("bk", b"x", "a")


# -- the schema's code lists ----------------------------------------------------

RECALL_CODES = {StatusCode.RECALL_REQUESTED, StatusCode.RECALL_AGREED, StatusCode.RECALL_REFUSED}


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        ("message_outcome_code", {o.value for o in TransportOutcome}),
        ("message_kind_code", {k.value for k in MessageKind}),
        ("document_doc_type_code", {t.value for t in BusinessDocType}),
        ("document_priority_code", {p.value for p in Priority}),
        ("delivery_state_code", {c.value for c in StatusCode if c not in RECALL_CODES}),
        ("event_kind_code", {k.value for k in EventKind}),
        (
            "event_code_in_its_vocabulary",
            {k.value for k in EventKind}
            | {o.value for o in TransportOutcome}
            | {c.value for c in StatusCode},
        ),
    ],
)
async def test_code_lists_in_the_schema_are_those_of_the_code(
    db: Connection, constraint: str, expected: set[str]
) -> None:
    definition = await db.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1", constraint
    )
    assert definition is not None, f"no constraint {constraint}"
    assert set(re.findall(r"'([^']*)'", definition)) == expected


# -- agencies ------------------------------------------------------------------


async def test_registered_agency_is_found_by_code_and_by_broker_user(
    directory: Connection,
) -> None:
    by_code = await queries.get_agency(directory, PHU_THO_COMMUNE)
    assert by_code is not None
    assert by_code.name == NAMES[PHU_THO_COMMUNE]
    assert by_code.parent == PHU_THO_DISTRICT
    assert by_code.level == 3  # under the district (level 2)
    assert by_code.broker_user == str(PHU_THO_COMMUNE)
    assert await queries.get_agency_by_broker_user(directory, str(PHU_THO_COMMUNE)) == by_code
    assert await queries.get_agency(directory, "000.00.00.H26") is None
    assert await queries.get_agency_by_broker_user(directory, "guest") is None


async def test_agencies_are_listed_as_a_tree(directory: Connection) -> None:
    listed = [agency.code for agency in await queries.list_agencies(directory)]
    assert listed == [HOME_AFFAIRS, GOVERNMENT_OFFICE, PHU_THO, PHU_THO_DISTRICT, PHU_THO_COMMUNE]


async def test_registered_codes_are_every_agency(directory: Connection) -> None:
    assert await queries.registered_codes(directory) == frozenset(NAMES)


async def test_registering_again_is_refused_and_the_agency_stays_as_it_was(
    directory: Connection,
) -> None:
    before = await queries.get_agency(directory, PHU_THO)
    with pytest.raises(AgencyExistsError, match="registered already"):
        await queries.add_agency(directory, PHU_THO, "Another name", subscriptions=["*.*.*.H44"])
    assert await queries.get_agency(directory, PHU_THO) == before


async def test_updating_an_agency_changes_only_what_is_given(directory: Connection) -> None:
    before = await queries.get_agency(directory, PHU_THO)
    assert before is not None
    named = await queries.update_agency(directory, PHU_THO, name="Ủy ban nhân dân tỉnh Phú Thọ")
    assert named.name == "Ủy ban nhân dân tỉnh Phú Thọ"
    assert (named.subscriptions, named.certificates, named.allow_sha1) == (
        before.subscriptions,
        before.certificates,
        before.allow_sha1,
    )
    subscribed = await queries.update_agency(
        directory,
        PHU_THO,
        certificates=[("0" * 64, "-----BEGIN CERTIFICATE-----\n...")],
        allow_sha1=True,
        subscriptions=["*.*.*.H44"],
    )
    assert subscribed.name == "Ủy ban nhân dân tỉnh Phú Thọ"
    assert subscribed.subscriptions == ("*.*.*.H44",)
    assert subscribed.certificates == ("-----BEGIN CERTIFICATE-----\n...",)
    assert subscribed.allow_sha1
    assert subscribed.registered_at == before.registered_at
    assert len(await queries.list_agencies(directory)) == len(NAMES)
    with pytest.raises(AgencyNotFoundError):
        await queries.update_agency(directory, AgencyCode.parse("000.00.00.A01"), name="x")


async def test_broker_user_of_another_agency_is_refused(directory: Connection) -> None:
    with pytest.raises(AgencyConflictError, match="broker user"):
        await queries.add_agency(
            directory, AgencyCode.parse("000.00.00.H26"), "Hà Nội", broker_user=str(PHU_THO)
        )


async def test_subscription_that_is_not_a_topic_of_four_words_is_refused(
    directory: Connection,
) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="agency_subscription_format"):
        await queries.add_agency(directory, PHU_THO, NAMES[PHU_THO], subscriptions=["*.H44"])


# -- messages ------------------------------------------------------------------


async def test_recording_a_message_twice_creates_one_row(db: Connection) -> None:
    first, created_first = await _receive(db)
    again, created_again = await _receive(db)
    assert (created_first, created_again) == (True, False)
    assert again == first
    assert await db.fetchval("SELECT count(*) FROM messages") == 1
    assert await db.fetchval("SELECT count(*) FROM message_state") == 1
    assert await queries.message_body(db, first.pk) == b"<edXML>package</edXML>"


async def test_same_bytes_to_another_recipient_are_another_message(db: Connection) -> None:
    to_ministry, _ = await _receive(db, routing_key=HOME_AFFAIRS)
    to_province, created = await _receive(db, routing_key=PHU_THO)
    assert created
    assert to_province.pk != to_ministry.pk
    assert to_province.sha256 == to_ministry.sha256


async def test_redelivery_finds_the_outcome_of_the_first_processing(
    directory: Connection,
) -> None:
    message, _ = await _receive(directory)
    await queries.set_outcome(
        directory,
        message.pk,
        TransportOutcome.REJECTED,
        Reason.SIGNATURE_INVALID,
        "SignatureValue does not verify",
        kind=MessageKind.DOCUMENT,
        sender=GOVERNMENT_OFFICE,
    )
    again, created = await _receive(directory)
    assert not created
    assert again.outcome is TransportOutcome.REJECTED
    assert again.reason_code == "REJECTED_SIGNATURE_INVALID"
    assert again.reason_detail == "SignatureValue does not verify"
    assert again.kind is MessageKind.DOCUMENT
    assert again.sender == GOVERNMENT_OFFICE
    assert not again.published


async def test_two_workers_recording_one_message_at_once_create_one_row(
    database_url: str,
) -> None:
    first, second = [await asyncpg.connect(database_url) for _ in range(2)]
    try:
        async with first.transaction():
            _, created_first = await _receive(first)
            # The second worker's insert waits for the first one's transaction.
            racing = asyncio.create_task(_receive(second))
            await asyncio.sleep(0.2)
            assert not racing.done()
        message, created_second = await racing
        assert (created_first, created_second) == (True, False)
        assert await second.fetchval("SELECT count(*) FROM messages") == 1
        assert message.routing_key == str(HOME_AFFAIRS)
    finally:
        await first.close()
        await second.close()


async def test_hash_that_is_not_the_hash_of_the_body_is_refused(db: Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="message_sha256_matches_body"):
        await queries.record_message(
            db,
            dedup_key=dedup_key("000.00.00.G09", b"real"),
            amqp_message_id=None,
            routing_key="000.00.00.G09",
            broker_user=None,
            body=b"real",
            sha256=hashlib.sha256(b"forged").hexdigest(),
        )


@pytest.mark.parametrize("outcome", list(TransportOutcome))
async def test_every_transport_outcome_can_be_recorded(
    db: Connection, outcome: TransportOutcome
) -> None:
    message, _ = await _receive(db)
    refused = outcome in (TransportOutcome.REJECTED, TransportOutcome.PARKED)
    reason = Reason.UNKNOWN_RECIPIENT if refused else None
    updated = await queries.set_outcome(db, message.pk, outcome, reason)
    assert updated.outcome is outcome
    assert updated.reason_code == (reason.code if reason else None)
    assert updated == await queries.get_message(db, message.pk)


async def test_unknown_outcome_is_refused_by_the_database(db: Connection) -> None:
    message, _ = await _receive(db)
    with pytest.raises(asyncpg.CheckViolationError, match="message_outcome_code"):
        await db.execute(
            "UPDATE message_state SET outcome = 'lost' WHERE message_pk = $1", message.pk
        )


async def test_rejection_without_a_reason_is_refused(db: Connection) -> None:
    message, _ = await _receive(db)
    with pytest.raises(asyncpg.CheckViolationError, match="message_reason_iff_refused"):
        await queries.set_outcome(db, message.pk, TransportOutcome.REJECTED)


async def test_new_outcome_clears_the_outbox_flag_and_the_same_outcome_keeps_it(
    db: Connection,
) -> None:
    message, _ = await _receive(db)
    await queries.set_outcome(db, message.pk, TransportOutcome.PARKED, "TRANSIENT_DATABASE")
    assert await queries.mark_published(db, message.pk)
    same = await queries.set_outcome(db, message.pk, TransportOutcome.PARKED, "TRANSIENT_DATABASE")
    assert same.published
    replayed = await queries.set_outcome(db, message.pk, TransportOutcome.DELIVERED, attempts=3)
    assert not replayed.published
    assert replayed.reason_code is None
    assert replayed.attempts == 3


async def test_unpublished_messages_are_listed_until_marked(db: Connection) -> None:
    undecided, _ = await _receive(db, b"<edXML>still processing</edXML>")
    decided, _ = await _receive(db, b"<edXML>decided</edXML>")
    await queries.set_outcome(db, decided.pk, TransportOutcome.REJECTED, Reason.NOT_EDXML)
    assert [m.pk for m in await queries.list_unpublished(db)] == [decided.pk]
    assert await queries.mark_published(db, decided.pk)
    assert not await queries.mark_published(db, decided.pk)
    assert await queries.list_unpublished(db) == []
    assert undecided.outcome is None


# -- documents -----------------------------------------------------------------


async def test_document_is_stored_once_per_sender_and_id(directory: Connection) -> None:
    document_pk, _, messages = await _document_to(directory, [HOME_AFFAIRS, PHU_THO])
    assert await directory.fetchval("SELECT count(*) FROM documents") == 1
    stored = await queries.get_document(
        directory, GOVERNMENT_OFFICE, "000.00.00.G22,2024/05/06,7816/VPCP-TTĐT"
    )
    assert stored is not None
    assert stored.pk == document_pk
    assert stored.first_message_pk == messages[HOME_AFFAIRS]
    assert stored.priority is Priority.URGENT
    assert stored.doc_type is BusinessDocType.NEW


async def test_same_document_id_with_other_content_is_a_conflict(directory: Connection) -> None:
    document_pk, _, _ = await _document_to(directory, [HOME_AFFAIRS])
    other, _ = await _receive(directory, b"<edXML>another document</edXML>", PHU_THO)
    stored = await queries.upsert_document(
        directory,
        NewDocument(
            sender=GOVERNMENT_OFFICE,
            document_id="000.00.00.G22,2024/05/06,7816/VPCP-TTĐT",
            sha256=other.sha256,
        ),
        first_message_pk=other.pk,
    )
    assert (stored.created, stored.conflict, stored.pk) == (False, True, document_pk)
    assert stored.document.sha256 != other.sha256


async def test_same_content_again_is_no_conflict(directory: Connection) -> None:
    document_pk, _, messages = await _document_to(directory, [HOME_AFFAIRS])
    first = await queries.get_message(directory, messages[HOME_AFFAIRS])
    assert first is not None
    stored = await queries.upsert_document(
        directory,
        NewDocument(
            sender=GOVERNMENT_OFFICE,
            document_id="000.00.00.G22,2024/05/06,7816/VPCP-TTĐT",
            sha256=first.sha256,
        ),
        first_message_pk=first.pk,
    )
    assert (stored.created, stored.conflict, stored.pk) == (False, False, document_pk)


async def test_same_document_id_from_another_sender_is_another_document(
    directory: Connection,
) -> None:
    document_pk, _, messages = await _document_to(directory, [HOME_AFFAIRS])
    stored = await queries.upsert_document(
        directory,
        NewDocument(
            sender=PHU_THO, document_id="000.00.00.G22,2024/05/06,7816/VPCP-TTĐT", sha256="0" * 64
        ),
        first_message_pk=messages[HOME_AFFAIRS],
    )
    assert stored.created
    assert not stored.conflict
    assert stored.pk != document_pk


def _new_document(
    body: bytes, document_id: str = "000.00.00.G22,2024/05/06,15/VPCP"
) -> NewDocument:
    return NewDocument(
        sender=GOVERNMENT_OFFICE,
        document_id=document_id,
        sha256=hashlib.sha256(body).hexdigest(),
        subject="Về việc triển khai",
        priority=Priority.URGENT,
    )


@pytest.mark.services
async def test_document_delivered_by_the_general_path_has_its_delivery_and_receipt(
    directory: Connection,
) -> None:
    body = b"<edXML>document 15</edXML>"
    documents: list[int] = []
    for recipient in (HOME_AFFAIRS, PHU_THO):
        message, _ = await _receive(directory, body, recipient)
        delivered = await deliver_document(
            directory, message_pk=message.pk, recipient=recipient, document=_new_document(body)
        )
        assert delivered is not None
        stored, record = delivered
        assert record is not None and not stored.conflict
        assert (record.outcome, record.kind, record.sender) == (
            TransportOutcome.DELIVERED,
            MessageKind.DOCUMENT,
            GOVERNMENT_OFFICE,
        )
        assert record.document_pk == stored.document.pk and record.published_at is None
        assert stored.document.priority is Priority.URGENT
        documents.append(stored.document.pk)
        delivery = await queries.get_delivery(
            directory, GOVERNMENT_OFFICE, stored.document.document_id, recipient
        )
        assert delivery is not None and delivery.message_pk == message.pk
        events = await queries.list_events(directory, delivery.pk)
        assert [(e.kind, e.code, e.message_pk) for e in events] == [
            (EventKind.RECEIPT, TransportOutcome.DELIVERED.value, message.pk)
        ]
    assert documents[0] == documents[1]
    assert await directory.fetchval("SELECT count(*) FROM documents") == 1


@pytest.mark.services
async def test_document_id_taken_by_other_bytes_writes_nothing(directory: Connection) -> None:
    first = b"<edXML>document 15</edXML>"
    message, _ = await _receive(directory, first)
    await deliver_document(
        directory, message_pk=message.pk, recipient=HOME_AFFAIRS, document=_new_document(first)
    )
    other = b"<edXML>document 15, changed</edXML>"
    again, _ = await _receive(directory, other, PHU_THO)
    delivered = await deliver_document(
        directory, message_pk=again.pk, recipient=PHU_THO, document=_new_document(other)
    )
    assert delivered is not None
    stored, record = delivered
    assert stored.conflict and record is None
    assert stored.document.sha256 == hashlib.sha256(first).hexdigest()
    assert await directory.fetchval("SELECT count(*) FROM deliveries") == 1
    assert await directory.fetchval("SELECT count(*) FROM events") == 1
    unchanged = await queries.get_message(directory, again.pk)
    assert unchanged is not None and unchanged.outcome is None


@contextlib.asynccontextmanager
async def _two_connections(
    database_url: str,
) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """Two connections to the test's database, the agencies registered: for races."""
    first, second = [await asyncpg.connect(database_url) for _ in range(2)]
    try:
        for code in NAMES:
            await queries.add_agency(first, code, NAMES[code])
        yield first, second
    finally:
        await first.close()
        await second.close()


@pytest.mark.services
async def test_document_committed_meanwhile_is_found_and_delivered_by_the_general_path(
    database_url: str,
) -> None:
    """The general path waits for another transaction's document, then reads and delivers it."""
    async with _two_connections(database_url) as (first, second):
        body = b"<edXML>document 15</edXML>"
        mine, _ = await _receive(second, body, PHU_THO)
        async with first.transaction():
            theirs, _ = await _receive(first, body)
            await deliver_document(
                first, message_pk=theirs.pk, recipient=HOME_AFFAIRS, document=_new_document(body)
            )
            racing = asyncio.create_task(
                deliver_document(
                    second, message_pk=mine.pk, recipient=PHU_THO, document=_new_document(body)
                )
            )
            await asyncio.sleep(0.2)
            assert not racing.done()
        stored, record = await racing
        assert not stored.created and not stored.conflict
        assert record is not None and record.outcome is TransportOutcome.DELIVERED
        assert await second.fetchval("SELECT count(*) FROM documents") == 1
        assert await second.fetchval("SELECT count(*) FROM deliveries") == 2


OTHER_DOCUMENT_ID = "000.00.00.G22,2024/05/06,16/VPCP"


def _document_message(body: bytes, recipient: AgencyCode = HOME_AFFAIRS) -> NewDocumentMessage:
    return NewDocumentMessage(
        dedup_key=dedup_key(str(recipient), body),
        amqp_message_id="9d8a3c1e-0000-4000-8000-000000000001",
        routing_key=str(recipient),
        broker_user=str(GOVERNMENT_OFFICE),
        body=body,
        recipient=recipient,
        document=_new_document(body),
    )


async def _record_delivered(
    conn: Connection, body: bytes, recipient: AgencyCode = HOME_AFFAIRS
) -> Message | None:
    """Record and deliver a document message on the ledger's fast path, alone in its group."""
    (recorded,) = await queries.record_delivered_documents(
        conn, [_document_message(body, recipient)]
    )
    return recorded


async def _rows(conn: Connection) -> list[tuple[object, ...]]:
    """What recording and delivering wrote, without ids and times, in a comparable form."""
    messages = await conn.fetch(
        "SELECT m.routing_key, m.broker_user, m.sha256, s.kind, s.sender, s.outcome,"
        " s.reason_code, s.document_id, s.attempts, s.published_at,"
        " d.document_id AS doc_id, d.sha256 AS doc_sha256, d.subject, d.priority"
        " FROM messages m JOIN message_state s ON s.message_pk = m.id"
        " LEFT JOIN documents d ON d.id = s.document_pk ORDER BY m.id"
    )
    deliveries = await conn.fetch(
        "SELECT dv.recipient, m.routing_key, e.kind, e.code FROM deliveries dv"
        " JOIN messages m ON m.id = dv.message_pk JOIN events e ON e.delivery_pk = dv.id"
        " ORDER BY dv.id, e.id"
    )
    documents = await conn.fetch(
        "SELECT d.document_id, m.routing_key FROM documents d"
        " JOIN messages m ON m.id = d.first_message_pk"
    )
    return [tuple(row) for row in [*messages, *deliveries, *documents]]


@pytest.mark.services
async def test_recorded_and_delivered_in_one_statement_is_what_the_steps_record(
    postgres_url: str, migrated_template: str
) -> None:
    """The worker's one-statement path writes exactly what the general path writes."""
    body = b"<edXML>document 15</edXML>"
    written = []
    for one_statement in (True, False):
        name = unique_database_name("same")
        dsn = await create_database(postgres_url, name, template=migrated_template)
        conn = await asyncpg.connect(dsn)
        try:
            for code in NAMES:
                await queries.add_agency(conn, code, NAMES[code])
            for recipient in (HOME_AFFAIRS, PHU_THO):
                if one_statement:
                    record = await _record_delivered(conn, body, recipient)
                    assert record is not None and record.outcome is TransportOutcome.DELIVERED
                    assert record == await queries.get_message(conn, record.pk)
                else:
                    message, _ = await _receive(conn, body, recipient)
                    await deliver_document(
                        conn,
                        message_pk=message.pk,
                        recipient=recipient,
                        document=_new_document(body),
                    )
            written.append(await _rows(conn))
        finally:
            await conn.close()
            await drop_database(postgres_url, name)
    assert written[0] == written[1]
    assert len(written[0]) == 2 + 2 + 1  # two messages, two deliveries with a receipt, a document


@pytest.mark.services
async def test_one_statement_path_writes_nothing_for_a_message_seen_before(
    directory: Connection,
) -> None:
    body = b"<edXML>document 15</edXML>"
    assert await _record_delivered(directory, body) is not None
    before = await _rows(directory)
    assert await _record_delivered(directory, body) is None
    assert await _rows(directory) == before


@pytest.mark.services
async def test_one_statement_path_writes_nothing_for_a_document_id_taken_by_other_bytes(
    directory: Connection,
) -> None:
    """Not even the message: the general path records it with its refusal."""
    assert await _record_delivered(directory, b"<edXML>document 15</edXML>") is not None
    before = await _rows(directory)
    assert (
        await _record_delivered(directory, b"<edXML>document 15, changed</edXML>", PHU_THO) is None
    )
    assert await _rows(directory) == before


@pytest.mark.services
async def test_one_statement_path_leaves_a_document_committed_meanwhile_undecided(
    database_url: str,
) -> None:
    """The statement waited for another transaction's document: it records, and decides nothing."""
    async with _two_connections(database_url) as (first, second):
        body = b"<edXML>document 15</edXML>"
        async with first.transaction():
            assert await _record_delivered(first, body) is not None
            racing = asyncio.create_task(_record_delivered(second, body, PHU_THO))
            await asyncio.sleep(0.2)
            assert not racing.done()
        mine = await racing
        assert mine is not None and mine.outcome is None and mine.document_pk is None
        assert await second.fetchval("SELECT count(*) FROM deliveries") == 1
        assert await second.fetchval("SELECT count(*) FROM events") == 1


@pytest.mark.services
async def test_a_group_of_messages_is_recorded_and_delivered_in_one_statement(
    directory: Connection,
) -> None:
    """Copies of one document to several recipients, another document, and earlier flags."""
    before = _document_message(b"<edXML>document 14</edXML>")
    before = replace(before, document=_new_document(before.body, "000.00.00.G22,2024/05/06,14"))
    (earlier,) = await queries.record_delivered_documents(directory, [before])
    assert earlier is not None and earlier.published_at is None
    body = b"<edXML>document 15</edXML>"
    other = b"<edXML>document 16</edXML>"
    messages = [
        _document_message(body, PHU_THO),
        _document_message(other, HOME_AFFAIRS),
        _document_message(body, HOME_AFFAIRS),
    ]
    messages[1] = replace(messages[1], document=_new_document(other, OTHER_DOCUMENT_ID))
    recorded = await queries.record_delivered_documents(directory, messages, [earlier.pk])
    assert all(r is not None and r.outcome is TransportOutcome.DELIVERED for r in recorded)
    assert [r.routing_key for r in recorded if r] == [m.routing_key for m in messages]
    first, second, third = (r for r in recorded if r is not None)
    assert first.document_pk == third.document_pk != second.document_pk
    document = await queries.get_document(
        directory, GOVERNMENT_OFFICE, messages[0].document.document_id
    )
    assert document is not None and document.first_message_pk == first.pk
    for message, record in zip(messages, recorded, strict=True):
        assert record == await queries.get_message(directory, record.pk)  # type: ignore[union-attr]
        delivery = await queries.get_delivery(
            directory, GOVERNMENT_OFFICE, message.document.document_id, message.recipient
        )
        assert delivery is not None and delivery.message_pk == record.pk  # type: ignore[union-attr]
    flagged = await queries.get_message(directory, earlier.pk)
    assert flagged is not None and flagged.published_at is not None


@pytest.mark.services
async def test_a_document_id_used_twice_in_one_group_delivers_the_first_bytes_only(
    directory: Connection,
) -> None:
    """The second is recorded undecided: the general path refuses it as DUPLICATE_DOCUMENT."""
    first = _document_message(b"<edXML>document 15</edXML>", HOME_AFFAIRS)
    changed = _document_message(b"<edXML>document 15, changed</edXML>", PHU_THO)
    delivered, undecided = await queries.record_delivered_documents(directory, [first, changed])
    assert delivered is not None and delivered.outcome is TransportOutcome.DELIVERED
    assert undecided is not None and undecided.outcome is None
    assert await directory.fetchval("SELECT count(*) FROM deliveries") == 1


async def test_one_statement_takes_no_message_twice(directory: Connection) -> None:
    """A second copy, of the message or of its document to its recipient, is left alone.

    It gets no record (the general path then finds the first copy's), and
    nothing is written for it.
    """
    message = _document_message(b"<edXML>document 15</edXML>")
    resent = replace(message, dedup_key=dedup_key(str(HOME_AFFAIRS), b"another copy"))
    first, again, same_delivery = await queries.record_delivered_documents(
        directory, [message, message, resent]
    )
    assert first is not None and first.outcome is TransportOutcome.DELIVERED
    assert again is None and same_delivery is None
    assert await directory.fetchval("SELECT count(*) FROM messages") == 1
    assert await directory.fetchval("SELECT count(*) FROM deliveries") == 1


async def test_unknown_document_type_is_refused_by_the_database(directory: Connection) -> None:
    document_pk, _, _ = await _document_to(directory, [HOME_AFFAIRS])
    # Documents are append-only history: the check must hold on INSERT.
    with pytest.raises(asyncpg.CheckViolationError, match="document_doc_type_code"):
        await directory.execute(
            """
            INSERT INTO documents (sender, document_id, sha256, doc_type, first_message_pk)
            SELECT sender, document_id || '-2', sha256, '7', first_message_pk
            FROM documents WHERE id = $1
            """,
            document_pk,
        )


# -- deliveries and events -----------------------------------------------------


async def test_delivery_created_twice_exists_once(directory: Connection) -> None:
    document_pk, deliveries, messages = await _document_to(directory, [HOME_AFFAIRS])
    again, created = await queries.create_delivery(
        directory, document_pk, HOME_AFFAIRS, messages[HOME_AFFAIRS]
    )
    assert not created
    assert again.pk == deliveries[HOME_AFFAIRS]
    assert await directory.fetchval("SELECT count(*) FROM deliveries") == 1


async def test_publishing_marks_the_deliveries_of_the_message_delivered(
    directory: Connection,
) -> None:
    _, _, messages = await _document_to(directory, [HOME_AFFAIRS])
    delivery = await queries.get_delivery(
        directory, GOVERNMENT_OFFICE, "000.00.00.G22,2024/05/06,7816/VPCP-TTĐT", HOME_AFFAIRS
    )
    message = await queries.get_message(directory, messages[HOME_AFFAIRS])
    assert delivery is not None
    assert message is not None
    assert delivery.delivered_at is not None
    assert delivery.delivered_at == message.published_at


async def test_delivery_state_is_stored_and_read_back(directory: Connection) -> None:
    _, deliveries, _ = await _document_to(directory, [PHU_THO])
    pending = DeliveryState(StatusCode.PROCESSING, recall_pending=True)
    updated = await queries.update_delivery_state(directory, deliveries[PHU_THO], pending)
    read = await queries.get_delivery(
        directory, GOVERNMENT_OFFICE, "000.00.00.G22,2024/05/06,7816/VPCP-TTĐT", PHU_THO
    )
    assert read == updated
    assert read.state == pending


async def test_delivery_to_an_agency_that_was_not_sent_the_document_is_not_found(
    directory: Connection,
) -> None:
    await _document_to(directory, [PHU_THO])
    missing = await queries.get_delivery(
        directory, GOVERNMENT_OFFICE, "000.00.00.G22,2024/05/06,7816/VPCP-TTĐT", HOME_AFFAIRS
    )
    assert missing is None


async def test_locked_delivery_makes_a_second_status_wait_for_the_first(
    database_url: str, directory: Connection
) -> None:
    _, deliveries, _ = await _document_to(directory, [PHU_THO])
    document_id = "000.00.00.G22,2024/05/06,7816/VPCP-TTĐT"
    other = await asyncpg.connect(database_url)
    try:
        first = directory.transaction()
        await first.start()
        await queries.get_delivery(directory, GOVERNMENT_OFFICE, document_id, PHU_THO, lock=True)
        second = other.transaction()
        await second.start()
        waiting = asyncio.create_task(
            queries.get_delivery(other, GOVERNMENT_OFFICE, document_id, PHU_THO, lock=True)
        )
        await asyncio.sleep(0.2)
        assert not waiting.done()
        arrived = DeliveryState(StatusCode.ARRIVED)
        await queries.update_delivery_state(directory, deliveries[PHU_THO], arrived)
        await first.commit()
        # The second status is checked against the first one's result.
        seen = await asyncio.wait_for(waiting, timeout=5)
        assert seen is not None
        assert seen.state == arrived
        await second.rollback()
    finally:
        await other.close()


async def test_event_appended_twice_exists_once(directory: Connection) -> None:
    _, deliveries, messages = await _document_to(directory, [HOME_AFFAIRS])
    again, created = await queries.append_event(
        directory,
        delivery_pk=deliveries[HOME_AFFAIRS],
        message_pk=messages[HOME_AFFAIRS],
        code=TransportOutcome.DELIVERED,
    )
    assert not created
    assert again.kind is EventKind.RECEIPT
    events = await queries.list_events(directory, deliveries[HOME_AFFAIRS])
    assert [event.pk for event in events] == [again.pk]


async def test_one_message_may_add_a_receipt_and_a_status_to_a_delivery(
    directory: Connection,
) -> None:
    _, deliveries, messages = await _document_to(directory, [HOME_AFFAIRS])
    status, created = await queries.append_event(
        directory,
        delivery_pk=deliveries[HOME_AFFAIRS],
        message_pk=messages[HOME_AFFAIRS],
        code=StatusCode.ARRIVED,
    )
    assert created
    assert status.kind is EventKind.STATUS
    events = await queries.list_events(directory, deliveries[HOME_AFFAIRS])
    assert {event.kind for event in events} == {EventKind.RECEIPT, EventKind.STATUS}


@pytest.mark.parametrize("code", list(StatusCode))
async def test_every_status_code_can_be_recorded(directory: Connection, code: StatusCode) -> None:
    _, deliveries, _ = await _document_to(directory, [PHU_THO])
    message, _ = await _receive(directory, f"<status {code.value}/>".encode(), GOVERNMENT_OFFICE)
    event, _ = await queries.append_event(
        directory, delivery_pk=deliveries[PHU_THO], message_pk=message.pk, code=code
    )
    assert event.code is code


async def test_status_code_in_a_receipt_is_refused_by_the_database(
    directory: Connection,
) -> None:
    _, deliveries, _ = await _document_to(directory, [PHU_THO])
    # A message of its own: the document message's receipt is taken (a row
    # whose key is taken is skipped before its constraints are checked).
    message, _ = await _receive(directory, b"<status 06/>", GOVERNMENT_OFFICE)
    with pytest.raises(asyncpg.CheckViolationError, match="event_code_in_its_vocabulary"):
        await directory.execute(
            "INSERT INTO events (delivery_pk, message_pk, kind, code, at) "
            "VALUES ($1, $2, 'receipt', '06', now())",
            deliveries[PHU_THO],
            message.pk,
        )


# -- trace and the sender's view -----------------------------------------------


async def test_trace_tells_when_submitted_delivered_and_each_status(
    directory: Connection,
) -> None:
    document_pk, deliveries, _ = await _document_to(directory, [PHU_THO_COMMUNE, HOME_AFFAIRS])
    start = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)
    for minutes, code in enumerate((StatusCode.ARRIVED, StatusCode.ACCEPTED, StatusCode.DONE)):
        await _report(
            directory,
            deliveries[HOME_AFFAIRS],
            HOME_AFFAIRS,
            code,
            start + timedelta(minutes=minutes),
        )
    await _report(
        directory, deliveries[PHU_THO_COMMUNE], PHU_THO_COMMUNE, StatusCode.RETURNED, start
    )

    (timeline,) = await queries.trace(directory, "000.00.00.G22,2024/05/06,7816/VPCP-TTĐT")
    assert timeline.document.pk == document_pk
    assert timeline.document.subject == "Về việc triển khai trục liên thông văn bản"
    assert [r.delivery.recipient for r in timeline.recipients] == [HOME_AFFAIRS, PHU_THO_COMMUNE]
    ministry, commune = timeline.recipients
    assert ministry.recipient_name == NAMES[HOME_AFFAIRS]
    assert ministry.delivery.delivered_at is not None
    assert timeline.submitted_at <= ministry.delivery.delivered_at
    statuses = [(e.code, e.at) for e in ministry.events if e.kind is EventKind.STATUS]
    assert statuses == [
        (StatusCode.ARRIVED, start),
        (StatusCode.ACCEPTED, start + timedelta(minutes=1)),
        (StatusCode.DONE, start + timedelta(minutes=2)),
    ]
    assert ministry.delivery.state == DeliveryState(StatusCode.DONE)
    assert [e.code for e in ministry.events if e.kind is EventKind.RECEIPT] == [
        TransportOutcome.DELIVERED
    ]
    assert [e.code for e in commune.events if e.kind is EventKind.STATUS] == [StatusCode.RETURNED]


async def test_trace_of_an_unknown_document_or_another_sender_is_empty(
    directory: Connection,
) -> None:
    await _document_to(directory, [HOME_AFFAIRS])
    document_id = "000.00.00.G22,2024/05/06,7816/VPCP-TTĐT"
    assert await queries.trace(directory, "000.00.00.G22,2024/05/06,1/VPCP") == []
    assert await queries.trace(directory, document_id, sender=PHU_THO) == []
    assert len(await queries.trace(directory, document_id, sender=GOVERNMENT_OFFICE)) == 1


async def test_sender_view_shows_each_document_at_each_recipient_with_its_latest_status(
    directory: Connection,
) -> None:
    _, deliveries, _ = await _document_to(directory, [PHU_THO, HOME_AFFAIRS, PHU_THO_DISTRICT])
    start = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)
    await _report(directory, deliveries[PHU_THO], PHU_THO, StatusCode.ARRIVED, start)
    await _report(
        directory, deliveries[PHU_THO], PHU_THO, StatusCode.ACCEPTED, start + timedelta(hours=1)
    )
    await _report(directory, deliveries[HOME_AFFAIRS], HOME_AFFAIRS, StatusCode.RETURNED, start)

    view = await queries.sender_view(directory, GOVERNMENT_OFFICE)
    assert [(row.recipient, row.latest_code) for row in view] == [
        (HOME_AFFAIRS, StatusCode.RETURNED),
        (PHU_THO, StatusCode.ACCEPTED),
        (PHU_THO_DISTRICT, None),
    ]
    by_recipient = {row.recipient: row for row in view}
    assert by_recipient[PHU_THO].latest_at == start + timedelta(hours=1)
    assert by_recipient[PHU_THO].state == DeliveryState(StatusCode.ACCEPTED)
    assert by_recipient[PHU_THO_DISTRICT].recipient_name == NAMES[PHU_THO_DISTRICT]
    assert all(row.delivered_at is not None for row in view)
    assert {row.document_id for row in view} == {"000.00.00.G22,2024/05/06,7816/VPCP-TTĐT"}
    assert await queries.sender_view(directory, PHU_THO) == []


async def test_a_pooled_connection_given_back_mid_transaction_is_rolled_back(
    database_url: str,
) -> None:
    """The pool skips asyncpg's session reset (create_pool), never the end of a transaction."""
    pool = await create_pool(Settings(db_pool_size=1), dsn=database_url)
    try:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("CREATE TABLE left_open (n int)")
            await conn.execute("SELECT pg_advisory_xact_lock(42)")
        async with pool.acquire() as conn:  # the one connection, given back
            assert await conn.fetchval("SELECT to_regclass('left_open')") is None
            assert not await conn.fetchval(
                "SELECT count(*) FROM pg_locks"
                " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            assert not conn.is_in_transaction()
    finally:
        await pool.close()


@pytest.mark.services
async def test_a_delivered_documents_warnings_are_recorded_by_both_paths(
    directory: Connection,
) -> None:
    """What the reader let pass is the delivered message's detail, whichever path wrote it."""
    warning = "ResponseFor/PromulgationDate: '2024/04/31' is not a day of the calendar"
    body = b"<edXML>document 15</edXML>"
    (grouped,) = await queries.record_delivered_documents(
        directory, [replace(_document_message(body, HOME_AFFAIRS), warnings=warning)]
    )
    assert grouped is not None and grouped.outcome is TransportOutcome.DELIVERED
    message, _ = await _receive(directory, body, PHU_THO)
    delivered = await deliver_document(
        directory,
        message_pk=message.pk,
        recipient=PHU_THO,
        document=_new_document(body),
        warnings=warning,
    )
    assert delivered is not None and delivered[1] is not None
    for record in (grouped, delivered[1]):
        assert record.reason_detail == warning and record.reason_code is None
        stored = await queries.get_message(directory, record.pk)
        assert stored is not None and stored.reason_detail == warning
    other = b"<edXML>document 16</edXML>"
    (plain,) = await queries.record_delivered_documents(
        directory,
        [
            replace(
                _document_message(other, PHU_THO),
                document=_new_document(other, OTHER_DOCUMENT_ID),
            )
        ],
    )
    assert plain is not None and plain.outcome is TransportOutcome.DELIVERED
    assert plain.reason_detail is None
