"""XML names of edXML packages: the namespaces, and qualified element names."""

from __future__ import annotations

EDXML_NS = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"


def q(local: str) -> str:
    """The Clark name (``{namespace}local``) of an edXML element."""
    return f"{{{EDXML_NS}}}{local}"


ROOT = q("edXML")
ENVELOPE = q("edXMLEnvelope")
HEADER = q("edXMLHeader")
MESSAGE_HEADER = q("MessageHeader")
TRACE_HEADER_LIST = q("TraceHeaderList")
BODY = q("edXMLBody")
MANIFEST = q("edXMLManifest")
ATTACHMENT_ENCODED = q("AttachmentEncoded")
DSIG_SIGNATURE = f"{{{DSIG_NS}}}Signature"
# Real packages often put a placeholder Signature in the edXML namespace.
EDXML_SIGNATURE = q("Signature")
