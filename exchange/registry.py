"""Setting up the exchange: its schema and core topology, and each agency on it.

:func:`prepare` brings the database schema and the core broker topology up
to date. :func:`register_agency` registers an agency (directory row, broker
user, queues), :func:`change_agency` changes a registration, and
:func:`disable_agency` / :func:`enable_agency` take its access away and
give it back.

An agency's broker user is never one of the exchange's own
(:attr:`Settings.trusted_broker_users`), and lienthong only touches broker
users it made (tagged :data:`~exchange.broker.admin.AGENCY_USER_TAG`): a
user that exists without the tag is refused, and one with it (left by an
earlier registration) gets a new password only when asked to
(``rotate_password``).

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
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from aio_pika.abc import AbstractRobustConnection

from exchange.agency import AgencyCode
from exchange.broker.admin import AGENCY_USER_TAG, BrokerAdmin
from exchange.broker.connection import connect, declare, queue_counts
from exchange.broker.topology import (
    DELIVER_EXCHANGE,
    agency_permissions,
    agency_topology,
    core_topology,
    inbox_queue,
    queue_policies,
    validate_subscription,
)
from exchange.pki import agency_code_of, check_policy, fingerprint
from exchange.reasons import Rejection
from exchange.settings import Settings, amqp_addresses, certificate_login
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
    # The broker user the agency had before, deleted (agency set --broker-user).
    replaced_user: str | None = None

    @property
    def certificate_login(self) -> bool:
        """Whether the agency logs in with its certificate (no password exists)."""
        return logs_in_with_certificate(self.agency)


def certificate_logins(pems: Sequence[str]) -> set[str]:
    """The broker users these certificates log in as with ``auth=external``."""
    from cryptography import x509

    return {certificate_login(x509.load_pem_x509_certificate(pem.encode())) for pem in pems}


def logs_in_with_certificate(agency: Agency) -> bool:
    """Whether ``agency``'s broker user is the subject of one of its certificates.

    Such a user has no password: the agency logs in with the certificate it
    signs with (``auth=external``), and nobody can rotate, leak or hand over
    a password.
    """
    return agency.broker_user in certificate_logins(agency.certificates)


def owner_url(settings: Settings) -> str:
    """The URL migrations run with: the schema owner's, else the processes' own."""
    return settings.owner_database_url or settings.database_url


async def prepare(settings: Settings) -> int:
    """Bring the database schema (as its owner), the core topology and the limits up to date.

    Idempotent. Returns how many agency users got their limits
    (:func:`apply_limits`).
    """
    pool = await create_pool(settings, dsn=owner_url(settings))
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
    return await apply_limits(settings)


async def apply_limits(settings: Settings) -> int:
    """Apply the settings' limits: queue bounds (policies), and every agency user's limits.

    The inbox and status queues' bounds are policies of the vhost
    (:func:`exchange.broker.topology.queue_policies`); each enabled agency
    whose broker user lienthong made gets the connection and channel limits
    and the topic permission of :func:`limit_agency_user`. Returns how many
    agency users were limited. Run by ``lienthong init``: changing a limit
    in the settings and running it again changes it for every agency.
    """
    admin = BrokerAdmin.from_settings(settings)
    vhost = vhost_of(settings.amqp_url)
    for policy in queue_policies(settings.inbox_max_bytes, settings.status_max_bytes):
        await admin.set_policy(vhost, policy)
    conn = await db_connect(settings)
    try:
        agencies = await queries.list_agencies(conn)
    finally:
        await conn.close()
    limited = 0
    for agency in agencies:
        if agency.disabled or agency.broker_user in settings.trusted_broker_users:
            continue
        tags = await admin.user_tags(agency.broker_user)
        if tags is None or AGENCY_USER_TAG not in tags:
            continue  # not lienthong's user: whoever manages it sets its limits
        await limit_agency_user(settings, admin, agency.broker_user)
        limited += 1
    return limited


async def limit_agency_user(settings: Settings, admin: BrokerAdmin, user: str) -> None:
    """Give an agency's broker user the limits of the settings (connections, channels, keys)."""
    await admin.limit_agency_user(
        vhost_of(settings.amqp_url),
        user,
        max_connections=settings.agency_max_connections,
        max_channels=settings.agency_max_channels,
    )


def vhost_of(amqp_url: str) -> str:
    """The RabbitMQ vhost an AMQP URL points at (``/`` when it names none)."""
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


# The query parameters of an AMQP URL that name this process's own client
# certificate: never handed to an agency.
_CLIENT_CERTIFICATE_PARAMETERS = ("certfile", "keyfile", "auth")


def _host_port(amqp_url: str) -> str:
    """``host:port`` of every node ``amqp_url`` names (a cluster's URL names several)."""
    return ",".join(_one_host_port(address) for address in amqp_addresses(amqp_url))


