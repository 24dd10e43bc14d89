"""Seals: the hash chains' heads, signed by the exchange and time-stamped (RFC 3161).

The chains (migration 0002) show a row changed or deleted behind the
exchange's back, but someone with superuser rights on PostgreSQL can
rewrite a whole chain consistently. A seal (migration 0014) pins each
chain's head, its position and hash, at a moment, with a signature by the
exchange's sealing key (``LIENTHONG_SEAL_KEY``), which lives on the
exchange's hosts and never in the database, and, when an authority is
configured (``LIENTHONG_TSA_URL``), with an RFC 3161 time-stamp token over
the payload's SHA-256. ``lienthong audit --verify-chain`` checks every seal
against the certificate it is given (``LIENTHONG_SEAL_CERT``) and the chain
against every sealed head (:func:`check_seals`): a rewritten chain no
longer has the sealed hash at the sealed position.

Seals are written by the workers at an interval (:func:`seal_if_due`, one
process at a time under an advisory lock) and by ``lienthong audit --seal``
(:func:`seal_heads`). Each seal names the previous one's digest, so one
deleted between two others is found too.

Signing and verifying are pure functions of bytes; the database and the
authority are touched only by :func:`seal_heads`, :func:`seal_if_due`,
:func:`load_seals` and :func:`request_timestamp`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

if TYPE_CHECKING:
    from exchange.settings import Settings
    from exchange.store.db import Connection

log = logging.getLogger(__name__)

PAYLOAD_VERSION = 1
# Session-level advisory lock of the sealing: the first eight bytes of
# SHA-256("lienthong.seal") as a signed 64-bit integer. Several worker
# processes hold the sealing key; the one that takes the lock seals.
SEAL_LOCK_KEY = 6423054513717122013


class SealError(Exception):
    """A seal cannot be written: no key, an unreadable key, the authority refused."""


# -- the payload and the signature (pure) -------------------------------------------


def payload_bytes(
    number: int,
    sealed_at: datetime,
    heads: Mapping[str, tuple[int, str]],
    previous: str | None,
) -> bytes:
    """The exact bytes a seal signs: canonical JSON (keys sorted, no spaces), UTF-8.

    ``heads`` maps each chain to its head's position and hash; ``previous``
    is the digest of the seal before (:func:`seal_digest`), ``None`` for the first.
    """
    document = {
        "version": PAYLOAD_VERSION,
        "number": number,
        "sealed_at": sealed_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "heads": {chain: {"seq": seq, "hash": h} for chain, (seq, h) in sorted(heads.items())},
        "previous": previous,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def seal_digest(payload: bytes, signature: bytes) -> str:
    """What the next seal names as ``previous``: hex SHA-256 of payload and signature."""
    return hashlib.sha256(payload + signature).hexdigest()


@dataclass(frozen=True)
class SealingKey:
    """The exchange's sealing key and its certificate."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    certificate: x509.Certificate

    @classmethod
    def load(cls, key_path: Path, cert_path: Path) -> SealingKey:
        """Read the key and the first certificate of ``cert_path``; they must belong together."""
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as error:
            raise SealError(f"LIENTHONG_SEAL_KEY: cannot read {key_path}: {error}") from None
        if not isinstance(
            key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
        ):
            raise SealError(f"LIENTHONG_SEAL_KEY: {key_path} is not an RSA, EC or Ed25519 key")
        certificates = read_certificates(cert_path, "LIENTHONG_SEAL_CERT")
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        own = key.public_key().public_bytes(serialization.Encoding.DER, public)
        for certificate in certificates:
            if certificate.public_key().public_bytes(serialization.Encoding.DER, public) == own:
                return cls(key, certificate)
        raise SealError(
            f"LIENTHONG_SEAL_CERT: no certificate in {cert_path} is the one of the key "
            f"{key_path}; give the sealing key's certificate"
        )

    def sign(self, data: bytes) -> tuple[bytes, str]:
        """The signature of ``data`` and the name of its algorithm."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256()), "rsa-pkcs1v15-sha256"
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return self.key.sign(data, ec.ECDSA(hashes.SHA256())), "ecdsa-sha256"
        return self.key.sign(data), "ed25519"

    @property
    def certificate_pem(self) -> str:
        """The certificate as PEM text."""
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()


def read_certificates(path: Path, setting: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file; a clear error naming ``setting`` otherwise."""
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as error:
        raise SealError(f"{setting}: cannot read certificates from {path}: {error}") from None
    return certificates


