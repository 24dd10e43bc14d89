"""The Python client for agency systems (QLVB): send, receive, report statuses.

An agency connects with its own broker user (RabbitMQ checks the
``user_id`` of everything it publishes) and signs with its own key. Items
from the inbox and the status queue are acknowledged only when the caller
says it has handled them (``await item.ack()``), so nothing is lost if the
agency's system stops half-way; items the exchange delivers again after a
failure carry the same message id and are dropped here, so the application
sees each one once.

After a broker restart the client carries on by itself: the connection
comes back, the inbox and status streams subscribe again, and an item
handed over before the restart can still be acknowledged (its ack is lost
with the connection, the redelivery is dropped).

Any AMQP 0-9-1 client can do the same with the names in docs/architecture.md; this
module only makes it convenient.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from types import TracebackType

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueueIterator,
    AbstractRobustConnection,
)
from aio_pika.exceptions import ChannelInvalidStateError

from exchange.agency import AgencyCode
from exchange.broker import headers as header
from exchange.broker.connection import (
    XML_CONTENT_TYPE,
    ConfirmingPublisher,
    broker_user_of,
    connect,
    is_broker_away,
    is_connected,
    open_consumer_channel,
    settle,
)
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
from exchange.pki import Credential, TrustStore
from exchange.receipts import RECEIPT_CONTENT_TYPE, Receipt, VerifiedReceipt, verify_receipt
from exchange.status import StatusCode

# Message ids of items already handled, remembered to drop redeliveries.
# A redelivery follows its original within the broker's redelivery window
# (seconds to minutes), so the most recent ids are the ones that matter.
SEEN_IDS_KEPT = 100_000
# How many unacknowledged items the broker hands an agency at once.
CLIENT_PREFETCH = 20
# While the broker is away (a restart takes seconds), a stream tries to
# subscribe again this often; the connection itself retries every
# RECONNECT_INTERVAL_S. One attempt (open a channel, declare, consume) is a
# few round trips; a connection that is going away can leave it hanging,
# hence its own limit.
RESUBSCRIBE_PAUSE_S = 0.5
SUBSCRIBE_ATTEMPT_TIMEOUT_S = 10.0

log = logging.getLogger(__name__)


def _channel_gone(message: AbstractIncomingMessage) -> bool:
    """Whether the channel ``message`` came on is closed (its ack can no longer be sent)."""
    try:
        return message.channel.is_closed
    except ChannelInvalidStateError:  # what aio-pika says of a closed channel
        return True


async def _settle(message: AbstractIncomingMessage, *, ack: bool) -> None:
    """Ack (or requeue) ``message``; nothing to do when its channel is gone.

    The broker puts back every unacknowledged message of a closed channel,
    which is what a nack asks for, and the redelivery of an acked one is
    dropped by the seen ids: failing the caller would only stop an
    application that did nothing wrong.
    """
    try:
        await settle(message, ack=ack)
    except Exception as error:
        if not (_channel_gone(message) and is_broker_away(error)):
            raise
        log.info("message %s: settled by its lost channel (%s)", message.message_id, error)


async def _stop_consuming(messages: AbstractQueueIterator) -> None:
    """Cancel a queue iterator's consumer; nothing to do when its channel is gone.

    A consumer dies with its channel, and the broker puts back the messages
    it held.
    """
    try:
        # Bounded: a cancel sent as the connection goes away can wait for ever
        # (see exchange.broker.connection.settle).
        async with asyncio.timeout(SUBSCRIBE_ATTEMPT_TIMEOUT_S):
            await messages.close()
    except Exception as error:
        if not is_broker_away(error):
            raise
        log.info("consumer of %r stopped with its channel (%s)", messages, error)


@dataclass
class Item:
    """One message from an agency's queue; ``ack`` it once handled."""

    message: AbstractIncomingMessage
    _seen: _SeenIds = field(repr=False)

    @property
    def message_id(self) -> str:
        """Stable across redeliveries: the exchange's id of the message."""
        return self.message.message_id or header.text(self.message.headers, header.MESSAGE) or ""

    @property
    def body(self) -> bytes:
        """The bytes as the exchange delivered them (the package, unchanged)."""
        return self.message.body

    @property
    def sender(self) -> str | None:
        """The authenticated sender's agency code."""
        return header.text(self.message.headers, header.SENDER)

    @property
    def document_id(self) -> str | None:
        """The DocumentId the exchange recorded for this item."""
        return header.text(self.message.headers, header.DOCUMENT_ID)

    async def ack(self) -> None:
        """Tell the exchange this item is handled; it will not come again."""
        # Remembered first: the application has handled the item even when
        # the ack is lost with the connection (a broker restart), and the
        # redelivery that follows must be dropped, not handed over again.
        self._seen.add(self.message_id)
        await _settle(self.message, ack=True)

    async def reject(self) -> None:
        """Hand the item back to the queue, to be received again later."""
        await _settle(self.message, ack=False)


