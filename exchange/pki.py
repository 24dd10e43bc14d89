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

import hashlib
import ipaddress
import itertools
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
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
from exchange.settings import Settings

log = logging.getLogger(__name__)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Certificates start a few minutes in the past: the clocks of the signer and
# of the exchange differ, and a certificate made just now must verify now.
CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_CA_VALIDITY = timedelta(days=10 * 365)
DEFAULT_AGENCY_VALIDITY = timedelta(days=2 * 365)
# Root, at most a few intermediates, and the agency: deeper chains are a
# mistake or an attack on the chain builder.
_MAX_CHAIN_DEPTH = 6

# Key and certificate policy: what NIST SP 800-57 and the Government Cipher
# Committee's CA still allow for signatures meant to last years.
MIN_RSA_BITS = 2048
ACCEPTED_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
_ACCEPTED_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
# How long a CRL the development CA writes is current: a week, as public CAs
# issue theirs; `lienthong keys revoke` writes a new one each time.
DEFAULT_CRL_VALIDITY = timedelta(days=7)
CRL_FILE = "ca.crl.pem"

# The ExtendedKeyUsage that makes a certificate the exchange's receipt-signing
# certificate (receipts.py): a verifier accepts a receipt only from a
# certificate that carries it, so no agency's certificate (issued by the same
# CA) can sign a receipt. An OID under 2.25 (ITU-T X.667) is a UUID and needs
# no registration; a production CA adds it on request like any other EKU.
RECEIPT_SIGNING = x509.ObjectIdentifier("2.25.232748016783620148363592070348839054691")
DEFAULT_EXCHANGE_VALIDITY = timedelta(days=2 * 365)

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


