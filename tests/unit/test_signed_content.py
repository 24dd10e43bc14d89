"""What verify() says was signed is what signxml says was signed, and reads as the same package.

:func:`exchange.checks.signature.verify` does not parse the canonical bytes
back, as signxml does: it hands over its own copy of the received tree
without the signature (and without the comments, which are not signed).
These tests hold that copy to signxml's answer, on the real samples and on
packages changed after signing: whenever verify() accepts, signxml accepts
too, the copy canonicalises to exactly the bytes signxml verified, and the
package read from the copy equals the package read from signxml's tree.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.exceptions import SignXMLException
from signxml.signer import XMLSigner
from signxml.verifier import SignatureConfiguration, XMLVerifier

from exchange.checks.signature import _put_placeholder, sign, verify
from exchange.edxml.model import DocumentPackage, StatusPackage
from exchange.edxml.names import DSIG_SIGNATURE, ENVELOPE, HEADER, q
from exchange.edxml.reader import read_package
from exchange.edxml.safexml import new_parser
from exchange.pki import Credential, KeyType
from exchange.reasons import Problem, Reason, Rejection
from tests.keys import TestPKI
from tests.unit.test_signature import ATTACHMENT, FORGED_SUBJECT, NS, SUBJECT
from tests.unit.test_signature import PACKAGE as HEADER_ONLY_PACKAGE

Read = DocumentPackage | StatusPackage | tuple[Reason, tuple[Problem, ...]]

# test_signature's package, with what the reader needs besides: a whole document.
PACKAGE = HEADER_ONLY_PACKAGE.replace(
    b"        </edXML:Code>\n",
    """        </edXML:Code>
        <edXML:PromulgationInfo>
          <edXML:Place>Hà Nội</edXML:Place>
          <edXML:PromulgationDate>2018/09/28</edXML:PromulgationDate>
        </edXML:PromulgationInfo>
""".encode(),
    1,
)

EDXML_NS_DECLARATION = b' xmlns:edXML="http://www.mic.gov.vn/TBT/QCVN_102_2016"'


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return TestPKI.create(tmp_path)


@pytest.fixture
def office(pki: TestPKI) -> Credential:
    return pki.agency("000.00.00.G22", key_type=KeyType.RSA_2048)


def read_or_refusal(root: etree._Element) -> Read:
    """The package read from ``root``, or the reader's refusal (reason and problems)."""
    try:
        return read_package(root)
    except Rejection as refused:
        return refused.reason, refused.problems


def signxml_verdict(data: bytes, office: Credential) -> tuple[bytes, etree._Element] | None:
    """signxml's own answer: the signed bytes and their tree, or None if it refuses."""
    config = SignatureConfiguration(
        location=f"./{ENVELOPE}/{HEADER}/",
        expect_references=1,
        signature_methods=frozenset({SignatureMethod.RSA_SHA256}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA256}),
    )
    try:
        result = XMLVerifier().verify(
            data, x509_cert=office.certificate, expect_config=config, parser=new_parser()
        )
    except (SignXMLException, etree.LxmlError, ValueError, TypeError):
        return None
    return result.signed_data, result.signed_xml


def assert_read_alike(data: bytes, pki: TestPKI, office: Credential) -> Read | None:
    """If verify() accepts ``data``, signxml agrees byte for byte and the package reads alike.

    Returns what was read from verify()'s signed content, or None if it refused.
    """
    try:
        verified = verify(data, pki.trust)
    except Rejection:
        return None
    verdict = signxml_verdict(data, office)
    assert verdict is not None, "verify() accepted what signxml refuses"
    signed_data, signed_xml = verdict
    assert etree.tostring(verified.signed_root, method="c14n", exclusive=True) == signed_data
    ours = read_or_refusal(verified.signed_root)
    assert ours == read_or_refusal(signed_xml)
    return ours


@pytest.fixture
def signed(office: Credential) -> bytes:
    return sign(PACKAGE, office.key_pem, office.cert_pem)


@pytest.fixture
def unchanged(signed: bytes, pki: TestPKI, office: Credential) -> DocumentPackage:
    package = assert_read_alike(signed, pki, office)
    assert isinstance(package, DocumentPackage)
    return package


# -- the real samples ----------------------------------------------------------


@pytest.mark.samples
def test_every_real_sample_signed_reads_alike_from_both_signed_contents(
    samples_dir: Path, pki: TestPKI, office: Credential
) -> None:
    samples = sorted(p for p in samples_dir.glob("*.edxml") if p.name != "edoc.edxml")
    assert samples
    for path in samples:
        signed = sign(path.read_bytes(), office.key_pem, office.cert_pem)
        assert assert_read_alike(signed, pki, office) is not None, path.name


# -- changes after signing that the signature does not cover -------------------


def test_comment_added_inside_a_signed_text_changes_nothing_read(
    signed: bytes, pki: TestPKI, office: Credential, unchanged: DocumentPackage
) -> None:
    cut = len(SUBJECT) // 2
    commented = f"{SUBJECT[:cut]}<!-- not signed -->{SUBJECT[cut:]}".encode()
    changed = signed.replace(SUBJECT.encode(), commented, 1)
    assert changed != signed
    assert assert_read_alike(changed, pki, office) == unchanged


