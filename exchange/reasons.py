"""Why a package is refused: one stable machine code and a sentence for the clerk.

Every rejection the exchange makes names one :class:`Reason`. The code is
stable (receipts, metrics labels, the replay tool and agency software match on
it); the sentences say, in Vietnamese for the agency clerk and in English for
the operator, what is wrong and what to do about it. A :class:`Rejection`
carries the reason plus the specific detail (which field, which value).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Reason(Enum):
    """Every reason the exchange gives for refusing a package."""

    # -- the bytes ----------------------------------------------------------
    NOT_WELL_FORMED = (
        "Gói tin không phải XML hợp lệ (thẻ chưa đóng, ký tự lạ, bị cắt cụt, hoặc chứa "
        "chú thích hay chỉ thị xử lý); hãy xuất lại gói tin từ phần mềm quản lý văn bản.",
        "the package is not well-formed XML (an unclosed tag, a stray character, "
        "or it was cut short), or holds comments or processing instructions",
    )
    NOT_UTF8 = (
        "Gói tin phải được mã hóa UTF-8; hãy xuất lại gói tin với bảng mã UTF-8.",
        "the package is not encoded in UTF-8",
    )
    FORBIDDEN_DTD = (
        "Gói tin chứa khai báo DOCTYPE hoặc thực thể (entity), điều không được phép "
        "trong edXML; hãy xuất lại gói tin không có DOCTYPE.",
        "the package declares a DOCTYPE or entities, which edXML does not allow",
    )
    TOO_LARGE = (
        "Gói tin vượt quá dung lượng tối đa cho phép; hãy giảm kích thước tệp đính kèm "
        "hoặc gửi thành nhiều văn bản.",
        "the package is larger than the exchange accepts",
    )
    TOO_DEEP = (
        "Gói tin lồng quá nhiều cấp thẻ XML so với cấu trúc edXML.",
        "the package nests elements deeper than any edXML package needs",
    )
    NOT_EDXML = (
        "Gói tin không phải edXML theo QCVN 102:2016 (sai phần tử gốc hoặc không gian tên).",
        "the package is not edXML: wrong root element or namespace",
    )
    # -- the content --------------------------------------------------------
    SCHEMA_INVALID = (
        "Gói tin không đúng cấu trúc edXML (QCVN 102:2016): thiếu, thừa hoặc sai trường "
        "thông tin như chi tiết bên dưới.",
        "the package does not follow the edXML schema",
    )
    MISSING_FIELD = (
        "Gói tin thiếu trường thông tin bắt buộc.",
        "a required field is missing",
    )
    BAD_DATE = (
        "Ngày hoặc thời gian trong gói tin không đúng định dạng yyyy/MM/dd "
        "(hoặc yyyy/MM/dd HH:mm:ss).",
        "a date or timestamp is not in the format yyyy/MM/dd (HH:mm:ss)",
    )
    BAD_TIMESTAMP = (
        "Thời điểm báo trạng thái (Timestamp) lệch quá xa so với thời điểm trục liên thông "
        "nhận được; hãy kiểm tra đồng hồ của máy chủ phần mềm quản lý văn bản và báo lại "
        "trạng thái với thời điểm đúng.",
        "the status Timestamp is too far from when the exchange received it; check the "
        "clock of the document-management system and report the status again",
    )
    BAD_CODE_LIST = (
        "Giá trị trong gói tin không thuộc danh mục mã quy định (trạng thái, loại văn bản, "
        "độ khẩn, ...).",
        "a value is not in its code list (status, document type, priority, ...)",
    )
    BAD_ATTACHMENT = (
        "Tệp đính kèm không giải mã được (nội dung base64 bị lỗi hoặc bị cắt cụt); "
        "hãy đính kèm lại tệp và gửi lại văn bản.",
        "an attachment's base64 content cannot be decoded",
    )
    BAD_AGENCY_CODE = (
        "Mã định danh cơ quan không đúng định dạng DDD.DD.DD.LNN theo QCVN 102:2016.",
        "an agency code is not of the form DDD.DD.DD.LNN",
    )
    # -- the signature ------------------------------------------------------
    SIGNATURE_MISSING = (
        "Gói tin chưa được ký số; hãy ký số gói tin bằng chứng thư số của cơ quan trước khi gửi.",
        "the package is not signed",
    )
    SIGNATURE_INVALID = (
        "Chữ ký số không khớp với nội dung: gói tin đã bị thay đổi sau khi ký "
        "hoặc được ký bằng khóa khác.",
        "the signature does not match the document; it was changed after signing "
        "or signed with another key",
    )
    SIGNATURE_ALGORITHM = (
        "Chữ ký số dùng thuật toán không còn được chấp nhận (ví dụ SHA-1); "
        "hãy ký lại với RSA hoặc ECDSA và SHA-256.",
        "the signature uses an algorithm the exchange does not accept (for example SHA-1)",
    )
    SIGNATURE_SCOPE = (
        "Chữ ký số không bao trùm toàn bộ gói tin hoặc không nằm đúng vị trí trong edXMLHeader.",
        "the signature does not cover the whole package, or is not where edXML puts it",
    )
    CERT_UNTRUSTED = (
        "Chứng thư số không do tổ chức chứng thực được tin cậy cấp.",
        "the certificate was not issued by a trusted certification authority",
    )
    CERT_EXPIRED = (
        "Chứng thư số đã hết hạn hoặc chưa có hiệu lực.",
        "the certificate has expired or is not yet valid",
    )
    CERT_NO_AGENCY = (
        "Chứng thư số không ghi mã định danh của cơ quan.",
        "the certificate does not name an agency code",
    )
    CERT_REVOKED = (
        "Chứng thư số đã bị thu hồi; hãy ký lại gói tin bằng chứng thư số còn hiệu lực "
        "đã đăng ký với trục liên thông.",
        "the certificate has been revoked by its certification authority; sign with a "
        "valid certificate registered with the exchange",
    )
    CRL_STALE = (
        "Trục liên thông tạm thời không kiểm tra được tình trạng thu hồi chứng thư số của "
        "tổ chức chứng thực đã cấp chứng thư; hãy gửi lại sau và báo cho quản trị trục.",
        "the exchange's revocation list for the certificate's CA is out of date, so it "
        "cannot tell whether the certificate is revoked; send again later and tell the "
        "exchange's operator",
    )
    CERT_NOT_REGISTERED = (
        "Chứng thư số dùng để ký chưa được đăng ký cho cơ quan gửi trên trục liên thông; "
        "hãy đề nghị quản trị trục đăng ký chứng thư số này.",
        "the signing certificate is not one registered for the sending agency; ask the "
        "exchange's operator to register it",
    )
    KEY_TOO_WEAK = (
        "Khóa của chứng thư số quá yếu (RSA dưới 2048 bit hoặc đường cong elliptic không "
        "phải P-256, P-384, P-521); hãy xin cấp chứng thư số với khóa đủ mạnh.",
        "a key in the certificate chain is too weak (RSA below 2048 bits, or an elliptic "
        "curve other than P-256, P-384 or P-521)",
    )
    CERT_IS_CA = (
        "Gói tin được ký bằng chứng thư số của tổ chức chứng thực, không phải của cơ quan; "
        "hãy ký bằng chứng thư số cấp cho cơ quan.",
        "the package is signed with a CA certificate, not with an agency's certificate",
    )
    CA_CANNOT_SIGN = (
        "Chứng thư số trung gian không được phép cấp chứng thư (thiếu keyCertSign); "
        "hãy dùng chứng thư số do tổ chức chứng thực hợp lệ cấp.",
        "an intermediate certificate in the chain may not issue certificates "
        "(its KeyUsage lacks keyCertSign)",
    )
    CERT_ALGORITHM = (
        "Chứng thư số được ký bằng thuật toán không còn được chấp nhận (dưới SHA-256); "
        "hãy xin cấp lại chứng thư số.",
        "a certificate in the chain is signed with an algorithm below SHA-256",
    )
    # -- who sends to whom --------------------------------------------------
    SENDER_MISMATCH = (
        "Cơ quan gửi ghi trong gói tin không trùng với cơ quan đã ký số hoặc tài khoản gửi.",
        "the sender named in the package is not the agency that signed or published it",
    )
    SENDER_DISABLED = (
        "Cơ quan gửi đã bị tạm ngừng trên trục liên thông; hãy liên hệ đơn vị vận hành trục.",
        "the sending agency is disabled on the exchange (`lienthong agency disable`)",
    )
    QUOTA = (
        "Cơ quan gửi đã gửi quá số gói tin được phép trong một khoảng thời gian; gói tin "
        "này chưa được xử lý, hãy gửi lại sau ít phút.",
        "the sending agency published more messages than its rate allows; this one was "
        "not processed: send it again in a few minutes",
    )
    NOT_ADDRESSED = (
        "Cơ quan nhận không có trong danh sách nơi nhận (To) của văn bản.",
        "the recipient in the routing key is not among the package's To",
    )
    UNKNOWN_RECIPIENT = (
        "Cơ quan nhận chưa đăng ký trên trục liên thông.",
        "the recipient is not registered on the exchange",
    )
    UNKNOWN_DOCUMENT = (
        "Văn bản được báo trạng thái chưa từng được gửi tới cơ quan báo trạng thái.",
        "the status is for a document never delivered to the reporting agency",
    )
    ILLEGAL_TRANSITION = (
        "Trạng thái báo về không hợp lệ sau trạng thái hiện tại của văn bản.",
        "the status is not allowed after the document's current status",
    )
    DUPLICATE_DOCUMENT = (
        "Đã có văn bản khác cùng mã văn bản (DocumentId) với nội dung khác.",
        "another document with the same DocumentId and different content exists",
    )

    def __init__(self, vietnamese: str, english: str) -> None:
        self.vietnamese = vietnamese
        self.english = english

    @property
    def code(self) -> str:
        """The stable machine code, as written in receipts and metrics."""
        return f"REJECTED_{self.name}"

    @classmethod
    def from_code(cls, code: str) -> Reason | None:
        """The reason with this machine code, or ``None`` for a code it does not know."""
        return cls.__members__.get(code.removeprefix("REJECTED_"))


def with_problems(sentence: str, problems: list[str]) -> str:
    """A reason's sentence followed by the specific problems, punctuated as one sentence."""
    if not problems:
        return sentence
    return f"{sentence.rstrip('.')}: " + "; ".join(problems)


