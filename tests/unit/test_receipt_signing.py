"""Signed receipts: the exchange's JWS over every member, verified against a trusted CA."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jwcrypto import jwk, jws

from exchange.agency import AgencyCode
from exchange.ledger import effects_of, receipt_for
from exchange.pki import KeyType, create_ca, issue_exchange_certificate
from exchange.receipts import (
    RECEIPT_JWS_TYPE,
    Receipt,
    ReceiptKeyError,
    ReceiptProblem,
    ReceiptSignatureError,
    ReceiptSigner,
    canonical,
    verify_receipt,
)
from exchange.status import MessageKind, TransportOutcome
from exchange.store.records import Message
from tests.keys import TestPKI

AT = datetime(2026, 11, 25, 8, 30, 15, 123456, tzinfo=UTC)


def a_receipt(**changes: Any) -> Receipt:
    """A rejection receipt with every member filled in (Vietnamese, a control character)."""
    fields: dict[str, Any] = {
        "message_id": "m-1",
        "document_id": "000.00.00.G22,2026/11/25,101/VPCP-TH",
        "kind": MessageKind.DOCUMENT,
        "sender": "000.00.00.G22",
        "recipient": "000.00.00.H26",
        "outcome": TransportOutcome.REJECTED,
        "reason_code": "REJECTED_NOT_ADDRESSED",
        "reason": "Cơ quan nhận không có trong danh sách nơi nhận\t(To)",
        "reason_en": "the recipient is not among To",
        "problems": ["To: 000.00.00.H26 is not among To"],
        "warnings": ["TraceHeader[2]: 2026/02/30 does not exist"],
        "sha256": "ab" * 32,
        "at": AT,
    }
    fields.update(changes)
    return Receipt(**fields)


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return TestPKI.create(tmp_path)


@pytest.fixture
def signer(pki: TestPKI) -> ReceiptSigner:
    return ReceiptSigner(issue_exchange_certificate(pki.ca, not_before=AT - timedelta(days=30)))


def test_a_signed_receipt_verifies_and_reads_back_as_the_same_receipt(
    pki: TestPKI, signer: ReceiptSigner
) -> None:
    receipt = a_receipt()
    body = signer.sign(receipt)

    verified = verify_receipt(body, pki.trust)

    assert verified.receipt.model_dump(exclude={"signature"}) == receipt.model_dump(
        exclude={"signature"}
    )
    assert verified.algorithm == "ES256"
    assert verified.signer == signer.certificate
    # Still the published JSON: every member readable without the signature.
    assert json.loads(body)["outcome"] == "rejected"
    assert Receipt.model_validate_json(body).reason_code == "REJECTED_NOT_ADDRESSED"


@pytest.mark.parametrize(
    ("member", "edited"),
    [
        ("sha256", "cd" * 32),
        ("outcome", "delivered"),
        ("reason_code", "REJECTED_SIGNATURE"),
        ("reason", "Gói tin hợp lệ"),
        ("reason_en", "all good"),
        ("problems", []),
        ("warnings", []),
        ("at", "2026-11-24T08:30:15.123456Z"),
        ("message_id", "m-2"),
        ("document_id", "000.00.00.G22,2026/11/25,102/VPCP-TH"),
        ("sender", "000.00.00.G09"),
        ("recipient", "000.00.00.H49"),
        ("kind", "status"),
        ("type", "status"),
    ],
)
def test_a_receipt_edited_after_signing_fails_in_each_member(
    pki: TestPKI, signer: ReceiptSigner, member: str, edited: Any
) -> None:
    members = json.loads(signer.sign(a_receipt()))
    assert members[member] != edited
    members[member] = edited

    with pytest.raises(ReceiptSignatureError) as refused:
        verify_receipt(json.dumps(members, ensure_ascii=False).encode(), pki.trust)

    assert refused.value.problem is ReceiptProblem.BAD_SIGNATURE
    assert "changed after signing" in str(refused.value)


def test_a_member_added_or_removed_after_signing_fails(pki: TestPKI, signer: ReceiptSigner) -> None:
    members = json.loads(signer.sign(a_receipt()))
    added = {**members, "delivered_to": "000.00.00.H26"}
    removed = {k: v for k, v in members.items() if k != "reason"}
    for edited in (added, removed):
        with pytest.raises(ReceiptSignatureError) as refused:
            verify_receipt(json.dumps(edited).encode(), pki.trust)
        assert refused.value.problem is ReceiptProblem.BAD_SIGNATURE


def test_reordering_and_reformatting_the_json_keeps_the_signature(
    pki: TestPKI, signer: ReceiptSigner
) -> None:
    members = json.loads(signer.sign(a_receipt()))
    reordered = dict(reversed(list(members.items())))
    pretty = json.dumps(reordered, indent=4, ensure_ascii=True).encode()

    assert verify_receipt(pretty, pki.trust).receipt.outcome is TransportOutcome.REJECTED


def test_a_name_given_twice_is_refused_so_no_reader_sees_another_receipt(
    pki: TestPKI, signer: ReceiptSigner
) -> None:
    body = signer.sign(a_receipt()).decode()
    doubled = body.replace('"outcome":"rejected"', '"outcome":"delivered","outcome":"rejected"')

    with pytest.raises(ReceiptSignatureError) as refused:
        verify_receipt(doubled.encode(), pki.trust)

    assert refused.value.problem is ReceiptProblem.MALFORMED
    assert "'outcome' appears twice" in str(refused.value)


def test_an_unsigned_receipt_is_refused(pki: TestPKI) -> None:
    with pytest.raises(ReceiptSignatureError) as refused:
        verify_receipt(a_receipt().to_bytes(), pki.trust)
    assert refused.value.problem is ReceiptProblem.UNSIGNED


def test_a_receipt_signed_under_another_ca_is_untrusted(
    pki: TestPKI, tmp_path: Path, signer: ReceiptSigner
) -> None:
    other = create_ca(tmp_path / "other", common_name="another CA")
    body = ReceiptSigner(issue_exchange_certificate(other)).sign(a_receipt(at=datetime.now(UTC)))

    with pytest.raises(ReceiptSignatureError) as refused:
        verify_receipt(body, pki.trust)

    assert refused.value.problem is ReceiptProblem.UNTRUSTED
    assert "does not lead to a CA the exchange trusts" in str(refused.value)


def test_a_receipt_whose_signature_is_another_keys_fails(
    pki: TestPKI, signer: ReceiptSigner
) -> None:
    """The x5c of the exchange, the signature of another exchange key of the same CA."""
    genuine = json.loads(signer.sign(a_receipt()))
    other = ReceiptSigner(issue_exchange_certificate(pki.ca, not_before=AT - timedelta(days=1)))
    forged = json.loads(other.sign(a_receipt(outcome=TransportOutcome.DELIVERED)))
    protected = genuine["signature"].split(".")[0]
    forged["signature"] = protected + ".." + forged["signature"].split(".")[2]

    with pytest.raises(ReceiptSignatureError) as refused:
        verify_receipt(json.dumps(forged).encode(), pki.trust)

    assert refused.value.problem is ReceiptProblem.BAD_SIGNATURE


def test_an_agency_certificate_cannot_sign_receipts(pki: TestPKI) -> None:
    """An agency's certificate chains to the same CA, but lacks the receipt-signing EKU."""
    agency = pki.agency("000.00.00.G22")
    with pytest.raises(ReceiptKeyError, match="no receipt-signing ExtendedKeyUsage"):
        ReceiptSigner(agency)

    forged = _sign_without_checks(agency, a_receipt(at=datetime.now(UTC)))
    with pytest.raises(ReceiptSignatureError) as refused:
        verify_receipt(forged, pki.trust)
    assert refused.value.problem is ReceiptProblem.NOT_EXCHANGE


