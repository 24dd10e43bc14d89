"""Junk costs little: a message refused before its signature is verified keeps its start only.

Through the real worker, broker and database. One agency publishes 50
messages of 60 MiB that are not XML at all (3 GiB through the broker, from
a process of its own); the record keeps of each its first 64 KiB with the
SHA-256 and size of the whole, so under 4 MiB of bodies stay in the
database, the hash chains still verify, and the replay tool says such a
message is refused for good. Meanwhile another agency's documents go
through; their latency is printed (no wall-clock assertion) alone, during
the junk flood, and during a control flood: the same bytes published by the
exchange's own user to a queue beside the lanes, read and dropped by that
process, never reaching a worker. The control is what moving those bytes
through this machine's broker, disks and cores costs everyone anyway; the
difference to it is what the exchange's handling of the junk costs the
other agency.

The workers are two ``lienthong worker`` processes, as deployed: the
test's own process holds only the other agency's client and the clock,
so what it measures is not its own event loop reading the junk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from exchange.audit import verify_chains
from exchange.demo import LocalAgency, demo_document
from exchange.ledger import JUNK_KEPT_BYTES
from exchange.reasons import Reason
from exchange.replay import Action, Selection, plan_replay
from exchange.status import TransportOutcome
from tests.crash.supervisor import Supervisor, worker_env
from tests.exchange_fixtures import ExchangeUnderTest, wait_for

pytestmark = pytest.mark.services

JUNKER = "000.00.00.G09"  # Bộ Nội vụ, or whoever holds its broker password
SENDER = "000.00.00.G22"  # Văn phòng Chính phủ
RECIPIENT = "000.00.00.H26"  # UBND Thành phố Hà Nội
JUNK_MESSAGES = 50
JUNK_BYTES = 60 * 2**20
DOCUMENTS = 30  # per phase, one at a time
POLL_S = 0.005
WORKERS = 2  # processes
COMMIT_PAUSE_S = 0.02

CONTROL_QUEUE = "control.flood"

# The junker publishes from a process of its own, as another agency would:
# its 3 GiB of publishing does not share the workers' event loop. It prints
# "ready", then the seconds its publishing took and the CPU seconds it used,
# then the first MiB of the filler every junk body is made of. With
# "control" instead of an agency code, it publishes the same bytes to a
# quorum queue of its own (like a lane), which it reads and drops over a
# second connection, as a worker reads a lane.
PUBLISHER = """
import asyncio, os, sys, time
import aio_pika
from exchange.client import AgencyClient
code, recipient, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
url = os.environ["JUNKER_AMQP_URL"]
def body(number, filler):
    head = f"junk {number:04d} ".encode()
    return head + filler[len(head):]
async def junk(filler):
    async with AgencyClient(code, url) as client:
        print("ready", flush=True)
        for number in range(count):
            await client.submit(body(number, filler), [recipient])
async def control(filler):
    publishing, reading = await aio_pika.connect(url), await aio_pika.connect(url)
    channel = await publishing.channel(publisher_confirms=True)
    queue = await channel.declare_queue(
        recipient, durable=True, arguments={"x-queue-type": "quorum"}
    )
    dropping = await reading.channel()
    await dropping.set_qos(prefetch_count=8)
    read, all_read = 0, asyncio.Event()
    async def drop(message):
        nonlocal read
        await message.ack()
        read += 1
        if read == count:
            all_read.set()
    reader = await dropping.get_queue(recipient)
    tag = await reader.consume(drop)
    print("ready", flush=True)
    for number in range(count):
        message = aio_pika.Message(body(number, filler), delivery_mode=2)
        await channel.default_exchange.publish(message, recipient)
    await all_read.wait()
    await reader.cancel(tag)
    await queue.delete(if_unused=False, if_empty=False)
    await reading.close()
    await publishing.close()
async def main():
    filler = os.urandom(size)
    began = time.perf_counter()
    await (control(filler) if code == "control" else junk(filler))
    print(f"{time.perf_counter() - began:.3f} {time.process_time():.3f}", flush=True)
    sys.stdout.buffer.write(filler[:1 << 20])
