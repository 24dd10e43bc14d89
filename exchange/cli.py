"""The ``lienthong`` command: keys, signing, checking, and running the exchange.

Every subcommand prints what a person needs on a terminal and, with
``--json``, what a program needs (docs/cli.md). Failures print one line,
``lienthong: ...``, never a stack trace (``--debug`` shows it), and set exit
status 2; 1 means some input was refused.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exchange.commands import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    CommandError,
    ServiceOptions,
    TimeExpressionError,
    parse_time,
    print_json,
    report_error,
    run,
    settings_from_args,
)
from exchange.reasons import Rejection

if TYPE_CHECKING:
    from exchange.client import AgencyClient
    from exchange.edxml.model import DocumentPackage, Organization
    from exchange.pki import Credential
    from exchange.settings import Settings
    from exchange.store.records import Agency

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_REFUSED",
    "CommandError",
    "TimeExpressionError",
    "build_parser",
    "main",
    "parse_time",
]


def default_language() -> str:
    """``vi`` when the locale is Vietnamese (LC_ALL, LC_MESSAGES or LANG), else ``en``."""
    for variable in ("LC_ALL", "LC_MESSAGES", "LANG"):
        if value := os.environ.get(variable):
            return "vi" if value.lower().startswith("vi") else "en"
    return "en"


@dataclass
class FileVerdict:
    """What a check said of one file."""

    file: str
    ok: bool
    signer: str | None = None
    kind: str | None = None
    reason_code: str | None = None
    reason: str | None = None
    problems: list[str] = field(default_factory=list)

    @classmethod
    def refused(cls, file: str, rejection: Rejection, language: str = "en") -> FileVerdict:
        """The verdict for a file refused with ``rejection`` (the reason in ``language``)."""
        reason = rejection.reason
        return cls(
            file,
            False,
            reason_code=rejection.code,
            reason=reason.vietnamese if language == "vi" else reason.english,
            problems=[str(p) for p in rejection.problems],
        )

    def line(self) -> str:
        """One line for a terminal."""
        if self.ok:
            extra = [x for x in (self.kind, f"signed by {self.signer}" if self.signer else "") if x]
            return f"{self.file}: OK" + (f" ({', '.join(extra)})" if extra else "")
        details = "; ".join(self.problems)
        return f"{self.file}: {self.reason_code}: {self.reason}" + (
            f": {details}" if details else ""
        )


def _report(verdicts: list[FileVerdict], as_json: bool) -> int:
    if as_json:
        print_json([v.__dict__ for v in verdicts])
    else:
        for verdict in verdicts:
            print(verdict.line())
    return EXIT_OK if all(v.ok for v in verdicts) else EXIT_REFUSED


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror}") from None


# -- keys ---------------------------------------------------------------------


def cmd_keys_init(args: argparse.Namespace) -> int:
    """Create a development certification authority in ``--dir``."""
    from exchange.pki import KeyType, create_ca

    directory = Path(args.dir)
    if (directory / "ca.cert.pem").exists() and not args.force:
        raise CommandError(f"{directory}/ca.cert.pem exists; pass --force to replace it")
    ca = create_ca(directory, common_name=args.name, key_type=KeyType(args.key_type))
    print(f"created CA {ca.certificate.subject.rfc4514_string()} in {directory}")
    print(f"  trust anchor: {directory / 'ca.cert.pem'}")
    return EXIT_OK


def cmd_keys_issue(args: argparse.Namespace) -> int:
    """Issue an agency's signing key and certificate from the CA in ``--dir``."""
    from exchange.agency import AgencyCode, InvalidAgencyCode
    from exchange.pki import Credential, KeyType, issue_agency_certificate

    try:
        code = AgencyCode.parse(args.code)
    except InvalidAgencyCode as error:
        raise CommandError(str(error)) from None
    directory = Path(args.dir)
    if not (directory / "ca.key.pem").exists():
        raise CommandError(f"no CA in {directory}; run `lienthong keys init --dir {directory}`")
    ca = Credential.read(directory, "ca")
    credential = issue_agency_certificate(
        ca,
        code,
        common_name=args.name or f"Agency {code}",
        key_type=KeyType(args.key_type),
        directory=directory,
    )
    print(f"issued {credential.certificate.subject.rfc4514_string()}")
    print(f"  key:         {directory / f'{code}.key.pem'}")
    print(f"  certificate: {directory / f'{code}.cert.pem'}")
    return EXIT_OK


def cmd_keys_issue_exchange(args: argparse.Namespace) -> int:
    """Issue the exchange's receipt-signing key and certificate from the CA in ``--dir``."""
    from exchange.pki import KeyType, issue_exchange_certificate

    directory = Path(args.dir)
    ca = _development_ca(directory)
    key_path, cert_path = directory / "exchange.key.pem", directory / "exchange.cert.pem"
    if cert_path.exists() and not args.force:
        raise CommandError(f"{cert_path} exists; pass --force to replace it")
    credential = issue_exchange_certificate(
        ca,
        common_name=args.name,
        key_type=KeyType(args.key_type),
        directory=directory,
    )
    print(f"issued {credential.certificate.subject.rfc4514_string()} (signs receipts)")
    print(f"  key:         {key_path}  (LIENTHONG_RECEIPT_KEY)")
    print(f"  certificate: {cert_path}  (LIENTHONG_RECEIPT_CERT)")
    return EXIT_OK


def cmd_keys_tls(args: argparse.Namespace) -> int:
    """Issue a TLS server or client certificate from the CA in ``--dir``."""
    from exchange.pki import TlsRole, issue_tls_certificate
    from exchange.settings import certificate_login

    directory = Path(args.dir)
    role = TlsRole(args.keys_command)
    credential = issue_tls_certificate(
        _development_ca(directory), role, args.name, hosts=args.host or (), directory=directory
    )
    print(f"issued {role.value} certificate {credential.certificate.subject.rfc4514_string()}")
    print(f"  key:         {directory / f'{args.name}.key.pem'}")
    print(f"  certificate: {directory / f'{args.name}.cert.pem'}")
    if role is TlsRole.CLIENT:
        print(f"  broker user (auth=external): {certificate_login(credential.certificate)}")
    return EXIT_OK


def cmd_keys_crl(args: argparse.Namespace) -> int:
    """Write the development CA's revocation list anew (same revocations, new dates)."""
    from exchange.pki import refresh_crl

    path = refresh_crl(_development_ca(Path(args.dir)), Path(args.dir))
    print(f"revocation list: {path}")
    return EXIT_OK


def _development_ca(directory: Path) -> Credential:
    from exchange.pki import Credential

    if not (directory / "ca.key.pem").exists():
        raise CommandError(f"no CA in {directory}; run `lienthong keys init --dir {directory}`")
    return Credential.read(directory, "ca")


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke an agency certificate of the development CA in ``--dir``; write ``ca.crl.pem``.

    A certificate change, so an operator action: recorded in the operator log
    of ``--database-url`` with the certificate's serial, subject and SHA-256.
    """
    from cryptography import x509

    from exchange.operator_log import detail
    from exchange.pki import Credential, fingerprint, revoke

    code = _agency_code(args.code)
    directory = Path(args.dir)
    if not (directory / "ca.key.pem").exists():
        raise CommandError(f"no CA in {directory}; run `lienthong keys init --dir {directory}`")
    cert_path = Path(args.cert) if args.cert else directory / f"{code}.cert.pem"
    try:
        certificate = x509.load_pem_x509_certificate(_read_file(str(cert_path)))
    except ValueError:
        raise CommandError(f"{cert_path} is not a PEM certificate") from None
    # The operator log names the certificate, whichever file held it.
    detail(
        serial=f"{certificate.serial_number:x}",
        subject=certificate.subject.rfc4514_string(),
        sha256=fingerprint(certificate),
    )
    try:
        crl = revoke(Credential.read(directory, "ca"), certificate, directory)
    except ValueError as error:
        raise CommandError(str(error)) from None
    print(f"revoked {certificate.subject.rfc4514_string()} (serial {certificate.serial_number:x})")
    print(f"  revocation list: {crl}")
    print("  workers read it within LIENTHONG_CRL_RELOAD_S, or at once on SIGHUP")
    return EXIT_OK


# -- packages -----------------------------------------------------------------


def cmd_sign(args: argparse.Namespace) -> int:
    """Sign a package with an agency key and certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from exchange.checks.signature import sign

    data = _read_file(args.input)
    key, cert = _read_file(args.key), _read_file(args.cert)
    try:
        load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise CommandError(
            f"--key {args.key} is not an unencrypted PEM private key (a certificate given "
            "as the key?)"
        ) from None
    try:
        x509.load_pem_x509_certificate(cert)
    except ValueError:
        raise CommandError(f"--cert {args.cert} is not a PEM certificate") from None
    output = None if args.output == "-" else Path(args.output)
    if output is not None and not output.parent.is_dir():
        raise CommandError(f"cannot write {output}: the folder {output.parent} does not exist")
    try:
        signed = sign(data, key, cert, digest=args.digest)
    except Rejection as rejection:
        print(FileVerdict.refused(args.input, rejection, args.lang).line(), file=sys.stderr)
        return EXIT_REFUSED
    except ValueError as error:
        raise CommandError(f"cannot sign with {args.key} and {args.cert}: {error}") from None
    if output is None:
        sys.stdout.buffer.write(signed)
        return EXIT_OK
    try:
        output.write_bytes(signed)
    except OSError as error:
        raise CommandError(f"cannot write {output}: {error.strerror}") from None
    print(f"signed {args.input} -> {output}")
    return EXIT_OK