def _one_host_port(amqp_url: str) -> str:
    parts = urlsplit(amqp_url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    default_port = 5671 if parts.scheme == "amqps" else 5672
    return f"{host}:{parts.port or default_port}"


def url_for_user(amqp_url: str, user: str, password: str) -> str:
    """``amqp_url`` with another user and password (same hosts, vhost and TLS parameters)."""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{_host_port(amqp_url)}"
    return urlunsplit(urlsplit(amqp_url)._replace(netloc=netloc))


def url_for_certificate(amqp_url: str, certfile: str, keyfile: str) -> str:
    """``amqp_url`` logging in with a client certificate (``auth=external``), no password.

    Same hosts, vhost and CA (``cafile``); the certificate and key are the
    given files, in place of this process's own.
    """
    parts = urlsplit(amqp_url)
    query = [
        (name, value)
        for name, value in parse_qsl(parts.query)
        if name not in _CLIENT_CERTIFICATE_PARAMETERS
    ]
    query += [("auth", "external"), ("certfile", certfile), ("keyfile", keyfile)]
    return urlunsplit(parts._replace(netloc=_host_port(amqp_url), query=urlencode(query, safe="/")))


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


def _refuse_trusted_user(settings: Settings, user: str) -> None:
    """Refuse a broker user of the exchange itself as an agency's."""
    if user in settings.trusted_broker_users:
        raise RegistrationError(
            f"broker user {user!r} is the exchange's own (LIENTHONG_AMQP_URL, "
            "LIENTHONG_EXCHANGE_USERS, LIENTHONG_GATEWAY_USERS or the management API's); "
            "an agency needs a user of its own (--broker-user)"
        )


async def _refuse_foreign_user(admin: BrokerAdmin, user: str, *, rotate_password: bool) -> bool:
    """Whether ``user`` exists; refuse one lienthong did not make, or one to reset unasked."""
    tags = await admin.user_tags(user)
    if tags is None:
        return False
    if AGENCY_USER_TAG not in tags:
        raise RegistrationError(
            f"broker user {user!r} exists and lienthong did not create it (it lacks the tag "
            f"{AGENCY_USER_TAG}); choose another --broker-user, or --no-broker-user to "
            "leave the broker to whoever manages that user"
        )
    if not rotate_password:
        raise RegistrationError(
            f"broker user {user!r} exists already (left by an earlier registration); "
            "--rotate-password gives it a new password, which whoever holds the old one loses"
        )
    return True


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


async def _declare_queues(settings: Settings, code: AgencyCode, undo: _Undo) -> None:
    """Declare the agency's queues; the undo deletes those that did not exist before."""
    topology = agency_topology(code)
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
    admin = BrokerAdmin.from_settings(settings)
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
    rotate_password: bool = False,
    password_login: bool = False,
) -> Registration:
    """Register a new agency: directory row, broker user, queues; all of them or none.

    An agency with a certificate logs in to the broker with it: its broker
    user is the certificate's subject (:func:`exchange.settings.certificate_login`),
    without a password. ``password_login``, or no certificate, makes a
    password user instead (``broker_user``, by default the code).

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

    :class:`RegistrationError` for a broker user of the exchange itself, one
    that exists without lienthong's tag, or one with the tag (left by an
    earlier registration) unless ``rotate_password``: its password is reset
    only when asked.
    """
    registered = _check_certificates(
        code, [*([certificate_pem] if certificate_pem else []), *certificates]
    )
    patterns = _patterns(subscriptions)
    with_certificate = bool(registered) and not password_login
    if with_certificate:
        if password is not None:
            raise RegistrationError(
                "the agency logs in with its certificate, which needs no password; "
                "add --no-certificate-login for a password user instead"
            )
        user = certificate_logins([registered[0][1]]).pop()
        if broker_user is not None and broker_user != user:
            raise RegistrationError(
                f"the agency logs in with its certificate, as broker user {user!r}, not "
                f"{broker_user!r}; drop --broker-user, or add --no-certificate-login"
            )
    else:
        user = broker_user or str(code)
    _refuse_trusted_user(settings, user)
    admin = BrokerAdmin.from_settings(settings) if provision_user else None
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
        existed = False
        if admin is not None:
            # A certificate user has no password to reset: one lienthong made
            # earlier is taken over as it is.
            existed = await _refuse_foreign_user(
                admin, user, rotate_password=rotate_password or with_certificate
            )
        await _declare_queues(settings, code, undo)
        if admin is not None:
            # Last: a password reset cannot be undone.
            if not with_certificate:
                secret = password or secrets.token_urlsafe(PASSWORD_BYTES)
            if not existed:
                undo.add(f"broker user {user}", lambda: admin.delete_user(user))
            await admin.provision_agency_user(
                code, secret, vhost=vhost_of(settings.amqp_url), user=user
            )
            await limit_agency_user(settings, admin, user)
    return Registration(agency, user, secret, _login_url(settings, agency, secret))


