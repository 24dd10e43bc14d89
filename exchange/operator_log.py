"""The operator log: every operator action leaves a row, with the database role that did it.

The commands that read what agencies sent or change who may send are
listed in :data:`ACTIONS`; :func:`accountable` runs such a command and
appends one row to ``operator_actions`` (migration 0015): the action, its
arguments (codes, ids, filters, certificate fingerprints; never a password,
a secret or a body) and how it ended. Who did it is not ours to say: the
database fills in ``session_user``, the role the operator logged in with
(``--database-url``/``LIENTHONG_DATABASE_URL``), so operators log in with
personal roles, members of ``lienthong_operator`` (docs/security.md).

A command that changes something is recorded when it ends (``done``,
``refused``, ``failed: <why>``), with what it found out on the way
(:func:`detail`: the serial of the certificate ``keys revoke`` revoked). A
change is not held back by the log: when the row cannot be written, the
change stands and the command says the log was not written. A command that
shows documents (``trace``, ``replay show --body``) is recorded just
*before* it reads them (:func:`reading`), with outcome ``read``: a read
that cannot be recorded shows nothing.

The commands that change nothing by themselves are not in :data:`ACTIONS`:
``keys init/issue/issue-exchange/server/client/crl`` write files of the
development CA that count once registered (``agency add --cert``, ``agency
cert add``) or configured; plain ``init`` brings the schema, topology and
limits to what the version and the settings say (``schema_migrations``
keeps when each migration was applied); ``bench`` works in a vhost and a
database of its own. An agency's own commands (``send``, ``inbox``, ...) are
in the record itself.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exchange.commands import (
    EXIT_OK,
    EXIT_REFUSED,
    CommandError,
    describe_error,
    run,
    settings_from_args,
)

if TYPE_CHECKING:
    from exchange.settings import Settings

# Outcomes of a recorded action.
DONE = "done"
REFUSED = "refused"
READ = "read"


@dataclass(frozen=True)
class Accountable:
    """How one command is recorded: its name, which options are kept, when."""

    name: str
    # The options kept as the action's arguments (their argparse names).
    options: tuple[str, ...]
    # Recorded before the command runs (it shows documents), not after.
    before: bool = False
    # Options naming certificate files: recorded as the certificates' SHA-256.
    certificate_files: tuple[str, ...] = ()
    # Options whose value is a secret: recorded as whether one was given.
    secrets: tuple[str, ...] = ()
    # The command is recorded only when this says so (``replay show --body``).
    applies: Callable[[argparse.Namespace], bool] = field(default=lambda args: True)
    # Recorded as the schema's owner, the role the command acts as
    # (``init --create-login``), not as ``--database-url``'s.
    as_owner: bool = False


_FILTERS = ("since", "until", "sender", "recipient", "reason", "outcome")

# By the command's words (``args.command`` and its sub-command).
ACTIONS: dict[tuple[str, ...], Accountable] = {
    ("replay", "run"): Accountable("replay run", ("ids", "all", "from_queue", "yes", *_FILTERS)),
    ("replay", "show"): Accountable(
        "replay show --body",
        ("id", "body"),
        before=True,
        applies=lambda args: bool(getattr(args, "body", None)),
    ),
    ("trace",): Accountable("trace", ("document", "sender"), before=True),
    ("agency", "add"): Accountable(
        "agency add",
        (
            "code",
            "name",
            "broker_user",
            "subscribe",
            "allow_sha1",
            "no_broker_user",
            "password_login",
            "rotate_password",
        ),
        certificate_files=("cert",),
        secrets=("password_stdin",),
    ),
    ("agency", "set"): Accountable(
        "agency set",
        (
            "code",
            "name",
            "broker_user",
            "subscribe",
            "no_subscriptions",
            "allow_sha1",
            "password_login",
            "rotate_password",
        ),
        certificate_files=("cert",),
        secrets=("password_stdin",),
    ),
    ("agency", "disable"): Accountable("agency disable", ("code",)),
    ("agency", "enable"): Accountable("agency enable", ("code",), secrets=("password_stdin",)),
    ("agency", "cert", "add"): Accountable(
        "agency cert add", ("code",), certificate_files=("file",)
    ),
    ("agency", "cert", "remove"): Accountable(
        "agency cert remove", ("code",), certificate_files=("file",)
    ),
    ("system", "add"): Accountable(
        "system add", ("system_id", "agency", "keys"), secrets=("secret", "secret_stdin")
    ),
    ("system", "disable"): Accountable("system disable", ("system_id",)),
    ("system", "enable"): Accountable("system enable", ("system_id",)),
    ("system", "rotate-secret"): Accountable(
        "system rotate-secret", ("system_id",), secrets=("secret", "secret_stdin")
    ),
    ("retention", "run"): Accountable(
        "retention run",
        ("export_dir", "keep_table", "months"),
        applies=lambda args: not getattr(args, "dry_run", False),
    ),
    ("audit",): Accountable(
        "audit --seal", (), applies=lambda args: bool(getattr(args, "seal", False))
    ),
    # The certificate revoked is added by the command (serial, subject, SHA-256).
    ("keys", "revoke"): Accountable("keys revoke", ("code", "dir", "cert")),
    # The vhost is added by the command; the password is never recorded.
    ("gateway-user",): Accountable("gateway-user", ("name",), secrets=("password_stdin",)),
    ("init",): Accountable(
        "init --create-login",
        ("create_login", "group"),
        secrets=("password_stdin",),
        as_owner=True,
        applies=lambda args: (
            bool(getattr(args, "create_login", None)) and not getattr(args, "roles_sql", False)
        ),
    ),
    # The demo registers agencies, broker users and systems where it is pointed.
    ("demo",): Accountable("demo", ("keys", "workers", "via_gateway", "certificate_login")),
}

_SUBCOMMANDS = (
    "keys_command",
    "replay_command",
    "agency_command",
    "cert_command",
    "system_command",
    "retention_command",
)

# What the command adds to its outcome (the seal's number, the replay's id).
_notes: list[str] = []
# What the command adds to its arguments (the certificate it revoked).
_details: dict[str, Any] = {}
# The reading command not yet recorded: it is, by reading(), before it reads.
_pending: list[tuple[argparse.Namespace, Accountable, dict[str, Any]]] = []


def note(text: str) -> None:
    """Add ``text`` to the outcome the running command is recorded with."""
    _notes.append(text)


def detail(**values: Any) -> None:
    """Add ``values`` to the arguments the running command is recorded with.

    For what the command learns as it runs (the serial of the certificate it
    revokes); like the options, never a password, a secret or a body.
    """
    _details.update(values)


def words_of(args: argparse.Namespace) -> tuple[str, ...]:
    """The command's words: ``("agency", "cert", "add")``."""
    words = [str(getattr(args, "command", ""))]
    words += [str(v) for name in _SUBCOMMANDS if (v := getattr(args, name, None))]
    return tuple(words)


