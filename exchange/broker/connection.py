"""Connecting to RabbitMQ, declaring the topology, and publishing with confirms.

The only module that speaks aio-pika: the rest of the exchange connects with
:func:`connect`, declares a :class:`~exchange.broker.topology.Topology` with
:func:`declare`, and publishes through a :class:`ConfirmingPublisher`, whose
``publish`` returns only once the broker has taken responsibility for the
message. A consumer that must outlive broker restarts without aio-pika's
restoration runs on a channel from :func:`open_consumer_channel`, and
:func:`is_broker_away` tells a broker that is away from one that refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from yarl import URL

from exchange.broker.topology import DEFAULT_EXCHANGE, UNWANTED_BINDINGS, Topology
from exchange.settings import amqp_addresses, url_user

log = logging.getLogger(__name__)

# Seconds between two attempts of a robust connection to reconnect: short
# enough that a broker restart costs a few seconds of traffic, long enough not
# to flood the log of a broker that is down for longer.
RECONNECT_INTERVAL_S = 2.0

# Seconds a publish waits for the broker's confirm before it counts as failed
# (the caller retries: a lost confirm does not mean a lost message). A quorum
# queue confirms after a majority of its replicas wrote the message to disk,
# which takes milliseconds; 30 s covers a leader election.
CONFIRM_TIMEOUT_S = 30.0

# Seconds between two looks at a closed robust channel being reopened; it
# takes a round trip to the broker, about a millisecond on a LAN.
REOPEN_POLL_S = 0.01

# Content type of an edXML package on the wire.
XML_CONTENT_TYPE = "application/xml"

# RabbitMQ's text for an existing entity declared with other settings, e.g.
# "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in
# vhost 'v': received 'quorum' but current is 'classic'".
_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<argument>[^']*)' for (?P<kind>queue|exchange) "
    r"'(?P<name>[^']*)' in vhost '[^']*': received (?P<declared>.*?) "
    r"but current is (?P<current>.*)$"
)


def broker_user_of(amqp_url: str) -> str:
    """The broker user an AMQP URL logs in as."""
    return url_user(amqp_url)


class ClusterConnection(aio_pika.RobustConnection):
    """A robust connection to one node of a cluster that moves to the next when its node goes.

    aio-pika's robust connection reconnects to the one URL it was given;
    this one holds every node's URL and, each time its connection closes
    or an attempt fails, points at the next node before aio-pika's own
    reconnection loop tries again (every :data:`RECONNECT_INTERVAL_S`), so
    a node that is down costs one interval and the channels, consumers and
    declarations are restored on the node that answers. Any node serves
    every queue of a RabbitMQ cluster (it forwards to the queue's leader).
    """

    def __init__(self, addresses: Sequence[str], first: int, **kwargs: Any) -> None:
        """Connect to ``addresses[first]`` first; ``kwargs`` as aio-pika's robust connection."""
        self._addresses = tuple(URL(address) for address in addresses)
        self._current = first
        super().__init__(self._addresses[first], **kwargs)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # Called by aio-pika when an established connection closes and when an
        # attempt to connect fails: either way, the next attempt is elsewhere.
        if not self._close_called and len(self._addresses) > 1:
            gone = self._addresses[self._current]
            self._current = (self._current + 1) % len(self._addresses)
            self.url = self._addresses[self._current]
            if self.connection_attempt:  # it was connected: not the first attempts
                log.warning(
                    "RabbitMQ node %s:%s is away; reconnecting to node %s:%s",
                    gone.host,
                    gone.port,
                    self.url.host,
                    self.url.port,
                    extra={"service": "RabbitMQ"},
                )
        await super()._on_connection_close(closing)


async def connect(url: str, *, name: str = "lienthong") -> AbstractRobustConnection:
    """Open a robust connection: it reconnects and restores channels by itself.

    ``url`` names one broker or the nodes of a cluster
    (``amqps://user:pw@mq1:5671,mq2:5671,mq3:5671/vhost?...``, see
    :func:`exchange.settings.amqp_addresses`): the first node tried is picked
    at random, so that many processes spread over the nodes; the others are
    tried in turn until one answers, and the connection moves on to the next
    node when its own goes. A refused login is an answer, not an absence:
    raised at once. ``name`` is shown in the management UI's connection
    list, so an operator can tell workers from CLI sessions.
    """
    addresses = amqp_addresses(url)
    first = secrets.randbelow(len(addresses))
    failure: BaseException | None = None
    for attempt in range(len(addresses)):
        connection = ClusterConnection(
            addresses,
            (first + attempt) % len(addresses),
            reconnect_interval=RECONNECT_INTERVAL_S,
            client_properties={"connection_name": name},
        )
        try:
            await connection.connect()
        except Exception as error:
            with contextlib.suppress(Exception):
                await connection.close()
            if is_refused_login(error):
                raise
            failure = error
            continue
        return connection
    assert failure is not None  # one attempt per address, at least one address
    raise failure


# The client libraries' loggers that report a failed connection attempt
# themselves (aiormq at ERROR, aio-pika as "closed, reconnecting").
_CONNECTING_LOGGERS = ("aiormq.connection", "aio_pika.robust_connection")


async def connect_quietly(url: str, *, name: str = "lienthong") -> AbstractRobustConnection:
    """:func:`connect`, for a caller that reports a failed attempt itself: raised, not logged.

    A worker waiting for the broker at its start logs each attempt once, in
    its own words; the client libraries would add two lines of their own.
    Once connected, their logging is their own again (a lost connection later is
    theirs to report).
    """
    with _silenced(_CONNECTING_LOGGERS):
        return await connect(url, name=name)


@contextlib.contextmanager
def _silenced(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


async def open_consumer_channel(
    connection: AbstractConnection, *, prefetch: int
) -> AbstractChannel:
    """Open a channel for one owner's consumers, which aio-pika will not restore.

    A robust channel re-creates, after a reconnection, every consumer it
    started and did not see cancelled, and a queue iterator closed while the
    connection is down cannot cancel its own: the restored consumer then
    feeds an iterator nobody reads, and the broker hands it up to
    ``prefetch`` messages that stay unacknowledged until the connection
    closes. A consumer on this channel ends with the connection instead; its
    owner subscribes again once the connection is back (see
    :meth:`exchange.client.AgencyClient.inbox`).
    """
    channel = aio_pika.Channel(connection, publisher_confirms=False)
    await channel.initialize()
    try:
        await channel.set_qos(prefetch_count=prefetch)
    except BaseException:
        with contextlib.suppress(Exception):
            await channel.close()
        raise
    return channel


async def settle(message: AbstractIncomingMessage, *, ack: bool, requeue: bool = True) -> None:
    """Ack ``message`` (or nack it, back to its queue with ``requeue``) on its channel.

    Waits as long as the channel lives, and no longer: aiormq queues
    outgoing frames in a small buffer that nobody empties once the
    connection is lost, so an ack sent as the broker goes away would wait
    for ever (and a worker with it, past its SIGTERM). Raises
    ``ChannelInvalidStateError`` when the channel closes first; the broker
    then puts the message back itself.
    """
    channel = message.channel  # aio-pika raises ChannelInvalidStateError if closed
    settling = asyncio.ensure_future(message.ack() if ack else message.nack(requeue=requeue))
    closing = channel.closing
    try:
        await asyncio.wait({settling, closing}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closing.cancel()  # only this observer of the channel's closing
        if not settling.done():
            settling.cancel()
            await asyncio.gather(settling, return_exceptions=True)
    if settling.cancelled():
        raise aiormq.exceptions.ChannelInvalidStateError(
            f"channel {channel.number} closed before message {message.message_id} was settled"
        )
    settling.result()


def is_connected(connection: AbstractConnection) -> bool:
    """Whether ``connection`` is up right now (a robust one may be reconnecting).

    A channel opened on a connection that is going away can wait for it
    indefinitely, so whoever reopens after a broker restart looks first.
    """
    transport = connection.transport
    return (
        connection.connected.is_set()
        and transport is not None
        and not transport.connection.is_closed
    )


def is_broker_away(error: BaseException) -> bool:
    """Whether ``error`` says the connection is down, rather than a refusal by the broker.

    While a broker restarts, opening a channel or declaring fails with a
    closed connection, a missing transport or a timeout; the robust
    connection comes back by itself, so trying again later is right. A
    channel the broker closed on purpose (no such queue, no permission) is
    an answer, not an absence. A group of errors (aio-pika putting back a
    closed consumer's messages one by one) is one when all its members are.
    """
    if isinstance(error, BaseExceptionGroup):
        return all(is_broker_away(member) for member in error.exceptions)
    if isinstance(error, aiormq.exceptions.ChannelClosed):
        return False
    return isinstance(error, aiormq.exceptions.AMQPError | ConnectionError | OSError | RuntimeError)


# Every error of the AMQP connection and channels (the library's base class),
# for the table of transient failures.
BrokerError = aiormq.exceptions.AMQPError


def is_refused_login(error: BaseException) -> bool:
    """Whether the broker refused the user or its password (ACCESS_REFUSED at connection)."""
    return isinstance(
        error,
        aiormq.exceptions.AuthenticationError | aiormq.exceptions.ProbableAuthenticationError,
    )


async def has_consumer(channel: AbstractChannel, tag: str) -> bool:
    """Whether the consumer ``tag`` is registered on ``channel``, open, right now.

    Read from the channel itself, not from what was asked for: the
    library's channel drops a consumer's tag when the broker cancels it
    (its queue deleted or lost), and a reconnection may not restore it.
    """
    if channel.is_closed:
        return False
    try:
        underlay = await channel.get_underlay_channel()
    except aiormq.exceptions.ChannelInvalidStateError:
        return False
    consumers = underlay.consumers if isinstance(underlay, aiormq.Channel) else {}
    return not underlay.is_closed and tag in consumers


async def queue_counts(connection: AbstractConnection, name: str) -> tuple[int, int] | None:
    """``(ready messages, consumers)`` of the queue ``name`` by a passive declare, exact and
    current; ``None`` when there is no such queue. On a channel of its own, closed after
    (the broker closes it anyway when the queue is missing)."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None
    finally:
        if not channel.is_closed:
            await channel.close()
    result = declared.declaration_result
    return int(result.message_count or 0), int(result.consumer_count or 0)


def broker_address(url: str) -> str:
    """Where ``url`` points, for a log line: ``host:port vhost V`` (every node of a
    cluster, comma-separated), never the password."""
    vhost = unquote(urlsplit(url).path[1:]) or "/"
    nodes = [urlsplit(address) for address in amqp_addresses(url)]
    hosts = ",".join(f"{_bracketed(node.hostname)}:{node.port or 5672}" for node in nodes)
    return f"{hosts} vhost {vhost}"


def _bracketed(host: str | None) -> str:
    """An IPv6 address in brackets (``[fd00::3]``), so its port reads apart from it."""
    host = host or "localhost"
    return f"[{host}]" if ":" in host else host


def is_broker_unreachable(error: BaseException) -> bool:
    """Whether connecting failed because the broker is not there yet, not because it refused.

    Not there yet: nothing listening, a connection cut during the
    handshake of a broker still starting, or a vhost not created yet. A
    refused login is an answer: trying again would not change it.
    """
    if is_refused_login(error):
        return False
    # aiormq's connection errors are OSErrors.
    return isinstance(error, OSError | TimeoutError)


# -- declaring ------------------------------------------------------------------


class TopologyMismatchError(RuntimeError):
    """An exchange or queue already exists on the broker with other settings."""

    def __init__(
        self, kind: str, name: str, argument: str, declared: str, current: str, reply: str
    ) -> None:
        self.kind = kind
        self.name = name
        self.argument = argument
        self.declared = declared
        self.current = current
        super().__init__(
            f"{kind} {name} already exists on the broker with {argument} = {current}, "
            f"but the topology declares {argument} = {declared}. RabbitMQ cannot change "
            f"the settings of an existing {kind}: drain it and delete it (or move its "
            f"messages elsewhere), then declare again. Broker said: {reply}"
        )


def _mismatch(
    kind: str, name: str, error: aiormq.exceptions.ChannelPreconditionFailed
) -> Exception:
    """Turn RabbitMQ's precondition failure into an error naming the difference."""
    reply = str(error.args[0]) if error.args else str(error)
    match = _INEQUIVALENT.search(reply)
    if match is None:
        return TopologyMismatchError(kind, name, "its settings", "?", "?", reply)
    return TopologyMismatchError(
        match["kind"],
        match["name"],
        match["argument"],
        _readable(match["declared"]),
        _readable(match["current"]),
        reply,
    )


# How RabbitMQ writes an argument's value in that text: "the value 'quorum' of
# type 'longstr'", "the value 5 of type 'signedint'", or "none" when unset.
_VALUE = re.compile(r"the value (?P<value>.*) of type '[^']*'")


def _readable(text: str) -> str:
    """``quorum``, ``5`` or ``(not set)`` from RabbitMQ's wording of a value."""
    text = text.strip()
    if text == "none":
        return "(not set)"
    match = _VALUE.fullmatch(text)
    return match["value"].strip("'") if match else text


async def declare(channel: AbstractChannel, topology: Topology) -> None:
    """Declare every exchange, queue and binding of ``topology``; safe to repeat.

    Raises :class:`TopologyMismatchError` when an exchange or queue exists with
    other settings (the broker closes the channel in that case; a robust
    channel reopens by itself).
    """
    for exchange in topology.exchanges:
        try:
            await channel.declare_exchange(
                exchange.name,
                exchange.type.value,
                durable=exchange.durable,
                internal=exchange.internal,
                arguments=exchange.arguments() or None,
            )
        except aiormq.exceptions.ChannelPreconditionFailed as error:
            raise _mismatch("exchange", exchange.name, error) from error
    for queue in topology.queues:
        try:
            await channel.declare_queue(
                queue.name, durable=queue.durable, arguments=queue.arguments()
            )
        except aiormq.exceptions.ChannelPreconditionFailed as error:
            raise _mismatch("queue", queue.name, error) from error
    for binding in topology.bindings:
        if binding.destination_type == "exchange":
            target = await channel.get_exchange(binding.destination, ensure=False)
            await target.bind(binding.source, routing_key=binding.routing_key)
        else:
            destination = await channel.get_queue(binding.destination, ensure=False)
            await destination.bind(binding.source, routing_key=binding.routing_key)
    names = {queue.name for queue in topology.queues}
    for binding in UNWANTED_BINDINGS:
        if binding.destination in names:
            bound = await channel.get_queue(binding.destination, ensure=False)
            await bound.unbind(binding.source, routing_key=binding.routing_key)


# -- publishing -------------------------------------------------------------------


class PublishError(RuntimeError):
    """The broker did not take responsibility for a message; the sender must retry."""

    def __init__(self, exchange: str, routing_key: str, message_id: str, why: str) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.message_id = message_id
        super().__init__(
            f"message {message_id} to exchange {exchange or '(default)'!r} with key "
            f"{routing_key!r} was not accepted: {why}"
        )


class PublishNackedError(PublishError):
    """The broker answered the publish with a negative confirm (nack).

    A quorum queue nacks when it cannot reach a majority of its replicas, or
    when it is full with overflow ``reject-publish``; retrying later is right.
    """


class QueueFullError(PublishNackedError):
    """A publish to an agency's inbox or status queue was nacked: the queue is full.

    The agency queues are bounded with overflow ``reject-publish``
    (:func:`exchange.broker.topology.queue_policies`), so on one node a nack
    there means the agency has not read its queue; on a cluster it may also
    be a queue that lost its majority. Either way: the message waits.
    """


class UnroutableError(PublishError):
    """A mandatory message matched no queue and the broker returned it."""


class PublishRefusedError(PublishError):
    """The broker refused the publish and closed the channel.

    For example a ``user_id`` that is not the connection's user, or an
    exchange the user may not write to. Retrying the same message cannot help.
    """


# How long a closed robust channel may take to come back by itself before the
# publisher opens a new one on the (reconnected) connection.
REOPEN_GIVE_UP_S = 5.0

# How long a channel the publisher gave up after a nack stays open, so that
# the publishes still in flight on it get their confirm or nack (a nack for
# a lost leader comes at once); those still waiting then fail and are retried.
NACKED_CHANNEL_CLOSE_S = 5.0


class ConfirmingPublisher:
    """Publish persistent messages and wait for the broker's confirms.

    Many ``publish`` calls may be awaited at once (``asyncio.gather``): their
    confirms are pipelined on one channel, which is much faster than waiting
    for each in turn.
    """

    def __init__(
        self, channel: AbstractChannel, connection: AbstractConnection | None = None
    ) -> None:
        """Wrap a channel opened with ``publisher_confirms=True, on_return_raises=True``."""
        self._channel = channel
        self._connection = connection
        self._exchanges: dict[str, AbstractExchange] = {}
        # aiormq matches a returned message to its publish by message_id, so two
        # in-flight publishes must never share one: the second waits.
        self._in_flight: dict[str, asyncio.Future[None]] = {}
        # A nack was received on the channel: the next publish opens another.
        self._nacked = False
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, connection: AbstractConnection) -> ConfirmingPublisher:
        """Open a confirming channel on ``connection``."""
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(channel, connection)

    @property
    def channel(self) -> AbstractChannel:
        """The underlying channel (for ``close`` or declaring)."""
        return self._channel

    async def close(self) -> None:
        """Close the channel (the connection stays open)."""
        for closing in list(self._closing):
            closing.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self._channel.close()

    async def _exchange(self, name: str) -> AbstractExchange:
        exchange = self._exchanges.get(name)
        if exchange is None:
            # Not declared here: the topology is declared once by `lienthong
            # init`, and an agency may not even have the right to declare.
            exchange = await self._channel.get_exchange(name, ensure=False)
            self._exchanges[name] = exchange
        return exchange

    async def _ready(self) -> None:
        """Wait for a robust channel the broker closed (say after a refused
        publish) to be reopened, instead of failing the next publish too; open
        another after a nack."""
        connection = self._connection
        if self._nacked and connection is not None and is_connected(connection):
            await self._renew(connection)
        if not isinstance(self._channel, AbstractRobustChannel):
            return
        # The robust channel learns of the close a moment after the failed
        # publish does, so `ready()` alone could return before the reopening.
        waited = 0.0
        while self._channel.is_closed:
            connection = self._connection
            if waited >= REOPEN_GIVE_UP_S and connection is not None and not connection.is_closed:
                # The channel's own restoration failed (it can, while the
                # broker is still starting after a restart): the connection
                # is back, so open a new channel on it.
                self._channel = await connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                self._exchanges.clear()
                break
            await asyncio.sleep(REOPEN_POLL_S)
            waited += REOPEN_POLL_S
        if isinstance(self._channel, AbstractRobustChannel):
            await self._channel.ready()

    async def _renew(self, connection: AbstractConnection) -> None:
        """Publish on a new channel from now on; close the nacked one a little later.

        A RabbitMQ channel remembers, for each quorum queue it published to,
        which node leads it. When that node fails, the queue elects another
        leader within a second, but a channel of RabbitMQ 3.10 that already
        published to the queue goes on sending to the lost leader, and every
        publish on it is nacked until that node is back (measured on the
        three-node cluster test, tests/integration/test_rabbitmq_cluster.py).
        A new channel asks for the current leader. A nack for another reason
        (a queue full with ``reject-publish``) loses nothing by it.
        """
        self._nacked = False
        nacked = self._channel
        self._channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        self._exchanges.clear()
        closing = asyncio.ensure_future(self._close_later(nacked))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_later(channel: AbstractChannel) -> None:
        await asyncio.sleep(NACKED_CHANNEL_CLOSE_S)
        with contextlib.suppress(Exception):
            await channel.close()

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        content_type: str = XML_CONTENT_TYPE,
        mandatory: bool = True,
        user_id: str | None = None,
        correlation_id: str | None = None,
        timeout: float = CONFIRM_TIMEOUT_S,
    ) -> str:
        """Publish ``body`` persistently; return its message id once the broker confirmed.

        ``mandatory`` makes an unroutable message an :class:`UnroutableError`
        instead of a silent loss. ``user_id``, when set, must be the
        connection's user name (RabbitMQ checks it). Raises
        :class:`PublishNackedError`, :class:`UnroutableError`,
        :class:`PublishRefusedError`, or :class:`TimeoutError` when no confirm
        came in ``timeout`` seconds.
        """
        message_id = message_id or str(uuid.uuid4())
        while (earlier := self._in_flight.get(message_id)) is not None:
            await asyncio.wait([earlier])
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight[message_id] = done
        message = aio_pika.Message(
            body,
            message_id=message_id,
            headers=dict(headers or {}),
            content_type=content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            user_id=user_id,
            correlation_id=correlation_id,
            timestamp=datetime.now(UTC),
        )
        try:
            async with asyncio.timeout(timeout):
                await self._ready()
                await (await self._exchange(exchange)).publish(
                    message, routing_key, mandatory=mandatory
                )
        except aiormq.exceptions.PublishError as error:
            raise UnroutableError(
                exchange, routing_key, message_id, "no queue is bound for this routing key"
            ) from error
        except aiormq.exceptions.DeliveryError as error:
            self._nacked = True
            raise PublishNackedError(
                exchange, routing_key, message_id, "the broker nacked it (try again later)"
            ) from error
        except aiormq.exceptions.ChannelClosed as error:
            raise PublishRefusedError(
                exchange, routing_key, message_id, _reply_text(error)
            ) from error
        except aiormq.exceptions.ChannelInvalidStateError as error:
            raise PublishError(
                exchange, routing_key, message_id, "the channel closed (try again)"
            ) from error
        finally:
            del self._in_flight[message_id]
            done.set_result(None)
        return message_id


def _reply_text(error: aiormq.exceptions.ChannelClosed) -> str:
    """The broker's reason for closing a channel, e.g. a user_id mismatch."""
    # aiormq passes (reply_text,) for known codes and (code, reply_text) otherwise.
    texts = [arg for arg in error.args if isinstance(arg, str)]
    return f"the broker closed the channel: {texts[0] if texts else error!r}"


__all__ = [
    "CONFIRM_TIMEOUT_S",
    "DEFAULT_EXCHANGE",
    "XML_CONTENT_TYPE",
    "ClusterConnection",
    "ConfirmingPublisher",
    "PublishError",
    "PublishNackedError",
    "PublishRefusedError",
    "QueueFullError",
    "TopologyMismatchError",
    "UnroutableError",
    "connect",
    "declare",
    "is_broker_away",
    "is_connected",
    "open_consumer_channel",
    "settle",
]