def _login_url(settings: Settings, agency: Agency, secret: str | None) -> str:
    """How ``agency`` logs in: with its password, or with its certificate (files of its own)."""
    if logs_in_with_certificate(agency):
        return url_for_certificate(settings.amqp_url, "AGENCY.cert.pem", "AGENCY.key.pem")
    return (
        url_for_user(settings.amqp_url, agency.broker_user, secret) if secret else settings.amqp_url
    )


async def change_agency(
    settings: Settings,
    code: AgencyCode,
    *,
    name: str | None = None,
    certificate_pem: str | None = None,
    certificates: Sequence[str] | None = None,
    allow_sha1: bool | None = None,
    subscriptions: Sequence[str] | None = None,
    broker_user: str | None = None,
    password: str | None = None,
    rotate_password: bool = False,
) -> Registration:
    """Change what is given of a registered agency; what is not given stays as it is.

    ``certificate_pem`` or ``certificates`` replace every registered
    certificate (:func:`add_certificate` adds one, for a rollover).

    ``subscriptions`` replaces the subscription list (and the inbox's
    bindings). ``rotate_password`` gives the broker user a new password
    (``password``, or a generated one). ``broker_user`` moves the agency to
    a new broker user (refused as :func:`register_agency` refuses one; its
    password is ``password`` or generated) and deletes the old one once the
    directory names the new. All or nothing, as :func:`register_agency`.
    """
    replacing = None
    if certificate_pem is not None or certificates is not None:
        replacing = _check_certificates(
            code, [*([certificate_pem] if certificate_pem else []), *(certificates or ())]
        )
    patterns = None if subscriptions is None else _patterns(subscriptions)
    if password is not None and not rotate_password and broker_user is None:
        raise RegistrationError(
            "a password is given, but nothing to give it to: add --rotate-password (or a new "
            "--broker-user)"
        )
    secret = None
    replaced = None
    vhost = vhost_of(settings.amqp_url)
    async with _all_or_nothing(settings) as (conn, undo):
        before = await queries.get_agency(conn, code)
        if before is None:
            raise RegistrationError(
                f"agency {code} is not registered; `lienthong agency add {code}` registers it"
            )
        # An agency that logs in with its certificate follows its new one
        # when the subject changes.
        new_pems = [pem for _, pem in replacing or ()]
        follows = (
            bool(new_pems)
            and broker_user is None
            and logs_in_with_certificate(before)
            and before.broker_user not in certificate_logins(new_pems)
        )
        if follows:
            broker_user = certificate_logins(new_pems[-1:]).pop()
        moving = broker_user is not None and broker_user != before.broker_user
        if moving:
            assert broker_user is not None
            _refuse_trusted_user(settings, broker_user)
            if before.disabled:
                raise RegistrationError(
                    f"agency {code} is disabled; `lienthong agency enable {code}` first"
                )
        try:
            agency = await queries.update_agency(
                conn,
                code,
                name=name,
                certificates=replacing,
                allow_sha1=allow_sha1,
                subscriptions=patterns,
                broker_user=broker_user if moving else None,
            )
        except queries.AgencyConflictError as error:
            raise RegistrationError(str(error)) from None
        if patterns is not None:
            await _unbind_subscriptions(settings, code, [*before.subscriptions, *patterns])
        if moving:
            assert broker_user is not None
            admin = BrokerAdmin.from_settings(settings)
            await _refuse_foreign_user(admin, broker_user, rotate_password=False)
            secret = None if follows else password or secrets.token_urlsafe(PASSWORD_BYTES)
            new_user = broker_user
            undo.add(f"broker user {new_user}", lambda: admin.delete_user(new_user))
            await admin.provision_agency_user(code, secret, vhost=vhost, user=new_user)
            await limit_agency_user(settings, admin, new_user)
            replaced = before.broker_user
        elif rotate_password:
            _refuse_trusted_user(settings, before.broker_user)
            if logs_in_with_certificate(before):
                raise RegistrationError(
                    f"agency {code} logs in with its certificate: it has no password to rotate"
                )
            admin = BrokerAdmin.from_settings(settings)
            secret = password or secrets.token_urlsafe(PASSWORD_BYTES)
            if before.disabled:
                # A new password, not the access `agency enable` gives back.
                await admin.create_user(before.broker_user, secret, tags=AGENCY_USER_TAG)
            else:
                await admin.provision_agency_user(
                    code, secret, vhost=vhost, user=before.broker_user
                )
                await limit_agency_user(settings, admin, before.broker_user)
    if replaced is not None and replaced not in settings.trusted_broker_users:
        # After the commit: the directory no longer names it, and deleting a
        # user (which closes its connections) cannot be undone.
        await BrokerAdmin.from_settings(settings).delete_user(replaced)
    return Registration(
        agency, agency.broker_user, secret, _login_url(settings, agency, secret), replaced
    )


