"""Exactly-once effect: everything published twice, and redelivered, changes things once.

Issue 3 point 5: re-publishing or redelivering a message changes nothing.
Every document (to several recipients) and every status is published twice
at once, so two workers race on the copies; the first attempt to set a
message's outbox flag fails (as when the database connection drops after
the broker confirmed the effects but before the commit that records it), so
the worker's input comes back through the retry queue and its effects are
published a second time; finally everything is published a third time after
it was all processed. The database must hold one message per distinct
(publisher, routing key, body) (here each pair has one publisher), one
document, one delivery per (document, recipient), one event per receipt and
per status; queues may hold repeats (at-least-once publishing), which carry
the same message id, so agency clients see each item once.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage

from exchange.checks.authorise import document_id_of
from exchange.client import InboxItem, StatusItem
from exchange.demo import LocalAgency, demo_document
from exchange.edxml.model import VIETNAM_TIME, DocumentPackage
from exchange.status import MessageKind, StatusCode
from exchange.worker import Worker
from tests.exchange_fixtures import ExchangeUnderTest, recording_client, wait_for

pytestmark = pytest.mark.services

GOVERNMENT_OFFICE = "000.00.00.G22"
MINISTRY = "000.00.00.G09"
HANOI = "000.00.00.H26"
HANOI_HOME_AFFAIRS = "000.00.01.H26"
COMMUNE = "000.46.24.H44"
RETRY_QUEUE = "lienthong.retry.1s"  # where a failed attempt waits before coming back


@dataclass
class Instrumented:
    """Counts the messages the workers finished, and breaks the first outbox mark of each.

    The first outbox mark (``Worker._set_outbox_flag``) of every message
    raises a connection error, after the worker published its effects: the
    input goes to the retry queue, comes back, and is processed again.
    """

    breaking: bool = False
    handled: int = 0
    injected: int = 0
    _broken: set[int] = field(default_factory=set)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Wrap the worker's message handler and the outbox mark for this test."""
        original_handle = Worker.handle_delivery
        original_mark = Worker._set_outbox_flag

        async def handle(
            worker: Worker, message: AbstractIncomingMessage, *, movable: bool = False
        ) -> None:
            try:
                await original_handle(worker, message, movable=movable)
            finally:
                self.handled += 1

        async def set_outbox_flag(worker: Worker, message_pk: int) -> None:
            if self.breaking and message_pk not in self._broken:
                self._broken.add(message_pk)
                self.injected += 1
                raise ConnectionResetError("connection lost before the outbox flag was set")
            await original_mark(worker, message_pk)

        monkeypatch.setattr(Worker, "handle_delivery", handle)
        monkeypatch.setattr(Worker, "_set_outbox_flag", set_outbox_flag)

    async def wait_handled(self, exchange: ExchangeUnderTest, published: int) -> None:
        """Wait until every copy published and every retry of a broken mark was handled."""

        async def done() -> tuple[bool, str]:
            expected = published + self.injected
            return self.handled >= expected, f"{self.handled} of {expected} deliveries handled"

        await wait_for(done)
        # Nothing may be left waiting: no copy, no retry.
        for queue in ("lienthong.work", RETRY_QUEUE):
            assert await exchange.queue_depth(queue) == 0, queue


@pytest.fixture
def instrumented(monkeypatch: pytest.MonkeyPatch) -> Instrumented:
    """The worker, counted and with a breakable outbox mark, for this test only."""
    probe = Instrumented()
    probe.install(monkeypatch)
    return probe


async def twice(agency: LocalAgency, sent: list[tuple[bytes, list[str]]]) -> int:
    """Publish each package to its recipients twice, both copies at once; return the count."""
    async with agency.client() as client:
        await asyncio.gather(
            *(client.submit(body, targets) for body, targets in sent for _ in range(2))
        )
    return 2 * sum(len(targets) for _, targets in sent)