def signature_verifies(
    certificate: x509.Certificate, data: bytes, signature: bytes, algorithm: str
) -> bool:
    """Whether ``signature`` over ``data`` was made by ``certificate``'s key with ``algorithm``."""
    public = certificate.public_key()
    try:
        if algorithm == "rsa-pkcs1v15-sha256" and isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif algorithm == "ecdsa-sha256" and isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif algorithm == "ed25519" and isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


# -- RFC 3161 time stamps ------------------------------------------------------------


def timestamp_request(digest: bytes, nonce: int) -> bytes:
    """A DER TimeStampReq for a SHA-256 ``digest``, asking for the authority's certificate."""
    from asn1crypto import tsp

    return bytes(
        tsp.TimeStampReq(
            {
                "version": 1,
                "message_imprint": {
                    "hash_algorithm": {"algorithm": "sha256"},
                    "hashed_message": digest,
                },
                "nonce": nonce,
                "cert_req": True,
            }
        ).dump()
    )


def token_of_response(response: bytes, nonce: int) -> bytes:
    """The time-stamp token (DER) of a TimeStampResp; :class:`SealError` if refused."""
    from asn1crypto import tsp

    try:
        parsed = tsp.TimeStampResp.load(response)
        status = parsed["status"]["status"].native
        if status not in ("granted", "granted_with_mods"):
            text = parsed["status"]["status_string"].native
            raise SealError(f"the time-stamp authority refused the request: {status} {text or ''}")
        token = parsed["time_stamp_token"]
        info = token["content"]["encap_content_info"]["content"].parsed
        if info["nonce"].native != nonce:
            raise SealError("the time-stamp authority answered another request (nonce differs)")
        return bytes(token.dump())
    except (ValueError, KeyError, TypeError) as error:
        raise SealError(f"the time-stamp authority's answer is not RFC 3161: {error}") from None


