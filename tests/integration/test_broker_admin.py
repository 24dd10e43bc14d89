"""Provisioning through the management API, and what an agency's user may do."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from exchange.agency import AgencyCode
from exchange.broker.admin import BrokerAdmin, BrokerAdminError, QueueStats
from exchange.broker.connection import (
    ConfirmingPublisher,
    PublishRefusedError,
    connect,
    declare,
)
from exchange.broker.topology import (
    DELIVER_EXCHANGE,
    STATUS_EXCHANGE,
    SUBMIT_EXCHANGE,
    WORK_QUEUES,
    Topology,
    agency_permissions,
    agency_topology,
    core_topology,
    inbox_queue,
    status_queue,
)
from tests.broker_fixtures import BrokerVhost, ProvisionedAgency, take_waiting

pytestmark = pytest.mark.services

SENDER = AgencyCode.parse("000.00.00.G22")  # the Government Office
RECIPIENT = AgencyCode.parse("000.46.24.H44")  # a commune


def topology() -> Topology:
    """The core with the two agencies' queues."""
    return core_topology() + agency_topology(SENDER) + agency_topology(RECIPIENT)


@pytest.fixture
async def channel(amqp_connection: AbstractRobustConnection) -> AbstractChannel:
    """An operator (guest) channel with the topology declared and every queue empty."""
    channel = await amqp_connection.channel()
    await declare(channel, topology())
    for queue in topology().queues:
        await (await channel.get_queue(queue.name)).purge()
    return channel


@pytest.fixture
def sender(make_agency_user: Callable[[str], ProvisionedAgency]) -> ProvisionedAgency:
    """The sending agency's own broker user, as provisioned by admin.py."""
    return make_agency_user(str(SENDER))


async def test_agency_user_gets_exactly_the_documented_permissions(
    sender: ProvisionedAgency, broker_admin: BrokerAdmin, broker_vhost: BrokerVhost
) -> None:
    granted = await broker_admin.get_permissions(broker_vhost.name, sender.name)

    assert granted == agency_permissions(SENDER)
    assert granted is not None and granted.configure == "^$"


async def test_agency_user_publishes_to_submit_under_its_own_name(
    channel: AbstractChannel, sender: ProvisionedAgency
) -> None:
    connection = await connect(sender.amqp_url)
    try:
        publisher = await ConfirmingPublisher.open(connection)
        await publisher.publish(SUBMIT_EXCHANGE, str(RECIPIENT), b"<edXML/>", user_id=sender.name)
    finally:
        await connection.close()

    [message] = await take_waiting(channel)
    assert message.user_id == sender.name
    assert message.routing_key == str(RECIPIENT)


async def test_agency_user_cannot_publish_under_another_name(
    channel: AbstractChannel, sender: ProvisionedAgency
) -> None:
    connection = await connect(sender.amqp_url)
    try:
        publisher = await ConfirmingPublisher.open(connection)
        with pytest.raises(PublishRefusedError) as caught:
            await publisher.publish(
                SUBMIT_EXCHANGE, str(RECIPIENT), b"<forged/>", user_id=str(RECIPIENT)
            )
        # The channel is reopened: the next, honest publish goes through.
        await publisher.publish(SUBMIT_EXCHANGE, str(RECIPIENT), b"<own/>", user_id=sender.name)
    finally:
        await connection.close()

    # RabbitMQ closed the channel with PRECONDITION_FAILED naming both users.
    assert isinstance(caught.value.__cause__, aiormq.exceptions.ChannelPreconditionFailed)
    assert "user_id" in str(caught.value)
    assert sender.name in str(caught.value)
    [honest] = await take_waiting(channel)
    assert (honest.body, honest.user_id) == (b"<own/>", sender.name)


async def test_agency_user_cannot_publish_to_the_deliver_exchange(
    channel: AbstractChannel, sender: ProvisionedAgency
) -> None:
    connection = await connect(sender.amqp_url)
    try:
        publisher = await ConfirmingPublisher.open(connection)
        with pytest.raises(PublishRefusedError) as caught:
            await publisher.publish(DELIVER_EXCHANGE, str(RECIPIENT), b"<forged/>")
    finally:
        await connection.close()

    assert isinstance(caught.value.__cause__, aiormq.exceptions.ChannelAccessRefused)
    assert await (await channel.get_queue(inbox_queue(RECIPIENT))).get(fail=False) is None


