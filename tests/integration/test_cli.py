"""The ``lienthong`` command against the real RabbitMQ and PostgreSQL.

Every failure is one line, ``lienthong: ...``, naming what failed and what
to do, with exit status 2 (1 stays "input refused"); an agency is
registered all or nothing, and changed, not replaced.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest

from exchange import cli
from exchange.broker.admin import BrokerAdmin
from exchange.broker.topology import DELIVER_EXCHANGE, inbox_queue, status_queue
from exchange.registry import url_for_user
from tests.broker_fixtures import BrokerVhost, _run, amqp_url_for
from tests.db_fixtures import run_sync
from tests.exchange_fixtures import ExchangeUnderTest, wait_for
from tests.keys import TestPKI

REPO = Path(__file__).resolve().parents[2]

CODE = "000.00.00.H26"


@dataclass
class Outcome:
    """What one run of the command did."""

    status: int
    out: str
    err: str

    def one_line_error(self) -> str:
        """The single ``lienthong:`` line on stderr (asserted to be just that)."""
        assert self.status == cli.EXIT_ERROR, (self.status, self.out, self.err)
        assert "Traceback" not in self.err
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("lienthong: "), self.err
        return lines[0]


@pytest.fixture
def lienthong(capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """Run ``lienthong ARGS...`` in this process; its exit status, stdout and stderr."""

    def run(*argv: str) -> Outcome:
        status = cli.main(list(argv))
        captured = capsys.readouterr()
        return Outcome(status, captured.out, captured.err)

    return run


@dataclass
class Place:
    """Where a test's command runs: its database, its vhost, its keys and files."""

    database_url: str
    vhost: BrokerVhost
    pki: TestPKI
    tmp: Path
    broker_users: list[str]

    @property
    def services(self) -> list[str]:
        """The connection options pointing at this test's database and vhost."""
        return ["--database-url", self.database_url, "--amqp-url", self.vhost.amqp_url]

    def broker_user(self, code: str = CODE) -> str:
        """A broker user name of this test (deleted afterwards)."""
        user = f"t{uuid.uuid4().hex[:8]}-{code}"
        self.broker_users.append(user)
        return user


