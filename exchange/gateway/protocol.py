"""The replies of the VXP adapter protocol, its error codes, and the body's hash.

Every reply is a JSON object with ``status`` (``OK`` or ``FAIL``),
``ErrorCode`` (``"0"`` on success) and ``ErrorDesc``, spelled exactly so:
the SDK reads these keys and fails without them. ``sendEdoc`` replies always
carry ``DocId`` and ``getEdoc`` replies ``data``, empty on a refusal,
because the SDK reads them before it looks at ``ErrorCode``. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum
from typing import Any

from exchange.reasons import Reason, Rejection

OK = "OK"
FAIL = "FAIL"


class ErrorCode(Enum):
    """Why a request is refused: a stable code and a sentence for the clerk (Vietnamese)."""

    # -- who is asking ----------------------------------------------------------
    MISSING_AUTH = ("101", "Thiếu thông tin xác thực (systemid, sign-header, hash-header).")
    UNKNOWN_SYSTEM = ("102", "Hệ thống chưa được đăng ký trên trục hoặc đã bị khóa.")
    BAD_HMAC = ("103", "Chữ ký xác thực (hash-header) không đúng với mã bí mật của hệ thống.")
    SIGNED_HEADER_MISMATCH = (
        "104",
        "Tham số đã ký trong sign-header không khớp với tham số gửi kèm.",
    )
    AGENCY_NOT_SERVED = ("105", "Hệ thống không được phép gửi, nhận thay cho cơ quan này.")
    # -- the request --------------------------------------------------------------
    BAD_PARAMETER = ("201", "Thiếu hoặc sai tham số của yêu cầu.")
    UNKNOWN_OPERATION = ("202", "Trục không hỗ trợ thao tác này.")
    TOO_LARGE = ("203", "Gói tin vượt quá dung lượng tối đa cho phép.")
    HASH_MISMATCH = (
        "204",
        "Mã băm (hash-file) không khớp với nội dung gói tin: gói tin bị thay đổi trên đường "
        "truyền; hãy gửi lại.",
    )
    WRONG_MESSAGE_TYPE = ("205", "Loại gói tin (messagetype) không khớp với nội dung gói tin.")
    # -- the package (the worker's reasons, one code each) ---------------------------
    PACKAGE_REFUSED = ("300", "Gói tin không hợp lệ.")
    NO_KEY_TO_SIGN = (
        "330",
        "Gói tin chưa được ký số và trục không giữ khóa ký của cơ quan gửi; hãy ký số gói tin "
        "hoặc đề nghị quản trị trục cấu hình khóa ký cho cơ quan.",
    )
    # -- the mailbox --------------------------------------------------------------------
    UNKNOWN_DOC = ("401", "Không có gói tin với mã docId này trong hộp thư của hệ thống.")
    BAD_STATUS = ("402", "Trạng thái phải là done, fail hoặc processing.")
    # -- refused by design ---------------------------------------------------------------
    NOT_ALLOWED = (
        "501",
        "Trục liên thông không cho đăng ký hoặc xóa cơ quan qua giao thức này; việc đăng ký "
        "cơ quan do quản trị trục thực hiện.",
    )
    # -- the exchange --------------------------------------------------------------------
    UNAVAILABLE = ("901", "Trục liên thông tạm thời không xử lý được yêu cầu; hãy gửi lại sau.")
    INTERNAL = ("999", "Lỗi nội bộ của trục liên thông; hãy gửi lại sau.")

    def __init__(self, code: str, vietnamese: str) -> None:
        self.code = code
        self.vietnamese = vietnamese


# One code per rejection reason, so a system can act on the code alone. Never
# renumber: systems match on these. A reason missing here replies 300.
REASON_CODES: dict[Reason, str] = {
    Reason.NOT_WELL_FORMED: "301",
    Reason.NOT_UTF8: "302",
    Reason.FORBIDDEN_DTD: "303",
    Reason.TOO_LARGE: "304",
    Reason.TOO_DEEP: "305",
    Reason.NOT_EDXML: "306",
    Reason.SCHEMA_INVALID: "307",
    Reason.MISSING_FIELD: "308",
    Reason.BAD_DATE: "309",
    Reason.BAD_CODE_LIST: "310",
    Reason.BAD_ATTACHMENT: "311",
    Reason.BAD_AGENCY_CODE: "312",
    Reason.SIGNATURE_MISSING: "313",
    Reason.SIGNATURE_INVALID: "314",
    Reason.SIGNATURE_ALGORITHM: "315",
    Reason.SIGNATURE_SCOPE: "316",
    Reason.CERT_UNTRUSTED: "317",
    Reason.CERT_EXPIRED: "318",
    Reason.CERT_NO_AGENCY: "319",
    Reason.SENDER_MISMATCH: "320",
    Reason.NOT_ADDRESSED: "321",
    Reason.UNKNOWN_RECIPIENT: "322",
    Reason.UNKNOWN_DOCUMENT: "323",
    Reason.ILLEGAL_TRANSITION: "324",
    Reason.DUPLICATE_DOCUMENT: "325",
    # 330 is NO_KEY_TO_SIGN; the revocation, registry and key policy reasons are 34x.
    Reason.CERT_REVOKED: "340",
    Reason.CRL_STALE: "341",
    Reason.CERT_NOT_REGISTERED: "342",
    Reason.KEY_TOO_WEAK: "343",
    Reason.CERT_IS_CA: "344",
    Reason.CA_CANNOT_SIGN: "345",
    Reason.CERT_ALGORITHM: "346",
    Reason.SENDER_DISABLED: "347",
    Reason.BAD_TIMESTAMP: "349",
    # The limits per agency are 35x.
    Reason.QUOTA: "350",
}


@dataclass(eq=False)
class GatewayError(Exception):
    """A refusal: the code, the sentence for the clerk, and the machine reason if any."""

    code: str
    description: str
    # REJECTED_... when the package checks refused it; for logs and metrics.
    reason_code: str | None = None

    @classmethod
    def of(cls, error: ErrorCode, detail: str = "") -> GatewayError:
        """A refusal with ``error``'s code and sentence, and ``detail`` after it."""
        sentence = error.vietnamese
        if detail:
            sentence = f"{sentence.rstrip('.')}: {detail}"
        return cls(error.code, sentence)

    @classmethod
    def rejected(cls, rejection: Rejection) -> GatewayError:
        """The refusal of a package the checks refused, with the receipt's Vietnamese reason."""
        code = REASON_CODES.get(rejection.reason, ErrorCode.PACKAGE_REFUSED.code)
        return cls(code, rejection.explain("vi"), rejection.code)