asyncio.run(main())
"""


def junk(number: int, filler: bytes) -> bytes:
    """The start of junk message ``number``: not XML at all, different for each."""
    head = f"junk {number:04d} ".encode()
    return head + filler[len(head) :]


async def start_junker(code: str, amqp_url: str) -> asyncio.subprocess.Process:
    """The junker's process, connected and publishing once it printed ``ready``.

    ``code`` is the junking agency's, or "control" for the control flood
    (``amqp_url`` then the exchange's own).
    """
    target = RECIPIENT if code != "control" else CONTROL_QUEUE
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PUBLISHER,
        code,
        target,
        str(JUNK_MESSAGES),
        str(JUNK_BYTES),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "JUNKER_AMQP_URL": amqp_url},
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


async def timed_commits(
    exchange: ExchangeUnderTest, until: asyncio.Future[tuple[float, float, bytes]]
) -> list[float]:
    """Seconds each commit of a one-row write took, one every :data:`COMMIT_PAUSE_S`, until done.

    The database's own share of a document's latency: each document is
    committed more than once on its way.
    """
    timings: list[float] = []
    async with exchange.db() as conn:
        await conn.execute("CREATE TABLE commit_probe (at timestamptz)")
        while not until.done():
            began = time.perf_counter()
            await conn.execute("INSERT INTO commit_probe VALUES (now())")
            timings.append(time.perf_counter() - began)
            await asyncio.sleep(COMMIT_PAUSE_S)
        await conn.execute("DROP TABLE commit_probe")
    return timings


@dataclass
class Flood:
    """A flood and the other agency's documents beside it."""

    seconds: float  # to publish every message, each confirmed (and, control, read)
    cpu_s: float  # of the flooding process
    filler_start: bytes  # the first MiB of every body's filler
    latencies: list[float]  # the other agency's documents', publish to confirmed delivery
    confirms: list[float]  # of which the broker's confirm of their publish
    commits: list[float]  # a one-row commit in the database meanwhile

    @property
    def rate(self) -> str:
        """The flood's bytes a second."""
        return f"{JUNK_MESSAGES * JUNK_BYTES / self.seconds / 2**20:.0f} MiB/s"


async def flood_beside(
    exchange: ExchangeUnderTest,
    sender: LocalAgency,
    recipient: LocalAgency,
    first: int,
    code: str,
    amqp_url: str,
) -> Flood:
    """Flood from ``code`` (or "control") while ``sender`` sends documents one at a time.

    The documents are timed from the flood's first junk message decided
    (control: from its start) to its last message published.
    """
    flood = asyncio.ensure_future(junker_finished(await start_junker(code, amqp_url)))
    if code != "control":

        async def junk_recorded() -> tuple[bool, str]:
            count = await exchange.fetchval("SELECT count(*) FROM messages WHERE body_size > 0")
            return count > 0, f"{count} junk messages recorded"

        await wait_for(junk_recorded, timeout=300)
    confirms: list[float] = []
    commits = asyncio.ensure_future(timed_commits(exchange, flood))
    latencies = await timed_documents(
        exchange, sender, recipient, first, until=flood, confirms=confirms
    )
    seconds, cpu_s, filler_start = await flood
    return Flood(seconds, cpu_s, filler_start, latencies, confirms, await commits)


def figures(latencies: list[float]) -> str:
    """Median, 90th percentile, mean and worst, in milliseconds."""
    ms = sorted(latency * 1000 for latency in latencies)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return (
        f"median {statistics.median(ms):.0f} ms, p90 {p90:.0f} ms, "
        f"mean {statistics.fmean(ms):.0f} ms, max {ms[-1]:.0f} ms"
    )


async def test_junk_keeps_its_start_only_and_others_documents_go_through_meanwhile(
    exchange: ExchangeUnderTest, tmp_path: Path
) -> None:
    junker = await exchange.register(JUNKER)
    sender = await exchange.register(SENDER)
    recipient = await exchange.register(RECIPIENT)
    env = worker_env(exchange.worker_settings)

    async with Supervisor(env, workers=WORKERS, log_dir=tmp_path / "workers", restart=False):
        usual_confirms: list[float] = []
        usual = await timed_documents(exchange, sender, recipient, 0, confirms=usual_confirms)
        control = await flood_beside(
            exchange, sender, recipient, 100_000, "control", exchange.settings.amqp_url
        )
        began = time.perf_counter()
        junk_flood = await flood_beside(
            exchange, sender, recipient, 200_000, JUNKER, junker.amqp_url
        )
        documents = len(usual) + len(control.latencies) + len(junk_flood.latencies)
        await exchange.wait_settled(documents + JUNK_MESSAGES, timeout=600)
        drained_s = time.perf_counter() - began

    kept = await exchange.fetchval("SELECT sum(octet_length(body)) FROM messages")
    junk_kept = await exchange.fetchval(
        "SELECT sum(octet_length(body)) FROM messages WHERE broker_user = $1",
        exchange.broker_user_for(JUNKER),
    )
    print(
        f"\n{JUNK_MESSAGES} junk messages of {JUNK_BYTES} bytes published in "
        f"{junk_flood.seconds:.1f} s ({junk_flood.rate}; the junker's process used "
        f"{junk_flood.cpu_s:.1f} CPU seconds of this machine's {os.cpu_count()} cores), "
        f"all decided in {drained_s:.1f} s\n"
        f"bodies in the database: {junk_kept} bytes ({junk_kept / 2**20:.2f} MiB) for the "
        f"{JUNK_MESSAGES} junk messages ({JUNK_MESSAGES * JUNK_BYTES / 2**30:.2f} GiB received), "
        f"{kept} bytes in all with {documents} documents\n"
        f"the other agency's documents, publish to confirmed delivery, one at a time, through "
        f"{WORKERS} worker processes:\n"
        f"  alone ({len(usual)}): {figures(usual)}\n"
        f"  beside the control flood ({len(control.latencies)}; the same bytes to a queue no "
        f"worker reads, {control.seconds:.1f} s, {control.rate}): {figures(control.latencies)}\n"
        f"  beside the junk flood ({len(junk_flood.latencies)}): {figures(junk_flood.latencies)}\n"
        f"of which the broker's confirm of their publish: alone {figures(usual_confirms)}; "
        f"beside the control {figures(control.confirms)}; beside the junk "
        f"{figures(junk_flood.confirms)}\n"
        f"a one-row commit in the database: beside the control {figures(control.commits)}; "
        f"beside the junk {figures(junk_flood.commits)}"
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
        assert row["body"] == junk(int(row["body"][5:9]), junk_flood.filler_start)[:JUNK_KEPT_BYTES]
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