def test_comment_added_inside_an_attachment_does_not_cut_it(
    signed: bytes, pki: TestPKI, office: Credential, unchanged: DocumentPackage
) -> None:
    commented = f"{ATTACHMENT[:100]}<!-- the rest is gone -->{ATTACHMENT[100:]}".encode()
    changed = signed.replace(ATTACHMENT.encode(), commented, 1)
    assert changed != signed
    package = assert_read_alike(changed, pki, office)
    assert package == unchanged
    assert isinstance(package, DocumentPackage)
    assert package.attachments[0].encoded == ATTACHMENT


def test_signed_content_carries_no_comment_added_after_signing(signed: bytes, pki: TestPKI) -> None:
    changed = signed.replace(b"<edXML:Subject>", b"<!-- a --><edXML:Subject><!-- b -->", 1)
    root = verify(changed, pki.trust).signed_root
    assert list(root.iter(etree.Comment)) == []


def test_comments_around_the_root_change_nothing_read(
    signed: bytes, pki: TestPKI, office: Credential, unchanged: DocumentPackage
) -> None:
    changed = signed.replace(b"<edXML ", b"<!-- before --><edXML ", 1) + b"<!-- after -->"
    assert assert_read_alike(changed, pki, office) == unchanged


def test_namespace_declaration_moved_to_the_root_changes_nothing_read(
    signed: bytes, pki: TestPKI, office: Credential, unchanged: DocumentPackage
) -> None:
    # Exclusive canonicalization writes a declaration where it is used, so
    # where the sender put it is not signed.
    assert signed.count(EDXML_NS_DECLARATION) == 1
    changed = signed.replace(EDXML_NS_DECLARATION, b"", 1).replace(
        b"<edXML ", b"<edXML" + EDXML_NS_DECLARATION + b" ", 1
    )
    assert assert_read_alike(changed, pki, office) == unchanged


def test_text_rewritten_as_cdata_changes_nothing_read(
    signed: bytes, pki: TestPKI, office: Credential, unchanged: DocumentPackage
) -> None:
    changed = signed.replace(SUBJECT.encode(), f"<![CDATA[{SUBJECT}]]>".encode(), 1)
    assert changed != signed
    assert assert_read_alike(changed, pki, office) == unchanged


# -- changes the signature covers: refused, whichever way it is read -----------


def test_processing_instruction_added_after_signing_is_refused(
    signed: bytes, pki: TestPKI, office: Credential
) -> None:
    # Unlike comments, processing instructions are signed content.
    changed = signed.replace(b"<edXML:Subject>", b"<?note x?><edXML:Subject>", 1)
    assert assert_read_alike(changed, pki, office) is None


def test_forged_package_wrapping_the_signed_original_is_refused(
    signed: bytes, pki: TestPKI, office: Credential
) -> None:
    original = etree.fromstring(signed)
    forged = copy.deepcopy(original)
    forged.find(".//e:MessageHeader/e:Subject", NS).text = FORGED_SUBJECT
    signature = original.find(f".//{DSIG_SIGNATURE}")
    signature.getparent().remove(signature)
    etree.SubElement(forged.find(q("AttachmentEncoded")), q("Wrapper")).append(original)
    data = etree.tostring(forged, encoding="UTF-8")
    assert assert_read_alike(data, pki, office) is None


def test_signed_original_hidden_in_the_signature_object_is_refused(
    signed: bytes, pki: TestPKI, office: Credential
) -> None:
    original = etree.fromstring(signed)
    forged = copy.deepcopy(original)
    forged.find(".//e:MessageHeader/e:Subject", NS).text = FORGED_SUBJECT
    original.find(f"{ENVELOPE}/{HEADER}").remove(original.find(f".//{DSIG_SIGNATURE}"))
    signature = forged.find(f".//{DSIG_SIGNATURE}")
    etree.SubElement(signature, "{http://www.w3.org/2000/09/xmldsig#}Object").append(original)
    data = etree.tostring(forged, encoding="UTF-8")
    assert assert_read_alike(data, pki, office) is None


# -- a signature that signs its comments ----------------------------------------


def test_signed_comments_are_kept_and_read_alike(pki: TestPKI, office: Credential) -> None:
    cut = len(SUBJECT) // 2
    root = etree.fromstring(
        PACKAGE.replace(
            SUBJECT.encode(), f"{SUBJECT[:cut]}<!-- signed -->{SUBJECT[cut:]}".encode(), 1
        ),
        new_parser(),
    )
    _put_placeholder(root)
    signer = XMLSigner(
        signature_algorithm=SignatureMethod.RSA_SHA256,
        digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0_WITH_COMMENTS,
    )
    signed = etree.tostring(
        signer.sign(root, key=office.private_key, cert=[office.certificate]), encoding="UTF-8"
    )
    package = assert_read_alike(signed, pki, office)
    assert isinstance(package, DocumentPackage)
    assert package.subject == SUBJECT
    assert len(list(verify(signed, pki.trust).signed_root.iter(etree.Comment))) == 1
