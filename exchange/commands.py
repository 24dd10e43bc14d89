"""What every ``lienthong`` command shares: exit statuses, errors, settings, JSON, times.

:mod:`exchange.cli` and the operator tools (:mod:`exchange.replay`,
:mod:`exchange.report`, :mod:`exchange.audit`, :mod:`exchange.benchmark`) all
build their commands from these pieces, so a failure reads the same whatever
command met it: one line, ``lienthong: <what failed and what to do>``, exit
status 2 (:func:`describe_error` turns any exception into that line).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import ssl
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from exchange import event_loop
from exchange.edxml.model import VIETNAM_TIME

if TYPE_CHECKING:
    from types import TracebackType

    from exchange.settings import Settings

# Exit statuses: 0 all good, 1 some input was refused, 2 the command could not
# run, 130 interrupted (Ctrl-C), as shells report SIGINT.
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A command could not run; the message is for the person at the terminal."""


# -- settings -------------------------------------------------------------------

# Options of the commands that map to a setting of the same name.
_OVERRIDDEN = ("amqp_url", "database_url", "rabbitmq_api_url", "trust", "metrics_host")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment (and ``.env``), overridden by the command's options."""
    from exchange.settings import Settings

    overrides = {
        name: value for name in _OVERRIDDEN if (value := getattr(args, name, None)) is not None
    }
    return Settings(**overrides)


