"""Seals and the operator log's bookkeeping, without a database: signing, checking, arguments."""

from __future__ import annotations

import argparse
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from exchange import operator_log
from exchange.cli import build_parser
from exchange.operator_log import accountable_of, arguments_of
from exchange.pki import KeyType, create_ca
from exchange.seals import (
    Seal,
    SealError,
    SealingKey,
    check_seals,
    payload_bytes,
    seal_digest,
    signature_verifies,
)

AT = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)
HASH = "ab" * 32


@pytest.fixture(scope="module", params=[KeyType.ECDSA_P256, KeyType.RSA_2048])
def key(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SealingKey:
    """A sealing key of each kind the exchange issues."""
    directory = tmp_path_factory.mktemp("seal")
    create_ca(directory, common_name="sealing", key_type=request.param, stem="seal")
    return SealingKey.load(directory / "seal.key.pem", directory / "seal.cert.pem")


def make_seals(key: SealingKey, heads: list[dict[str, tuple[int, str]]]) -> list[Seal]:
    """Seals 1, 2, ... of ``heads``, an hour apart, each naming the one before."""
    seals: list[Seal] = []
    for number, sealed in enumerate(heads, 1):
        at = AT + timedelta(hours=number)
        previous = seals[-1].digest if seals else None
        payload = payload_bytes(number, at, sealed, previous)
        signature, algorithm = key.sign(payload)
        seals.append(
            Seal(number, at, payload, signature, algorithm, key.certificate_pem, None, None, "t")
        )
    return seals


def codes(problems: list) -> list[tuple[str, str | None, int | None]]:  # type: ignore[type-arg]
    return [(p.code, p.chain, p.seal) for p in problems]


def test_the_payload_is_canonical_and_its_signature_covers_every_byte(key: SealingKey) -> None:
    payload = payload_bytes(3, AT, {"messages": (7, HASH), "documents": (0, HASH)}, None)
    assert payload == payload_bytes(3, AT, {"documents": (0, HASH), "messages": (7, HASH)}, None)
    assert b" " not in payload and payload.startswith(b'{"heads":{"documents"')
    signature, algorithm = key.sign(payload)
    assert signature_verifies(key.certificate, payload, signature, algorithm)
    assert not signature_verifies(
        key.certificate, payload.replace(b"7", b"8"), signature, algorithm
    )
    assert not signature_verifies(key.certificate, payload, signature, "ed25519")
    assert seal_digest(payload, signature) != seal_digest(payload, signature + b"\0")


def test_a_key_and_a_certificate_that_do_not_belong_together_are_refused(tmp_path: Path) -> None:
    create_ca(tmp_path / "a", common_name="a", stem="seal")
    create_ca(tmp_path / "b", common_name="b", stem="seal")
    with pytest.raises(SealError, match=r"no certificate .* is the one of the key"):
        SealingKey.load(tmp_path / "a" / "seal.key.pem", tmp_path / "b" / "seal.cert.pem")
    with pytest.raises(SealError, match="cannot read"):
        SealingKey.load(tmp_path / "missing.pem", tmp_path / "b" / "seal.cert.pem")


def test_the_chain_against_its_seals(key: SealingKey) -> None:
    seals = make_seals(key, [{"messages": (2, "a" * 64)}, {"messages": (4, "b" * 64)}])
    now = AT + timedelta(hours=2, minutes=30)
    intact = {"messages": {2: "a" * 64, 4: "b" * 64}}
    trusted = [key.certificate]
    assert check_seals(seals, intact, {"messages": 5}, certificates=trusted, now=now) == []
    rewritten = {"messages": {2: "a" * 64, 4: "c" * 64}}
    (problem,) = check_seals(seals, rewritten, {"messages": 5}, certificates=trusted, now=now)
    assert (problem.code, problem.chain, problem.seal) == ("SEAL_REWRITTEN", "messages", 2)
    assert "still matches seal 1" in problem.sentence
    cut = check_seals(seals, intact, {"messages": 3}, certificates=trusted, now=now)
    assert codes(cut) == [("SEAL_BEYOND_END", "messages", 2)]


def test_seals_by_another_key_count_for_nothing(key: SealingKey, tmp_path: Path) -> None:
    create_ca(tmp_path, common_name="other", stem="other")
    other = SealingKey.load(tmp_path / "other.key.pem", tmp_path / "other.cert.pem")
    seals = make_seals(other, [{"messages": (1, "a" * 64)}])
    problems = check_seals(
        seals, {"messages": {1: "f" * 64}}, {"messages": 1}, certificates=[key.certificate], now=AT
    )
    # Forged, and so not used to judge the chain.
    assert codes(problems) == [("SEAL_FORGED", None, 1)]


def test_a_last_seal_older_than_twice_the_interval_is_reported(key: SealingKey) -> None:
    seals = make_seals(key, [{"messages": (1, "a" * 64)}])
    stored = {"messages": {1: "a" * 64}}
    fresh = AT + timedelta(hours=2)
    late = AT + timedelta(hours=4)
    trusted = [key.certificate]
    assert (
        check_seals(
            seals, stored, {"messages": 1}, certificates=trusted, interval_s=3600, now=fresh
        )
        == []
    )
    problems = check_seals(
        seals, stored, {"messages": 1}, certificates=trusted, interval_s=3600, now=late
    )
    assert codes(problems) == [("SEAL_OVERDUE", None, 1)]
    # The column is not signed: moving it forward in the database hides nothing.
    moved = [dataclasses.replace(seals[0], sealed_at=late)]
    again = check_seals(
        moved, stored, {"messages": 1}, certificates=trusted, interval_s=3600, now=late
    )
    assert codes(again) == [("SEAL_OVERDUE", None, 1)]


def test_ed25519_keys_sign_too(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    private = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seal")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(AT)
        .not_valid_after(AT + timedelta(days=1))
        .sign(private, None)
    )
    (tmp_path / "k.pem").write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "c.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key = SealingKey.load(tmp_path / "k.pem", tmp_path / "c.pem")
    signature, algorithm = key.sign(b"heads")
    assert algorithm == "ed25519"
    assert signature_verifies(certificate, b"heads", signature, algorithm)


# -- the operator log's bookkeeping ------------------------------------------------------


def parse(*words: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(list(words))


def test_which_commands_are_operator_actions() -> None:
    assert accountable_of(parse("replay", "show", "3")) is None
    shown = accountable_of(parse("replay", "show", "3", "--body", "-"))
    assert shown is not None and shown.name == "replay show --body" and shown.before
    assert accountable_of(parse("audit", "--verify-chain")) is None
    sealing = accountable_of(parse("audit", "--seal"))
    assert sealing is not None and sealing.name == "audit --seal"
    assert accountable_of(parse("agency", "list")) is None
    assert accountable_of(parse("agency", "cert", "add", "000.00.00.H26", "c.pem")) is not None
    revoking = accountable_of(parse("keys", "revoke", "000.00.00.H26", "--dir", "ca"))
    assert revoking is not None and revoking.name == "keys revoke"
    user = accountable_of(parse("gateway-user", "gw"))
    assert user is not None and user.name == "gateway-user"
    login = accountable_of(parse("init", "--create-login", "worker_1"))
    assert login is not None and login.name == "init --create-login" and login.as_owner
    demo = accountable_of(parse("demo"))
    assert demo is not None and demo.name == "demo"
    # Printing the SQL connects to nothing; the rest of init and the CA's
    # files change nothing by themselves.
    assert accountable_of(parse("init", "--roles-sql", "--create-login", "worker_1")) is None
    assert accountable_of(parse("init")) is None
    assert accountable_of(parse("keys", "issue", "000.00.00.H26", "--dir", "ca")) is None
    assert accountable_of(parse("keys", "client", "lienthong-worker", "--dir", "ca")) is None


def test_the_arguments_recorded_name_no_secret() -> None:
    args = parse(
        "system",
        "add",
        "00.53.W00",
        "--agency",
        "000.00.00.H26",
        "--secret",
        "the-secret-1234567",
        "--database-url",
        "postgresql://alice:hunter2@db/lienthong",
    )
    found = accountable_of(args)
    assert found is not None
    recorded = arguments_of(args, found)
    assert recorded == {
        "system_id": "00.53.W00",
        "agency": ["000.00.00.H26"],
        "secret_given": True,
    }
    assert "hunter2" not in repr(recorded) and "the-secret" not in repr(recorded)


def test_what_a_command_finds_out_is_recorded_with_its_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows: list[tuple[str, dict[str, object], str]] = []

    async def record(args, found, arguments, outcome):  # type: ignore[no-untyped-def]
        rows.append((found.name, dict(arguments), outcome))

    monkeypatch.setattr(operator_log, "record", record)

    def revoking(args: argparse.Namespace) -> int:
        operator_log.detail(serial="1f", subject="CN=x")
        return 0

    args = parse("keys", "revoke", "000.00.00.H26", "--dir", "ca")
    assert operator_log.accountable(args, revoking) == 0
    # The next command starts with none of them.
    assert operator_log.accountable(args, lambda args: 1) == 1
    assert rows == [
        (
            "keys revoke",
            {"code": "000.00.00.H26", "dir": "ca", "serial": "1f", "subject": "CN=x"},
            "done",
        ),
        ("keys revoke", {"code": "000.00.00.H26", "dir": "ca"}, "refused"),
    ]