async def set_agency_rate(
    settings: Settings, code: AgencyCode, *, rate_per_s: float | None, burst: int | None
) -> None:
    """Set how fast ``code`` may publish (``None``, ``None``: the settings' defaults).

    The workers read it with every message (one statement with the token
    bucket), so it holds at once.
    """
    conn = await db_connect(settings)
    try:
        await queries.set_agency_rate(conn, code, rate_per_s=rate_per_s, burst=burst)
    except queries.AgencyNotFoundError as error:
        raise RegistrationError(str(error)) from None
    finally:
        await conn.close()


async def disable_agency(settings: Settings, code: AgencyCode) -> Agency:
    """Take ``code``'s access away, keeping its registration and history.

    The directory marks it disabled (the workers refuse what it publishes,
    ``REJECTED_SENDER_DISABLED``, from their next directory reload). Its
    broker user, when lienthong made it, is deleted: RabbitMQ then closes
    its connections at once, where taking permissions away would leave open
    channels working. A user managed elsewhere loses its permissions in the
    vhost and its connections are closed. The queues and every record naming
    the agency stay; :func:`enable_agency` gives the access back.
    """
    vhost = vhost_of(settings.amqp_url)
    async with _all_or_nothing(settings) as (conn, undo):
        try:
            agency = await queries.set_agency_disabled(conn, code, True)
        except queries.AgencyNotFoundError as error:
            raise RegistrationError(str(error)) from None
        user = agency.broker_user
        if user in settings.trusted_broker_users:
            return agency  # never the exchange's own user; the workers refuse it anyway
        admin = BrokerAdmin.from_settings(settings)
        tags = await admin.user_tags(user)
        if tags is None:
            return agency
        if AGENCY_USER_TAG in tags:
            # Last step: a deleted user cannot be brought back with its password.
            await admin.delete_user(user)
            return agency
        had = await admin.get_permissions(vhost, user)
        if had is not None:
            undo.add(f"permissions of {user}", lambda: admin.set_permissions(vhost, user, had))
            await admin.clear_permissions(vhost, user)
        await admin.close_connections(user, reason=f"agency {code} disabled")
    return agency


async def enable_agency(
    settings: Settings, code: AgencyCode, *, password: str | None = None
) -> Registration:
    """Give a disabled agency its access back; its broker user gets a new password.

    The user :func:`disable_agency` deleted is made again, with ``password``
    or a generated one (in the result: the agency's software needs it). A
    user managed elsewhere gets its permissions back and keeps its password.
    """
    vhost = vhost_of(settings.amqp_url)
    secret = None
    async with _all_or_nothing(settings) as (conn, undo):
        try:
            agency = await queries.set_agency_disabled(conn, code, False)
        except queries.AgencyNotFoundError as error:
            raise RegistrationError(str(error)) from None
        user = agency.broker_user
        _refuse_trusted_user(settings, user)
        admin = BrokerAdmin.from_settings(settings)
        tags = await admin.user_tags(user)
        if tags is None or AGENCY_USER_TAG in tags:
            if not logs_in_with_certificate(agency):
                secret = password or secrets.token_urlsafe(PASSWORD_BYTES)
            if tags is None:
                undo.add(f"broker user {user}", lambda: admin.delete_user(user))
            await admin.provision_agency_user(code, secret, vhost=vhost, user=user)
            await limit_agency_user(settings, admin, user)
        else:
            await admin.set_permissions(vhost, user, agency_permissions(code))
    return Registration(agency, user, secret, _login_url(settings, agency, secret))


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


async def _unbind_subscriptions(
    settings: Settings, code: AgencyCode, patterns: Sequence[str]
) -> None:
    """Take subscription patterns off the inbox's bindings, where an earlier version bound them.

    Subscription copies are the workers' (published and recorded one by
    one); a pattern binding left in place would deliver a second,
    unrecorded copy. Unbinding what is not bound is harmless.
    """
    own = code.routing_key
    connection = await connect(settings.amqp_url, name="lienthong-registry")
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(inbox_queue(code), ensure=False)
        for pattern in dict.fromkeys(patterns):
            if pattern != own:
                await queue.unbind(DELIVER_EXCHANGE, routing_key=pattern)
    finally:
        await connection.close()
