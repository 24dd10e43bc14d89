"""Hostile packages, each with the reason the exchange must give for refusing it.

The corpus is data: :data:`CASES` is a list of :class:`Case` (a name, a
function that builds the bytes, the expected :class:`~exchange.reasons.Reason`,
who publishes it and with which routing key). Adding a case is one line.
Builders get a :class:`World`: the registered agencies' real credentials,
the exchange's CA (to issue expired, future or nameless certificates), and
the documents the setup phase delivered (so that statuses and duplicates
have something to refer to).

Every case is built to fail one check only, where that is possible: a
package with a bad date is otherwise well formed and properly signed by its
real sender, so the rejection proves the date check and nothing else.

The run itself (publishing, waiting, reconciling) lives in
``tests/integration/test_hostile_corpus.py``; :data:`SETUP_DOCUMENTS`,
:data:`SETUP_STATUSES` and :func:`valid_traffic` say what it sends besides
the cases.
"""

from __future__ import annotations

import base64
import codecs
import copy
import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lxml import etree

from exchange.agency import AgencyCode
from exchange.checks.authorise import document_id_of
from exchange.checks.signature import Digest, sign
from exchange.edxml.model import (
    VIETNAM_TIME,
    Attachment,
    Code,
    DocumentPackage,
    DocumentType,
    Organization,
    OtherInfo,
    ResponseFor,
    SignerInfo,
    StatusPackage,
)
from exchange.edxml.names import (
    ATTACHMENT_ENCODED,
    BODY,
    DSIG_NS,
    DSIG_SIGNATURE,
    EDXML_NS,
    ENVELOPE,
    HEADER,
    ROOT,
    q,
)
from exchange.edxml.safexml import new_parser
from exchange.edxml.writer import new_document, new_status, write_package
from exchange.pki import Credential, create_ca, empty_crl, issue_agency_certificate, revoke
from exchange.reasons import Reason
from exchange.status import Priority, StatusCode, SteeringType
from tests.keys import odd_credential, sha1_signed_credential, weak_rsa_key

# -- the cast -----------------------------------------------------------------

GOVERNMENT_OFFICE = "000.00.00.G22"  # Văn phòng Chính phủ: the usual hostile sender
MINISTRY = "000.00.00.G09"  # Bộ Nội vụ: the usual recipient
HANOI = "000.00.00.H26"  # UBND Thành phố Hà Nội: the forger, and valid traffic
DEPARTMENT = "000.00.01.H26"  # Sở Nội vụ Hà Nội: valid traffic only
UNREGISTERED = "000.00.00.G17"  # a well-formed code nobody registered
# A publisher that is a broker user with an agency's permissions but no
# entry in the directory (a leftover account, stolen credentials).
ROGUE = "rogue"

AGENCIES: dict[str, str] = {
    GOVERNMENT_OFFICE: "Văn phòng Chính phủ",
    MINISTRY: "Bộ Nội vụ",
    HANOI: "UBND Thành phố Hà Nội",
    DEPARTMENT: "Sở Nội vụ Hà Nội",
}

# The worker of the run refuses packages above this size, so that the
# oversized case needs a package of kilobytes, not of 64 MB. Every other
# case and every valid document stays far below it.
MAX_PACKAGE_BYTES = 64 * 1024
OVERSIZED_ATTACHMENT_BYTES = 96 * 1024
# Nesting beyond the parser's own depth limit (40), and beyond libxml2's.
DEEP_NESTING = 60
VERY_DEEP_NESTING = 5000
# Statuses of the hostile phase carry a Timestamp this much after the setup
# statuses, so that they are judged as coming after them.
LATER = timedelta(minutes=1)

_DS = {"ds": DSIG_NS}


def _vietnam_now() -> datetime:
    return datetime.now(VIETNAM_TIME).replace(tzinfo=None, microsecond=0)


# -- what builders work with --------------------------------------------------------


