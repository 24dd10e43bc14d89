"""Receipts: the JSON that tells a sender what became of its message."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from exchange.reasons import Reason, Rejection
from exchange.receipts import Receipt, receipt_json_schema, schema_path
from exchange.status import MessageKind, TransportOutcome


def test_committed_receipt_schema_is_generated_from_the_model() -> None:
    committed = schema_path().read_text(encoding="utf-8")
    assert committed == receipt_json_schema(), (
        "schemas/receipt.schema.json is stale; regenerate it with "
        "`lienthong schema receipt > schemas/receipt.schema.json`"
    )


def test_a_rejection_receipt_names_the_reason_in_vietnamese_and_the_code() -> None:
    rejection = Rejection.of(Reason.NOT_ADDRESSED, "000.00.00.H26 is not among To", "To")
    receipt = Receipt.rejected(
        rejection,
        message_id="m-1",
        recipient="000.00.00.H26",
        sha256="ab" * 32,
        kind=MessageKind.DOCUMENT,
        sender="000.00.00.G22",
        at=datetime(2026, 1, 2, tzinfo=UTC),
    )
    body = json.loads(receipt.to_bytes())
    assert body["outcome"] == TransportOutcome.REJECTED.value
    assert body["reason_code"] == "REJECTED_NOT_ADDRESSED"
    assert body["reason"].startswith("Cơ quan nhận không có trong danh sách nơi nhận")
    assert body["problems"] == ["To: 000.00.00.H26 is not among To"]
    assert Receipt.model_validate_json(receipt.to_bytes()) == receipt
