"""The Python client for agency systems (QLVB): send, receive, report statuses.

An agency connects with its own broker user (RabbitMQ checks the
``user_id`` of everything it publishes) and signs with its own key. Items
from the inbox and the status queue are acknowledged only when the caller
says it has handled them (``await item.ack()``), so nothing is lost if the
agency's system stops half-way; items the exchange delivers again after a
failure carry the same message id and are dropped here, so the application
sees each one once.

Any AMQP 0-9-1 client can do the same with the names in the README; this
module only makes it convenient.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from types import TracebackType
from urllib.parse import unquote, urlsplit

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from exchange.agency import AgencyCode
from exchange.broker import headers as h
from exchange.broker.connection import XML_CONTENT_TYPE, ConfirmingPublisher, connect
from exchange.broker.topology import SUBMIT_EXCHANGE, inbox_queue, status_queue
from exchange.checks.authorise import document_id_of
from exchange.checks.signature import sign
from exchange.edxml.model import (
    DocumentPackage,
    Organization,
    ResponseFor,
    StaffInfo,
    StatusPackage,
)
from exchange.edxml.reader import read_document, read_status
from exchange.edxml.writer import new_status, write_package
from exchange.pki import Credential
from exchange.receipts import RECEIPT_CONTENT_TYPE, Receipt
from exchange.status import StatusCode

# Message ids of items already handled, remembered to drop redeliveries.
# A redelivery follows its original within the broker's redelivery window
# (seconds to minutes), so the most recent ids are the ones that matter.
SEEN_IDS_KEPT = 100_000
# How many unacknowledged items the broker hands an agency at once.
CLIENT_PREFETCH = 20


def _header(message: AbstractIncomingMessage, name: str) -> str | None:
    value = (message.headers or {}).get(name)
    if isinstance(value, bytes):
        return value.decode()
    return None if value is None else str(value)


@dataclass
class Item:
    """One message from an agency's queue; ``ack`` it once handled."""

    message: AbstractIncomingMessage
    _seen: _SeenIds = field(repr=False)

    @property
    def message_id(self) -> str:
        """Stable across redeliveries: the exchange's id of the message."""
        return self.message.message_id or _header(self.message, h.MESSAGE) or ""

    @property
    def body(self) -> bytes:
        """The bytes as the exchange delivered them (the package, unchanged)."""
        return self.message.body

    @property
    def sender(self) -> str | None:
        """The authenticated sender's agency code."""
        return _header(self.message, h.SENDER)

    @property
    def document_id(self) -> str | None:
        """The DocumentId the exchange recorded for this item."""
        return _header(self.message, h.DOCUMENT_ID)

    async def ack(self) -> None:
        """Tell the exchange this item is handled; it will not come again."""
        # Remembered first: the application has handled the item even when
        # the ack is lost with the connection (a broker restart), and the
        # redelivery that follows must be dropped, not handed over again.
        self._seen.add(self.message_id)
        await self.message.ack()

    async def reject(self) -> None:
        """Hand the item back to the queue, to be received again later."""
        await self.message.nack(requeue=True)


@dataclass
class InboxItem(Item):
    """A document delivered to this agency."""

    @cached_property
    def package(self) -> DocumentPackage:
        """The document, read from the delivered bytes."""
        return read_document(self.body)


@dataclass
class StatusItem(Item):
    """A receipt from the exchange, or a business status from a recipient."""

    @property
    def is_receipt(self) -> bool:
        """Whether this is the exchange's receipt (else an agency's status package)."""
        return self.message.content_type == RECEIPT_CONTENT_TYPE

    @cached_property
    def receipt(self) -> Receipt:
        """The receipt (only when :attr:`is_receipt`)."""
        return Receipt.model_validate_json(self.body)

    @cached_property
    def status(self) -> StatusPackage:
        """The status package (only when not :attr:`is_receipt`)."""
        return read_status(self.body)


class _SeenIds:
    """The most recent handled message ids, bounded."""

    def __init__(self, limit: int = SEEN_IDS_KEPT) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def add(self, message_id: str) -> None:
        if not message_id:
            return
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        while len(self._ids) > self._limit:
            self._ids.popitem(last=False)

    def __contains__(self, message_id: str) -> bool:
        return bool(message_id) and message_id in self._ids


