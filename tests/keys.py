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

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from exchange.agency import AgencyCode
from exchange.pki import Credential, KeyType, TrustStore, create_ca, issue_agency_certificate

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