def _check_files(
    files: Sequence[str], check: Callable[[str, bytes], FileVerdict], language: str
) -> list[FileVerdict]:
    verdicts = []
    for file in files:
        data = _read_file(file)
        try:
            verdicts.append(check(file, data))
        except Rejection as rejection:
            verdicts.append(FileVerdict.refused(file, rejection, language))
    return verdicts


def _read_checked(data: bytes) -> Any:
    """A package read as ``validate`` reads it: safe parse, schema, reader (no signature)."""
    from exchange.checks.schema import check_schema
    from exchange.edxml.reader import read_package
    from exchange.edxml.safexml import parse

    root = parse(data)
    check_schema(root)
    return read_package(root)


def cmd_validate(args: argparse.Namespace) -> int:
    """Check files against the edXML schema and the reader's rules (no signature)."""
    from exchange.edxml.model import StatusPackage

    def check(file: str, data: bytes) -> FileVerdict:
        return FileVerdict(file, True, kind=_kind(_read_checked(data), StatusPackage))

    return _report(_check_files(args.files, check, args.lang), args.json)


def cmd_show(args: argparse.Namespace) -> int:
    """Print what packages say: kind, agencies, ids, dates, trace, attachments, warnings."""
    from exchange.edxml.summary import summarize, summary_lines

    shown: list[dict[str, Any]] = []
    refused = False
    for file in args.files:
        data = _read_file(file)
        try:
            summary = summarize(_read_checked(data))
        except Rejection as rejection:
            refused = True
            verdict = FileVerdict.refused(file, rejection, args.lang)
            shown.append({"file": file, "ok": False, **_refusal_json(verdict)})
            if not args.json:
                print(verdict.line())
            continue
        shown.append({"file": file, "ok": True, **summary.model_dump(mode="json", by_alias=True)})
        if not args.json:
            heading: str = summary.kind
            if summary.business and summary.business != "new":
                heading += f" ({summary.business})"
            print(f"{file}: {heading}")
            for line in summary_lines(summary):
                print(line)
    if args.json:
        print_json(shown)
    return EXIT_REFUSED if refused else EXIT_OK


def _refusal_json(verdict: FileVerdict) -> dict[str, Any]:
    return {
        "reason_code": verdict.reason_code,
        "reason": verdict.reason,
        "problems": verdict.problems,
    }


def _kind(package: Any, status_type: type) -> str:
    is_status = isinstance(package, status_type)
    status_code = getattr(package, "status_code", None) if is_status else None
    return f"status {status_code.value}" if status_code is not None else "document"


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify files' signatures against trusted CA certificates."""
    from exchange.checks.signature import verify
    from exchange.edxml.model import StatusPackage
    from exchange.edxml.reader import read_package
    from exchange.edxml.safexml import parse_received
    from exchange.pki import Revocations, TrustStore

    try:
        trust = TrustStore.load(args.trust)
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot load the trust anchors from {args.trust}: {error}") from None
    revocations = None
    if args.crl:
        try:
            revocations = Revocations.load([Path(p) for p in args.crl])
        except (OSError, ValueError) as error:
            raise CommandError(f"cannot load the revocation lists: {error}") from None

    def check(file: str, data: bytes) -> FileVerdict:
        # As the worker reads a package: comments and PIs refused first.
        verified = verify(
            parse_received(data), trust, allow_sha1=args.allow_sha1, revocations=revocations
        )
        package = read_package(verified.signed_root)
        return FileVerdict(
            file, True, signer=str(verified.agency), kind=_kind(package, StatusPackage)
        )

    return _report(_check_files(args.files, check, args.lang), args.json)


def cmd_schema(args: argparse.Namespace) -> int:
    """Print a published schema: the receipts' JSON Schema, or the certificate that signs them."""
    from exchange.receipts import receipt_json_schema

    if args.name == "receipt":
        sys.stdout.write(receipt_json_schema())
        return EXIT_OK
    from cryptography import x509

    path = settings_from_args(args).receipt_cert
    if path is None:
        raise CommandError(
            "no receipt certificate: set LIENTHONG_RECEIPT_CERT to the exchange's certificate"
        )
    try:
        certificates = x509.load_pem_x509_certificates(_read_file(str(path)))
    except ValueError:
        raise CommandError(f"{path} holds no PEM certificate") from None
    from cryptography.hazmat.primitives.serialization import Encoding

    for certificate in certificates:
        sys.stdout.write(certificate.public_bytes(Encoding.PEM).decode("ascii"))
    return EXIT_OK


def cmd_receipt_verify(args: argparse.Namespace) -> int:
    """Verify receipts' signatures: the exchange's certificate, chained to ``--trust``."""
    from exchange.pki import TrustStore
    from exchange.receipts import ReceiptSignatureError, verify_receipt

    try:
        trust = TrustStore.load(args.trust)
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot load the trust anchors from {args.trust}: {error}") from None
    results: list[dict[str, Any]] = []
    for file in args.files:
        data = _read_file(file)
        try:
            verified = verify_receipt(data, trust)
        except ReceiptSignatureError as error:
            results.append(
                {"file": file, "ok": False, "problem": error.problem.value, "reason": str(error)}
            )
            if not args.json:
                print(f"{file}: {error.problem.value}: {error}")
            continue
        receipt = verified.receipt
        results.append(
            {
                "file": file,
                "ok": True,
                "signer": verified.signer.subject.rfc4514_string(),
                "algorithm": verified.algorithm,
                **receipt.model_dump(mode="json", exclude={"signature"}),
            }
        )
        if not args.json:
            outcome = " ".join(filter(None, [receipt.outcome.value, receipt.reason_code]))
            what = receipt.document_id or f"message {receipt.message_id}"
            print(
                f"{file}: OK ({outcome}: {what}, {receipt.sender or '?'} -> {receipt.recipient}, "
                f"at {receipt.at:%Y-%m-%d %H:%M:%S} UTC; signed by "
                f"{verified.signer.subject.rfc4514_string()}, {verified.algorithm})"
            )
    if args.json:
        print_json(results)
    return EXIT_OK if all(r["ok"] for r in results) else EXIT_REFUSED


