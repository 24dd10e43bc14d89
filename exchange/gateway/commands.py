"""``lienthong gateway`` and ``lienthong system``: run the gateway, manage its systems.

Added to the command line by :func:`add_commands` (called from
:func:`exchange.cli.build_parser`), like the replay tool's commands.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import secrets
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from exchange.broker.topology import GATEWAY_USER
from exchange.commands import (
    EXIT_OK,
    CommandError,
    ServiceOptions,
    print_json,
    run,
    settings_from_args,
)
from exchange.settings import Settings

# A generated secret: 32 characters of URL-safe base64, 192 bits.
SECRET_BYTES = 24
MIN_SECRET_CHARS = 16


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    options: ServiceOptions,
) -> None:
    """Add ``lienthong gateway`` and ``lienthong system`` (add, list, disable, enable, rotate).

    The gateway uses RabbitMQ and PostgreSQL; the system commands only PostgreSQL.
    """
    database = [options.database]
    gateway = commands.add_parser(
        "gateway",
        parents=[options.amqp, options.database],
        help="serve the national axis protocol (VXP adapter) to document-management systems",
    )
    gateway.add_argument("--host", help="address to listen on (LIENTHONG_GATEWAY_HOST)")
    gateway.add_argument("--port", type=int, help="port (LIENTHONG_GATEWAY_PORT, 8280)")
    gateway.add_argument(
        "--base-path", help="the endpoint's path (LIENTHONG_GATEWAY_BASE_PATH, /XrdAdapter/adapter)"
    )
    gateway.add_argument(
        "--trust", help="CA certificates for signatures (LIENTHONG_GATEWAY_TRUST, LIENTHONG_TRUST)"
    )
    gateway.add_argument(
        "--keys", help="directory of agency keys to sign unsigned packages (LIENTHONG_GATEWAY_KEYS)"
    )
    gateway.add_argument("--tls-cert", help="TLS certificate, PEM (LIENTHONG_GATEWAY_TLS_CERT)")
    gateway.add_argument("--tls-key", help="TLS private key, PEM (LIENTHONG_GATEWAY_TLS_KEY)")
    gateway.add_argument(
        "--metrics-port",
        type=int,
        help="port of the Prometheus endpoint (LIENTHONG_GATEWAY_METRICS_PORT, 9128; 0: none)",
    )
    gateway.add_argument(
        "--metrics-host",
        help="address of the Prometheus endpoint (LIENTHONG_GATEWAY_METRICS_HOST, 127.0.0.1)",
    )
    gateway.set_defaults(handler=_command(_serve))

    user = commands.add_parser(
        "gateway-user",
        parents=[options.amqp, options.management, options.database],
        help="create the gateway's broker user with its permissions; prints its password once "
        "(recorded in the operator log of --database-url)",
    )
    user.add_argument(
        "name", nargs="?", default=GATEWAY_USER, help=f"the user's name (default {GATEWAY_USER})"
    )
    user.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input (default: generated)",
    )
    user.add_argument("--json", action="store_true")
    user.set_defaults(handler=_command(_gateway_user))

    system = commands.add_parser("system", help="systems that connect through the gateway")
    actions = system.add_subparsers(dest="system_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", parents=database, help="register a system; prints its secret")
    add.add_argument("system_id", metavar="SYSTEM_ID", help="the SDK's systemId, e.g. 00.53.W00")
    add.add_argument(
        "--agency",
        action="append",
        required=True,
        metavar="CODE",
        help="a registered agency the system acts for (repeat for each)",
    )
    _secret_options(add)
    add.add_argument(
        "--keys", help="the gateway's keys directory: says for which agencies it signs"
    )
    add.set_defaults(handler=_command(_add))

    listing = actions.add_parser("list", parents=database, help="the systems")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_command(_list))

    for name, enabled, text in (
        ("disable", False, "refuse a system's requests (its mailbox is kept)"),
        ("enable", True, "accept a disabled system's requests again"),
    ):
        action = actions.add_parser(name, parents=database, help=text)
        action.add_argument("system_id", metavar="SYSTEM_ID")
        action.set_defaults(handler=_command(_enabler(enabled)))

    rotate = actions.add_parser(
        "rotate-secret", parents=database, help="give a system a new secret; prints it once"
    )
    rotate.add_argument("system_id", metavar="SYSTEM_ID")
    _secret_options(rotate)
    rotate.set_defaults(handler=_command(_rotate))


def _secret_options(parser: argparse.ArgumentParser) -> None:
    given = parser.add_mutually_exclusive_group()
    given.add_argument("--secret", help="the secret (default: a generated one, printed once)")
    given.add_argument(
        "--secret-stdin",
        action="store_true",
        help="read the secret from the first line of standard input",
    )


def _command(
    body: Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        return run(body(args, settings_from_args(args)))

    return handler


def _secret(args: argparse.Namespace) -> str:
    """The secret the options give (``--secret``, ``--secret-stdin``), or a generated one."""
    given: str | None = args.secret
    if args.secret_stdin:
        given = sys.stdin.readline().rstrip("\r\n")
    if given is None:
        return secrets.token_urlsafe(SECRET_BYTES)
    if len(given) < MIN_SECRET_CHARS:
        raise CommandError(f"a secret needs at least {MIN_SECRET_CHARS} characters")
    return given


# -- lienthong gateway ------------------------------------------------------------


def gateway_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """The settings with the command's options over them."""
    overrides: dict[str, Any] = {
        f"gateway_{name}": value
        for name in ("host", "port", "base_path", "metrics_port", "metrics_host")
        if (value := getattr(args, name, None)) is not None
    }
    for name in ("trust", "keys", "tls_cert", "tls_key"):
        if (value := getattr(args, name, None)) is not None:
            overrides[f"gateway_{name}"] = Path(value)
    return settings.model_copy(update=overrides)