@dataclass
class World:
    """The agencies' credentials, the CA, and the documents delivered before the cases.

    ``credentials`` maps each registered agency's code to its signing
    credential; ``ca`` is the CA the exchange trusts (it issues the
    certificates that are wrong only by their dates or their subject).
    """

    ca: Credential
    credentials: dict[str, Credential]
    now: datetime = field(default_factory=_vietnam_now)
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1001))
    _setup: dict[str, DocumentPackage] = field(default_factory=dict)
    _issued: dict[str, Credential] = field(default_factory=dict)

    def organization(self, code: str) -> Organization:
        """How the agency ``code`` names itself in packages."""
        return Organization(organ_id=AgencyCode.parse(code), organ_name=AGENCIES.get(code, code))

    def letter(
        self,
        sender: str = GOVERNMENT_OFFICE,
        to: Sequence[str] = (MINISTRY,),
        *,
        subject: str = "Về việc triển khai liên thông văn bản điện tử",
        number: int | None = None,
        attachments: Sequence[Attachment] = (),
        **header: Any,
    ) -> DocumentPackage:
        """An official letter, numbered anew each time so that no two cases share bytes."""
        today = self.now.date()
        return new_document(
            sender=self.organization(sender),
            recipients=[self.organization(code) for code in to],
            code=Code(code_number=str(number or next(self._numbers)), code_notation="VPCP-TH"),
            subject=subject,
            promulgation_date=today,
            place="Hà Nội",
            document_type=DocumentType(type="1", type_detail="0", type_name="Công văn"),
            signer=SignerInfo(competence="TM.", position="Chánh Văn phòng", full_name="Trần Văn B"),
            due_date=today + timedelta(days=10),
            attachments=attachments,
            sent_at=self.now,
            **header,
        )

    def status(
        self,
        reporter: str,
        document: DocumentPackage,
        code: StatusCode,
        *,
        addressee: str | None = None,
        at: datetime | None = None,
    ) -> StatusPackage:
        """A status ``reporter`` sends about ``document``.

        ResponseFor names the agency the status goes to: the document's
        sender, or for a recall request (13) the recipient ``addressee``.
        """
        if addressee is None:
            addressee = str(document.sender.organ_id)
        return new_status(
            sender=self.organization(reporter),
            response_for=ResponseFor(
                organ_id=AgencyCode.parse(addressee),
                code=f"{document.code.code_number}/{document.code.code_notation}",
                promulgation_date=document.promulgation.promulgation_date,
                document_id=document_id_of(document),
            ),
            status_code=code,
            description=f"Trạng thái {code.value}",
            at=at or self.now + LATER,
        )

    def sign(
        self,
        package: DocumentPackage | StatusPackage | bytes,
        signer: str | Credential = GOVERNMENT_OFFICE,
        *,
        digest: Digest = "sha256",
    ) -> bytes:
        """The package signed by an agency (by code) or with any credential."""
        data = package if isinstance(package, bytes) else write_package(package)
        credential = self.credentials[signer] if isinstance(signer, str) else signer
        return sign(data, credential.key_pem, credential.cert_chain_pem, digest=digest)

    def issued(self, kind: str) -> Credential:
        """A certificate for the Government Office that is wrong in one way.

        ``expired`` (ended a month ago), ``future`` (valid from tomorrow),
        ``nameless`` (no agency code in its subject), all from the trusted
        CA; ``untrusted``: from another CA with the same name. Against the
        key and certificate policy: ``rsa1024``, ``secp256k1``, ``ca``
        (the trusted CA itself), ``under_no_keycertsign`` (under an
        intermediate CA whose KeyUsage lacks keyCertSign), ``sha1_signed``
        (the CA signed it with SHA-1). ``unregistered``: good, but not the
        one registered for the office. ``revoked`` and ``stale_crl``: good,
        until :meth:`write_revocation_lists` revokes the first and leaves
        the second's intermediate CA with an out-of-date CRL.
        """
        credential = self._issued.get(kind)
        if credential is not None:
            return credential
        moment = datetime.now(UTC)
        name = AGENCIES[GOVERNMENT_OFFICE]
        if kind == "expired":
            credential = issue_agency_certificate(
                self.ca,
                GOVERNMENT_OFFICE,
                common_name=name,
                not_before=moment - timedelta(days=400),
                valid_for=timedelta(days=370),
            )
        elif kind == "future":
            credential = issue_agency_certificate(
                self.ca, GOVERNMENT_OFFICE, common_name=name, not_before=moment + timedelta(days=1)
            )
        elif kind == "nameless":
            credential = issue_agency_certificate(self.ca, None, common_name="Phòng máy chủ")
        elif kind in ("unregistered", "revoked"):
            credential = issue_agency_certificate(self.ca, GOVERNMENT_OFFICE, common_name=name)
        elif kind == "rsa1024":
            credential = odd_credential(self.ca, GOVERNMENT_OFFICE, key=weak_rsa_key())
        elif kind == "secp256k1":
            key = ec.generate_private_key(ec.SECP256K1())
            credential = odd_credential(self.ca, GOVERNMENT_OFFICE, key=key)
        elif kind == "ca":
            credential = self.ca
        elif kind == "under_no_keycertsign":
            lax = odd_credential(self.ca, None, is_ca=True, key_cert_sign=False, common_name="Lax")
            credential = odd_credential(lax, GOVERNMENT_OFFICE)
        elif kind == "sha1_signed":
            credential = sha1_signed_credential(self.ca, GOVERNMENT_OFFICE, self._scratch())
        elif kind == "stale_crl":
            intermediate = self._stale_intermediate()
            credential = issue_agency_certificate(intermediate, GOVERNMENT_OFFICE, common_name=name)
        elif kind == "untrusted":
            ca_name = self.ca.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            impostor = create_ca(common_name=str(ca_name[0].value))
            credential = issue_agency_certificate(impostor, GOVERNMENT_OFFICE, common_name=name)
        else:
            raise ValueError(f"no such certificate kind: {kind}")
        self._issued[kind] = credential
        return credential

    def _scratch(self) -> Path:
        import tempfile

        return Path(tempfile.mkdtemp(prefix="hostile-sha1-"))

    def _stale_intermediate(self) -> Credential:
        intermediate = self._issued.get("stale_intermediate")
        if intermediate is None:
            intermediate = create_ca(issuer=self.ca, common_name="Stale intermediate CA")
            self._issued["stale_intermediate"] = intermediate
        return intermediate

    def write_revocation_lists(self, directory: Path) -> None:
        """The CRLs the workers load: the CA's revoking ``revoked``, and an out-of-date one.

        The second is the intermediate CA's of ``stale_crl``, past its
        nextUpdate by far more than any grace.
        """
        revoke(self.ca, self.issued("revoked").certificate, directory)
        scratch = self._scratch()
        long_ago = datetime.now(UTC) - timedelta(days=30)
        stale = empty_crl(
            self._stale_intermediate(), scratch, at=long_ago, valid_for=timedelta(days=7)
        )
        (directory / "stale-intermediate.crl.pem").write_bytes(stale.read_bytes())

    def setup_document(self, name: str) -> DocumentPackage:
        """One of :data:`SETUP_DOCUMENTS`, the same package every time it is asked for."""
        document = self._setup.get(name)
        if document is None:
            sender, recipients, subject = SETUP_DOCUMENTS[name]
            document = self._setup[name] = self.letter(sender, recipients, subject=subject)
        return document


Builder = Callable[[World], bytes]
Change = Callable[[etree._Element], None]


@dataclass(frozen=True)
class Case:
    """One hostile message and what the exchange must do with it.

    ``publisher`` is the agency whose broker user publishes it (or
    :data:`ROGUE`); ``mentions`` is text the rejection's problems must
    contain (the field a clerk has to fix). ``finding`` marks a case the
    exchange does not refuse as expected today, saying why: the run still
    sends it, and its test is an expected failure until the gap is closed.
    """

    name: str
    build: Builder
    expected: Reason
    publisher: str = GOVERNMENT_OFFICE
    routing_key: str = MINISTRY
    mentions: str = ""
    finding: str = ""


@dataclass(frozen=True)
class Publication:
    """One message to publish: as whom, to which routing key, which bytes."""

    publisher: str
    routing_key: str
    body: bytes
    label: str


# -- XML surgery -------------------------------------------------------------------


def _parse(data: bytes) -> etree._Element:
    return etree.fromstring(data, new_parser())


def _serialize(root: etree._Element) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _at(root: etree._Element, path: str) -> etree._Element:
    """The element at ``path`` (local names under edXMLHeader, ``/``-separated)."""
    steps = "/".join(q(step) for step in path.split("/"))
    found = root.find(f"{ENVELOPE}/{HEADER}/{steps}")
    if found is None:
        raise LookupError(f"the package has no {path}")
    return found


def _edited(data: bytes, change: Change) -> bytes:
    root = _parse(data)
    change(root)
    return _serialize(root)


def _signature(root: etree._Element) -> etree._Element:
    found = root.find(f".//{DSIG_SIGNATURE}")
    assert found is not None, "the package is not signed"
    return found


