"""Keys and certificates of agencies (chứng thư số), and the CAs the exchange trusts.

An agency signs its packages with a key whose X.509 certificate names the
agency: the certificate subject carries the agency code (mã định danh) in a
UID attribute (OID 0.9.2342.19200300.100.1.1), next to a readable CN, O and
C=VN. The exchange trusts a set of certification authorities (a
:class:`TrustStore`) and accepts a signature only from a certificate that
chains to one of them and is valid at the time of the check.

This module also makes a development CA and agency certificates, for tests,
demos and a local exchange; production certificates come from a real CA
(for state agencies, the Government Cipher Committee's CA), and only need
the agency code in their subject's UID.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from exchange.agency import AgencyCode
from exchange.reasons import Reason, Rejection

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Certificates start a few minutes in the past: the clocks of the signer and
# of the exchange differ, and a certificate made just now must verify now.
CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_CA_VALIDITY = timedelta(days=10 * 365)
DEFAULT_AGENCY_VALIDITY = timedelta(days=2 * 365)
# Root, at most a few intermediates, and the agency: deeper chains are a
# mistake or an attack on the chain builder.
_MAX_CHAIN_DEPTH = 6

# A UID value is the bare code, or the code behind a scheme prefix such as
# "MDD:" (mã định danh), which some CAs write.
_UID_CODE = re.compile(r"(?:[A-Za-z][A-Za-z0-9_-]*:)?(\d{3}\.\d{2}\.\d{2}\.[A-Z]\d{2})")


class KeyType(StrEnum):
    """The kinds of key the exchange makes and accepts for signing."""

    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    ECDSA_P256 = "ecdsa-p256"

    def generate(self) -> PrivateKey:
        """A new private key of this kind."""
        if self is KeyType.ECDSA_P256:
            return ec.generate_private_key(ec.SECP256R1())
        bits = 2048 if self is KeyType.RSA_2048 else 3072
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@dataclass(frozen=True)
class Credential:
    """A private key and its certificate (plus any intermediates), as PEM."""

    key_pem: bytes
    cert_pem: bytes
    chain_pem: tuple[bytes, ...] = ()

    @cached_property
    def certificate(self) -> x509.Certificate:
        """The certificate, parsed."""
        return x509.load_pem_x509_certificate(self.cert_pem)

    @cached_property
    def private_key(self) -> PrivateKey:
        """The private key, parsed."""
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise TypeError(f"unsupported key type {type(key).__name__}")
        return key

    @property
    def cert_chain_pem(self) -> list[bytes]:
        """The certificate followed by its intermediates, as ``sign()`` takes them."""
        return [self.cert_pem, *self.chain_pem]

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``<stem>.key.pem`` (owner-only) and ``<stem>.cert.pem`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        key_path = directory / f"{stem}.key.pem"
        cert_path = directory / f"{stem}.cert.pem"
        key_path.touch(mode=0o600, exist_ok=True)
        key_path.chmod(0o600)
        key_path.write_bytes(self.key_pem)
        cert_path.write_bytes(b"".join(self.cert_chain_pem))
        return key_path, cert_path

    @classmethod
    def read(cls, directory: Path, stem: str) -> Credential:
        """Read back what :meth:`write` wrote (the first certificate is the holder's)."""
        key_pem = (directory / f"{stem}.key.pem").read_bytes()
        certs = x509.load_pem_x509_certificates((directory / f"{stem}.cert.pem").read_bytes())
        pems = [c.public_bytes(serialization.Encoding.PEM) for c in certs]
        return cls(key_pem, pems[0], tuple(pems[1:]))


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _validity(not_before: datetime | None, valid_for: timedelta) -> tuple[datetime, datetime]:
    start = not_before if not_before is not None else datetime.now(UTC) - CLOCK_SKEW
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return start, start + valid_for


def _name(common_name: str, organization: str, uid: str | None = None) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ]
    if uid is not None:
        attributes.append(x509.NameAttribute(NameOID.USER_ID, uid))
    return x509.Name(attributes)


