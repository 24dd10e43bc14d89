"""Small edXML packages shaped like the real samples, written out in full, for the unit tests.

Tests edit the text (a value replaced, an element taken out) to make the
case they need, so the text is spelled the way real senders spell it rather
than written by :mod:`exchange.edxml.writer`.
"""

from __future__ import annotations

from exchange.edxml.names import EDXML_NS

SUBJECT = "V/v kết nối, liên thông phần mềm quản lý văn bản"
# The first bytes of a zip file, base64: real senders zip each file first.
ZIP_START = "UEsDBBQACAgIAO2TPE0="


def document_package(*, attachment: str = ZIP_START) -> str:
    """A document package shaped like edoc_update.edxml, with one attachment.

    As in the real packages: the edXML namespace is the default on the root
    and declared again with the prefix ``edXML:`` on the envelope, the
    ``Signature`` is the samples' placeholder in the edXML namespace, and
    ``AttachmentEncoded`` (unprefixed) follows the envelope. ``attachment``
    is the base64 text of its one attachment.
    """
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<edXML xmlns="{EDXML_NS}">
  <edXML:edXMLEnvelope xmlns:edXML="{EDXML_NS}">
    <edXML:edXMLHeader>
      <edXML:MessageHeader>
        <edXML:From>
          <edXML:OrganId>000.00.00.G22</edXML:OrganId>
          <edXML:OrganizationInCharge>Văn phòng Chính phủ</edXML:OrganizationInCharge>
          <edXML:OrganName>Văn phòng Chính phủ</edXML:OrganName>
          <edXML:OrganAdd>Số 1 Hoàng Hoa Thám, Quận Ba Đình, Hà Nội</edXML:OrganAdd>
          <edXML:Email>vpcp@gov.vn</edXML:Email>
          <edXML:Telephone>8043100</edXML:Telephone>
          <edXML:Fax>048989898789</edXML:Fax>
          <edXML:Website>vpcp.vn</edXML:Website>
        </edXML:From>
        <edXML:To>
          <edXML:OrganId>000.00.00.H41</edXML:OrganId>
          <edXML:OrganName>UBND Tỉnh Nghệ An</edXML:OrganName>
        </edXML:To>
        <edXML:To>
          <edXML:OrganId>000.00.00.H14</edXML:OrganId>
          <edXML:OrganName>UBND Tỉnh Cao Bằng</edXML:OrganName>
        </edXML:To>
        <edXML:DocumentId>000.00.00.G22,2018/09/28,7816/VPCP-TTĐT</edXML:DocumentId>
        <edXML:Code>
          <edXML:CodeNumber>7816</edXML:CodeNumber>
          <edXML:CodeNotation>VPCP-TTĐT</edXML:CodeNotation>
        </edXML:Code>
        <edXML:PromulgationInfo>
          <edXML:Place>Hà Nội</edXML:Place>
          <edXML:PromulgationDate>2018/09/28</edXML:PromulgationDate>
        </edXML:PromulgationInfo>
        <edXML:DocumentType>
          <edXML:Type>1</edXML:Type>
          <edXML:TypeDetail>0</edXML:TypeDetail>
          <edXML:TypeName>Công văn</edXML:TypeName>
        </edXML:DocumentType>
        <edXML:Subject>{SUBJECT}</edXML:Subject>
        <edXML:Content>V/v kết nối, liên thông phần mềm quản lý văn bản</edXML:Content>
        <edXML:SignerInfo>
          <edXML:Competence>TL. BO TRUONG</edXML:Competence>
          <edXML:Position>Cuc truong</edXML:Position>
          <edXML:FullName>Nguyen Thanh Phuc</edXML:FullName>
        </edXML:SignerInfo>
        <edXML:DueDate>2018/10/28</edXML:DueDate>
        <edXML:OtherInfo>
          <edXML:Priority>0</edXML:Priority>
          <edXML:PageAmount>2</edXML:PageAmount>
          <edXML:Direction>false</edXML:Direction>
        </edXML:OtherInfo>
        <edXML:SteeringType>1</edXML:SteeringType>
        <edXML:ToPlaces>
          <edXML:Place>Cac bo va co quan ngang bo</edXML:Place>
        </edXML:ToPlaces>
      </edXML:MessageHeader>
      <edXML:TraceHeaderList>
        <edXML:TraceHeader>
          <edXML:OrganId>000.00.00.G22</edXML:OrganId>
          <edXML:Timestamp>2018/09/28 16:35:56</edXML:Timestamp>
        </edXML:TraceHeader>
        <edXML:Bussiness>
          <edXML:BussinessDocType>0</edXML:BussinessDocType>
          <edXML:BussinessDocReason>Văn bản điện tử mới</edXML:BussinessDocReason>
          <edXML:Paper>0</edXML:Paper>
        </edXML:Bussiness>
      </edXML:TraceHeaderList>
      <Signature>
        <SignedInfo><Reference URI=""/></SignedInfo>
        <SignatureValue>GbVb8n9+</SignatureValue>
      </Signature>
    </edXML:edXMLHeader>
    <edXML:edXMLBody>
      <edXML:edXMLManifest version="1.0">
        <edXML:Reference>
          <edXML:ContentId>cid:209</edXML:ContentId>
          <edXML:ContentType>application/zip</edXML:ContentType>
          <edXML:AttachmentName>1896_QD-TTg.doc</edXML:AttachmentName>
        </edXML:Reference>
      </edXML:edXMLManifest>
    </edXML:edXMLBody>
  </edXML:edXMLEnvelope>
  <AttachmentEncoded>
    <Attachment>
      <ContentId>cid:209</ContentId>
      <AttachmentName>1896_QD-TTg.doc</AttachmentName>
      <ContentType>application/zip</ContentType>
      <ContentTransferEncoded>{attachment}</ContentTransferEncoded>
    </Attachment>
  </AttachmentEncoded>
</edXML>
"""