# -- running the exchange -------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    """Migrate (as the schema's owner), declare the core topology, apply the limits.

    ``--create-login NAME`` also creates a login role for a worker or a
    gateway, member of its group; ``--roles-sql`` only prints the SQL a
    superuser runs once to set the roles up (docs/operations.md).
    """
    from exchange.commands import address_of
    from exchange.registry import owner_url, prepare
    from exchange.store.roles import GROUPS, database_name, roles_sql

    settings = settings_from_args(args)
    group = GROUPS[args.group]
    if args.roles_sql:
        database = database_name(owner_url(settings))
        # PostgreSQL's own database is no place for the exchange: a name of its own.
        if database == "postgres":
            database = "lienthong"
        sys.stdout.write(roles_sql(database, login=args.create_login, group=group))
        return EXIT_OK
    password = _password(args) if args.create_login else None

    async def init() -> int:
        from exchange.store.migrate import MigrationError

        try:
            limited = await prepare(settings)
        except MigrationError as error:
            raise CommandError(
                f"PostgreSQL at {address_of(owner_url(settings))}: {error}"
            ) from None
        login = None
        if args.create_login:
            login = await _create_login(settings, args.create_login, group, password)
        if args.json:
            print_json(
                {
                    "database": address_of(owner_url(settings)),
                    "broker": address_of(settings.amqp_url),
                    "migrated": True,
                    "topology_declared": True,
                    "agency_users_limited": limited,
                    **({"login": login} if login else {}),
                }
            )
        else:
            print(
                "database migrated, core topology declared, queue bounds and the limits "
                f"of {limited} agency user(s) applied"
            )
            if login:
                print(
                    f"database role {login['role']} created in {login['group']}; "
                    "its URL (the password is not shown again):"
                )
                print(f"LIENTHONG_DATABASE_URL={login['database_url']}")
        return EXIT_OK

    return run(init())


async def _create_login(
    settings: Settings, name: str, group: str, password: str | None
) -> dict[str, str]:
    """Create the login role ``name`` in ``group`` as the owner; what to tell the operator."""
    import secrets

    import asyncpg

    from exchange.registry import owner_url
    from exchange.store.db import connect
    from exchange.store.roles import LoginExistsError, create_login, create_login_sql, login_url

    given = password is not None
    password = password or secrets.token_urlsafe(18)
    conn = await connect(dsn=owner_url(settings))
    try:
        await create_login(conn, name, group, password)
    except LoginExistsError as error:
        raise CommandError(
            f"{error}; change its password with ALTER ROLE, or choose another name"
        ) from None
    except asyncpg.InsufficientPrivilegeError as error:
        role = await conn.fetchval("SELECT current_user")
        raise CommandError(
            f"role {role!r} may not create roles ({error}); have a superuser run: "
            f"{create_login_sql(name, group)}"
        ) from None
    finally:
        await conn.close()
    return {
        "role": name,
        "group": group,
        # The database the role was made for, as the processes reach it; a
        # password given on stdin is not echoed.
        "database_url": login_url(owner_url(settings), name, "..." if given else password),
    }


def cmd_topology(args: argparse.Namespace) -> int:
    """Print the topology: as a RabbitMQ definitions file, or as a list."""
    from exchange.broker.topology import core_topology, definitions_json

    topology = core_topology()
    if args.definitions:
        sys.stdout.write(definitions_json(topology, args.vhost))
        return EXIT_OK
    for exchange in topology.exchanges:
        print(f"exchange {exchange.name} ({exchange.type})")
    for queue in topology.queues:
        print(f"queue    {queue.name} {queue.arguments()}")
    for binding in topology.bindings:
        print(f"binding  {binding.source} -> {binding.destination} [{binding.routing_key}]")
    return EXIT_OK


def _agency_code(text: str, option: str = "") -> Any:
    """An agency code from the command line, or a one-line error naming the option."""
    from exchange.agency import AgencyCode, InvalidAgencyCode

    try:
        return AgencyCode.parse(text)
    except InvalidAgencyCode as error:
        raise CommandError(f"{option + ' ' if option else ''}{error}") from None


def _password(args: argparse.Namespace) -> str | None:
    """The broker password from ``--password-stdin`` (first line of stdin), or none."""
    if not args.password_stdin:
        return None
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise CommandError("--password-stdin: no password on standard input")
    return line


def _certificate_json(pem: str) -> dict[str, str | None]:
    from cryptography import x509

    from exchange.pki import fingerprint

    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return {"subject": None, "not_before": None, "not_after": None, "sha256": None}
    return {
        "subject": cert.subject.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": fingerprint(cert),
    }


def agency_json(agency: Agency) -> dict[str, Any]:
    """An agency as JSON (``agency list``, ``show``, ``add``, ``set``).

    ``certificate`` is the newest registered certificate; ``certificates``
    all of them, oldest first.
    """
    certificates = [_certificate_json(pem) for pem in agency.certificates]
    certificate = certificates[-1] if certificates else None
    return {
        "code": str(agency.code),
        "name": agency.name,
        "level": agency.level,
        "parent": None if agency.parent is None else str(agency.parent),
        "broker_user": agency.broker_user,
        "subscriptions": list(agency.subscriptions),
        "registered_at": agency.registered_at.isoformat(),
        "certificate": certificate,
        "certificates": certificates,
        "allow_sha1": agency.allow_sha1,
        "disabled_at": None if agency.disabled_at is None else agency.disabled_at.isoformat(),
    }


def _print_registration(registration: Any, verb: str, as_json: bool) -> None:
    from exchange.broker.topology import inbox_queue, status_queue

    agency = registration.agency
    if as_json:
        print_json(
            {
                "agency": agency_json(agency),
                "queues": [inbox_queue(agency.code), status_queue(agency.code)],
                "broker_user": registration.broker_user,
                "password": registration.password,
                "login": "certificate" if registration.certificate_login else "password",
                "replaced_user": registration.replaced_user,
            }
        )
        return
    print(f"{verb} {agency.code} (level {agency.level}) {agency.name}")
    print(f"  queues: lienthong.inbox.{agency.code}, lienthong.status.{agency.code}")
    subscribed = ", ".join(agency.subscriptions) or "none"
    print(f"  subscriptions: {subscribed}")
    count = len(agency.certificates)
    print(f"  certificates: {count or 'none (it can receive but not send)'}")
    if registration.certificate_login:
        print(f"  broker user: {registration.broker_user}")
        print("  login: its certificate (auth=external), no password; its software connects to")
        print(f"    {registration.amqp_url}")
        print("    with AGENCY.cert.pem / AGENCY.key.pem its own certificate and key")
    elif registration.password is not None:
        print(f"  broker user: {registration.broker_user}")
        print(f"  broker password: {registration.password}  (shown once; keep it safe)")
    if registration.replaced_user is not None:
        print(f"  former broker user {registration.replaced_user}: deleted")


def cmd_agency_add(args: argparse.Namespace) -> int:
    """Register a new agency: directory row, broker user, inbox and status queues."""
    from exchange.registry import RegistrationError, register_agency

    code = _agency_code(args.code)
    certificates = [_read_file(path).decode() for path in args.cert or ()]
    password = _password(args)
    settings = settings_from_args(args)

    async def add() -> int:
        try:
            registration = await register_agency(
                settings,
                code,
                args.name,
                certificates=certificates,
                allow_sha1=args.allow_sha1,
                subscriptions=args.subscribe or (),
                broker_user=args.broker_user,
                password=password,
                provision_user=not args.no_broker_user,
                rotate_password=args.rotate_password,
                password_login=args.no_certificate_login,
            )
        except RegistrationError as error:
            raise CommandError(str(error)) from None
        _print_registration(registration, "registered", args.json)
        return EXIT_OK

    return run(add())


def cmd_agency_set(args: argparse.Namespace) -> int:
    """Change what is given of a registered agency; the rest stays as it is."""
    from exchange.registry import RegistrationError, change_agency, set_agency_rate

    code = _agency_code(args.code)
    certificates = [_read_file(path).decode() for path in args.cert] if args.cert else None
    password = _password(args)
    subscriptions = None
    if args.no_subscriptions:
        subscriptions = []
    elif args.subscribe is not None:
        subscriptions = args.subscribe
    settings = settings_from_args(args)

    rate = _agency_rate(args)

    async def change() -> int:
        try:
            if rate is not None:
                await set_agency_rate(settings, code, rate_per_s=rate[0], burst=rate[1])
            registration = await change_agency(
                settings,
                code,
                name=args.name,
                certificates=certificates,
                allow_sha1=args.allow_sha1,
                subscriptions=subscriptions,
                broker_user=args.broker_user,
                password=password,
                rotate_password=args.rotate_password,
            )
        except RegistrationError as error:
            raise CommandError(str(error)) from None
        _print_registration(registration, "changed", args.json)
        if rate is not None and not args.json:
            shown = "the defaults" if rate == (None, None) else f"{rate[0]}/s, burst {rate[1]}"
            print(f"  rate: {shown}")
        return EXIT_OK

    return run(change())


def _agency_rate(args: argparse.Namespace) -> tuple[float | None, int | None] | None:
    """``--rate``/``--burst``/``--default-rate`` as ``(rate, burst)``; ``None``: not given."""
    if args.default_rate:
        if args.rate is not None or args.burst is not None:
            raise CommandError("--default-rate cannot be given with --rate or --burst")
        return (None, None)
    if args.rate is None and args.burst is None:
        return None
    if args.rate is None or args.burst is None:
        raise CommandError("--rate and --burst go together (messages per second, and at once)")
    if not args.rate > 0:
        raise CommandError(f"--rate {args.rate}: it must be more than 0 messages per second")
    if args.burst < 1:
        raise CommandError(f"--burst {args.burst}: it must be at least 1 message")
    return (args.rate, args.burst)


def cmd_agency_show(args: argparse.Namespace) -> int:
    """Print one agency's registration."""
    from exchange.store import queries
    from exchange.store.db import connect

    code = _agency_code(args.code)
    settings = settings_from_args(args)

    async def show() -> int:
        conn = await connect(settings)
        try:
            agency = await queries.get_agency(conn, code)
        finally:
            await conn.close()
        if agency is None:
            raise CommandError(f"agency {code} is not registered")
        shown = agency_json(agency)
        if args.json:
            print_json(shown)
            return EXIT_OK
        certificate = shown["certificate"]
        fields = [
            ("code", shown["code"]),
            ("name", shown["name"]),
            ("level", str(shown["level"])),
            ("parent", shown["parent"] or "-"),
            ("broker user", shown["broker_user"]),
            ("subscriptions", ", ".join(shown["subscriptions"]) or "none"),
            ("registered", shown["registered_at"]),
            *(
                ("certificate", f"{c['subject']} until {c['not_after']} (sha256 {c['sha256']})")
                for c in shown["certificates"]
            ),
            *(
                (("certificate", "none (it can receive but not send)"),)
                if certificate is None
                else ()
            ),
            ("sha-1", "accepted" if shown["allow_sha1"] else "refused"),
            ("disabled", shown["disabled_at"] or "no"),
        ]
        for name, value in fields:
            print(f"{name + ':':<15}{value}")
        return EXIT_OK

    return run(show())


