"""Setting up the exchange: its schema and core topology, and each agency on it.

Setting up the exchange, and each agency on it.

:func:`prepare` brings the database schema and the core broker topology up
to date. :func:`register_agency` registers an agency (directory row, broker
user, queues) and :func:`change_agency` changes a registration.

Registering, and changing a registration, is all or nothing: the directory
row is written in a transaction that commits after the broker steps, and a
failure on the way undoes the broker steps already done. The three must
agree: the directory maps the broker user to the agency (so the worker can
trust ``user_id``), the broker user may only publish to the submit exchange
and read the agency's own queues, and the queues exist before anything is
delivered to them.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from aio_pika.abc import AbstractRobustConnection

from exchange.agency import AgencyCode
from exchange.broker.admin import BrokerAdmin
from exchange.broker.connection import connect, declare, queue_counts
from exchange.broker.topology import (
    DELIVER_EXCHANGE,
    agency_topology,
    core_topology,
    inbox_queue,
    validate_subscription,
)
from exchange.pki import agency_code_of, check_policy, fingerprint
from exchange.reasons import Rejection
from exchange.settings import Settings
from exchange.store import queries
from exchange.store.db import Connection, create_pool
from exchange.store.db import connect as db_connect
from exchange.store.migrate import migrate
from exchange.store.records import Agency

log = logging.getLogger(__name__)

# Long enough that guessing is hopeless, short enough to paste into a QLVB's
# configuration screen.
PASSWORD_BYTES = 18


class RegistrationError(ValueError):
    """An agency cannot be registered as asked; the message says why."""


class AgencyExistsError(RegistrationError):
    """The agency is registered already."""


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


def _check_certificate(code: AgencyCode, certificate_pem: str) -> tuple[str, str]:
    """A PEM certificate naming this agency, as ``(sha256, pem)`` (the first certificate only).

    A file may carry the intermediates after the agency's certificate; only
    the agency's own is registered.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    except ValueError:
        raise RegistrationError("the certificate file is not a PEM certificate") from None
    named = agency_code_of(certificate)
    if named != code:
        raise RegistrationError(f"the certificate names {named or 'no agency'}, not {code}")
    try:
        # What the worker would refuse in every package it signs (a CA
        # certificate, a weak key, a SHA-1 signature) is refused now.
        check_policy([certificate, certificate])
    except Rejection as rejection:
        why = "; ".join(problem.what for problem in rejection.problems)
        raise RegistrationError(f"the certificate cannot sign packages: {why}") from None
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    return fingerprint(certificate), pem


def _check_certificates(code: AgencyCode, pems: Sequence[str]) -> list[tuple[str, str]]:
    return [_check_certificate(code, pem) for pem in pems]


def _patterns(subscriptions: Sequence[str]) -> list[str]:
    try:
        return [validate_subscription(p) for p in subscriptions]
    except ValueError as error:
        raise RegistrationError(str(error)) from None


class _Undo:
    """What a registration did so far, undone in reverse order when a later step fails."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []

    def add(self, what: str, step: Callable[[], Awaitable[object]]) -> None:
        self._steps.append((what, step))

    async def run(self, error: BaseException) -> None:
        """Undo every step; what could not be undone is logged and noted on ``error``."""
        for what, step in reversed(self._steps):
            try:
                await step()
            except Exception as failure:  # each step is tried, whatever befell another
                log.warning("could not undo: %s (%s)", what, failure)
                error.add_note(f"left behind: {what}")


@contextlib.asynccontextmanager
async def _all_or_nothing(settings: Settings) -> AsyncIterator[tuple[Connection, _Undo]]:
    """A database transaction and an undo list: committed together, or both rolled back."""
    undo = _Undo()
    conn = await db_connect(settings)
    try:
        transaction = conn.transaction()
        await transaction.start()
        committed = False
        try:
            yield conn, undo
            await transaction.commit()
            committed = True
        except BaseException as error:
            if not committed and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await transaction.rollback()
            await undo.run(error)
            raise
    finally:
        await conn.close()


async def _queue_exists(connection: AbstractRobustConnection, name: str) -> bool:
    return await queue_counts(connection, name) is not None


async def _declare_queues(
    settings: Settings, code: AgencyCode, patterns: Sequence[str], undo: _Undo
) -> None:
    """Declare the agency's queues; the undo deletes those that did not exist before."""
    topology = agency_topology(code, patterns)
    connection = await connect(settings.amqp_url, name="lienthong-registry")
    try:
        new = [q.name for q in topology.queues if not await _queue_exists(connection, q.name)]

        async def delete_new_queues() -> None:
            again = await connect(settings.amqp_url, name="lienthong-registry")
            try:
                channel = await again.channel()
                for name in new:
                    await channel.queue_delete(name)
            finally:
                await again.close()

        undo.add(f"queues {', '.join(new)}", delete_new_queues)
        channel = await connection.channel()
        await declare(channel, topology)
    finally:
        await connection.close()