def test_a_receipt_signed_after_the_certificate_expired_fails(pki: TestPKI) -> None:
    expired = issue_exchange_certificate(
        pki.ca, not_before=AT - timedelta(days=60), valid_for=timedelta(days=30)
    )
    body = ReceiptSigner(expired).sign(a_receipt())

    with pytest.raises(ReceiptSignatureError) as refused:
        verify_receipt(body, pki.trust)

    assert refused.value.problem is ReceiptProblem.EXPIRED
    assert "expired on" in str(refused.value)


def test_a_receipt_verifies_after_its_certificate_expired_if_signed_while_valid(
    pki: TestPKI,
) -> None:
    """A receipt is evidence for years: checked at its own time, when the exchange signed."""
    credential = issue_exchange_certificate(
        pki.ca, not_before=AT - timedelta(days=1), valid_for=timedelta(days=2)
    )
    body = ReceiptSigner(credential).sign(a_receipt())

    assert verify_receipt(body, pki.trust).receipt.at == AT
    with pytest.raises(ReceiptSignatureError) as refused:
        verify_receipt(body, pki.trust, at=AT + timedelta(days=5))
    assert refused.value.problem is ReceiptProblem.EXPIRED


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ({"alg": "none", "typ": RECEIPT_JWS_TYPE}, "algorithm 'none' is not accepted"),
        ({"alg": "HS256", "typ": RECEIPT_JWS_TYPE}, "algorithm 'HS256' is not accepted"),
        ({"alg": "ES256", "typ": "JWT"}, "not a receipt signature"),
        ({"alg": "ES256", "typ": RECEIPT_JWS_TYPE, "jku": "https://x"}, "never does: jku"),
        ({"alg": "ES256", "typ": RECEIPT_JWS_TYPE}, "no readable certificate chain"),
    ],
)
def test_a_jws_header_a_receipt_never_has_is_refused(
    pki: TestPKI, header: dict[str, Any], problem: str
) -> None:
    members = a_receipt().model_dump(mode="json", exclude={"signature"})
    protected = _b64url(json.dumps(header).encode())
    members["signature"] = f"{protected}..{_b64url(b'x' * 64)}"

    with pytest.raises(ReceiptSignatureError) as refused:
        verify_receipt(json.dumps(members).encode(), pki.trust)

    assert refused.value.problem is ReceiptProblem.MALFORMED
    assert problem in str(refused.value)