def remove(path: str) -> Change:
    """Take out the element at ``path`` under edXMLHeader."""

    def change(root: etree._Element) -> None:
        element = _at(root, path)
        parent = element.getparent()
        assert parent is not None
        parent.remove(element)

    return change


def set_text(path: str, value: str) -> Change:
    """Write ``value`` into the element at ``path`` under edXMLHeader."""

    def change(root: etree._Element) -> None:
        _at(root, path).text = value

    return change


# -- builders ------------------------------------------------------------------------


def letter_with(change: Change, **letter: Any) -> Builder:
    """A letter changed by ``change`` and then signed by its sender: only the change is wrong."""

    def build(world: World) -> bytes:
        return world.sign(_edited(write_package(world.letter(**letter)), change))

    return build


def status_with(change: Change, setup: str = "delivered", reporter: str = MINISTRY) -> Builder:
    """A status of ``reporter`` on a setup document, changed, then signed by the reporter."""

    def build(world: World) -> bytes:
        status = world.status(reporter, world.setup_document(setup), StatusCode.ACCEPTED)
        return world.sign(_edited(write_package(status), change), reporter)

    return build


def tampered(change: Change, **letter: Any) -> Builder:
    """A letter signed by its sender, then changed: the signature no longer matches."""

    def build(world: World) -> bytes:
        return _edited(world.sign(world.letter(**letter)), change)

    return build


def signed_by(signer: str | Callable[[World], Credential], **letter: Any) -> Builder:
    """A letter (From is the Government Office unless said) signed by someone else."""

    def build(world: World) -> bytes:
        credential = signer if isinstance(signer, str) else signer(world)
        return world.sign(world.letter(**letter), credential)

    return build


def certificate(kind: str) -> Builder:
    """A letter of the Government Office signed with a certificate wrong in one way."""
    return signed_by(lambda world: world.issued(kind))


def bytes_of(transform: Callable[[bytes], bytes]) -> Builder:
    """The bytes of a signed letter, transformed (re-encoded, truncated, prefixed)."""

    def build(world: World) -> bytes:
        signed = world.sign(world.letter())
        changed = transform(signed)
        # A transform that silently matched nothing would send a valid package.
        assert changed != signed, f"{transform.__name__} changed nothing"
        return changed

    return build


def with_doctype(doctype: bytes, subject_entity: bytes = b"") -> Builder:
    """A signed letter with a DOCTYPE before its root and an entity reference in Subject."""

    def transform(data: bytes) -> bytes:
        data = data.replace(b"<edXML xmlns", doctype + b"\n<edXML xmlns", 1)
        if subject_entity:
            data = data.replace(b"</edXML:Subject>", subject_entity + b"</edXML:Subject>", 1)
        return data

    return bytes_of(transform)


def raw(data: bytes) -> Builder:
    """Fixed bytes (each such case must be the only one with these bytes)."""
    return lambda world: data


def status(
    reporter: str,
    setup: str,
    code: StatusCode,
    *,
    addressee: str | None = None,
) -> Builder:
    """A signed status ``reporter`` sends about the setup document ``setup``."""

    def build(world: World) -> bytes:
        document = world.setup_document(setup)
        return world.sign(world.status(reporter, document, code, addressee=addressee), reporter)

    return build


def status_dated(days_from_now: int) -> Builder:
    """A signed status of the ministry on the delivered document, dated that many days away."""

    def build(world: World) -> bytes:
        document = world.setup_document("delivered")
        at = world.now + timedelta(days=days_from_now)
        return world.sign(world.status(MINISTRY, document, StatusCode.ACCEPTED, at=at), MINISTRY)

    return build


def status_for_unknown_document(world: World) -> bytes:
    """A status of the ministry about a document the Government Office never sent."""
    never_sent = world.letter(subject="Văn bản chưa từng gửi")
    return world.sign(world.status(MINISTRY, never_sent, StatusCode.ARRIVED), MINISTRY)


def duplicate_document_id(world: World) -> bytes:
    """A letter with the DocumentId of the delivered setup document, and another subject."""
    original = world.setup_document("delivered")
    other = world.letter(
        subject="Nội dung khác dưới cùng số văn bản",
        number=int(original.code.code_number),
    )
    assert document_id_of(other) == document_id_of(original)
    return world.sign(other)


def genuine_letter(world: World) -> bytes:
    """A letter of the Government Office, signed by it (its publisher decides the case)."""
    return world.sign(world.letter(subject="Văn bản thật, gửi bởi người khác"))


