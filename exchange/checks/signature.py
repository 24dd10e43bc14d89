"""Signing and verifying edXML packages (ký số gói tin): XML-DSig over the whole package.

An edXML package carries one enveloped XML signature, a ``ds:Signature``
child of ``edXML/edXMLEnvelope/edXMLHeader`` (after ``TraceHeaderList``),
whose single ``Reference URI=""`` covers the whole package minus the
signature itself (enveloped-signature transform, exclusive c14n). The
signer's X.509 certificate travels in ``KeyInfo/X509Data`` and names the
agency in its subject UID (see :mod:`exchange.pki`).

:func:`verify` answers two questions for the worker: which agency signed,
and what exactly it signed. The package model must be read from
``Verified.signed_root`` only, never from the bytes received: anything a
forger adds outside what the signature covers is not in ``signed_root``.
Whether the signer may send this package (signer = ``From`` = broker user)
is the authorisation check's business, not this module's.
"""

from __future__ import annotations

import binascii
import copy
import functools
import re
from base64 import b64decode
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml import etree
from signxml.algorithms import (
    CanonicalizationMethod,
    DigestAlgorithm,
    SignatureConstructionMethod,
    SignatureMethod,
)
from signxml.exceptions import (
    InvalidCertificate,
    InvalidDigest,
    InvalidInput,
    InvalidSignature,
    SignXMLException,
)
from signxml.signer import XMLSigner
from signxml.verifier import SignatureConfiguration, VerifyResult, XMLVerifier

from exchange.agency import AgencyCode
from exchange.edxml import safexml
from exchange.edxml.names import (
    DSIG_NS,
    DSIG_SIGNATURE,
    EDXML_SIGNATURE,
    ENVELOPE,
    HEADER,
    MESSAGE_HEADER,
    ROOT,
    TRACE_HEADER_LIST,
)
from exchange.pki import TrustStore, describe
from exchange.reasons import Reason, Rejection
from exchange.settings import ParserLimits

Digest = Literal["sha256", "sha384", "sha512", "sha1"]

_SIGNATURE_PATH = "edXML/edXMLEnvelope/edXMLHeader/Signature"
_ENVELOPED = SignatureConstructionMethod.enveloped.value
_C14N_METHODS = frozenset(method.value for method in CanonicalizationMethod)

_STRONG_DIGESTS = frozenset(
    {DigestAlgorithm.SHA256, DigestAlgorithm.SHA384, DigestAlgorithm.SHA512}
)
_STRONG_METHODS = frozenset(
    {
        SignatureMethod.RSA_SHA256,
        SignatureMethod.RSA_SHA384,
        SignatureMethod.RSA_SHA512,
        SignatureMethod.ECDSA_SHA256,
        SignatureMethod.ECDSA_SHA384,
        SignatureMethod.ECDSA_SHA512,
    }
)
# SHA-1 is broken for collisions; legacy senders still use it, so an operator
# may accept it knowingly (Settings.allow_sha1), for RSA and ECDSA only.
_SHA1_DIGESTS = frozenset({DigestAlgorithm.SHA1})
_SHA1_METHODS = frozenset({SignatureMethod.RSA_SHA1, SignatureMethod.ECDSA_SHA1})

# A signer's certificate and a few intermediates; more is not a chain but a
# way to make the verifier work.
_MAX_CERTIFICATES = 8

_WHITESPACE = re.compile(r"\s+")

# Agencies sign with a few certificates, used again and again. Parsing one
# and, later, its key and subject costs more than the rest of the checks
# before the cryptography; the same text is the same certificate.
_PARSED_CERTIFICATES_KEPT = 1024
_parsed_certificates: dict[str, x509.Certificate] = {}


@dataclass(frozen=True)
class Verified:
    """What a good signature proves: who signed, with which certificate, and what."""

    agency: AgencyCode
    """The agency named by the signing certificate (not necessarily the package's From)."""
    certificate: x509.Certificate
    """The signer's certificate, validated up to a trusted CA."""
    signed_root: etree._Element
    """The package as the signature covers it; read the model from this.

    A copy of the received package without the signature and without the
    comments the signature does not cover: its canonical form is exactly
    the bytes whose digest was checked.
    """
    signature_method: str
    """The SignatureMethod algorithm URI, for the operator's view of legacy (SHA-1) senders."""