def cmd_agency_disable(args: argparse.Namespace) -> int:
    """Take an agency's access away; its registration and history stay."""
    from exchange.registry import RegistrationError, disable_agency

    code = _agency_code(args.code)
    settings = settings_from_args(args)

    async def disable() -> int:
        try:
            agency = await disable_agency(settings, code)
        except RegistrationError as error:
            raise CommandError(str(error)) from None
        if args.json:
            print_json(agency_json(agency))
            return EXIT_OK
        print(f"disabled {agency.code} {agency.name}")
        print(f"  broker user {agency.broker_user}: no access; workers refuse what it publishes")
        return EXIT_OK

    return run(disable())


def cmd_agency_enable(args: argparse.Namespace) -> int:
    """Give a disabled agency its access back, with a new broker password."""
    from exchange.registry import RegistrationError, enable_agency

    code = _agency_code(args.code)
    password = _password(args)
    settings = settings_from_args(args)

    async def enable() -> int:
        try:
            registration = await enable_agency(settings, code, password=password)
        except RegistrationError as error:
            raise CommandError(str(error)) from None
        _print_registration(registration, "enabled", args.json)
        return EXIT_OK

    return run(enable())


def cmd_agency_cert_add(args: argparse.Namespace) -> int:
    """Register one more certificate an agency signs with."""
    from exchange.registry import add_certificate

    return _change_certificates(args, add_certificate, "registered")


def cmd_agency_cert_remove(args: argparse.Namespace) -> int:
    """Retire one of an agency's certificates."""
    from exchange.registry import remove_certificate

    return _change_certificates(args, remove_certificate, "removed")


def _change_certificates(
    args: argparse.Namespace,
    change: Callable[[Any, Any, str], Awaitable[Agency]],
    verb: str,
) -> int:
    from exchange.registry import RegistrationError

    code = _agency_code(args.code)
    pem = _read_file(args.file).decode(errors="replace")
    settings = settings_from_args(args)

    async def apply() -> int:
        try:
            agency = await change(settings, code, pem)
        except RegistrationError as error:
            raise CommandError(str(error)) from None
        if args.json:
            print_json(agency_json(agency))
            return EXIT_OK
        print(f"{verb} the certificate {args.file} for {code}")
        print(f"  {code} has {len(agency.certificates)} certificate(s); workers use them within")
        print("  30 s (the directory's refresh), or at once on SIGHUP")
        return EXIT_OK

    return run(apply())


def cmd_agency_list(args: argparse.Namespace) -> int:
    """List registered agencies as a tree, by level."""
    from exchange.store import queries
    from exchange.store.db import connect

    settings = settings_from_args(args)

    async def listing() -> int:
        conn = await connect(settings)
        try:
            agencies = await queries.list_agencies(conn)
        finally:
            await conn.close()
        if args.json:
            print_json([agency_json(a) for a in agencies])
            return EXIT_OK
        registered = {a.code for a in agencies}
        for agency in agencies:
            indent = "  " * (agency.level - 1)
            if agency.parent is not None and agency.parent not in registered:
                print(f"{indent[:-2]}({agency.parent}, not registered)")
                registered.add(agency.parent)
            subscribed = ", ".join(agency.subscriptions)
            extra = f"  [subscribes {subscribed}]" if subscribed else ""
            if agency.disabled:
                extra += "  [disabled]"
            print(f"{indent}{agency.code}  {agency.name}{extra}")
        print(f"{len(agencies)} agencies")
        return EXIT_OK

    return run(listing())


def cmd_worker(args: argparse.Namespace) -> int:
    """Run workers until interrupted (SIGINT or SIGTERM)."""
    from exchange.directory import TrustedUserError
    from exchange.logs import configure_logging
    from exchange.metrics import MetricsEndpointError
    from exchange.pki import TrustStore
    from exchange.receipts import ReceiptKeyError
    from exchange.report import refresh_metrics
    from exchange.store.roles import PrivilegedRoleError
    from exchange.worker import StartupError, run_workers

    settings = settings_from_args(args)
    configure_logging(settings.log_format)
    if settings.trust is None:
        raise CommandError("no trust anchors: pass --trust CA.pem or set LIENTHONG_TRUST")
    try:
        TrustStore.load(settings.trust)
    except (OSError, ValueError) as error:
        raise CommandError(
            f"cannot load the trust anchors from {settings.trust}: "
            f"{getattr(error, 'strerror', None) or error}"
        ) from None
    port = settings.metrics_port if args.metrics_port is None else args.metrics_port

    async def work() -> int:
        try:
            processed = await run_workers(
                settings,
                count=args.count,
                metrics_port=port,
                refresh_figures=refresh_metrics,
            )
        except (
            MetricsEndpointError,
            PrivilegedRoleError,
            ReceiptKeyError,
            StartupError,
            TrustedUserError,
        ) as error:
            raise CommandError(str(error)) from None
        print(f"stopped after {processed} messages")
        return EXIT_OK

    return run(work())


def _agency_client(args: argparse.Namespace) -> AgencyClient:
    from exchange.client import AgencyClient
    from exchange.pki import Credential

    credential = None
    if getattr(args, "key", None) and getattr(args, "cert", None):
        credential = Credential(_read_file(args.key), _read_file(args.cert))
    from exchange.edxml.model import Organization

    agency = _agency_code(args.agency, "--as")
    # edXML needs an OrganName in From: the name given, or else the code.
    name = getattr(args, "sender_name", None) or str(agency)
    receipt_trust = None
    if getattr(args, "trust", None):
        from exchange.pki import TrustStore

        try:
            receipt_trust = TrustStore.load(args.trust)
        except (OSError, ValueError) as error:
            raise CommandError(
                f"cannot load the trust anchors from {args.trust}: {error}"
            ) from None
    return AgencyClient(
        agency,
        settings_from_args(args).amqp_url,
        credential=credential,
        organization=Organization(organ_id=agency, organ_name=name),
        receipt_trust=receipt_trust,
    )


