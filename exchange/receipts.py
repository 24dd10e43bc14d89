"""Receipts: what the exchange tells a sender about each message it submitted.

A receipt is JSON on the sender's status queue (``lienthong.status.<code>``),
next to the business statuses its recipients report. Its JSON Schema,
generated from :class:`Receipt`, is published as ``schemas/receipt.schema.json``
(package data, :func:`schema_path`) so agency software in any language can
read receipts.

Every receipt is signed by the exchange's own key (:class:`ReceiptSigner`):
its ``signature`` member is a JWS (RFC 7515) in compact serialization with a
detached payload, ``<protected header>..<signature>``. The payload is every
other member of the receipt, in the JSON Canonicalization Scheme (RFC 8785,
:func:`canonical`); the protected header carries the algorithm, the type
:data:`RECEIPT_JWS_TYPE` and the exchange's certificate chain (``x5c``). So a
receipt stays plain JSON for the software that reads it, and any JOSE
library verifies it given the canonical payload; :func:`verify_receipt` does
it here, and checks that the certificate is the exchange's (the
:data:`~exchange.pki.RECEIPT_SIGNING` ExtendedKeyUsage) and chains to a
trusted CA (docs/security.md).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exchange.installation import data_dir
from exchange.pki import Credential, TrustStore, describe, signs_receipts
from exchange.reasons import Reason, Rejection
from exchange.status import MessageKind, TransportOutcome

RECEIPT_CONTENT_TYPE = "application/vnd.lienthong.receipt+json"
RECEIPT_SCHEMA_ID = "https://lienthong.gov.vn/schemas/receipt.schema.json"
# The JWS header's "typ" (RFC 8725, explicit typing): a JWS the exchange's key
# made for any other purpose cannot pass for a receipt.
RECEIPT_JWS_TYPE = "lienthong-receipt+jws"


class Receipt(BaseModel):
    """The exchange's answer to one submitted message (a transport outcome)."""

    model_config = ConfigDict(
        frozen=True,
        json_schema_extra={"$id": RECEIPT_SCHEMA_ID, "title": "lienthong receipt"},
    )

    type: Literal["receipt"] = Field(
        "receipt", description="Always 'receipt': tells receipts from forwarded status packages."
    )
    message_id: str = Field(
        description="The AMQP message_id the sender gave the message "
        "(or the exchange's own id when the sender gave none)."
    )
    document_id: str | None = Field(
        None, description="The DocumentId of the package, when it could be read."
    )
    kind: MessageKind = Field(description="Whether the message was a document or a status.")
    sender: str | None = Field(None, description="Agency code of the authenticated sender.")
    recipient: str = Field(description="The routing key the message was published with.")
    outcome: TransportOutcome = Field(description="What the exchange did with the message.")
    reason_code: str | None = Field(
        None, description="Stable machine code of the reason (REJECTED_...), when not delivered."
    )
    reason: str | None = Field(None, description="The reason in Vietnamese, for the agency clerk.")
    reason_en: str | None = Field(None, description="The reason in English, for operators.")
    problems: list[str] = Field(
        default_factory=list, description="Each specific problem found: where, and what."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What did not stop a delivered package but should be known: where, and "
        "what (for example a day that does not exist in a part of the trace relayed from "
        "another agency).",
    )
    sha256: str = Field(description="SHA-256 of the package bytes, hex.")
    at: datetime = Field(description="When the exchange decided, UTC.")
    signature: str | None = Field(
        None,
        description="The exchange's signature of every other member: a JWS (RFC 7515) in "
        "compact serialization with a detached payload, '<protected>..<signature>'; the "
        "payload is the receipt without 'signature' in the JSON Canonicalization Scheme "
        "(RFC 8785), the protected header names the algorithm, the type "
        f"'{RECEIPT_JWS_TYPE}' and the exchange's certificate chain (x5c). Verify with "
        "`lienthong receipt verify FILE --trust CA` or any JOSE library (docs/security.md). "
        "Null only from an exchange that runs without a receipt key (development).",
    )

    def to_bytes(self) -> bytes:
        """The JSON body published on the status queue, unsigned (see :class:`ReceiptSigner`)."""
        return self.model_dump_json().encode()