def _usage_bits(
    *,
    digital_signature: bool = False,
    content_commitment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    """A KeyUsage with the given bits; the encipherment and agreement bits are never set."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=content_commitment,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _certificate(
    key: PrivateKey,
    subject: x509.Name,
    issuer: Credential | None,
    *,
    not_before: datetime | None,
    valid_for: timedelta,
    usage: x509.KeyUsage,
    ca: bool = False,
    extended_usage: Sequence[x509.ObjectIdentifier] = (),
    alternative_names: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    """The certificate of ``key`` for ``subject``, signed by ``issuer`` (``None``: by ``key``).

    Every certificate the development CA makes has this shape: a random
    serial, SHA-256, BasicConstraints and KeyUsage (critical), then
    ExtendedKeyUsage, SubjectKeyIdentifier, AuthorityKeyIdentifier (when
    another key signs) and subjectAltName, each only when given.
    """
    start, end = _validity(not_before, valid_for)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
    )
    if extended_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(extended_usage), critical=False)
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.private_key.public_key()),
            critical=False,
        )
    if alternative_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alternative_names), critical=False
        )
    return builder.sign(issuer.private_key if issuer else key, hashes.SHA256())


def _credential(
    key: PrivateKey,
    certificate: x509.Certificate,
    issuer: Credential | None,
    directory: Path | None,
    stem: str,
) -> Credential:
    """``key``, ``certificate`` and ``issuer``'s intermediates, written to ``directory`` if any."""
    chain = _intermediates_below(issuer) if issuer else ()
    credential = Credential(
        _key_pem(key), certificate.public_bytes(serialization.Encoding.PEM), chain
    )
    if directory is not None:
        credential.write(directory, stem)
    return credential


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
    cert = _certificate(
        key,
        _name(common_name, organization),
        issuer,
        not_before=not_before,
        valid_for=valid_for,
        usage=_usage_bits(key_cert_sign=True, crl_sign=True),
        ca=True,
    )
    return _credential(key, cert, issuer, directory, stem)


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
    cert = _certificate(
        key,
        _name(common_name, organization or common_name, code),
        ca,
        not_before=not_before,
        valid_for=valid_for,
        usage=_usage_bits(digital_signature=True, content_commitment=True),
    )
    return _credential(key, cert, ca, directory, stem or code or "agency")


class TlsRole(StrEnum):
    """What a TLS certificate of the development CA is for."""

    SERVER = "server"  # RabbitMQ's listeners, the gateway: names the hosts it answers as
    CLIENT = "client"  # the exchange's own processes logging in to the broker


def issue_tls_certificate(
    ca: Credential,
    role: TlsRole,
    common_name: str,
    *,
    hosts: Sequence[str] = (),
    not_before: datetime | None = None,
    valid_for: timedelta = DEFAULT_AGENCY_VALIDITY,
    directory: Path | None = None,
    stem: str | None = None,
) -> Credential:
    """Issue a TLS key (ECDSA P-256) and certificate from ``ca``.

    A server certificate names ``hosts`` (DNS names or IP addresses) in its
    subjectAltName, which clients check against the host they dialled; a
    client certificate is for logging in to the broker (``auth=external``),
    its subject ``C=VN, O=lienthong, CN=<common_name>`` being the broker user.
    Agencies log in with their signing certificate instead (see
    :func:`exchange.settings.certificate_login`). With ``directory``, writes
    ``<stem>.key.pem`` and ``<stem>.cert.pem`` (``stem``: the common name).
    """
    if role is TlsRole.SERVER and not hosts:
        raise ValueError("a server certificate names at least one host")
    key = KeyType.ECDSA_P256.generate()
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH
        if role is TlsRole.SERVER
        else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    cert = _certificate(
        key,
        _name(common_name, "lienthong"),
        ca,
        not_before=not_before,
        valid_for=valid_for,
        usage=_usage_bits(digital_signature=True),
        extended_usage=(usage,),
        alternative_names=[_general_name(host) for host in hosts],
    )
    return _credential(key, cert, ca, directory, stem or common_name)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def issue_exchange_certificate(
    ca: Credential,
    *,
    common_name: str = "lienthong exchange",
    organization: str = "lienthong",
    key_type: KeyType = KeyType.ECDSA_P256,
    not_before: datetime | None = None,
    valid_for: timedelta = DEFAULT_EXCHANGE_VALIDITY,
    directory: Path | None = None,
    stem: str = "exchange",
) -> Credential:
    """Issue the exchange's own receipt-signing key and certificate, signed by ``ca``.

    The subject names no agency (no UID); the ExtendedKeyUsage is
    :data:`RECEIPT_SIGNING`, and KeyUsage digitalSignature and
    nonRepudiation (a receipt is evidence for a third party). ECDSA P-256 by
    default: a signature costs tens of microseconds on the worker's hot path,
    RSA-2048 about a millisecond. With ``directory``, writes
    ``<stem>.key.pem`` and ``<stem>.cert.pem`` (followed by ``ca``'s
    intermediates, if any).
    """
    key = key_type.generate()
    cert = _certificate(
        key,
        _name(common_name, organization),
        ca,
        not_before=not_before,
        valid_for=valid_for,
        usage=_usage_bits(digital_signature=True, content_commitment=True),
        extended_usage=(RECEIPT_SIGNING,),
    )
    return _credential(key, cert, ca, directory, stem)


def signs_receipts(certificate: x509.Certificate) -> bool:
    """Whether ``certificate`` carries the receipt-signing ExtendedKeyUsage."""
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return RECEIPT_SIGNING in usage


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
        with a reason of :func:`check_policy` when it breaks the key and
        certificate policy, and ``CERT_UNTRUSTED`` when no chain leads to a
        trusted CA.
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
            check_policy(chain)
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
        """Tell an expired chain, or one against the policy, from an untrusted one."""
        known_issuers = {c.subject for c in (*self.anchors, *intermediates)}
        for certificate in (leaf, *intermediates):
            # A SHA-1 signature cannot even be checked (cryptography refuses
            # it), so a path cannot be built; a certificate that claims one
            # from an issuer the exchange knows is refused for that.
            if certificate.issuer in known_issuers and not isinstance(
                certificate.signature_hash_algorithm, _ACCEPTED_HASHES
            ):
                _refuse_weak_signature(certificate)
        chain = self._signed_path(leaf, intermediates)
        if chain is not None:
            # The verifier refuses weak keys and SHA-1 signatures itself; the
            # policy says which one, with its own reason.
            check_policy(chain)
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
        return self.identify_chain(leaf, intermediates, at=at)[0]

    def identify_chain(
        self,
        leaf: x509.Certificate,
        intermediates: Sequence[x509.Certificate] = (),
        *,
        at: datetime | None = None,
    ) -> tuple[AgencyCode, list[x509.Certificate]]:
        """:meth:`identify`, also returning the validated chain (signer first, anchor last)."""
        chain = self.validate(leaf, intermediates, at=at)
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
        return code, chain


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex: how the directory names a registered certificate."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def _key_problem(certificate: x509.Certificate) -> str | None:
    """Why ``certificate``'s key is too weak, or ``None``."""
    try:
        key = certificate.public_key()
    except (ValueError, TypeError) as error:  # an unknown key type
        return f"the key of {describe(certificate)} cannot be read ({error})"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return (
                f"the key of {describe(certificate)} is RSA-{key.key_size}; at least "
                f"RSA-{MIN_RSA_BITS} is required"
            )
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ACCEPTED_CURVES:
            return (
                f"the key of {describe(certificate)} is on the curve {key.curve.name}; "
                "only P-256, P-384 and P-521 are accepted"
            )
        return None
    return f"the key of {describe(certificate)} is {type(key).__name__}; use RSA or ECDSA"


def _key_usage(certificate: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return certificate.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value  # type: ignore[return-value]
    except x509.ExtensionNotFound:
        return None


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def check_policy(chain: Sequence[x509.Certificate]) -> None:
    """Refuse a chain (signer first, trust anchor last) that breaks the key and certificate policy.

    Each failure has its own reason: the signer is a CA (``CERT_IS_CA``); an
    intermediate may not issue certificates (``CA_CANNOT_SIGN``); a
    certificate is signed with a hash below SHA-256 (``CERT_ALGORITHM``);
    a key is RSA below :data:`MIN_RSA_BITS` or on a curve outside
    :data:`ACCEPTED_CURVES` (``KEY_TOO_WEAK``).
    """
    where = "Signature/KeyInfo"
    signer = chain[0]
    if _is_ca(signer):
        raise Rejection.of(
            Reason.CERT_IS_CA,
            f"the certificate {describe(signer)} is a CA certificate (basicConstraints CA); "
            "a package is signed with the agency's own certificate",
            where,
        )
    # An issuer that is no CA at all is untrusted (the verifier says so);
    # a CA whose KeyUsage does not allow issuing is this policy's refusal.
    for intermediate in chain[1:-1]:
        usage = _key_usage(intermediate)
        if _is_ca(intermediate) and (usage is None or not usage.key_cert_sign):
            raise Rejection.of(
                Reason.CA_CANNOT_SIGN,
                f"the intermediate {describe(intermediate)} has no KeyUsage keyCertSign",
                where,
            )
    # The anchor's own signature proves nothing (it is trusted by configuration).
    for certificate in chain[:-1] if len(chain) > 1 else chain:
        _refuse_weak_signature(certificate)
    for certificate in chain:
        problem = _key_problem(certificate)
        if problem is not None:
            raise Rejection.of(Reason.KEY_TOO_WEAK, problem, where)


def _refuse_weak_signature(certificate: x509.Certificate) -> None:
    """``CERT_ALGORITHM`` for a certificate signed with a hash below SHA-256."""
    algorithm = certificate.signature_hash_algorithm
    if not isinstance(algorithm, _ACCEPTED_HASHES):
        name = algorithm.name if algorithm is not None else "none"
        raise Rejection.of(
            Reason.CERT_ALGORITHM,
            f"the certificate {describe(certificate)} is signed with {name.upper()}; "
            "SHA-256 or stronger is required",
            "Signature/KeyInfo",
        )


@dataclass(frozen=True)
class SigningRights:
    """Which certificates each agency may sign with, and which agencies may still use SHA-1.

    Built from the directory (``agency add --cert``, ``agency cert add``,
    ``agency add --allow-sha1``). A certificate that chains to a trusted CA
    and names an agency is not enough: it must be one registered for that
    agency. An agency with no certificate registered can receive, not send.
    """

    certificates: Mapping[AgencyCode, frozenset[str]] = field(default_factory=dict)
    """Per agency, the SHA-256 fingerprints (:func:`fingerprint`) of its registered certificates."""
    sha1_agencies: frozenset[AgencyCode] = frozenset()
    """Agencies whose SHA-1 signatures are still accepted."""

    def check(self, agency: AgencyCode, certificate: x509.Certificate) -> None:
        """Refuse with ``CERT_NOT_REGISTERED`` a certificate not registered for ``agency``."""
        registered = self.certificates.get(agency, frozenset())
        if fingerprint(certificate) in registered:
            return
        if not registered:
            why = f"{agency} has no certificate registered, so it can receive but not send"
        else:
            why = f"it is not among the {len(registered)} registered for {agency}"
        raise Rejection.of(
            Reason.CERT_NOT_REGISTERED,
            f"the certificate {describe(certificate)} (serial {certificate.serial_number:x}) "
            f"is not registered: {why}",
            "Signature/KeyInfo",
        )

    def may_use_sha1(self, agency: AgencyCode) -> bool:
        """Whether ``agency``'s SHA-1 signatures are accepted."""
        return agency in self.sha1_agencies


# -- revocation --------------------------------------------------------------


def _crl_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.name.endswith((".crl", ".crl.pem"))
    )


def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    if b"-----BEGIN X509 CRL-----" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


@dataclass(frozen=True)
class StaleCrl:
    """A CRL past its nextUpdate plus the grace: its CA's certificates are not accepted."""

    issuer: str
    next_update: datetime


class Revocations:
    """The certificate revocation lists of the trusted CAs, and the revocation check.

    A CRL counts for a certificate when it is issued by the certificate's
    issuer and signed by the issuer's key (a CRL signed by anything else is
    ignored, with a log line). Of several CRLs from one issuer, the newest
    (by lastUpdate) counts. An issuer without a CRL here is not checked.
    A CRL past ``nextUpdate`` + ``grace`` stops acceptance of every
    certificate from its issuer (``CRL_STALE``): the exchange cannot know
    what was revoked since.
    """

    def __init__(
        self, crls: Iterable[x509.CertificateRevocationList], *, grace: timedelta = timedelta(0)
    ) -> None:
        """Revocations from ``crls``, a CRL stale ``grace`` after its nextUpdate."""
        self.grace = grace
        self._by_issuer: dict[x509.Name, list[x509.CertificateRevocationList]] = {}
        for crl in crls:
            self._by_issuer.setdefault(crl.issuer, []).append(crl)
        for lists in self._by_issuer.values():
            lists.sort(key=lambda c: c.last_update_utc, reverse=True)
        self._signed_by: dict[tuple[int, bytes], bool] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, paths: Iterable[Path], *, grace: timedelta = timedelta(0)) -> Revocations:
        """The CRLs in ``paths``: files, or directories whose ``*.crl``/``*.crl.pem`` are read."""
        crls = []
        for path in paths:
            files = _crl_files(path) if path.is_dir() else [path]
            for file in files:
                try:
                    crls.append(_load_crl(file.read_bytes()))
                except ValueError as error:
                    raise ValueError(f"{file} is not a CRL ({error})") from None
        return cls(crls, grace=grace)

    def __len__(self) -> int:
        """How many CRLs are held."""
        return sum(len(lists) for lists in self._by_issuer.values())

    def _current(
        self, certificate: x509.Certificate, issuer: x509.Certificate
    ) -> x509.CertificateRevocationList | None:
        for crl in self._by_issuer.get(certificate.issuer, ()):
            key = (id(crl), issuer.fingerprint(hashes.SHA256()))
            with self._lock:
                signed = self._signed_by.get(key)
            if signed is None:
                public_key = issuer.public_key()
                signed = isinstance(
                    public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey
                ) and crl.is_signature_valid(public_key)
                if not signed:
                    log.warning("ignoring a CRL of %s not signed by it", describe(issuer))
                with self._lock:
                    self._signed_by[key] = signed
            if signed:
                return crl
        return None

    def check(self, chain: Sequence[x509.Certificate], *, at: datetime | None = None) -> None:
        """Refuse a chain (signer first, anchor last) with a revoked certificate or a stale CRL."""
        moment = _utc(at)
        for certificate, issuer in itertools.pairwise(chain):
            crl = self._current(certificate, issuer)
            if crl is None:
                continue
            next_update = crl.next_update_utc
            if next_update is not None and moment > next_update + self.grace:
                raise Rejection.of(
                    Reason.CRL_STALE,
                    f"the revocation list of {describe(issuer)} was due for renewal on "
                    f"{next_update:%Y/%m/%d %H:%M:%S} UTC; no certificate it issued is "
                    "accepted until a current one is installed",
                    "Signature/KeyInfo",
                )
            revoked = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
            if revoked is not None:
                raise Rejection.of(
                    Reason.CERT_REVOKED,
                    f"the certificate {describe(certificate)} (serial "
                    f"{certificate.serial_number:x}) was revoked on "
                    f"{revoked.revocation_date_utc:%Y/%m/%d %H:%M:%S} UTC",
                    "Signature/KeyInfo",
                )

    def stale(self, *, at: datetime | None = None) -> list[StaleCrl]:
        """The issuers whose newest CRL is past nextUpdate + grace at ``at``."""
        moment = _utc(at)
        found = []
        for issuer, lists in self._by_issuer.items():
            next_update = lists[0].next_update_utc
            if next_update is not None and moment > next_update + self.grace:
                found.append(StaleCrl(issuer.rfc4514_string(), next_update))
        return found

    def next_updates(self) -> dict[str, datetime]:
        """Per issuer (RFC 4514 text), the nextUpdate of its newest CRL."""
        return {
            issuer.rfc4514_string(): lists[0].next_update_utc
            for issuer, lists in self._by_issuer.items()
            if lists[0].next_update_utc is not None
        }


