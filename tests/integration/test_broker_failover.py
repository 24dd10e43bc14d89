"""A connection to a URL naming several brokers uses the one that answers, and moves on when its
node goes (issue 16, point 1), against the real RabbitMQ.

The machine has one broker; the other "nodes" are a port nobody listens on,
or TCP relays of our own to the real broker that the test shuts. The real
three-node cluster is tests/integration/test_rabbitmq_cluster.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
import pytest

from exchange.broker.connection import connect, is_connected, is_refused_login
from tests.broker_fixtures import BrokerVhost

pytestmark = pytest.mark.services

# Until a moved connection is back: one reconnection interval (2 s) and more
# for a loaded machine.
MOVE_TIMEOUT_S = 30.0


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


def with_nodes(url: str, ports: list[int | None]) -> str:
    """``url`` naming several nodes on its host: its own port where ``None``, else ``port``."""
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    host = parts.hostname or "127.0.0.1"
    hosts = ",".join(hostport if port is None else f"{host}:{port}" for port in ports)
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{hosts}" if userinfo else hosts))


class Relay:
    """A TCP relay on loopback to the broker: a stand-in for a node that can be made to go."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.links |= {writer, up_writer}

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def shut(self) -> None:
        """Stop listening and cut every connection through it: the node is gone."""
        assert self.server is not None
        self.server.close()
        for writer in self.links:
            writer.transport.abort()
        await self.server.wait_closed()


@contextlib.asynccontextmanager
async def relays(url: str, count: int) -> AsyncIterator[list[Relay]]:
    parts = urlsplit(url)
    default = 5671 if parts.scheme == "amqps" else 5672
    made = [Relay(parts.hostname or "127.0.0.1", parts.port or default) for _ in range(count)]
    for relay in made:
        await relay.start()
    try:
        yield made
    finally:
        for relay in made:
            with contextlib.suppress(Exception):
                await relay.shut()


async def test_a_url_naming_several_nodes_connects_through_the_one_that_answers(
    broker_vhost: BrokerVhost,
) -> None:
    url = with_nodes(broker_vhost.amqp_url, [_unused_port(), None, _unused_port()])
    # The first node tried is random: every try must reach the one that answers.
    for _ in range(6):
        connection = await connect(url, name="lienthong-test")
        try:
            assert is_connected(connection)
            assert connection.url.port == (urlsplit(broker_vhost.amqp_url).port or 5671)
        finally:
            await connection.close()


async def test_a_refused_login_is_an_answer_not_a_node_to_skip(broker_vhost: BrokerVhost) -> None:
    # A user and password the broker does not know (a password login, even
    # where the exchange's own URL logs in with its certificate).
    parts = urlsplit(broker_vhost.amqp_url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "auth"]
    netloc = "no-such-user:wrong@" + parts.netloc.rpartition("@")[2]
    wrong = urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="/")))
    with pytest.raises(Exception) as caught:
        await connect(with_nodes(wrong, [None, None]), name="lienthong-test")
    assert is_refused_login(caught.value)


async def test_a_connection_moves_to_the_next_node_when_its_node_goes(
    broker_vhost: BrokerVhost,
) -> None:
    async with relays(broker_vhost.amqp_url, 2) as nodes:
        url = with_nodes(broker_vhost.amqp_url, [node.port for node in nodes])
        connection = await connect(url, name="lienthong-test")
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue("failover", durable=True)
            first = next(node for node in nodes if node.port == connection.url.port)
            other = next(node for node in nodes if node is not first)
            await first.shut()
            async with asyncio.timeout(MOVE_TIMEOUT_S):
                while not (is_connected(connection) and connection.url.port == other.port):
                    await asyncio.sleep(0.1)
                # The channel is restored on the other node, and works.
                await channel.ready()
                await channel.default_exchange.publish(
                    aio_pika.Message(b"after the move"), routing_key=queue.name
                )
                message = None
                while message is None:
                    message = await queue.get(fail=False, no_ack=True)
                    await asyncio.sleep(0.05)
            assert message.body == b"after the move"
        finally:
            await connection.close()
