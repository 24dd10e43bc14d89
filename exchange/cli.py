"""The ``lienthong`` command: keys, signing, checking, and running the exchange.

Every subcommand prints what a person needs on a terminal and, with
``--json``, what a program needs. Failures print a sentence, never a stack
trace, and set a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exchange.reasons import Rejection

# Exit statuses: 0 all good, 1 some input was refused, 2 the command could not run.
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_ERROR = 2


class CommandError(Exception):
    """A command could not run; the message is for the person at the terminal."""


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
    def refused(cls, file: str, rejection: Rejection) -> FileVerdict:
        """The verdict for a file refused with ``rejection``."""
        return cls(
            file,
            False,
            reason_code=rejection.code,
            reason=rejection.reason.english,
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
        print(json.dumps([v.__dict__ for v in verdicts], ensure_ascii=False, indent=2))
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


# -- packages -----------------------------------------------------------------


def cmd_sign(args: argparse.Namespace) -> int:
    """Sign a package with an agency key and certificate."""
    from exchange.checks.signature import sign

    data = _read_file(args.input)
    try:
        signed = sign(data, _read_file(args.key), _read_file(args.cert), digest=args.digest)
    except Rejection as rejection:
        print(FileVerdict.refused(args.input, rejection).line(), file=sys.stderr)
        return EXIT_REFUSED
    if args.output == "-":
        sys.stdout.buffer.write(signed)
    else:
        Path(args.output).write_bytes(signed)
        print(f"signed {args.input} -> {args.output}")
    return EXIT_OK


def _check_files(
    files: Sequence[str], check: Callable[[str, bytes], FileVerdict]
) -> list[FileVerdict]:
    verdicts = []
    for file in files:
        data = _read_file(file)
        try:
            verdicts.append(check(file, data))
        except Rejection as rejection:
            verdicts.append(FileVerdict.refused(file, rejection))
    return verdicts


def cmd_validate(args: argparse.Namespace) -> int:
    """Check files against the edXML schema and the reader's rules (no signature)."""
    from exchange.checks.schema import check_schema
    from exchange.edxml.model import StatusPackage
    from exchange.edxml.reader import read_package
    from exchange.edxml.safexml import parse

    def check(file: str, data: bytes) -> FileVerdict:
        root = parse(data)
        check_schema(root)
        package = read_package(root)
        return FileVerdict(file, True, kind=_kind(package, StatusPackage))

    return _report(_check_files(args.files, check), args.json)


def _kind(package: Any, status_type: type) -> str:
    is_status = isinstance(package, status_type)
    status_code = getattr(package, "status_code", None) if is_status else None
    return f"status {status_code.value}" if status_code is not None else "document"


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify files' signatures against trusted CA certificates."""
    from exchange.checks.signature import verify
    from exchange.edxml.model import StatusPackage
    from exchange.edxml.reader import read_package
    from exchange.edxml.safexml import parse
    from exchange.pki import TrustStore

    try:
        trust = TrustStore.load(args.trust)
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot load the trust anchors from {args.trust}: {error}") from None

    def check(file: str, data: bytes) -> FileVerdict:
        verified = verify(parse(data), trust, allow_sha1=args.allow_sha1)
        package = read_package(verified.signed_root)
        return FileVerdict(
            file, True, signer=str(verified.agency), kind=_kind(package, StatusPackage)
        )

    return _report(_check_files(args.files, check), args.json)


def cmd_schema(args: argparse.Namespace) -> int:
    """Print a published schema (the receipt JSON Schema)."""
    from exchange.receipts import receipt_json_schema

    sys.stdout.write(receipt_json_schema())
    return EXIT_OK


# -- the parser ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="lienthong",
        description="Electronic document exchange between Vietnamese state agencies "
        "(edXML, QCVN 102:2016).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = commands.add_parser("keys", help="development CA and agency certificates")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = keys_commands.add_parser("init", help="create a development CA")
    init.add_argument("--dir", required=True, help="directory for ca.key.pem and ca.cert.pem")
    init.add_argument("--name", default="lienthong development CA", help="the CA's common name")
    init.add_argument("--key-type", default="ecdsa-p256", choices=_key_types())
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(handler=cmd_keys_init)
    issue = keys_commands.add_parser("issue", help="issue an agency key and certificate")
    issue.add_argument("code", help="agency code, e.g. 000.00.00.G22")
    issue.add_argument("--dir", required=True, help="the CA directory; files are written there")
    issue.add_argument("--name", help="the agency's name for the certificate subject")
    issue.add_argument("--key-type", default="rsa-2048", choices=_key_types())
    issue.set_defaults(handler=cmd_keys_issue)

    sign = commands.add_parser("sign", help="sign a package (XML-DSig, enveloped)")
    sign.add_argument("input", help="the package to sign")
    sign.add_argument("--key", required=True, help="the agency's private key (PEM)")
    sign.add_argument("--cert", required=True, help="the agency's certificate (PEM)")
    sign.add_argument("--digest", default="sha256", choices=["sha256", "sha384", "sha512"])
    sign.add_argument("-o", "--output", required=True, help="where to write; - for stdout")
    sign.set_defaults(handler=cmd_sign)

    verify = commands.add_parser("verify", help="verify packages' signatures")
    verify.add_argument("files", nargs="+", metavar="FILE")
    verify.add_argument("--trust", required=True, help="CA certificate(s): a PEM file or a dir")
    verify.add_argument("--allow-sha1", action="store_true", help="accept legacy SHA-1")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(handler=cmd_verify)

    validate = commands.add_parser("validate", help="check packages against the edXML schema")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    validate.set_defaults(handler=cmd_validate)

    schema = commands.add_parser("schema", help="print a published schema")
    schema.add_argument("name", choices=["receipt"])
    schema.set_defaults(handler=cmd_schema)
    return parser


def _key_types() -> list[str]:
    from exchange.pki import KeyType

    return [k.value for k in KeyType]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except CommandError as error:
        print(f"lienthong: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
