"""Receipts: what the exchange tells a sender about each message it submitted.

A receipt is JSON on the sender's status queue (``lienthong.status.<code>``),
next to the business statuses its recipients report. Its JSON Schema,
generated from :class:`Receipt`, is published as ``schemas/receipt.schema.json``
(package data, :func:`schema_path`) so agency software in any language can
read receipts.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from exchange.installation import data_dir
from exchange.status import MessageKind, TransportOutcome

RECEIPT_CONTENT_TYPE = "application/vnd.lienthong.receipt+json"
RECEIPT_SCHEMA_ID = "https://lienthong.gov.vn/schemas/receipt.schema.json"


class Receipt(BaseModel):
    """The exchange's answer to one submitted message (a transport outcome)."""

    model_config = ConfigDict(
        frozen=True,
        json_schema_extra={"$id": RECEIPT_SCHEMA_ID, "title": "lienthong receipt"},
    )

    type: Literal["receipt"] = Field(
        "receipt", description="Always 'receipt': tells receipts from forwarded status packages."
    )
    message_id: str = Field(
        description="The AMQP message_id the sender gave the message "
        "(or the exchange's own id when the sender gave none)."
    )
    document_id: str | None = Field(
        None, description="The DocumentId of the package, when it could be read."
    )
    kind: MessageKind = Field(description="Whether the message was a document or a status.")
    sender: str | None = Field(None, description="Agency code of the authenticated sender.")
    recipient: str = Field(description="The routing key the message was published with.")
    outcome: TransportOutcome = Field(description="What the exchange did with the message.")
    reason_code: str | None = Field(
        None, description="Stable machine code of the reason (REJECTED_...), when not delivered."
    )
    reason: str | None = Field(None, description="The reason in Vietnamese, for the agency clerk.")
    reason_en: str | None = Field(None, description="The reason in English, for operators.")
    problems: list[str] = Field(
        default_factory=list, description="Each specific problem found: where, and what."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What did not stop a delivered package but should be known: where, and "
        "what (for example a day that does not exist in a part of the trace relayed from "
        "another agency).",
    )
    sha256: str = Field(description="SHA-256 of the package bytes, hex.")
    at: datetime = Field(description="When the exchange decided, UTC.")

    def to_bytes(self) -> bytes:
        """The JSON body published on the status queue."""
        return self.model_dump_json().encode()


def receipt_json_schema() -> str:
    """The published JSON Schema of receipts, as committed in ``schemas/``."""
    schema = Receipt.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def schema_path() -> Path:
    """The published receipt schema as the package ships it (``exchange/schemas/``)."""
    return data_dir("schemas") / "receipt.schema.json"