async def test_agency_user_cannot_read_another_agency_inbox(
    channel: AbstractChannel, sender: ProvisionedAgency
) -> None:
    await (await channel.get_exchange(DELIVER_EXCHANGE)).publish(
        aio_pika.Message(b"<for the commune/>"), str(RECIPIENT)
    )
    connection = await connect(sender.amqp_url)
    try:
        theirs = await (await connection.channel()).get_queue(inbox_queue(RECIPIENT), ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as caught:
            await theirs.get(fail=False)
    finally:
        await connection.close()

    assert "ACCESS_REFUSED" in str(caught.value)
    assert inbox_queue(RECIPIENT) in str(caught.value)
    # The commune's document is still there for the commune.
    assert await (await channel.get_queue(inbox_queue(RECIPIENT))).get(fail=False) is not None


async def test_agency_user_reads_its_own_inbox_and_status_queue(
    channel: AbstractChannel,
    amqp_connection: AbstractRobustConnection,
    sender: ProvisionedAgency,
) -> None:
    guest = await ConfirmingPublisher.open(amqp_connection)
    await guest.publish(DELIVER_EXCHANGE, str(SENDER), b"<for G22/>")
    await guest.publish(STATUS_EXCHANGE, str(SENDER), b'{"outcome": "delivered"}')

    connection = await connect(sender.amqp_url)
    try:
        own = await connection.channel()
        inbox = await (await own.get_queue(inbox_queue(SENDER), ensure=False)).get(no_ack=True)
        status = await (await own.get_queue(status_queue(SENDER), ensure=False)).get(no_ack=True)
    finally:
        await connection.close()

    assert inbox.body == b"<for G22/>"
    assert status.body == b'{"outcome": "delivered"}'


async def test_agency_user_cannot_declare_queues(sender: ProvisionedAgency) -> None:
    connection = await connect(sender.amqp_url)
    try:
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await (await connection.channel()).declare_queue("lienthong.inbox.mine", durable=True)
    finally:
        await connection.close()


async def test_list_queues_reports_messages_and_consumers(
    channel: AbstractChannel,
    amqp_connection: AbstractRobustConnection,
    broker_admin: BrokerAdmin,
    broker_vhost: BrokerVhost,
) -> None:
    publisher = await ConfirmingPublisher.open(amqp_connection)
    await asyncio.gather(
        *(publisher.publish(SUBMIT_EXCHANGE, str(RECIPIENT), b"<m/>") for _ in range(3))
    )
    consumer = await amqp_connection.channel()
    await (await consumer.get_queue(inbox_queue(RECIPIENT))).consume(no_ack_handler, no_ack=True)

    # The management API's statistics are refreshed every 5 s by default.
    deadline = time.monotonic() + 20
    while True:
        stats = {q.name: q for q in await broker_admin.list_queues(broker_vhost.name)}
        waiting = sum(stats[name].messages for name in WORK_QUEUES)
        inbox = stats[inbox_queue(RECIPIENT)]
        if (waiting, inbox.consumers) == (3, 1) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)

    lanes = [stats[name] for name in WORK_QUEUES]
    assert all(isinstance(lane, QueueStats) for lane in lanes)
    assert sum(lane.messages for lane in lanes) == 3
    assert sum(lane.messages_ready for lane in lanes) == 3
    assert sum(lane.consumers for lane in lanes) == 0
    assert inbox.consumers == 1
    assert set(stats) == {q.name for q in topology().queues}


async def no_ack_handler(message: AbstractIncomingMessage) -> None:
    """A consumer that only has to be there."""


async def test_vhost_and_user_are_created_and_deleted(broker_admin: BrokerAdmin) -> None:
    vhost = f"lienthong-test-admin-{uuid.uuid4().hex[:8]}"
    user = f"test-{uuid.uuid4().hex[:8]}"
    try:
        await broker_admin.create_vhost(vhost)
        await broker_admin.provision_agency_user(RECIPIENT, "s3cret-Pa55", vhost=vhost, user=user)
        assert await broker_admin.get_permissions(vhost, user) == agency_permissions(RECIPIENT)
    finally:
        assert await broker_admin.delete_user(user) is True
        assert await broker_admin.delete_vhost(vhost) is True

    # Deleting what is gone is not an error, and the permissions went with them.
    assert await broker_admin.delete_user(user) is False
    assert await broker_admin.delete_vhost(vhost) is False
    assert await broker_admin.get_permissions(vhost, user) is None


async def test_password_appears_in_no_log_repr_or_error(
    broker_admin: BrokerAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    password = f"never-show-{uuid.uuid4().hex}"
    user = f"test-{uuid.uuid4().hex[:8]}"
    caplog.set_level(logging.DEBUG)
    try:
        await broker_admin.create_user(user, password)
        with pytest.raises(BrokerAdminError) as caught:
            # The vhost does not exist: the API refuses, and says so.
            await broker_admin.provision_agency_user(
                RECIPIENT, password, vhost=f"missing-{uuid.uuid4().hex}", user=user
            )
    finally:
        await broker_admin.delete_user(user)

    leaky = BrokerAdmin(f"http://someone:{password}@127.0.0.1:15672")
    assert password not in caplog.text
    assert password not in str(caught.value)
    assert password not in repr(leaky)
    assert caught.value.status in (400, 404)


async def test_unreachable_management_api_is_a_clear_error() -> None:
    # Port 9 (discard) is closed on a test machine: nothing answers there.
    admin = BrokerAdmin("http://guest:guest@127.0.0.1:9", timeout=2)

    with pytest.raises(BrokerAdminError) as caught:
        await admin.overview()

    assert caught.value.status is None
    assert "rabbitmq_management" in str(caught.value)


async def test_make_vhost_gives_isolated_vhosts(
    make_vhost: Callable[[], BrokerVhost], broker_admin: BrokerAdmin
) -> None:
    first, second = make_vhost(), make_vhost()
    connection = await connect(first.amqp_url)
    try:
        await declare(await connection.channel(), core_topology())
    finally:
        await connection.close()

    assert first.name != second.name
    assert len(await broker_admin.list_queues(first.name)) == len(core_topology().queues)
    assert await broker_admin.list_queues(second.name) == []