def _document_from_options(args: argparse.Namespace, sender_code: str) -> DocumentPackage:
    """The document package the options of ``send`` and ``build`` describe (unsigned)."""
    from datetime import date

    from pydantic import ValidationError

    from exchange.agency import AgencyCode, InvalidAgencyCode
    from exchange.edxml.model import Code, DocumentType, Organization, SignerInfo
    from exchange.edxml.writer import attachment_from_file, new_document

    try:
        recipients = [_recipient(text) for text in args.to]
        sender = Organization(organ_id=AgencyCode.parse(sender_code), organ_name=args.sender_name)
    except InvalidAgencyCode as error:
        raise CommandError(str(error)) from None
    try:
        promulgated = date.fromisoformat(args.date) if args.date else date.today()
    except ValueError:
        raise CommandError(
            f"--date {args.date!r} is not a date; write YYYY-MM-DD, e.g. 2026-12-06"
        ) from None
    for path in args.attach or ():
        if not Path(path).is_file():
            raise CommandError(f"cannot read {path}: no such file")
    try:
        return new_document(
            sender=sender,
            recipients=recipients,
            code=Code(code_number=args.number, code_notation=args.notation),
            subject=args.subject,
            promulgation_date=promulgated,
            place=args.place,
            document_type=DocumentType(type="1", type_name=args.type_name),
            signer=SignerInfo(full_name=args.signer, position=args.position),
            attachments=[attachment_from_file(Path(p)) for p in args.attach or ()],
        )
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise CommandError(f"cannot build the document: {where}: {first['msg']}") from None


def _recipient(text: str) -> Organization:
    """``--to CODE`` or ``--to CODE=NAME``; without a name, the code stands for it."""
    from exchange.agency import AgencyCode
    from exchange.edxml.model import Organization

    code, _, name = text.partition("=")
    organ_id = AgencyCode.parse(code.strip())
    return Organization(organ_id=organ_id, organ_name=name.strip() or str(organ_id))


def cmd_build(args: argparse.Namespace) -> int:
    """Write an unsigned document package from options, without sending it."""
    from exchange.checks.schema import check_schema
    from exchange.edxml.safexml import parse
    from exchange.edxml.writer import write_package

    data = write_package(_document_from_options(args, args.sender))
    try:
        check_schema(parse(data))
    except Rejection as rejection:
        raise CommandError(
            f"the package would be refused: {FileVerdict.refused(args.output, rejection).line()}"
        ) from None
    _write_output(args.output, data)
    if args.output != "-":
        print(f"wrote {args.output} (unsigned; `lienthong sign` signs it)")
    return EXIT_OK


def _write_output(output: str, data: bytes) -> None:
    """Write ``data`` to a file, or to stdout for ``-``."""
    if output == "-":
        sys.stdout.buffer.write(data)
        return
    try:
        Path(output).write_bytes(data)
    except OSError as error:
        raise CommandError(f"cannot write {output}: {error.strerror}") from None


def cmd_send(args: argparse.Namespace) -> int:
    """Build a document from metadata and files, sign it, publish it to each recipient."""
    document = _document_from_options(args, args.agency)

    async def send() -> int:
        async with _agency_client(args) as client:
            message_ids = await client.send_document(document)
        if args.json:
            print_json(
                {
                    "document_id": document.document_id,
                    "recipients": [str(code) for code in document.recipient_codes],
                    "message_ids": message_ids,
                }
            )
        else:
            print(
                f"sent {document.document_id} to {len(message_ids)} recipient(s): "
                + ", ".join(str(code) for code in document.recipient_codes)
            )
        return EXIT_OK

    return run(send())


def _idle(args: argparse.Namespace) -> float | None:
    """How long ``inbox`` and ``statuses`` wait for news: for ever with ``--follow``."""
    return None if args.follow else args.idle


def cmd_inbox(args: argparse.Namespace) -> int:
    """Save each received package in DIR, then acknowledge it."""
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot make the folder {out}: {error.strerror}") from None

    async def drain() -> int:
        count = 0
        async with _agency_client(args) as client:
            async for item in client.inbox(idle_timeout=_idle(args)):
                name = item.message_id.replace(":", "_").replace("/", "_") or f"item-{count}"
                path = out / f"{name}.edxml"
                path.write_bytes(item.body)
                await item.ack()
                count += 1
                if args.json:
                    print_json(
                        {
                            "file": str(path),
                            "sender": None if item.sender is None else str(item.sender),
                            "document_id": item.document_id,
                            "message_id": item.message_id,
                        },
                        lines=True,
                    )
                else:
                    print(f"{path}  from {item.sender}  {item.document_id}", flush=True)
        if not args.json:
            print(f"{count} document(s) saved in {out}")
        return EXIT_OK

    return run(drain())


def cmd_statuses(args: argparse.Namespace) -> int:
    """Print (and acknowledge) the receipts and statuses waiting for an agency.

    With ``--trust``, each receipt's signature is verified; one that fails is
    printed with its problem and left unacknowledged, and the exit status is 1.
    """
    from exchange.receipts import ReceiptSignatureError

    async def drain() -> int:
        refused = False
        async with _agency_client(args) as client:
            async for item in client.statuses(idle_timeout=_idle(args)):
                if item.is_receipt:
                    try:
                        line = item.receipt.model_dump(mode="json")
                    except ReceiptSignatureError as error:
                        refused = True
                        _print_unverified(item.message_id, error, as_json=args.json)
                        continue  # left on the queue, for when the anchor is right
                else:
                    status = item.status
                    line = {
                        "type": "status",
                        "document_id": status.response_for.document_id,
                        "from": str(status.sender.organ_id),
                        "status_code": status.status_code.value,
                        "description": status.description,
                        "timestamp": status.timestamp.isoformat(),
                    }
                if args.json:
                    print_json(line, lines=True)
                else:
                    print(_status_line(line, args.lang), flush=True)
                await item.ack()
        return EXIT_REFUSED if refused else EXIT_OK

    return run(drain())


def _print_unverified(message_id: str, error: Any, *, as_json: bool) -> None:
    """The line of a receipt whose signature did not verify (a ReceiptSignatureError)."""
    if as_json:
        print_json(
            {
                "type": "receipt",
                "message_id": message_id,
                "verified": False,
                "problem": error.problem.value,
                "reason": str(error),
            },
            lines=True,
        )
    else:
        print(
            f"receipt {message_id}: {error.problem.value}: {error} (not acknowledged)", flush=True
        )


def _status_line(item: dict[str, Any], language: str = "vi") -> str:
    if item["type"] == "receipt":
        reason = item["reason"] if language == "vi" else item["reason_en"]
        why = f" {item['reason_code']}: {reason}" if item["reason_code"] else ""
        warned = "".join(f"; warning: {warning}" for warning in item.get("warnings") or ())
        return (
            f"receipt {item['document_id']} -> {item['recipient']}: {item['outcome']}{why}{warned}"
        )
    return (
        f"status  {item['document_id']} at {item['from']}: {item['status_code']} "
        f"{item['description'] or ''}"
    )


def cmd_report_status(args: argparse.Namespace) -> int:
    """Report a business status for a received document (a file saved by `inbox`)."""
    from exchange.edxml.reader import read_document
    from exchange.status import StatusCode

    try:
        code = StatusCode(args.code)
    except ValueError:
        allowed = ", ".join(c.value for c in StatusCode)
        raise CommandError(f"--code {args.code} is not a status code; allowed: {allowed}") from None
    try:
        document = read_document(_read_file(args.document))
    except Rejection as rejection:
        raise CommandError(f"{args.document} is not a readable document: {rejection}") from None

    async def report() -> int:
        async with _agency_client(args) as client:
            await client.report_status(document, code, args.description)
        if args.json:
            print_json(
                {
                    "document_id": document.document_id,
                    "status_code": code.value,
                    "to": str(document.sender.organ_id),
                }
            )
        else:
            print(
                f"reported {code.value} for {document.document_id or args.document} "
                f"to {document.sender.organ_id}"
            )
        return EXIT_OK

    return run(report())


