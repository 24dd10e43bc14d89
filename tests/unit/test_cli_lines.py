"""What `lienthong statuses` prints for a receipt: the reason in the clerk's language; warnings."""

from __future__ import annotations

from datetime import UTC, datetime

from exchange.cli import _status_line
from exchange.reasons import Reason, Rejection
from exchange.receipts import Receipt
from exchange.status import MessageKind, TransportOutcome


def _receipt(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "message_id": "m-1",
        "document_id": "000.00.00.G22,2026/12/06,1/VPCP",
        "kind": MessageKind.DOCUMENT,
        "recipient": "000.00.00.G09",
        "sha256": "0" * 64,
        "at": datetime(2026, 12, 6, tzinfo=UTC),
    }
    base.update(fields)
    return Receipt.model_validate(base).model_dump(mode="json")


def test_a_refusal_is_told_in_the_language_asked() -> None:
    rejection = Rejection.of(Reason.SIGNATURE_MISSING, "no Signature", "Signature")
    line = _receipt(
        outcome=TransportOutcome.REJECTED,
        reason_code=rejection.code,
        reason=rejection.explain("vi"),
        reason_en=rejection.explain("en"),
    )
    assert Reason.SIGNATURE_MISSING.vietnamese.rstrip(".") in _status_line(line, "vi")
    english = _status_line(line, "en")
    assert Reason.SIGNATURE_MISSING.english in english
    assert Reason.SIGNATURE_MISSING.vietnamese.rstrip(".") not in english


def test_a_delivered_receipt_shows_its_warnings() -> None:
    warning = "MessageHeader/ResponseFor[1]/PromulgationDate: '2024/04/31' is not a day"
    line = _status_line(_receipt(outcome=TransportOutcome.DELIVERED, warnings=[warning]), "en")
    assert line.endswith(f"delivered; warning: {warning}")