@dataclass(frozen=True)
class GatewayUser:
    """A gateway's broker user as provisioned: its name, its new password, its login."""

    name: str
    password: str
    amqp_url: str


async def provision_gateway_user(
    settings: Settings, name: str, *, password: str | None = None
) -> GatewayUser:
    """Create (or reset) the broker user gateways publish and consume as.

    The permissions are :func:`exchange.broker.topology.gateway_permissions`
    in the vhost of ``settings.amqp_url``; a password is generated when none
    is given. Running it again gives the user a new password. The workers
    believe this user's agency header once it is in their
    ``LIENTHONG_GATEWAY_USERS``.
    """
    admin = BrokerAdmin(settings.rabbitmq_api_url)
    secret = password or secrets.token_urlsafe(PASSWORD_BYTES)
    await admin.provision_gateway_user(name, secret, vhost=vhost_of(settings.amqp_url))
    return GatewayUser(name, secret, url_for_user(settings.amqp_url, name, secret))


async def register_agency(
    settings: Settings,
    code: AgencyCode,
    name: str,
    *,
    certificate_pem: str | None = None,
    certificates: Sequence[str] = (),
    allow_sha1: bool = False,
    subscriptions: Sequence[str] = (),
    broker_user: str | None = None,
    password: str | None = None,
    provision_user: bool = True,
) -> Registration:
    """Register a new agency: directory row, broker user, queues; all of them or none.

    ``certificate_pem`` and ``certificates`` are the certificates it may
    sign with, each naming this agency; with none, it can receive but not
    send. ``allow_sha1`` accepts its SHA-1 signatures. With
    ``provision_user``, the broker user is created with the permissions of
    :func:`exchange.broker.topology.agency_permissions`; a password is
    generated when none is given. The row is written in a transaction that
    commits only once the broker user and the queues exist; a failure on
    the way removes the user and the queues this call created.
    :class:`AgencyExistsError` when the code is registered already
    (:func:`change_agency` changes a registration).
    """
    registered = _check_certificates(
        code, [*([certificate_pem] if certificate_pem else []), *certificates]
    )
    patterns = _patterns(subscriptions)
    user = broker_user or str(code)
    admin = BrokerAdmin(settings.rabbitmq_api_url) if provision_user else None
    secret = None
    async with _all_or_nothing(settings) as (conn, undo):
        try:
            agency = await queries.add_agency(
                conn,
                code,
                name,
                broker_user=user,
                certificates=registered,
                allow_sha1=allow_sha1,
                subscriptions=patterns,
            )
        except queries.AgencyExistsError as error:
            raise AgencyExistsError(str(error)) from None
        except queries.AgencyConflictError as error:
            raise RegistrationError(str(error)) from None
        if admin is not None:
            existed = await admin.user_exists(user)
            secret = password or secrets.token_urlsafe(PASSWORD_BYTES)
            await admin.provision_agency_user(
                code, secret, vhost=vhost_of(settings.amqp_url), user=user
            )
            if not existed:
                undo.add(f"broker user {user}", lambda: admin.delete_user(user))
        await _declare_queues(settings, code, patterns, undo)
    url = url_for_user(settings.amqp_url, user, secret) if secret else settings.amqp_url
    return Registration(agency, user, secret, url)


