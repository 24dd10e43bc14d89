"""From a ``sendEdoc`` body to the messages the gateway publishes, checked before the reply.

A package on the axis is usually unsigned or carries a placeholder
signature: the transport authentication says who sends. The gateway then
signs it with the sending agency's own key, as an X-Road security server
signs for its members, and never re-signs a package that carries a real
XML-DSig signature. The result goes through the worker's own database-free
checks (:func:`exchange.pipeline.check_bytes` and :func:`~exchange.pipeline.check_message`,
once per recipient), so the clerk learns at once why a package is refused.
Pure: keys and trust come from the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lxml import etree

from exchange.agency import AgencyCode
from exchange.checks.signature import sign
from exchange.edxml import safexml
from exchange.edxml.model import DocumentPackage
from exchange.edxml.names import DSIG_NS, DSIG_SIGNATURE
from exchange.gateway.protocol import ErrorCode, GatewayError
from exchange.pipeline import CheckContext, CheckedMessage, Envelope, check_bytes, check_message
from exchange.pki import Credential

EDOC = "edoc"
STATUS = "status"
MESSAGE_TYPES = (EDOC, STATUS)

_SIGNATURE_VALUE = f"{{{DSIG_NS}}}SignatureValue"


@dataclass(frozen=True)
class Prepared:
    """A package ready to publish: the bytes, and one checked message per recipient."""

    body: bytes
    sender: AgencyCode
    document_id: str
    recipients: tuple[AgencyCode, ...]
    # The gateway signed it for the sender (it came unsigned or with a placeholder).
    signed_by_gateway: bool


def carries_real_signature(root: etree._Element) -> bool:
    """Whether a package carries an XML-DSig signature with a value (real or forged).

    An edXML-namespace ``Signature`` (what the axis's packages carry) or a
    ``ds:Signature`` with an empty ``SignatureValue`` is a placeholder.
    """
    for signature in root.iter(DSIG_SIGNATURE):
        value = signature.find(_SIGNATURE_VALUE)
        if value is not None and (value.text or "").strip():
            return True
    return False


def prepare(
    package: bytes,
    *,
    sender: AgencyCode,
    message_type: str,
    context: CheckContext,
    credential_of: Callable[[AgencyCode], Credential | None],
) -> Prepared:
    """Sign when needed, then run every check the worker runs without a database.

    Raises :class:`GatewayError` for what the gateway refuses itself (no key
    to sign with, a ``messagetype`` the package contradicts) and
    :class:`exchange.reasons.Rejection` for what the checks refuse.
    """
    root = safexml.parse(package, context.limits)
    body, signed_by_gateway = package, False
    if not carries_real_signature(root):
        credential = credential_of(sender)
        if credential is None:
            raise GatewayError.of(ErrorCode.NO_KEY_TO_SIGN, str(sender))
        body = sign(root, credential.key_pem, credential.cert_chain_pem)
        signed_by_gateway = True
    checked_bytes = check_bytes(body, context)
    read = checked_bytes.package
    package_type = EDOC if isinstance(read, DocumentPackage) else STATUS
    if package_type != message_type:
        raise GatewayError.of(
            ErrorCode.WRONG_MESSAGE_TYPE,
            f"messagetype={message_type} nhưng gói tin là gói {package_type}",
        )
    if isinstance(read, DocumentPackage):
        recipients = tuple(dict.fromkeys(to.organ_id for to in read.recipients))
    else:
        recipients = (read.response_for.organ_id,)
    checked: list[CheckedMessage] = [
        check_message(Envelope(body, str(recipient), sender), context, checked_bytes=checked_bytes)
        for recipient in recipients
    ]
    return Prepared(body, sender, checked[0].document_id, recipients, signed_by_gateway)
