"""The key and certificate policy, and revocation: each refusal with its own reason."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from exchange.agency import AgencyCode
from exchange.checks.signature import sign, verify
from exchange.pki import (
    CRL_FILE,
    Credential,
    Revocations,
    SigningRights,
    TrustStore,
    create_ca,
    empty_crl,
    fingerprint,
    revoke,
)
from exchange.reasons import Reason, Rejection
from tests.keys import TestPKI, odd_credential, sha1_signed_credential, weak_rsa_key
from tests.packages import document_package

OFFICE = "000.00.00.G22"


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return TestPKI.create(tmp_path)


def reason_of(trust: TrustStore, credential: Credential) -> Reason:
    with pytest.raises(Rejection) as caught:
        trust.identify(
            credential.certificate,
            [x509.load_pem_x509_certificate(p) for p in credential.chain_pem],
        )
    return caught.value.reason


def test_rsa_below_2048_bits_is_too_weak(pki: TestPKI) -> None:
    weak = odd_credential(pki.ca, OFFICE, key=weak_rsa_key())
    assert reason_of(pki.trust, weak) is Reason.KEY_TOO_WEAK


def test_curve_other_than_the_nist_ones_is_too_weak(pki: TestPKI) -> None:
    koblitz = odd_credential(pki.ca, OFFICE, key=ec.generate_private_key(ec.SECP256K1()))
    assert reason_of(pki.trust, koblitz) is Reason.KEY_TOO_WEAK


def test_p384_and_rsa_2048_are_accepted(pki: TestPKI) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    for key in (ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537, 2048)):
        credential = odd_credential(pki.ca, OFFICE, key=key)
        assert pki.trust.identify(credential.certificate) == AgencyCode.parse(OFFICE)


def test_ca_certificate_signing_a_package_is_refused(pki: TestPKI) -> None:
    assert reason_of(pki.trust, pki.ca) is Reason.CERT_IS_CA
    leaf_ca = odd_credential(pki.ca, OFFICE, is_ca=True, key_cert_sign=True)
    assert reason_of(pki.trust, leaf_ca) is Reason.CERT_IS_CA


def test_intermediate_without_key_cert_sign_is_refused(pki: TestPKI) -> None:
    intermediate = odd_credential(pki.ca, None, is_ca=True, key_cert_sign=False)
    below = odd_credential(intermediate, OFFICE)
    assert reason_of(pki.trust, below) is Reason.CA_CANNOT_SIGN
    proper = create_ca(issuer=pki.ca, common_name="Intermediate")
    assert pki.trust.identify(
        odd_credential(proper, OFFICE).certificate, [proper.certificate]
    ) == AgencyCode.parse(OFFICE)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl tool")
def test_certificate_signed_with_sha1_is_refused(pki: TestPKI, tmp_path: Path) -> None:
    sha1 = sha1_signed_credential(pki.ca, OFFICE, tmp_path / "legacy")
    assert sha1.certificate.signature_hash_algorithm is not None
    assert sha1.certificate.signature_hash_algorithm.name == "sha1"
    assert reason_of(pki.trust, sha1) is Reason.CERT_ALGORITHM


# -- revocation ---------------------------------------------------------------------


def _signed_letter(credential: Credential) -> bytes:
    return sign(document_package().encode(), credential.key_pem, credential.cert_chain_pem)


def test_revoked_certificate_is_refused_and_others_are_not(pki: TestPKI) -> None:
    office = pki.agency(OFFICE)
    other = pki.agency(OFFICE)
    crl = revoke(pki.ca, office.certificate, pki.directory)
    revocations = Revocations.load([crl])
    with pytest.raises(Rejection) as caught:
        verify(_signed_letter(office), pki.trust, revocations=revocations)
    assert caught.value.reason is Reason.CERT_REVOKED
    assert f"{office.certificate.serial_number:x}" in str(caught.value)
    assert verify(
        _signed_letter(other), pki.trust, revocations=revocations
    ).agency == AgencyCode.parse(OFFICE)
    # Without the CRL, the same package passes: the refusal is the CRL's.
    assert verify(_signed_letter(office), pki.trust).agency == AgencyCode.parse(OFFICE)


def test_revoking_again_keeps_the_earlier_revocations(pki: TestPKI) -> None:
    first, second = pki.agency(OFFICE), pki.agency(OFFICE)
    revoke(pki.ca, first.certificate, pki.directory)
    revoke(pki.ca, second.certificate, pki.directory)
    revocations = Revocations.load([pki.directory])
    for credential in (first, second):
        with pytest.raises(Rejection) as caught:
            revocations.check([credential.certificate, pki.ca.certificate])
        assert caught.value.reason is Reason.CERT_REVOKED


def test_crl_past_next_update_and_grace_stops_its_ca(pki: TestPKI) -> None:
    office = pki.agency(OFFICE)
    week_ago = datetime.now(UTC) - timedelta(days=8)
    empty_crl(pki.ca, pki.directory, at=week_ago, valid_for=timedelta(days=7))
    chain = [office.certificate, pki.ca.certificate]
    stale = Revocations.load([pki.directory], grace=timedelta(hours=1))
    with pytest.raises(Rejection) as caught:
        stale.check(chain)
    assert caught.value.reason is Reason.CRL_STALE
    assert [s.issuer for s in stale.stale()] == [pki.ca.certificate.subject.rfc4514_string()]
    # Within the grace, the CRL still counts as current.
    Revocations.load([pki.directory], grace=timedelta(days=2)).check(chain)


def test_crl_not_signed_by_the_issuer_is_ignored(pki: TestPKI, tmp_path: Path) -> None:
    office = pki.agency(OFFICE)
    # Same name as the CA, another key: a forged CRL revoking the office.
    impostor = create_ca(common_name="lienthong test CA")
    forged = odd_credential(impostor, OFFICE)
    forged_dir = tmp_path / "forged"
    forged_dir.mkdir()
    # The forger's CRL lists the office's serial, signed by the impostor's key.
    office_as_if = x509.load_pem_x509_certificate(office.cert_pem)
    assert forged.certificate.issuer == office_as_if.issuer
    revoke_target = office_as_if
    impostor_as_issuer = Credential(impostor.key_pem, impostor.cert_pem)
    path = _revoke_unchecked(impostor_as_issuer, revoke_target, forged_dir)
    Revocations.load([path]).check([office.certificate, pki.ca.certificate])


def _revoke_unchecked(ca: Credential, certificate: x509.Certificate, directory: Path) -> Path:
    now = datetime.now(UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(certificate.issuer)
        .last_update(now - timedelta(minutes=1))
        .next_update(now + timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(certificate.serial_number)
            .revocation_date(now)
            .build()
        )
        .sign(ca.private_key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives import serialization

    path = directory / CRL_FILE
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


# -- registered certificates --------------------------------------------------------


def test_only_a_registered_certificate_may_sign_for_its_agency(pki: TestPKI) -> None:
    registered, stranger = pki.agency(OFFICE), pki.agency(OFFICE)
    code = AgencyCode.parse(OFFICE)
    rights = SigningRights({code: frozenset({fingerprint(registered.certificate)})})
    rights.check(code, registered.certificate)
    with pytest.raises(Rejection) as caught:
        rights.check(code, stranger.certificate)
    assert caught.value.reason is Reason.CERT_NOT_REGISTERED
    with pytest.raises(Rejection) as caught:
        SigningRights().check(code, registered.certificate)
    assert "can receive but not send" in str(caught.value)