# -- signing ----------------------------------------------------------------


class _LegacySigner(XMLSigner):
    """signxml's signer, allowed to produce SHA-1 (only when asked for by name)."""

    def check_deprecated_methods(self) -> None:
        """Allow SHA-1: it was requested explicitly, to make legacy test data."""


@functools.lru_cache(maxsize=64)
def _private_key(key_pem: bytes) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    # Loading an RSA key checks it, which costs ~40 ms: an agency signs with
    # the same few keys again and again.
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"an edXML signing key is RSA or ECDSA, not {type(key).__name__}")
    return key


def _signature_method(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, digest: Digest
) -> SignatureMethod:
    family = "RSA" if isinstance(key, rsa.RSAPrivateKey) else "ECDSA"
    return SignatureMethod[f"{family}_{digest.upper()}"]


def _certificates_of(cert_pem: bytes | list[bytes]) -> list[x509.Certificate]:
    pems = [cert_pem] if isinstance(cert_pem, bytes) else cert_pem
    certificates = [cert for pem in pems for cert in x509.load_pem_x509_certificates(pem)]
    if not certificates:
        raise ValueError("no certificate given to sign with")
    return certificates


def _header_of(root: etree._Element) -> etree._Element:
    header = root.find(f"{ENVELOPE}/{HEADER}") if root.tag == ROOT else None
    if header is None:
        raise Rejection.of(
            Reason.NOT_EDXML,
            "the package has no edXML/edXMLEnvelope/edXMLHeader to put the signature in",
            "edXML/edXMLEnvelope/edXMLHeader",
        )
    return header


def _put_placeholder(root: etree._Element) -> None:
    """Put signxml's ``<ds:Signature Id="placeholder"/>`` where edXML wants the signature.

    Any signature already there (an edXML-namespace placeholder as in the real
    samples, or an old ``ds:Signature``) is replaced in place; otherwise the
    placeholder goes after ``TraceHeaderList`` (or ``MessageHeader``).
    """
    header = _header_of(root)
    placeholder = etree.Element(DSIG_SIGNATURE, Id="placeholder", nsmap={"ds": DSIG_NS})
    old = [child for child in header if child.tag in (DSIG_SIGNATURE, EDXML_SIGNATURE)]
    # A ds:Signature elsewhere would make the package carry two signatures.
    old += [sig for sig in root.iter(DSIG_SIGNATURE) if sig.getparent() is not header]
    if old and old[0].getparent() is header:
        placeholder.tail = old[0].tail
        header.replace(old[0], placeholder)
        old = old[1:]
    else:
        anchor = header.find(TRACE_HEADER_LIST)
        if anchor is None:
            anchor = header.find(MESSAGE_HEADER)
        if anchor is not None:
            placeholder.tail = anchor.tail
            anchor.addnext(placeholder)
        else:
            header.append(placeholder)
    for element in old:
        _remove_keeping_tail(element)


def _remove_keeping_tail(element: etree._Element) -> None:
    parent = element.getparent()
    if parent is None:
        return
    previous = element.getprevious()
    if element.tail:
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
    parent.remove(element)


def sign(
    source: bytes | etree._Element,
    key_pem: bytes,
    cert_pem: bytes | list[bytes],
    *,
    digest: Digest = "sha256",
) -> bytes:
    """Sign an edXML package; return the signed package's bytes (UTF-8, with declaration).

    ``cert_pem`` is the signer's certificate, optionally followed by its
    intermediates (in one PEM text or a list). The signature method follows
    the key: RSA-``digest`` or ECDSA-``digest``. ``digest="sha1"`` exists
    only to produce legacy packages for tests; the exchange refuses them by
    default. ``source`` is not modified.
    """
    root = safexml.parse(source) if isinstance(source, bytes) else copy.deepcopy(source)
    key = _private_key(key_pem)
    method = _signature_method(key, digest)
    signer_class = _LegacySigner if digest == "sha1" else XMLSigner
    signer = signer_class(
        method=SignatureConstructionMethod.enveloped,
        signature_algorithm=method,
        digest_algorithm=DigestAlgorithm[digest.upper()],
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    )
    _put_placeholder(root)
    signed = signer.sign(root, key=key, cert=_certificates_of(cert_pem))
    return bytes(etree.tostring(signed, xml_declaration=True, encoding="UTF-8"))


