"""The topology on the real RabbitMQ: declaring, routing, retry, parking, publishing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection

from exchange.agency import AgencyCode
from exchange.broker import headers as header
from exchange.broker.admin import BrokerAdmin, QueueStats
from exchange.broker.connection import (
    ConfirmingPublisher,
    TopologyMismatchError,
    UnroutableError,
    connect,
    declare,
)
from exchange.broker.topology import (
    DELIVER_EXCHANGE,
    INTAKE_EXCHANGE,
    LANE_QUEUES,
    LANES,
    PARKED_QUEUE,
    RETRY_1S,
    RETRY_EXCHANGE,
    SUBMIT_EXCHANGE,
    WORK_DELIVERY_LIMIT,
    WORK_QUEUE,
    Topology,
    agency_topology,
    core_topology,
    inbox_queue,
    to_definitions,
)
from tests.broker_fixtures import BrokerVhost

pytestmark = pytest.mark.services

COMMUNE = AgencyCode.parse("000.46.24.H44")  # a commune of Phú Thọ
OTHER_COMMUNE = AgencyCode.parse("000.47.24.H44")
DISTRICT = AgencyCode.parse("000.00.24.H44")  # its district
PROVINCE = AgencyCode.parse("000.00.00.H44")  # the province
HANOI = AgencyCode.parse("000.00.00.H26")  # another province


def full_topology() -> Topology:
    """The core plus five agencies at three levels."""
    return (
        core_topology()
        + agency_topology(COMMUNE)
        + agency_topology(OTHER_COMMUNE)
        + agency_topology(DISTRICT)
        + agency_topology(PROVINCE)
        + agency_topology(HANOI)
    )


@pytest.fixture
async def channel(amqp_connection: AbstractRobustConnection) -> AbstractChannel:
    """A channel into the module's vhost with the full topology declared, queues empty."""
    channel = await amqp_connection.channel()
    await declare(channel, full_topology())
    await empty_all(channel, full_topology())
    return channel


@pytest.fixture
async def publisher(amqp_connection: AbstractRobustConnection) -> ConfirmingPublisher:
    """A confirming publisher into the module's vhost."""
    return await ConfirmingPublisher.open(amqp_connection)


async def drain(queue: AbstractQueue) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take (and ack) every message waiting in ``queue``."""
    taken = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        taken.append(message)
    return taken


async def empty_all(channel: AbstractChannel, topology: Topology) -> None:
    """Leave no message behind for the next test of the module."""
    for queue in topology.queues:
        await (await channel.get_queue(queue.name, ensure=False)).purge()


async def test_declaring_topology_twice_changes_nothing(
    channel: AbstractChannel, broker_admin: BrokerAdmin, broker_vhost: BrokerVhost
) -> None:
    before = await broker_admin.list_queues(broker_vhost.name)
    bindings_before = await broker_admin.list_bindings(broker_vhost.name)

    await declare(channel, full_topology())

    after = await broker_admin.list_queues(broker_vhost.name)
    assert [(q.name, q.arguments) for q in after] == [(q.name, q.arguments) for q in before]
    assert len(await broker_admin.list_bindings(broker_vhost.name)) == len(bindings_before)
    assert {q.name for q in after} == {q.name for q in full_topology().queues}
    assert all(q.type == "quorum" for q in after)


async def lanes_of(
    channel: AbstractChannel,
) -> dict[str, list[aio_pika.abc.AbstractIncomingMessage]]:
    """Every lane's waiting messages, taken; lanes holding none are left out."""
    taken = {name: await drain(await channel.get_queue(name)) for name in LANE_QUEUES}
    return {name: messages for name, messages in taken.items() if messages}


async def lane_holding(channel: AbstractChannel) -> AbstractQueue:
    """The lane a message is waiting in (taken and given back: one delivery more)."""
    for name in LANE_QUEUES:
        lane = await channel.get_queue(name)
        if (message := await lane.get(fail=False)) is not None:
            await message.reject(requeue=True)
            return lane
    raise AssertionError("no lane holds a message")