def _intermediates_below(ca: Credential) -> tuple[bytes, ...]:
    """What a certificate issued by ``ca`` carries as its chain: ``ca`` unless it is a root."""
    if ca.certificate.issuer == ca.certificate.subject:
        return ()
    return (ca.cert_pem, *ca.chain_pem)


def create_ca(
    directory: Path | None = None,
    *,
    common_name: str = "lienthong development CA",
    organization: str = "lienthong",
    key_type: KeyType = KeyType.ECDSA_P256,
    not_before: datetime | None = None,
    valid_for: timedelta = DEFAULT_CA_VALIDITY,
    issuer: Credential | None = None,
    stem: str = "ca",
) -> Credential:
    """Make a CA: self-signed, or an intermediate under ``issuer``.

    With ``directory``, also writes ``<stem>.key.pem`` and ``<stem>.cert.pem``
    there (the file a :class:`TrustStore` loads is the ``.cert.pem``).
    """
    key = key_type.generate()
    subject = _name(common_name, organization)
    start, end = _validity(not_before, valid_for)
    signer_key: PrivateKey = issuer.private_key if issuer else key
    issuer_name = issuer.certificate.subject if issuer else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.private_key.public_key()),
            critical=False,
        )
    cert = builder.sign(signer_key, hashes.SHA256())
    chain = _intermediates_below(issuer) if issuer else ()
    credential = Credential(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM), chain)
    if directory is not None:
        credential.write(directory, stem)
    return credential


def issue_agency_certificate(
    ca: Credential,
    agency: AgencyCode | str | None,
    *,
    common_name: str,
    organization: str | None = None,
    key_type: KeyType = KeyType.ECDSA_P256,
    not_before: datetime | None = None,
    valid_for: timedelta = DEFAULT_AGENCY_VALIDITY,
    directory: Path | None = None,
    stem: str | None = None,
) -> Credential:
    """Issue an agency's signing key and certificate, signed by ``ca``.

    The subject is ``C=VN, O=<organization>, CN=<common_name>, UID=<agency code>``;
    ``agency=None`` leaves the UID out (a certificate that names no agency,
    which the exchange refuses). With ``directory``, writes the key and the
    certificate (followed by ``ca``'s intermediates, if any) as
    ``<stem>.key.pem`` / ``<stem>.cert.pem``, ``stem`` defaulting to the code.
    """
    code = str(AgencyCode.parse(agency) if isinstance(agency, str) else agency) if agency else None
    key = key_type.generate()
    start, end = _validity(not_before, valid_for)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organization or common_name, code))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
        .sign(ca.private_key, hashes.SHA256())
    )
    credential = Credential(
        _key_pem(key), cert.public_bytes(serialization.Encoding.PEM), _intermediates_below(ca)
    )
    if directory is not None:
        credential.write(directory, stem or code or "agency")
    return credential


def agency_code_of(certificate: x509.Certificate) -> AgencyCode | None:
    """The agency code a certificate names in its subject's UID, or ``None``.

    Accepts ``000.00.00.G22`` and prefixed values such as ``MDD:000.00.00.G22``.
    A subject whose UID values name two different agencies names none: the
    exchange cannot tell which one signed.
    """
    codes = set()
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.USER_ID):
        value = attribute.value
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        match = _UID_CODE.fullmatch(value.strip())
        if match is not None:
            codes.add(match.group(1))
    if len(codes) != 1:
        return None
    return AgencyCode.parse(codes.pop())


def describe(certificate: x509.Certificate) -> str:
    """A short human name for a certificate: its subject, as RFC 4514 text."""
    try:
        return certificate.subject.rfc4514_string()
    except ValueError:
        return f"serial {certificate.serial_number:x}"


