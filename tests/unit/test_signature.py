"""Signing and verifying edXML packages: what a good signature proves, and every way it fails."""

from __future__ import annotations

import base64
import copy
from pathlib import Path

import pytest
from lxml import etree

from exchange.checks.signature import sign, verify
from exchange.edxml.names import BODY, DSIG_NS, DSIG_SIGNATURE, EDXML_NS, ENVELOPE, HEADER, q
from exchange.pki import KeyType
from exchange.reasons import Reason, Rejection
from tests.keys import TestPKI
from tests.packages import SUBJECT, document_package

ATTACHMENT = base64.b64encode(b"PK\x03\x04 a zipped decision, " * 40).decode()

# The unit tests' sample document, with a larger attachment for the digests to cover.
PACKAGE = document_package(attachment=ATTACHMENT).encode()

FORGED_SUBJECT = "Về việc chuyển toàn bộ ngân sách"

NS = {"e": EDXML_NS, "ds": DSIG_NS}


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return TestPKI.create(tmp_path)


@pytest.fixture
def signed(pki: TestPKI) -> bytes:
    office = pki.agency("000.00.00.G22")
    return sign(PACKAGE, office.key_pem, office.cert_pem)


def rejection(data: bytes | etree._Element, pki: TestPKI, **options: object) -> Rejection:
    with pytest.raises(Rejection) as caught:
        verify(data, pki.trust, **options)  # type: ignore[arg-type]
    return caught.value


def subject_of(root: etree._Element) -> str:
    return root.findtext("e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:Subject", namespaces=NS)


# -- good signatures --------------------------------------------------------


@pytest.mark.parametrize("key_type", [KeyType.RSA_2048, KeyType.ECDSA_P256])
def test_signed_package_verifies_and_names_the_signing_agency(
    pki: TestPKI, key_type: KeyType
) -> None:
    office = pki.agency("000.00.00.G22", key_type=key_type)
    verified = verify(sign(PACKAGE, office.key_pem, office.cert_pem), pki.trust)
    assert str(verified.agency) == "000.00.00.G22"
    assert verified.certificate == office.certificate
    expected_method = "rsa-sha256" if key_type is KeyType.RSA_2048 else "ecdsa-sha256"
    assert verified.signature_method.endswith(expected_method)
    assert subject_of(verified.signed_root) == SUBJECT


def test_signed_root_is_the_package_without_its_signature(signed: bytes, pki: TestPKI) -> None:
    verified = verify(signed, pki.trust)
    assert verified.signed_root.tag == q("edXML")
    assert next(verified.signed_root.iter(DSIG_SIGNATURE), None) is None
    attachment = verified.signed_root.findtext(
        "e:AttachmentEncoded/e:Attachment/e:ContentTransferEncoded", namespaces=NS
    )
    assert attachment == ATTACHMENT


def test_signature_replaces_the_placeholder_inside_the_header_after_trace_headers(
    signed: bytes,
) -> None:
    root = etree.fromstring(signed)
    header = root.find(f"{ENVELOPE}/{HEADER}")
    assert [etree.QName(child).localname for child in header] == [
        "MessageHeader",
        "TraceHeaderList",
        "Signature",
    ]
    assert header[2].tag == DSIG_SIGNATURE
    assert len(list(root.iter(q("Signature")))) == 0
    reference = header[2].find("ds:SignedInfo/ds:Reference", NS)
    assert reference.get("URI") == ""
    transforms = [t.get("Algorithm") for t in reference.iterfind("ds:Transforms/ds:Transform", NS)]
    assert transforms == [
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
        "http://www.w3.org/2001/10/xml-exc-c14n#",
    ]


def test_signing_again_replaces_the_old_signature(pki: TestPKI, signed: bytes) -> None:
    other = pki.agency("000.00.00.H26")
    resigned = sign(signed, other.key_pem, other.cert_pem)
    assert len(list(etree.fromstring(resigned).iter(DSIG_SIGNATURE))) == 1
    assert str(verify(resigned, pki.trust).agency) == "000.00.00.H26"


def test_signing_an_element_leaves_it_unchanged(pki: TestPKI) -> None:
    office = pki.agency()
    root = etree.fromstring(PACKAGE)
    before = etree.tostring(root)
    sign(root, office.key_pem, office.cert_pem)
    assert etree.tostring(root) == before


