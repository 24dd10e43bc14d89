"""Junk costs little: a message refused before its signature is verified keeps its start only.

Through the real worker, broker and database. One agency publishes 50
messages of 60 MiB that are not XML at all (3 GiB through the broker, from
a process of its own); the record keeps of each its first 64 KiB with the
SHA-256 and size of the whole, so under 4 MiB of bodies stay in the
database, the hash chains still verify, and the replay tool says such a
message is refused for good. Meanwhile another agency's documents go
through; their latency with and without the flood is printed (no
wall-clock assertion).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import sys
import time

import asyncpg
import pytest

from exchange.audit import verify_chains
from exchange.demo import LocalAgency, demo_document
from exchange.ledger import JUNK_KEPT_BYTES
from exchange.reasons import Reason
from exchange.replay import Action, Selection, plan_replay
from exchange.status import TransportOutcome
from tests.exchange_fixtures import ExchangeUnderTest, wait_for

pytestmark = pytest.mark.services

JUNKER = "000.00.00.G09"  # Bộ Nội vụ, or whoever holds its broker password
SENDER = "000.00.00.G22"  # Văn phòng Chính phủ
RECIPIENT = "000.00.00.H26"  # UBND Thành phố Hà Nội
JUNK_MESSAGES = 50
JUNK_BYTES = 60 * 2**20
DOCUMENTS = 10  # per phase, one at a time
POLL_S = 0.005

# The junker publishes from a process of its own, as another agency would:
# its 3 GiB of publishing does not share the workers' event loop. It prints
# "ready", then the seconds its publishing took and the CPU seconds it used,
# then the first MiB of the filler every junk body is made of.
PUBLISHER = """
import asyncio, os, sys, time
from exchange.client import AgencyClient
code, recipient, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
async def main():
    filler = os.urandom(size)
    async with AgencyClient(code, os.environ["JUNKER_AMQP_URL"]) as client:
        print("ready", flush=True)
        began = time.perf_counter()
        for number in range(count):
            head = f"junk {number:04d} ".encode()
            await client.submit(head + filler[len(head):], [recipient])
        print(f"{time.perf_counter() - began:.3f} {time.process_time():.3f}", flush=True)
    sys.stdout.buffer.write(filler[:1 << 20])
asyncio.run(main())
"""


def junk(number: int, filler: bytes) -> bytes:
    """The start of junk message ``number``: not XML at all, different for each."""
    head = f"junk {number:04d} ".encode()
    return head + filler[len(head) :]


async def start_junker(junker: LocalAgency) -> asyncio.subprocess.Process:
    """The junker's process, connected and publishing once it printed ``ready``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PUBLISHER,
        str(junker.code),
        RECIPIENT,
        str(JUNK_MESSAGES),
        str(JUNK_BYTES),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "JUNKER_AMQP_URL": junker.amqp_url},
    )
    assert process.stdout is not None
    assert await process.stdout.readline() == b"ready\n"
    return process


async def junker_finished(process: asyncio.subprocess.Process) -> tuple[float, float, bytes]:
    """Seconds the junker took to publish (each confirmed), its CPU seconds, its filler start."""
    output, _ = await process.communicate()
    assert process.returncode == 0
    times, _, filler_start = output.partition(b"\n")
    seconds, cpu = times.split()
    return float(seconds), float(cpu), filler_start


async def timed_documents(
    exchange: ExchangeUnderTest,
    sender: LocalAgency,
    recipient: LocalAgency,
    first: int,
    until: asyncio.Future[tuple[float, float, bytes]] | None = None,
    confirms: list[float] | None = None,
) -> list[float]:
    """Send documents one at a time; for each, seconds from publish to its effects confirmed.

    :data:`DOCUMENTS` of them, and more until ``until`` is done, if given;
    ``confirms`` gets the seconds the broker took to confirm each publish.
    """
    latencies: list[float] = []
    conn = await asyncpg.connect(exchange.settings.database_url)
    try:
        async with sender.client() as client:
            number = first
            while len(latencies) < DOCUMENTS or (until is not None and not until.done()):
                number += 1
                document = demo_document(sender, [recipient], number, "VPCP", "Giữa lúc bị phá")
                signed = client.sign(document)
                began = time.perf_counter()
                (message_id,) = await client.submit(signed, [RECIPIENT])
                if confirms is not None:
                    confirms.append(time.perf_counter() - began)
                while not await conn.fetchval(
                    "SELECT s.published_at IS NOT NULL FROM messages m"
                    " JOIN message_state s ON s.message_pk = m.id WHERE m.amqp_message_id = $1",
                    message_id,
                ):
                    await asyncio.sleep(POLL_S)
                latencies.append(time.perf_counter() - began)
    finally:
        await conn.close()
    return latencies


def figures(latencies: list[float]) -> str:
    """Median and worst, in milliseconds."""
    median, worst = statistics.median(latencies) * 1000, max(latencies) * 1000
    return f"median {median:.0f} ms, max {worst:.0f} ms"