async def inbox_seen(agency: LocalAgency) -> list[InboxItem]:
    """What the agency's client hands its application from the inbox (repeats dropped)."""
    items = []
    async with agency.client() as client:
        async for item in client.inbox(idle_timeout=0.5):
            items.append(item)
            await item.ack()
    return items


async def statuses_seen(agency: LocalAgency) -> list[StatusItem]:
    """What the agency's client hands over from its status queue (repeats dropped)."""
    items = []
    async with agency.client() as client:
        async for item in client.statuses(idle_timeout=0.5):
            items.append(item)
            await item.ack()
    return items


async def test_everything_published_twice_and_redelivered_takes_effect_once(
    exchange: ExchangeUnderTest, instrumented: Instrumented
) -> None:
    for code in (GOVERNMENT_OFFICE, MINISTRY, HANOI, HANOI_HOME_AFFAIRS, COMMUNE):
        await exchange.register(code)
    agency = {str(code): local for code, local in exchange.agencies.items()}
    office, ministry, hanoi = agency[GOVERNMENT_OFFICE], agency[MINISTRY], agency[HANOI]
    home_affairs, commune = agency[HANOI_HOME_AFFAIRS], agency[COMMUNE]
    # Sender code -> its letter; one to three recipients, one to two.
    letters = {
        GOVERNMENT_OFFICE: demo_document(
            office, [ministry, hanoi, commune], 301, "VPCP-TH", "Ba nơi nhận"
        ),
        HANOI: demo_document(hanoi, [home_affairs, ministry], 302, "UBND-VP", "Hai nơi nhận"),
    }
    # Recipient code -> the letters it receives.
    received = {
        MINISTRY: [letters[GOVERNMENT_OFFICE], letters[HANOI]],
        HANOI: [letters[GOVERNMENT_OFFICE]],
        COMMUNE: [letters[GOVERNMENT_OFFICE]],
        HANOI_HOME_AFFAIRS: [letters[HANOI]],
    }
    # Every (routing key, body) that is one message -> the code of who published it.
    published: dict[tuple[str, bytes], str] = {}
    signed: dict[str, bytes] = {}  # DocumentId -> the package as signed
    # (reporter code, DocumentId, status code, the package as signed)
    statuses: list[tuple[str, str, StatusCode, bytes]] = []
    copies = 0  # copies published so far, all phases

    instrumented.breaking = True
    async with exchange.workers(2):
        # Documents, each copy published twice at once.
        for sender, letter in letters.items():
            async with agency[sender].client() as client:
                body = client.sign(letter)
            targets = [str(code) for code in letter.recipient_codes]
            signed[document_id_of(letter)] = body
            published.update({(target, body): sender for target in targets})
            copies += await twice(agency[sender], [(body, targets)])
        await instrumented.wait_handled(exchange, copies)

        # Every recipient reports 01 and 03 for what it received, twice each.
        base = datetime.now(VIETNAM_TIME).replace(tzinfo=None, microsecond=0)
        for recipient, documents in received.items():
            async with recording_client(agency[recipient]) as client:
                for letter in documents:
                    for step, code in enumerate((StatusCode.ARRIVED, StatusCode.ACCEPTED)):
                        at = base + timedelta(seconds=step)
                        await client.report_status(letter, code, at=at)
                        body, targets = client.published[-1]
                        await client.submit(body, targets)  # the second copy
                        copies += 2
                        statuses.append((recipient, document_id_of(letter), code, body))
                        published[(targets[0], body)] = recipient
        await instrumented.wait_handled(exchange, copies)
    assert instrumented.injected == len(published), "every message had its mark broken once"

    await assert_recorded_once(exchange, published, letters, received, statuses)

    # Repeats reached the queues (each effect was published twice), yet each
    # client hands every document, receipt and status over once.
    for recipient, documents in received.items():
        depth = await exchange.queue_depth(f"lienthong.inbox.{recipient}")
        assert depth >= 2 * len(documents), f"no repeat reached {recipient}"
        items = await inbox_seen(agency[recipient])
        assert sorted(item.body for item in items) == sorted(
            signed[document_id_of(letter)] for letter in documents
        )
    for code, local in agency.items():
        news = await statuses_seen(local)
        letter = letters.get(code)
        document_receipts = sorted(
            item.receipt.recipient
            for item in news
            if item.is_receipt and item.receipt.kind is MessageKind.DOCUMENT
        )
        assert document_receipts == sorted(
            str(recipient) for recipient in (letter.recipient_codes if letter else ())
        ), code
        forwarded = sorted(item.body for item in news if not item.is_receipt)
        assert forwarded == sorted(
            body
            for _, document_id, _, body in statuses
            if letter and document_id == document_id_of(letter)
        ), code
        status_receipts = [
            item for item in news if item.is_receipt and item.receipt.kind is MessageKind.STATUS
        ]
        assert len(status_receipts) == 2 * len(received.get(code, ())), code
        assert len(news) == len(document_receipts) + len(forwarded) + len(status_receipts)

    # Everything published a third time, after it was all processed: nothing
    # changes and nothing is published again.
    instrumented.breaking = False
    async with exchange.workers(2):
        for (target, body), publisher in published.items():
            async with agency[publisher].client() as client:
                await client.submit(body, [target])
            copies += 1
        await instrumented.wait_handled(exchange, copies)
    await assert_recorded_once(exchange, published, letters, received, statuses)
    for code in agency:
        for queue in (f"lienthong.inbox.{code}", f"lienthong.status.{code}"):
            assert await exchange.queue_depth(queue) == 0, f"{queue} got something again"


