"""Agency keys and certificates, the agency code they carry, and the trust store."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from exchange.pki import (
    Credential,
    KeyType,
    TrustStore,
    agency_code_of,
    create_ca,
    issue_agency_certificate,
)
from exchange.reasons import Reason, Rejection
from tests.keys import TestPKI


def certificate_with_uids(ca: Credential, *uids: str) -> x509.Certificate:
    """A certificate issued by ``ca`` whose subject carries exactly these UID values."""
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, "Văn thư")]
    attributes += [x509.NameAttribute(NameOID.USER_ID, uid) for uid in uids]
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(ca.private_key, hashes.SHA256())
    )


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return TestPKI.create(tmp_path)


# -- what a certificate says ------------------------------------------------


def test_agency_certificate_names_the_agency_in_its_subject(pki: TestPKI) -> None:
    office = pki.agency("000.00.00.G22")
    subject = office.certificate.subject
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.USER_ID)] == ["000.00.00.G22"]
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Văn phòng Chính phủ"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "VN"
    assert office.certificate.issuer == pki.ca.certificate.subject
    assert str(agency_code_of(office.certificate)) == "000.00.00.G22"


@pytest.mark.parametrize(
    ("key_type", "kind", "size"),
    [
        (KeyType.RSA_2048, rsa.RSAPublicKey, 2048),
        (KeyType.RSA_3072, rsa.RSAPublicKey, 3072),
        (KeyType.ECDSA_P256, ec.EllipticCurvePublicKey, 256),
    ],
)
def test_key_type_is_selectable(pki: TestPKI, key_type: KeyType, kind: type, size: int) -> None:
    public = pki.agency("000.00.00.G09", key_type=key_type).certificate.public_key()
    assert isinstance(public, kind)
    assert public.key_size == size


def test_agency_code_is_read_from_a_prefixed_uid(pki: TestPKI) -> None:
    cert = certificate_with_uids(pki.ca, "MDD:000.00.00.H26")
    assert str(agency_code_of(cert)) == "000.00.00.H26"


def test_agency_code_ignores_uid_values_that_are_not_codes(pki: TestPKI) -> None:
    cert = certificate_with_uids(pki.ca, "vanthu01", "000.00.24.H44")
    assert str(agency_code_of(cert)) == "000.00.24.H44"


def test_the_same_code_twice_is_still_one_agency(pki: TestPKI) -> None:
    cert = certificate_with_uids(pki.ca, "000.00.00.G22", "MDD:000.00.00.G22")
    assert str(agency_code_of(cert)) == "000.00.00.G22"


@pytest.mark.parametrize(
    "uids",
    [
        (),
        ("vanthu01",),
        ("28.22.H17",),  # malformed, as in a real sample
        ("000.00.00.G22", "000.00.00.H26"),  # two agencies: which one signed?
    ],
)
def test_no_agency_code_unless_exactly_one_valid_code(pki: TestPKI, uids: tuple[str, ...]) -> None:
    assert agency_code_of(certificate_with_uids(pki.ca, *uids)) is None


# -- files ------------------------------------------------------------------


def test_ca_and_agency_credentials_are_written_as_pem_files(tmp_path: Path) -> None:
    ca = create_ca(tmp_path / "ca")
    key_file = tmp_path / "ca" / "ca.key.pem"
    assert (tmp_path / "ca" / "ca.cert.pem").read_bytes() == ca.cert_pem
    assert key_file.read_bytes() == ca.key_pem
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    issue_agency_certificate(ca, "000.00.00.G22", common_name="VPCP", directory=tmp_path / "ag")
    again = Credential.read(tmp_path / "ag", "000.00.00.G22")
    assert str(agency_code_of(again.certificate)) == "000.00.00.G22"
    assert again.private_key.public_key().public_numbers() == (
        again.certificate.public_key().public_numbers()  # type: ignore[union-attr]
    )


def test_trust_store_loads_a_directory_of_pem_files_once(tmp_path: Path) -> None:
    first = create_ca(tmp_path / "cas", stem="first", common_name="CA one")
    second = create_ca(tmp_path / "cas", stem="second", common_name="CA two")
    store = TrustStore.load(tmp_path / "cas")
    # Keys are .pem files too, and are not certificates: they are skipped.
    assert set(store.anchors) == {first.certificate, second.certificate}
    assert TrustStore.load(tmp_path / "cas") is store
    for ca, code in ((first, "000.00.00.G22"), (second, "000.00.00.H26")):
        leaf = issue_agency_certificate(ca, code, common_name="x").certificate
        assert str(store.identify(leaf)) == code


def test_trust_store_loads_a_single_pem_file(pki: TestPKI) -> None:
    store = TrustStore.load(pki.ca_pem_path)
    assert store.anchors == (pki.ca.certificate,)


def test_trust_store_without_certificates_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(ValueError, match="no CA certificate"):
        TrustStore.load(tmp_path / "empty.pem")


# -- validation -------------------------------------------------------------


def reason_of(store: TrustStore, leaf: Credential, at: datetime | None = None) -> Reason:
    with pytest.raises(Rejection) as caught:
        store.identify(
            leaf.certificate,
            [x509.load_pem_x509_certificate(p) for p in leaf.chain_pem],
            at=at,
        )
    return caught.value.reason


def test_chain_through_an_intermediate_is_trusted(pki: TestPKI) -> None:
    intermediate = create_ca(issuer=pki.ca, common_name="issuing CA")
    leaf = issue_agency_certificate(intermediate, "000.00.00.H49", common_name="Quảng Ninh")
    chain = pki.trust.validate(
        leaf.certificate, [x509.load_pem_x509_certificate(p) for p in leaf.chain_pem]
    )
    assert chain == [leaf.certificate, intermediate.certificate, pki.ca.certificate]


def test_missing_intermediate_means_untrusted(pki: TestPKI) -> None:
    intermediate = create_ca(issuer=pki.ca, common_name="issuing CA")
    leaf = issue_agency_certificate(intermediate, "000.00.00.H49", common_name="Quảng Ninh")
    with pytest.raises(Rejection) as caught:
        pki.trust.validate(leaf.certificate)
    assert caught.value.reason is Reason.CERT_UNTRUSTED


def test_certificate_from_another_ca_is_untrusted(pki: TestPKI, tmp_path: Path) -> None:
    other = TestPKI.create(tmp_path / "other", common_name="lienthong test CA")
    assert reason_of(pki.trust, other.agency()) is Reason.CERT_UNTRUSTED


def test_issuer_that_is_not_a_ca_is_untrusted(pki: TestPKI) -> None:
    # An agency tries to act as a CA for a certificate naming another agency.
    office = pki.agency("000.00.00.G22")
    forged = issue_agency_certificate(office, "000.00.00.H26", common_name="Hà Nội")
    assert reason_of(pki.trust, forged) is Reason.CERT_UNTRUSTED


def test_expired_and_not_yet_valid_certificates_are_expired(pki: TestPKI) -> None:
    assert reason_of(pki.trust, pki.expired_agency()) is Reason.CERT_EXPIRED
    assert reason_of(pki.trust, pki.future_agency()) is Reason.CERT_EXPIRED


def test_validity_is_judged_at_the_given_time(pki: TestPKI) -> None:
    office = pki.agency("000.00.00.G22", valid_for=timedelta(days=30))
    inside = office.certificate.not_valid_before_utc + timedelta(days=10)
    after = office.certificate.not_valid_after_utc + timedelta(seconds=1)
    before = office.certificate.not_valid_before_utc - timedelta(seconds=1)
    store = pki.trust
    assert str(store.identify(office.certificate, at=inside)) == "000.00.00.G22"
    # The same store has now validated (and remembered) this chain: it must
    # still judge other moments afresh.
    assert reason_of(store, office, at=after) is Reason.CERT_EXPIRED
    assert reason_of(store, office, at=before) is Reason.CERT_EXPIRED
    assert str(store.identify(office.certificate, at=inside)) == "000.00.00.G22"


def test_expired_certificate_from_an_untrusted_ca_is_untrusted(
    pki: TestPKI, tmp_path: Path
) -> None:
    other = TestPKI.create(tmp_path / "other")
    assert reason_of(pki.trust, other.expired_agency()) is Reason.CERT_UNTRUSTED


def test_certificate_naming_no_agency_is_refused(pki: TestPKI) -> None:
    nameless = pki.agency(None, common_name="Máy chủ thư")
    pki.trust.validate(nameless.certificate)  # the chain itself is fine
    assert reason_of(pki.trust, nameless) is Reason.CERT_NO_AGENCY


def test_ca_certificate_itself_cannot_sign_packages(pki: TestPKI) -> None:
    with pytest.raises(Rejection) as caught:
        pki.trust.validate(pki.ca.certificate)
    assert caught.value.reason is Reason.CERT_IS_CA