@dataclass(frozen=True)
class Problem:
    """One specific thing wrong: where (an element path, a field) and what.

    ``reason`` is the most specific reason this one problem stands for, when
    a check knows it (a missing field, a bad date); a rejection whose
    problems all share one such reason is given that reason.
    """

    where: str
    what: str
    reason: Reason | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" if self.where else self.what


@dataclass(eq=False)
class Rejection(Exception):
    """A package refused for ``reason``, with the specific problems found."""

    reason: Reason
    problems: tuple[Problem, ...] = field(default_factory=tuple)
    # Raised before the package's signature was verified and accepted (set by
    # the pipeline): nobody is proven to have sent it, so the record keeps
    # only the start of its body (junk, see exchange/ledger.py).
    before_signature: bool = False

    @classmethod
    def of(cls, reason: Reason, what: str = "", where: str = "") -> Rejection:
        """A rejection with one problem described by ``what`` (at ``where``)."""
        return cls(reason, (Problem(where, what),) if what else ())

    @property
    def code(self) -> str:
        """The stable machine code."""
        return self.reason.code

    def explain(self, language: str = "en") -> str:
        """One line for a person: the reason's sentence and the specifics."""
        sentence = self.reason.vietnamese if language == "vi" else self.reason.english
        if not self.problems:
            return sentence
        return with_problems(sentence, [str(p) for p in self.problems])

    def __str__(self) -> str:
        return f"{self.code}: {self.explain()}"