def _utc(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _is_valid_at(certificate: x509.Certificate, at: datetime) -> bool:
    return certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc


def _outside_validity(certificate: x509.Certificate, at: datetime) -> str:
    """Say for a clerk why ``certificate`` is not valid at ``at``."""
    if at < certificate.not_valid_before_utc:
        return (
            f"the certificate {describe(certificate)} is valid only from "
            f"{certificate.not_valid_before_utc:%Y/%m/%d %H:%M:%S} UTC"
        )
    return (
        f"the certificate {describe(certificate)} expired on "
        f"{certificate.not_valid_after_utc:%Y/%m/%d %H:%M:%S} UTC"
    )


def _require_signing_key_usage(
    policy: Policy, certificate: x509.Certificate, usage: x509.KeyUsage | None
) -> None:
    # An agency certificate made only for encryption must not sign packages;
    # one without a KeyUsage extension at all is unrestricted (RFC 5280).
    if usage is not None and not (usage.digital_signature or usage.content_commitment):
        raise ValueError("the certificate's KeyUsage does not allow digital signatures")


def _require_ca(
    policy: Policy, certificate: x509.Certificate, constraints: x509.BasicConstraints
) -> None:
    if not constraints.ca:
        raise ValueError("the issuing certificate is not a CA (basicConstraints CA is false)")


# The exchange's certificates are not TLS certificates: no SAN, no
# extendedKeyUsage, so the web-PKI defaults do not apply. What is required:
# the signer's key may sign, and every issuer is a CA.
_EE_POLICY = ExtensionPolicy.permit_all().may_be_present(
    x509.KeyUsage, Criticality.AGNOSTIC, _require_signing_key_usage
)
_CA_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.BasicConstraints, Criticality.AGNOSTIC, _require_ca
)


# Every agency signs with the same certificate for months: remembering the
# chains already built saves the chain building (a tenth of a millisecond)
# on every package. A few thousand agencies fit; beyond that, start over.
_VALIDATED_CACHE_SIZE = 4096


@dataclass(frozen=True)
class _ValidatedChain:
    """A chain that validated once, and the period in which all of it is valid."""

    chain: tuple[x509.Certificate, ...]

    @cached_property
    def window(self) -> tuple[datetime, datetime]:
        return (
            max(cert.not_valid_before_utc for cert in self.chain),
            min(cert.not_valid_after_utc for cert in self.chain),
        )


