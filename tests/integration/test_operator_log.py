"""Operators answer for what they do: the operator log, personal roles, the replay tool's user.

Every command runs through ``lienthong``'s own ``main()`` logged in to
PostgreSQL as a personal role made for the test (a member of
``lienthong_operator``, as docs/security.md tells a DBA to make them), so
the rows say who by the database's ``session_user``, not by anything the
client claims. Roles are global to the server: each gets a unique name and
is dropped after the test.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import secrets
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509

from exchange.audit import verify_chains
from exchange.broker.admin import Permissions
from exchange.cli import main
from exchange.demo import demo_document
from exchange.failures import Failure
from exchange.pki import create_ca, fingerprint, issue_agency_certificate
from exchange.status import TransportOutcome
from exchange.store import queries
from exchange.store.accountability import operator_actions
from exchange.store.db import connect
from tests.exchange_fixtures import ExchangeUnderTest

pytestmark = pytest.mark.services

GOVERNMENT_OFFICE = "000.00.00.G22"
HANOI = "000.00.00.H26"
QUANG_NINH = "000.00.00.H49"


def as_role(url: str, role: str) -> str:
    """``url`` logged in as ``role`` (the server trusts loopback in the tests)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{urllib.parse.quote(role)}@{host}:{parts.port or 5432}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
async def operator_role(postgres_url: str) -> AsyncIterator[str]:
    """A personal operator role, member of lienthong_operator, dropped after the test."""
    role = f"lienthong_test_op_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE lienthong_operator')
        yield role
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def lienthong(*words: str) -> tuple[int, str]:
    """Run ``lienthong WORDS`` as a person would (its own event loop, in a thread)."""
    code = await asyncio.to_thread(main, list(words))
    return code, ""