def accountable_of(args: argparse.Namespace) -> Accountable | None:
    """How the parsed command is recorded; ``None`` when it is not an operator action."""
    found = ACTIONS.get(words_of(args))
    return found if found is not None and found.applies(args) else None


def _certificate_fingerprints(value: Any) -> list[str]:
    from cryptography import x509

    from exchange.pki import fingerprint

    paths = value if isinstance(value, list) else [value]
    prints: list[str] = []
    for path in paths:
        try:
            certificates = x509.load_pem_x509_certificates(Path(path).read_bytes())
            prints.extend(fingerprint(c) for c in certificates)
        except (OSError, ValueError):
            data = Path(path).read_bytes() if Path(path).is_file() else b""
            prints.append(f"unreadable file, sha256 {hashlib.sha256(data).hexdigest()}")
    return prints


def arguments_of(args: argparse.Namespace, accountable: Accountable) -> dict[str, Any]:
    """The action's arguments as recorded: the kept options, fingerprints, no secret."""
    values = vars(args)
    kept: dict[str, Any] = {
        name: values[name]
        for name in accountable.options
        if values.get(name) not in (None, False, [], ())
    }
    for name in accountable.certificate_files:
        if values.get(name):
            kept[f"{name}_sha256"] = _certificate_fingerprints(values[name])
    for name in accountable.secrets:
        if values.get(name):
            kept[f"{name}_given"] = True
    return kept


def recording_settings(args: argparse.Namespace, accountable: Accountable) -> Settings:
    """The command's settings, with the database the row is written to as ``database_url``."""
    from exchange.registry import owner_url

    settings = settings_from_args(args)
    if accountable.as_owner:
        settings = settings.model_copy(update={"database_url": owner_url(settings)})
    return settings


async def record(
    args: argparse.Namespace, accountable: Accountable, arguments: Mapping[str, Any], outcome: str
) -> None:
    """Append the row, connected as the command connects (the operator's own role)."""
    from exchange.store import accountability
    from exchange.store.db import connect

    conn = await connect(recording_settings(args, accountable))
    try:
        await accountability.record_action(conn, accountable.name, arguments, outcome)
    finally:
        await conn.close()


def accountable(args: argparse.Namespace, handler: Callable[[argparse.Namespace], int]) -> int:
    """Run ``handler(args)``, recording it in the operator log if it is an operator action.

    A command that shows documents calls :func:`reading` just before it
    reads them, which records it then; if it stops before (a bad option),
    it is recorded as it ended, like a change.
    """
    found = accountable_of(args)
    if found is None:
        return handler(args)
    arguments = arguments_of(args, found)
    _notes.clear()
    _details.clear()
    _pending.clear()
    if found.before:
        _pending.append((args, found, arguments))
    try:
        code = handler(args)
    except BaseException as error:
        if found.before and not _pending:
            raise  # recorded when it started reading
        _pending.clear()
        try:
            settings = settings_from_args(args)
        except Exception:  # the settings are what failed: the record cannot be written
            raise error from None
        outcome = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed: "
        if not isinstance(error, KeyboardInterrupt):
            outcome += describe_error(error, settings)
        try:
            run(_recorded(record(args, found, {**arguments, **_details}, outcome)))
        except Exception as failure:  # the command's own error is the one to show
            print(f"lienthong: the operator log was not written: {failure}", file=sys.stderr)
        raise
    if found.before and not _pending:
        return code
    _pending.clear()
    outcome = {EXIT_OK: DONE, EXIT_REFUSED: REFUSED}.get(code, f"exit {code}")
    if _notes:
        outcome += ": " + "; ".join(_notes)
    try:
        run(_recorded(record(args, found, {**arguments, **_details}, outcome)))
    except Exception as failure:
        # The change is made: say so, or the operator takes it for undone.
        why = describe_error(failure, recording_settings(args, found))
        raise CommandError(
            f"{found.name}: {outcome}, but the operator log was not written: {why}"
        ) from failure
    return code


async def reading() -> None:
    """Record the running command now, before it reads documents (no-op for others)."""
    while _pending:
        args, found, arguments = _pending[0]
        await record(args, found, arguments, READ)
        _pending.clear()


async def _recorded(coroutine: Any) -> int:
    await coroutine
    return EXIT_OK


__all__ = [
    "ACTIONS",
    "Accountable",
    "accountable",
    "accountable_of",
    "arguments_of",
    "detail",
    "note",
    "reading",
    "record",
    "recording_settings",
    "words_of",
]