class TrustStore:
    """The CA certificates the exchange trusts, loaded once, and chain validation.

    Build it with :meth:`load` (a PEM file or a directory of ``*.pem`` files,
    cached per path) or :meth:`from_pem`; validate a signer's certificate
    with :meth:`validate` or :meth:`identify`.
    """

    _loaded: dict[Path, TrustStore] = {}  # noqa: RUF012 (a cache shared by all instances)
    _lock = threading.Lock()

    def __init__(self, anchors: Iterable[x509.Certificate]) -> None:
        """A store trusting ``anchors`` (CA certificates)."""
        self.anchors: tuple[x509.Certificate, ...] = tuple(anchors)
        if not self.anchors:
            raise ValueError("a trust store needs at least one CA certificate")
        self._store = Store(list(self.anchors))
        self._validated: dict[
            tuple[x509.Certificate, tuple[x509.Certificate, ...]], _ValidatedChain
        ] = {}

    @classmethod
    def from_pem(cls, data: bytes) -> TrustStore:
        """A store of the certificates in one PEM text."""
        return cls(x509.load_pem_x509_certificates(data))

    @classmethod
    def load(cls, path: Path | str) -> TrustStore:
        """The store for a PEM file or a directory of ``*.pem`` files, read once per path."""
        resolved = Path(path).resolve()
        with cls._lock:
            store = cls._loaded.get(resolved)
            if store is None:
                files = sorted(resolved.glob("*.pem")) if resolved.is_dir() else [resolved]
                anchors = [
                    cert
                    for file in files
                    if b"-----BEGIN CERTIFICATE-----" in (data := file.read_bytes())
                    for cert in x509.load_pem_x509_certificates(data)
                ]
                if not anchors:
                    raise ValueError(f"no CA certificate found in {resolved}")
                store = cls._loaded[resolved] = cls(anchors)
            return store

    @classmethod
    def forget(cls, path: Path | str) -> None:
        """Drop the cached store for ``path``: the next :meth:`load` reads the files again.

        For an operator who added a CA certificate to a trust directory
        without restarting the process.
        """
        with cls._lock:
            cls._loaded.pop(Path(path).resolve(), None)

    def _verify(
        self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], at: datetime
    ) -> list[x509.Certificate]:
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(at)
            .extension_policies(ee_policy=_EE_POLICY, ca_policy=_CA_POLICY)
            .build_client_verifier()
        )
        return verifier.verify(leaf, list(intermediates)).chain

    def validate(
        self,
        leaf: x509.Certificate,
        intermediates: Sequence[x509.Certificate] = (),
        *,
        at: datetime | None = None,
    ) -> list[x509.Certificate]:
        """The chain from ``leaf`` to a trusted CA, valid at ``at`` (default: now).

        Raises :class:`Rejection` with ``CERT_EXPIRED`` when the chain would be
        trusted but a certificate in it is expired or not yet valid at ``at``,
        and ``CERT_UNTRUSTED`` when no chain leads to a trusted CA.
        """
        moment = _utc(at)
        key = (leaf, tuple(intermediates))
        known = self._validated.get(key)
        if known is not None and known.window[0] <= moment <= known.window[1]:
            return list(known.chain)
        try:
            chain = self._verify(leaf, intermediates, moment)
        except VerificationError as error:
            failure = str(error)
        else:
            if len(self._validated) >= _VALIDATED_CACHE_SIZE:
                self._validated.clear()
            self._validated[key] = _ValidatedChain(tuple(chain))
            return chain
        raise self._diagnose(leaf, intermediates, moment, failure)

    def _diagnose(
        self,
        leaf: x509.Certificate,
        intermediates: Sequence[x509.Certificate],
        at: datetime,
        failure: str,
    ) -> Rejection:
        """Tell an expired chain from an untrusted one, after validation failed at ``at``."""
        chain = self._signed_path(leaf, intermediates)
        if chain is not None:
            stale = [cert for cert in chain if not _is_valid_at(cert, at)]
            if stale:
                # The signatures link the leaf to a trusted CA: time is the
                # only problem, and the clerk needs a new certificate, not a
                # different CA.
                return Rejection.of(
                    Reason.CERT_EXPIRED, _outside_validity(stale[0], at), "Signature/KeyInfo"
                )
        detail = failure.split(" (encountered")[0].removeprefix("validation failed: ")
        # "candidates exhausted" only restates that no trusted issuer was found.
        why = "" if detail.startswith("candidates exhausted") else f" ({detail})"
        return Rejection.of(
            Reason.CERT_UNTRUSTED,
            f"the certificate {describe(leaf)} issued by {leaf.issuer.rfc4514_string()} "
            f"does not lead to a CA the exchange trusts{why}",
            "Signature/KeyInfo",
        )

    def _signed_path(
        self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate]
    ) -> list[x509.Certificate] | None:
        """Certificates linking ``leaf`` to a trusted CA by signatures alone, ignoring time."""
        anchors = set(self.anchors)
        pool = [*intermediates, *self.anchors]

        def walk(
            cert: x509.Certificate, path: list[x509.Certificate]
        ) -> list[x509.Certificate] | None:
            if cert in anchors:
                return path
            if len(path) > _MAX_CHAIN_DEPTH:
                return None
            for issuer in pool:
                if issuer in path or issuer.subject != cert.issuer:
                    continue
                try:
                    cert.verify_directly_issued_by(issuer)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                found = walk(issuer, [*path, issuer])
                if found is not None:
                    return found
            return None

        return walk(leaf, [leaf])

    def identify(
        self,
        leaf: x509.Certificate,
        intermediates: Sequence[x509.Certificate] = (),
        *,
        at: datetime | None = None,
    ) -> AgencyCode:
        """Validate ``leaf`` like :meth:`validate`, and return the agency it names.

        Raises :class:`Rejection` with ``CERT_NO_AGENCY`` when the certificate
        does not name exactly one agency code.
        """
        self.validate(leaf, intermediates, at=at)
        code = agency_code_of(leaf)
        if code is None:
            uids = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.USER_ID)]
            found = f"its UID values are {uids!r}" if uids else "its subject has no UID"
            raise Rejection.of(
                Reason.CERT_NO_AGENCY,
                f"the certificate {describe(leaf)} does not name one agency code "
                f"(DDD.DD.DD.LNN) in its subject UID; {found}",
                "Signature/KeyInfo",
            )
        return code
