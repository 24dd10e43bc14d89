"""`lienthong build` writes what `send` would sign; `lienthong show` says what a package says."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from lxml import etree

from exchange.cli import main
from exchange.edxml import names
from exchange.edxml.model import DocumentPackage
from exchange.edxml.reader import read_package
from exchange.status import BusinessDocType
from tests.unit.test_reader import DOCUMENT, STATUS, with_text

# The reader's test document, with the recipient name the schema requires.
VALID_DOCUMENT = DOCUMENT.replace(
    "<OrganId>000.00.00.H14</OrganId>\n        </To>",
    "<OrganId>000.00.00.H14</OrganId>\n"
    "          <OrganName>UBND Tỉnh Cao Bằng</OrganName>\n        </To>",
)
assert VALID_DOCUMENT != DOCUMENT

BUILD = [
    "build",
    "--from",
    "000.00.00.G22",
    "--sender-name",
    "Văn phòng Chính phủ",
    "--to",
    "000.00.00.G09=Bộ Nội vụ",
    "--to",
    "000.46.24.H44",
    "--number",
    "101",
    "--notation",
    "VPCP-TH",
    "--subject",
    "Về việc liên thông văn bản",
    "--date",
    "2026-11-25",
    "--signer",
    "Nguyễn Văn A",
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_build_writes_an_unsigned_package_that_validates_with_every_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    attached = tmp_path / "quyết định.pdf"
    attached.write_bytes(b"%PDF-1.4 " + bytes(range(256)) * 8)
    out = tmp_path / "out.edxml"
    code, printed, _ = run(capsys, *BUILD, "--attach", str(attached), "-o", str(out))
    assert code == 0 and str(out) in printed

    package = read_package(out.read_bytes())
    assert isinstance(package, DocumentPackage)
    assert str(package.sender.organ_id) == "000.00.00.G22"
    assert package.sender.organ_name == "Văn phòng Chính phủ"
    assert [str(c) for c in package.recipient_codes] == ["000.00.00.G09", "000.46.24.H44"]
    assert package.recipients[0].organ_name == "Bộ Nội vụ"
    assert package.document_id == "000.00.00.G22,2026/11/25,101/VPCP-TH"
    assert package.subject == "Về việc liên thông văn bản"
    assert package.business_doc_type is BusinessDocType.NEW
    (attachment,) = package.attachments
    assert attachment.attachment_name == "quyết định.pdf"
    assert attachment.decode() == attached.read_bytes()
    # Unsigned: no Signature element at all.
    assert etree.fromstring(out.read_bytes()).find(f".//{{{names.DSIG_NS}}}Signature") is None

    code, printed, _ = run(capsys, "validate", str(out))
    assert code == 0, printed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--date", "2024-13-01"], "--date '2024-13-01' is not a date"),
        (["--to", "28.22.H17"], "28.22.H17"),
        (["--attach", "/nonexistent/file.pdf"], "cannot read /nonexistent/file.pdf"),
        (["-o", "/nonexistent/dir/out.edxml"], "cannot write /nonexistent/dir/out.edxml"),
    ],
)
def test_build_refuses_bad_options_in_one_line(
    change: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*BUILD, *change]
    if "-o" not in change:
        argv += ["-o", str(tmp_path / "out.edxml")]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lienthong: ") and message in lines[0]


def test_show_json_has_the_fields_of_a_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "doc.edxml"
    path.write_text(VALID_DOCUMENT, encoding="utf-8")
    code, out, _ = run(capsys, "show", "--json", str(path))
    assert code == 0
    (shown,) = json.loads(out)
    assert shown["file"] == str(path) and shown["ok"] is True
    assert shown["kind"] == "document"
    assert shown["from"] == "000.00.00.G22"
    assert shown["to"] == ["000.00.00.H41", "000.00.00.H14"]
    assert shown["document_id"] == "000.00.00.G22,2015/09/30,7816/VPCP-TTĐT"
    assert shown["code"] == "7816/VPCP-TTĐT"
    assert shown["subject"] == "V/v kết nối"
    assert shown["business"] == "update"
    assert shown["promulgation_date"] == "2015/09/30"
    assert shown["due_date"] == "2015/10/15"
    assert shown["trace"] == [{"organ_id": "000.00.00.G22", "timestamp": "2015/09/30 08:15:00"}]
    # "UEsDBA==" is four bytes once decoded: a zip's first bytes, no whole zip.
    assert shown["attachments"] == [
        {
            "name": "a.doc",
            "content_type": "application/zip",
            "size": 4,
            "description": "QĐ",
            "zipped": True,
            "original_size": None,
        }
    ]
    assert shown["warnings"] == []


def test_show_sizes_attachments_as_decoded_bytes_whatever_the_line_breaks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for size in (1, 2, 3, 1000, 1001):
        encoded = base64.encodebytes(bytes(size)).decode()  # lines of 76 characters
        path = tmp_path / f"doc{size}.edxml"
        path.write_bytes(with_text("ContentTransferEncoded", encoded, VALID_DOCUMENT))
        code, out, _ = run(capsys, "show", "--json", str(path))
        assert code == 0
        assert json.loads(out)[0]["attachments"][0]["size"] == size


def test_show_text_names_the_status_and_warns_of_relayed_impossible_days(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = tmp_path / "status.edxml"
    status.write_bytes(with_text("ResponseFor/PromulgationDate", "31/04/2024", STATUS))
    code, out, _ = run(capsys, "show", str(status))
    assert code == 0
    assert out.splitlines()[0] == f"{status}: status"
    assert "03 Đã tiếp nhận" in out
    assert "Warnings:" in out and "'31/04/2024'" in out

    code, out, _ = run(capsys, "show", "--json", str(status))
    (shown,) = json.loads(out)
    assert (shown["kind"], shown["status_code"], shown["to"]) == ("status", "03", ["000.00.00.G22"])
    assert shown["response_for"][0]["promulgation_date"] is None
    assert [w.split(":")[0] for w in shown["warnings"]] == [
        "MessageHeader/ResponseFor/PromulgationDate"
    ]


def test_show_gives_an_unreadable_package_the_reason_validate_gives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.edxml"
    good.write_text(VALID_DOCUMENT, encoding="utf-8")
    bad = tmp_path / "bad.edxml"
    bad.write_bytes(with_text("PromulgationInfo/PromulgationDate", "2015/02/30", VALID_DOCUMENT))
    _, validated, _ = run(capsys, "validate", str(bad))
    code, out, _ = run(capsys, "show", str(good), str(bad))
    assert code == 1
    assert validated.strip() in out.splitlines()
    assert "REJECTED_BAD_DATE" in validated and "2015/02/30" in validated

    code, out, _ = run(capsys, "show", "--json", str(good), str(bad))
    assert code == 1
    first, second = json.loads(out)
    assert first["ok"] is True and second["ok"] is False
    assert second["reason_code"] == "REJECTED_BAD_DATE"
    assert any("2015/02/30" in problem for problem in second["problems"])


def test_show_gives_the_unzipped_size_of_a_file_the_library_zipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The library zips a .txt and labels it application/zip; a reader gets the file inside."""
    import io
    import zipfile

    original = "Nội dung công văn\n".encode() * 500
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("cong-van.txt", original)
    zipped = buffer.getvalue()
    root = etree.fromstring(VALID_DOCUMENT.encode())
    for name in ("AttachmentName",):
        for element in root.iter(f"{{{names.EDXML_NS}}}{name}"):
            element.text = "cong-van.txt"
    encoded = root.find(f".//{{{names.EDXML_NS}}}ContentTransferEncoded")
    assert encoded is not None
    encoded.text = base64.b64encode(zipped).decode()
    path = tmp_path / "zipped.edxml"
    path.write_bytes(etree.tostring(root))

    code, out, _ = run(capsys, "show", "--json", str(path))
    assert code == 0, out
    (attached,) = json.loads(out)[0]["attachments"]
    assert attached["zipped"] is True
    assert (attached["size"], attached["original_size"]) == (len(zipped), len(original))
    code, out, _ = run(capsys, "show", str(path))
    assert f"zipped: {len(original) / 1024:.1f} KiB unzipped" in out