async def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from exchange import metrics
    from exchange.gateway.app import Gateway, GatewayServer, create_app
    from exchange.logs import configure_logging
    from exchange.pki import TrustStore
    from exchange.store.db import create_pool
    from exchange.store.migrate import migrate
    from exchange.store.roles import PrivilegedRoleError, judge_role, role_powers

    settings = gateway_settings(args, settings)
    configure_logging(settings.log_format)
    trust_path = settings.gateway_trust or settings.trust
    if trust_path is None:
        raise CommandError("no trust anchors: pass --trust CA.pem or set LIENTHONG_GATEWAY_TRUST")
    if (settings.gateway_tls_cert is None) != (settings.gateway_tls_key is None):
        raise CommandError("TLS needs both --tls-cert and --tls-key")
    keys = settings.gateway_keys
    if keys is not None and not keys.is_dir():
        raise CommandError(f"the keys directory {keys} does not exist")
    try:
        trust = TrustStore.load(trust_path)
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot read the trust anchors {trust_path}: {error}") from None
    async with await create_pool(settings) as pool:
        # A gateway's login changes no schema; off this host that is
        # refused, on it a warning and the gauge say so.
        async with pool.acquire() as conn:
            powers = await role_powers(conn)
        metrics.DATABASE_ROLE_PRIVILEGED.set(1 if powers.can_change_schema else 0)
        try:
            warning = judge_role(powers, settings.database_url, "gateway")
        except PrivilegedRoleError as error:
            raise CommandError(str(error)) from None
        if warning is not None:
            logging.getLogger("exchange.gateway").warning("%s", warning)
        # The gateway's tables may be newer than the database (migration
        # 0009): applied here when its role owns the schema (development),
        # else migrate() says to run `lienthong init` as the owner.
        await migrate(pool)
    port = settings.gateway_metrics_port
    gateway = Gateway(
        settings, trust=trust, keys_dir=keys, trust_path=trust_path, measured=port != 0
    )
    # SIGHUP reads the CAs' revocation lists again, as it does for the workers.
    signal.signal(signal.SIGHUP, lambda *_: gateway.reload_revocations())
    config = uvicorn.Config(
        create_app(gateway),
        host=settings.gateway_host,
        port=settings.gateway_port,
        ssl_certfile=None if settings.gateway_tls_cert is None else str(settings.gateway_tls_cert),
        ssl_keyfile=None if settings.gateway_tls_key is None else str(settings.gateway_tls_key),
        lifespan="on",
        log_config=None,
        access_log=False,
        # SIGTERM: stop accepting, finish the requests in progress (at most
        # this long), then the mover finishes the messages it is inserting.
        timeout_graceful_shutdown=30,
    )
    server = GatewayServer(config)
    with contextlib.ExitStack() as opened:
        if port:
            try:
                stop = metrics.serve(
                    port,
                    settings.gateway_metrics_host,
                    hint="give each gateway process a port of its own with --metrics-port "
                    "(or LIENTHONG_GATEWAY_METRICS_PORT), or 0 for none",
                )
                opened.callback(stop)
            except metrics.MetricsEndpointError as error:
                raise CommandError(str(error)) from None
        await server.serve()
    if not server.started:
        raise CommandError(
            f"the gateway could not listen on {settings.gateway_host}:{settings.gateway_port}"
        )
    return EXIT_OK


