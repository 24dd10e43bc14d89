"""What signing a receipt costs the worker: unsigned, ES256 (ECDSA P-256), RS256 (RSA-2048).

Usage::

    .venv/bin/python bench/receipts.py [--json] [--repeat N]

For one receipt as the ledger builds it from a record (``ledger.receipt_for``:
a rejection with its Vietnamese reason and one problem), it times, per
round, one of each:

* ``unsigned``: :meth:`exchange.receipts.Receipt.to_bytes`, the body
  without a signature (``LIENTHONG_UNSIGNED_RECEIPTS``);
* ``es256``: :meth:`exchange.receipts.ReceiptSigner.sign` with the
  exchange's default key, ECDSA P-256 (deterministic, RFC 6979);
* ``rs256``: the same with an RSA-2048 key;
* ``verify``: :func:`exchange.receipts.verify_receipt` of the ES256 body
  against the CA (what an agency spends per receipt).

Interleaved, so that a change in the machine's load weighs on all alike;
the medians and the bodies' sizes are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from exchange.agency import AgencyCode
from exchange.ledger import receipt_for
from exchange.pki import KeyType, TrustStore, create_ca, issue_exchange_certificate
from exchange.reasons import Reason, Rejection
from exchange.receipts import ReceiptSigner, verify_receipt
from exchange.status import MessageKind, TransportOutcome
from exchange.store.records import Message


def the_receipt_record() -> Message:
    """A rejected message's record, as the store returns it."""
    at = datetime.now(UTC)
    rejection = Rejection.of(Reason.NOT_ADDRESSED, "000.00.00.H26 is not among To", "To")
    return Message(
        pk=1,
        dedup_key="cd" * 32,
        amqp_message_id="0b5c7f7e-4f7d-4c39-9d1e-6a4b1f0e2d11",
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
        document_id="000.00.00.G22,2026/11/25,101/VPCP-TH",
        attempts=1,
        published_at=None,
        updated_at=at,
    )


def main() -> None:
    """Time each way of making a receipt and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3000, help="rounds (default 3000)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        ca = create_ca(Path(scratch))
    trust = TrustStore.from_pem(ca.cert_pem)
    es256 = ReceiptSigner(issue_exchange_certificate(ca))
    rs256 = ReceiptSigner(issue_exchange_certificate(ca, key_type=KeyType.RSA_2048))
    receipt = receipt_for(the_receipt_record(), "000.00.00.H26")
    signed = es256.sign(receipt)

    operations: dict[str, Callable[[], object]] = {
        "unsigned": receipt.to_bytes,
        "es256": lambda: es256.sign(receipt),
        "rs256": lambda: rs256.sign(receipt),
        "verify": lambda: verify_receipt(signed, trust),
    }
    times: dict[str, list[float]] = {name: [] for name in operations}
    for _ in range(args.repeat):
        for name, operation in operations.items():
            started = time.perf_counter()
            operation()
            times[name].append(time.perf_counter() - started)
    result = {
        **{f"{name}_us": round(statistics.median(t) * 1e6, 1) for name, t in times.items()},
        "unsigned_bytes": len(receipt.to_bytes()),
        "es256_bytes": len(signed),
        "rs256_bytes": len(rs256.sign(receipt)),
        "rounds": args.repeat,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"receipt, median of {args.repeat} rounds (interleaved):")
    for name in operations:
        size = result.get(f"{name}_bytes", "")
        print(f"  {name:9} {result[f'{name}_us']:8.1f} us" + (f"  {size} bytes" if size else ""))


if __name__ == "__main__":
    main()