async def test_junk_keeps_its_start_only_and_others_documents_go_through_meanwhile(
    exchange: ExchangeUnderTest,
) -> None:
    junker = await exchange.register(JUNKER)
    sender = await exchange.register(SENDER)
    recipient = await exchange.register(RECIPIENT)

    async with exchange.workers(2):
        usual_confirms: list[float] = []
        usual = await timed_documents(exchange, sender, recipient, 0, confirms=usual_confirms)
        began = time.perf_counter()
        junker_process = await start_junker(junker)
        flood = asyncio.ensure_future(junker_finished(junker_process))

        async def junk_recorded() -> tuple[bool, str]:
            count = await exchange.fetchval("SELECT count(*) FROM messages WHERE body_size > 0")
            return count > 0, f"{count} junk messages recorded"

        # From the first junk message decided to the last one published.
        await wait_for(junk_recorded, timeout=300)
        confirms: list[float] = []
        meanwhile = await timed_documents(
            exchange, sender, recipient, 1000, until=flood, confirms=confirms
        )
        flood_s, junker_cpu_s, filler_start = await flood
        documents = len(usual) + len(meanwhile)
        await exchange.wait_settled(documents + JUNK_MESSAGES, timeout=600)
        drained_s = time.perf_counter() - began

    kept = await exchange.fetchval("SELECT sum(octet_length(body)) FROM messages")
    junk_kept = await exchange.fetchval(
        "SELECT sum(octet_length(body)) FROM messages WHERE broker_user = $1",
        exchange.broker_user_for(JUNKER),
    )
    print(
        f"\n{JUNK_MESSAGES} junk messages of {JUNK_BYTES} bytes published in {flood_s:.1f} s "
        f"({JUNK_MESSAGES * JUNK_BYTES / flood_s / 2**20:.0f} MiB/s; the junker's process "
        f"used {junker_cpu_s:.1f} CPU seconds of this machine's {os.cpu_count()} cores), "
        f"all decided in {drained_s:.1f} s\n"
        f"bodies in the database: {junk_kept} bytes ({junk_kept / 2**20:.2f} MiB) for the "
        f"{JUNK_MESSAGES} junk messages ({JUNK_MESSAGES * JUNK_BYTES / 2**30:.2f} GiB received), "
        f"{kept} bytes in all with {documents} documents\n"
        f"the other agency's documents, publish to confirmed delivery, one at a time: "
        f"usual ({len(usual)}) {figures(usual)}; during the flood ({len(meanwhile)}) "
        f"{figures(meanwhile)}; of which the broker's confirm of the publish: usual "
        f"{figures(usual_confirms)}, during the flood {figures(confirms)}"
    )
    assert junk_kept < 4 * 2**20

    # Each junk message: refused (its sender told why), its start, its whole hash and size.
    rows = await exchange.fetch(
        "SELECT m.body, m.body_size, m.sha256, s.outcome, s.reason_code FROM messages m"
        " JOIN message_state s ON s.message_pk = m.id WHERE m.broker_user = $1",
        exchange.broker_user_for(JUNKER),
    )
    assert len(rows) == JUNK_MESSAGES
    refusals = {(row["outcome"], row["reason_code"]) for row in rows}
    assert refusals <= {
        (TransportOutcome.REJECTED.value, Reason.NOT_UTF8.code),
        (TransportOutcome.REJECTED.value, Reason.NOT_WELL_FORMED.code),
    }, refusals
    for row in rows:
        assert row["body_size"] == JUNK_BYTES
        assert len(row["body"]) == JUNK_KEPT_BYTES
        assert row["body"] == junk(int(row["body"][5:9]), filler_start)[:JUNK_KEPT_BYTES]
    # The hash is of the whole body sent, not of the start kept.
    digests = {row["sha256"] for row in rows}
    assert len(digests) == JUNK_MESSAGES
    assert hashlib.sha256(rows[0]["body"]).hexdigest() not in digests
    receipts = [item.receipt for item in await exchange.statuses_of(junker)]
    assert len(receipts) == JUNK_MESSAGES and {r.sha256 for r in receipts} == digests

    # The other agency lost nothing; its packages are kept whole.
    assert len(await exchange.inbox_of(recipient)) == documents
    whole = await exchange.fetchval(
        "SELECT count(*) FROM messages WHERE broker_user = $1 AND body_size IS NULL",
        exchange.broker_user_for(SENDER),
    )
    assert whole == documents

    # The record stays tamper-evident, cut bodies included.
    report = await verify_chains(exchange.settings)
    assert report.ok, list(report.lines())

    # A replay cannot bring junk back, and says why.
    entries = await plan_replay(exchange.settings, Selection(all=True))
    assert len(entries) == JUNK_MESSAGES
    for entry in entries:
        assert entry.action is Action.SKIP
        assert entry.note is not None and "refused for good" in entry.note