@pytest.fixture
def place(
    database_url: str,
    broker_vhost: BrokerVhost,
    broker_admin: BrokerAdmin,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Place]:
    """A database and vhost of this test's own; the broker users it made are deleted after."""
    for name in ("AMQP_URL", "DATABASE_URL", "RABBITMQ_API_URL"):
        monkeypatch.delenv(f"LIENTHONG_{name}_FILE", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout's
    pki = TestPKI.create(tmp_path / "keys")
    users: list[str] = []
    yield Place(database_url, broker_vhost, pki, tmp_path, users)
    for user in users:
        _run(lambda user=user: broker_admin.delete_user(user))  # type: ignore[misc]


def _not_pem(place: Place) -> str:
    path = place.tmp / "not-a-certificate.pem"
    path.write_text("this is not PEM\n")
    return str(path)


def _changed_migration(place: Place) -> None:
    async def change() -> None:
        conn = await asyncpg.connect(place.database_url)
        try:
            await conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")
        finally:
            await conn.close()

    run_sync(change())


def _package(place: Place) -> str:
    from exchange.edxml.model import Code, DocumentType, Organization, SignerInfo
    from exchange.edxml.writer import new_document, write_package

    document = new_document(
        sender=Organization(organ_id="000.00.00.G22"),
        recipients=[Organization(organ_id="000.00.00.G09")],
        code=Code(code_number="1", code_notation="VPCP"),
        subject="Thử",
        promulgation_date=__import__("datetime").date(2025, 1, 2),
        place="Hà Nội",
        document_type=DocumentType(type="1", type_name="Công văn"),
        signer=SignerInfo(full_name="A", position="B"),
    )
    path = place.tmp / "document.edxml"
    path.write_bytes(write_package(document))
    return str(path)


AS_AGENCY = ["--as", "000.00.00.G22"]


def _cases() -> list[tuple[str, Callable[[Place], list[str]], dict[str, str], str]]:
    """(name, the arguments, environment, what the line says) of each failure."""
    api = "http://guest:guest@127.0.0.1:15672"
    return [
        (
            "management API off",
            lambda p: [
                "agency",
                "add",
                CODE,
                "--name",
                "x",
                *p.services,
                "--broker-user",
                p.broker_user(),
                "--rabbitmq-api-url",
                "http://guest:guest@127.0.0.1:1",
            ],
            {},
            "the RabbitMQ management API at http://guest@127.0.0.1:1: no answer: ",
        ),
        (
            "management API wrong password",
            lambda p: [
                "agency",
                "add",
                CODE,
                "--name",
                "x",
                *p.services,
                "--broker-user",
                p.broker_user(),
                "--rabbitmq-api-url",
                "http://guest:wrong@127.0.0.1:15672",
            ],
            {},
            "authentication failed for user guest (HTTP 401); check the user and password "
            "in --rabbitmq-api-url or LIENTHONG_RABBITMQ_API_URL",
        ),
        (
            "management API bad URL",
            lambda p: [
                "agency",
                "add",
                CODE,
                "--name",
                "x",
                *p.services,
                "--rabbitmq-api-url",
                "localhost:15672",
            ],
            {},
            "must look like https://user:password@host:15671",
        ),
        (
            "worker trusting a file that is not PEM",
            lambda p: ["worker", *p.services, "--trust", _not_pem(p)],
            {},
            "cannot load the trust anchors from",
        ),
        (
            "init when a migration fails",
            lambda p: (_changed_migration(p), ["init", *p.services])[1],
            {},
            "was changed after it was applied to this database",
        ),
        (
            "sign with the certificate as the key",
            lambda p: [
                "sign",
                _package(p),
                "--key",
                _files(p)[1],
                "--cert",
                _files(p)[1],
                "-o",
                str(p.tmp / "out.edxml"),
            ],
            {},
            "is not an unencrypted PEM private key (a certificate given as the key?)",
        ),
        (
            "sign into a missing folder",
            lambda p: ["sign", _package(p), *_credential(p), "-o", str(p.tmp / "no" / "o.edxml")],
            {},
            "the folder",
        ),
        (
            "a setting with a bad value",
            lambda p: ["agency", "list", "--database-url", p.database_url],
            {"LIENTHONG_PREFETCH": "abc"},
            "bad setting LIENTHONG_PREFETCH = 'abc': Input should be a valid integer",
        ),
        (
            "a secret given twice",
            lambda p: ["agency", "list", "--database-url", p.database_url],
            {"LIENTHONG_AMQP_URL": "amqp://a@h/", "LIENTHONG_AMQP_URL_FILE": "/nonexistent"},
            "LIENTHONG_AMQP_URL and LIENTHONG_AMQP_URL_FILE are both set; keep one",
        ),
        (
            "trace with a bad sender",
            lambda p: ["trace", "x", "--sender", "bad", "--database-url", p.database_url],
            {},
            "--sender the agency code 'bad'",
        ),
        (
            "send with a month 13",
            lambda p: [
                "send",
                *AS_AGENCY,
                *_credential(p),
                "--to",
                "000.00.00.G09",
                "--number",
                "1",
                "--notation",
                "x",
                "--subject",
                "s",
                "--signer",
                "A",
                "--sender-name",
                "VPCP",
                "--date",
                "2024-13-01",
                "--amqp-url",
                p.vhost.amqp_url,
            ],
            {},
            "--date '2024-13-01' is not a date; write YYYY-MM-DD",
        ),
        (
            "send to a bad code",
            lambda p: [
                "send",
                *AS_AGENCY,
                *_credential(p),
                "--to",
                "G09",
                "--number",
                "1",
                "--notation",
                "x",
                "--subject",
                "s",
                "--signer",
                "A",
                "--sender-name",
                "VPCP",
                "--amqp-url",
                p.vhost.amqp_url,
            ],
            {},
            "the agency code 'G09'",
        ),
        (
            "RabbitMQ wrong password",
            lambda p: [
                "statuses",
                *AS_AGENCY,
                "--amqp-url",
                url_for_user(p.vhost.amqp_url, "guest", "wrong"),
            ],
            {},
            "authentication failed for user guest (ACCESS_REFUSED); check the user and "
            "password in --amqp-url or LIENTHONG_AMQP_URL",
        ),
        (
            "RabbitMQ closed port",
            lambda p: ["statuses", *AS_AGENCY, "--amqp-url", "amqp://guest:guest@127.0.0.1:1/"],
            {},
            "RabbitMQ at amqp://guest@127.0.0.1:1/: connection refused",
        ),
        (
            "RabbitMQ unknown vhost",
            lambda p: ["statuses", *AS_AGENCY, "--amqp-url", amqp_url_for("no-such-vhost-xyz")],
            {},
            "the broker refused vhost 'no-such-vhost-xyz' (NOT_ALLOWED",
        ),
        (
            "RabbitMQ TLS on a plain port",
            lambda p: ["statuses", *AS_AGENCY, "--amqp-url", "amqps://guest:guest@127.0.0.1:5672/"],
            {},
            "RabbitMQ at amqps://guest@127.0.0.1:5672/: TLS failed",
        ),
        (
            "PostgreSQL closed port",
            lambda p: [
                "agency",
                "list",
                "--database-url",
                "postgresql://postgres:pw@127.0.0.1:1/x",
            ],
            {},
            "PostgreSQL at postgresql://postgres@127.0.0.1:1/x: connection refused",
        ),
        (
            "PostgreSQL without TLS asked for TLS",
            lambda p: [
                "agency",
                "list",
                "--database-url",
                "postgresql://postgres@127.0.0.1:5432/postgres?sslmode=require",
            ],
            {},
            'TLS failed (PostgreSQL server at "127.0.0.1:5432" rejected SSL upgrade); '
            "check sslmode",
        ),
        (
            "RabbitMQ unknown host",
            lambda p: [
                "statuses",
                *AS_AGENCY,
                "--amqp-url",
                "amqps://guest:guest@no-such-host.invalid:5671/",
            ],
            {},
            "RabbitMQ at amqps://guest@no-such-host.invalid:5671/: unknown host name",
        ),
        (
            "PostgreSQL unknown database",
            lambda p: [
                "agency",
                "list",
                "--database-url",
                "postgresql://postgres@127.0.0.1:5432/lienthong_no_such_db",
            ],
            {},
            'database "lienthong_no_such_db" does not exist; create it',
        ),
        (
            "PostgreSQL unknown role",
            lambda p: [
                "agency",
                "show",
                CODE,
                "--database-url",
                "postgresql://lienthong_nobody:pw@127.0.0.1:5432/postgres",
            ],
            {},
            'role "lienthong_nobody" does not exist; check the user in --database-url',
        ),
        (
            "report since no time",
            lambda p: [
                "report",
                "--since",
                "last month",
                "--database-url",
                p.database_url,
                "--rabbitmq-api-url",
                api,
            ],
            {},
            "--since 'last month' is not a time",
        ),
        (
            "replay list until no time",
            lambda p: ["replay", "list", "--until", "soon", "--database-url", p.database_url],
            {},
            "'soon' is not a time",
        ),
        (
            "inbox into a file",
            lambda p: ["inbox", *AS_AGENCY, "--out", _not_pem(p), "--amqp-url", p.vhost.amqp_url],
            {},
            "cannot make the folder",
        ),
        (
            "show an agency not registered",
            lambda p: ["agency", "show", CODE, "--database-url", p.database_url],
            {},
            f"agency {CODE} is not registered",
        ),
        (
            "set an agency not registered",
            lambda p: ["agency", "set", CODE, "--name", "x", *p.services],
            {},
            f"agency {CODE} is not registered; `lienthong agency add {CODE}` registers it",
        ),
        (
            "validate a missing file",
            lambda p: ["validate", str(p.tmp / "missing.edxml")],
            {},
            "cannot read",
        ),
    ]


def _files(place: Place, code: str = "000.00.00.G22") -> tuple[str, str]:
    """An agency's key and certificate files, issued by the test's CA."""
    key, cert = place.pki.agency(code).write(place.tmp, f"{code}-{uuid.uuid4().hex[:6]}")
    return str(key), str(cert)


def _credential(place: Place) -> list[str]:
    key, cert = _files(place)
    return ["--key", key, "--cert", cert]


CASES = _cases()


@pytest.mark.parametrize(("argv", "env", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_failure_is_one_line_naming_what_failed_and_exit_2(
    argv: Callable[[Place], list[str]],
    env: dict[str, str],
    says: str,
    place: Place,
    lienthong: Callable[..., Outcome],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arguments = argv(place)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    line = lienthong(*arguments).one_line_error()
    assert says in line
    assert "guest:guest" not in line and ":wrong@" not in line and ":pw@" not in line


@pytest.fixture
def private_postgres() -> Iterator[str]:
    """A PostgreSQL server of the test's own that checks passwords (the shared one trusts
    every local connection): user ``lt``, password ``secret``; its URL without password."""
    import shutil
    import socket

    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not binaries or not (binaries[-1] / "initdb").exists():
        pytest.skip("PostgreSQL's initdb is not installed (Debian package postgresql)")
    bin_dir = binaries[-1]
    as_owner: list[str] = []
    # Not under pytest's temporary folder: the postgres user cannot enter root's.
    directory = Path(tempfile.mkdtemp(prefix="lienthong-test-postgres-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("runs as root without runuser to start PostgreSQL as postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
        shutil.chown(directory, "postgres")
    (directory / "pw").write_text("secret\n")
    if as_owner:
        shutil.chown(directory / "pw", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = directory / "data"
    subprocess.run(
        [*as_owner, str(bin_dir / "initdb"), "-D", str(data), "-U", "lt",
         "--auth=scram-sha-256", f"--pwfile={directory / 'pw'}", "-E", "UTF8"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [*as_owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(directory / "log"),
         "-o", f"-p {port} -k {directory} -c listen_addresses=127.0.0.1", "-w", "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield f"postgresql://lt@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(directory, ignore_errors=True)


def test_a_wrong_postgresql_password_is_an_authentication_failure(
    private_postgres: str, lienthong: Callable[..., Outcome]
) -> None:
    wrong = private_postgres.replace("lt@", "lt:wrong@")
    line = lienthong("agency", "list", "--database-url", wrong).one_line_error()
    assert line == (
        f"lienthong: PostgreSQL at {private_postgres}: authentication failed for user lt; "
        "check the user and password in --database-url or LIENTHONG_DATABASE_URL"
    )
    right = private_postgres.replace("lt@", "lt:secret@")
    line = lienthong("agency", "list", "--database-url", right).one_line_error()
    assert "is the database migrated? `lienthong init` migrates it" in line


def test_debug_adds_the_traceback(place: Place, lienthong: Callable[..., Outcome]) -> None:
    outcome = lienthong("--debug", "trace", "x", "--sender", "bad", "--database-url", "x")
    assert outcome.status == cli.EXIT_ERROR
    assert "Traceback" in outcome.err
    assert outcome.err.splitlines()[-1].startswith("lienthong: --sender")


# -- registration: all or nothing; changed, not replaced --------------------------------


def _row(place: Place, code: str) -> Any:
    async def fetch() -> Any:
        conn = await asyncpg.connect(place.database_url)
        try:
            return await conn.fetchrow("SELECT * FROM agencies WHERE code = $1", code)
        finally:
            await conn.close()

    return run_sync(fetch())


def _queues(admin: BrokerAdmin, place: Place) -> set[str]:
    return {q.name for q in _run(lambda: admin.list_queues(place.vhost.name))}


def _inbox_keys(admin: BrokerAdmin, place: Place, code: str) -> set[str]:
    bindings = _run(lambda: admin.list_bindings(place.vhost.name))
    return {
        b["routing_key"]
        for b in bindings
        if b["source"] == DELIVER_EXCHANGE and b["destination"] == inbox_queue(code)
    }


def _logs_in(place: Place, user: str, password: str) -> bool:
    url = url_for_user(place.vhost.amqp_url, user, password)

    async def login() -> bool:
        try:
            connection = await aio_pika.connect(url)
        except aio_pika.exceptions.ProbableAuthenticationError:
            return False
        await connection.close()
        return True

    return run_sync(login())


def test_agency_disable_and_enable_through_the_commands(
    place: Place, lienthong: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Codes of this test alone: the vhost (and the queues left in it) is the module's.
    code, other = "000.00.03.H26", "000.00.04.H26"
    user = place.broker_user(code)
    refused = lienthong(
        "agency", "add", code, "--name", "Hà Nội", *place.services, "--broker-user", "guest",
    ).one_line_error()  # fmt: skip
    assert "broker user 'guest' is the exchange's own" in refused
    added = lienthong(
        "agency", "add", code, "--name", "Hà Nội", *place.services, "--broker-user", user,
        "--json",
    )  # fmt: skip
    assert added.status == 0, added.err
    password = json.loads(added.out)["password"]
    assert _logs_in(place, user, password)

    disabled = lienthong("agency", "disable", code, *place.services, "--json")
    assert disabled.status == 0, disabled.err
    assert json.loads(disabled.out)["disabled_at"] is not None
    assert not _logs_in(place, user, password)
    shown = lienthong("agency", "show", code, "--database-url", place.database_url)
    assert "disabled:" in shown.out and "disabled:      no" not in shown.out

    monkeypatch.setattr(sys, "stdin", io.StringIO("after-the-pause\n"))
    enabled = lienthong("agency", "enable", code, "--password-stdin", *place.services)
    assert enabled.status == 0, enabled.err
    assert "broker password: after-the-pause" in enabled.out
    assert _logs_in(place, user, "after-the-pause")
    again = lienthong(
        "agency", "add", other, "--name", "Sở", *place.services, "--broker-user", user,
    ).one_line_error()  # fmt: skip
    assert "already identifies another agency" in again


def test_registration_with_the_management_api_off_leaves_nothing_behind(
    place: Place, broker_admin: BrokerAdmin, lienthong: Callable[..., Outcome]
) -> None:
    user = place.broker_user()
    outcome = lienthong(
        "agency", "add", CODE, "--name", "Hà Nội", *place.services, "--broker-user", user,
        "--rabbitmq-api-url", "http://guest:guest@127.0.0.1:1",
    )  # fmt: skip
    assert "management API" in outcome.one_line_error()
    assert _row(place, CODE) is None
    assert not {inbox_queue(CODE), status_queue(CODE)} & _queues(broker_admin, place)
    assert not _run(lambda: broker_admin.user_exists(user))


def test_registration_failing_at_the_queues_undoes_the_user_and_the_row_and_keeps_what_was_there(
    place: Place, broker_admin: BrokerAdmin, lienthong: Callable[..., Outcome]
) -> None:
    # A classic queue under the status queue's name: declaring the agency's
    # quorum queue fails after its broker user and inbox were made.
    code = "000.00.01.H26"

    async def squat() -> None:
        connection = await aio_pika.connect(place.vhost.amqp_url)
        try:
            channel = await connection.channel()
            await channel.declare_queue(status_queue(code), durable=True)
        finally:
            await connection.close()

    run_sync(squat())
    user = place.broker_user(code)
    line = lienthong(
        "agency", "add", code, "--name", "Sở", *place.services, "--broker-user", user
    ).one_line_error()
    assert line.startswith(f"lienthong: RabbitMQ at {place.vhost.amqp_url.split('?')[0]}: ")
    assert f"queue {status_queue(code)} already exists" in line
    assert _row(place, code) is None
    queues = _queues(broker_admin, place)
    assert inbox_queue(code) not in queues  # made by this registration: undone
    assert status_queue(code) in queues  # there before: left alone
    assert not _run(lambda: broker_admin.user_exists(user))


def test_an_agency_is_added_once_then_changed_only_in_what_is_given(
    place: Place,
    broker_admin: BrokerAdmin,
    lienthong: Callable[..., Outcome],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = place.broker_user()
    cert = _files(place, CODE)[1]
    monkeypatch.setattr(sys, "stdin", io.StringIO("first-password\n"))
    added = lienthong(
        "agency", "add", CODE, "--name", "UBND Hà Nội", "--cert", cert,
        "--subscribe", "*.*.*.H26", "--broker-user", user, "--no-certificate-login",
        "--password-stdin", "--json",
        *place.services,
    )  # fmt: skip
    assert added.status == 0, added.err
    result = json.loads(added.out)
    assert result["password"] == "first-password"
    assert result["broker_user"] == user
    assert result["agency"]["subscriptions"] == ["*.*.*.H26"]
    assert (
        result["agency"]["certificate"]["subject"].endswith(f"UID={CODE}")
        or CODE in (result["agency"]["certificate"]["subject"])
    )
    assert _logs_in(place, user, "first-password")

    again = lienthong("agency", "add", CODE, "--name", "Khác", *place.services)
    assert "registered already; `lienthong agency set" in again.one_line_error()

    renamed = lienthong("agency", "set", CODE, "--name", "Ủy ban nhân dân TP Hà Nội", "--json",
                        *place.services)  # fmt: skip
    assert renamed.status == 0, renamed.err
    changed = json.loads(renamed.out)
    assert changed["password"] is None
    assert changed["agency"]["name"] == "Ủy ban nhân dân TP Hà Nội"
    assert changed["agency"]["subscriptions"] == ["*.*.*.H26"]  # kept
    assert changed["agency"]["certificate"] == result["agency"]["certificate"]  # kept
    assert _logs_in(place, user, "first-password")  # the password did not change
    # Subscriptions are no bindings: the workers publish and record each copy.
    assert _inbox_keys(broker_admin, place, CODE) == {CODE}

    resubscribed = lienthong("agency", "set", CODE, "--subscribe", "*.*.*.H44", *place.services)
    assert resubscribed.status == 0, resubscribed.err
    assert _inbox_keys(broker_admin, place, CODE) == {CODE}

    monkeypatch.setattr(sys, "stdin", io.StringIO("second-password\n"))
    assert (
        lienthong(
            "agency", "set", CODE, "--rotate-password", "--password-stdin", *place.services
        ).status
        == 0
    )
    assert _logs_in(place, user, "second-password")
    assert not _logs_in(place, user, "first-password")

    shown = lienthong("agency", "show", CODE, "--json", "--database-url", place.database_url)
    assert shown.status == 0, shown.err
    agency = json.loads(shown.out)
    assert (agency["name"], agency["subscriptions"], agency["broker_user"]) == (
        "Ủy ban nhân dân TP Hà Nội",
        ["*.*.*.H44"],
        user,
    )
    assert agency["certificate"] is not None
    text = lienthong("agency", "show", CODE, "--database-url", place.database_url)
    assert "subscriptions: *.*.*.H44" in text.out


def test_a_change_that_fails_half_way_leaves_the_agency_as_it_was(
    place: Place, broker_admin: BrokerAdmin, lienthong: Callable[..., Outcome]
) -> None:
    user = place.broker_user()
    added = lienthong(
        "agency", "add", CODE, "--name", "Hà Nội", "--subscribe", "*.*.*.H26",
        "--broker-user", user, *place.services,
    )  # fmt: skip
    assert added.status == 0, added.err
    before = _row(place, CODE)
    line = lienthong(
        "agency", "set", CODE, "--name", "Khác", "--subscribe", "*.*.*.H44", "--rotate-password",
        *place.services, "--rabbitmq-api-url", "http://guest:guest@127.0.0.1:1",
    ).one_line_error()  # fmt: skip
    assert "management API" in line
    assert _row(place, CODE) == before
    assert _inbox_keys(broker_admin, place, CODE) == {CODE}


# -- a document through the commands ------------------------------------------------------


async def test_send_inbox_report_status_and_statuses_print_json(
    exchange: ExchangeUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    sender = await exchange.register("000.00.00.G22")
    recipient = await exchange.register("000.00.00.G09")
    keys = exchange.local.keys_dir

    async def lienthong(*argv: str) -> tuple[int, Any]:
        status = await asyncio.to_thread(cli.main, list(argv))
        out = capsys.readouterr().out
        if out.startswith("{\n"):  # one result, indented
            return status, json.loads(out)
        return status, [json.loads(line) for line in out.splitlines()]  # JSON Lines

    def credential(code: str) -> list[str]:
        return ["--key", str(keys / f"{code}.key.pem"), "--cert", str(keys / f"{code}.cert.pem")]

    async with exchange.workers(1):
        status, sent = await lienthong(
            "send", "--as", "000.00.00.G22", *credential("000.00.00.G22"),
            "--to", "000.00.00.G09=Bộ Nội vụ", "--number", "12", "--notation", "VPCP-TH",
            "--signer", "Nguyễn Văn A", "--sender-name", "Văn phòng Chính phủ",
            "--subject", "Thử nghiệm", "--date", "2025-01-02",
            "--amqp-url", sender.amqp_url, "--json",
        )  # fmt: skip
        assert status == 0
        assert sent["document_id"] == "000.00.00.G22,2025/01/02,12/VPCP-TH"
        assert sent["recipients"] == ["000.00.00.G09"]
        assert len(sent["message_ids"]) == 1
        await exchange.wait_settled(1)
        out = exchange.local.keys_dir.parent / "inbox"
        status, saved = await lienthong(
            "inbox", "--as", "000.00.00.G09", "--out", str(out), "--idle", "1",
            "--amqp-url", recipient.amqp_url, "--json",
        )  # fmt: skip
        assert status == 0
        assert [item["document_id"] for item in saved] == [sent["document_id"]]
        assert saved[0]["sender"] == "000.00.00.G22"
        status, reported = await lienthong(
            "report-status", saved[0]["file"], "--as", "000.00.00.G09",
            *credential("000.00.00.G09"), "--code", "03", "--amqp-url", recipient.amqp_url,
            "--json",
        )  # fmt: skip
        assert status == 0
        assert reported == {
            "document_id": sent["document_id"],
            "status_code": "03",
            "to": "000.00.00.G22",
        }
        await exchange.wait_settled(2)
    status, news = await lienthong(
        "statuses", "--as", "000.00.00.G22", "--idle", "1", "--amqp-url", sender.amqp_url,
        "--json",
    )  # fmt: skip
    assert status == 0
    kinds = sorted((n["type"], n.get("outcome") or n.get("status_code")) for n in news)
    assert ("status", "03") in kinds
    assert ("receipt", "delivered") in kinds


def test_statuses_follow_runs_until_interrupted_and_ends_without_a_traceback(
    place: Place, broker_admin: BrokerAdmin
) -> None:
    code = "000.00.00.G22"

    async def queues() -> None:
        connection = await aio_pika.connect(place.vhost.amqp_url)
        try:
            channel = await connection.channel()
            await channel.declare_queue(
                status_queue(code), durable=True, arguments={"x-queue-type": "quorum"}
            )
        finally:
            await connection.close()

    run_sync(queues())
    process = subprocess.Popen(
        [sys.executable, "-m", "exchange.cli", "statuses", "--as", code, "--follow",
         "--amqp-url", place.vhost.amqp_url],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:

        async def consuming() -> tuple[bool, str]:
            stats = await broker_admin.list_queues(place.vhost.name)
            consumers = {q.name: q.consumers for q in stats}.get(status_queue(code), 0)
            return consumers > 0 or process.poll() is not None, f"{consumers} consumers"

        run_sync(wait_for(consuming, timeout=60))
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode in (0, 130), err
    assert "Traceback" not in err


async def test_the_demo_registering_an_agency_again_renews_its_certificate_and_password(
    exchange: ExchangeUnderTest,
) -> None:
    first = await exchange.register("000.00.00.G22", subscriptions=["*.*.*.G22"])
    again = await exchange.register("000.00.00.G22", subscriptions=["*.*.*.G22"])
    assert again.amqp_url != first.amqp_url  # a new password
    connection = await aio_pika.connect(again.amqp_url)
    await connection.close()
    with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
        await aio_pika.connect(first.amqp_url)
    rows = await exchange.fetch("SELECT certificate_pem FROM agency_certificates")
    assert [row["certificate_pem"] for row in rows] == [again.credential.cert_pem.decode()]


def test_keys_revoke_writes_the_crl_that_verify_crl_honours(
    tmp_path: Path, database_url: str, lienthong: Callable[..., Outcome]
) -> None:
    from tests.packages import document_package

    keys = tmp_path / "keys"
    assert lienthong("keys", "init", "--dir", str(keys)).status == 0
    assert lienthong("keys", "issue", "000.00.00.G22", "--dir", str(keys)).status == 0
    package = tmp_path / "letter.edxml"
    package.write_text(document_package(), encoding="utf-8")
    signed = str(tmp_path / "signed.edxml")
    key, cert = str(keys / "000.00.00.G22.key.pem"), str(keys / "000.00.00.G22.cert.pem")
    assert lienthong("sign", str(package), "--key", key, "--cert", cert, "-o", signed).status == 0
    trust = ["--trust", str(keys / "ca.cert.pem")]
    assert lienthong("verify", signed, *trust).status == cli.EXIT_OK

    # A revocation is recorded in the operator log of --database-url.
    log = ["--database-url", database_url]
    revoked = lienthong("keys", "revoke", "000.00.00.G22", "--dir", str(keys), *log)
    assert revoked.status == 0, revoked.err
    assert (keys / "ca.crl.pem").exists()
    refused = lienthong("verify", signed, *trust, "--crl", str(keys / "ca.crl.pem"), "--json")
    assert refused.status == cli.EXIT_REFUSED, refused.out
    assert "REJECTED_CERT_REVOKED" in refused.out
    # The directory of CRLs works too; without any, revocation is not checked.
    assert lienthong("verify", signed, *trust, "--crl", str(keys)).status == cli.EXIT_REFUSED
    assert lienthong("verify", signed, *trust).status == cli.EXIT_OK
    missing = lienthong("keys", "revoke", "000.00.00.G09", "--dir", str(keys), *log)
    assert "cannot read" in missing.one_line_error()


def test_agency_certificates_are_several_added_and_removed_and_sha1_is_per_agency(
    place: Place, lienthong: Callable[..., Outcome]
) -> None:
    first, second, third = (_files(place, CODE)[1] for _ in range(3))
    added = lienthong(
        "agency", "add", CODE, "--name", "UBND Hà Nội", "--cert", first, "--cert", second,
        "--allow-sha1", "--broker-user", place.broker_user(), "--no-certificate-login", "--json",
        *place.services,
    )  # fmt: skip
    assert added.status == 0, added.err
    agency = json.loads(added.out)["agency"]
    assert len(agency["certificates"]) == 2 and agency["allow_sha1"] is True
    database = ["--database-url", place.database_url]

    grown = lienthong("agency", "cert", "add", CODE, third, "--json", *database)
    assert grown.status == 0, grown.err
    assert len(json.loads(grown.out)["certificates"]) == 3
    shrunk = lienthong("agency", "cert", "remove", CODE, first, "--json", *database)
    assert shrunk.status == 0, shrunk.err
    remaining = json.loads(shrunk.out)["certificates"]
    assert len(remaining) == 2
    again = lienthong("agency", "cert", "remove", CODE, first, *database)
    assert "not registered for" in again.one_line_error()
    other = _files(place, "000.00.00.G22")[1]
    wrong = lienthong("agency", "cert", "add", CODE, other, *database)
    assert "names 000.00.00.G22, not 000.00.00.H26" in wrong.one_line_error()

    assert lienthong("agency", "set", CODE, "--no-allow-sha1", *place.services).status == 0
    shown = json.loads(lienthong("agency", "show", CODE, "--json", *database).out)
    assert shown["allow_sha1"] is False
    assert shown["certificates"] == remaining
    text = lienthong("agency", "show", CODE, *database).out
    assert text.count("certificate:") == 2 and "sha-1:         refused" in text


def test_a_certificate_that_cannot_sign_is_not_registered(
    place: Place, lienthong: Callable[..., Outcome]
) -> None:
    from tests.keys import odd_credential, weak_rsa_key

    weak = odd_credential(place.pki.ca, CODE, key=weak_rsa_key())
    _, cert = weak.write(place.tmp, "weak")
    refused = lienthong(
        "agency", "add", CODE, "--name", "UBND Hà Nội", "--cert", str(cert),
        "--broker-user", place.broker_user(), "--no-certificate-login", *place.services,
    )  # fmt: skip
    assert "cannot sign packages: the key of" in refused.one_line_error()
    assert "RSA-1024" in refused.err
    assert _row(place, CODE) is None
