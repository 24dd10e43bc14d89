"""Setting up the exchange: its schema and core topology, and each agency on it.

:func:`prepare` brings the database schema and the core broker topology up
to date. :func:`register_agency` registers an agency: directory row, broker
user, queues.

An agency's three parts must agree: the directory maps the broker user to the agency (so
the worker can trust ``user_id``), the broker user may only publish to the
submit exchange and read the agency's own queues, and the queues exist before
anything is delivered to them.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from exchange.agency import AgencyCode
from exchange.broker.admin import BrokerAdmin
from exchange.broker.connection import connect, declare
from exchange.broker.topology import agency_topology, core_topology, validate_subscription
from exchange.pki import agency_code_of
from exchange.settings import Settings
from exchange.store import queries
from exchange.store.db import connect as db_connect
from exchange.store.db import create_pool
from exchange.store.migrate import migrate
from exchange.store.records import Agency

# Long enough that guessing is hopeless, short enough to paste into a QLVB's
# configuration screen.
PASSWORD_BYTES = 18


class RegistrationError(ValueError):
    """An agency cannot be registered as asked; the message says why."""


@dataclass(frozen=True)
class Registration:
    """What registering an agency produced: the record, and how it logs in."""

    agency: Agency
    broker_user: str
    password: str | None  # None when the broker user was left as it was
    amqp_url: str


async def prepare(settings: Settings) -> None:
    """Bring the database schema and the core broker topology up to date (idempotent)."""
    pool = await create_pool(settings)
    try:
        await migrate(pool)
    finally:
        await pool.close()
    connection = await connect(settings.amqp_url, name="lienthong-init")
    try:
        channel = await connection.channel()
        await declare(channel, core_topology())
    finally:
        await connection.close()


def vhost_of(amqp_url: str) -> str:
    """The RabbitMQ vhost an AMQP URL points at (``/`` when it names none)."""
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def url_for_user(amqp_url: str, user: str, password: str) -> str:
    """``amqp_url`` with another user and password (same host and vhost)."""
    parts = urlsplit(amqp_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}:{parts.port or 5672}"
    return urlunsplit(parts._replace(netloc=netloc))


async def register_agency(
    settings: Settings,
    code: AgencyCode,
    name: str,
    *,
    certificate_pem: str | None = None,
    subscriptions: Sequence[str] = (),
    broker_user: str | None = None,
    password: str | None = None,
    provision_user: bool = True,
) -> Registration:
    """Register (or update) an agency: directory row, broker user, queues.

    A certificate, when given, must name this agency. With
    ``provision_user``, the broker user is created (or its password reset)
    with the permissions of :func:`exchange.broker.topology.agency_permissions`;
    a password is generated when none is given.
    """
    if certificate_pem is not None:
        from cryptography import x509

        try:
            certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
        except ValueError:
            raise RegistrationError("the certificate file is not a PEM certificate") from None
        named = agency_code_of(certificate)
        if named != code:
            raise RegistrationError(f"the certificate names {named or 'no agency'}, not {code}")
    try:
        patterns = [validate_subscription(p) for p in subscriptions]
    except ValueError as error:
        raise RegistrationError(str(error)) from None
    user = broker_user or str(code)
    conn = await db_connect(settings)
    try:
        try:
            agency = await queries.add_agency(
                conn,
                code,
                name,
                broker_user=user,
                certificate_pem=certificate_pem,
                subscriptions=patterns,
            )
        except queries.AgencyConflictError as error:
            raise RegistrationError(str(error)) from None
    finally:
        await conn.close()
    connection = await connect(settings.amqp_url, name="lienthong-registry")
    try:
        channel = await connection.channel()
        await declare(channel, agency_topology(code, patterns))
    finally:
        await connection.close()
    secret = None
    if provision_user:
        secret = password or secrets.token_urlsafe(PASSWORD_BYTES)
        admin = BrokerAdmin(settings.rabbitmq_api_url)
        await admin.provision_agency_user(
            code, secret, vhost=vhost_of(settings.amqp_url), user=user
        )
    url = url_for_user(settings.amqp_url, user, secret) if secret else settings.amqp_url
    return Registration(agency, user, secret, url)