def request_timestamp(url: str, digest: bytes, *, timeout: float) -> bytes:
    """Ask the authority at ``url`` for a token over ``digest`` (HTTP POST, RFC 3161 s. 3.4)."""
    nonce = secrets.randbits(63)
    request = urllib.request.Request(  # noqa: S310 (the operator's configured URL)
        url,
        data=timestamp_request(digest, nonce),
        headers={"Content-Type": "application/timestamp-query"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            body = answer.read()
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        raise SealError(f"the time-stamp authority at {url} did not answer: {error}") from None
    return token_of_response(body, nonce)


_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def verify_timestamp(token: bytes, digest: bytes, trusted: Sequence[x509.Certificate]) -> datetime:
    """Check a time-stamp token over ``digest``; return the time it states.

    The token's imprint must be ``digest`` (SHA-256), its signature must
    verify with the authority's certificate carried in the token, and that
    certificate must be one of ``trusted`` or issued by one of them.
    Raises :class:`SealError` saying what is wrong.
    """
    from asn1crypto import cms

    try:
        signed = cms.ContentInfo.load(token)["content"]
        encapsulated = signed["encap_content_info"]["content"]
        info = encapsulated.parsed
        imprint = info["message_imprint"]
        signer = signed["signer_infos"][0]
        digest_name = signer["digest_algorithm"]["algorithm"].native
        attributes = signer["signed_attrs"]
        carried = [
            x509.load_der_x509_certificate(choice.chosen.dump())
            for choice in signed["certificates"] or ()
        ]
        at: datetime = info["gen_time"].native
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise SealError(f"the time-stamp token cannot be read: {error}") from None
    if imprint["hash_algorithm"]["algorithm"].native != "sha256" or (
        imprint["hashed_message"].native != digest
    ):
        raise SealError("the time-stamp token is for other data than this seal")
    algorithm = _HASHES.get(digest_name)
    if algorithm is None:
        raise SealError(f"the time-stamp token uses digest {digest_name}, not accepted")
    content_digest = hashes.Hash(algorithm())
    content_digest.update(bytes(encapsulated.contents))
    stated = next(
        (a["values"][0].native for a in attributes if a["type"].native == "message_digest"),
        None,
    )
    if stated != content_digest.finalize():
        raise SealError("the time-stamp token was changed after the authority signed it")
    # The signature covers the signed attributes DER-encoded as a SET (tag 0x31).
    signed_bytes = b"\x31" + bytes(attributes.dump())[1:]
    signature = bytes(signer["signature"].native)
    for certificate in carried:
        public = certificate.public_key()
        try:
            if isinstance(public, rsa.RSAPublicKey):
                public.verify(signature, signed_bytes, padding.PKCS1v15(), algorithm())
            elif isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signature, signed_bytes, ec.ECDSA(algorithm()))
            else:
                continue
        except InvalidSignature:
            continue
        if _trusted(certificate, trusted):
            return at.astimezone(UTC)
        raise SealError(
            f"the time-stamp authority {certificate.subject.rfc4514_string()} is not "
            "trusted (LIENTHONG_TSA_CERT)"
        )
    raise SealError("the time-stamp token's signature does not verify")


def _trusted(certificate: x509.Certificate, trusted: Sequence[x509.Certificate]) -> bool:
    for anchor in trusted:
        if certificate == anchor:
            return True
        try:
            certificate.verify_directly_issued_by(anchor)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


# -- the record --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seal:
    """One row of ``head_seals``."""

    number: int
    sealed_at: datetime
    payload: bytes
    signature: bytes
    algorithm: str
    certificate_pem: str
    tsa_token: bytes | None
    tsa_time: datetime | None
    sealed_by: str

    @property
    def digest(self) -> str:
        """What the next seal names as ``previous``."""
        return seal_digest(self.payload, self.signature)

    def content(self) -> dict[str, Any]:
        """The signed payload, parsed (an empty dict if it is not JSON)."""
        try:
            parsed = json.loads(self.payload)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}

    @property
    def signed_at(self) -> datetime:
        """When the seal was made, as its signed payload says (the column is not signed)."""
        try:
            return datetime.fromisoformat(str(self.content()["sealed_at"]))
        except (KeyError, ValueError):
            return self.sealed_at

    def heads(self) -> dict[str, tuple[int, str]]:
        """The sealed heads, by chain (what the signed payload says, not the columns)."""
        found: dict[str, tuple[int, str]] = {}
        for chain, head in (self.content().get("heads") or {}).items():
            if isinstance(head, dict) and isinstance(head.get("seq"), int):
                found[chain] = (head["seq"], str(head.get("hash")))
        return found

    def as_dict(self) -> dict[str, Any]:
        """JSON values, for ``--json``."""
        return {
            "number": self.number,
            "sealed_at": self.sealed_at.isoformat(),
            "sealed_by": self.sealed_by,
            "algorithm": self.algorithm,
            "heads": {c: {"seq": s, "hash": h} for c, (s, h) in self.heads().items()},
            "digest": self.digest,
            "tsa_time": None if self.tsa_time is None else self.tsa_time.isoformat(),
        }


async def load_seals(conn: Connection) -> list[Seal]:
    """Every seal, in the order of their numbers."""
    from exchange.store import accountability

    return [Seal(**row) for row in await accountability.seals(conn)]


async def seal_heads(conn: Connection, settings: Settings) -> Seal:
    """Sign (and time-stamp) the current head of every chain; record and return the seal.

    Holds the sealing lock (:data:`SEAL_LOCK_KEY`) meanwhile, so two seals
    never claim the same number.
    """
    from exchange.store import accountability

    key = sealing_key(settings)
    async with accountability.seal_lock(conn, SEAL_LOCK_KEY, wait=True):
        return await _seal(conn, settings, key)


async def seal_if_due(conn: Connection, settings: Settings) -> Seal | None:
    """Seal when the last seal is ``seal_interval_s`` old or more; ``None`` if not due.

    Gives way (returns ``None``) when another process holds the sealing lock.
    """
    from exchange.store import accountability

    key = sealing_key(settings)
    async with accountability.seal_lock(conn, SEAL_LOCK_KEY, wait=False) as held:
        if not held:
            return None
        last = await accountability.last_seal_age(conn)
        if last is not None and last < timedelta(seconds=settings.seal_interval_s):
            return None
        return await _seal(conn, settings, key)


def sealing_key(settings: Settings) -> SealingKey:
    """The sealing key the settings name; :class:`SealError` if they name none."""
    if settings.seal_key is None or settings.seal_cert is None:
        raise SealError(
            "no sealing key: set LIENTHONG_SEAL_KEY and LIENTHONG_SEAL_CERT "
            "(the exchange's sealing key and certificate, docs/security.md)"
        )
    return SealingKey.load(settings.seal_key, settings.seal_cert)


