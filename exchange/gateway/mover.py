"""Moving agencies' queues into the gateway's PostgreSQL mailbox.

For every agency some enabled system acts for, the mover consumes
``lienthong.inbox.<code>`` (documents, listed with ``messagetype=edoc``) and
``lienthong.status.<code>`` (receipts and statuses, ``messagetype=status``)
and inserts each message into ``gateway_mailbox``, acknowledging it to
RabbitMQ only once the insert is committed. A message is identified by its
queue and AMQP message id: a redelivery, or the same message taken by a
second gateway process consuming the same queue, inserts nothing. A system
that polls once a day, or is offline for a week, finds everything there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from dataclasses import dataclass

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from exchange.agency import AgencyCode
from exchange.broker import headers as header
from exchange.broker.connection import settle
from exchange.broker.topology import inbox_queue, status_queue
from exchange.gateway.submit import EDOC, STATUS
from exchange.store import gateway as store
from exchange.store.db import Pool

log = logging.getLogger("exchange.gateway.mover")

# How often the mover looks for agencies newly served (a system added or
# enabled) or no longer served: a new system's mail starts moving within it.
REFRESH_S = 10.0
# Messages each agency's channel holds unacknowledged: inserts are one
# statement each, a few in flight keep the database busy without hoarding.
PREFETCH = 16
# After a failed insert (the database away), the message goes back to its
# queue this much later, not at once in a tight loop.
BACKOFF_S = 1.0


def new_doc_id() -> str:
    """A docId as the axis hands them out: 24 hex digits."""
    return uuid.uuid4().hex[:24]


@dataclass
class _Consumer:
    channel: AbstractChannel
    tags: list[tuple[str, str]]  # (queue, consumer tag)


class MailboxMover:
    """Consumes the served agencies' queues into the mailbox, until stopped."""

    def __init__(
        self, pool: Pool, connection: AbstractRobustConnection, *, refresh_s: float = REFRESH_S
    ) -> None:
        """A mover over an open broker connection and database pool."""
        self._pool = pool
        self._connection = connection
        self._refresh_s = refresh_s
        self._consumers: dict[AgencyCode, _Consumer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self.moved = 0

    @property
    def agencies(self) -> frozenset[AgencyCode]:
        """The agencies whose queues are being consumed."""
        return frozenset(self._consumers)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the consumers in step with the systems until ``stop``; then finish in-flight."""
        try:
            while not stop.is_set():
                try:
                    await self.sync()
                except Exception as error:
                    log.warning("mailbox mover cannot refresh its agencies: %s", error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._refresh_s)
        finally:
            await self.close()

    async def sync(self) -> None:
        """Start consuming for agencies newly served, stop for those no longer served."""
        async with self._lock:
            async with self._pool.acquire() as conn:
                served = set(await store.served_agencies(conn))
            for agency in sorted(served - set(self._consumers)):
                try:
                    self._consumers[agency] = await self._start(agency)
                except Exception as error:
                    log.warning(
                        "cannot consume the queues of %s: %s",
                        agency,
                        error,
                        extra={"agency": str(agency)},
                    )
            for agency in set(self._consumers) - served:
                await self._stop(self._consumers.pop(agency))

    async def close(self) -> None:
        """Cancel every consumer and wait for the messages being inserted."""
        async with self._lock:
            for consumer in self._consumers.values():
                await self._stop(consumer, wait=False)
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            for consumer in self._consumers.values():
                with contextlib.suppress(Exception):
                    await consumer.channel.close()
            self._consumers.clear()

    async def _start(self, agency: AgencyCode) -> _Consumer:
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        consumer = _Consumer(channel, [])
        try:
            for queue_name, message_type in (
                (inbox_queue(agency), EDOC),
                (status_queue(agency), STATUS),
            ):
                # Declared passively: a robust channel restores the consumers
                # of queues it declared after a reconnection.
                queue = await channel.get_queue(queue_name, ensure=True)

                async def on_message(
                    message: AbstractIncomingMessage,
                    queue_name: str = queue_name,
                    message_type: str = message_type,
                ) -> None:
                    task = asyncio.create_task(
                        self._move(agency, queue_name, message_type, message)
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

                tag = await queue.consume(on_message)
                consumer.tags.append((queue_name, tag))
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        log.info("moving the queues of %s into the mailbox", agency, extra={"agency": str(agency)})
        return consumer

    async def _stop(self, consumer: _Consumer, *, wait: bool = True) -> None:
        for queue_name, tag in consumer.tags:
            with contextlib.suppress(Exception):
                queue = await consumer.channel.get_queue(queue_name, ensure=False)
                await queue.cancel(tag)
        consumer.tags.clear()
        if wait:
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            with contextlib.suppress(Exception):
                await consumer.channel.close()

    async def _move(
        self,
        agency: AgencyCode,
        queue_name: str,
        message_type: str,
        message: AbstractIncomingMessage,
    ) -> None:
        headers = message.headers or {}
        kind = header.text(headers, header.KIND) or (
            "document" if message_type == EDOC else "status"
        )
        sender, recipient = (
            header.text(headers, header.SENDER),
            header.text(headers, header.RECIPIENT),
        )
        if kind == "receipt":
            # A receipt is the exchange's word about a message this agency
            # sent to `recipient`: listed as coming from there, to this agency.
            sender, recipient = recipient, str(agency)
        mail = store.NewMail(
            doc_id=new_doc_id(),
            queue=queue_name,
            message_id=message.message_id or "sha256:" + hashlib.sha256(message.body).hexdigest(),
            agency=agency,
            message_type=message_type,
            kind=kind,
            sender=sender,
            recipient=recipient,
            document_id=header.text(headers, header.DOCUMENT_ID),
            content_type=message.content_type,
            body=message.body,
        )
        try:
            async with self._pool.acquire() as conn:
                await store.add_mail(conn, mail)
        except Exception as error:
            log.warning(
                "cannot put message %s of %s into the mailbox: %s; it goes back to its queue",
                mail.message_id,
                queue_name,
                error,
                extra={"agency": str(agency), "message_id": mail.message_id},
            )
            await asyncio.sleep(BACKOFF_S)
            with contextlib.suppress(Exception):
                await settle(message, ack=False)
            return
        with contextlib.suppress(Exception):
            # A channel lost before the ack: the broker redelivers, the insert is a no-op.
            await settle(message, ack=True)
        self.moved += 1