def test_package_signed_under_an_intermediate_ca_verifies_with_the_chain(
    pki: TestPKI,
) -> None:
    from exchange.pki import create_ca, issue_agency_certificate

    intermediate = create_ca(issuer=pki.ca, common_name="lienthong issuing CA")
    office = issue_agency_certificate(intermediate, "000.00.00.G09", common_name="Bộ Nội vụ")
    signed = sign(PACKAGE, office.key_pem, office.cert_chain_pem)
    assert str(verify(signed, pki.trust).agency) == "000.00.00.G09"
    # Without the intermediate in KeyInfo, no chain reaches the trusted root.
    alone = sign(PACKAGE, office.key_pem, office.cert_pem)
    assert rejection(alone, pki).reason is Reason.CERT_UNTRUSTED


def test_verify_accepts_an_already_parsed_package(signed: bytes, pki: TestPKI) -> None:
    from exchange.edxml import safexml

    assert str(verify(safexml.parse(signed), pki.trust).agency) == "000.00.00.G22"


# -- changed after signing --------------------------------------------------


def test_changed_header_field_fails_the_digest(signed: bytes, pki: TestPKI) -> None:
    tampered = signed.replace(SUBJECT.encode(), FORGED_SUBJECT.encode())
    assert tampered != signed
    caught = rejection(tampered, pki)
    assert caught.reason is Reason.SIGNATURE_INVALID
    assert "changed after it was signed" in caught.explain()


def test_one_changed_base64_character_in_an_attachment_fails_the_digest(
    signed: bytes, pki: TestPKI
) -> None:
    start = signed.index(b"<ContentTransferEncoded>") + len(b"<ContentTransferEncoded>") + 10
    flipped = b"B" if signed[start : start + 1] != b"B" else b"C"
    tampered = signed[:start] + flipped + signed[start + 1 :]
    assert rejection(tampered, pki).reason is Reason.SIGNATURE_INVALID


def test_changed_signature_value_fails(signed: bytes, pki: TestPKI) -> None:
    root = etree.fromstring(signed)
    value = root.find(".//ds:SignatureValue", NS)
    raw = bytearray(base64.b64decode(value.text))
    raw[5] ^= 0x01
    value.text = base64.b64encode(bytes(raw)).decode()
    assert rejection(etree.tostring(root), pki).reason is Reason.SIGNATURE_INVALID


# -- where the signature is and what it covers -------------------------------


def test_signature_moved_into_the_body_is_out_of_scope(signed: bytes, pki: TestPKI) -> None:
    root = etree.fromstring(signed)
    signature = root.find(f".//{DSIG_SIGNATURE}")
    root.find(f"{ENVELOPE}/{BODY}").append(signature)
    caught = rejection(etree.tostring(root), pki)
    assert caught.reason is Reason.SIGNATURE_SCOPE
    assert "edXMLBody" in caught.explain()


def test_second_forged_signature_is_refused(signed: bytes, pki: TestPKI) -> None:
    forger = pki.agency("000.00.00.H49")
    forged_copy = etree.fromstring(sign(PACKAGE, forger.key_pem, forger.cert_pem))
    root = etree.fromstring(signed)
    header = root.find(f"{ENVELOPE}/{HEADER}")
    header.append(forged_copy.find(f".//{DSIG_SIGNATURE}"))
    caught = rejection(etree.tostring(root), pki)
    assert caught.reason is Reason.SIGNATURE_SCOPE
    assert "2 ds:Signature" in caught.explain()


def _assert_forgery_not_accepted(forged: etree._Element, pki: TestPKI) -> None:
    """Either verify refuses, or what it says was signed does not hold the forged text."""
    data = etree.tostring(forged, encoding="UTF-8")
    assert FORGED_SUBJECT.encode() in data  # the forgery is really there to be read
    try:
        verified = verify(data, pki.trust)
    except Rejection as refused:
        assert refused.reason in (Reason.SIGNATURE_INVALID, Reason.SIGNATURE_SCOPE)
        return
    assert FORGED_SUBJECT not in etree.tostring(verified.signed_root, encoding="unicode")