# -- lienthong gateway-user -------------------------------------------------------------


async def _gateway_user(args: argparse.Namespace, settings: Settings) -> int:
    from exchange.operator_log import detail
    from exchange.registry import provision_gateway_user, vhost_of

    detail(vhost=vhost_of(settings.amqp_url))
    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CommandError("--password-stdin: no password on standard input")
    user = await provision_gateway_user(settings, args.name, password=password)
    if args.json:
        print_json({"user": user.name, "password": user.password, "amqp_url": user.amqp_url})
        return EXIT_OK
    print(f"broker user {user.name}: publishes to lienthong.submit, reads every agency's queues")
    print(f"password (shown once): {user.password}")
    print(f"the gateway's LIENTHONG_AMQP_URL: {user.amqp_url}")
    print(f'every worker\'s LIENTHONG_GATEWAY_USERS must list it: ["{user.name}"]')
    return EXIT_OK


# -- lienthong system -----------------------------------------------------------------


async def _add(args: argparse.Namespace, settings: Settings) -> int:
    from exchange.agency import AgencyCode, InvalidAgencyCode
    from exchange.store import gateway as store
    from exchange.store.db import connect

    try:
        agencies = list(dict.fromkeys(AgencyCode.parse(code) for code in args.agency))
    except InvalidAgencyCode as error:
        raise CommandError(str(error)) from None
    secret = _secret(args)
    conn = await connect(settings)
    try:
        system = await store.add_system(conn, args.system_id, secret, agencies)
    except store.SystemExistsError:
        raise CommandError(
            f"system {args.system_id} exists; `lienthong system rotate-secret` gives it a secret"
        ) from None
    except store.UnknownAgencyError as error:
        raise CommandError(
            f"not registered: {error}; `lienthong agency add` registers an agency first"
        ) from None
    except Exception as error:
        if "gateway_system_id_format" in str(error):
            raise CommandError(
                "a system id is 1 to 64 letters, digits, dots, dashes or underscores"
            ) from None
        raise
    finally:
        await conn.close()
    print(f"registered system {system.system_id} for {', '.join(map(str, system.agencies))}")
    print(f"secret (shown once): {secret}")
    if args.keys:
        keys = Path(args.keys)
        for agency in system.agencies:
            if (keys / f"{agency}.key.pem").exists():
                print(f"  {agency}: the gateway signs its unsigned packages with its key")
            else:
                print(f"  {agency}: no key in {keys}: its unsigned packages are refused")
    return EXIT_OK


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    from exchange.store import gateway as store
    from exchange.store.db import connect

    conn = await connect(settings)
    try:
        systems = await store.list_systems(conn)
    finally:
        await conn.close()
    if args.json:
        print_json(
            [
                {
                    "system_id": s.system_id,
                    "enabled": s.enabled,
                    "agencies": [str(a) for a in s.agencies],
                    "created_at": s.created_at.isoformat(),
                    "secret_set_at": s.secret_set_at.isoformat(),
                    "last_seen_at": s.last_seen_at.isoformat() if s.last_seen_at else None,
                }
                for s in systems
            ]
        )
        return EXIT_OK
    for s in systems:
        seen = s.last_seen_at.strftime("%Y-%m-%d %H:%M") if s.last_seen_at else "never"
        state = "enabled" if s.enabled else "disabled"
        print(f"{s.system_id}  {state}  last seen {seen}  {', '.join(map(str, s.agencies))}")
    if not systems:
        print("no systems; `lienthong system add` registers one")
    return EXIT_OK


def _enabler(
    enabled: bool,
) -> Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]:
    async def set_enabled(args: argparse.Namespace, settings: Settings) -> int:
        from exchange.store import gateway as store
        from exchange.store.db import connect

        conn = await connect(settings)
        try:
            found = await store.set_enabled(conn, args.system_id, enabled)
        finally:
            await conn.close()
        if not found:
            raise CommandError(f"no system {args.system_id}")
        print(f"system {args.system_id} {'enabled' if enabled else 'disabled'}")
        return EXIT_OK

    return set_enabled


async def _rotate(args: argparse.Namespace, settings: Settings) -> int:
    from exchange.store import gateway as store
    from exchange.store.db import connect

    secret = _secret(args)
    conn = await connect(settings)
    try:
        found = await store.set_secret(conn, args.system_id, secret)
    finally:
        await conn.close()
    if not found:
        raise CommandError(f"no system {args.system_id}")
    print(f"new secret of {args.system_id} (shown once; the old one no longer works): {secret}")
    return EXIT_OK
