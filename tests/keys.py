"""Test helpers: a development CA and agency keys in a temporary directory.

Usage in a test::

    from tests.keys import TestPKI

    def test_something(tmp_path):
        pki = TestPKI.create(tmp_path)
        office = pki.agency("000.00.00.G22")
        signed = sign(package, office.key_pem, office.cert_pem)
        verify(signed, pki.trust)

Key generation costs milliseconds (ECDSA) to a second (RSA-3072), so
helpers cache nothing across tests: each test gets its own CA, and a test
that wants RSA asks for it.
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from exchange.agency import AgencyCode
from exchange.pki import (
    Credential,
    KeyType,
    PrivateKey,
    TrustStore,
    create_ca,
    issue_agency_certificate,
)

# The test CA starts well in the past, so that certificates made to be
# already expired still fall inside its own validity: their only fault is
# then their own dates.
CA_BACKDATE = timedelta(days=10 * 365)
CA_VALIDITY = timedelta(days=30 * 365)

# Readable names for the agencies tests use most.
AGENCY_NAMES = {
    "000.00.00.G22": "Văn phòng Chính phủ",
    "000.00.00.G09": "Bộ Nội vụ",
    "000.00.00.H26": "UBND Thành phố Hà Nội",
    "000.00.00.H41": "UBND Tỉnh Nghệ An",
    "000.00.00.H49": "UBND Tỉnh Quảng Ninh",
}


@dataclass
class TestPKI:
    """A CA in ``directory`` (``ca.cert.pem``, ``ca.key.pem``) that issues agency credentials."""

    __test__ = False  # not a test class, despite the name

    directory: Path
    ca: Credential
    issued: dict[str, Credential] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        key_type: KeyType = KeyType.ECDSA_P256,
        common_name: str = "lienthong test CA",
    ) -> TestPKI:
        """A fresh CA written into ``directory``."""
        ca = create_ca(
            directory,
            common_name=common_name,
            key_type=key_type,
            not_before=datetime.now(UTC) - CA_BACKDATE,
            valid_for=CA_VALIDITY,
        )
        return cls(directory, ca)

    @property
    def ca_pem_path(self) -> Path:
        """The CA certificate file (what ``--trusted-pem`` or ``LIENTHONG_TRUST`` takes)."""
        return self.directory / "ca.cert.pem"

    @property
    def trust(self) -> TrustStore:
        """A trust store holding only this CA."""
        return TrustStore.from_pem(self.ca.cert_pem)

    def agency(
        self,
        code: str | None = "000.00.00.G22",
        *,
        key_type: KeyType = KeyType.ECDSA_P256,
        not_before: datetime | None = None,
        valid_for: timedelta = timedelta(days=365),
        common_name: str | None = None,
    ) -> Credential:
        """Issue a credential for agency ``code`` (``None``: a certificate naming no agency).

        The key and certificate are also written to ``<directory>/<code>.key.pem``
        and ``.cert.pem``.
        """
        name = common_name or AGENCY_NAMES.get(code or "", f"Cơ quan {code}")
        stem = f"{code or 'no-agency'}-{len(self.issued)}"
        credential = issue_agency_certificate(
            self.ca,
            AgencyCode.parse(code) if code else None,
            common_name=name,
            organization=name,
            key_type=key_type,
            not_before=not_before,
            valid_for=valid_for,
            directory=self.directory,
            stem=stem,
        )
        self.issued[stem] = credential
        return credential

    def expired_agency(self, code: str = "000.00.00.G22") -> Credential:
        """A credential whose certificate expired a month ago."""
        now = datetime.now(UTC)
        return self.agency(
            code, not_before=now - timedelta(days=400), valid_for=timedelta(days=370)
        )

    def future_agency(self, code: str = "000.00.00.G22") -> Credential:
        """A credential whose certificate becomes valid only tomorrow."""
        return self.agency(code, not_before=datetime.now(UTC) + timedelta(days=1))


def odd_credential(
    issuer: Credential,
    code: str | None,
    *,
    key: PrivateKey | None = None,
    digest: hashes.HashAlgorithm | None = None,
    is_ca: bool = False,
    key_cert_sign: bool = False,
    common_name: str = "Văn thư",
) -> Credential:
    """A credential issued by ``issuer`` that breaks the key and certificate policy one way.

    ``key`` (an RSA-1024 key, a secp256k1 key), ``digest`` (SHA-1 for the
    issuer's signature), ``is_ca`` (basicConstraints CA, with
    ``key_cert_sign`` saying whether its KeyUsage allows issuing). The
    certificate carries ``issuer``'s intermediates after it, as
    :func:`issue_agency_certificate` does.
    """
    key = key or ec.generate_private_key(ec.SECP256R1())
    attributes = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, common_name),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ]
    if code is not None:
        attributes.append(x509.NameAttribute(NameOID.USER_ID, code))
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(issuer.private_key, digest or hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    chain = (
        ()
        if issuer.certificate.issuer == issuer.certificate.subject
        else (
            issuer.cert_pem,
            *issuer.chain_pem,
        )
    )
    return Credential(key_pem, certificate.public_bytes(serialization.Encoding.PEM), chain)


def weak_rsa_key() -> rsa.RSAPrivateKey:
    """An RSA-1024 key: the smallest cryptography makes, below the policy's 2048."""
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def sha1_signed_credential(ca: Credential, code: str, directory: Path) -> Credential:
    """An agency credential whose certificate ``ca`` signed with SHA-1, made by the openssl tool.

    cryptography refuses to sign with SHA-1, as it should; real legacy CAs
    did. Needs ``openssl`` on the PATH (callers skip without it).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = ca.write(directory, "sha1-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (directory / "leaf.key.pem").write_bytes(key_pem)
    (directory / "ext.cnf").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,nonRepudiation\n"
    )
    run = functools.partial(subprocess.run, check=True, capture_output=True, cwd=directory)
    run(["openssl", "req", "-new", "-key", "leaf.key.pem", "-subj", f"/C=VN/CN=Legacy/UID={code}",
         "-out", "leaf.csr"])  # fmt: skip
    run(["openssl", "x509", "-req", "-in", "leaf.csr", "-CA", ca_cert.name, "-CAkey",
         ca_key.name, "-sha1", "-days", "30", "-set_serial", "4242", "-extfile", "ext.cnf",
         "-out", "leaf.cert.pem"])  # fmt: skip
    return Credential(key_pem, (directory / "leaf.cert.pem").read_bytes())
