"""TLS on every AMQP connection, and agencies that log in with their certificates.

Against the machine's broker as ``scripts/setup.sh`` configures it
(scripts/dev-tls.sh): a TLS listener that requires a client certificate
from the development CA and checks it against that CA's revocation list,
certificate logins (EXTERNAL, the user being the certificate's subject),
and the management API over HTTPS as an operator user of its own.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractRobustConnection

from exchange.agency import AgencyCode
from exchange.broker.admin import BrokerAdmin
from exchange.broker.connection import connect, declare
from exchange.broker.topology import SUBMIT_EXCHANGE, core_topology
from exchange.pki import (
    Credential,
    KeyType,
    TlsRole,
    create_ca,
    issue_agency_certificate,
    issue_tls_certificate,
    revoke,
)
from exchange.registry import register_agency, url_for_certificate
from exchange.settings import Settings, certificate_login
from tests.broker_fixtures import BrokerVhost

pytestmark = pytest.mark.services

DEV_PKI = Path(os.environ.get("LIENTHONG_DEV_PKI", "/etc/lienthong/tls"))


@pytest.fixture(scope="module")
def dev_ca() -> Credential:
    """The development CA the broker trusts (made by scripts/setup.sh)."""
    if not (DEV_PKI / "ca.key.pem").exists():
        message = f"no development CA in {DEV_PKI}: run scripts/setup.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Credential.read(DEV_PKI, "ca")


def with_query(url: str, **changes: str | None) -> str:
    """``url`` with query parameters set (or removed, for ``None``)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for name, value in changes.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def with_host(url: str, host: str) -> str:
    """``url`` dialling ``host`` instead (same port, vhost and query)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port or 5671}"))


async def refused(url: str) -> BaseException:
    """The error connecting to ``url`` raises (the test fails if it connects)."""
    try:
        connection = await aio_pika.connect(url, timeout=10)
    except Exception as error:  # what matters is that it does not connect
        return error
    await connection.close()
    pytest.fail(f"connected to {url.split('?')[0]}")


def agency_credential(ca: Credential, code: str, name: str, directory: Path) -> Credential:
    """An agency's signing certificate from ``ca``, written as CODE.cert.pem / CODE.key.pem."""
    return issue_agency_certificate(
        ca,
        AgencyCode.parse(code),
        common_name=name,
        organization=f"{name} (pytest {uuid.uuid4().hex[:6]})",
        key_type=KeyType.ECDSA_P256,
        directory=directory,
    )


def login_url(vhost: BrokerVhost, directory: Path, code: str) -> str:
    """The URL an agency whose files are in ``directory`` logs in with (auth=external)."""
    return url_for_certificate(
        vhost.amqp_url, str(directory / f"{code}.cert.pem"), str(directory / f"{code}.key.pem")
    )


@pytest.fixture
async def submit_exchange(broker_vhost: BrokerVhost) -> None:
    """The core topology in the module's vhost (what agencies publish to)."""
    connection = await connect(broker_vhost.amqp_url, name="pytest-tls")
    try:
        await declare(await connection.channel(), core_topology())
    finally:
        await connection.close()


# -- the transport -------------------------------------------------------------


def test_the_exchange_reaches_the_broker_over_tls_by_default() -> None:
    settings = Settings()
    url = urlsplit(settings.amqp_url)
    assert url.scheme == "amqps"
    assert dict(parse_qsl(url.query)).get("no_verify_ssl", "0") == "0"
    assert urlsplit(settings.rabbitmq_api_url).scheme == "https"
    assert BrokerAdmin.from_settings(settings).user != "guest"


async def test_the_exchange_connects_with_the_broker_certificate_and_host_checked(
    amqp_connection: AbstractRobustConnection,
) -> None:
    channel = await amqp_connection.channel()
    queue = await channel.declare_queue(exclusive=True)
    assert queue.name


async def test_a_client_without_a_certificate_is_refused_at_the_handshake(
    broker_vhost: BrokerVhost,
) -> None:
    error = await refused(with_query(broker_vhost.amqp_url, certfile=None, keyfile=None))
    assert isinstance(error, aiormq.exceptions.AMQPConnectionError | ConnectionError)


async def test_a_broker_answering_under_a_name_its_certificate_lacks_is_refused(
    broker_vhost: BrokerVhost,
) -> None:
    # 127.0.0.2 reaches the same broker, whose certificate does not name it.
    error = await refused(with_host(broker_vhost.amqp_url, "127.0.0.2"))
    assert "certificate" in repr(error).lower() or "hostname" in repr(error).lower()


async def test_a_client_certificate_of_another_ca_is_refused(
    broker_vhost: BrokerVhost, tmp_path: Path
) -> None:
    stranger = create_ca(tmp_path, common_name="not the exchange's CA")
    issue_tls_certificate(stranger, TlsRole.CLIENT, "intruder", directory=tmp_path)
    url = with_query(
        broker_vhost.amqp_url,
        certfile=str(tmp_path / "intruder.cert.pem"),
        keyfile=str(tmp_path / "intruder.key.pem"),
    )
    await refused(url)