async def test_every_operator_command_leaves_a_row_with_the_role_that_ran_it(
    exchange: ExchangeUnderTest,
    operator_role: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = as_role(exchange.settings.database_url, operator_role)
    services = [
        "--database-url",
        database,
        "--amqp-url",
        exchange.settings.amqp_url,
    ]
    await exchange.register(GOVERNMENT_OFFICE)
    # The agency an operator registers, through the command line, and a
    # second certificate for it (a rollover).
    assert exchange.local.ca is not None
    certificates = []
    for number in (1, 2):
        credential = issue_agency_certificate(exchange.local.ca, HANOI, common_name=HANOI)
        path = tmp_path / f"hanoi-{number}.pem"
        path.write_bytes(credential.cert_pem)
        certificates.append((credential, path))
    (credential, cert_file), (_, second_file) = certificates
    user = exchange.broker_user_for(HANOI)
    exchange.broker_users.append(user)
    password = secrets.token_urlsafe(12)
    monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
    monkeypatch.setenv("LIENTHONG_SEAL_KEY", str(tmp_path / "seal" / "seal.key.pem"))
    monkeypatch.setenv("LIENTHONG_SEAL_CERT", str(tmp_path / "seal" / "seal.cert.pem"))
    create_ca(tmp_path / "seal", common_name="lienthong sealing key (test)", stem="seal")

    body = b"<edXML>a refused package</edXML>"
    async with exchange.db() as conn:
        message, _ = await queries.record_message(
            conn,
            dedup_key=queries.dedup_key(HANOI, body, "someone"),
            amqp_message_id="refused-1",
            routing_key=HANOI,
            broker_user="someone",
            body=body,
            sha256=hashlib.sha256(body).hexdigest(),
        )

    # (command words, whether it also talks to RabbitMQ)
    steps = [
        (
            [
                "agency",
                "add",
                HANOI,
                "--name",
                "UBND Hà Nội",
                "--cert",
                str(cert_file),
                "--broker-user",
                user,
                "--no-certificate-login",
                "--password-stdin",
            ],
            True,
        ),
        (["agency", "cert", "add", HANOI, str(second_file)], False),
        (["agency", "cert", "remove", HANOI, str(second_file)], False),
        (["agency", "disable", HANOI], True),
        (
            [
                "system",
                "add",
                "00.53.W00",
                "--agency",
                GOVERNMENT_OFFICE,
                "--secret",
                "s3cret-value-of-the-system",
            ],
            False,
        ),
        (["trace", "000.00.00.G22,2026/11/25,1/VPCP"], False),
        (["replay", "show", str(message.pk), "--body", str(tmp_path / "body.xml")], False),
        (["replay", "run", str(message.pk)], True),
        (["audit", "--seal"], False),
    ]
    codes = []
    for words, broker in steps:
        options = services if broker else ["--database-url", database]
        code, _ = await lienthong(*words, *options)
        codes.append((" ".join(words[:2]), code))
    print(codes)
    # trace: no such document (exit 1); the rest did what was asked.
    assert [code for _, code in codes] == [0, 0, 0, 0, 0, 1, 0, 0, 0]
    # Not recorded: reading without a body, listing.
    await lienthong("replay", "show", str(message.pk), "--database-url", database)
    await lienthong("agency", "list", "--database-url", database)

    async with exchange.db() as conn:
        rows = list(reversed(await operator_actions(conn)))
    for row in rows:
        print(f"{row.chain_seq} {row.db_role} {row.action} {row.arguments} -> {row.outcome}")
    assert [r.action for r in rows] == [
        "agency add",
        "agency cert add",
        "agency cert remove",
        "agency disable",
        "system add",
        "trace",
        "replay show --body",
        "replay run",
        "audit --seal",
    ]
    assert {r.db_role for r in rows} == {operator_role}
    assert [r.chain_seq for r in rows] == list(range(1, 10))
    outcomes = {r.action: r.outcome for r in rows}
    assert outcomes["agency add"] == outcomes["system add"] == "done"
    assert outcomes["trace"] == "read"
    assert outcomes["replay show --body"] == "read"
    assert outcomes["audit --seal"] == "done: seal 1"
    assert outcomes["replay run"] == "done: dry run"
    add = rows[0].arguments
    assert add["code"] == HANOI and add["password_stdin_given"] is True
    assert add["cert_sha256"] == [fingerprint(credential.certificate)]
    # No secret, password or body anywhere in the log.
    everything = repr([(r.arguments, r.outcome) for r in rows])
    for secret in (password, "s3cret-value-of-the-system", "a refused package"):
        assert secret not in everything

    # The chains, the operator log among them, verify against the seal.
    code, _ = await lienthong("audit", "--verify-chain", "--database-url", database)
    assert code == 0
    report = await verify_chains(
        exchange.settings.model_copy(update={"seal_cert": tmp_path / "seal" / "seal.cert.pem"})
    )
    assert report.ok, list(report.lines())
    assert report.seals == 1
    (log_chain,) = [c for c in report.chains if c.chain == "operator_actions"]
    assert log_chain.rows == 9


async def test_a_revoked_certificate_and_new_broker_and_database_logins_are_recorded(
    exchange: ExchangeUnderTest,
    operator_role: str,
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = as_role(exchange.settings.database_url, operator_role)
    keys = tmp_path / "ca"
    # The development CA's files change nothing until a certificate is
    # registered (`agency add --cert`, recorded): not operator actions.
    assert await lienthong("keys", "init", "--dir", str(keys)) == (0, "")
    assert await lienthong("keys", "issue", HANOI, "--dir", str(keys)) == (0, "")
    revoked = x509.load_pem_x509_certificate((keys / f"{HANOI}.cert.pem").read_bytes())
    code, _ = await lienthong(
        "keys", "revoke", HANOI, "--dir", str(keys), "--database-url", database
    )
    assert code == 0
    # No certificate for Quảng Ninh: refused, and recorded as it ended.
    code, _ = await lienthong(
        "keys", "revoke", QUANG_NINH, "--dir", str(keys), "--database-url", database
    )
    assert code == 2

    gateway = f"{exchange.user_prefix}-gateway"
    exchange.broker_users.append(gateway)
    gateway_password = secrets.token_urlsafe(24)
    monkeypatch.setattr(sys, "stdin", io.StringIO(gateway_password + "\n"))
    code, _ = await lienthong(
        "gateway-user",
        gateway,
        "--password-stdin",
        "--amqp-url",
        exchange.settings.amqp_url,
        "--database-url",
        database,
    )
    assert code == 0

    # A database login made by init is made by the schema's owner: the row
    # names the owner's role, not --database-url's.
    login = f"lienthong_test_login_{uuid.uuid4().hex[:10]}"
    login_password = secrets.token_urlsafe(18)
    monkeypatch.setattr(sys, "stdin", io.StringIO(login_password + "\n"))
    owner = ["--owner-database-url", exchange.settings.database_url]
    broker = ["--amqp-url", exchange.settings.amqp_url]
    try:
        code, _ = await lienthong("init", "--database-url", database, *owner, *broker)
        assert code == 0  # brings the schema up to date: not an operator action
        code, _ = await lienthong(
            "init",
            "--create-login",
            login,
            "--password-stdin",
            "--database-url",
            database,
            *owner,
            *broker,
        )
        assert code == 0
    finally:
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute(f'DROP ROLE IF EXISTS "{login}"')
        finally:
            await admin.close()

    async with exchange.db() as conn:
        rows = list(reversed(await operator_actions(conn)))
        owner_role = await conn.fetchval("SELECT session_user")
    for row in rows:
        print(f"{row.chain_seq} {row.db_role} {row.action} {row.arguments} -> {row.outcome}")
    assert [(r.action, r.db_role) for r in rows] == [
        ("keys revoke", operator_role),
        ("keys revoke", operator_role),
        ("gateway-user", operator_role),
        ("init --create-login", owner_role),
    ]
    revoke, missing, user, init = rows
    assert revoke.outcome == "done"
    assert revoke.arguments == {
        "code": HANOI,
        "dir": str(keys),
        "serial": f"{revoked.serial_number:x}",
        "subject": revoked.subject.rfc4514_string(),
        "sha256": fingerprint(revoked),
    }
    assert missing.outcome.startswith("failed: cannot read ")
    assert missing.arguments == {"code": QUANG_NINH, "dir": str(keys)}
    assert user.outcome == "done"
    assert user.arguments == {
        "name": gateway,
        "vhost": exchange.vhost,
        "password_stdin_given": True,
    }
    assert init.outcome == "done"
    assert init.arguments == {
        "create_login": login,
        "group": "worker",
        "password_stdin_given": True,
    }
    everything = repr([(r.arguments, r.outcome) for r in rows])
    for secret in (gateway_password, login_password):
        assert secret not in everything


def test_a_revocation_stands_when_the_operator_log_cannot_be_written(
    tmp_path: Path, empty_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "ca"
    assert main(["keys", "init", "--dir", str(keys)]) == 0
    assert main(["keys", "issue", HANOI, "--dir", str(keys)]) == 0
    revoked = x509.load_pem_x509_certificate((keys / f"{HANOI}.cert.pem").read_bytes())
    capsys.readouterr()
    # A database with no operator_actions table: the row cannot be written.
    code = main(["keys", "revoke", HANOI, "--dir", str(keys), "--database-url", empty_database_url])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(
        "lienthong: keys revoke: done, but the operator log was not written: PostgreSQL at "
    )
    assert "operator_actions" in line
    crl = x509.load_pem_x509_crl((keys / "ca.crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(revoked.serial_number) is not None


async def test_the_operator_log_is_append_only_and_an_edited_row_breaks_its_chain(
    exchange: ExchangeUnderTest, operator_role: str
) -> None:
    database = as_role(exchange.settings.database_url, operator_role)
    for document in ("1", "2", "3"):
        code, _ = await lienthong("trace", document, "--database-url", database)
        assert code == 1  # nothing recorded under that id; the read is recorded anyway
    personal = await connect(dsn=database)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await personal.execute("UPDATE operator_actions SET outcome = 'nothing'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await personal.execute("DELETE FROM operator_actions")
        # The role it says is the session's, whatever the client writes.
        await personal.execute("SET ROLE lienthong_operator")
        row = await personal.fetchrow(
            "INSERT INTO operator_actions (db_role, action, outcome)"
            " VALUES ('postgres', 'forged', 'done') RETURNING db_role"
        )
        assert row is not None and row["db_role"] == operator_role
    finally:
        await personal.close()
    async with exchange.db() as conn:
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await conn.execute("UPDATE operator_actions SET outcome = 'nothing'")
        # The superuser's way round the trigger.
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            'UPDATE operator_actions SET arguments = \'{"document": "9"}\' WHERE chain_seq = 2'
        )
        await conn.execute("RESET session_replication_role")
    report = await verify_chains(exchange.settings)
    print("\n".join(report.lines()))
    assert [(p.chain, p.code, p.chain_seq) for p in report.problems] == [
        ("operator_actions", "ROW_CHANGED", 2)
    ]


async def test_the_replay_tool_publishes_as_its_own_broker_user_trusted_by_the_workers(
    exchange: ExchangeUnderTest,
    operator_role: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    recipient = await exchange.register(HANOI)
    user = exchange.broker_user_for(GOVERNMENT_OFFICE)
    # The replay tool's user: it publishes into lienthong.work through the
    # default exchange and takes copies off lienthong.parked, nothing else.
    replay_user = f"{exchange.user_prefix}-replay"
    replay_password = secrets.token_urlsafe(16)
    exchange.broker_users.append(replay_user)
    await exchange.admin.create_user(replay_user, replay_password)
    await exchange.admin.set_permissions(
        exchange.vhost,
        replay_user,
        Permissions(configure="^$", write="^amq\\.default$", read="^lienthong\\.parked$"),
    )
    base = urllib.parse.urlsplit(exchange.settings.amqp_url)
    netloc = (
        f"{urllib.parse.quote(replay_user, safe='')}:{urllib.parse.quote(replay_password, safe='')}"
        f"@{base.hostname}:{base.port or 5672}"
    )
    replay_url = urllib.parse.urlunsplit(base._replace(netloc=netloc))
    monkeypatch.setenv("LIENTHONG_REPLAY_AMQP_URL", replay_url)

    client = sender.client()
    parked = []
    async with exchange.db() as conn:
        for number in (1, 2):
            body = client.sign(demo_document(sender, [recipient], number, "VPCP", "Tạm giữ"))
            record, _ = await queries.record_message(
                conn,
                dedup_key=queries.dedup_key(HANOI, body, user),
                amqp_message_id=f"parked-{number}",
                routing_key=HANOI,
                broker_user=user,
                body=body,
                sha256=hashlib.sha256(body).hexdigest(),
                sender=sender.code,
            )
            await queries.set_outcome(
                conn,
                record.pk,
                TransportOutcome.PARKED,
                Failure.DATABASE.parked_code,
                "connection refused",
                attempts=4,
            )
            await queries.mark_published(conn, record.pk)
            parked.append((record.pk, body))
    database = as_role(exchange.settings.database_url, operator_role)
    replay = ["--database-url", database, "--amqp-url", exchange.settings.amqp_url]

    # Workers that do not count the replay tool's user as the exchange's own
    # take its message for its own: the replayed package is not delivered.
    async with exchange.workers(1):
        code, _ = await lienthong(
            "replay", "run", str(parked[0][0]), "--yes", "--wait", "30", *replay
        )
    assert code == 1
    untrusted = await exchange.fetchval(
        "SELECT broker_user FROM messages WHERE sha256 = $1 ORDER BY id DESC LIMIT 1",
        hashlib.sha256(parked[0][1]).hexdigest(),
    )
    assert untrusted == replay_user

    # Listed in exchange_users, its original-sender headers are believed.
    exchange.local.settings = exchange.settings.model_copy(update={"exchange_users": [replay_user]})
    async with exchange.workers(1):
        code, _ = await lienthong(
            "replay", "run", str(parked[1][0]), "--yes", "--wait", "30", *replay
        )
    assert code == 0
    state = await exchange.fetchval(
        "SELECT outcome FROM message_state WHERE message_pk = $1", parked[1][0]
    )
    assert state == "delivered"
    inbox = [item.body for item in await exchange.inbox_of(recipient)]
    assert inbox == [parked[1][1]]
    recorded = await exchange.fetch("SELECT broker_user FROM replays ORDER BY id")
    assert [r["broker_user"] for r in recorded] == [replay_user, replay_user]
    async with exchange.db() as conn:
        rows = list(reversed(await operator_actions(conn)))
    assert [(r.action, r.db_role, r.outcome) for r in rows] == [
        ("replay run", operator_role, "refused: replay 1"),
        ("replay run", operator_role, "done: replay 2"),
    ]