async def assert_recorded_once(
    exchange: ExchangeUnderTest,
    published: dict[tuple[str, bytes], str],
    letters: dict[str, DocumentPackage],
    received: dict[str, list[DocumentPackage]],
    statuses: list[tuple[str, str, StatusCode, bytes]],
) -> None:
    """The system of record holds each message, document, delivery and event once."""
    messages = await exchange.fetch(
        "SELECT m.routing_key, m.sha256, s.outcome, s.reason_code, s.published_at"
        " FROM messages m JOIN message_state s ON s.message_pk = m.id"
    )
    assert sorted((row["routing_key"], row["sha256"]) for row in messages) == sorted(
        (target, hashlib.sha256(body).hexdigest()) for target, body in published
    )
    assert {(row["outcome"], row["reason_code"]) for row in messages} == {("delivered", None)}
    assert all(row["published_at"] is not None for row in messages)

    documents = await exchange.fetch("SELECT sender, document_id FROM documents")
    assert sorted((row["sender"], row["document_id"]) for row in documents) == sorted(
        (sender, document_id_of(letter)) for sender, letter in letters.items()
    )

    deliveries = await exchange.fetch(
        "SELECT d.id, doc.document_id, d.recipient, d.state FROM deliveries d"
        " JOIN documents doc ON doc.id = d.document_pk"
    )
    expected_deliveries = sorted(
        (document_id_of(letter), recipient)
        for recipient, documents in received.items()
        for letter in documents
    )
    assert sorted((row["document_id"], row["recipient"]) for row in deliveries) == (
        expected_deliveries
    )
    assert {row["state"] for row in deliveries} == {StatusCode.ACCEPTED.value}

    events = await exchange.fetch("SELECT delivery_pk, kind, code FROM events")
    per_delivery: dict[Any, Counter[tuple[str, str]]] = {row["id"]: Counter() for row in deliveries}
    for event in events:
        per_delivery[event["delivery_pk"]][(event["kind"], event["code"])] += 1
    once = Counter({("receipt", "delivered"): 1, ("status", "01"): 1, ("status", "03"): 1})
    assert all(counts == once for counts in per_delivery.values()), per_delivery
    assert len(events) == len(deliveries) + len(statuses)