def test_wrapping_the_signed_original_inside_a_forged_package_is_not_accepted(
    signed: bytes, pki: TestPKI
) -> None:
    original = etree.fromstring(signed)
    signature = original.find(f".//{DSIG_SIGNATURE}")
    # Forged content where the reader looks (MessageHeader), the genuine
    # signature where the verifier looks (edXMLHeader), and the signed
    # original tucked away inside the package.
    forged = copy.deepcopy(original)
    forged.find(".//e:MessageHeader/e:Subject", NS).text = FORGED_SUBJECT
    wrapper = etree.SubElement(forged.find(q("AttachmentEncoded")), q("Wrapper"))
    signature.getparent().remove(signature)
    wrapper.append(original)
    _assert_forgery_not_accepted(forged, pki)


def test_wrapping_the_signed_original_inside_the_signature_object_is_not_accepted(
    signed: bytes, pki: TestPKI
) -> None:
    original = etree.fromstring(signed)
    forged = copy.deepcopy(original)
    forged.find(".//e:MessageHeader/e:Subject", NS).text = FORGED_SUBJECT
    # The signed original (without its signature, so there is still one
    # ds:Signature) goes into a ds:Object of the forged package's signature.
    original.find(f"{ENVELOPE}/{HEADER}").remove(original.find(f".//{DSIG_SIGNATURE}"))
    signature = forged.find(f".//{DSIG_SIGNATURE}")
    etree.SubElement(signature, f"{{{DSIG_NS}}}Object").append(original)
    _assert_forgery_not_accepted(forged, pki)


def test_reference_to_part_of_the_package_is_out_of_scope(signed: bytes, pki: TestPKI) -> None:
    tampered = signed.replace(b'<ds:Reference URI="">', b'<ds:Reference URI="#header">')
    assert tampered != signed
    assert rejection(tampered, pki).reason is Reason.SIGNATURE_SCOPE


def test_transform_that_could_narrow_the_signed_content_is_out_of_scope(
    signed: bytes, pki: TestPKI
) -> None:
    narrowing = (
        b'<ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#base64"/></ds:Transforms>'
    )
    tampered = signed.replace(b"</ds:Transforms>", narrowing, 1)
    assert rejection(tampered, pki).reason is Reason.SIGNATURE_SCOPE


# -- algorithms -------------------------------------------------------------


@pytest.mark.parametrize("key_type", [KeyType.RSA_2048, KeyType.ECDSA_P256])
def test_sha1_is_refused_by_default_and_accepted_when_allowed(
    pki: TestPKI, key_type: KeyType
) -> None:
    legacy = pki.agency("000.00.00.H41", key_type=key_type)
    signed = sign(PACKAGE, legacy.key_pem, legacy.cert_pem, digest="sha1")
    caught = rejection(signed, pki)
    assert caught.reason is Reason.SIGNATURE_ALGORITHM
    assert "sha1" in caught.explain()
    verified = verify(signed, pki.trust, allow_sha1=True)
    assert str(verified.agency) == "000.00.00.H41"
    assert verified.signature_method.endswith("sha1")


def test_unknown_signature_algorithm_is_refused(signed: bytes, pki: TestPKI) -> None:
    tampered = signed.replace(
        b"http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256", b"urn:example:homemade"
    )
    assert rejection(tampered, pki).reason is Reason.SIGNATURE_ALGORITHM


# -- certificates -----------------------------------------------------------


def test_package_signed_by_another_agency_returns_that_agency(pki: TestPKI) -> None:
    # From says 000.00.00.G22; Hà Nội signed. verify() reports the signer, so
    # that authorisation can see the two disagree.
    hanoi = pki.agency("000.00.00.H26")
    verified = verify(sign(PACKAGE, hanoi.key_pem, hanoi.cert_pem), pki.trust)
    assert str(verified.agency) == "000.00.00.H26"


def test_expired_certificate_is_refused(pki: TestPKI) -> None:
    stale = pki.expired_agency()
    caught = rejection(sign(PACKAGE, stale.key_pem, stale.cert_pem), pki)
    assert caught.reason is Reason.CERT_EXPIRED
    assert "expired on" in caught.explain()


def test_not_yet_valid_certificate_is_refused(pki: TestPKI) -> None:
    early = pki.future_agency()
    caught = rejection(sign(PACKAGE, early.key_pem, early.cert_pem), pki)
    assert caught.reason is Reason.CERT_EXPIRED
    assert "valid only from" in caught.explain()


