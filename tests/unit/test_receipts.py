"""Receipts: the JSON that tells a sender what became of its message."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from exchange.agency import AgencyCode
from exchange.ledger import receipt_for
from exchange.reasons import Reason, Rejection
from exchange.receipts import Receipt, receipt_json_schema, schema_path
from exchange.status import MessageKind, TransportOutcome
from exchange.store.records import Message


def test_committed_receipt_schema_is_generated_from_the_model() -> None:
    committed = schema_path().read_text(encoding="utf-8")
    assert committed == receipt_json_schema(), (
        "schemas/receipt.schema.json is stale; regenerate it with "
        "`lienthong schema receipt > schemas/receipt.schema.json`"
    )


def test_a_rejection_receipt_names_the_reason_in_vietnamese_and_the_code() -> None:
    rejection = Rejection.of(Reason.NOT_ADDRESSED, "000.00.00.H26 is not among To", "To")
    at = datetime(2026, 1, 2, tzinfo=UTC)
    # The ledger's record of the refusal, as the store returns it.
    record = Message(
        pk=1,
        dedup_key="cd" * 32,
        amqp_message_id="m-1",
        routing_key="000.00.00.H26",
        broker_user="000.00.00.G22",
        sha256="ab" * 32,
        received_at=at,
        kind=MessageKind.DOCUMENT,
        sender=AgencyCode.parse("000.00.00.G22"),
        outcome=TransportOutcome.REJECTED,
        reason_code=rejection.code,
        reason_detail="\n".join(str(p) for p in rejection.problems),
        document_pk=None,
        document_id=None,
        attempts=1,
        published_at=None,
        updated_at=at,
    )
    receipt = receipt_for(record, "000.00.00.H26")
    body = json.loads(receipt.to_bytes())
    assert body["outcome"] == TransportOutcome.REJECTED.value
    assert body["reason_code"] == "REJECTED_NOT_ADDRESSED"
    assert body["reason"].startswith("Cơ quan nhận không có trong danh sách nơi nhận")
    assert body["problems"] == ["To: 000.00.00.H26 is not among To"]
    assert Receipt.model_validate_json(receipt.to_bytes()) == receipt