def cmd_trace(args: argparse.Namespace) -> int:
    """Print a document's timeline: submitted, then per recipient each receipt and status."""
    from exchange.edxml.model import VIETNAM_TIME
    from exchange.operator_log import reading
    from exchange.store import queries
    from exchange.store.db import connect

    sender = _agency_code(args.sender, "--sender") if args.sender else None
    settings = settings_from_args(args)

    async def tracing() -> int:
        # Recorded in the operator log before anything is read.
        await reading()
        conn = await connect(settings)
        try:
            traces = await queries.trace(conn, args.document, sender)
        finally:
            await conn.close()
        if not traces:
            print(f"no document {args.document!r} is recorded", file=sys.stderr)
            return EXIT_REFUSED
        if args.json:
            print_json([_trace_json(t) for t in traces])
            return EXIT_OK
        for trace in traces:
            doc = trace.document
            print(f'{doc.document_id}  from {doc.sender}  "{doc.subject or ""}"')
            submitted = trace.submitted_at.astimezone(VIETNAM_TIME)
            print(f"  {submitted:%Y-%m-%d %H:%M:%S%z}  submitted")
            for recipient in trace.recipients:
                print(f"  -> {recipient.delivery.recipient} {recipient.recipient_name}")
                for event in recipient.events:
                    label = event.code.value
                    extra = event.description or event.reason_code or ""
                    when = event.at.astimezone(VIETNAM_TIME)
                    print(f"     {when:%Y-%m-%d %H:%M:%S%z}  {event.kind.value:<7} {label} {extra}")
                for copy in recipient.copies:
                    when = copy.published_at.astimezone(VIETNAM_TIME)
                    print(
                        f"     {when:%Y-%m-%d %H:%M:%S%z}  copy    to {copy.subscriber} "
                        f"{copy.subscriber_name} (subscribed to {copy.pattern})"
                    )
        return EXIT_OK

    return run(tracing())


