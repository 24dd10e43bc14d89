"""Interoperability with xmlsec1, the reference XML-DSig implementation (libxmlsec1).

Agencies' document systems sign with whatever their platform offers (often
libxmlsec1 or .NET's SignedXml), so a lienthong signature must verify there,
and theirs must verify here. Needs the ``xmlsec1`` command (Debian: xmlsec1).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from exchange.checks.signature import sign, verify
from exchange.pki import Credential, KeyType
from tests.keys import TestPKI
from tests.unit.test_signature import PACKAGE, SUBJECT, subject_of

XMLSEC1 = shutil.which("xmlsec1")

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        XMLSEC1 is None,
        reason="xmlsec1 is not on PATH (install the Debian package xmlsec1 to run interop tests)",
    ),
]

METHODS = {
    KeyType.RSA_2048: "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    KeyType.ECDSA_P256: "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
}

# What an agency's own signer starts from: the package with an empty
# signature template in edXMLHeader, where edXML puts the signature.
TEMPLATE = """<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#">
        <ds:SignedInfo>
          <ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
          <ds:SignatureMethod Algorithm="{method}"/>
          <ds:Reference URI="">
            <ds:Transforms>
              <ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>
              <ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
            </ds:Transforms>
            <ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>
            <ds:DigestValue/>
          </ds:Reference>
        </ds:SignedInfo>
        <ds:SignatureValue/>
        <ds:KeyInfo><ds:X509Data/></ds:KeyInfo>
      </ds:Signature>"""


def xmlsec1(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert XMLSEC1 is not None
    return subprocess.run(
        [XMLSEC1, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def xmlsec1_verifies(pki: TestPKI, package: Path) -> subprocess.CompletedProcess[str]:
    # URI="" needs no --id-attr; "empty" forbids any other reference URI.
    return xmlsec1(
        "--verify",
        "--trusted-pem",
        pki.ca_pem_path,
        "--enabled-reference-uris",
        "empty",
        package,
    )


def template_package(method: str) -> bytes:
    """The test package with its placeholder replaced by an empty ds:Signature template."""
    text = PACKAGE.decode()
    start = text.index("<Signature>")
    end = text.index("</Signature>") + len("</Signature>")
    return (text[:start] + TEMPLATE.format(method=method) + text[end:]).encode()


def write_credential(directory: Path, credential: Credential, stem: str) -> tuple[Path, Path]:
    key, cert = directory / f"{stem}.key.pem", directory / f"{stem}.cert.pem"
    key.write_bytes(credential.key_pem)
    cert.write_bytes(credential.cert_pem)
    return key, cert


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return TestPKI.create(tmp_path / "ca")


@pytest.mark.parametrize("key_type", [KeyType.RSA_2048, KeyType.ECDSA_P256])
def test_package_signed_by_lienthong_verifies_in_xmlsec1(
    pki: TestPKI, tmp_path: Path, key_type: KeyType
) -> None:
    office = pki.agency("000.00.00.G22", key_type=key_type)
    package = tmp_path / "signed.edxml"
    package.write_bytes(sign(PACKAGE, office.key_pem, office.cert_pem))
    result = xmlsec1_verifies(pki, package)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout + result.stderr


def test_xmlsec1_rejects_a_tampered_lienthong_package(pki: TestPKI, tmp_path: Path) -> None:
    office = pki.agency("000.00.00.G22")
    signed = sign(PACKAGE, office.key_pem, office.cert_pem)
    package = tmp_path / "tampered.edxml"
    package.write_bytes(signed.replace(SUBJECT.encode(), b"Something else entirely"))
    result = xmlsec1_verifies(pki, package)
    assert result.returncode != 0
    assert "digest" in result.stderr.lower()


def test_xmlsec1_rejects_a_lienthong_package_from_another_ca(pki: TestPKI, tmp_path: Path) -> None:
    stranger = TestPKI.create(tmp_path / "other").agency("000.00.00.G22")
    package = tmp_path / "stranger.edxml"
    package.write_bytes(sign(PACKAGE, stranger.key_pem, stranger.cert_pem))
    assert xmlsec1_verifies(pki, package).returncode != 0


@pytest.mark.parametrize("key_type", [KeyType.RSA_2048, KeyType.ECDSA_P256])
def test_package_signed_by_xmlsec1_verifies_in_lienthong(
    pki: TestPKI, tmp_path: Path, key_type: KeyType
) -> None:
    hanoi = pki.agency("000.00.00.H26", key_type=key_type)
    key, cert = write_credential(tmp_path, hanoi, "hanoi")
    template = tmp_path / "template.edxml"
    template.write_bytes(template_package(METHODS[key_type]))
    output = tmp_path / "xmlsec1-signed.edxml"
    result = xmlsec1("--sign", "--privkey-pem", f"{key},{cert}", "--output", output, template)
    assert result.returncode == 0, result.stderr

    verified = verify(output.read_bytes(), pki.trust)
    assert str(verified.agency) == "000.00.00.H26"
    assert verified.signature_method == METHODS[key_type]
    assert subject_of(verified.signed_root) == SUBJECT