def run(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine on the project's event loop; its exceptions propagate.

    ``main()`` turns whatever escapes into one line (:func:`describe_error`).
    """
    return event_loop.run(coroutine)


@dataclass(frozen=True)
class ServiceOptions:
    """The connection options, one parent parser per service, so each command offers
    only the options of the services it uses."""

    amqp: argparse.ArgumentParser
    database: argparse.ArgumentParser
    management: argparse.ArgumentParser

    @classmethod
    def build(cls) -> ServiceOptions:
        """``--amqp-url``, ``--database-url``, ``--rabbitmq-api-url`` as three parents."""
        amqp = argparse.ArgumentParser(add_help=False)
        amqp.add_argument("--amqp-url", help="RabbitMQ (default LIENTHONG_AMQP_URL)")
        database = argparse.ArgumentParser(add_help=False)
        database.add_argument("--database-url", help="PostgreSQL (default LIENTHONG_DATABASE_URL)")
        management = argparse.ArgumentParser(add_help=False)
        management.add_argument(
            "--rabbitmq-api-url",
            help="RabbitMQ management API (default LIENTHONG_RABBITMQ_API_URL)",
        )
        return cls(amqp, database, management)

    @property
    def every(self) -> argparse.ArgumentParser:
        """All three, for the commands that use every service."""
        return argparse.ArgumentParser(
            add_help=False, parents=[self.amqp, self.database, self.management]
        )


# -- JSON -----------------------------------------------------------------------


def print_json(value: Any, *, lines: bool = False) -> None:
    """Print ``value`` as JSON on stdout: indented, or one object a line with ``lines``.

    The shape every command follows is in docs/cli.md: a command's result is
    one JSON value (an object, or a list of objects); a command that follows
    a queue prints one object a line, as each arrives. Keys are snake_case,
    times ISO 8601 with their offset, Vietnamese text as it is (not escaped).
    """
    if lines:
        print(json.dumps(value, ensure_ascii=False, default=str), flush=True)
    else:
        print(json.dumps(value, ensure_ascii=False, indent=2, default=str))


# -- times ----------------------------------------------------------------------

_AGE = re.compile(r"(?P<amount>[0-9]+)\s*(?P<unit>[smhdw])")
_UNITS = {
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


class TimeExpressionError(ValueError):
    """A ``--since`` or ``--until`` value that is not a time."""


def parse_time(text: str, *, now: datetime) -> datetime:
    """An instant from the command line (every ``--since`` and ``--until``).

    ``90s``, ``30m``, ``2h``, ``7d``, ``2w`` mean that long before ``now``;
    ``2024-05-01`` is its midnight and ``2024-05-01T14:30`` that time, in
    Vietnam time unless an offset is given (``2024-05-01T07:30+00:00``).
    """
    text = text.strip()
    if age := _AGE.fullmatch(text):
        return now - int(age["amount"]) * _UNITS[age["unit"]]
    try:
        if len(text) == len("2024-05-01"):
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=VIETNAM_TIME)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise TimeExpressionError(
            f"{text!r} is not a time: give a span back from now (30m, 2h, 7d, 2w), "
            "a date (2024-05-01) or a date and time (2024-05-01T14:30, Vietnam time "
            "unless an offset is given)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=VIETNAM_TIME)


# -- errors as one line ---------------------------------------------------------

RABBITMQ = "RabbitMQ"
POSTGRESQL = "PostgreSQL"
MANAGEMENT_API = "the RabbitMQ management API"

# Which service an exception came from, when its type does not say: the
# package of the innermost frames of its traceback.
_SERVICE_OF_MODULE = (
    ("asyncpg", POSTGRESQL),
    ("exchange.store", POSTGRESQL),
    ("aiormq", RABBITMQ),
    ("aio_pika", RABBITMQ),
    ("exchange.broker.admin", MANAGEMENT_API),
    ("urllib", MANAGEMENT_API),
    ("exchange.broker", RABBITMQ),
)


def address_of(url: str) -> str:
    """Where ``url`` points, for a message: scheme, user, host, port and path, never a password."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        hosts = f"{parts.hostname or ''}{port}"
    except ValueError:
        # Not one host and port: a list of them (a PostgreSQL primary and its
        # standbys, "db1:5432,db2:5432"), shown as written.
        hosts = parts.netloc.rpartition("@")[2]
        if "," not in hosts:
            return "(an unreadable URL)"
    user = f"{unquote(parts.username)}@" if parts.username else ""
    return f"{parts.scheme}://{user}{hosts}{parts.path}"


def _user_of(url: str) -> str:
    try:
        return unquote(urlsplit(url).username or "") or "(none)"
    except ValueError:
        return "(none)"


def _service_of(error: BaseException) -> str | None:
    """The service an exception came from, read from its type, then its traceback."""
    module = type(error).__module__
    for prefix, service in _SERVICE_OF_MODULE:
        if module.startswith(prefix):
            return service
    found = None
    traceback: TracebackType | None = error.__traceback__
    while traceback is not None:
        name = traceback.tb_frame.f_globals.get("__name__", "")
        for prefix, service in _SERVICE_OF_MODULE:
            if name.startswith(prefix):
                found = service
        traceback = traceback.tb_next
    return found


def _root_cause(error: BaseException) -> BaseException:
    """The OS-level error under a library's wrapper (aiormq wraps refusals and TLS errors)."""
    seen = {id(error)}
    current = error
    while True:
        inner = current.__cause__ or current.__context__
        if inner is None or id(inner) in seen or not isinstance(inner, OSError):
            return current
        seen.add(id(inner))
        current = inner


def _network_cause(error: BaseException) -> str | None:
    """Refused, unknown host, TLS or timeout, in words; ``None`` if it is none of those."""
    cause = _root_cause(error)
    text = str(cause)
    if isinstance(cause, ssl.SSLError) or "SSL" in text:
        return f"TLS failed ({text}); is the port a TLS port, and the URL's scheme right?"
    if isinstance(cause, ConnectionRefusedError) or "Connect call failed" in text:
        return "connection refused; is it running, and is the port right?"
    if isinstance(cause, socket.gaierror) or "Name or service not known" in text:
        return "unknown host name"
    if isinstance(cause, TimeoutError | socket.timeout):
        return "no answer in time"
    if isinstance(cause, ConnectionResetError | BrokenPipeError):
        return "the connection was closed by the other side"
    if isinstance(cause, OSError) and cause.errno is not None:
        return cause.strerror or text
    return None


def _rabbitmq(error: BaseException, url: str | None) -> str:
    from exchange.broker.connection import broker_user_of, is_refused_login

    where = f"{RABBITMQ} at {address_of(url)}" if url else RABBITMQ
    option = "--amqp-url or LIENTHONG_AMQP_URL"
    if is_refused_login(error):
        user = broker_user_of(url) if url else "(given)"
        return (
            f"{where}: authentication failed for user {user} (ACCESS_REFUSED); "
            f"check the user and password in {option}"
        )
    text = str(error)
    if "Connection.Close" in text or "NOT_ALLOWED" in text:
        vhost = unquote(urlsplit(url).path[1:]) or "/" if url else "(given)"
        return (
            f"{where}: the broker refused vhost {vhost!r} (NOT_ALLOWED: it does not exist, "
            f"or the user may not use it); check {option}"
        )
    cause = _network_cause(error)
    if cause is not None:
        return f"{where}: {cause}"
    return f"{where}: {text or type(error).__name__}"


def _postgresql(error: BaseException, url: str | None) -> str:
    import asyncpg

    where = f"{POSTGRESQL} at {address_of(url)}" if url else POSTGRESQL
    option = "--database-url or LIENTHONG_DATABASE_URL"
    if isinstance(error, asyncpg.InvalidPasswordError):
        return (
            f"{where}: authentication failed for user {_user_of(url) if url else '(given)'}; "
            f"check the user and password in {option}"
        )
    if isinstance(error, asyncpg.InvalidAuthorizationSpecificationError):
        return f"{where}: {error}; check the user in {option}"
    if isinstance(error, asyncpg.InvalidCatalogNameError):
        return f"{where}: {error}; create it (createdb) or check {option}"
    if isinstance(error, asyncpg.UndefinedTableError):
        return f"{where}: {error}; is the database migrated? `lienthong init` migrates it"
    if isinstance(error, asyncpg.PostgresError):
        return f"{where}: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    if isinstance(error, asyncpg.TargetServerAttributeNotMatched):
        return (
            f"{where}: no host is a writable primary (target_session_attrs); "
            "is a standby being promoted?"
        )
    text = str(error)
    if "SSL" in text:
        return f"{where}: TLS failed ({text}); check sslmode in {option}"
    cause = _network_cause(error)
    return f"{where}: {cause or text or type(error).__name__}"


def _management_api(error: BaseException, url: str | None) -> str:
    from exchange.broker.admin import BrokerAdminError

    where = f"{MANAGEMENT_API} at {address_of(url)}" if url else MANAGEMENT_API
    option = "--rabbitmq-api-url or LIENTHONG_RABBITMQ_API_URL"
    if isinstance(error, BrokerAdminError):
        if error.status == 401:
            user = _user_of(url) if url else "(given)"
            return (
                f"{where}: authentication failed for user {user} (HTTP 401); "
                f"check the user and password in {option}"
            )
        if error.status is None:
            return f"{where}: no answer: {error.detail} Check {option}."
        return f"{where}: {error.method} {error.path} failed (HTTP {error.status}): {error.detail}"
    cause = _network_cause(error)
    return f"{where}: {cause or str(error) or type(error).__name__}"


def _settings_error(error: Any) -> str:
    """A pydantic validation error of the settings, as the setting and what is wrong."""
    problems = []
    for item in error.errors():
        if not item.get("loc"):
            # A rule over several settings (Settings' model validator) names
            # the setting in its own message.
            message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(message)
            continue
        name = "_".join(str(part) for part in item.get("loc", ()))
        value = item.get("input")
        shown = f" = {value!r}" if isinstance(value, str | int | float) else ""
        problems.append(f"LIENTHONG_{name.upper()}{shown}: {item.get('msg', 'invalid')}")
    return "bad setting " + "; ".join(problems)


def describe_error(error: BaseException, settings: Settings | None = None) -> str:
    """One line for any failure of a command: what failed, where, and what to do.

    ``settings`` (the command's, when they could be read) give the addresses
    of the services; passwords never appear.
    """
    import pydantic

    from exchange.broker.admin import BrokerAdminError, InvalidApiUrl
    from exchange.installation import BrokenInstallation
    from exchange.reasons import Rejection
    from exchange.settings import SettingsError

    if isinstance(error, CommandError):
        return str(error)
    if isinstance(error, pydantic.ValidationError):
        return _settings_error(error)
    if isinstance(error, Rejection):
        return str(error)
    # Errors that say what is wrong and what to do themselves (a shipped file
    # missing: BrokenInstallation), before any guess at the service.
    if isinstance(error, InvalidApiUrl | SettingsError | BrokenInstallation):
        return str(error)
    if isinstance(error, BrokerAdminError):
        return _management_api(error, None if settings is None else settings.rabbitmq_api_url)
    service = _service_of(error)
    if service == RABBITMQ:
        return _rabbitmq(error, None if settings is None else settings.amqp_url)
    if service == POSTGRESQL:
        return _postgresql(error, None if settings is None else settings.database_url)
    if service == MANAGEMENT_API:
        return _management_api(error, None if settings is None else settings.rabbitmq_api_url)
    if isinstance(error, OSError) and error.filename is not None:
        return f"cannot use {error.filename}: {error.strerror or error}"
    text = str(error).splitlines()[0] if str(error) else ""
    return (
        f"unexpected error: {type(error).__name__}{': ' + text if text else ''} "
        "(run again with --debug for the details)"
    )


def report_error(error: BaseException, settings: Settings | None, *, debug: bool) -> int:
    """Print ``error`` as one ``lienthong:`` line on stderr (and the traceback with ``debug``)."""
    if debug:
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    print(f"lienthong: {describe_error(error, settings)}", file=sys.stderr)
    return EXIT_ERROR