# -- certificate logins ------------------------------------------------------------


async def test_an_agency_logs_in_with_its_certificate_and_publishes_only_as_itself(
    broker_vhost: BrokerVhost,
    broker_admin: BrokerAdmin,
    dev_ca: Credential,
    submit_exchange: None,
    tmp_path: Path,
) -> None:
    # Vietnamese names: RabbitMQ writes each UTF-8 byte as \XX in the user name.
    hanoi = agency_credential(dev_ca, "000.00.00.H26", "UBND Thành phố Hà Nội", tmp_path)
    commune = agency_credential(dev_ca, "000.46.24.H44", "UBND xã Sơn Vi", tmp_path)
    users = [certificate_login(hanoi.certificate), certificate_login(commune.certificate)]
    assert "\\C3\\A0" in users[0]  # the à of Thành
    try:
        for code, user in zip(("000.00.00.H26", "000.46.24.H44"), users, strict=True):
            await broker_admin.provision_agency_user(
                AgencyCode.parse(code), None, vhost=broker_vhost.name, user=user
            )
        connection = await aio_pika.connect(login_url(broker_vhost, tmp_path, "000.00.00.H26"))
        try:
            channel = await connection.channel(publisher_confirms=True)
            submit = await channel.get_exchange(SUBMIT_EXCHANGE, ensure=False)
            # As itself: the broker takes it.
            await submit.publish(
                aio_pika.Message(b"<edXML/>", user_id=users[0]), routing_key="000.00.01.H26"
            )
            # As the commune: the broker closes the channel.
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as closed:
                await submit.publish(
                    aio_pika.Message(b"<edXML/>", user_id=users[1]), routing_key="000.00.01.H26"
                )
            assert "user_id" in str(closed.value)
        finally:
            await connection.close()
        # The user has no password: a password login as it fails, whatever the password.
        password_url = urlunsplit(
            urlsplit(with_query(broker_vhost.amqp_url, auth=None))._replace(
                netloc=f"{uuid.uuid4().hex}:{''}@localhost:5671"
            )
        )
        await refused(password_url)
    finally:
        for user in users:
            await broker_admin.delete_user(user)


async def test_agency_add_with_a_certificate_provisions_a_certificate_login(
    broker_vhost: BrokerVhost,
    broker_admin: BrokerAdmin,
    dev_ca: Credential,
    submit_exchange: None,
    database_url: str,
    tmp_path: Path,
) -> None:
    credential = agency_credential(dev_ca, "000.00.00.G09", "Bộ Nội vụ", tmp_path)
    settings = Settings().model_copy(
        update={"amqp_url": broker_vhost.amqp_url, "database_url": database_url}
    )
    registration = await register_agency(
        settings,
        AgencyCode.parse("000.00.00.G09"),
        "Bộ Nội vụ",
        certificate_pem=credential.cert_pem.decode(),
    )
    try:
        assert registration.certificate_login
        assert registration.password is None
        assert registration.broker_user == certificate_login(credential.certificate)
        assert "auth=external" in registration.amqp_url
        assert "lienthong-agency" in (await broker_admin.user_tags(registration.broker_user) or [])
        connection = await aio_pika.connect(login_url(broker_vhost, tmp_path, "000.00.00.G09"))
        try:
            channel = await connection.channel(publisher_confirms=True)
            submit = await channel.get_exchange(SUBMIT_EXCHANGE, ensure=False)
            await submit.publish(
                aio_pika.Message(b"<edXML/>", user_id=registration.broker_user),
                routing_key="000.00.00.G22",
            )
        finally:
            await connection.close()
    finally:
        await broker_admin.delete_user(registration.broker_user)


async def test_a_revoked_client_certificate_is_refused_by_the_broker(
    broker_vhost: BrokerVhost,
    broker_admin: BrokerAdmin,
    dev_ca: Credential,
    tmp_path: Path,
) -> None:
    credential = agency_credential(dev_ca, "000.00.24.H44", "UBND huyện Lâm Thao", tmp_path)
    user = certificate_login(credential.certificate)
    await broker_admin.provision_agency_user(
        AgencyCode.parse("000.00.24.H44"), None, vhost=broker_vhost.name, user=user
    )
    url = login_url(broker_vhost, tmp_path, "000.00.24.H44")
    try:
        connection = await aio_pika.connect(url)
        await connection.close()
        # `lienthong keys revoke` writes the CRL the broker reads (scripts/dev-tls.sh).
        revoke(dev_ca, credential.certificate, DEV_PKI)
        await refused(url)
    finally:
        await broker_admin.delete_user(user)