# -- verifying --------------------------------------------------------------


class _PackageVerifier(XMLVerifier):
    """signxml's verifier, working on the tree the hardened parser already built.

    signxml serialises and re-parses any element it is given, to detach it
    from its parents' namespaces. A package root has no parent, so the copy
    only costs time; :func:`verify` never hands it anything else.

    For the same reason the reference is checked here with one copy of the
    tree instead of signxml's three parses (copy, copy again before
    canonicalising, parse the canonical bytes back). This applies only to
    what :func:`_check_signed_info` lets through: one ``Reference URI=""``
    whose transforms are the enveloped signature and canonicalization;
    anything else is refused here too. Canonicalization, digest functions
    and the check of the digest algorithm are signxml's own; SignedInfo and
    the SignatureValue are checked by signxml unchanged.
    """

    def get_root(self, data: Any) -> Any:
        """The package root as it is, when it is the root of its document."""
        if isinstance(data, etree._Element) and data.getparent() is None:
            return data
        return super().get_root(data)  # type: ignore[no-untyped-call]

    def _check_cert_validity(self, cert: x509.Certificate, cert_source: str) -> None:
        # signxml words its error message (the certificate's subject as text)
        # before it compares the dates; compare first, the same way.
        moment = self._get_cert_verification_time()  # type: ignore[no-untyped-call]
        if cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
            return
        super()._check_cert_validity(cert, cert_source)  # type: ignore[no-untyped-call]

    def _verify_reference(
        self,
        reference: etree._Element,
        index: int,
        root: etree._Element,
        uri_resolver: Any,
        c14n_algorithm: CanonicalizationMethod,
        signature: etree._Element,
        signature_key_used: Any,
    ) -> VerifyResult:
        """Check the digest of the whole package; return it as a tree, exactly what was digested.

        ``signed_xml`` is a private copy of the received tree with the
        signature removed (the enveloped transform) and, when the
        canonicalization leaves comments out, without comments: its
        canonical form is the digested bytes, and it holds the same
        elements, attributes and text as those bytes parsed back (which is
        what signxml returns), without the cost of parsing them.
        """
        transforms = _ds_all(reference, "Transforms", "Transform")
        algorithms = [transform.get("Algorithm", "") for transform in transforms]
        c14n_transforms = [
            t for t, a in zip(transforms, algorithms, strict=True) if a in _C14N_METHODS
        ]
        # verify() refused anything else already; this holds it to that.
        if (
            reference.get("URI") != ""
            or any(a != _ENVELOPED and a not in _C14N_METHODS for a in algorithms)
            or len(c14n_transforms) > 1
        ):
            raise InvalidInput(
                f'only URI="" with the enveloped and one canonicalization transform is accepted, '
                f"not URI={reference.get('URI')!r} with {algorithms!r}"
            )
        payload = copy.deepcopy(root)
        if _ENVELOPED in algorithms:
            _remove_keeping_tail(self._get_signature(payload))  # type: ignore[no-untyped-call]
        method = self.config.default_reference_c14n_method
        prefixes = None
        if c14n_transforms:
            method = CanonicalizationMethod(c14n_transforms[0].get("Algorithm"))
            prefixes = self._get_inclusive_ns_prefixes(c14n_transforms[0])  # type: ignore[no-untyped-call]
        payload_c14n = self._c14n(payload, algorithm=method, inclusive_ns_prefixes=prefixes)
        digest_method = _ds_first(reference, "DigestMethod")
        digest_value = _ds_first(reference, "DigestValue")
        if digest_method is None or digest_value is None:
            raise InvalidInput("the Reference has no DigestMethod or no DigestValue")
        digest_alg = DigestAlgorithm(digest_method.get("Algorithm"))
        self.check_digest_alg_expected(digest_alg)  # type: ignore[no-untyped-call]
        if b64decode(digest_value.text or "") != self._get_digest(payload_c14n, digest_alg):
            raise InvalidDigest(f'Digest mismatch for reference {index} (URI="")')
        if not method.value.endswith("#WithComments"):
            # Comments are not signed: a forger may add some anywhere, so they
            # must not be in what is read (one inside a text would cut it).
            etree.strip_tags(payload, etree.Comment)
        key = signature_key_used
        signature_key = (
            key
            if isinstance(key, bytes)
            else key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return VerifyResult(payload_c14n, payload, signature, signature_key=signature_key)


def _ds_all(element: etree._Element, *steps: str) -> list[etree._Element]:
    """``element.findall("ds:A/ds:B")`` for ``steps`` ("A", "B"), without ElementPath's cost."""
    found = [element]
    for step in steps:
        tag = f"{{{DSIG_NS}}}{step}"
        found = [child for parent in found for child in parent.iterchildren(tag)]
    return found


def _ds_first(element: etree._Element, *steps: str) -> etree._Element | None:
    """``element.find("ds:A/ds:B")`` for ``steps`` ("A", "B"): the first of :func:`_ds_all`."""
    found = _ds_all(element, *steps)
    return found[0] if found else None


def _is_empty(element: etree._Element) -> bool:
    return len(element) == 0 and not (element.text or "").strip()


def _local_path(element: etree._Element) -> str:
    names = [etree.QName(e).localname for e in (element, *element.iterancestors())]
    return "/".join(reversed(names))


def _the_signature(root: etree._Element) -> etree._Element:
    """The package's one ds:Signature, where edXML puts it, or a Rejection."""
    found = list(root.iter(DSIG_SIGNATURE))
    if not found:
        placeholder = next(root.iter(EDXML_SIGNATURE), None)
        if placeholder is not None and _is_empty(placeholder):
            # What the official edXML library writes: it never signs.
            raise Rejection.of(
                Reason.SIGNATURE_MISSING,
                "its Signature element is empty, as the edXML library leaves it: "
                "sign the package (XML-DSig) before sending it",
                _local_path(placeholder),
            )
        if placeholder is not None:
            raise Rejection.of(
                Reason.SIGNATURE_MISSING,
                "the package carries a placeholder signature, not a real one: its Signature "
                f"element is in the edXML namespace, not XML-DSig's ({DSIG_NS})",
                _local_path(placeholder),
            )
        raise Rejection.of(
            Reason.SIGNATURE_MISSING,
            "the package has no XML-DSig Signature element in edXMLHeader",
            _SIGNATURE_PATH,
        )
    if len(found) > 1:
        raise Rejection.of(
            Reason.SIGNATURE_SCOPE,
            f"the package carries {len(found)} ds:Signature elements (at "
            + ", ".join(_local_path(sig) for sig in found)
            + "); edXML allows exactly one, in edXMLHeader",
            _SIGNATURE_PATH,
        )
    signature = found[0]
    header = signature.getparent()
    envelope = header.getparent() if header is not None else None
    if (
        root.tag != ROOT
        or header is None
        or header.tag != HEADER
        or envelope is None
        or envelope.tag != ENVELOPE
        or envelope.getparent() is not root
    ):
        raise Rejection.of(
            Reason.SIGNATURE_SCOPE,
            f"the signature is at {_local_path(signature)}; it must be a child of "
            "edXML/edXMLEnvelope/edXMLHeader",
            _local_path(signature),
        )
    return signature


def _certificates(signature: etree._Element) -> list[x509.Certificate]:
    """The certificates in KeyInfo/X509Data; a missing or garbled one means no real signature."""
    texts = _ds_all(signature, "KeyInfo", "X509Data", "X509Certificate")
    where = f"{_SIGNATURE_PATH}/KeyInfo/X509Data/X509Certificate"
    if not texts:
        raise Rejection.of(
            Reason.SIGNATURE_MISSING,
            "the signature carries no X509Certificate, so the exchange cannot tell who signed",
            where,
        )
    if len(texts) > _MAX_CERTIFICATES:
        raise Rejection.of(
            Reason.SIGNATURE_INVALID,
            f"the signature carries {len(texts)} certificates; at most "
            f"{_MAX_CERTIFICATES} are accepted",
            where,
        )
    certificates = []
    for element in texts:
        text = element.text or ""
        known = _parsed_certificates.get(text)
        if known is not None:
            certificates.append(known)
            continue
        try:
            der = b64decode(_WHITESPACE.sub("", text), validate=True)
            certificate = x509.load_der_x509_certificate(der)
        except (binascii.Error, ValueError):
            raise Rejection.of(
                Reason.SIGNATURE_MISSING,
                "the package carries a placeholder signature, not a real one: its "
                "X509Certificate is truncated or is not a certificate",
                where,
            ) from None
        if len(_parsed_certificates) >= _PARSED_CERTIFICATES_KEPT:
            _parsed_certificates.clear()
        _parsed_certificates[text] = certificate
        certificates.append(certificate)
    return certificates


def _signer_and_intermediates(
    certificates: list[x509.Certificate],
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    # XML-DSig implies no order in X509Data: the signer is the certificate
    # that issued none of the others (the first one, if that is ambiguous).
    issuers = [{o.issuer for o in certificates if o is not c} for c in certificates]
    leaves = [c for c, others in zip(certificates, issuers, strict=True) if c.subject not in others]
    leaf = leaves[0] if leaves else certificates[0]
    return leaf, [c for c in certificates if c is not leaf]


def _allowed(allow_sha1: bool) -> tuple[frozenset[SignatureMethod], frozenset[DigestAlgorithm]]:
    if allow_sha1:
        return _STRONG_METHODS | _SHA1_METHODS, _STRONG_DIGESTS | _SHA1_DIGESTS
    return _STRONG_METHODS, _STRONG_DIGESTS


def _check_signed_info(signature: etree._Element, allow_sha1: bool) -> str:
    """Refuse, before any cryptography, what the signature says it does: return its method."""
    methods, digests = _allowed(allow_sha1)
    signed_info = _ds_first(signature, "SignedInfo")
    if signed_info is None:
        raise Rejection.of(
            Reason.SIGNATURE_INVALID, "the signature has no SignedInfo", _SIGNATURE_PATH
        )
    where = f"{_SIGNATURE_PATH}/SignedInfo"
    c14n = _ds_first(signed_info, "CanonicalizationMethod")
    c14n_uri = c14n.get("Algorithm", "") if c14n is not None else ""
    if c14n_uri not in _C14N_METHODS:
        raise Rejection.of(
            Reason.SIGNATURE_ALGORITHM,
            f"CanonicalizationMethod {c14n_uri!r} is not an XML canonicalization the "
            "exchange knows",
            f"{where}/CanonicalizationMethod",
        )
    method = _ds_first(signed_info, "SignatureMethod")
    method_uri = method.get("Algorithm", "") if method is not None else ""
    _require_algorithm(SignatureMethod, method_uri, methods, f"{where}/SignatureMethod")

    references = _ds_all(signed_info, "Reference")
    if len(references) != 1 or references[0].get("URI") != "":
        uris = [r.get("URI") for r in references]
        raise Rejection.of(
            Reason.SIGNATURE_SCOPE,
            f'the signature must have exactly one Reference with URI="" (the whole package); '
            f"it has {len(references)} with URI {uris!r}",
            f"{where}/Reference",
        )
    reference = references[0]
    for transform in _ds_all(reference, "Transforms", "Transform"):
        algorithm = transform.get("Algorithm", "")
        # Anything else (XPath filters, base64) could narrow what the digest covers.
        if algorithm != _ENVELOPED and algorithm not in _C14N_METHODS:
            raise Rejection.of(
                Reason.SIGNATURE_SCOPE,
                f"the transform {algorithm!r} is not allowed: only enveloped-signature and "
                "canonicalization, so that the signature covers the whole package",
                f"{where}/Reference/Transforms",
            )
    digest = _ds_first(reference, "DigestMethod")
    digest_uri = digest.get("Algorithm", "") if digest is not None else ""
    _require_algorithm(DigestAlgorithm, digest_uri, digests, f"{where}/Reference/DigestMethod")
    return method_uri


def _require_algorithm(
    kind: type[SignatureMethod] | type[DigestAlgorithm],
    uri: str,
    allowed: frozenset[SignatureMethod] | frozenset[DigestAlgorithm],
    where: str,
) -> None:
    try:
        algorithm = kind(uri)
    except ValueError:
        algorithm = None
    if algorithm not in allowed:
        hint = " (SHA-1 is refused unless the operator allows it)" if "sha1" in uri else ""
        raise Rejection.of(
            Reason.SIGNATURE_ALGORITHM,
            f"the algorithm {uri!r} is not accepted{hint}; use RSA or ECDSA with SHA-256",
            where,
        )


@cache
def _default_limits() -> ParserLimits:
    # Reading the environment costs more than verifying a status package's
    # signature; do it once, not on every call.
    return ParserLimits()


def _root_of(source: bytes | etree._Element, limits: ParserLimits | None) -> etree._Element:
    if isinstance(source, etree._Element):
        return source
    return safexml.parse(source, limits or _default_limits())


def verify(
    source: bytes | etree._Element,
    trust: TrustStore,
    *,
    allow_sha1: bool = False,
    now: datetime | None = None,
    limits: ParserLimits | None = None,
) -> Verified:
    """Verify a package's signature; say who signed it and what it covers.

    Bytes are parsed by the hardened parser (with ``limits``); an element is
    taken as the parsed package root. Checks, cheapest first, each refusing
    with its own reason: a real ds:Signature is there (``SIGNATURE_MISSING``,
    including the samples' placeholders), exactly one, in edXMLHeader,
    covering the whole package (``SIGNATURE_SCOPE``), with accepted algorithms
    (``SIGNATURE_ALGORITHM``; SHA-1 only with ``allow_sha1``); the certificate
    chains to ``trust`` (``CERT_UNTRUSTED``), is valid at ``now``
    (``CERT_EXPIRED``) and names an agency (``CERT_NO_AGENCY``); finally the
    digest and the signature value match (``SIGNATURE_INVALID``).
    """
    root = _root_of(source, limits)
    signature = _the_signature(root)
    certificates = _certificates(signature)
    method_uri = _check_signed_info(signature, allow_sha1)
    moment = now if now is not None else datetime.now(UTC)
    leaf, intermediates = _signer_and_intermediates(certificates)
    agency = trust.identify(leaf, intermediates, at=moment)
    signed_root = _verify_signature(root, leaf, allow_sha1, moment)
    return Verified(agency, leaf, signed_root, method_uri)


def _verify_signature(
    root: etree._Element, signer: x509.Certificate, allow_sha1: bool, moment: datetime
) -> etree._Element:
    """Check digest and signature value with signxml; return what the signature covers."""
    methods, digests = _allowed(allow_sha1)
    config = SignatureConfiguration(
        require_x509=True,
        location=f"./{ENVELOPE}/{HEADER}/",
        expect_references=1,
        signature_methods=methods,
        digest_algorithms=digests,
        verification_time=moment,
    )
    where = _SIGNATURE_PATH
    try:
        # The certificate is already validated against the trust store; handing
        # it over as x509_cert makes signxml check the signature with its key
        # and nothing else from KeyInfo. The parser is the hardened one, for
        # every re-parse signxml does internally.
        result = _PackageVerifier().verify(
            root, x509_cert=signer, expect_config=config, parser=safexml.new_parser()
        )
    except InvalidDigest:
        raise Rejection.of(
            Reason.SIGNATURE_INVALID,
            "the package was changed after it was signed: its content does not match the "
            "signed digest",
            f"{where}/SignedInfo/Reference/DigestValue",
        ) from None
    except InvalidCertificate as error:
        raise Rejection.of(Reason.CERT_EXPIRED, str(error), f"{where}/KeyInfo") from None
    except InvalidSignature:
        raise Rejection.of(
            Reason.SIGNATURE_INVALID,
            f"the SignatureValue was not made by the key of {describe(signer)}, or SignedInfo "
            "was changed after signing",
            f"{where}/SignatureValue",
        ) from None
    except InvalidInput as error:
        reason = (
            Reason.SIGNATURE_ALGORITHM
            if "forbidden by configuration" in str(error)
            else Reason.SIGNATURE_INVALID
        )
        raise Rejection.of(reason, str(error), where) from None
    except etree.DocumentInvalid as error:
        raise Rejection.of(
            Reason.SIGNATURE_INVALID,
            f"the Signature element does not follow XML-DSig: {error}",
            where,
        ) from None
    except (SignXMLException, etree.LxmlError, ValueError, TypeError, binascii.Error) as error:
        # Whatever else a hostile Signature block makes the library trip on is
        # still a signature that does not verify, never a crash of the worker.
        raise Rejection.of(
            Reason.SIGNATURE_INVALID, f"the signature cannot be checked: {error}", where
        ) from None
    # expect_references=1 makes signxml return a single result.
    signed_root = result.signed_xml if isinstance(result, VerifyResult) else None
    if not isinstance(signed_root, etree._Element):
        raise Rejection.of(
            Reason.SIGNATURE_INVALID, "what the signature covers is not an XML package", where
        )
    return signed_root