class AgencyClient:
    """One agency's connection to the exchange.

    ``amqp_url`` carries the agency's own broker user and password;
    ``credential`` (its key and certificate) is needed to sign what it sends.
    Use as ``async with AgencyClient(...) as client:``.
    """

    def __init__(
        self,
        agency: AgencyCode | str,
        amqp_url: str,
        *,
        credential: Credential | None = None,
        organization: Organization | None = None,
    ) -> None:
        """A client for ``agency``; nothing is connected until ``connect()``."""
        self.agency = agency if isinstance(agency, AgencyCode) else AgencyCode.parse(agency)
        self.amqp_url = amqp_url
        self.credential = credential
        self.organization = organization or Organization(organ_id=self.agency)
        self.broker_user = unquote(urlsplit(amqp_url).username or "guest")
        self._connection: AbstractRobustConnection | None = None
        self._publisher: ConfirmingPublisher | None = None
        self._channel: AbstractChannel | None = None
        self._inbox_seen = _SeenIds()
        self._status_seen = _SeenIds()

    async def connect(self) -> None:
        """Open the connection and the channels."""
        self._connection = await connect(self.amqp_url, name=f"lienthong-client-{self.agency}")
        self._publisher = await ConfirmingPublisher.open(self._connection)
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=CLIENT_PREFETCH)

    async def close(self) -> None:
        """Close everything (unacknowledged items go back to their queues)."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def __aenter__(self) -> AgencyClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- sending --------------------------------------------------------------

    async def submit(self, package: bytes, recipients: Iterable[AgencyCode | str]) -> list[str]:
        """Publish signed package bytes to each recipient; returns the message ids.

        Returns once the broker confirmed every copy: from then on the
        exchange has it, and a receipt per recipient will follow.
        """
        assert self._publisher is not None, "connect() first"
        ids = []
        for recipient in recipients:
            code = recipient if isinstance(recipient, AgencyCode) else AgencyCode.parse(recipient)
            ids.append(
                await self._publisher.publish(
                    SUBMIT_EXCHANGE,
                    code.routing_key,
                    package,
                    message_id=str(uuid.uuid4()),
                    content_type=XML_CONTENT_TYPE,
                    user_id=self.broker_user,
                    # To the microsecond, for the exchange's latency figures
                    # (the AMQP timestamp has whole seconds).
                    headers={h.PUBLISHED_AT: datetime.now(UTC).isoformat()},
                )
            )
        return ids

    def sign(self, package: DocumentPackage | StatusPackage | bytes) -> bytes:
        """The package signed with this agency's key."""
        if self.credential is None:
            raise RuntimeError(f"{self.agency} has no signing key configured")
        data = package if isinstance(package, bytes) else write_package(package)
        return sign(data, self.credential.key_pem, self.credential.cert_chain_pem)

    async def send_document(self, package: DocumentPackage) -> list[str]:
        """Sign a document and send it to every agency in its ``To``."""
        return await self.submit(self.sign(package), package.recipient_codes)

    async def report_status(
        self,
        document: DocumentPackage,
        code: StatusCode,
        description: str | None = None,
        *,
        staff: StaffInfo | None = None,
        at: datetime | None = None,
    ) -> str:
        """Report a business status (01 to 06, 15, 16) of a received document to its sender."""
        response_for = ResponseFor(
            organ_id=document.sender.organ_id,
            code=f"{document.code.code_number}/{document.code.code_notation}",
            promulgation_date=document.promulgation.promulgation_date,
            document_id=document_id_of(document),
        )
        package = new_status(
            sender=self.organization,
            response_for=response_for,
            status_code=code,
            description=description,
            staff=staff,
            at=at,
        )
        (message_id,) = await self.submit(self.sign(package), [document.sender.organ_id])
        return message_id

    # -- receiving ------------------------------------------------------------

    async def _consume(
        self, queue_name: str, seen: _SeenIds, idle_timeout: float | None
    ) -> AsyncGenerator[AbstractIncomingMessage, None]:
        assert self._channel is not None and self._connection is not None, "connect() first"
        if self._channel.is_closed and not self._connection.is_closed:
            # The channel did not survive a broker restart (its restoration
            # can fail while the broker is still starting): open a new one.
            self._channel = await self._connection.channel()
            await self._channel.set_qos(prefetch_count=CLIENT_PREFETCH)
        # A passive declare (allowed to agency users): aio-pika restores the
        # consumers of declared queues after the broker restarts.
        queue = await self._channel.get_queue(queue_name, ensure=True)
        async with queue.iterator(timeout=idle_timeout) as messages:
            with contextlib.suppress(TimeoutError):
                async for message in messages:
                    message_id = message.message_id or _header(message, h.MESSAGE) or ""
                    if message_id in seen:
                        # A redelivery of something already handled.
                        await message.ack()
                        continue
                    yield message

    async def inbox(self, *, idle_timeout: float | None = None) -> AsyncIterator[InboxItem]:
        """Documents delivered to this agency, until ``idle_timeout`` seconds without one."""
        # aclosing: a caller that breaks out early stops the consumer now,
        # not whenever the garbage collector finalises the inner generator
        # (by then the connection may be closed, and the cancel fails).
        async with contextlib.aclosing(
            self._consume(inbox_queue(self.agency), self._inbox_seen, idle_timeout)
        ) as messages:
            async for message in messages:
                yield InboxItem(message, self._inbox_seen)

    async def statuses(self, *, idle_timeout: float | None = None) -> AsyncIterator[StatusItem]:
        """Receipts and statuses for what this agency sent."""
        async with contextlib.aclosing(
            self._consume(status_queue(self.agency), self._status_seen, idle_timeout)
        ) as messages:
            async for message in messages:
                yield StatusItem(message, self._status_seen)
