"""Every real-world package in ../shared/samples/edxml reads, or is refused, as expected.

The table says, per file, what the exchange must make of it. The samples are
someone else's real packages (see their README): the compatibility target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from exchange.edxml.model import DocumentPackage, StatusPackage
from exchange.edxml.reader import read_package
from exchange.edxml.writer import write_package
from exchange.reasons import Reason, Rejection
from exchange.status import BusinessDocType, StatusCode

pytestmark = pytest.mark.samples

ATTACHMENT = "1896_QD-TTg_m_294779.doc"


@dataclass(frozen=True)
class Document:
    """A sample that must read as a document package."""

    recipients: int
    doc_type: BusinessDocType
    attachments: tuple[str, ...] = (ATTACHMENT,)


@dataclass(frozen=True)
class Status:
    """A sample that must read as a status package."""

    code: StatusCode


EXPECTED: dict[str, Document | Status | Reason] = {
    # A From element is never closed.
    "edoc.edxml": Reason.NOT_WELL_FORMED,
    # Its only To is 28.22.H17, three groups instead of four.
    "edoc_new.edxml": Reason.BAD_AGENCY_CODE,
    "edoc_revocation.edxml": Document(3, BusinessDocType.REVOCATION),
    "edoc_update.edxml": Document(3, BusinessDocType.UPDATE),
    "edoc_replacement.edxml": Document(3, BusinessDocType.REPLACEMENT),
    "status.edxml": Status(StatusCode.ARRIVED),
    "status_inbox_01.edxml": Status(StatusCode.ARRIVED),
    "status_rejection_02.edxml": Status(StatusCode.RETURNED),
    "status_acceptance_03.edxml": Status(StatusCode.ACCEPTED),
    "status_assignment_04.edxml": Status(StatusCode.ASSIGNED),
    "status_processing_05.edxml": Status(StatusCode.PROCESSING),
    "status_finish_06.edxml": Status(StatusCode.DONE),
    "status_cancellation_13.edxml": Status(StatusCode.RECALL_REQUESTED),
    "status_change-acceptance_15.edxml": Status(StatusCode.RECALL_AGREED),
    "status_change-rejection_16.edxml": Status(StatusCode.RECALL_REFUSED),
}


def test_every_sample_has_an_expected_outcome(samples_dir: Path) -> None:
    assert {path.name for path in samples_dir.glob("*.edxml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_reads_as_expected(samples_dir: Path, name: str) -> None:
    data = (samples_dir / name).read_bytes()
    expected = EXPECTED[name]
    if isinstance(expected, Reason):
        with pytest.raises(Rejection) as caught:
            read_package(data)
        assert caught.value.reason is expected
        assert caught.value.problems, "a rejection must say where and what"
        return
    package = read_package(data)
    if isinstance(expected, Document):
        assert isinstance(package, DocumentPackage)
        assert len(package.recipients) == expected.recipients
        assert package.business_doc_type is expected.doc_type
        assert tuple(a.attachment_name for a in package.attachments) == expected.attachments
        # The attachment is a real zip file, base64-encoded.
        assert package.attachments[0].decode().startswith(b"PK\x03\x04")
    else:
        assert isinstance(package, StatusPackage)
        assert package.status_code is expected.code
        assert package.response_for.code == "7816/VPCP-TTĐT"
    # Whatever reads also survives being written out and read again.
    assert read_package(write_package(package)) == package


def test_new_document_sample_is_refused_for_its_recipient_code(samples_dir: Path) -> None:
    with pytest.raises(Rejection) as caught:
        read_package((samples_dir / "edoc_new.edxml").read_bytes())
    assert [p.where for p in caught.value.problems] == ["MessageHeader/To[1]/OrganId"]
    assert "28.22.H17" in caught.value.problems[0].what


def test_repaired_new_document_sample_reads(samples_dir: Path) -> None:
    """With its recipient code repaired, edoc_new.edxml reads, quirks and all."""
    data = (samples_dir / "edoc_new.edxml").read_bytes().replace(b"28.22.H17", b"000.28.22.H17")
    package = read_package(data)
    assert isinstance(package, DocumentPackage)
    assert package.business_doc_type is BusinessDocType.NEW
    # Its Bussiness/DocumentId is dated 30 February: kept as text, not refused.
    assert package.business is not None
    assert package.business.document_id == "000.00.00.G22,2014/02/30,7806/VPCP-TTĐT"
    assert package.other_info is not None and package.other_info.direction is False


def test_repaired_unclosed_sample_reads_with_its_empty_response_for(samples_dir: Path) -> None:
    """edoc.edxml without its stray <From>: ToPlaces before OtherInfo, an empty ResponseFor."""
    data = (samples_dir / "edoc.edxml").read_bytes()
    data = re.sub(rb"<edXML:From>\s*<edXML:From>", b"<edXML:From>", data, count=1)
    # It also uses the edXML: and xlink: prefixes where they are not declared,
    # and its trace names a short code.
    data = data.replace(
        b'<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016">',
        b'<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016" '
        b'xmlns:edXML="http://www.mic.gov.vn/TBT/QCVN_102_2016" '
        b'xmlns:xlink="http://www.w3.org/1999/xlink">',
    ).replace(b"01.02.G22", b"000.01.02.G22")
    package = read_package(data)
    assert isinstance(package, DocumentPackage)
    assert package.response_for == ()
    assert package.to_places == ("Các bộ",)
    assert package.other_info is not None and package.other_info.appendixes == ("Phụ lục",)
    assert package.document_id == "9fbfbad2-f1f8-4256-a2eb-50fb1061cddb"
    assert package.document_id_parts is None
