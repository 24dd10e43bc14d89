"""Authenticating a request exactly as the SDK signs it.

The SDK sends its parameters as ``XroadVnpt-<name>`` headers, a JSON object
of those headers as the literal string ``XroadVnpt-sign-header``, and
``XroadVnpt-hash-header``, the lowercase hex HMAC-SHA256 of that string's
bytes keyed with the system's secret. The HMAC is checked over the bytes
received (never a re-serialised JSON), then each signed header's value
against the header actually sent. Headers the signature does not name
(stale parameters of earlier calls, proxies' own) are not looked at.
Pure: the secret comes from the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping

from exchange.gateway.protocol import ErrorCode, GatewayError

PREFIX = "xroadvnpt-"
SYSTEM_ID = "xroadvnpt-systemid"
SIGN_HEADER = "xroadvnpt-sign-header"
HASH_HEADER = "xroadvnpt-hash-header"
# Larger sign-headers are no SDK's: refused before any JSON is parsed.
MAX_SIGN_HEADER_CHARS = 16_384


class Headers:
    """Request headers by case-insensitive name, as the text the client wrote.

    ASGI servers hand header values over as bytes; they are kept as bytes
    (the HMAC covers them) and read as UTF-8 where possible.
    """

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        """Index ``raw`` (name, value) pairs; the first of repeated names wins."""
        self._raw: dict[str, bytes] = {}
        for name, value in raw:
            self._raw.setdefault(name.decode("latin-1").lower(), value)

    def raw(self, name: str) -> bytes | None:
        """The bytes of header ``name``, or ``None``."""
        return self._raw.get(name.lower())

    def get(self, name: str) -> str | None:
        """Header ``name`` as text (UTF-8, else Latin-1), or ``None``."""
        value = self.raw(name)
        if value is None:
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")

    def param(self, name: str) -> str | None:
        """The SDK parameter ``name`` (header ``XroadVnpt-<name>``), stripped, or ``None``."""
        value = self.get(PREFIX + name)
        return None if value is None else value.strip()


def system_id_of(headers: Headers) -> str:
    """The systemId a request claims; refuses a request without the three auth headers."""
    missing = [
        name
        for name in (SYSTEM_ID, SIGN_HEADER, HASH_HEADER)
        if not (headers.get(name) or "").strip()
    ]
    if missing:
        raise GatewayError.of(ErrorCode.MISSING_AUTH, "thiếu " + ", ".join(missing))
    system_id = headers.get(SYSTEM_ID)
    assert system_id is not None
    return system_id.strip()


def verify(headers: Headers, secret: str) -> None:
    """Refuse a request whose HMAC or signed headers do not hold for ``secret``."""
    signed_bytes = headers.raw(SIGN_HEADER) or b""
    claimed = (headers.get(HASH_HEADER) or "").strip().lower()
    expected = hmac.new(secret.encode("utf-8"), signed_bytes, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, claimed):
        raise GatewayError.of(ErrorCode.BAD_HMAC)
    signed = _signed_headers(signed_bytes)
    names = {name.lower() for name in signed}
    if SYSTEM_ID not in names:
        raise GatewayError.of(ErrorCode.SIGNED_HEADER_MISMATCH, "sign-header không có systemid")
    for name, value in signed.items():
        if headers.get(name) != value:
            raise GatewayError.of(ErrorCode.SIGNED_HEADER_MISMATCH, name)


def _signed_headers(signed_bytes: bytes) -> Mapping[str, str]:
    if len(signed_bytes) > MAX_SIGN_HEADER_CHARS:
        raise GatewayError.of(ErrorCode.SIGNED_HEADER_MISMATCH, "sign-header quá dài")
    try:
        signed = json.loads(signed_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise GatewayError.of(
            ErrorCode.SIGNED_HEADER_MISMATCH, "sign-header không phải JSON"
        ) from None
    if not isinstance(signed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in signed.items()
    ):
        raise GatewayError.of(
            ErrorCode.SIGNED_HEADER_MISMATCH, "sign-header phải là đối tượng JSON của chuỗi"
        )
    return signed


def sign_request(system_id: str, secret: str, params: Mapping[str, str]) -> list[tuple[str, str]]:
    """The headers the SDK sends for ``params`` (for tests and the demo): signed, as it signs.

    ``params`` are the parameters besides ``systemid`` (``from``,
    ``messagetype``, ...); ``Content-Type`` among them is signed as the SDK
    signs it.
    """
    values = {"systemid": system_id, **params}
    headers = {f"XroadVnpt-{name}": value for name, value in values.items()}
    # Gson's compact form: the SDK's sign-header, byte for byte.
    signed = json.dumps(headers, separators=(",", ":"), ensure_ascii=False)
    digest = hmac.new(secret.encode("utf-8"), signed.encode("utf-8"), hashlib.sha256).hexdigest()
    return [
        *headers.items(),
        ("XroadVnpt-sign-header-key", ";".join(values)),
        ("XroadVnpt-sign-header", signed),
        ("XroadVnpt-hash-header", digest),
        ("User-Agent", "JAVASDKAgent/1.0.0 XRoad/VPCP"),
        ("XroadVnpt-version", "3.0.201608"),
    ]