def receipt_json_schema() -> str:
    """The published JSON Schema of receipts, as committed in ``schemas/``."""
    schema = Receipt.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def schema_path() -> Path:
    """The published receipt schema as the package ships it (``exchange/schemas/``)."""
    return data_dir("schemas") / "receipt.schema.json"


# -- signing -------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    if not text.isascii() or "=" in text:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical(members: dict[str, Any]) -> bytes:
    """``members`` in the JSON Canonicalization Scheme (RFC 8785): what a receipt's JWS signs.

    A receipt holds only strings, nulls, lists and objects, with ASCII
    member names, for which RFC 8785 is: members sorted by name (code point
    order is then RFC 8785's UTF-16 order), no white space, strings escaped
    as ECMAScript's JSON.stringify does (which is what Python's encoder
    writes with ``ensure_ascii=False``). A number (never in a receipt) is
    refused, so nothing is signed whose canonical form this function might
    get wrong.
    """

    def check(value: Any) -> None:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, list):
            for item in value:
                check(item)
            return
        if isinstance(value, dict):
            for item in value.values():
                check(item)
            return
        raise ValueError(f"a receipt holds no {type(value).__name__} values")

    check(members)
    return json.dumps(
        members, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


# JWS algorithm (RFC 7518) per key: the curve names the ECDSA hash and the
# length of r and s; RSA signs RS256 (PKCS#1 v1.5, deterministic like the
# ECDSA below).
_CURVES = {"secp256r1": ("ES256", 32), "secp384r1": ("ES384", 48), "secp521r1": ("ES512", 66)}
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "ES256": hashes.SHA256,
    "ES384": hashes.SHA384,
    "ES512": hashes.SHA512,
    "RS256": hashes.SHA256,
}


class ReceiptKeyError(ValueError):
    """The exchange's receipt key or certificate cannot sign receipts; the message says why."""