@dataclass
class InboxItem(Item):
    """A document delivered to this agency."""

    @cached_property
    def package(self) -> DocumentPackage:
        """The document, read from the delivered bytes."""
        return read_document(self.body)


@dataclass
class StatusItem(Item):
    """A receipt from the exchange, or a business status from a recipient.

    ``receipt_trust`` (the client's): the CA(s) the exchange's receipt
    certificate chains to; with it, :attr:`receipt` is only ever a receipt
    whose signature verified.
    """

    receipt_trust: TrustStore | None = field(default=None, repr=False)

    @property
    def is_receipt(self) -> bool:
        """Whether this is the exchange's receipt (else an agency's status package)."""
        return self.message.content_type == RECEIPT_CONTENT_TYPE

    @cached_property
    def receipt(self) -> Receipt:
        """The receipt (only when :attr:`is_receipt`), verified when the client has a trust anchor.

        With ``receipt_trust``, a receipt that does not verify raises
        :class:`~exchange.receipts.ReceiptSignatureError` (the item stays
        unacknowledged until the caller decides).
        """
        if self.receipt_trust is not None:
            return self.verify_receipt(self.receipt_trust).receipt
        return Receipt.model_validate_json(self.body)

    def verify_receipt(self, trust: TrustStore) -> VerifiedReceipt:
        """Verify the receipt's signature against ``trust``; raises ReceiptSignatureError."""
        return verify_receipt(self.body, trust)

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