async def test_each_senders_messages_wait_in_one_lane_whatever_their_recipient(
    channel: AbstractChannel, publisher: ConfirmingPublisher
) -> None:
    keys = [str(COMMUNE), str(HANOI), "000.00.00.G22", "999.99.99.Z99"]
    senders = [f"000.00.{n:02d}.H26" for n in range(1, 41)]
    await asyncio.gather(
        *(
            publisher.publish(SUBMIT_EXCHANGE, key, key.encode(), headers={header.LANE: sender})
            for sender in senders
            for key in keys
        )
    )

    lanes = await lanes_of(channel)
    assert await drain(await channel.get_queue(WORK_QUEUE)) == []
    taken = [m for messages in lanes.values() for m in messages]
    assert sorted(m.routing_key or "" for m in taken) == sorted(keys * len(senders))
    assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in taken)
    lane_of: dict[str, set[str]] = {}
    for name, messages in lanes.items():
        for m in messages:
            lane_of.setdefault(header.text(m.headers, header.LANE) or "", set()).add(name)
    assert all(len(names) == 1 for names in lane_of.values()), "one lane per sender"
    assert len(lanes) >= LANES // 2, f"40 senders spread over {len(lanes)} of {LANES} lanes"


async def test_a_message_without_a_lane_still_reaches_a_lane(
    channel: AbstractChannel, publisher: ConfirmingPublisher
) -> None:
    keys = [str(COMMUNE), str(HANOI), "999.99.99.Z99"]
    await asyncio.gather(*(publisher.publish(SUBMIT_EXCHANGE, key, key.encode()) for key in keys))

    lanes = await lanes_of(channel)
    assert len(lanes) == 1
    assert sorted(m.routing_key or "" for m in next(iter(lanes.values()))) == sorted(keys)


async def test_declaring_removes_a_binding_of_the_work_queue_to_the_submit_exchange(
    channel: AbstractChannel, publisher: ConfirmingPublisher
) -> None:
    work = await channel.get_queue(WORK_QUEUE)
    await work.bind(SUBMIT_EXCHANGE, routing_key="#")

    await declare(channel, core_topology())
    await publisher.publish(SUBMIT_EXCHANGE, str(COMMUNE), b"<edXML/>")

    assert await drain(work) == []
    assert sum(len(m) for m in (await lanes_of(channel)).values()) == 1


async def test_no_one_publishes_to_the_intake_directly(
    channel: AbstractChannel, publisher: ConfirmingPublisher
) -> None:
    with pytest.raises(Exception, match="internal"):
        await publisher.publish(INTAKE_EXCHANGE, str(COMMUNE), b"<edXML/>")


async def test_delivery_reaches_its_own_inbox_and_nobody_else(
    channel: AbstractChannel, publisher: ConfirmingPublisher
) -> None:
    await publisher.publish(DELIVER_EXCHANGE, COMMUNE.routing_key, b"<edXML/>")

    received = {}
    for code in (COMMUNE, OTHER_COMMUNE, DISTRICT, PROVINCE, HANOI):
        received[code] = len(await drain(await channel.get_queue(inbox_queue(code))))
    # The district's subscription copy is the worker's to publish (test_metadata.py).
    assert received == {COMMUNE: 1, OTHER_COMMUNE: 0, DISTRICT: 0, PROVINCE: 0, HANOI: 0}


async def test_existing_queue_with_other_arguments_is_named_with_the_difference(
    make_vhost: Callable[[], BrokerVhost],
) -> None:
    vhost = make_vhost()
    connection = await connect(vhost.amqp_url)
    try:
        channel = await connection.channel()
        # Someone declared the work queue by hand, as a classic queue.
        await channel.declare_queue(WORK_QUEUE, durable=True)

        with pytest.raises(TopologyMismatchError) as caught:
            await declare(await connection.channel(), core_topology())
    finally:
        await connection.close()

    # RabbitMQ names the first argument it finds different.
    mismatch = caught.value
    expected = core_topology().queue(WORK_QUEUE).arguments()
    assert mismatch.kind == "queue"
    assert mismatch.name == WORK_QUEUE
    assert mismatch.argument in expected
    assert mismatch.declared == str(expected[mismatch.argument])
    assert mismatch.current == "(not set)"
    assert f"queue {WORK_QUEUE} already exists" in str(mismatch)


async def test_unroutable_mandatory_publish_raises(
    channel: AbstractChannel, publisher: ConfirmingPublisher
) -> None:
    nobody = AgencyCode.parse("000.00.00.G99")  # no inbox is bound for it

    with pytest.raises(UnroutableError) as caught:
        await publisher.publish(DELIVER_EXCHANGE, nobody.routing_key, b"<edXML/>")

    assert caught.value.routing_key == str(nobody)
    # The publisher stays usable afterwards.
    await publisher.publish(DELIVER_EXCHANGE, COMMUNE.routing_key, b"<edXML/>")
    assert len(await drain(await channel.get_queue(inbox_queue(COMMUNE)))) == 1


async def test_unroutable_publish_without_mandatory_is_dropped_silently(
    channel: AbstractChannel, publisher: ConfirmingPublisher
) -> None:
    await publisher.publish(DELIVER_EXCHANGE, "000.00.00.G99", b"<edXML/>", mandatory=False)

    for queue in full_topology().queues:
        assert await (await channel.get_queue(queue.name)).get(fail=False) is None