def reply(**fields: Any) -> dict[str, Any]:
    """A successful reply with ``fields`` besides the three every reply has."""
    return {"status": OK, "ErrorCode": "0", "ErrorDesc": "", **fields}


def refusal(error: GatewayError, **fields: Any) -> dict[str, Any]:
    """A refusal, with ``fields`` the operation's reply always carries (``DocId``, ``data``)."""
    return {"status": FAIL, "ErrorCode": error.code, "ErrorDesc": error.description, **fields}


# What every reply of an operation carries even when it is refused: the SDK
# reads it before ErrorCode and fails without it.
ALWAYS: dict[str, dict[str, Any]] = {
    "sendEdoc": {"DocId": ""},
    "getEdoc": {"data": ""},
    "getReceivedEdocList": {"data": []},
    "getSentEdocList": {"data": []},
    "getAgenciesList": {"data": []},
    "getSynchronizeUnit": {"data": []},
}


def sdk_hash(digest: bytes) -> str:
    """SHA-256 hex as the SDK writes ``hash-file``: each byte without its leading zero."""
    return "".join(format(byte, "x") for byte in digest)


def package_of(body: bytes, hash_file: str) -> bytes:
    """The package inside a ``sendEdoc`` body whose hash the SDK sent as ``hash-file``.

    The SDK writes the file followed by CRLF and hashes the file alone; its
    hex drops each byte's leading zero. The full 64-digit hex is accepted
    too. Raises :class:`GatewayError` when neither the body nor the body
    without its final CRLF has that hash.
    """
    claimed = hash_file.strip().lower()
    candidates = [body[:-2], body] if body.endswith(b"\r\n") else [body]
    for candidate in candidates:
        digest = hashlib.sha256(candidate).digest()
        for written in (sdk_hash(digest), digest.hex()):
            if hmac.compare_digest(written, claimed):
                return candidate
    raise GatewayError.of(ErrorCode.HASH_MISMATCH)
