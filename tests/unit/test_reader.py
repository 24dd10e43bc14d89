"""The reader accepts what real senders vary and refuses, with a reason and a path, what matters."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from lxml import etree

from exchange.agency import AgencyCode, InvalidAgencyCode
from exchange.edxml import model, names
from exchange.edxml.model import DocumentPackage, StatusPackage
from exchange.edxml.reader import (
    parse_date,
    parse_timestamp,
    read_document,
    read_package,
    read_status,
)
from exchange.reasons import Reason, Rejection
from exchange.settings import ParserLimits
from exchange.status import BusinessDocType, Priority, StatusCode, SteeringType

NS = names.EDXML_NS

DOCUMENT = f"""<?xml version="1.0" encoding="UTF-8"?>
<edXML xmlns="{NS}">
  <edXMLEnvelope>
    <edXMLHeader>
      <MessageHeader>
        <From>
          <OrganId>000.00.00.G22</OrganId>
          <OrganizationInCharge>VPCP</OrganizationInCharge>
          <OrganName>Văn phòng Chính phủ</OrganName>
        </From>
        <To>
          <OrganId>000.00.00.H41</OrganId>
          <OrganName>UBND Tỉnh Nghệ An</OrganName>
        </To>
        <To>
          <OrganId>000.00.00.H14</OrganId>
        </To>
        <DocumentId>000.00.00.G22,2015/09/30,7816/VPCP-TTĐT</DocumentId>
        <Code>
          <CodeNumber>7816</CodeNumber>
          <CodeNotation>VPCP-TTĐT</CodeNotation>
        </Code>
        <PromulgationInfo>
          <Place>Hà Nội</Place>
          <PromulgationDate>2015/09/30</PromulgationDate>
        </PromulgationInfo>
        <DocumentType>
          <Type>1</Type>
          <TypeDetail>0</TypeDetail>
          <TypeName>Công văn</TypeName>
        </DocumentType>
        <Subject>V/v kết nối</Subject>
        <Content>Nội dung</Content>
        <SignerInfo>
          <Competence>TL. BỘ TRƯỞNG</Competence>
          <Position>Cục trưởng</Position>
          <FullName>Nguyễn Thanh Phúc</FullName>
        </SignerInfo>
        <DueDate>2015/10/15</DueDate>
        <OtherInfo>
          <Priority>1</Priority>
          <PromulgationAmount>2</PromulgationAmount>
          <PageAmount>22</PageAmount>
          <Direction>false</Direction>
          <Appendixes>
            <Appendix>Phụ lục</Appendix>
          </Appendixes>
        </OtherInfo>
        <ResponseFor>
          <OrganId>000.00.00.H14</OrganId>
          <Code>267/VPCP-TTĐT</Code>
          <PromulgationDate>2015/08/06</PromulgationDate>
          <DocumentId>000.00.00.H14,2015/08/06,267/VPCP-TTĐT</DocumentId>
        </ResponseFor>
        <SteeringType>1</SteeringType>
        <ToPlaces>
          <Place>Các bộ</Place>
          <Place>UBND các tỉnh</Place>
        </ToPlaces>
      </MessageHeader>
      <TraceHeaderList>
        <TraceHeader>
          <OrganId>000.00.00.G22</OrganId>
          <Timestamp>2015/09/30 08:15:00</Timestamp>
        </TraceHeader>
        <Bussiness>
          <BussinessDocType>2</BussinessDocType>
          <BussinessDocReason>Cập nhật</BussinessDocReason>
          <Paper>0</Paper>
          <BussinessDocumentInfo>
            <DocumentInfo>1</DocumentInfo>
            <DocumentReceiver>1</DocumentReceiver>
            <ReceiverList>
              <Receiver>
                <OrganId>000.00.00.H41</OrganId>
                <ReceiverType>0</ReceiverType>
              </Receiver>
            </ReceiverList>
          </BussinessDocumentInfo>
          <ReplacementInfoList>
            <ReplacementInfo>
              <DocumentId>000.00.00.G22,2014/01/30,7806/VPCP-TTĐT</DocumentId>
              <OrganIdList>
                <OrganId>000.00.00.H41</OrganId>
              </OrganIdList>
            </ReplacementInfo>
          </ReplacementInfoList>
          <StaffInfo>
            <Department>Văn thư</Department>
            <Staff>Trâm</Staff>
            <Mobile>0912</Mobile>
            <Email>a@b.vn</Email>
          </StaffInfo>
        </Bussiness>
      </TraceHeaderList>
    </edXMLHeader>
    <edXMLBody>
      <edXMLManifest version="1.0">
        <Reference>
          <ContentId>cid:209</ContentId>
          <ContentType>application/zip</ContentType>
          <Description>QĐ</Description>
          <AttachmentName>a.doc</AttachmentName>
        </Reference>
      </edXMLManifest>
    </edXMLBody>
  </edXMLEnvelope>
  <AttachmentEncoded>
    <Attachment>
      <ContentId>cid:209</ContentId>
      <AttachmentName>a.doc</AttachmentName>
      <Description>QĐ</Description>
      <ContentType>application/zip</ContentType>
      <ContentTransferEncoded>UEsDBA==</ContentTransferEncoded>
    </Attachment>
  </AttachmentEncoded>