async def _seal(conn: Connection, settings: Settings, key: SealingKey) -> Seal:
    from exchange.store import accountability

    async with conn.transaction(isolation="repeatable_read"):
        heads = await accountability.current_heads(conn)
        previous = await accountability.last_seal(conn)
        sealed_at = await accountability.database_now(conn)
    number = 1 if previous is None else previous["number"] + 1
    previous_digest = (
        None if previous is None else seal_digest(previous["payload"], previous["signature"])
    )
    payload = payload_bytes(number, sealed_at, heads, previous_digest)
    signature, algorithm = key.sign(payload)
    token: bytes | None = None
    token_time: datetime | None = None
    if settings.tsa_url:
        digest = hashlib.sha256(payload).digest()
        # Blocking HTTP, off the event loop (a worker keeps consuming meanwhile).
        token = await asyncio.to_thread(
            request_timestamp, settings.tsa_url, digest, timeout=settings.tsa_timeout_s
        )
        if settings.tsa_cert is not None:
            token_time = verify_timestamp(
                token, digest, read_certificates(settings.tsa_cert, "LIENTHONG_TSA_CERT")
            )
        else:
            token_time = _stated_time(token)
    row = await accountability.insert_seal(
        conn,
        number=number,
        sealed_at=sealed_at,
        payload=payload,
        signature=signature,
        algorithm=algorithm,
        certificate_pem=key.certificate_pem,
        tsa_token=token,
        tsa_time=token_time,
    )
    seal = Seal(**row)
    log.info(
        "sealed the chains' heads: seal %d digest %s %s",
        seal.number,
        seal.digest,
        " ".join(f"{c}={s}:{h}" for c, (s, h) in sorted(heads.items())),
    )
    return seal


def _stated_time(token: bytes) -> datetime:
    from asn1crypto import cms

    info = cms.ContentInfo.load(token)["content"]["encap_content_info"]["content"].parsed
    at: datetime = info["gen_time"].native
    return at.astimezone(UTC)


# -- verification against the chains (pure) ------------------------------------------


@dataclass(frozen=True, slots=True)
class SealProblem:
    """A seal that does not hold, or a chain that no longer has a sealed head."""

    # SEAL_FORGED, SEAL_MISSING, SEAL_REWRITTEN, SEAL_BEYOND_END, SEAL_TSA_INVALID,
    # SEAL_OVERDUE, NO_SEAL
    code: str
    chain: str | None
    seal: int | None
    sentence: str


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def check_seals(
    seals: Sequence[Seal],
    stored: Mapping[str, Mapping[int, str]],
    lengths: Mapping[str, int],
    *,
    certificates: Sequence[x509.Certificate],
    tsa_certificates: Sequence[x509.Certificate] = (),
    interval_s: float = 0.0,
    now: datetime | None = None,
    detached: Mapping[str, Sequence[tuple[int, int]]] | None = None,
) -> list[SealProblem]:
    """Every problem of the seals and of the chains against them.

    ``stored`` is, per chain, the hash stored at each sealed position
    (:meth:`needed_positions` says which); ``lengths`` the last position of
    each chain. A seal counts only if its signature verifies with one of
    ``certificates`` (the sealing certificates the verifier trusts).
    ``detached`` holds, per chain, the ranges of positions whose rows were
    detached with their month (exchange.store.partitions): a seal of a
    position in one is checked against the export, offline, not here.
    """
    problems: list[SealProblem] = []
    trusted: list[Seal] = []
    expected_number, previous = 1, None
    for seal in seals:
        if seal.number != expected_number:
            problems.append(
                SealProblem(
                    "SEAL_MISSING",
                    None,
                    seal.number,
                    (
                        f"seal {expected_number} is missing"
                        if seal.number == expected_number + 1
                        else f"seals {expected_number} to {seal.number - 1} are missing"
                    )
                    + f": deleted (the next one, seal {seal.number}, is of "
                    f"{_when(seal.signed_at)})",
                )
            )
        elif seal.content().get("previous") != previous:
            problems.append(
                SealProblem(
                    "SEAL_MISSING",
                    None,
                    seal.number,
                    f"seal {seal.number} ({_when(seal.signed_at)}) does not follow seal "
                    f"{seal.number - 1}: the seals were replaced",
                )
            )
        expected_number, previous = seal.number + 1, seal.digest
        if not any(
            signature_verifies(c, seal.payload, seal.signature, seal.algorithm)
            for c in certificates
        ):
            problems.append(
                SealProblem(
                    "SEAL_FORGED",
                    None,
                    seal.number,
                    f"seal {seal.number} ({_when(seal.signed_at)}) is not signed by the "
                    "sealing key (LIENTHONG_SEAL_CERT): it was written or changed by "
                    "someone else, and is ignored",
                )
            )
            continue
        if seal.content().get("number") != seal.number:
            problems.append(
                SealProblem(
                    "SEAL_MISSING",
                    None,
                    seal.number,
                    f"seal {seal.number} carries the signed payload of seal "
                    f"{seal.content().get('number')}: the seals were shuffled",
                )
            )
        if seal.tsa_token is not None and tsa_certificates:
            try:
                verify_timestamp(
                    seal.tsa_token, hashlib.sha256(seal.payload).digest(), tsa_certificates
                )
            except SealError as error:
                problems.append(
                    SealProblem(
                        "SEAL_TSA_INVALID",
                        None,
                        seal.number,
                        f"seal {seal.number}'s time stamp does not hold: {error}",
                    )
                )
        trusted.append(seal)
    for chain in sorted(lengths):
        problems.extend(
            _chain_against_seals(
                chain,
                trusted,
                stored.get(chain, {}),
                lengths[chain],
                (detached or {}).get(chain, ()),
            )
        )
    if trusted and interval_s > 0:
        last = trusted[-1]
        age = (now or datetime.now(UTC)) - last.signed_at
        if age > timedelta(seconds=2 * interval_s):
            problems.append(
                SealProblem(
                    "SEAL_OVERDUE",
                    None,
                    last.number,
                    f"the last seal, {last.number}, is of {_when(last.signed_at)}, more than "
                    f"twice the sealing interval ({interval_s:.0f} s) ago: no process seals "
                    "(a worker with LIENTHONG_SEAL_KEY, or `lienthong audit --seal` from a "
                    "timer), or the later seals were deleted",
                )
            )
    return problems


