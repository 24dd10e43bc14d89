"""A client that is not ours submits and receives using only the documented names.

Agency software may be written in any language with any AMQP 0-9-1 library.
These tests play such a system with pika (a synchronous Python client that
shares nothing with :mod:`exchange.client`) and with Debian's amqp-tools.
Every broker name below is a string literal from docs/architecture.md on purpose:
importing the constants would prove nothing about the published contract.
Signing is the only thing taken from lienthong, since any agency signs
with its own tools.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import ssl
import subprocess
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from exchange.demo import LocalAgency, demo_document
from exchange.edxml.model import ResponseFor
from exchange.edxml.writer import new_status
from exchange.status import StatusCode
from tests.exchange_fixtures import ExchangeUnderTest

pytestmark = pytest.mark.services

SENDER = "000.00.00.H26"  # UBND Thành phố Hà Nội
RECIPIENT = "000.00.01.H26"  # Sở Nội vụ Hà Nội


def broker_user(agency: LocalAgency) -> str:
    """The RabbitMQ user name an agency logs in with (what ``user_id`` must say)."""
    return unquote(urlsplit(agency.amqp_url).username or "")


def tls_files(amqp_url: str) -> dict[str, str]:
    """The CA, certificate and key an aio-pika URL names (``cafile``, ``certfile``, ``keyfile``)."""
    return dict(parse_qsl(urlsplit(amqp_url).query))


def plain_url(amqp_url: str) -> str:
    """The URL without aio-pika's query: what another client takes, its TLS files apart."""
    return urlunsplit(urlsplit(amqp_url)._replace(query=""))


def pika_parameters(amqp_url: str) -> pika.ConnectionParameters:
    """pika's parameters for an ``amqps://`` URL: TLS with the broker's certificate checked."""
    files = tls_files(amqp_url)
    parameters = pika.URLParameters(plain_url(amqp_url))
    context = ssl.create_default_context(cafile=files["cafile"])
    context.load_cert_chain(files["certfile"], files["keyfile"])
    parameters.ssl_options = pika.SSLOptions(context, urlsplit(amqp_url).hostname)
    return parameters


def amqp_tools_options(amqp_url: str) -> list[str]:
    """amqp-tools' options for an ``amqps://`` URL (``--ssl`` and the TLS files)."""
    files = tls_files(amqp_url)
    return [
        f"--url={plain_url(amqp_url)}",
        "--ssl",
        f"--cacert={files['cafile']}",
        f"--cert={files['certfile']}",
        f"--key={files['keyfile']}",
    ]


def with_channel(amqp_url: str, work: Any) -> Any:
    """Run ``work(channel)`` on a fresh pika connection (blocking: call it in a thread)."""
    connection = pika.BlockingConnection(pika_parameters(amqp_url))
    try:
        return work(connection.channel())
    finally:
        connection.close()


def pika_submit(agency: LocalAgency, recipient: str, package: bytes) -> str:
    """Publish a signed package as the documentation says; return its message id."""
    message_id = str(uuid.uuid4())

    def publish(channel: BlockingChannel) -> None:
        channel.confirm_delivery()  # basic_publish now raises unless the broker confirms
        channel.basic_publish(
            exchange="lienthong.submit",
            routing_key=recipient,
            body=package,
            properties=pika.BasicProperties(
                message_id=message_id,
                user_id=broker_user(agency),
                content_type="application/xml",
                delivery_mode=pika.DeliveryMode.Persistent,
                timestamp=int(datetime.now(UTC).timestamp()),
            ),
            mandatory=True,
        )

    with_channel(agency.amqp_url, publish)
    return message_id


