"""The gateway's pure parts: the SDK's HMAC, the body's hash, the codes, signing for agencies."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from exchange.agency import AgencyCode
from exchange.checks.signature import sign
from exchange.edxml.safexml import parse
from exchange.gateway import auth
from exchange.gateway.auth import Headers
from exchange.gateway.protocol import (
    ALWAYS,
    REASON_CODES,
    ErrorCode,
    GatewayError,
    package_of,
    refusal,
    sdk_hash,
)
from exchange.gateway.submit import carries_real_signature, prepare
from exchange.pipeline import CheckContext
from exchange.pki import Credential
from exchange.reasons import Reason, Rejection
from tests.keys import TestPKI
from tests.packages import document_package

SENDER = AgencyCode.parse("000.00.00.G22")


def _headers(pairs: list[tuple[str, str]]) -> Headers:
    return Headers((name.encode("latin-1"), value.encode("utf-8")) for name, value in pairs)


def _code(call: object) -> str:
    with pytest.raises(GatewayError) as raised:
        call()  # type: ignore[operator]
    return raised.value.code


# -- authentication -------------------------------------------------------------


def test_a_request_signed_as_the_sdk_signs_it_is_accepted() -> None:
    headers = _headers(auth.sign_request("00.53.W00", "s3cret-s3cret-s3", {"messagetype": "edoc"}))
    assert auth.system_id_of(headers) == "00.53.W00"
    auth.verify(headers, "s3cret-s3cret-s3")


def test_the_hmac_is_checked_over_the_literal_header_not_a_reserialised_json() -> None:
    # Gson escapes '=' as \\u003d and the SDK writes no spaces; a server that
    # parsed and re-serialised the JSON would compute another HMAC.
    signed = '{"XroadVnpt-systemid":"S1", "XroadVnpt-docId":"a\\u003db"}'
    digest = hmac.new(b"k" * 16, signed.encode(), hashlib.sha256).hexdigest()
    headers = _headers(
        [
            ("XroadVnpt-systemid", "S1"),
            ("XroadVnpt-docId", "a=b"),
            ("XroadVnpt-sign-header", signed),
            ("XroadVnpt-hash-header", digest.upper()),
        ]
    )
    auth.verify(headers, "k" * 16)


def test_a_wrong_secret_is_refused() -> None:
    headers = _headers(auth.sign_request("S1", "right-secret-0123", {}))
    assert _code(lambda: auth.verify(headers, "wrong-secret-0123")) == ErrorCode.BAD_HMAC.code


def test_a_signed_header_sent_with_another_value_is_refused() -> None:
    pairs = auth.sign_request("S1", "right-secret-0123", {"from": "000.00.00.G22"})
    pairs = [(n, "000.00.00.H26" if n == "XroadVnpt-from" else v) for n, v in pairs]
    headers = _headers(pairs)
    code = _code(lambda: auth.verify(headers, "right-secret-0123"))
    assert code == ErrorCode.SIGNED_HEADER_MISMATCH.code


def test_a_signed_header_not_sent_at_all_is_refused() -> None:
    pairs = [
        pair
        for pair in auth.sign_request("S1", "right-secret-0123", {"from": "000.00.00.G22"})
        if pair[0] != "XroadVnpt-from"
    ]
    code = _code(lambda: auth.verify(_headers(pairs), "right-secret-0123"))
    assert code == ErrorCode.SIGNED_HEADER_MISMATCH.code


def test_stale_unsigned_headers_and_names_in_any_case_are_fine() -> None:
    pairs = auth.sign_request("S1", "right-secret-0123", {"docId": "abc"})
    pairs = [(name.lower(), value) for name, value in pairs] + [("XROADVNPT-FROM", "anything")]
    headers = _headers(pairs)
    auth.verify(headers, "right-secret-0123")
    assert headers.param("DOCID") == "abc"
    assert headers.param("docid") == "abc"


def test_missing_authentication_headers_are_named() -> None:
    with pytest.raises(GatewayError) as raised:
        auth.system_id_of(_headers([("XroadVnpt-systemid", "S1")]))
    assert raised.value.code == ErrorCode.MISSING_AUTH.code
    assert "xroadvnpt-hash-header" in raised.value.description


def test_a_sign_header_that_is_not_an_object_of_strings_is_refused() -> None:
    signed = json.dumps(["XroadVnpt-systemid"])
    digest = hmac.new(b"k" * 16, signed.encode(), hashlib.sha256).hexdigest()
    headers = _headers([("XroadVnpt-sign-header", signed), ("XroadVnpt-hash-header", digest)])
    code = _code(lambda: auth.verify(headers, "k" * 16))
    assert code == ErrorCode.SIGNED_HEADER_MISMATCH.code


# -- the body and its hash -------------------------------------------------------------


def test_the_sdk_hash_drops_each_bytes_leading_zero() -> None:
    assert sdk_hash(bytes([0x0A, 0xFF, 0x00, 0x10])) == "aff010"


def test_the_package_is_the_body_without_the_sdks_crlf() -> None:
    package = b"<edXML/>"
    digest = hashlib.sha256(package).digest()
    assert package_of(package + b"\r\n", sdk_hash(digest)) == package
    assert package_of(package + b"\r\n", digest.hex().upper()) == package
    assert package_of(package, sdk_hash(digest)) == package
    # A package that itself ends in CRLF, hashed whole.
    whole = package + b"\r\n"
    assert package_of(whole, hashlib.sha256(whole).hexdigest()) == whole


def test_an_altered_body_is_refused() -> None:
    digest = hashlib.sha256(b"<edXML/>").digest()
    assert _code(lambda: package_of(b"<edXML />\r\n", sdk_hash(digest))) == "204"


# -- codes and replies ---------------------------------------------------------------


def test_every_rejection_reason_has_its_own_code() -> None:
    assert set(REASON_CODES) == set(Reason)
    assert len(set(REASON_CODES.values())) == len(REASON_CODES)
    own = {error.code for error in ErrorCode}
    assert len(own) == len(ErrorCode)
    assert not own & set(REASON_CODES.values())


def test_a_refusal_carries_the_three_keys_and_what_the_sdk_reads_first() -> None:
    error = GatewayError.of(ErrorCode.UNKNOWN_DOC, "abc")
    assert refusal(error, **ALWAYS["sendEdoc"]) == {
        "status": "FAIL",
        "ErrorCode": "401",
        "ErrorDesc": ErrorCode.UNKNOWN_DOC.vietnamese.rstrip(".") + ": abc",
        "DocId": "",
    }
    assert refusal(error, **ALWAYS["getEdoc"])["data"] == ""


def test_a_rejection_is_told_in_the_receipts_words() -> None:
    rejection = Rejection.of(Reason.SENDER_MISMATCH, "From names X", "From/OrganId")
    error = GatewayError.rejected(rejection)
    assert error.code == REASON_CODES[Reason.SENDER_MISMATCH]
    assert error.description == rejection.explain("vi")
    assert error.reason_code == "REJECTED_SENDER_MISMATCH"


# -- signing for the agency ------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return TestPKI.create(tmp_path)


def _context(pki: TestPKI) -> CheckContext:
    return CheckContext(trust=pki.trust)


def test_placeholders_are_not_real_signatures(pki: TestPKI) -> None:
    unsigned = document_package().encode()
    assert not carries_real_signature(parse(unsigned))
    agency = pki.agency(str(SENDER))
    assert carries_real_signature(parse(sign(unsigned, agency.key_pem, agency.cert_pem)))
    empty = (
        b'<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016"><ds:Signature '
        b'xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignatureValue> </ds:SignatureValue>'
        b"</ds:Signature></edXML>"
    )
    assert not carries_real_signature(parse(empty))


def test_an_unsigned_package_is_signed_with_the_senders_key(pki: TestPKI) -> None:
    agency = pki.agency(str(SENDER))
    prepared = prepare(
        document_package().encode(),
        sender=SENDER,
        message_type="edoc",
        context=_context(pki),
        credential_of=lambda code: agency if code == SENDER else None,
    )
    assert prepared.signed_by_gateway
    assert [str(r) for r in prepared.recipients] == ["000.00.00.H41", "000.00.00.H14"]
    assert carries_real_signature(parse(prepared.body))


def test_a_real_signature_is_never_replaced(pki: TestPKI) -> None:
    agency = pki.agency(str(SENDER))
    signed = sign(document_package().encode(), agency.key_pem, agency.cert_pem)
    other: Credential = pki.agency(str(SENDER))
    prepared = prepare(
        signed,
        sender=SENDER,
        message_type="edoc",
        context=_context(pki),
        credential_of=lambda code: other,
    )
    assert prepared.body == signed and not prepared.signed_by_gateway


def test_an_unsigned_package_without_a_key_is_refused(pki: TestPKI) -> None:
    code = _code(
        lambda: prepare(
            document_package().encode(),
            sender=SENDER,
            message_type="edoc",
            context=_context(pki),
            credential_of=lambda code: None,
        )
    )
    assert code == ErrorCode.NO_KEY_TO_SIGN.code


def test_a_package_for_another_agency_is_refused_by_the_worker_checks(pki: TestPKI) -> None:
    # The system acts for H26, the package says From G22: the gateway signs as H26.
    h26 = AgencyCode.parse("000.00.00.H26")
    credential = pki.agency(str(h26))
    with pytest.raises(Rejection) as raised:
        prepare(
            document_package().encode(),
            sender=h26,
            message_type="edoc",
            context=_context(pki),
            credential_of=lambda code: credential,
        )
    assert raised.value.reason is Reason.SENDER_MISMATCH


def test_a_messagetype_the_package_contradicts_is_refused(pki: TestPKI) -> None:
    agency = pki.agency(str(SENDER))
    code = _code(
        lambda: prepare(
            document_package().encode(),
            sender=SENDER,
            message_type="status",
            context=_context(pki),
            credential_of=lambda code: agency,
        )
    )
    assert code == ErrorCode.WRONG_MESSAGE_TYPE.code