@pytest.mark.parametrize("body", [b"", b"[1]", b"{not json", b"{}"])
def test_what_is_not_a_signed_receipt_says_so(pki: TestPKI, body: bytes) -> None:
    with pytest.raises(ReceiptSignatureError) as refused:
        verify_receipt(body, pki.trust)
    assert refused.value.problem in {ReceiptProblem.MALFORMED, ReceiptProblem.UNSIGNED}


def test_any_jose_library_verifies_a_receipt_given_its_canonical_payload(
    signer: ReceiptSigner,
) -> None:
    """jwcrypto, which shares no code with receipts.py, checks the detached JWS."""
    members = json.loads(signer.sign(a_receipt()))
    compact = members.pop("signature")
    header = json.loads(base64.urlsafe_b64decode(compact.split(".")[0] + "=="))
    certificate = base64.b64decode(header["x5c"][0])
    key = jwk.JWK.from_pem(
        _pem(certificate),
    )
    token = jws.JWS()
    token.deserialize(compact)
    token.verify(key, alg="ES256", detached_payload=canonical(members))
    assert header["typ"] == RECEIPT_JWS_TYPE

    token = jws.JWS()
    token.deserialize(compact)
    members["outcome"] = "delivered"
    with pytest.raises(jws.InvalidJWSSignature):
        token.verify(key, alg="ES256", detached_payload=canonical(members))


def test_canonical_form_is_rfc_8785_for_what_receipts_hold() -> None:
    members = {"b": 'é\u2028/"\\\x1f', "a": [None, True, "z"], "c": {"y": "1", "x": "2"}}
    assert canonical(members) == (
        '{"a":[null,true,"z"],"b":"é\u2028/\\"\\\\\\u001f","c":{"x":"2","y":"1"}}'.encode()
    )
    with pytest.raises(ValueError, match="no float"):
        canonical({"n": 1.5})


def _record(outcome: TransportOutcome = TransportOutcome.DELIVERED) -> Message:
    return Message(
        pk=7,
        dedup_key="cd" * 32,
        amqp_message_id="m-7",
        routing_key="000.00.00.H26",
        broker_user="000.00.00.G22",
        sha256="ab" * 32,
        received_at=AT,
        kind=MessageKind.DOCUMENT,
        sender=AgencyCode.parse("000.00.00.G22"),
        outcome=outcome,
        reason_code=None,
        reason_detail=None,
        document_pk=3,
        document_id="000.00.00.G22,2026/11/25,101/VPCP-TH",
        attempts=1,
        published_at=None,
        updated_at=AT,
    )