def pika_take(agency: LocalAgency, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Every message waiting in ``queue``, fetched and acked one by one (basic.get)."""

    def take(channel: BlockingChannel) -> list[tuple[pika.BasicProperties, bytes]]:
        taken = []
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                return taken
            taken.append((properties, body))
            channel.basic_ack(method.delivery_tag)

    result: list[tuple[pika.BasicProperties, bytes]] = with_channel(agency.amqp_url, take)
    return result


async def test_pika_client_submits_receives_and_reports_with_the_documented_names(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(SENDER, "UBND Thành phố Hà Nội")
    recipient = await exchange.register(RECIPIENT, "Sở Nội vụ Hà Nội")
    document = demo_document(sender, [recipient], 88, "UBND-VP", "Thí điểm phần mềm khác")
    async with sender.client() as signer:
        package = signer.sign(document)

    async with exchange.workers(1):
        message_id = await asyncio.to_thread(pika_submit, sender, RECIPIENT, package)
        await exchange.wait_settled(1)

        # The recipient reads its inbox: the package exactly as signed.
        ((delivered, body),) = await asyncio.to_thread(
            pika_take, recipient, f"lienthong.inbox.{RECIPIENT}"
        )
        assert body == package
        assert delivered.headers["x-sender"] == SENDER
        assert delivered.headers["x-document-id"] == document.document_id

        # The sender reads its receipt: JSON with the documented fields.
        ((properties, body),) = await asyncio.to_thread(
            pika_take, sender, f"lienthong.status.{SENDER}"
        )
        receipt = json.loads(body)
        assert properties.content_type == "application/vnd.lienthong.receipt+json"
        assert receipt["type"] == "receipt"
        assert receipt["outcome"] == "delivered"
        assert receipt["message_id"] == message_id
        assert receipt["recipient"] == RECIPIENT
        assert receipt["document_id"] == document.document_id
        assert receipt["sha256"] == hashlib.sha256(package).hexdigest()

        # The recipient reports 01 the same way; the sender receives it unchanged.
        status = new_status(
            sender=recipient.organization,
            response_for=ResponseFor(
                organ_id=sender.code,
                code="88/UBND-VP",
                promulgation_date=document.promulgation.promulgation_date,
                document_id=document.document_id,
            ),
            status_code=StatusCode.ARRIVED,
            description="Đã nhận",
        )
        async with recipient.client() as signer:
            signed_status = signer.sign(status)
        await asyncio.to_thread(pika_submit, recipient, SENDER, signed_status)
        await exchange.wait_settled(2)

    ((properties, body),) = await asyncio.to_thread(pika_take, sender, f"lienthong.status.{SENDER}")
    assert body == signed_status
    assert properties.content_type == "application/xml"
    ((properties, body),) = await asyncio.to_thread(
        pika_take, recipient, f"lienthong.status.{RECIPIENT}"
    )
    assert json.loads(body)["outcome"] == "delivered"


def publish_as_someone_else(sender: LocalAgency, impostor_of: LocalAgency) -> None:
    """Publish with a ``user_id`` that is not the connection's own user."""

    def publish(channel: BlockingChannel) -> None:
        channel.confirm_delivery()
        channel.basic_publish(
            "lienthong.submit",
            RECIPIENT,
            b"<edXML/>",
            pika.BasicProperties(user_id=broker_user(impostor_of), delivery_mode=2),
        )

    with_channel(sender.amqp_url, publish)


def read_queue(agency: LocalAgency, queue: str) -> None:
    """Fetch one message from ``queue`` as ``agency``."""
    with_channel(agency.amqp_url, lambda channel: channel.basic_get(queue))


async def test_broker_lets_an_agency_publish_only_as_itself_and_read_only_its_queues(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(SENDER)
    recipient = await exchange.register(RECIPIENT)
    # user_id naming another agency's user: RabbitMQ closes the channel (406).
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        await asyncio.to_thread(publish_as_someone_else, sender, recipient)
    assert refused.value.reply_code == 406
    # Another agency's inbox, or the workers' queue: access refused (403).
    for queue in (f"lienthong.inbox.{RECIPIENT}", "lienthong.work"):
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as forbidden:
            await asyncio.to_thread(read_queue, sender, queue)
        assert forbidden.value.reply_code == 403, queue
    # Its own queues it may read (empty: nothing was accepted).
    await asyncio.to_thread(read_queue, sender, f"lienthong.inbox.{SENDER}")
    await asyncio.to_thread(read_queue, sender, f"lienthong.status.{SENDER}")
    assert await exchange.fetchval("SELECT count(*) FROM messages") == 0


# amqp-publish (Debian amqp-tools 0.11) has no option for the user_id
# property (see `amqp-publish --help`: exchange, routing key, persistent,
# content type, reply-to, content encoding, headers, body). The exchange
# trusts a sender only through the user_id RabbitMQ validated, so a package
# published with amqp-publish cannot be accepted; what can be tested is that
# it is refused and goes nowhere, and that amqp-get reads an inbox.
AMQP_PUBLISH = shutil.which("amqp-publish")
AMQP_GET = shutil.which("amqp-get")


@pytest.mark.skipif(not (AMQP_PUBLISH and AMQP_GET), reason="Debian's amqp-tools not installed")
async def test_amqp_get_reads_an_inbox_and_amqp_publish_without_user_id_is_refused(
    exchange: ExchangeUnderTest,
) -> None:
    assert AMQP_PUBLISH is not None and AMQP_GET is not None
    sender = await exchange.register(SENDER)
    recipient = await exchange.register(RECIPIENT)
    async with sender.client() as signer:
        package = signer.sign(demo_document(sender, [recipient], 89, "UBND-VP", "Qua pika"))
        anonymous = signer.sign(demo_document(sender, [recipient], 90, "UBND-VP", "Không user_id"))

    async with exchange.workers(1):
        # Published with user_id (pika), read by amqp-get from the documented queue.
        await asyncio.to_thread(pika_submit, sender, RECIPIENT, package)
        await exchange.wait_settled(1)
        got = await asyncio.to_thread(
            subprocess.run,
            [
                AMQP_GET,
                *amqp_tools_options(recipient.amqp_url),
                f"--queue=lienthong.inbox.{RECIPIENT}",
            ],
            capture_output=True,
            check=True,
            timeout=30,
        )
        assert got.stdout == package

        await asyncio.to_thread(
            subprocess.run,
            [
                AMQP_PUBLISH,
                *amqp_tools_options(sender.amqp_url),
                "--exchange=lienthong.submit",
                f"--routing-key={RECIPIENT}",
                "--persistent",
                "--content-type=application/xml",
            ],
            input=anonymous,
            check=True,
            timeout=30,
        )
        await exchange.wait_settled(2)
    (record,) = await exchange.fetch(
        "SELECT m.broker_user, s.outcome, s.reason_code FROM messages m"
        " JOIN message_state s ON s.message_pk = m.id WHERE m.sha256 = $1",
        hashlib.sha256(anonymous).hexdigest(),
    )
    assert (record["broker_user"], record["outcome"], record["reason_code"]) == (
        None,
        "rejected",
        "REJECTED_SENDER_MISMATCH",
    )
    assert await exchange.queue_depth(f"lienthong.inbox.{RECIPIENT}") == 0