def _trace_json(trace: Any) -> dict[str, Any]:
    doc = trace.document
    return {
        "document_id": doc.document_id,
        "sender": str(doc.sender),
        "subject": doc.subject,
        "submitted_at": trace.submitted_at.isoformat(),
        "recipients": [
            {
                "recipient": str(r.delivery.recipient),
                "name": r.recipient_name,
                "state": None if r.delivery.state.latest is None else r.delivery.state.latest.value,
                "recall_pending": r.delivery.state.recall_pending,
                "withdrawn": r.delivery.state.withdrawn,
                "events": [
                    {
                        "kind": e.kind.value,
                        "code": e.code.value,
                        "at": e.at.isoformat(),
                        "reason_code": e.reason_code,
                        "description": e.description,
                    }
                    for e in r.events
                ],
                "copies": [
                    {
                        "subscriber": str(c.subscriber),
                        "name": c.subscriber_name,
                        "pattern": c.pattern,
                        "published_at": c.published_at.isoformat(),
                    }
                    for c in r.copies
                ],
            }
            for r in trace.recipients
        ],
    }


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the four-level demo and print what every sender sees."""
    from exchange.demo import run_demo

    settings = settings_from_args(args)

    async def demo() -> int:
        table = await run_demo(
            settings,
            Path(args.keys),
            workers=args.workers,
            via_gateway=args.via_gateway,
            certificate_login=args.certificate_login,
        )
        print()
        mailbox = ", or its mailbox on the gateway" if args.via_gateway else ""
        print(f"What every sender sees (from its own status queue{mailbox}):")
        print(table)
        return EXIT_OK

    return run(demo())


# -- the parser ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    import shtab

    parser = argparse.ArgumentParser(
        prog="lienthong",
        description="Electronic document exchange between Vietnamese state agencies "
        "(edXML, QCVN 102:2016).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="on a failure, show the traceback too")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    language = argparse.ArgumentParser(add_help=False)
    language.add_argument(
        "--lang",
        choices=["vi", "en"],
        default=default_language(),
        help="language of the reasons for the clerk (default: vi when the locale is "
        "Vietnamese, else en)",
    )

    # Each command offers the connection options of the services it uses.
    options = ServiceOptions.build()
    amqp, database = options.amqp, options.database
    services = options.every

    keys = commands.add_parser("keys", help="development CA and agency certificates")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = keys_commands.add_parser("init", help="create a development CA")
    _completes(
        init.add_argument("--dir", required=True, help="directory for ca.key.pem and ca.cert.pem"),
        shtab.DIRECTORY,
    )
    init.add_argument("--name", default="lienthong development CA", help="the CA's common name")
    init.add_argument("--key-type", default="ecdsa-p256", choices=_key_types())
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(handler=cmd_keys_init)
    issue = keys_commands.add_parser("issue", help="issue an agency key and certificate")
    issue.add_argument("code", help="agency code, e.g. 000.00.00.G22")
    _completes(
        issue.add_argument(
            "--dir", required=True, help="the CA directory; files are written there"
        ),
        shtab.DIRECTORY,
    )
    issue.add_argument("--name", help="the agency's name for the certificate subject")
    issue.add_argument("--key-type", default="rsa-2048", choices=_key_types())
    issue.set_defaults(handler=cmd_keys_issue)
    exchange_key = keys_commands.add_parser(
        "issue-exchange", help="issue the exchange's receipt-signing key and certificate"
    )
    _completes(
        exchange_key.add_argument(
            "--dir",
            required=True,
            help="the CA directory; exchange.key.pem and exchange.cert.pem are written there",
        ),
        shtab.DIRECTORY,
    )
    exchange_key.add_argument(
        "--name", default="lienthong exchange", help="the certificate's common name"
    )
    exchange_key.add_argument("--key-type", default="ecdsa-p256", choices=_key_types())
    exchange_key.add_argument("--force", action="store_true", help="replace an existing one")
    exchange_key.set_defaults(handler=cmd_keys_issue_exchange)
    revoking = keys_commands.add_parser(
        "revoke",
        parents=[database],
        help="revoke an agency certificate; write the CA's revocation list (recorded in the "
        "operator log)",
    )
    revoking.add_argument("code", help="agency code whose certificate is revoked")
    _completes(
        revoking.add_argument(
            "--dir", required=True, help="the CA directory; ca.crl.pem is written there"
        ),
        shtab.DIRECTORY,
    )
    _completes(
        revoking.add_argument(
            "--cert", help="the certificate to revoke (default DIR/CODE.cert.pem)"
        ),
        shtab.FILE,
    )
    revoking.set_defaults(handler=cmd_keys_revoke)
    for role, role_help, name_help in (
        (
            "server",
            "issue a TLS server certificate (the broker, the gateway)",
            "file stem, e.g. broker",
        ),
        (
            "client",
            "issue a TLS client certificate for the exchange's own processes",
            "the certificate's common name, e.g. lienthong-worker",
        ),
    ):
        tls = keys_commands.add_parser(role, help=role_help)
        tls.add_argument("name", help=name_help)
        _completes(
            tls.add_argument(
                "--dir", required=True, help="the CA directory; files are written there"
            ),
            shtab.DIRECTORY,
        )
        tls.add_argument(
            "--host",
            action="append",
            required=role == "server",
            help="a DNS name or IP address the server answers as (repeat for several)"
            if role == "server"
            else argparse.SUPPRESS,
        )
        tls.set_defaults(handler=cmd_keys_tls)
    crl = keys_commands.add_parser(
        "crl", help="write the CA's revocation list anew before its nextUpdate"
    )
    _completes(crl.add_argument("--dir", required=True, help="the CA directory"), shtab.DIRECTORY)
    crl.set_defaults(handler=cmd_keys_crl)

    sign = commands.add_parser(
        "sign", parents=[language], help="sign a package (XML-DSig, enveloped)"
    )
    _completes(sign.add_argument("input", help="the package to sign"), shtab.FILE)
    _completes(
        sign.add_argument("--key", required=True, help="the agency's private key (PEM)"), shtab.FILE
    )
    _completes(
        sign.add_argument("--cert", required=True, help="the agency's certificate (PEM)"),
        shtab.FILE,
    )
    sign.add_argument("--digest", default="sha256", choices=["sha256", "sha384", "sha512"])
    sign.add_argument("-o", "--output", required=True, help="where to write; - for stdout")
    sign.set_defaults(handler=cmd_sign)

    verify = commands.add_parser("verify", parents=[language], help="verify packages' signatures")
    _completes(verify.add_argument("files", nargs="+", metavar="FILE"), shtab.FILE)
    _completes(
        verify.add_argument(
            "--trust", required=True, help="CA certificate(s): a PEM file or a dir"
        ),
        shtab.FILE,
    )
    verify.add_argument("--allow-sha1", action="store_true", help="accept legacy SHA-1")
    _completes(
        verify.add_argument(
            "--crl",
            action="append",
            metavar="FILE",
            help="a CA's revocation list (PEM or DER), or a directory of them; repeatable",
        ),
        shtab.FILE,
    )
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(handler=cmd_verify)

    validate = commands.add_parser(
        "validate", parents=[language], help="check packages against the edXML schema"
    )
    _completes(validate.add_argument("files", nargs="+", metavar="FILE"), shtab.FILE)
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    validate.set_defaults(handler=cmd_validate)

    show = commands.add_parser(
        "show", parents=[language], help="print what packages say (no signature check)"
    )
    show.add_argument("files", nargs="+", metavar="FILE")
    show.add_argument("--json", action="store_true", help="one JSON object per file, in a list")
    show.set_defaults(handler=cmd_show)

    schema = commands.add_parser("schema", help="print a published schema")
    schema.add_argument(
        "name",
        choices=["receipt", "receipt-cert"],
        help="receipt: the receipts' JSON Schema; receipt-cert: the certificate (chain) "
        "receipts are signed with (LIENTHONG_RECEIPT_CERT)",
    )
    schema.set_defaults(handler=cmd_schema)

    receipt = commands.add_parser("receipt", help="the exchange's signed receipts")
    receipt_commands = receipt.add_subparsers(
        dest="receipt_command", required=True, metavar="ACTION"
    )
    receipt_verify = receipt_commands.add_parser(
        "verify", help="verify receipts' signatures (exit 1 if one does not verify)"
    )
    _completes(receipt_verify.add_argument("files", nargs="+", metavar="FILE"), shtab.FILE)
    _completes(
        receipt_verify.add_argument(
            "--trust",
            required=True,
            help="the CA certificate(s) of the exchange's receipt certificate: a PEM file or a dir",
        ),
        shtab.FILE,
    )
    receipt_verify.add_argument("--json", action="store_true", help="machine-readable output")
    receipt_verify.set_defaults(handler=cmd_receipt_verify)

    agency_side = argparse.ArgumentParser(add_help=False, parents=[amqp])
    agency_side.add_argument(
        "--as", dest="agency", required=True, metavar="CODE", help="the agency acting (its code)"
    )
    signing = argparse.ArgumentParser(add_help=False)
    _completes(
        signing.add_argument("--key", required=True, help="the agency's private key (PEM)"),
        shtab.FILE,
    )
    _completes(
        signing.add_argument("--cert", required=True, help="the agency's certificate (PEM)"),
        shtab.FILE,
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="machine-readable output")
    password = argparse.ArgumentParser(add_help=False)
    password.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the broker user's password from the first line of standard input",
    )

    init_cmd = commands.add_parser(
        "init",
        parents=[services, as_json],
        help="migrate the database (as its owner), declare the core topology, apply the "
        "limits per agency",
    )
    init_cmd.add_argument(
        "--owner-database-url",
        help="PostgreSQL as the schema's owner, for the migrations "
        "(default LIENTHONG_OWNER_DATABASE_URL, else --database-url)",
    )
    init_cmd.add_argument(
        "--create-login",
        metavar="NAME",
        help="also create the database login role NAME for a worker or a gateway "
        "(with --roles-sql: name it in the SQL)",
    )
    init_cmd.add_argument(
        "--group",
        # exchange.store.roles.GROUPS, not imported to build the parser.
        choices=["gateway", "worker"],
        default="worker",
        help="the group the login role joins (default: worker)",
    )
    init_cmd.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the login role's password from standard input (default: a new one, printed)",
    )
    init_cmd.add_argument(
        "--roles-sql",
        action="store_true",
        help="print the SQL a superuser runs once to create the roles and the database; "
        "connect to nothing",
    )
    init_cmd.set_defaults(handler=cmd_init)

    topology = commands.add_parser("topology", help="print the broker topology")
    topology.add_argument(
        "--definitions", action="store_true", help="as a RabbitMQ definitions file (JSON)"
    )
    topology.add_argument("--vhost", default="/", help="the vhost for the definitions file")
    topology.set_defaults(handler=cmd_topology)

    agency = commands.add_parser("agency", help="the agency directory")
    agency_commands = agency.add_subparsers(dest="agency_command", required=True, metavar="ACTION")
    add = agency_commands.add_parser(
        "add",
        parents=[services, password, as_json],
        help="register a new agency (refused if the code is registered)",
    )
    add.add_argument("code", help="agency code, e.g. 000.00.00.H26")
    add.add_argument("--name", required=True, help="the agency's name")
    _completes(
        add.add_argument(
            "--cert",
            action="append",
            help="a certificate it signs with (PEM, naming the code); repeatable (rollover); "
            "without one it can receive but not send",
        ),
        shtab.FILE,
    )
    add.add_argument(
        "--allow-sha1",
        action="store_true",
        help="accept this agency's SHA-1 signatures (legacy software); no other's",
    )
    add.add_argument(
        "--subscribe",
        action="append",
        metavar="PATTERN",
        help="also receive what is addressed to a subtree, e.g. '*.*.*.H26'",
    )
    add.add_argument(
        "--broker-user",
        help="its RabbitMQ user, with --no-certificate-login or without --cert (default: the code)",
    )
    add.add_argument(
        "--no-certificate-login",
        action="store_true",
        help="a broker user with a password, not the certificate login (auth=external) an "
        "agency with --cert gets",
    )
    add.add_argument(
        "--no-broker-user",
        action="store_true",
        help="leave the broker user alone (managed elsewhere)",
    )
    add.add_argument(
        "--rotate-password",
        action="store_true",
        help="the broker user lienthong made exists already (an earlier registration): "
        "give it a new password (printed once; --password-stdin gives one)",
    )
    add.set_defaults(handler=cmd_agency_add)
    change = agency_commands.add_parser(
        "set",
        parents=[services, password, as_json],
        help="change a registered agency: only what is given",
    )
    change.add_argument("code", help="agency code")
    change.add_argument("--name", help="its new name")
    _completes(
        change.add_argument(
            "--cert",
            action="append",
            help="replace its certificates with this one (PEM, naming the code); repeatable",
        ),
        shtab.FILE,
    )
    change.add_argument(
        "--allow-sha1",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="accept (or no longer accept) its SHA-1 signatures",
    )
    subscribing = change.add_mutually_exclusive_group()
    subscribing.add_argument(
        "--subscribe",
        action="append",
        metavar="PATTERN",
        help="its subscriptions: replace the list with these (repeat for several)",
    )
    subscribing.add_argument(
        "--no-subscriptions", action="store_true", help="remove every subscription"
    )
    change.add_argument(
        "--broker-user",
        help="move it to this new RabbitMQ user (password printed once, or --password-stdin); "
        "the old user is deleted",
    )
    change.add_argument(
        "--rotate-password",
        action="store_true",
        help="give its broker user a new password (printed once); --password-stdin gives one",
    )
    change.add_argument(
        "--rate",
        type=float,
        metavar="PER_S",
        help="messages per second it may publish, sustained (with --burst); past it, "
        "REJECTED_QUOTA (default LIENTHONG_QUOTA_RATE_PER_S)",
    )
    change.add_argument(
        "--burst",
        type=int,
        metavar="MESSAGES",
        help="messages it may publish at once above its rate (with --rate; default "
        "LIENTHONG_QUOTA_BURST)",
    )
    change.add_argument(
        "--default-rate",
        action="store_true",
        help="back to the defaults LIENTHONG_QUOTA_RATE_PER_S and LIENTHONG_QUOTA_BURST",
    )
    change.set_defaults(handler=cmd_agency_set)
    disable = agency_commands.add_parser(
        "disable",
        parents=[services, as_json],
        help="take its access away (broker user deleted); registration and history stay",
    )
    disable.add_argument("code", help="agency code")
    disable.set_defaults(handler=cmd_agency_disable)
    enable = agency_commands.add_parser(
        "enable",
        parents=[services, password, as_json],
        help="give a disabled agency its access back (new broker password, printed once)",
    )
    enable.add_argument("code", help="agency code")
    enable.set_defaults(handler=cmd_agency_enable)
    show = agency_commands.add_parser(
        "show", parents=[database, as_json], help="one agency's registration"
    )
    show.add_argument("code", help="agency code")
    show.set_defaults(handler=cmd_agency_show)
    listing = agency_commands.add_parser(
        "list", parents=[database, as_json], help="list agencies as a tree"
    )
    listing.set_defaults(handler=cmd_agency_list)
    cert = agency_commands.add_parser("cert", help="the certificates an agency signs with")
    cert_commands = cert.add_subparsers(dest="cert_command", required=True, metavar="ACTION")
    for action, verb, handler in (
        ("add", "register one more certificate (a rollover)", cmd_agency_cert_add),
        ("remove", "retire a certificate: what it signs is refused", cmd_agency_cert_remove),
    ):
        one = cert_commands.add_parser(action, parents=[database, as_json], help=verb)
        one.add_argument("code", help="agency code")
        _completes(one.add_argument("file", help="the certificate (PEM)"), shtab.FILE)
        one.set_defaults(handler=handler)

    worker = commands.add_parser("worker", parents=[amqp, database], help="run workers")
    _completes(
        worker.add_argument("--trust", help="CA certificate(s) (default LIENTHONG_TRUST)"),
        shtab.FILE,
    )
    worker.add_argument("--count", type=int, default=1, help="workers in this process")
    worker.add_argument(
        "--metrics-port",
        type=int,
        help="port of this process's Prometheus endpoint (default LIENTHONG_METRICS_PORT "
        "or 9108; one port per worker process; 0: none)",
    )
    worker.add_argument(
        "--metrics-host",
        help="address the Prometheus endpoint binds to (default LIENTHONG_METRICS_HOST "
        "or 127.0.0.1; 0.0.0.0: every interface)",
    )
    worker.set_defaults(handler=cmd_worker)

    document_options = argparse.ArgumentParser(add_help=False)
    document_options.add_argument(
        "--to",
        action="append",
        required=True,
        metavar="CODE[=NAME]",
        help="a recipient, with its name if you know it (repeat for several)",
    )
    document_options.add_argument("--number", required=True, help="số văn bản (CodeNumber)")
    document_options.add_argument("--notation", required=True, help="ký hiệu (CodeNotation)")
    document_options.add_argument("--subject", required=True, help="trích yếu")
    document_options.add_argument("--date", help="promulgation date, YYYY-MM-DD (default today)")
    document_options.add_argument("--place", default="Hà Nội", help="place of promulgation")
    document_options.add_argument("--type-name", default="Công văn", help="document type name")
    document_options.add_argument("--signer", required=True, help="the signer's full name")
    document_options.add_argument("--position", default="", help="the signer's position")
    document_options.add_argument(
        "--sender-name", required=True, help="the sending agency's name (OrganName)"
    )
    _completes(
        document_options.add_argument(
            "--attach", action="append", metavar="FILE", help="attach a file"
        ),
        shtab.FILE,
    )

    send = commands.add_parser(
        "send",
        parents=[agency_side, signing, document_options, as_json],
        help="build, sign and send a document; prints its DocumentId",
    )
    send.set_defaults(handler=cmd_send)

    build = commands.add_parser(
        "build",
        parents=[document_options],
        help="write an unsigned document package, without sending it",
    )
    build.add_argument(
        "--from", dest="sender", required=True, metavar="CODE", help="the sending agency's code"
    )
    build.add_argument("-o", "--output", required=True, help="where to write; - for stdout")
    build.set_defaults(handler=cmd_build)

    following = argparse.ArgumentParser(add_help=False)
    following.add_argument(
        "--follow", action="store_true", help="keep waiting for news until interrupted (Ctrl-C)"
    )

    inbox = commands.add_parser(
        "inbox",
        parents=[agency_side, following, as_json],
        help="save received documents and acknowledge them",
    )
    _completes(
        inbox.add_argument("--out", required=True, help="directory to save packages in"),
        shtab.DIRECTORY,
    )
    inbox.add_argument(
        "--idle",
        type=float,
        default=2.0,
        help="stop after this many seconds without a new document",
    )
    inbox.set_defaults(handler=cmd_inbox)

    statuses = commands.add_parser(
        "statuses",
        parents=[agency_side, following, as_json, language],
        help="print receipts and statuses, and acknowledge them",
    )
    statuses.add_argument(
        "--idle", type=float, default=2.0, help="stop after this many seconds without news"
    )
    _completes(
        statuses.add_argument(
            "--trust",
            help="verify each receipt's signature against these CA certificate(s); one that "
            "fails is printed and not acknowledged (exit 1)",
        ),
        shtab.FILE,
    )
    statuses.set_defaults(handler=cmd_statuses)

    report = commands.add_parser(
        "report-status",
        parents=[agency_side, signing, as_json],
        help="report a status for a received document",
    )
    _completes(
        report.add_argument("document", help="the received package (a file saved by `inbox`)"),
        shtab.FILE,
    )
    report.add_argument("--code", required=True, help="StatusCode: 01..06, 15, 16")
    report.add_argument("--description", help="what happened, for the sender's clerk")
    report.add_argument(
        "--sender-name", help="the reporting agency's name for OrganName (default: the code)"
    )
    report.set_defaults(handler=cmd_report_status)

    trace = commands.add_parser("trace", parents=[database, as_json], help="a document's timeline")
    trace.add_argument("document", help="its DocumentId")
    trace.add_argument("--sender", help="the sender's code, if several sent that id")
    trace.set_defaults(handler=cmd_trace)

    demo = commands.add_parser("demo", parents=[services], help="run the four-level demo")
    _completes(
        demo.add_argument("--keys", default="var/demo-keys", help="where the demo CA and keys go"),
        shtab.DIRECTORY,
    )
    demo.add_argument("--workers", type=int, default=2, help="workers to run")
    demo.add_argument(
        "--certificate-login",
        action="store_true",
        help="agencies log in to the broker with their certificates (auth=external); the "
        "broker must trust the CA in --keys",
    )
    demo.add_argument(
        "--via-gateway",
        action="store_true",
        help="the district of Phú Thọ and its commune connect through the gateway (axis protocol)",
    )
    demo.set_defaults(handler=cmd_demo)

    completion = commands.add_parser(
        "completion", help="print a shell completion script (bash, zsh or tcsh)"
    )
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    completion.set_defaults(handler=cmd_completion)

    # Operator tools that live in their own modules add their own commands.
    from exchange.audit import add_commands as add_audit_commands
    from exchange.benchmark.commands import add_commands as add_bench_commands
    from exchange.gateway.commands import add_commands as add_gateway_commands
    from exchange.replay import add_commands as add_replay_commands
    from exchange.report import add_commands as add_report_commands
    from exchange.retention import add_commands as add_retention_commands

    add_replay_commands(commands, options)
    add_report_commands(commands, services)
    add_audit_commands(commands, services)
    add_bench_commands(commands, services)
    add_gateway_commands(commands, options)
    add_retention_commands(commands, services)
    return parser


def _completes(action: argparse.Action, kind: Any) -> None:
    """Tell shtab what the option takes (``shtab.FILE``, ``shtab.DIRECTORY``) for completion."""
    action.complete = kind  # type: ignore[attr-defined]


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the completion script of ``args.shell`` for every command and option."""
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lienthong")
    except PackageNotFoundError:
        return "(not installed)"


def _key_types() -> list[str]:
    from exchange.pki import KeyType

    return [k.value for k in KeyType]


def _log_warnings(*, debug: bool) -> None:
    """Warnings of the exchange's own modules on stderr; the libraries' only with ``--debug``.

    aiormq and aio-pika log each failed connection attempt before raising;
    the failure itself is the one line :func:`main` prints. ``lienthong
    worker`` replaces this with the workers' structured logs.
    """
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("lienthong: %(levelname)s: %(name)s: %(message)s"))
    if not debug:
        handler.addFilter(lambda record: record.name.startswith("exchange"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Whatever stops a command becomes one line on stderr, ``lienthong: ...``,
    and exit status 2 (``--debug`` adds the traceback); Ctrl-C ends with 130.
    """
    from exchange.checks.schema import use_schema_dir
    from exchange.operator_log import accountable

    args = build_parser().parse_args(argv)
    _log_warnings(debug=args.debug)
    try:
        use_schema_dir(settings_from_args(args).schema_dir)
        # Operator actions leave a row in the operator log (exchange/operator_log.py).
        return int(accountable(args, args.handler))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:
        try:
            settings = settings_from_args(args)
        except Exception:  # the settings themselves are what failed
            settings = None
        return report_error(error, settings, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