def test_certificate_is_checked_at_the_given_time(pki: TestPKI) -> None:
    early = pki.future_agency()
    signed = sign(PACKAGE, early.key_pem, early.cert_pem)
    later = (
        early.certificate.not_valid_before_utc
        + (early.certificate.not_valid_after_utc - early.certificate.not_valid_before_utc) / 2
    )
    assert str(verify(signed, pki.trust, now=later).agency) == "000.00.00.G22"


def test_certificate_from_an_untrusted_ca_is_refused(pki: TestPKI, tmp_path: Path) -> None:
    # Same CA name, different key: only the signature on the certificate tells.
    impostor = TestPKI.create(tmp_path / "impostor", common_name="lienthong test CA")
    forged = impostor.agency("000.00.00.G22")
    caught = rejection(sign(PACKAGE, forged.key_pem, forged.cert_pem), pki)
    assert caught.reason is Reason.CERT_UNTRUSTED


def test_certificate_without_agency_code_is_refused(pki: TestPKI) -> None:
    nameless = pki.agency(None, common_name="Phòng máy chủ")
    caught = rejection(sign(PACKAGE, nameless.key_pem, nameless.cert_pem), pki)
    assert caught.reason is Reason.CERT_NO_AGENCY


# -- no real signature ------------------------------------------------------


def test_package_with_only_the_edxml_placeholder_is_unsigned(pki: TestPKI) -> None:
    caught = rejection(PACKAGE, pki)
    assert caught.reason is Reason.SIGNATURE_MISSING
    assert "placeholder signature, not a real one" in caught.explain()


def test_package_without_any_signature_is_unsigned(pki: TestPKI) -> None:
    root = etree.fromstring(PACKAGE)
    header = root.find(f"{ENVELOPE}/{HEADER}")
    header.remove(header.find(q("Signature")))
    caught = rejection(etree.tostring(root), pki)
    assert caught.reason is Reason.SIGNATURE_MISSING
    assert "placeholder" not in caught.explain()


def test_dsig_signature_with_truncated_certificate_is_a_placeholder(
    signed: bytes, pki: TestPKI
) -> None:
    root = etree.fromstring(signed)
    root.find(".//ds:X509Certificate", NS).text = "MIIFqTCCBJG"
    caught = rejection(etree.tostring(root), pki)
    assert caught.reason is Reason.SIGNATURE_MISSING
    assert "placeholder signature, not a real one" in caught.explain()


def test_dsig_signature_without_certificate_is_unsigned(signed: bytes, pki: TestPKI) -> None:
    root = etree.fromstring(signed)
    key_info = root.find(".//ds:KeyInfo", NS)
    key_info.getparent().remove(key_info)
    assert rejection(etree.tostring(root), pki).reason is Reason.SIGNATURE_MISSING


def test_hostile_bytes_are_refused_by_the_hardened_parser(pki: TestPKI) -> None:
    hostile = PACKAGE.replace(
        b"<edXML xmlns",
        b'<!DOCTYPE edXML [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n<edXML xmlns',
        1,
    )
    assert rejection(hostile, pki).reason is Reason.FORBIDDEN_DTD


def _real_samples(samples_dir: Path) -> list[Path]:
    return sorted(p for p in samples_dir.glob("*.edxml") if p.name != "edoc.edxml")


@pytest.mark.samples
def test_real_samples_are_reported_unsigned(samples_dir: Path, pki: TestPKI) -> None:
    samples = _real_samples(samples_dir)
    assert samples
    for path in samples:
        data = path.read_bytes()
        caught = rejection(data, pki)
        assert caught.reason is Reason.SIGNATURE_MISSING, path.name
        if b"<Signature" in data:
            assert "placeholder signature, not a real one" in caught.explain(), path.name


@pytest.mark.samples
def test_real_sample_signed_by_lienthong_verifies(samples_dir: Path, pki: TestPKI) -> None:
    office = pki.agency("000.00.00.G22", key_type=KeyType.RSA_2048)
    for name in ("edoc_update.edxml", "status_finish_06.edxml"):
        signed = sign((samples_dir / name).read_bytes(), office.key_pem, office.cert_pem)
        root = etree.fromstring(signed)
        assert next(root.iter(q("Signature")), None) is None  # the placeholder is gone
        assert len(list(root.iter(DSIG_SIGNATURE))) == 1
        assert str(verify(signed, pki.trust).agency) == "000.00.00.G22"