def _chain_against_seals(
    chain: str,
    seals: Iterable[Seal],
    stored: Mapping[int, str],
    length: int,
    detached: Sequence[tuple[int, int]] = (),
) -> list[SealProblem]:
    problems: list[SealProblem] = []
    good: Seal | None = None
    for seal in seals:
        head = seal.heads().get(chain)
        if head is None:
            continue  # sealed before this chain existed
        seq, sealed_hash = head
        if seq == 0:
            good = seal
            continue
        if seq > length:
            problems.append(
                SealProblem(
                    "SEAL_BEYOND_END",
                    chain,
                    seal.number,
                    f"{chain} ends at position {length} but seal {seal.number} "
                    f"({_when(seal.signed_at)}) sealed position {seq}: rows recorded before "
                    "that seal were deleted",
                )
            )
            return problems
        if any(first <= seq <= last for first, last in detached):
            continue  # in a detached month: its export is checked against it
        if stored.get(seq) != sealed_hash:
            since = (
                f"; it still matches seal {good.number} ({_when(good.signed_at)}, position "
                f"{good.heads()[chain][0]}): the rows rewritten are after that position, "
                f"recorded from {_when(good.signed_at)} on"
                if good is not None
                else "; no earlier seal matches: the rewrite may reach back to its first row"
            )
            problems.append(
                SealProblem(
                    "SEAL_REWRITTEN",
                    chain,
                    seal.number,
                    f"{chain} was rewritten: position {seq} does not have the hash sealed by "
                    f"seal {seal.number} ({_when(seal.signed_at)}){since}",
                )
            )
            return problems
        good = seal
    return problems


def needed_positions(seals: Iterable[Seal]) -> dict[str, set[int]]:
    """The positions, per chain, whose stored hash the seals are checked against."""
    positions: dict[str, set[int]] = {}
    for seal in seals:
        for chain, (seq, _) in seal.heads().items():
            positions.setdefault(chain, set()).add(seq)
    return positions


__all__ = [
    "SEAL_LOCK_KEY",
    "Seal",
    "SealError",
    "SealProblem",
    "SealingKey",
    "check_seals",
    "load_seals",
    "needed_positions",
    "payload_bytes",
    "read_certificates",
    "request_timestamp",
    "seal_digest",
    "seal_heads",
    "seal_if_due",
    "sealing_key",
    "signature_verifies",
    "timestamp_request",
    "token_of_response",
    "verify_timestamp",
]