def status_report(
    document: DocumentPackage,
    reporter: Organization,
    code: StatusCode,
    description: str | None = None,
    *,
    staff: StaffInfo | None = None,
    at: datetime | None = None,
) -> StatusPackage:
    """The unsigned status package ``reporter`` sends back about a received ``document``."""
    response_for = ResponseFor(
        organ_id=document.sender.organ_id,
        code=f"{document.code.code_number}/{document.code.code_notation}",
        promulgation_date=document.promulgation.promulgation_date,
        document_id=document_id_of(document),
    )
    return new_status(
        sender=reporter,
        response_for=response_for,
        status_code=code,
        description=description,
        staff=staff,
        at=at,
    )


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
        receipt_trust: TrustStore | None = None,
    ) -> None:
        """A client for ``agency``; nothing is connected until ``connect()``.

        With ``receipt_trust`` (the CA of the exchange's receipt certificate),
        every receipt read from :meth:`statuses` is verified (:class:`StatusItem`).
        """
        self.agency = agency if isinstance(agency, AgencyCode) else AgencyCode.parse(agency)
        self.amqp_url = amqp_url
        self.credential = credential
        self.organization = organization or Organization(organ_id=self.agency)
        self.receipt_trust = receipt_trust
        self.broker_user = broker_user_of(amqp_url)
        self._connection: AbstractRobustConnection | None = None
        self._publisher: ConfirmingPublisher | None = None
        # The channel the inbox and status consumers are on: the client's own,
        # opened again after a broker restart (see _subscribe).
        self._channel: AbstractChannel | None = None
        self._channel_opening = asyncio.Lock()
        self._inbox_seen = _SeenIds()
        self._status_seen = _SeenIds()

    async def connect(self) -> None:
        """Open the connection and the channels."""
        self._connection = await connect(self.amqp_url, name=f"lienthong-client-{self.agency}")
        self._publisher = await ConfirmingPublisher.open(self._connection)
        self._channel = await open_consumer_channel(self._connection, prefetch=CLIENT_PREFETCH)

    async def close(self) -> None:
        """Close everything (unacknowledged items go back to their queues)."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
            self._channel = None

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
                    headers={
                        header.PUBLISHED_AT: datetime.now(UTC).isoformat(),
                        header.LANE: str(self.agency),
                    },
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
        package = status_report(document, self.organization, code, description, staff=staff, at=at)
        (message_id,) = await self.submit(self.sign(package), [document.sender.organ_id])
        return message_id

    # -- receiving ------------------------------------------------------------

    async def _consumer_channel(self) -> AbstractChannel:
        """The consumers' channel, opened again if a broker restart closed it."""
        assert self._connection is not None, "connect() first"
        # One opening at a time: the inbox and the status stream may both
        # find the channel closed, and must share the one new channel.
        async with self._channel_opening:
            if self._channel is None or self._channel.is_closed:
                self._channel = await open_consumer_channel(
                    self._connection, prefetch=CLIENT_PREFETCH
                )
            return self._channel

    async def _subscribe(
        self, queue_name: str, idle_timeout: float | None
    ) -> AbstractQueueIterator | None:
        """A consumer of ``queue_name`` on an open channel, waiting for the broker if away.

        Returns ``None`` when the broker is still away after ``idle_timeout``
        seconds (``None`` waits as long as it takes).
        """
        loop = asyncio.get_running_loop()
        deadline = None if idle_timeout is None else loop.time() + idle_timeout
        while True:
            if self._connection is None or self._connection.is_closed:
                raise RuntimeError(f"the client of {self.agency} is closed")
            messages: AbstractQueueIterator | None = None
            try:
                if not is_connected(self._connection):
                    raise ConnectionError("the broker connection is not back yet")
                async with asyncio.timeout(SUBSCRIBE_ATTEMPT_TIMEOUT_S):
                    channel = await self._consumer_channel()
                    # A passive declare (allowed to agency users): a missing
                    # queue is an error, not something to wait for.
                    queue = await channel.get_queue(queue_name, ensure=True)
                    messages = queue.iterator(timeout=idle_timeout)
                    await messages.consume()
                    return messages
            except Exception as error:
                if messages is not None:
                    await _stop_consuming(messages)
                if not is_broker_away(error):
                    raise
                if deadline is not None and loop.time() >= deadline:
                    log.warning(
                        "%s: %s not read: the broker is still away after %.1f s (%s)",
                        self.agency,
                        queue_name,
                        idle_timeout,
                        error,
                    )
                    return None
                log.info("%s: cannot subscribe to %s yet (%s)", self.agency, queue_name, error)
            await asyncio.sleep(RESUBSCRIBE_PAUSE_S)

    async def _consume(
        self, queue_name: str, seen: _SeenIds, idle_timeout: float | None
    ) -> AsyncGenerator[AbstractIncomingMessage, None]:
        """Messages of ``queue_name`` (redeliveries of handled ones dropped) until idle.

        The consumer is on the client's own channel, which aio-pika does not
        restore: when a broker restart closes it, the iteration ends without
        a timeout, and the loop subscribes again on a new channel once the
        connection is back. Waiting for the broker counts as idle time.
        """
        assert self._connection is not None, "connect() first"
        while True:
            messages = await self._subscribe(queue_name, idle_timeout)
            if messages is None:
                return
            try:
                async for message in messages:
                    message_id = (
                        message.message_id or header.text(message.headers, header.MESSAGE) or ""
                    )
                    if message_id in seen:
                        # A redelivery of something already handled.
                        await _settle(message, ack=True)
                        continue
                    yield message
            except TimeoutError:
                return
            except Exception as error:
                # The iterator's own cancel, at the idle timeout, can meet the
                # connection going away: that is the channel lost, as below.
                if not is_broker_away(error):
                    raise
                log.info("%s: %s lost with the connection (%s)", self.agency, queue_name, error)
            finally:
                await _stop_consuming(messages)
            log.info("%s: the channel of %s closed; subscribing again", self.agency, queue_name)

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
                yield StatusItem(message, self._status_seen, self.receipt_trust)