async def test_many_concurrent_publishes_are_each_confirmed(
    channel: AbstractChannel, publisher: ConfirmingPublisher
) -> None:
    count = 300
    ids = await asyncio.gather(
        *(
            publisher.publish(SUBMIT_EXCHANGE, str(COMMUNE), f"<m n='{n}'/>".encode())
            for n in range(count)
        )
    )

    assert len(set(ids)) == count
    taken = [m for messages in (await lanes_of(channel)).values() for m in messages]
    assert sorted(m.message_id or "" for m in taken) == sorted(ids)


async def test_concurrent_publishes_with_one_message_id_are_each_confirmed(
    channel: AbstractChannel, publisher: ConfirmingPublisher
) -> None:
    nobody = AgencyCode.parse("000.00.00.G98")
    results = await asyncio.gather(
        *(
            publisher.publish(DELIVER_EXCHANGE, str(code), b"<edXML/>", message_id="same")
            for code in (COMMUNE, nobody, HANOI)
        ),
        return_exceptions=True,
    )

    # The unroutable copy failed its own publish, not a neighbour's.
    assert results[0] == results[2] == "same"
    assert isinstance(results[1], UnroutableError)
    assert results[1].routing_key == str(nobody)
    assert len(await drain(await channel.get_queue(inbox_queue(COMMUNE)))) == 1
    assert len(await drain(await channel.get_queue(inbox_queue(HANOI)))) == 1


async def test_retried_message_returns_to_work_queue_after_its_delay(
    channel: AbstractChannel, publisher: ConfirmingPublisher
) -> None:
    sent = time.monotonic()
    await publisher.publish(
        RETRY_EXCHANGE, RETRY_1S.routing_key, b"<edXML/>", headers={"x-recipient": str(COMMUNE)}
    )

    work = await channel.get_queue(WORK_QUEUE)
    message = None
    while message is None and time.monotonic() - sent < 10:
        message = await work.get(fail=False, no_ack=True)
        await asyncio.sleep(0.1)

    assert message is not None, "the retried message never came back to the work queue"
    assert time.monotonic() - sent >= RETRY_1S.ttl_ms / 1000 * 0.9
    assert message.headers["x-recipient"] == str(COMMUNE)
    assert message.routing_key == WORK_QUEUE


async def test_poison_message_is_parked_after_the_delivery_limit(
    channel: AbstractChannel, publisher: ConfirmingPublisher
) -> None:
    await publisher.publish(SUBMIT_EXCHANGE, str(COMMUNE), b"<poison/>")
    work = await lane_holding(channel)
    parked = await channel.get_queue(PARKED_QUEUE)

    # A worker that crashes on the message: it comes back, again and again.
    deliveries = 1  # lane_holding's
    while (message := await work.get(fail=False)) is not None:
        deliveries += 1
        await message.reject(requeue=True)
        assert deliveries <= WORK_DELIVERY_LIMIT + 1, "the message was never parked"

    deadline = time.monotonic() + 10
    message = None
    while message is None and time.monotonic() < deadline:
        message = await parked.get(fail=False, no_ack=True)
        await asyncio.sleep(0.05)
    assert message is not None
    assert message.body == b"<poison/>"
    # Fanout parking keeps the routing key: the replay tool knows the recipient.
    assert message.routing_key == str(COMMUNE)
    assert deliveries == WORK_DELIVERY_LIMIT + 1


async def test_definitions_file_creates_the_same_queues_as_declare(
    make_vhost: Callable[[], BrokerVhost], broker_admin: BrokerAdmin
) -> None:
    topology = full_topology()
    declared = make_vhost()
    imported = make_vhost()
    connection = await connect(declared.amqp_url)
    try:
        await declare(await connection.channel(), topology)
    finally:
        await connection.close()

    await broker_admin.import_definitions(imported.name, to_definitions(topology))

    def queues(stats: list[QueueStats]) -> list[tuple[str, str, bool, dict[str, Any]]]:
        return [(q.name, q.type, q.durable, q.arguments) for q in stats]

    def bindings(found: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
        return sorted((b["source"], b["destination"], b["routing_key"]) for b in found)

    from_declare = await broker_admin.list_queues(declared.name)
    from_file = await broker_admin.list_queues(imported.name)
    assert queues(from_file) == queues(from_declare)
    assert len(from_file) == len(topology.queues)
    assert bindings(await broker_admin.list_bindings(imported.name)) == bindings(
        await broker_admin.list_bindings(declared.name)
    )
