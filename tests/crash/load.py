"""A signed workload and the agencies' systems that send and receive it during a run.

Everything is signed before the run (the run measures the exchange, not the
signing): documents from each agency to several others, one in
``tampered_every`` changed after signing (the exchange must reject it,
once), and for every document each recipient's status 01 ("arrived").
During the run, :class:`Traffic` plays the agencies' own systems: each
sender submits its documents, one message per recipient, retrying a
publish the broker did not confirm (as any QLVB would, so a broker restart
may put two copies of a message in the work queue); each recipient's
application reads its inbox through :class:`~exchange.client.AgencyClient`,
which drops redeliveries by message id, counts every document it is handed,
reports the status signed for it, and acknowledges it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from exchange.agency import AgencyCode
from exchange.checks.authorise import document_id_of
from exchange.checks.signature import sign
from exchange.client import AgencyClient
from exchange.demo import LocalAgency, demo_document
from exchange.edxml.model import ResponseFor
from exchange.edxml.writer import new_status, write_package
from exchange.pki import KeyType
from exchange.status import StatusCode
from exchange.store.queries import dedup_key
from tests.exchange_fixtures import ExchangeUnderTest

log = logging.getLogger("tests.crash.load")

# Six agencies on four levels; every one sends and receives.
AGENCY_CODES = (
    "000.00.00.G22",  # Văn phòng Chính phủ
    "000.00.00.G09",  # Bộ Nội vụ
    "000.00.00.H26",  # UBND Thành phố Hà Nội
    "000.00.01.H26",  # Sở Nội vụ Hà Nội
    "000.00.24.H44",  # UBND huyện Lâm Thao
    "000.46.24.H44",  # UBND xã Sơn Vi
)
# Publishes in flight at once per sender: confirms are pipelined on one
# channel, so a few at a time is many times faster than one by one.
PUBLISH_CONCURRENCY = 8
# A publish the broker did not confirm is tried again after this pause,
# until the deadline (a broker restart takes some seconds).
PUBLISH_RETRY_PAUSE_S = 0.5
PUBLISH_DEADLINE_S = 120.0
# An application waits this long for its next inbox item before it looks
# whether the run is over (and then reads on).
APP_IDLE_S = 0.5
# Pause of an application whose connection failed before it reads again.
APP_RETRY_PAUSE_S = 0.5


async def register_agencies(
    exchange: ExchangeUnderTest, codes: Sequence[str] = AGENCY_CODES
) -> dict[str, LocalAgency]:
    """Register ``codes`` with ECDSA keys (signing thousands of packages takes seconds).

    RSA would do as well for the exchange, but loading an RSA private key
    validates it (some 40 ms each time), which would make signing the
    workload the longest part of the test.
    """
    agencies = {}
    for code in codes:
        user = exchange.broker_user_for(code)
        exchange.broker_users.append(user)  # deleted after the test
        agencies[code] = await exchange.local.register(
            code, f"Cơ quan {code}", broker_user=user, key_type=KeyType.ECDSA_P256
        )
    return agencies


@dataclass(frozen=True)
class PlannedDocument:
    """One document of the workload, signed (and maybe tampered with) before the run."""

    number: int
    sender: str
    recipients: tuple[str, ...]
    document_id: str
    body: bytes
    tampered: bool


@dataclass(frozen=True)
class Submission:
    """One message an agency submits: who publishes what, to whom."""

    publisher: str
    broker_user: str
    routing_key: str
    body: bytes
    kind: str  # "document" or "status"
    document_id: str
    tampered: bool = False

    @property
    def dedup_key(self) -> str:
        """The exchange's identity of this message (what the messages table is unique on)."""
        return dedup_key(self.routing_key, self.body, self.broker_user)


@dataclass
class Workload:
    """Documents and statuses, all signed; who sends what to whom."""

    agencies: dict[str, LocalAgency]
    documents: list[PlannedDocument]
    # (document id, reporting recipient) -> the signed status 01.
    statuses: dict[tuple[str, str], bytes]

    @property
    def by_id(self) -> dict[str, PlannedDocument]:
        """The documents by DocumentId."""
        return {document.document_id: document for document in self.documents}

    def broker_user(self, code: str) -> str:
        """The broker user an agency publishes as."""
        client = self.agencies[code].client()
        return client.broker_user

    def document_submissions(self) -> list[Submission]:
        """Every document message: one per (document, recipient)."""
        return [
            Submission(
                document.sender,
                self.broker_user(document.sender),
                recipient,
                document.body,
                "document",
                document.document_id,
                document.tampered,
            )
            for document in self.documents
            for recipient in document.recipients
        ]

    def status_submissions(self) -> list[Submission]:
        """Every status message: each recipient of a genuine document reports 01."""
        by_id = self.by_id
        return [
            Submission(
                reporter,
                self.broker_user(reporter),
                by_id[document_id].sender,
                body,
                "status",
                document_id,
            )
            for (document_id, reporter), body in self.statuses.items()
        ]

    def submissions(self) -> list[Submission]:
        """Every distinct message the run submits."""
        return self.document_submissions() + self.status_submissions()

    def expected_inbox(self, code: str) -> Counter[str]:
        """The document ids agency ``code``'s application must see, each once."""
        return Counter(
            document.document_id
            for document in self.documents
            if code in document.recipients and not document.tampered
        )


def _recipients_of(sender_index: int, codes: Sequence[str], count: int) -> tuple[str, ...]:
    """The ``count`` agencies after the sender, in a ring."""
    return tuple(codes[(sender_index + step) % len(codes)] for step in range(1, count + 1))