def revoke(
    ca: Credential,
    certificate: x509.Certificate,
    directory: Path,
    *,
    at: datetime | None = None,
    valid_for: timedelta = DEFAULT_CRL_VALIDITY,
) -> Path:
    """Revoke ``certificate`` with the development CA ``ca``; write ``directory/ca.crl.pem``.

    The certificates ``ca.crl.pem`` already lists stay revoked. Returns the
    CRL's path.
    """
    if certificate.issuer != ca.certificate.subject:
        raise ValueError(f"{describe(certificate)} was not issued by {describe(ca.certificate)}")
    moment = _utc(at)
    entries = [r for r in _revoked(directory) if r.serial_number != certificate.serial_number]
    entries.append(
        x509.RevokedCertificateBuilder()
        .serial_number(certificate.serial_number)
        .revocation_date(moment)
        .build()
    )
    return _write_crl(ca, entries, directory, moment, valid_for)


def refresh_crl(
    ca: Credential,
    directory: Path,
    *,
    at: datetime | None = None,
    valid_for: timedelta = DEFAULT_CRL_VALIDITY,
) -> Path:
    """Write ``directory/ca.crl.pem`` anew, current from ``at``, revoking what it revoked.

    A CA publishes a new CRL before the last one's nextUpdate even when
    nothing was revoked; a verifier holding a stale one refuses everything
    that CA issued (the broker's TLS, the worker's REJECTED_CRL_STALE).
    """
    return _write_crl(ca, _revoked(directory), directory, _utc(at), valid_for)