def test_a_receipt_rebuilt_from_the_record_after_a_crash_is_the_same_signed_bytes(
    pki: TestPKI, signer: ReceiptSigner
) -> None:
    """ECDSA signs deterministically (RFC 6979): the second pass publishes the same receipt."""
    record = _record()
    first = [p for p in effects_of(record, b"<edXML/>", "000.00.00.H26", signer=signer)][-1]
    again = [p for p in effects_of(record, b"<edXML/>", "000.00.00.H26", signer=signer)][-1]

    assert first.body == again.body
    assert first.message_id == again.message_id == "lienthong:7:receipt:delivered"
    assert verify_receipt(first.body, pki.trust).receipt == receipt_for(
        record, "000.00.00.H26"
    ).model_copy(update={"signature": json.loads(first.body)["signature"]})


def test_an_rsa_exchange_key_signs_rs256(pki: TestPKI) -> None:
    credential = issue_exchange_certificate(
        pki.ca, key_type=KeyType.RSA_2048, not_before=AT - timedelta(days=1)
    )
    body = ReceiptSigner(credential).sign(a_receipt())
    assert verify_receipt(body, pki.trust).algorithm == "RS256"


def test_signing_cost_per_receipt(signer: ReceiptSigner, pki: TestPKI) -> None:
    """Measured, not asserted: the figure goes in the test output (-s)."""
    receipt = a_receipt()
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        body = signer.sign(receipt)
    signed = (time.perf_counter() - started) / rounds
    started = time.perf_counter()
    for _ in range(rounds):
        receipt.to_bytes()
    unsigned = (time.perf_counter() - started) / rounds
    print(
        f"\nreceipt: {len(body)} bytes signed ({len(receipt.to_bytes())} unsigned); "
        f"{signed * 1e6:.0f} us to sign (ES256) vs {unsigned * 1e6:.0f} us unsigned"
    )
    assert verify_receipt(body, pki.trust)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _pem(der: bytes) -> bytes:
    lines = base64.encodebytes(der).decode().replace("\n", "")
    body = "\n".join(lines[i : i + 64] for i in range(0, len(lines), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode()


def _sign_without_checks(credential: Any, receipt: Receipt) -> bytes:
    """Sign as ReceiptSigner does, with a certificate it would refuse (an agency's)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.hazmat.primitives.serialization import Encoding

    header = {
        "alg": "ES256",
        "typ": RECEIPT_JWS_TYPE,
        "x5c": [base64.b64encode(credential.certificate.public_bytes(Encoding.DER)).decode()],
    }
    members = receipt.model_dump(mode="json", exclude={"signature"})
    protected = _b64url(json.dumps(header).encode())
    signing_input = f"{protected}.{_b64url(canonical(members))}".encode()
    r, s = decode_dss_signature(
        credential.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    )
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    members["signature"] = f"{protected}..{_b64url(signature)}"
    return json.dumps(members).encode()


# -- the worker's receipt key at start ------------------------------------------


def _settings(**values: Any) -> Any:
    from exchange.settings import Settings

    return Settings().model_copy(
        update={"receipt_key": None, "receipt_cert": None, "unsigned_receipts": False, **values}
    )


def test_a_worker_starts_only_with_a_receipt_key_that_can_sign_now(
    pki: TestPKI, tmp_path: Path
) -> None:
    from exchange.worker import load_receipt_signer

    key, cert = issue_exchange_certificate(pki.ca).write(tmp_path, "exchange")
    other_key, _ = issue_exchange_certificate(pki.ca).write(tmp_path, "other")
    expired_key, expired_cert = issue_exchange_certificate(
        pki.ca, not_before=AT - timedelta(days=60), valid_for=timedelta(days=30)
    ).write(tmp_path, "expired")

    signer = load_receipt_signer(_settings(receipt_key=key, receipt_cert=cert))
    assert signer is not None and signer.algorithm == "ES256"
    refusals = {
        "no receipt key: set LIENTHONG_RECEIPT_KEY": _settings(),
        "go together; set both": _settings(receipt_cert=cert),
        "does not belong to the certificate": _settings(receipt_key=other_key, receipt_cert=cert),
        "not now: receipts it signed would not verify": _settings(
            receipt_key=expired_key, receipt_cert=expired_cert
        ),
        "cannot read": _settings(receipt_key=tmp_path / "missing.pem", receipt_cert=cert),
    }
    for message, settings in refusals.items():
        with pytest.raises(ReceiptKeyError, match=message):
            load_receipt_signer(settings)
    # Unsigned only when asked for, by name.
    assert load_receipt_signer(_settings(unsigned_receipts=True)) is None