def _status_body(reporter: LocalAgency, document: PlannedDocument, number: int) -> bytes:
    package = new_status(
        sender=reporter.organization,
        response_for=ResponseFor(
            organ_id=AgencyCode.parse(document.sender),
            code=f"{number}/CRASH",
            document_id=document.document_id,
        ),
        status_code=StatusCode.ARRIVED,
        description="Phần mềm QLVB đã nhận",
    )
    return sign(
        write_package(package), reporter.credential.key_pem, reporter.credential.cert_chain_pem
    )


def build_workload(
    agencies: dict[str, LocalAgency],
    documents: int,
    *,
    recipients: int = 3,
    tampered_every: int = 50,
) -> Workload:
    """Sign ``documents`` documents (each to ``recipients`` agencies) and their statuses.

    Document ``n`` comes from the ``n mod 6``-th agency and goes to the
    next ``recipients`` agencies; every ``tampered_every``-th one has its
    subject changed after signing.
    """
    codes = list(agencies)
    planned: list[PlannedDocument] = []
    statuses: dict[tuple[str, str], bytes] = {}
    for number in range(1, documents + 1):
        index = number % len(codes)
        sender = agencies[codes[index]]
        to = _recipients_of(index, codes, recipients)
        subject = f"Thử nghiệm chịu lỗi số {number:05d}"
        package = demo_document(sender, [agencies[c] for c in to], number, "CRASH", subject)
        signed = sign(
            write_package(package), sender.credential.key_pem, sender.credential.cert_chain_pem
        )
        tampered = number % tampered_every == 0
        if tampered:
            changed = signed.replace(subject.encode(), f"{subject} (đã sửa)".encode())
            assert changed != signed
            signed = changed
        document = PlannedDocument(
            number, codes[index], to, document_id_of(package), signed, tampered
        )
        planned.append(document)
        if not tampered:
            for code in to:
                statuses[(document.document_id, code)] = _status_body(
                    agencies[code], document, number
                )
    return Workload(agencies, planned, statuses)


@dataclass
class Traffic:
    """The agencies' systems during a run: they submit documents, read inboxes, report.

    Use as ``async with Traffic(workload) as traffic:``; inside,
    ``await traffic.send_documents()`` publishes every document and each
    recipient's application answers what it receives, until the block ends.
    """

    workload: Workload
    # recipient -> document id -> how many times its application was handed it
    seen: dict[str, Counter[str]] = field(default_factory=dict)
    # documents whose delivered bytes were not the bytes the sender signed
    altered: list[str] = field(default_factory=list)
    # statuses the applications reported, (document id, reporter)
    reported: set[tuple[str, str]] = field(default_factory=set)
    publishes: int = 0  # AMQP publishes confirmed by the broker
    publish_retries: int = 0  # publishes tried again after a failure
    app_errors: list[str] = field(default_factory=list)
    _clients: dict[str, AgencyClient] = field(default_factory=dict)
    _apps: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Traffic:
        for code, agency in self.workload.agencies.items():
            client = agency.client()
            await client.connect()
            self._clients[code] = client
            self.seen[code] = Counter()
        self._apps = [
            asyncio.create_task(self._application(code), name=f"application {code}")
            for code in self._clients
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop the applications (after the item each is handling) and disconnect."""
        self._stop.set()
        if self._apps:
            await asyncio.gather(*self._apps, return_exceptions=True)
            self._apps = []
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()

    # -- sending ------------------------------------------------------------------

    async def send_documents(self, submissions: Iterable[Submission] | None = None) -> None:
        """Publish document messages (by default all of them), concurrently per sender."""
        by_sender: dict[str, list[Submission]] = {}
        for submission in submissions or self.workload.document_submissions():
            by_sender.setdefault(submission.publisher, []).append(submission)
        await asyncio.gather(*(self._send_all(code, items) for code, items in by_sender.items()))

    async def _send_all(self, code: str, submissions: list[Submission]) -> None:
        client = self._clients[code]
        gate = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def one(submission: Submission) -> None:
            async with gate:
                await self.submit(client, submission.body, submission.routing_key)

        await asyncio.gather(*(one(s) for s in submissions))

    async def submit(self, client: AgencyClient, body: bytes, recipient: str) -> None:
        """Publish one message, again and again until the broker confirms it."""
        deadline = time.monotonic() + PUBLISH_DEADLINE_S
        while True:
            try:
                await client.submit(body, [recipient])
            except Exception as error:
                if time.monotonic() > deadline:
                    raise
                self.publish_retries += 1
                log.info("publish to %s failed (%s); trying again", recipient, error)
                await asyncio.sleep(PUBLISH_RETRY_PAUSE_S)
            else:
                self.publishes += 1
                return

    # -- receiving ----------------------------------------------------------------

    async def _application(self, code: str) -> None:
        """A recipient's QLVB: take each document, report it arrived, acknowledge it."""
        client = self._clients[code]
        documents = self.workload.by_id
        while not self._stop.is_set():
            try:
                async with contextlib.aclosing(client.inbox(idle_timeout=APP_IDLE_S)) as items:
                    async for item in items:
                        document_id = item.document_id or "?"
                        self.seen[code][document_id] += 1
                        planned = documents.get(document_id)
                        if planned is None or item.body != planned.body:
                            self.altered.append(document_id)
                        status = self.workload.statuses.get((document_id, code))
                        if status is not None and planned is not None:
                            await self.submit(client, status, planned.sender)
                            self.reported.add((document_id, code))
                        await item.ack()
                        if self._stop.is_set():
                            break
            except Exception as error:
                # The broker went away under the consumer: read on once it is back.
                self.app_errors.append(f"{code}: {error!r}")
                await asyncio.sleep(APP_RETRY_PAUSE_S)