def empty_crl(
    ca: Credential,
    directory: Path,
    *,
    at: datetime | None = None,
    valid_for: timedelta = DEFAULT_CRL_VALIDITY,
) -> Path:
    """Write ``directory/ca.crl.pem``: a CRL of ``ca`` revoking nothing, current from ``at``."""
    return _write_crl(ca, [], directory, _utc(at), valid_for)


def _revoked(directory: Path) -> list[x509.RevokedCertificate]:
    path = directory / CRL_FILE
    return list(x509.load_pem_x509_crl(path.read_bytes())) if path.exists() else []


def _write_crl(
    ca: Credential,
    entries: Iterable[x509.RevokedCertificate],
    directory: Path,
    moment: datetime,
    valid_for: timedelta,
) -> Path:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(moment - CLOCK_SKEW)
        .next_update(moment + valid_for)
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca.private_key, hashes.SHA256())
    path = directory / CRL_FILE
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def crl_paths(settings: Settings, trust: Path | None = None) -> list[Path]:
    """Where the revocation lists are: LIENTHONG_CRL_DIR, else beside the trust anchors.

    ``trust`` names the anchors when they are not ``LIENTHONG_TRUST`` (the
    gateway's own).
    """
    if settings.crl_dir is not None:
        return [settings.crl_dir]
    anchors = trust or settings.trust
    if anchors is None:
        return []
    return [anchors if anchors.is_dir() else anchors.parent]


def load_revocations(settings: Settings, trust: Path | None = None) -> Revocations:
    """The revocation lists of :func:`crl_paths` (none, if the directory does not exist)."""
    grace = timedelta(seconds=settings.crl_grace_s)
    return Revocations.load([p for p in crl_paths(settings, trust) if p.exists()], grace=grace)