class ReceiptSigner:
    """Signs receipts with the exchange's key (:func:`exchange.pki.issue_exchange_certificate`).

    The protected header is encoded once; each receipt then costs its
    canonical form and one signature (ECDSA P-256: tens of microseconds).
    ECDSA signs deterministically (RFC 6979), so the same receipt rebuilt
    from the record after a crash is the same bytes.
    """

    def __init__(self, credential: Credential) -> None:
        """A signer with ``credential``; :class:`ReceiptKeyError` if it cannot sign receipts."""
        try:
            key = credential.private_key
            chain = [
                credential.certificate,
                *map(x509.load_pem_x509_certificate, credential.chain_pem),
            ]
        except (ValueError, TypeError) as error:
            raise ReceiptKeyError(f"cannot read the receipt key or certificate: {error}") from None
        leaf = chain[0]
        if key.public_key().public_numbers() != leaf.public_key().public_numbers():  # type: ignore[union-attr]
            raise ReceiptKeyError(
                f"the receipt key does not belong to the certificate {describe(leaf)}"
            )
        if not signs_receipts(leaf):
            raise ReceiptKeyError(
                f"the certificate {describe(leaf)} has no receipt-signing ExtendedKeyUsage; "
                "issue one with `lienthong keys issue-exchange`"
            )
        self._sign: Callable[[bytes], bytes]
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if key.curve.name not in _CURVES:
                raise ReceiptKeyError(f"the receipt key is on the curve {key.curve.name}")
            algorithm, size = _CURVES[key.curve.name]
            ecdsa = ec.ECDSA(_HASHES[algorithm](), deterministic_signing=True)

            def sign_ec(data: bytes) -> bytes:
                r, s = decode_dss_signature(key.sign(data, ecdsa))
                return r.to_bytes(size, "big") + s.to_bytes(size, "big")

            self._sign = sign_ec
        else:
            algorithm = "RS256"
            rsa_key: rsa.RSAPrivateKey = key

            def sign_rsa(data: bytes) -> bytes:
                return rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256())

            self._sign = sign_rsa
        self.algorithm = algorithm
        self.certificate = leaf
        header = {
            "alg": algorithm,
            "typ": RECEIPT_JWS_TYPE,
            "x5c": [
                base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode("ascii")
                for c in chain
            ],
        }
        self._protected = _b64url(json.dumps(header, separators=(",", ":")).encode())

    @classmethod
    def load(cls, key: Path, cert: Path) -> ReceiptSigner:
        """The signer for a PEM key file and a PEM certificate file (its chain after it)."""
        try:
            key_pem, cert_pem = key.read_bytes(), cert.read_bytes()
        except OSError as error:
            raise ReceiptKeyError(f"cannot read {error.filename}: {error.strerror}") from None
        try:
            certificates = x509.load_pem_x509_certificates(cert_pem)
        except ValueError:
            raise ReceiptKeyError(f"{cert} holds no PEM certificate") from None
        pems = [c.public_bytes(serialization.Encoding.PEM) for c in certificates]
        return cls(Credential(key_pem, pems[0], tuple(pems[1:])))

    def signature(self, members: dict[str, Any]) -> str:
        """The detached compact JWS of ``members`` (a receipt without ``signature``)."""
        signing_input = f"{self._protected}.{_b64url(canonical(members))}".encode("ascii")
        return f"{self._protected}..{_b64url(self._sign(signing_input))}"

    def sign(self, receipt: Receipt) -> bytes:
        """The JSON body of ``receipt``, signed: every member, then ``signature``."""
        members = receipt.model_dump(mode="json", exclude={"signature"})
        members["signature"] = self.signature(members)
        return json.dumps(members, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def receipt_body(receipt: Receipt, signer: ReceiptSigner | None) -> bytes:
    """What the exchange publishes for ``receipt``: signed, or unsigned without a signer."""
    return receipt.to_bytes() if signer is None else signer.sign(receipt)


# -- verifying -----------------------------------------------------------------


class ReceiptProblem(StrEnum):
    """Why a receipt does not verify: a stable code, as ``lienthong receipt verify`` prints it."""

    MALFORMED = "RECEIPT_MALFORMED"  # not a receipt: not JSON, duplicate names, bad JWS
    UNSIGNED = "RECEIPT_UNSIGNED"  # no signature at all
    BAD_SIGNATURE = "RECEIPT_BAD_SIGNATURE"  # edited after signing, or another key signed
    NOT_EXCHANGE = "RECEIPT_NOT_EXCHANGE"  # signed by a certificate that is not the exchange's
    UNTRUSTED = "RECEIPT_UNTRUSTED"  # the certificate leads to no trusted CA
    EXPIRED = "RECEIPT_CERT_EXPIRED"  # the certificate was not valid when the receipt was signed


class ReceiptSignatureError(ValueError):
    """A receipt that does not verify: :attr:`problem` and a sentence saying what is wrong."""

    def __init__(self, problem: ReceiptProblem, message: str) -> None:
        """The error for ``problem``, explained by ``message``."""
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class VerifiedReceipt:
    """A receipt whose signature verified, and the exchange certificate that signed it."""

    receipt: Receipt
    signer: x509.Certificate
    algorithm: str


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two members of one name would let two readers see two receipts under
    # one signature: refused, as RFC 7515 section 5.2 asks of JWS headers.
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise ValueError(f"the member {name!r} appears twice")
        members[name] = value
    return members


def _json_object(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError) as error:
        raise ReceiptSignatureError(
            ReceiptProblem.MALFORMED, f"{what} is not valid JSON ({error})"
        ) from None
    if not isinstance(value, dict):
        raise ReceiptSignatureError(ReceiptProblem.MALFORMED, f"{what} is not a JSON object")
    return value


def _verify_jws(public_key: Any, algorithm: str, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``algorithm``'s signature of ``data`` by ``public_key``."""
    try:
        if algorithm.startswith("ES"):
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                return False
            expected = _CURVES.get(public_key.curve.name)
            if expected is None or expected[0] != algorithm or len(signature) != 2 * expected[1]:
                return False
            half = expected[1]
            der = encode_dss_signature(
                int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            )
            public_key.verify(der, data, ec.ECDSA(_HASHES[algorithm]()))
        elif algorithm == "RS256" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True


def verify_receipt(
    body: bytes | str, trust: TrustStore, *, at: datetime | None = None
) -> VerifiedReceipt:
    """Verify a receipt's signature; the receipt and its signer, or :class:`ReceiptSignatureError`.

    Checked in order: the body is one JSON object with no name twice; it
    carries a detached compact JWS of type :data:`RECEIPT_JWS_TYPE` with an
    algorithm of :data:`_HASHES` and an ``x5c`` chain; the signature over the
    canonical form of every other member is the first certificate's
    (``BAD_SIGNATURE``: the receipt was edited, or another key signed); that
    certificate carries the receipt-signing ExtendedKeyUsage
    (``NOT_EXCHANGE``: an agency's certificate cannot sign receipts); its chain
    leads to a CA of ``trust`` and was valid at ``at``, by default the
    receipt's own ``at``, when the exchange signed it (``EXPIRED``,
    ``UNTRUSTED``).
    """
    members = _json_object(body, "the receipt")
    jws = members.pop("signature", None)
    if jws is None:
        raise ReceiptSignatureError(
            ReceiptProblem.UNSIGNED,
            "the receipt carries no signature (signature is missing or null)",
        )
    parts = jws.split(".") if isinstance(jws, str) else []
    if len(parts) != 3 or parts[1] != "" or not parts[0] or not parts[2]:
        raise ReceiptSignatureError(
            ReceiptProblem.MALFORMED,
            "the signature is not a detached compact JWS ('<protected>..<signature>')",
        )
    protected, _, encoded_signature = parts
    try:
        header = _json_object(_b64url_decode(protected), "the JWS header")
        signature = _b64url_decode(encoded_signature)
    except (ValueError, binascii.Error) as error:
        if isinstance(error, ReceiptSignatureError):
            raise
        raise ReceiptSignatureError(
            ReceiptProblem.MALFORMED, "the signature is not base64url-encoded"
        ) from None
    algorithm, kind, x5c = header.get("alg"), header.get("typ"), header.get("x5c")
    if kind != RECEIPT_JWS_TYPE:
        raise ReceiptSignatureError(
            ReceiptProblem.MALFORMED,
            f"the JWS header's typ is {kind!r}, not {RECEIPT_JWS_TYPE!r}: not a receipt signature",
        )
    if algorithm not in _HASHES:
        raise ReceiptSignatureError(
            ReceiptProblem.MALFORMED,
            f"the JWS algorithm {algorithm!r} is not accepted (only {', '.join(_HASHES)})",
        )
    if set(header) - {"alg", "typ", "x5c", "kid", "x5t#S256"}:
        # "crit", "jku", "x5u", "b64": nothing a verifier should follow or must understand.
        extra = ", ".join(sorted(set(header) - {"alg", "typ", "x5c", "kid", "x5t#S256"}))
        raise ReceiptSignatureError(
            ReceiptProblem.MALFORMED, f"the JWS header carries what a receipt never does: {extra}"
        )
    try:
        if not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c):
            raise ValueError("no x5c")
        chain = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c]
    except (ValueError, binascii.Error):
        raise ReceiptSignatureError(
            ReceiptProblem.MALFORMED,
            "the JWS header carries no readable certificate chain (x5c)",
        ) from None
    leaf = chain[0]
    try:
        payload = canonical(members)
    except ValueError as error:
        raise ReceiptSignatureError(ReceiptProblem.BAD_SIGNATURE, str(error)) from None
    signing_input = f"{protected}.{_b64url(payload)}".encode("ascii")
    try:
        public_key = leaf.public_key()
    except (ValueError, TypeError):
        public_key = None
    if not _verify_jws(public_key, algorithm, signature, signing_input):
        raise ReceiptSignatureError(
            ReceiptProblem.BAD_SIGNATURE,
            f"the signature does not match the receipt: it was changed after signing, or "
            f"signed with another key than that of {describe(leaf)}",
        )
    if not signs_receipts(leaf):
        raise ReceiptSignatureError(
            ReceiptProblem.NOT_EXCHANGE,
            f"the receipt is signed by {describe(leaf)}, a certificate without the exchange's "
            "receipt-signing ExtendedKeyUsage (an agency's certificate cannot sign receipts)",
        )
    try:
        receipt = Receipt.model_validate(members)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ReceiptSignatureError(
            ReceiptProblem.MALFORMED,
            f"the signed receipt does not follow its schema: {where}: {first['msg']}",
        ) from None
    try:
        trust.validate(leaf, chain[1:], at=at or receipt.at)
    except Rejection as rejection:
        detail = "; ".join(p.what for p in rejection.problems) or rejection.reason.english
        problem = (
            ReceiptProblem.EXPIRED
            if rejection.reason is Reason.CERT_EXPIRED
            else ReceiptProblem.UNTRUSTED
        )
        raise ReceiptSignatureError(problem, detail) from None
    return VerifiedReceipt(receipt.model_copy(update={"signature": jws}), leaf, algorithm)