def oversized(world: World) -> bytes:
    """A genuine signed letter whose attachment makes it larger than the worker accepts."""
    big = Attachment.from_bytes(b"PK\x03\x04" * (OVERSIZED_ATTACHMENT_BYTES // 4), "ho-so.zip")
    data = world.sign(world.letter(attachments=[big]))
    assert len(data) > MAX_PACKAGE_BYTES
    return data


def nested(depth: int) -> Builder:
    """A signed letter with ``depth`` nested elements appended under AttachmentEncoded."""

    def transform(data: bytes) -> bytes:
        inner = b"<x>" * depth + b"</x>" * depth
        return data.replace(
            b"</edXML>", b"<AttachmentEncoded>" + inner + b"</AttachmentEncoded>\n</edXML>"
        )

    return bytes_of(transform)


def invalid_base64_attachment(world: World) -> bytes:
    """A signed letter whose attachment's ContentTransferEncoded is not base64."""
    attachment = Attachment(
        content_id="cid:hong",
        attachment_name="quyet-dinh.zip",
        content_type="application/zip",
        encoded="**** đây không phải base64 ****",
    )
    return world.sign(world.letter(attachments=[attachment]))


def attachment_letter(world: World) -> bytes:
    """A signed letter with one small attachment (for tampering with it)."""
    files = [Attachment.from_bytes(b"PK\x03\x04 quyet dinh " * 40, "quyet-dinh.zip")]
    return world.sign(world.letter(attachments=files))


def flip_attachment_character(data: bytes) -> bytes:
    """One base64 character of the first attachment changed."""
    start = data.index(b"<ContentTransferEncoded>") + len(b"<ContentTransferEncoded>") + 10
    flipped = b"B" if data[start : start + 1] != b"B" else b"C"
    return data[:start] + flipped + data[start + 1 :]


# -- signature surgery ----------------------------------------------------------------


def move_signature(where: Callable[[etree._Element], etree._Element]) -> Change:
    """Move the ds:Signature under the element ``where`` picks."""

    def change(root: etree._Element) -> None:
        where(root).append(_signature(root))

    return change


def second_signature(world: World) -> bytes:
    """The genuine signature, plus a forger's signature of the same package."""
    package = write_package(world.letter())
    genuine = _parse(world.sign(package))
    forged = _parse(world.sign(package, HANOI))
    _signature(genuine).getparent().append(_signature(forged))  # type: ignore[union-attr]
    return _serialize(genuine)


def edit_signed_info(change: Callable[[etree._Element], None]) -> Change:
    """Change the SignedInfo of a signed letter (the signature value then lies)."""

    def apply(root: etree._Element) -> None:
        signed_info = _signature(root).find("ds:SignedInfo", _DS)
        assert signed_info is not None
        change(signed_info)

    return apply


def _reference(signed_info: etree._Element) -> etree._Element:
    reference = signed_info.find("ds:Reference", _DS)
    assert reference is not None
    return reference


def reference_uri(uri: str) -> Change:
    """Point the Reference somewhere other than the whole package."""
    return edit_signed_info(lambda signed_info: _reference(signed_info).set("URI", uri))


def extra_reference(signed_info: etree._Element) -> None:
    """A second Reference next to the genuine one."""
    reference = _reference(signed_info)
    extra = copy.deepcopy(reference)
    extra.set("URI", "#xpointer(id('ResponseFor'))")
    reference.addnext(extra)


def xpath_transform(signed_info: etree._Element) -> None:
    """An XPath filter that would let the digest cover only part of the package."""
    transforms = _reference(signed_info).find("ds:Transforms", _DS)
    assert transforms is not None
    transform = etree.SubElement(transforms, f"{{{DSIG_NS}}}Transform")
    transform.set("Algorithm", "http://www.w3.org/TR/1999/REC-xpath-19991116")
    etree.SubElement(transform, f"{{{DSIG_NS}}}XPath").text = "self::edXML:Subject"


def without_enveloped_transform(signed_info: etree._Element) -> None:
    """Drop the enveloped-signature transform (the digest would then cover the signature)."""
    transforms = _reference(signed_info).find("ds:Transforms", _DS)
    assert transforms is not None
    transforms.remove(transforms[0])


def sha1_letter(world: World) -> bytes:
    """A letter signed RSA/ECDSA-SHA1 by its real sender (legacy software)."""
    return world.sign(world.letter(), digest="sha1")


def unknown_algorithm(data: bytes) -> bytes:
    """The signature method renamed to one nobody defines."""
    return data.replace(
        b'SignatureMethod Algorithm="', b'SignatureMethod Algorithm="urn:homemade#', 1
    )


def wrapped_in_object(world: World) -> bytes:
    """Forged Subject outside; the signed original hidden in a ds:Object of the signature.

    The classic XML signature wrapping: a verifier that looks the signed
    content up by reference could find the original and vouch for the
    forgery around it.
    """
    original = _parse(world.sign(world.letter()))
    forged = copy.deepcopy(original)
    _at(forged, "MessageHeader/Subject").text = "Về việc chuyển toàn bộ ngân sách"
    original.find(f"{ENVELOPE}/{HEADER}").remove(_signature(original))  # type: ignore[union-attr]
    etree.SubElement(_signature(forged), f"{{{DSIG_NS}}}Object").append(original)
    return _serialize(forged)


def wrapped_in_attachments(world: World) -> bytes:
    """Forged Subject with the genuine signature; the signed original under AttachmentEncoded."""
    original = _parse(world.sign(world.letter()))
    forged = copy.deepcopy(original)
    _at(forged, "MessageHeader/Subject").text = "Về việc chuyển toàn bộ ngân sách"
    holder = forged.find(ATTACHMENT_ENCODED)
    if holder is None:
        holder = etree.SubElement(forged, ATTACHMENT_ENCODED)
    etree.SubElement(holder, q("Wrapper")).append(original)
    return _serialize(forged)


def wrapped_in_soap(world: World) -> bytes:
    """The genuine signed package inside a SOAP envelope."""
    soap = "http://schemas.xmlsoap.org/soap/envelope/"
    envelope = etree.Element(f"{{{soap}}}Envelope", nsmap={"soap": soap})
    etree.SubElement(envelope, f"{{{soap}}}Body").append(_parse(world.sign(world.letter())))
    return _serialize(envelope)


def renamed_root(world: World) -> bytes:
    """A genuine package whose root element is not edXML."""
    root = _parse(write_package(world.letter()))
    root.tag = q("VanBan")
    return _serialize(root)


def foreign_namespace(world: World) -> bytes:
    """A package in a namespace that is almost edXML's (another year of the regulation)."""
    data = write_package(world.letter())
    return data.replace(EDXML_NS.encode(), EDXML_NS.replace("2016", "2018").encode())


def no_namespace(world: World) -> bytes:
    """A package whose elements are in no namespace at all."""
    root = _parse(write_package(world.letter()))
    for element in root.iter():
        if isinstance(element.tag, str):
            element.tag = etree.QName(element).localname
    etree.cleanup_namespaces(root)
    data = _serialize(root)
    assert EDXML_NS.encode() not in data
    return data


def without_status_code(world: World) -> bytes:
    """A status package that lost its StatusCode."""
    document = world.setup_document("delivered")
    package = write_package(world.status(MINISTRY, document, StatusCode.ACCEPTED))
    return world.sign(_edited(package, remove("MessageHeader/StatusCode")), MINISTRY)


def status_with_code(value: str) -> Builder:
    """A status package whose StatusCode is ``value`` (outside the code list)."""
    return status_with(set_text("MessageHeader/StatusCode", value))


def _in_body(root: etree._Element) -> etree._Element:
    body = root.find(f"{ENVELOPE}/{BODY}")
    assert body is not None
    return body


def _in_envelope(root: etree._Element) -> etree._Element:
    envelope = root.find(ENVELOPE)
    assert envelope is not None
    return envelope


def _at_root(root: etree._Element) -> etree._Element:
    assert root.tag == ROOT
    return root


def _add_recipient(code: str) -> Change:
    def change(root: etree._Element) -> None:
        first = _at(root, "MessageHeader/To")
        added = copy.deepcopy(first)
        added.find(q("OrganId")).text = code  # type: ignore[union-attr]
        first.addnext(added)

    return change


def _replace_certificate(text: str) -> Change:
    def change(root: etree._Element) -> None:
        found = _signature(root).find(".//ds:X509Certificate", _DS)
        assert found is not None
        found.text = text

    return change


def _drop_key_info(root: etree._Element) -> None:
    key_info = _signature(root).find("ds:KeyInfo", _DS)
    assert key_info is not None
    _signature(root).remove(key_info)


def _flip_signature_value(root: etree._Element) -> None:
    value = _signature(root).find("ds:SignatureValue", _DS)
    assert value is not None and value.text is not None
    raw_value = bytearray(base64.b64decode(value.text))
    raw_value[5] ^= 0x01
    value.text = base64.b64encode(bytes(raw_value)).decode()


def _placeholder(header: etree._Element) -> etree._Element:
    """The Signature real packages carry: XML-DSig's shape in the edXML namespace."""
    placeholder = etree.SubElement(header, q("Signature"))
    method = etree.SubElement(placeholder, q("SignatureMethod"))
    method.set("Algorithm", "http://www.w3.org/2000/09/xmldsig#rsa-sha1")
    etree.SubElement(placeholder, q("SignatureValue")).text = "GbVb8n9+qFxz466Ag0sbpVdLPs2R0+9J"
    key_info = etree.SubElement(placeholder, q("KeyInfo"))
    x509_data = etree.SubElement(key_info, q("X509Data"))
    etree.SubElement(x509_data, q("X509Certificate")).text = "MIIFqTCCBJGgAwIBAgIQVAED"
    return placeholder


def _placeholder_signature(world: World) -> bytes:
    """An unsigned letter carrying the edXML-namespace placeholder real packages have."""
    root = _parse(write_package(world.letter()))
    header = root.find(f"{ENVELOPE}/{HEADER}")
    assert header is not None
    _placeholder(header)
    return _serialize(root)


def _signature_inside_placeholder(root: etree._Element) -> None:
    """The real signature moved into an edXML placeholder Signature (whose content is free)."""
    signature = _signature(root)
    holder = etree.Element(q("Signature"))
    signature.addprevious(holder)
    holder.append(signature)


def second_signature_in_object(world: World) -> bytes:
    """A forger's signature hidden in a ds:Object of the genuine one (XSD lets Object hold any)."""
    package = write_package(world.letter())
    genuine = _parse(world.sign(package))
    forged = _parse(world.sign(package, HANOI))
    etree.SubElement(_signature(genuine), f"{{{DSIG_NS}}}Object").append(_signature(forged))
    return _serialize(genuine)


def _unsigned(world: World) -> bytes:
    return write_package(world.letter())


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


_DECLARED_UTF8 = re.compile(rb"""encoding=(["'])UTF-8\1""", re.IGNORECASE)


def _declare(data: bytes, encoding: str) -> bytes:
    """The same bytes with another encoding in the XML declaration."""
    return _DECLARED_UTF8.sub(f'encoding="{encoding}"'.encode(), data, count=1)


def _declare_latin1(data: bytes) -> bytes:
    return _declare(data, "ISO-8859-1")


def _bom_and_latin1(data: bytes) -> bytes:
    return codecs.BOM_UTF8 + _declare(data, "ISO-8859-1")


def _comment_in_subject(data: bytes) -> bytes:
    """A comment cutting the signed Subject: a DOM reader joining its text sees it whole."""
    return re.sub(rb"(<(?:\w+:)?Subject>[^<]{4})", rb"\1<!-- -->", data, count=1)


def _processing_instruction(data: bytes) -> bytes:
    return re.sub(rb"(<(?:\w+:)?edXMLHeader[^>]*>)", rb'\1<?qlvb route="G09"?>', data, count=1)


def _as_utf16(data: bytes) -> bytes:
    return _declare(data, "UTF-16").decode("utf-8").encode("utf-16")


def _invalid_utf8(data: bytes) -> bytes:
    return data.replace("Về việc".encode(), b"V\xe1\xbb\xff vi\xff\xfec", 1)


_BILLION_LAUGHS = (
    b'<!DOCTYPE edXML [<!ENTITY a "hahahahaha">'
    b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">'
    b'<!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;"><!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">'
    b'<!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;"><!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">]>'
)

SUBJECT = "MessageHeader/Subject"
CHANGED_AFTER_SIGNING = "changed after it was signed"

# -- the corpus -------------------------------------------------------------------------


def reported(
    name: str,
    build: Builder,
    expected: Reason,
    *,
    mentions: str = "",
    publisher: str = MINISTRY,
    routing_key: str = GOVERNMENT_OFFICE,
) -> Case:
    """A case published like a status: by the ministry, to the Government Office."""
    return Case(name, build, expected, publisher, routing_key, mentions)


CASES: list[Case] = [
    # -- the bytes: refused by the hardened parser before anything reads them
    Case("truncated", bytes_of(_truncate), Reason.NOT_WELL_FORMED, mentions="line"),
    Case(
        "pdf_instead_of_xml",
        raw(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj"),
        Reason.NOT_WELL_FORMED,
    ),
    Case("zip_instead_of_xml", raw(b"PK\x03\x04\x14\x00\x08\x00\x9c\xb7"), Reason.NOT_UTF8),
    Case("empty_body", raw(b""), Reason.NOT_WELL_FORMED, mentions="empty"),
    Case("declared_latin1", bytes_of(_declare_latin1), Reason.NOT_UTF8, mentions="iso-8859-1"),
    # -- what two readers would read apart (refused before the signature)
    Case(
        "bom_with_latin1_declared",
        bytes_of(_bom_and_latin1),
        Reason.NOT_WELL_FORMED,
        mentions="byte-order mark",
    ),
    Case(
        "comment_inside_signed_subject",
        bytes_of(_comment_in_subject),
        Reason.NOT_WELL_FORMED,
        mentions="comment",
    ),
    Case(
        "processing_instruction_in_header",
        bytes_of(_processing_instruction),
        Reason.NOT_WELL_FORMED,
        mentions="processing instruction",
    ),
    Case("utf16", bytes_of(_as_utf16), Reason.NOT_UTF8, mentions="UTF-16"),
    Case(
        "invalid_utf8_bytes", bytes_of(_invalid_utf8), Reason.NOT_UTF8, mentions="not valid UTF-8"
    ),
    Case(
        "xxe_file",
        with_doctype(b'<!DOCTYPE edXML [<!ENTITY x SYSTEM "file:///etc/passwd">]>', b"&x;"),
        Reason.FORBIDDEN_DTD,
    ),
    Case(
        "xxe_network",
        with_doctype(b'<!DOCTYPE edXML [<!ENTITY x SYSTEM "http://127.0.0.1:9/leak">]>', b"&x;"),
        Reason.FORBIDDEN_DTD,
    ),
    Case("billion_laughs", with_doctype(_BILLION_LAUGHS, b"&g;"), Reason.FORBIDDEN_DTD),
    Case(
        "external_dtd",
        with_doctype(b'<!DOCTYPE edXML SYSTEM "http://127.0.0.1:9/edxml.dtd">'),
        Reason.FORBIDDEN_DTD,
    ),
    Case(
        "parameter_entities",
        with_doctype(
            b'<!DOCTYPE edXML [<!ENTITY % p SYSTEM "file:///etc/hostname"> %p;'
            b"<!ENTITY % q \"<!ENTITY leak SYSTEM 'http://127.0.0.1:9/?%p;'>\"> %q;]>",
            b"&leak;",
        ),
        Reason.FORBIDDEN_DTD,
    ),
    Case(
        "doctype_after_comment",
        with_doctype(b'<!-- QLVB export -->\n<!DOCTYPE edXML [<!ENTITY s "gia">]>', b"&s;"),
        Reason.FORBIDDEN_DTD,
    ),
    Case("oversized", oversized, Reason.TOO_LARGE, mentions=f"{MAX_PACKAGE_BYTES:,}"),
    Case("too_deep", nested(DEEP_NESTING), Reason.TOO_DEEP),
    Case("too_deep_for_libxml2", nested(VERY_DEEP_NESTING), Reason.TOO_DEEP),
    # -- not edXML at all
    Case("wrong_namespace", foreign_namespace, Reason.NOT_EDXML, mentions="QCVN_102_2018"),
    Case("no_namespace", no_namespace, Reason.NOT_EDXML, mentions="no namespace"),
    Case("wrong_root", renamed_root, Reason.NOT_EDXML, mentions="VanBan"),
    Case("wrapped_in_soap", wrapped_in_soap, Reason.NOT_EDXML, mentions="Envelope"),
    # -- required fields missing (each signed by its real sender)
    Case(
        "missing_from",
        letter_with(remove("MessageHeader/From")),
        Reason.MISSING_FIELD,
        mentions="From",
    ),
    Case(
        "missing_to", letter_with(remove("MessageHeader/To")), Reason.MISSING_FIELD, mentions="To"
    ),
    Case("missing_subject", letter_with(remove(SUBJECT)), Reason.MISSING_FIELD, mentions="Subject"),
    Case(
        "missing_code",
        letter_with(remove("MessageHeader/Code")),
        Reason.MISSING_FIELD,
        mentions="Code",
    ),
    Case(
        "missing_code_number",
        letter_with(remove("MessageHeader/Code/CodeNumber")),
        Reason.MISSING_FIELD,
        mentions="CodeNumber",
    ),
    Case(
        "missing_trace_headers",
        letter_with(remove("TraceHeaderList")),
        Reason.MISSING_FIELD,
        mentions="TraceHeaderList",
    ),
    reported(
        "missing_status_code", without_status_code, Reason.SCHEMA_INVALID, mentions="StatusCode"
    ),
    reported(
        "missing_response_for",
        status_with(remove("MessageHeader/ResponseFor")),
        Reason.MISSING_FIELD,
        mentions="ResponseFor",
    ),
    Case(
        "empty_subject",
        letter_with(set_text(SUBJECT, "")),
        Reason.SCHEMA_INVALID,
        mentions="Subject",
    ),
    # -- dates
    Case(
        "promulgation_date_iso",
        letter_with(set_text("MessageHeader/PromulgationInfo/PromulgationDate", "2026-11-25")),
        Reason.BAD_DATE,
        mentions="yyyy/MM/dd",
    ),
    Case(
        "due_date_in_words",
        letter_with(set_text("MessageHeader/DueDate", "ngày 5 tháng 12")),
        Reason.BAD_DATE,
        mentions="yyyy/MM/dd",
    ),
    Case(
        "impossible_promulgation_date",
        letter_with(set_text("MessageHeader/PromulgationInfo/PromulgationDate", "2026/02/30")),
        Reason.BAD_DATE,
        mentions="2026/02/30",
    ),
    Case(
        "trace_timestamp_without_time",
        letter_with(set_text("TraceHeaderList/TraceHeader/Timestamp", "2026/11/25")),
        Reason.BAD_DATE,
        mentions="HH:mm:ss",
    ),
    reported(
        "status_timestamp_wrong_order",
        status_with(set_text("MessageHeader/Timestamp", "25/11/2026 10:00:00")),
        Reason.BAD_DATE,
        mentions="HH:mm:ss",
    ),
    # -- code lists
    reported(
        "status_code_07", status_with_code("07"), Reason.BAD_CODE_LIST, mentions="status code"
    ),
    Case(
        "priority_9",
        letter_with(
            set_text("MessageHeader/OtherInfo/Priority", "9"),
            other_info=OtherInfo(priority=Priority.NORMAL),
        ),
        Reason.BAD_CODE_LIST,
        mentions="priority",
    ),
    Case(
        "business_doc_type_5",
        letter_with(set_text("TraceHeaderList/Bussiness/BussinessDocType", "5")),
        Reason.BAD_CODE_LIST,
        mentions="business document type",
    ),
    Case(
        "steering_type_7",
        letter_with(set_text("MessageHeader/SteeringType", "7"), steering_type=SteeringType.NONE),
        Reason.BAD_CODE_LIST,
        mentions="steering type",
    ),
    # -- agency codes
    Case(
        "malformed_code_in_to",
        letter_with(set_text("MessageHeader/To/OrganId", "28.22.H17")),
        Reason.BAD_AGENCY_CODE,
        mentions="28.22.H17",
    ),
    Case(
        "malformed_code_in_from",
        letter_with(set_text("MessageHeader/From/OrganId", "G22")),
        Reason.BAD_AGENCY_CODE,
        mentions="G22",
    ),
    reported(
        "malformed_code_in_response_for",
        status_with(set_text("MessageHeader/ResponseFor/OrganId", "000.00.00.g22")),
        Reason.BAD_AGENCY_CODE,
        mentions="000.00.00.g22",
    ),
    Case(
        "malformed_routing_key",
        genuine_letter,
        Reason.BAD_AGENCY_CODE,
        routing_key="28.22.H17",
        mentions="28.22.H17",
    ),
    Case("wildcard_routing_key", genuine_letter, Reason.BAD_AGENCY_CODE, routing_key="*.*.*.G09"),
    Case("empty_routing_key", genuine_letter, Reason.BAD_AGENCY_CODE, routing_key=""),
    # -- no real signature
    Case("unsigned", _unsigned, Reason.SIGNATURE_MISSING),
    Case(
        "placeholder_signature",
        _placeholder_signature,
        Reason.SIGNATURE_MISSING,
        mentions="placeholder",
    ),
    Case(
        "truncated_certificate",
        tampered(_replace_certificate("MIIFqTCCBJGgAwIBAgIQ")),
        Reason.SIGNATURE_MISSING,
        mentions="placeholder",
    ),
    Case("signature_without_key_info", tampered(_drop_key_info), Reason.SIGNATURE_MISSING),
    # -- certificates
    Case("signed_by_another_agency", signed_by(HANOI), Reason.SENDER_MISMATCH, mentions=HANOI),
    Case("expired_certificate", certificate("expired"), Reason.CERT_EXPIRED, mentions="expired"),
    Case(
        "not_yet_valid_certificate",
        certificate("future"),
        Reason.CERT_EXPIRED,
        mentions="valid only from",
    ),
    Case("untrusted_ca", certificate("untrusted"), Reason.CERT_UNTRUSTED),
    Case("certificate_naming_no_agency", certificate("nameless"), Reason.CERT_NO_AGENCY),
    Case(
        "certificate_not_the_registered_one",
        certificate("unregistered"),
        Reason.CERT_NOT_REGISTERED,
        mentions="not among the 1 registered",
    ),
    Case("revoked_certificate", certificate("revoked"), Reason.CERT_REVOKED, mentions="revoked on"),
    Case(
        "ca_revocation_list_out_of_date",
        certificate("stale_crl"),
        Reason.CRL_STALE,
        mentions="Stale intermediate CA",
    ),
    # -- key and certificate policy
    Case("rsa_1024_key", certificate("rsa1024"), Reason.KEY_TOO_WEAK, mentions="RSA-1024"),
    Case("koblitz_curve_key", certificate("secp256k1"), Reason.KEY_TOO_WEAK, mentions="secp256k1"),
    Case("signed_by_the_ca_itself", certificate("ca"), Reason.CERT_IS_CA),
    Case(
        "intermediate_without_keycertsign",
        certificate("under_no_keycertsign"),
        Reason.CA_CANNOT_SIGN,
        mentions="keyCertSign",
    ),
    Case("certificate_signed_with_sha1", certificate("sha1_signed"), Reason.CERT_ALGORITHM),
    # -- algorithms
    Case("sha1_when_disabled", sha1_letter, Reason.SIGNATURE_ALGORITHM, mentions="sha1"),
    Case("homemade_algorithm", bytes_of(unknown_algorithm), Reason.SIGNATURE_ALGORITHM),
    # -- changed after signing
    Case(
        "tampered_subject",
        tampered(set_text(SUBJECT, "Về việc chuyển toàn bộ ngân sách")),
        Reason.SIGNATURE_INVALID,
        mentions=CHANGED_AFTER_SIGNING,
    ),
    Case(
        "tampered_due_date",
        tampered(set_text("MessageHeader/DueDate", "2099/12/31")),
        Reason.SIGNATURE_INVALID,
        mentions=CHANGED_AFTER_SIGNING,
    ),
    Case(
        "recipient_added_after_signing",
        tampered(_add_recipient(HANOI)),
        Reason.SIGNATURE_INVALID,
        routing_key=HANOI,
        mentions=CHANGED_AFTER_SIGNING,
    ),
    Case(
        "tampered_attachment",
        lambda world: flip_attachment_character(attachment_letter(world)),
        Reason.SIGNATURE_INVALID,
        mentions=CHANGED_AFTER_SIGNING,
    ),
    Case("tampered_signature_value", tampered(_flip_signature_value), Reason.SIGNATURE_INVALID),
    # -- where the signature is and what it covers (wrapping)
    # A ds:Signature where the XSD allows none is refused by the schema check,
    # which runs first; the signature check's own placement rules are then
    # reached only where the XSD allows free content (a placeholder, ds:Object).
    Case(
        "signature_moved_to_body",
        tampered(move_signature(_in_body)),
        Reason.SCHEMA_INVALID,
        mentions="edXMLBody/Signature",
    ),
    Case(
        "signature_moved_to_envelope",
        tampered(move_signature(_in_envelope)),
        Reason.SCHEMA_INVALID,
        mentions="edXMLEnvelope/Signature",
    ),
    Case(
        "signature_moved_to_root",
        tampered(move_signature(_at_root)),
        Reason.SCHEMA_INVALID,
        mentions="/edXML/Signature",
    ),
    Case(
        "signature_inside_a_placeholder",
        tampered(_signature_inside_placeholder),
        Reason.SIGNATURE_SCOPE,
        mentions="edXMLHeader",
    ),
    Case("two_signatures", second_signature, Reason.SCHEMA_INVALID, mentions="only once"),
    Case(
        "second_signature_in_an_object",
        second_signature_in_object,
        Reason.SIGNATURE_SCOPE,
        mentions="2 ds:Signature",
    ),
    Case(
        "reference_to_a_fragment",
        tampered(reference_uri("#xpointer(/)")),
        Reason.SIGNATURE_SCOPE,
        mentions="URI",
    ),
    Case(
        "reference_to_an_id",
        tampered(reference_uri("#MessageHeader")),
        Reason.SIGNATURE_SCOPE,
        mentions="URI",
    ),
    Case("two_references", tampered(edit_signed_info(extra_reference)), Reason.SIGNATURE_SCOPE),
    Case(
        "xpath_transform",
        tampered(edit_signed_info(xpath_transform)),
        Reason.SIGNATURE_SCOPE,
        mentions="transform",
    ),
    Case(
        "enveloped_transform_removed",
        tampered(edit_signed_info(without_enveloped_transform)),
        Reason.SIGNATURE_INVALID,
    ),
    Case("original_wrapped_in_signature_object", wrapped_in_object, Reason.SIGNATURE_INVALID),
    Case(
        "original_wrapped_in_attachments",
        wrapped_in_attachments,
        Reason.SCHEMA_INVALID,
        mentions="element Wrapper is not allowed here",
    ),
    # -- who sends to whom
    Case(
        "routing_key_not_in_to",
        genuine_letter,
        Reason.NOT_ADDRESSED,
        routing_key=HANOI,
        mentions=HANOI,
    ),
    Case(
        "unregistered_recipient",
        signed_by(GOVERNMENT_OFFICE, to=(MINISTRY, UNREGISTERED)),
        Reason.UNKNOWN_RECIPIENT,
        routing_key=UNREGISTERED,
        mentions=UNREGISTERED,
    ),
    Case(
        "forged_from",
        signed_by(HANOI),
        Reason.SENDER_MISMATCH,
        publisher=HANOI,
        mentions=f"From names {GOVERNMENT_OFFICE}",
    ),
    Case(
        "publisher_is_not_the_signer",
        genuine_letter,
        Reason.SENDER_MISMATCH,
        publisher=HANOI,
        mentions=f"published by {HANOI}",
    ),
    Case("unregistered_publisher", genuine_letter, Reason.SENDER_MISMATCH, publisher=ROGUE),
    # -- statuses
    Case(
        "status_routed_to_the_wrong_agency",
        status(MINISTRY, "delivered", StatusCode.ARRIVED),
        Reason.NOT_ADDRESSED,
        publisher=MINISTRY,
        routing_key=HANOI,
        mentions="ResponseFor",
    ),
    Case(
        "status_for_a_document_never_delivered_to_the_reporter",
        status(HANOI, "delivered", StatusCode.ARRIVED),
        Reason.UNKNOWN_DOCUMENT,
        publisher=HANOI,
        routing_key=GOVERNMENT_OFFICE,
    ),
    reported(
        "status_for_a_document_never_sent", status_for_unknown_document, Reason.UNKNOWN_DOCUMENT
    ),
    reported(
        "status_dated_a_year_ahead",
        status_dated(365),
        Reason.BAD_TIMESTAMP,
        mentions="ahead of",
    ),
    reported(
        "status_dated_a_week_back",
        status_dated(-7),
        Reason.BAD_TIMESTAMP,
        mentions="behind",
    ),
    reported(
        "accepted_after_done",
        status(MINISTRY, "done", StatusCode.ACCEPTED),
        Reason.ILLEGAL_TRANSITION,
        mentions="06",
    ),
    reported(
        "processing_after_returned",
        status(MINISTRY, "returned", StatusCode.PROCESSING),
        Reason.ILLEGAL_TRANSITION,
        mentions="02",
    ),
    reported(
        "recall_agreed_without_request",
        status(MINISTRY, "delivered", StatusCode.RECALL_AGREED),
        Reason.ILLEGAL_TRANSITION,
        mentions="13",
    ),
    reported(
        "recall_refused_without_request",
        status(MINISTRY, "done", StatusCode.RECALL_REFUSED),
        Reason.ILLEGAL_TRANSITION,
        mentions="13",
    ),
    Case(
        "second_recall_request_while_one_is_pending",
        status(GOVERNMENT_OFFICE, "recall", StatusCode.RECALL_REQUESTED, addressee=MINISTRY),
        Reason.ILLEGAL_TRANSITION,
        routing_key=MINISTRY,
        mentions="already",
    ),
    # -- the record
    Case(
        "duplicate_document_id",
        duplicate_document_id,
        Reason.DUPLICATE_DOCUMENT,
        mentions="DocumentId",
    ),
    Case(
        "invalid_base64_attachment",
        invalid_base64_attachment,
        Reason.BAD_ATTACHMENT,
    ),
]

# Documents delivered, and statuses accepted, before the cases are sent:
# what the status and duplicate cases refer to. name: (sender, To, subject).
SETUP_DOCUMENTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "delivered": (GOVERNMENT_OFFICE, (MINISTRY,), "Văn bản đã tới Bộ Nội vụ, chưa có trạng thái"),
    "done": (GOVERNMENT_OFFICE, (MINISTRY,), "Văn bản Bộ Nội vụ đã xử lý xong"),
    "returned": (GOVERNMENT_OFFICE, (MINISTRY,), "Văn bản Bộ Nội vụ đã trả lại"),
    "recall": (GOVERNMENT_OFFICE, (MINISTRY,), "Văn bản đang được yêu cầu lấy lại"),
}
# (setup document, reporter, code); a recall request goes to the recipient.
SETUP_STATUSES: tuple[tuple[str, str, StatusCode], ...] = (
    ("done", MINISTRY, StatusCode.DONE),
    ("returned", MINISTRY, StatusCode.RETURNED),
    ("recall", GOVERNMENT_OFFICE, StatusCode.RECALL_REQUESTED),
)


def setup_publications(world: World) -> tuple[list[Publication], list[Publication]]:
    """The setup documents, then the setup statuses (sent once the documents are delivered)."""
    documents = []
    for name in SETUP_DOCUMENTS:
        document = world.setup_document(name)
        for recipient in document.recipient_codes:
            body = world.sign(document, str(document.sender.organ_id))
            documents.append(Publication(str(document.sender.organ_id), str(recipient), body, name))
    statuses = []
    for name, reporter, code in SETUP_STATUSES:
        document = world.setup_document(name)
        addressee = (
            str(document.recipients[0].organ_id) if code is StatusCode.RECALL_REQUESTED else None
        )
        package = world.status(reporter, document, code, addressee=addressee, at=world.now)
        target = addressee or str(document.sender.organ_id)
        statuses.append(
            Publication(reporter, target, world.sign(package, reporter), f"{name}:{code}")
        )
    return documents, statuses


# Valid traffic between agencies other than the hostile cases' usual sender.
_VALID_ROUTES: tuple[tuple[str, str], ...] = (
    (HANOI, DEPARTMENT),
    (DEPARTMENT, HANOI),
    (MINISTRY, HANOI),
    (HANOI, MINISTRY),
    (DEPARTMENT, MINISTRY),
)


def valid_traffic(world: World, count: int) -> list[Publication]:
    """``count`` valid, signed documents between the other agencies, each to one recipient."""
    publications = []
    for index in range(count):
        sender, recipient = _VALID_ROUTES[index % len(_VALID_ROUTES)]
        document = world.letter(sender, (recipient,), subject=f"Văn bản hợp lệ số {index + 1}")
        publications.append(
            Publication(sender, recipient, world.sign(document, sender), f"valid-{index + 1}")
        )
    return publications


def hostile_publications(world: World, cases: Sequence[Case] = ()) -> list[Publication]:
    """Every case built, as the publication the run sends."""
    return [
        Publication(case.publisher, case.routing_key, case.build(world), case.name)
        for case in (cases or CASES)
    ]