async def change_agency(
    settings: Settings,
    code: AgencyCode,
    *,
    name: str | None = None,
    certificate_pem: str | None = None,
    certificates: Sequence[str] | None = None,
    allow_sha1: bool | None = None,
    subscriptions: Sequence[str] | None = None,
    password: str | None = None,
    new_password: bool = False,
) -> Registration:
    """Change what is given of a registered agency; what is not given stays as it is.

    ``certificate_pem`` or ``certificates`` replace every registered
    certificate (:func:`add_certificate` adds one, for a rollover).

    ``subscriptions`` replaces the subscription list (and the inbox's
    bindings); ``password`` (or a generated one with ``new_password``) is
    the broker user's new password. All or nothing, as :func:`register_agency`.
    """
    replacing = None
    if certificate_pem is not None or certificates is not None:
        replacing = _check_certificates(
            code, [*([certificate_pem] if certificate_pem else []), *(certificates or ())]
        )
    patterns = None if subscriptions is None else _patterns(subscriptions)
    secret = None
    async with _all_or_nothing(settings) as (conn, undo):
        before = await queries.get_agency(conn, code)
        if before is None:
            raise RegistrationError(
                f"agency {code} is not registered; `lienthong agency add {code}` registers it"
            )
        agency = await queries.update_agency(
            conn,
            code,
            name=name,
            certificates=replacing,
            allow_sha1=allow_sha1,
            subscriptions=patterns,
        )
        if patterns is not None:
            await _rebind(settings, code, before.subscriptions, patterns, undo)
        if password is not None or new_password:
            secret = password or secrets.token_urlsafe(PASSWORD_BYTES)
            admin = BrokerAdmin(settings.rabbitmq_api_url)
            await admin.provision_agency_user(
                code, secret, vhost=vhost_of(settings.amqp_url), user=before.broker_user
            )
    user = agency.broker_user
    url = url_for_user(settings.amqp_url, user, secret) if secret else settings.amqp_url
    return Registration(agency, user, secret, url)


async def add_certificate(settings: Settings, code: AgencyCode, certificate_pem: str) -> Agency:
    """Register one more certificate ``code`` may sign with (a rollover); the others stay."""
    sha256, pem = _check_certificate(code, certificate_pem)
    conn = await db_connect(settings)
    try:
        async with conn.transaction():
            try:
                await queries.add_agency_certificate(conn, code, sha256, pem)
            except queries.AgencyNotFoundError as error:
                raise RegistrationError(str(error)) from None
            agency = await queries.get_agency(conn, code)
    finally:
        await conn.close()
    assert agency is not None, "the certificate was just added to it"
    return agency


async def remove_certificate(settings: Settings, code: AgencyCode, certificate_pem: str) -> Agency:
    """Retire a certificate of ``code``: packages it signs are refused from the next reload on."""
    from cryptography import x509

    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    except ValueError:
        raise RegistrationError("the certificate file is not a PEM certificate") from None
    conn = await db_connect(settings)
    try:
        async with conn.transaction():
            removed = await queries.remove_agency_certificate(conn, code, fingerprint(certificate))
            agency = await queries.get_agency(conn, code)
    finally:
        await conn.close()
    if agency is None:
        raise RegistrationError(f"agency {code} is not registered")
    if not removed:
        raise RegistrationError(f"that certificate is not registered for {code}")
    return agency


async def _rebind(
    settings: Settings,
    code: AgencyCode,
    before: Sequence[str],
    after: Sequence[str],
    undo: _Undo,
) -> None:
    """Bind the inbox to the patterns added, unbind it from those removed."""
    own = code.routing_key
    added = [p for p in after if p not in before and p != own]
    removed = [p for p in before if p not in after and p != own]
    inbox = inbox_queue(code)
    connection = await connect(settings.amqp_url, name="lienthong-registry")
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(inbox, ensure=False)

        async def restore() -> None:
            again = await connect(settings.amqp_url, name="lienthong-registry")
            try:
                back = await (await again.channel()).get_queue(inbox, ensure=False)
                for pattern in added:
                    await back.unbind(DELIVER_EXCHANGE, routing_key=pattern)
                for pattern in removed:
                    await back.bind(DELIVER_EXCHANGE, routing_key=pattern)
            finally:
                await again.close()

        undo.add(f"bindings of {inbox}", restore)
        for pattern in added:
            await queue.bind(DELIVER_EXCHANGE, routing_key=pattern)
        for pattern in removed:
            await queue.unbind(DELIVER_EXCHANGE, routing_key=pattern)
    finally:
        await connection.close()