</edXML>
"""

STATUS = f"""<?xml version="1.0" encoding="UTF-8"?>
<edXML xmlns="{NS}">
  <edXMLEnvelope>
    <edXMLHeader>
      <MessageHeader>
        <From>
          <OrganId>000.00.00.H41</OrganId>
          <OrganName>UBND Tỉnh Nghệ An</OrganName>
        </From>
        <ResponseFor>
          <OrganId>000.00.00.G22</OrganId>
          <Code>7816/VPCP-TTĐT</Code>
          <PromulgationDate>2015/09/30</PromulgationDate>
          <DocumentId>000.00.00.G22,2015/09/30,7816/VPCP-TTĐT</DocumentId>
        </ResponseFor>
        <StaffInfo>
          <Department>Văn thư</Department>
          <Staff>Trâm</Staff>
        </StaffInfo>
        <StatusCode>03</StatusCode>
        <Description>Đã tiếp nhận</Description>
        <Timestamp>2015/09/20 11:08:36</Timestamp>
      </MessageHeader>
    </edXMLHeader>
  </edXMLEnvelope>
</edXML>
"""


def tree(text: str = DOCUMENT) -> etree._Element:
    return etree.fromstring(text.encode())


def q(path: str) -> str:
    """An ElementPath in the edXML namespace: 'A/B' -> './/{ns}A/{ns}B'."""
    return ".//" + "/".join(names.q(step) for step in path.split("/"))


def element(root: etree._Element, path: str) -> etree._Element:
    found = root.find(q(path))
    assert found is not None, path
    return found


def with_text(path: str, value: str, text: str = DOCUMENT) -> bytes:
    root = tree(text)
    element(root, path).text = value
    return etree.tostring(root)


def without(path: str, text: str = DOCUMENT) -> bytes:
    root = tree(text)
    target = element(root, path)
    target.getparent().remove(target)
    return etree.tostring(root)


def replaced(old: str, new: str, text: str = DOCUMENT) -> str:
    """``text`` with ``old`` replaced, failing loudly if ``old`` is not there."""
    assert old in text, old
    return text.replace(old, new)


def rejection(data: bytes | etree._Element) -> Rejection:
    with pytest.raises(Rejection) as caught:
        read_package(data)
    return caught.value


BASELINE = read_package(DOCUMENT.encode())
STATUS_BASELINE = read_package(STATUS.encode())


# -- reading every field ---------------------------------------------------------------------


def test_document_fields_are_read() -> None:
    package = BASELINE
    assert isinstance(package, DocumentPackage)
    assert package.sender.organ_id == AgencyCode.parse("000.00.00.G22")
    assert package.sender.organization_in_charge == "VPCP"
    assert [str(code) for code in package.recipient_codes] == ["000.00.00.H41", "000.00.00.H14"]
    assert str(package.code) == "7816/VPCP-TTĐT"
    assert package.promulgation.promulgation_date == date(2015, 9, 30)
    assert package.document_type is not None and package.document_type.type_name == "Công văn"
    assert package.signer is not None and package.signer.full_name == "Nguyễn Thanh Phúc"
    assert package.due_date == date(2015, 10, 15)
    assert package.other_info is not None
    assert package.other_info.priority is Priority.URGENT
    assert (package.other_info.page_amount, package.other_info.direction) == (22, False)
    assert package.other_info.appendixes == ("Phụ lục",)
    assert package.response_for[0].code == "267/VPCP-TTĐT"
    assert package.steering_type is SteeringType.DIRECTIVE
    assert package.to_places == ("Các bộ", "UBND các tỉnh")
    assert package.trace[0].timestamp == datetime(2015, 9, 30, 8, 15)
    assert package.business is not None
    assert package.business_doc_type is BusinessDocType.UPDATE
    assert package.business.document_info is not None
    assert package.business.document_info.receivers[0].receiver_type == "0"
    assert package.business.replacements[0].organ_ids == (AgencyCode.parse("000.00.00.H41"),)
    assert package.business.staff is not None and package.business.staff.mobile == "0912"
    assert package.manifest is not None and package.manifest.version == "1.0"
    assert package.attachments[0].attachment_name == "a.doc"
    assert package.attachments[0].decode() == b"PK\x03\x04"


def test_status_fields_are_read() -> None:
    status = STATUS_BASELINE
    assert isinstance(status, StatusPackage)
    assert status.sender.organ_id == AgencyCode.parse("000.00.00.H41")
    assert status.response_for.organ_id == AgencyCode.parse("000.00.00.G22")
    assert status.response_for.document_id == "000.00.00.G22,2015/09/30,7816/VPCP-TTĐT"
    assert status.status_code is StatusCode.ACCEPTED
    assert status.timestamp == datetime(2015, 9, 20, 11, 8, 36)
    assert status.staff is not None and status.staff.staff == "Trâm"


def test_a_message_header_with_status_code_is_a_status_package() -> None:
    assert isinstance(read_status(STATUS.encode()), StatusPackage)
    assert isinstance(read_document(DOCUMENT.encode()), DocumentPackage)


def test_read_document_refuses_a_status_package() -> None:
    with pytest.raises(Rejection) as caught:
        read_document(STATUS.encode())
    assert caught.value.reason is Reason.SCHEMA_INVALID
    assert "status package" in caught.value.problems[0].what


def test_read_status_refuses_a_document_package() -> None:
    with pytest.raises(Rejection) as caught:
        read_status(DOCUMENT.encode())
    assert caught.value.reason is Reason.MISSING_FIELD
    assert caught.value.problems[0].where == "MessageHeader/StatusCode"


def test_an_element_is_read_as_is_without_parsing_again() -> None:
    root = tree()
    element(root, "MessageHeader/Subject").text = "changed in the tree"
    assert read_package(root).subject == "changed in the tree"  # type: ignore[union-attr]
    assert read_package(root.getroottree()) == read_package(root)  # type: ignore[arg-type]


def test_bytes_go_through_the_hardened_parser_and_its_limits() -> None:
    with pytest.raises(Rejection) as caught:
        read_package(DOCUMENT.encode(), ParserLimits(max_package_bytes=100))
    assert caught.value.reason is Reason.TOO_LARGE
    assert rejection(DOCUMENT.encode()[:-20]).reason is Reason.NOT_WELL_FORMED


def test_other_input_types_are_a_programming_error() -> None:
    with pytest.raises(TypeError):
        read_package(DOCUMENT)  # type: ignore[arg-type]


# -- tolerance ----------------------------------------------------------------------------


@pytest.mark.parametrize("written", ["2015/09/30", "30/09/2015", "2015-09-30", " 2015/9/30 "])
def test_dates_in_every_form_real_senders_use(written: str) -> None:
    package = read_package(with_text("PromulgationInfo/PromulgationDate", written))
    assert package == BASELINE


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("2015/09/20 11:08:36", datetime(2015, 9, 20, 11, 8, 36)),
        ("20/09/2015 11:08:36", datetime(2015, 9, 20, 11, 8, 36)),
        ("2015-09-20T11:08:36", datetime(2015, 9, 20, 11, 8, 36)),
        ("2015-09-20 11:08:36", datetime(2015, 9, 20, 11, 8, 36)),
        ("2015-09-20T11:08:36.250", datetime(2015, 9, 20, 11, 8, 36)),
        ("2015-09-20T11:08:36+07:00", datetime(2015, 9, 20, 11, 8, 36)),
        ("2015-09-20T04:08:36Z", datetime(2015, 9, 20, 11, 8, 36)),
        ("2015/09/20", datetime(2015, 9, 20)),
    ],
)
def test_timestamps_in_every_form_real_senders_use(written: str, meant: datetime) -> None:
    status = read_status(with_text("MessageHeader/Timestamp", written, STATUS))
    assert status.timestamp == meant


def test_date_and_timestamp_parsers_say_none_for_nonsense() -> None:
    assert parse_date("2015/02/30") is None
    assert parse_date("hôm qua") is None
    assert parse_timestamp("2015/09/20 25:00:00") is None
    assert parse_date("2015/09/20 00:00:00") == date(2015, 9, 20)


def test_business_spelled_correctly_reads_like_the_wire_spelling() -> None:
    text = replaced("Bussiness", "Business")
    assert "Bussiness" not in text
    assert read_package(text.encode()) == BASELINE


def test_cid_prefix_on_one_side_only_still_matches() -> None:
    only_manifest = tree()
    element(only_manifest, "Attachment/ContentId").text = "209"
    only_attachment = tree()
    element(only_attachment, "Reference/ContentId").text = "209"
    for root in (only_manifest, only_attachment):
        package = read_document(etree.tostring(root))
        assert package.manifest is not None
        assert package.attachment(package.manifest.references[0].content_id) is not None


def test_prefixed_and_default_namespace_read_the_same() -> None:
    root = tree()
    # Moved under a root that maps the namespace to a prefix, every element takes it.
    prefixed = etree.Element(names.ROOT, nsmap={"edXML": NS})
    prefixed[:] = list(root)
    text = etree.tostring(prefixed)
    assert b"<edXML:edXML" in text and b"<edXML:Subject>" in text
    assert read_package(text) == BASELINE
    other_prefix = text.replace(b"edXML:", b"x:").replace(b"xmlns:edXML", b"xmlns:x")
    assert read_package(other_prefix) == BASELINE


def test_element_order_does_not_matter() -> None:
    root = tree()
    for parent in root.iter():
        if isinstance(parent.tag, str) and len(parent) > 1:
            children = list(parent)
            # Reverse, but keep repeated siblings (To, Place) in their order.
            groups: dict[str, list[etree._Element]] = {}
            for child in children:
                groups.setdefault(child.tag, []).append(child)
            parent[:] = [c for tag in reversed(list(groups)) for c in groups[tag]]
    assert read_package(etree.tostring(root)) == BASELINE


def test_organ_name_before_organization_in_charge_and_to_places_before_other_info() -> None:
    root = tree()
    sender = element(root, "MessageHeader/From")
    sender.insert(1, element(root, "From/OrganName"))
    message = element(root, "MessageHeader")
    message.insert(
        list(message).index(element(root, "MessageHeader/OtherInfo")),
        element(root, "MessageHeader/ToPlaces"),
    )
    assert read_package(etree.tostring(root)) == BASELINE


def test_whitespace_around_values_is_ignored() -> None:
    root = tree()
    for node in root.iter():
        if isinstance(node.tag, str) and len(node) == 0 and node.text:
            node.text = f"\n\t  {node.text}  \n"
    assert read_package(etree.tostring(root)) == BASELINE


def test_comments_inside_values_are_ignored() -> None:
    text = replaced(
        "<Subject>V/v kết nối</Subject>", "<Subject><!-- trích yếu -->V/v kết nối</Subject>"
    )
    assert read_package(text.encode()) == BASELINE


def test_empty_response_for_is_absent() -> None:
    empty = (
        "<ResponseFor><OrganId></OrganId><Code> </Code>"
        "<PromulgationDate></PromulgationDate><DocumentId/></ResponseFor>"
    )
    root = tree(replaced("<SteeringType>", empty + "<SteeringType>"))
    document = read_document(etree.tostring(root))
    assert document == BASELINE
    alone = tree(replaced("<SteeringType>", empty + "<SteeringType>"))
    first = element(alone, "MessageHeader/ResponseFor")
    first.getparent().remove(first)
    assert read_document(etree.tostring(alone)).response_for == ()


def test_structured_code_inside_response_for_is_read_as_number_and_notation() -> None:
    text = replaced(
        "<Code>267/VPCP-TTĐT</Code>",
        "<Code><CodeNumber>267</CodeNumber><CodeNotation>VPCP-TTĐT</CodeNotation></Code>",
    )
    assert read_package(text.encode()) == BASELINE


def test_signatures_in_either_namespace_are_ignored() -> None:
    signatures = (
        f'<Signature xmlns="{names.DSIG_NS}"><SignedInfo/>'
        "<SignatureValue>AAAA</SignatureValue></Signature>"
        "<Signature><SignedInfo/><SignatureValue>AAAA</SignatureValue></Signature>"
    )
    text = replaced("</edXMLHeader>", signatures + "</edXMLHeader>")
    assert read_package(text.encode()) == BASELINE


def test_status_code_without_its_leading_zero_is_understood() -> None:
    status = read_status(with_text("MessageHeader/StatusCode", "3", STATUS))
    assert status.status_code is StatusCode.ACCEPTED


def test_attachment_without_a_name_takes_the_manifest_name() -> None:
    data = without("Attachment/AttachmentName")
    assert read_document(data).attachments[0].attachment_name == "a.doc"


def test_document_without_business_block_is_new() -> None:
    document = read_document(without("TraceHeaderList/Bussiness"))
    assert document.business is None
    assert document.business_doc_type is BusinessDocType.NEW


# -- strictness ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ("MessageHeader/From", "MessageHeader/From"),
        ("From/OrganId", "MessageHeader/From/OrganId"),
        ("MessageHeader/Code", "MessageHeader/Code"),
        ("Code/CodeNotation", "MessageHeader/Code/CodeNotation"),
        ("PromulgationInfo/PromulgationDate", "MessageHeader/PromulgationInfo/PromulgationDate"),
        ("MessageHeader/Subject", "MessageHeader/Subject"),
        ("TraceHeaderList/TraceHeader", "TraceHeaderList/TraceHeader"),
        ("TraceHeader/Timestamp", "TraceHeaderList/TraceHeader[1]/Timestamp"),
        ("Bussiness/BussinessDocType", "TraceHeaderList/Bussiness/BussinessDocType"),
        ("ResponseFor/OrganId", "MessageHeader/ResponseFor[1]/OrganId"),
        ("edXMLHeader/TraceHeaderList", "edXMLHeader/TraceHeaderList"),
        ("edXMLEnvelope/edXMLHeader", "edXMLEnvelope/edXMLHeader"),
        (
            "Attachment/ContentTransferEncoded",
            "AttachmentEncoded/Attachment[1]/ContentTransferEncoded",
        ),
    ],
)
def test_missing_required_field_names_its_path(path: str, where: str) -> None:
    problem = rejection(without(path))
    assert problem.reason is Reason.MISSING_FIELD
    assert where in [p.where for p in problem.problems]


def test_document_without_any_recipient_is_refused() -> None:
    root = tree()
    for recipient in root.findall(q("MessageHeader/To")):
        recipient.getparent().remove(recipient)
    problem = rejection(etree.tostring(root))
    assert problem.reason is Reason.MISSING_FIELD
    assert problem.problems[0].where == "MessageHeader/To"


def test_missing_organ_id_of_the_second_recipient_is_located() -> None:
    root = tree()
    second = root.findall(q("MessageHeader/To"))[1]
    second.remove(second[0])
    assert [p.where for p in rejection(etree.tostring(root)).problems] == [
        "MessageHeader/To[2]/OrganId"
    ]


def test_empty_required_field_is_missing() -> None:
    problem = rejection(with_text("MessageHeader/Subject", "   "))
    assert (problem.reason, problem.problems[0].where) == (
        Reason.MISSING_FIELD,
        "MessageHeader/Subject",
    )


def test_every_missing_field_is_reported_at_once() -> None:
    root = tree()
    for path in ("MessageHeader/Subject", "MessageHeader/Code"):
        target = element(root, path)
        target.getparent().remove(target)
    wheres = {p.where for p in rejection(etree.tostring(root)).problems}
    assert wheres == {"MessageHeader/Subject", "MessageHeader/Code"}


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ("MessageHeader/From", "MessageHeader/From"),
        ("MessageHeader/ResponseFor", "MessageHeader/ResponseFor"),
        ("MessageHeader/Timestamp", "MessageHeader/Timestamp"),
        ("ResponseFor/Code", "MessageHeader/ResponseFor/Code"),
        ("ResponseFor/OrganId", "MessageHeader/ResponseFor/OrganId"),
    ],
)
def test_status_missing_required_field_is_refused(path: str, where: str) -> None:
    problem = rejection(without(path, STATUS))
    assert problem.reason is Reason.MISSING_FIELD
    assert [p.where for p in problem.problems] == [where]


def test_status_with_an_empty_response_for_is_missing_it() -> None:
    root = tree(STATUS)
    for child in element(root, "MessageHeader/ResponseFor"):
        child.text = ""
    problem = rejection(etree.tostring(root))
    assert (problem.reason, problem.problems[0].where) == (
        Reason.MISSING_FIELD,
        "MessageHeader/ResponseFor",
    )


def test_status_about_two_documents_is_refused() -> None:
    root = tree(STATUS)
    response = element(root, "MessageHeader/ResponseFor")
    response.addnext(etree.fromstring(etree.tostring(response)))
    assert rejection(etree.tostring(root)).reason is Reason.SCHEMA_INVALID


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("PromulgationInfo/PromulgationDate", "2015/02/30"),
        ("MessageHeader/DueDate", "hôm qua"),
        ("ResponseFor/PromulgationDate", "30.09.2015"),
        ("TraceHeader/Timestamp", "2015/09/30 8h15"),
    ],
)
def test_unparseable_date_names_path_and_value(path: str, value: str) -> None:
    problem = rejection(with_text(path, value))
    assert problem.reason is Reason.BAD_DATE
    assert problem.problems[0].where.endswith(path.split("/")[-1])
    assert value in problem.problems[0].what


@pytest.mark.parametrize(
    ("path", "value", "text"),
    [
        ("OtherInfo/Priority", "9", DOCUMENT),
        ("MessageHeader/SteeringType", "x", DOCUMENT),
        ("Bussiness/BussinessDocType", "5", DOCUMENT),
        ("MessageHeader/StatusCode", "07", STATUS),
    ],
)
def test_value_outside_its_code_list_is_refused(path: str, value: str, text: str) -> None:
    problem = rejection(with_text(path, value, text))
    assert problem.reason is Reason.BAD_CODE_LIST
    assert problem.problems[0].where.endswith(path.split("/")[-1])
    assert repr(value) in problem.problems[0].what


@pytest.mark.parametrize(
    "path",
    [
        "To/OrganId",
        "From/OrganId",
        "TraceHeader/OrganId",
        "Receiver/OrganId",
        "OrganIdList/OrganId",
    ],
)
def test_malformed_agency_code_is_refused_with_the_parsers_explanation(path: str) -> None:
    with pytest.raises(InvalidAgencyCode) as expected:
        AgencyCode.parse("28.22.H17")
    problem = rejection(with_text(path, "28.22.H17"))
    assert problem.reason is Reason.BAD_AGENCY_CODE
    assert problem.problems[0].what == str(expected.value)


def test_malformed_agency_code_in_a_status_is_refused() -> None:
    problem = rejection(with_text("ResponseFor/OrganId", "000.00.00.g22", STATUS))
    assert problem.reason is Reason.BAD_AGENCY_CODE
    assert problem.problems[0].where == "MessageHeader/ResponseFor/OrganId"


def test_problems_of_one_kind_are_collected() -> None:
    root = tree()
    for recipient in root.findall(q("MessageHeader/To")):
        element(recipient, "OrganId").text = "1.2.3"
    problem = rejection(etree.tostring(root))
    assert [p.where for p in problem.problems] == [
        "MessageHeader/To[1]/OrganId",
        "MessageHeader/To[2]/OrganId",
    ]


@pytest.mark.parametrize(
    "text",
    [
        f'<?xml version="1.0"?><html xmlns="{NS}"/>',
        '<?xml version="1.0"?><edXML xmlns="http://example.org/other"/>',
        '<?xml version="1.0"?><edXML><edXMLEnvelope/></edXML>',
    ],
)
def test_wrong_root_or_namespace_is_not_edxml(text: str) -> None:
    assert rejection(text.encode()).reason is Reason.NOT_EDXML


def test_element_outside_the_edxml_namespace_is_missing_and_says_why() -> None:
    text = replaced("<Subject>V/v kết nối</Subject>", '<Subject xmlns="">V/v kết nối</Subject>')
    problem = rejection(text.encode())
    assert problem.reason is Reason.MISSING_FIELD
    assert "not in the edXML namespace" in problem.problems[0].what


def test_manifest_entry_without_its_attachment_is_refused() -> None:
    problem = rejection(with_text("Attachment/ContentId", "cid:210"))
    assert problem.reason is Reason.MISSING_FIELD
    assert problem.problems[0].where == "edXMLManifest/Reference[1]"


def test_amount_that_is_not_a_number_is_refused() -> None:
    problem = rejection(with_text("OtherInfo/PageAmount", "hai mươi"))
    assert (problem.reason, problem.problems[0].where) == (
        Reason.SCHEMA_INVALID,
        "MessageHeader/OtherInfo/PageAmount",
    )


# -- attachments are decoded lazily ------------------------------------------------------------


def test_twenty_megabyte_package_reads_without_decoding_its_attachments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three files of 7 MB each: libxml2 refuses a single text node over 10 MB
    # unless the parser allows huge trees, which the hardened parser does not.
    root = tree()
    attachment = element(root, "AttachmentEncoded/Attachment")
    attachment.find(names.q("ContentTransferEncoded")).text = "!!!!" * (7 * 1024 * 256)
    for n in (2, 3):
        copy = etree.fromstring(etree.tostring(attachment))
        copy.find(names.q("ContentId")).text = f"cid:{n}"
        attachment.addnext(copy)
    data = etree.tostring(root)
    assert len(data) > 20 * 1024 * 1024
    calls: list[object] = []
    real = model.binascii.a2b_base64
    monkeypatch.setattr(
        model.binascii, "a2b_base64", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    document = read_document(data)
    assert calls == []
    assert document.subject == "V/v kết nối"
    assert len(document.attachments) == 3
    with pytest.raises(Rejection) as caught:
        document.attachments[2].decode()
    assert caught.value.reason is Reason.BAD_ATTACHMENT
    assert calls != []


# -- impossible days: refused in the package's own fields, warnings where relayed -------------


@pytest.mark.parametrize(
    ("path", "value", "text"),
    [
        ("MessageHeader/DocumentId", "000.00.00.G22,2015/02/30,7816/VPCP-TTĐT", DOCUMENT),
        ("PromulgationInfo/PromulgationDate", "31/04/2024", DOCUMENT),
        ("PromulgationInfo/PromulgationDate", "2024/04/31", DOCUMENT),
        ("MessageHeader/Timestamp", "2015/02/29 11:08:36", STATUS),
    ],
)
def test_impossible_day_in_the_packages_own_fields_is_refused(
    path: str, value: str, text: str
) -> None:
    problem = rejection(with_text(path, value, text))
    assert problem.reason is Reason.BAD_DATE
    assert problem.problems[0].where.endswith(path.split("/")[-1])
    assert value.split(",")[1 if "," in value else 0] in problem.problems[0].what
    assert "not a day of the calendar" in problem.problems[0].what


@pytest.mark.parametrize(
    ("path", "value", "text"),
    [
        ("Bussiness/DocumentId", "000.00.00.G22,2014/02/30,7806/VPCP-TTĐT", None),
        ("ReplacementInfo/DocumentId", "000.00.00.G22,2014/02/30,7806/VPCP-TTĐT", DOCUMENT),
        ("ResponseFor/PromulgationDate", "31/04/2024", DOCUMENT),
        ("ResponseFor/DocumentId", "000.00.00.H14,2015/02/29,267/VPCP-TTĐT", DOCUMENT),
        ("TraceHeader/Timestamp", "2015/09/31 08:15:00", DOCUMENT),
        ("ResponseFor/PromulgationDate", "2015/02/30", STATUS),
    ],
)
def test_impossible_day_in_a_relayed_part_is_a_warning(
    path: str, value: str, text: str | None
) -> None:
    if text is None:  # the baseline's Bussiness has no DocumentId: add one
        root = tree(DOCUMENT)
        business = element(root, "TraceHeaderList/Bussiness")
        business.insert(0, etree.Element(names.q("DocumentId")))
        business[0].text = value
        data = etree.tostring(root)
    else:
        data = with_text(path, value, text)
    package = read_package(data)
    assert len(package.warnings) == 1
    warning = package.warnings[0]
    assert warning.startswith(path.split("/")[0]) or path.split("/")[0] in warning
    assert warning.split(":")[0].endswith(path.split("/")[-1])
    assert (value.split(",")[1] if "," in value else value) in warning


def test_a_relayed_impossible_day_reads_as_no_date_and_keeps_the_rest() -> None:
    package = read_package(with_text("ResponseFor/PromulgationDate", "31/04/2024"))
    assert isinstance(package, DocumentPackage)
    assert package.response_for[0].promulgation_date is None
    assert package.response_for[0].document_id == "000.00.00.H14,2015/08/06,267/VPCP-TTĐT"
    trace = read_package(with_text("TraceHeader/Timestamp", "2015/02/30 08:15:00"))
    assert isinstance(trace, DocumentPackage)
    assert trace.trace[0].timestamp is None
    assert trace.subject == BASELINE.subject


def test_a_package_with_real_days_has_no_warnings() -> None:
    assert BASELINE.warnings == ()
    assert STATUS_BASELINE.warnings == ()


def test_a_relayed_date_that_is_no_date_at_all_is_still_refused() -> None:
    """Only a well-formed date naming no day is let through; garbage is refused wherever it is."""
    assert rejection(with_text("ResponseFor/PromulgationDate", "hôm qua")).reason is Reason.BAD_DATE
