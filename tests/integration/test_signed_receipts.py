"""Signed receipts through the real worker, broker and database, checked as an agency would.

The sender's own client reads its status queue; each receipt is saved to a
file and checked with ``lienthong receipt verify FILE --trust CA`` (a
process of its own), then edited and checked again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
from datetime import timedelta
from pathlib import Path

import aio_pika
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import REGISTRY

from exchange import cli
from exchange.benchmark.processes import lienthong_command
from exchange.broker.topology import STATUS_EXCHANGE
from exchange.demo import demo_document
from exchange.pki import issue_exchange_certificate
from exchange.receipts import RECEIPT_CONTENT_TYPE, ReceiptProblem, ReceiptSignatureError
from exchange.status import TransportOutcome
from tests.crash.supervisor import worker_env
from tests.exchange_fixtures import ExchangeUnderTest, wait_for
from tests.integration.test_worker_start import only_line, run_to_end

pytestmark = pytest.mark.services

SENDER = "000.00.00.G22"  # Văn phòng Chính phủ
RECIPIENT = "000.00.00.G09"  # Bộ Nội vụ
OTHER = "000.00.00.H26"  # UBND Thành phố Hà Nội: registered, not addressed


def receipt_verify(*files: Path, trust: Path) -> subprocess.CompletedProcess[str]:
    """``lienthong receipt verify FILES --trust CA``, as an agency's operator runs it."""
    return subprocess.run(
        [*lienthong_command(), "receipt", "verify", *map(str, files), "--trust", str(trust)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_receipts_the_sender_receives_verify_with_the_cli_and_fail_once_edited(
    exchange: ExchangeUnderTest, tmp_path: Path
) -> None:
    sender = await exchange.register(SENDER, "Văn phòng Chính phủ")
    recipient = await exchange.register(RECIPIENT)
    await exchange.register(OTHER)
    document = demo_document(sender, [recipient], 101, "VPCP-TH", "Về việc ký biên nhận")

    async with exchange.workers(2):
        async with sender.client() as client:
            signed = client.sign(document)
            await client.submit(signed, [RECIPIENT])  # delivered
            await client.submit(signed, [OTHER])  # rejected: not among To
        await exchange.wait_settled(2)
        # The sender's client holds the CA: item.receipt is verified on reading.
        news = await exchange.statuses_of(sender)

    assert sorted(item.receipt.outcome for item in news) == sorted(
        [TransportOutcome.DELIVERED, TransportOutcome.REJECTED]
    )
    files = []
    for item in news:
        receipt = item.receipt
        assert receipt.signature is not None
        assert receipt.sha256 == hashlib.sha256(signed).hexdigest()
        file = tmp_path / f"{receipt.outcome.value}.json"
        file.write_bytes(item.body)
        files.append(file)
    trust = exchange.local.keys_dir / "ca.cert.pem"

    verified = await asyncio.to_thread(receipt_verify, *files, trust=trust)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    lines = verified.stdout.splitlines()
    print("\n" + "\n".join(lines))
    assert len(lines) == 2
    assert all(": OK (" in line and "signed by CN=lienthong exchange" in line for line in lines)
    assert any("rejected REJECTED_NOT_ADDRESSED" in line for line in lines)

    # The rejection turned into a delivery: the kind of edit a receipt must not survive.
    rejected = tmp_path / "rejected.json"
    edited = json.loads(rejected.read_bytes())
    edited.update(outcome="delivered", reason_code=None, reason=None, reason_en=None, problems=[])
    rejected.write_text(json.dumps(edited, ensure_ascii=False), encoding="utf-8")

    refused = await asyncio.to_thread(receipt_verify, rejected, trust=trust)
    assert refused.returncode == 1
    assert refused.stderr == ""
    (line,) = refused.stdout.splitlines()
    assert line.startswith(f"{rejected}: RECEIPT_BAD_SIGNATURE: the signature does not match")

    # Checked against another CA, the genuine receipt is untrusted.
    other_ca = await asyncio.to_thread(
        subprocess.run,
        [*lienthong_command(), "keys", "init", "--dir", str(tmp_path / "other")],
        capture_output=True,
        check=True,
    )
    assert other_ca.returncode == 0
    untrusted = await asyncio.to_thread(
        receipt_verify, tmp_path / "delivered.json", trust=tmp_path / "other" / "ca.cert.pem"
    )
    assert untrusted.returncode == 1
    assert ": RECEIPT_UNTRUSTED: " in untrusted.stdout


async def test_the_published_certificate_is_the_one_in_the_receipts(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(SENDER)
    recipient = await exchange.register(RECIPIENT)
    document = demo_document(sender, [recipient], 7, "VPCP-TH", "Về việc công bố chứng thư")
    async with exchange.workers(1):
        async with sender.client() as client:
            await client.send_document(document)
        await exchange.wait_settled(1)
        (item,) = await exchange.statuses_of(sender)

    env = {**os.environ, "LIENTHONG_RECEIPT_CERT": str(exchange.settings.receipt_cert)}
    published = await asyncio.to_thread(
        subprocess.run,
        [*lienthong_command(), "schema", "receipt-cert"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert sender.receipt_trust is not None
    signer = item.verify_receipt(sender.receipt_trust).signer  # the receipt's x5c
    assert published.stdout == signer.public_bytes(Encoding.PEM).decode()


def _reloads(outcome: str) -> float:
    return REGISTRY.get_sample_value("lienthong_trust_reloads_total", {"outcome": outcome}) or 0.0


async def sighup_and_wait(outcome: str) -> None:
    """SIGHUP this process (the workers run in it); wait until they reloaded, or failed to."""
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, None)
    before = _reloads(outcome)
    os.kill(os.getpid(), signal.SIGHUP)

    async def reloaded() -> tuple[bool, str]:
        return _reloads(outcome) > before, f"no {outcome} reload yet"

    await wait_for(reloaded)


def receipt_certificate_expiry() -> float | None:
    return REGISTRY.get_sample_value("lienthong_receipt_certificate_expiry_timestamp_seconds")


async def test_sighup_rolls_the_receipt_key_over_and_a_broken_pair_leaves_the_current_one(
    exchange: ExchangeUnderTest, tmp_path: Path
) -> None:
    sender = await exchange.register(SENDER)
    recipient = await exchange.register(RECIPIENT)
    key, cert = exchange.settings.receipt_key, exchange.settings.receipt_cert
    assert key is not None and cert is not None
    first = x509.load_pem_x509_certificate(cert.read_bytes())
    # The next pair: the same CA, a new key, a later end date.
    following = issue_exchange_certificate(
        exchange.local.ca, valid_for=timedelta(days=900), directory=tmp_path, stem="next"
    )
    number = 0

    async def signer_of_the_next_receipt() -> x509.Certificate:
        nonlocal number
        number += 1
        document = demo_document(sender, [recipient], number, "VPCP-TH", "Về việc đổi khoá")
        async with sender.client() as client:
            await client.send_document(document)
        await exchange.wait_settled(number)
        items = [i for i in await exchange.statuses_of(sender) if i.receipt is not None]
        assert sender.receipt_trust is not None and len(items) == 1
        return items[0].verify_receipt(sender.receipt_trust).signer

    async with exchange.workers(1):
        assert receipt_certificate_expiry() == first.not_valid_after_utc.timestamp()
        assert await signer_of_the_next_receipt() == first

        shutil.copyfile(tmp_path / "next.key.pem", key)
        shutil.copyfile(tmp_path / "next.cert.pem", cert)
        await sighup_and_wait("ok")
        assert await signer_of_the_next_receipt() == following.certificate
        expiry = following.certificate.not_valid_after_utc.timestamp()
        assert receipt_certificate_expiry() == expiry

        # A certificate that is not the key's: refused, the new pair stays in use.
        cert.write_bytes(first.public_bytes(Encoding.PEM))
        await sighup_and_wait("failed")
        assert await signer_of_the_next_receipt() == following.certificate
        assert receipt_certificate_expiry() == expiry


async def test_the_client_refuses_a_receipt_the_exchange_did_not_sign(
    exchange: ExchangeUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whoever can publish to the status exchange cannot make the sender believe a receipt."""
    sender = await exchange.register(SENDER)
    forged = {
        "type": "receipt",
        "message_id": "m-forged",
        "kind": "document",
        "sender": SENDER,
        "recipient": RECIPIENT,
        "outcome": "delivered",
        "sha256": "ab" * 32,
        "at": "2026-11-25T08:30:00Z",
        "signature": None,
    }
    connection = await aio_pika.connect(exchange.settings.amqp_url)
    try:
        channel = await connection.channel()
        target = await channel.get_exchange(STATUS_EXCHANGE, ensure=False)
        await target.publish(
            aio_pika.Message(
                json.dumps(forged).encode(),
                content_type=RECEIPT_CONTENT_TYPE,
                message_id="m-forged",
            ),
            routing_key=SENDER,
        )
    finally:
        await connection.close()

    # `lienthong statuses --trust CA` prints it as refused and leaves it on the queue.
    queue = f"lienthong.status.{sender.code}"
    ca = exchange.local.keys_dir / "ca.cert.pem"
    argv = ["statuses", "--as", SENDER, "--trust", str(ca), "--idle", "1"]
    status = await asyncio.to_thread(cli.main, [*argv, "--amqp-url", sender.amqp_url])
    (line,) = capsys.readouterr().out.splitlines()
    assert status == 1
    assert line.startswith("receipt m-forged: RECEIPT_UNSIGNED: the receipt carries no signature")
    assert await exchange.queue_depth(queue) == 1

    # The client library with the trust anchor refuses to hand it over as a receipt.
    (item,) = await exchange.statuses_of(sender)
    assert item.is_receipt
    with pytest.raises(ReceiptSignatureError) as refused:
        _ = item.receipt
    assert refused.value.problem is ReceiptProblem.UNSIGNED


async def test_a_worker_without_a_receipt_key_refuses_to_start_with_one_line(
    exchange: ExchangeUnderTest,
) -> None:
    env = worker_env(exchange.settings)
    del env["LIENTHONG_RECEIPT_KEY"], env["LIENTHONG_RECEIPT_CERT"]
    # Nor from the machine's settings file (a development machine's names one).
    env["LIENTHONG_SETTINGS_FILE"] = "/dev/null"

    status, out, err = await run_to_end(env)

    assert status == 2
    assert only_line(err) == (
        "lienthong: no receipt key: set LIENTHONG_RECEIPT_KEY and LIENTHONG_RECEIPT_CERT to "
        "the exchange's key and certificate (`lienthong keys issue-exchange`), or "
        "LIENTHONG_UNSIGNED_RECEIPTS=true on a development exchange"
    )
    assert out == ""


async def test_a_worker_given_an_agency_certificate_as_its_receipt_key_refuses_to_start(
    exchange: ExchangeUnderTest,
) -> None:
    agency = await exchange.register(SENDER)
    key, cert = agency.credential.write(exchange.local.keys_dir, "not-the-exchange")
    env = worker_env(exchange.settings, receipt_key=str(key), receipt_cert=str(cert))

    status, _, err = await run_to_end(env)

    assert status == 2
    line = only_line(err)
    assert "has no receipt-signing ExtendedKeyUsage" in line, line
    assert "lienthong keys issue-exchange" in line
