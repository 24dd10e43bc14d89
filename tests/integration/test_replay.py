"""The replay tool against the real RabbitMQ and PostgreSQL.

Each test stands up an exchange of its own (``tests.exchange_fixtures``),
makes messages refused or parked the way production does, and replays them
through workers running in-process. Outcomes are read where they matter:
the record, the recipient's inbox, the parked queue, the replay history.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from exchange.agency import AgencyCode
from exchange.broker.connection import ConfirmingPublisher, broker_user_of, connect
from exchange.broker.origin import Origin
from exchange.broker.topology import (
    PARKED_QUEUE,
    PARKING_EXCHANGE,
    WORK_DELIVERY_LIMIT,
    WORK_QUEUES,
)
from exchange.commands import ServiceOptions
from exchange.demo import LocalAgency, demo_document
from exchange.failures import Failure
from exchange.pki import Credential, TrustStore, create_ca, issue_agency_certificate
from exchange.registry import register_agency
from exchange.replay import (
    PUBLISH_WINDOW,
    Action,
    Filters,
    Progress,
    ReplayError,
    Selection,
    add_commands,
    plan_replay,
    replay_history,
    run_replay,
    show_message,
)
from exchange.status import TransportOutcome
from exchange.store import queries
from tests.exchange_fixtures import ExchangeUnderTest

pytestmark = pytest.mark.services

GOVERNMENT_OFFICE = "000.00.00.G22"
HANOI = "000.00.00.H26"
# How long a replay waits for the workers' decisions here: they take
# milliseconds; the margin is for a loaded machine.
WAIT_S = 30.0


def trust_directory(exchange: ExchangeUnderTest, tmp_path: Path) -> Path:
    """Point the workers at a directory of CA certificates holding only the exchange's CA."""
    directory = tmp_path / "trust"
    directory.mkdir()
    assert exchange.settings.trust is not None
    shutil.copy(exchange.settings.trust, directory / "ca.pem")
    exchange.local.settings = exchange.settings.model_copy(update={"trust": directory})
    return directory


async def register_with_ca(
    exchange: ExchangeUnderTest, code: str, ca: Credential, keys: Path
) -> LocalAgency:
    """Register an agency whose certificate another CA issued."""
    agency = AgencyCode.parse(code)
    credential = issue_agency_certificate(ca, agency, common_name=code, directory=keys)
    user = exchange.broker_user_for(code)
    exchange.broker_users.append(user)
    registration = await register_agency(
        exchange.settings,
        agency,
        f"Cơ quan {code}",
        certificate_pem=credential.cert_pem.decode(),
        broker_user=user,
        password_login=True,  # the broker does not trust that CA
    )
    local = LocalAgency(agency, f"Cơ quan {code}", credential, registration.amqp_url)
    exchange.agencies[agency] = local
    return local


async def state_of(exchange: ExchangeUnderTest) -> dict[str, Any]:
    """Everything a replay could change, to compare before and after a dry run."""
    rows = await exchange.fetch("SELECT * FROM message_state ORDER BY message_pk")
    return {
        "messages": [dict(row) for row in rows],
        "replays": await exchange.fetchval("SELECT count(*) FROM replays"),
        "work": await exchange.work_depth(),
        "parked": await exchange.queue_depth(PARKED_QUEUE),
    }


async def park_as_the_worker_does(
    exchange: ExchangeUnderTest, body: bytes, recipient: str, agency_user: str
) -> None:
    """Publish a message to lienthong.parking exactly as a worker parks one."""
    origin = Origin(routing_key=recipient, broker_user=agency_user, attempts=4)
    connection = await connect(exchange.settings.amqp_url, name="pytest-park")
    try:
        publisher = await ConfirmingPublisher.open(connection)
        await publisher.publish(
            PARKING_EXCHANGE,
            recipient,
            body,
            headers=origin.headers(attempts=4, failure=Failure.DATABASE.code),
            user_id=broker_user_of(exchange.settings.amqp_url),
        )
    finally:
        await connection.close()


async def poison(exchange: ExchangeUnderTest) -> None:
    """Return the messages waiting for a worker until the broker's delivery limit parks them.

    What a worker dying on a message again and again looks like to RabbitMQ.
    """
    connection = await aio_pika.connect(exchange.settings.amqp_url)
    try:
        channel = await connection.channel()
        for name in WORK_QUEUES:
            queue = await channel.get_queue(name, ensure=False)
            for _ in range(WORK_DELIVERY_LIMIT + 1):
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                await message.nack(requeue=True)
    finally:
        await connection.close()
    assert await exchange.work_depth() == 0


# -- the proof: a missing CA --------------------------------------------------------------


async def test_a_document_rejected_for_a_missing_ca_is_delivered_once_the_ca_is_added(
    exchange: ExchangeUnderTest, tmp_path: Path
) -> None:
    trust = trust_directory(exchange, tmp_path)
    other_ca = create_ca(tmp_path / "other-ca", common_name="CA of another ministry")
    recipient = await exchange.register(HANOI)
    sender = await register_with_ca(exchange, GOVERNMENT_OFFICE, other_ca, tmp_path / "keys")
    document = demo_document(sender, [recipient], 12, "VPCP-TH", "Về việc thử trục liên thông")

    async with exchange.workers(1):
        async with sender.client() as client:
            signed = client.sign(document)
            await client.submit(signed, [HANOI])
        await exchange.wait_settled(1)
    (row,) = await exchange.fetch("SELECT message_pk, outcome, reason_code FROM message_state")
    assert (row["outcome"], row["reason_code"]) == ("rejected", "REJECTED_CERT_UNTRUSTED")
    pk = row["message_pk"]

    # The dry run says what it would do and changes nothing.
    before = await state_of(exchange)
    (planned,) = await plan_replay(exchange.settings, Selection(ids=(pk,)))
    assert (planned.message_pk, planned.action) == (pk, Action.REPLAY)
    assert planned.reason_code == "REJECTED_CERT_UNTRUSTED"
    assert await state_of(exchange) == before

    # The CA is added to the trust directory and the workers restart (a new
    # process reads the directory again; here, its cache is forgotten).
    shutil.copy(tmp_path / "other-ca" / "ca.cert.pem", trust / "other-ca.pem")
    TrustStore.forget(trust)
    async with exchange.workers(1):
        first = await run_replay(exchange.settings, Selection(ids=(pk,)), wait=WAIT_S)
        again = await run_replay(exchange.settings, Selection(ids=(pk,)), wait=WAIT_S)
        everything = await run_replay(exchange.settings, Selection(all=True), wait=WAIT_S)

    assert first.summary.as_dict() == {
        "selected": 1,
        "published": 1,
        "failed": 0,
        "skipped": 0,
        "removed": 0,
        "delivered": 1,
        "rejected": {},
        "parked": {},
        "pending": 0,
    }
    assert first.summary.all_delivered
    # Replaying twice delivers once: the second run publishes nothing.
    assert (again.summary.published, again.summary.skipped) == (0, 1)
    assert again.entries[0].note == "already delivered; a replay would not publish it again"
    assert everything.summary.selected == 0

    inbox = await exchange.inbox_of(recipient)
    assert [item.body for item in inbox] == [signed]
    receipts = [item.receipt for item in await exchange.statuses_of(sender)]
    assert sorted((r.outcome.value, r.reason_code) for r in receipts) == [
        ("delivered", None),
        ("rejected", "REJECTED_CERT_UNTRUSTED"),
    ]
    (after,) = await exchange.fetch(
        "SELECT outcome, reason_code, published_at FROM message_state WHERE message_pk = $1", pk
    )
    assert (after["outcome"], after["reason_code"]) == ("delivered", None)
    assert after["published_at"] is not None

    # Every replay is recorded: who, what, the result; and the message's own history.
    history = await replay_history(exchange.settings)
    assert [r.pk for r in history] == [everything.replay_pk, again.replay_pk, first.replay_pk]
    recorded = history[-1]
    assert recorded.state == "finished"
    assert recorded.selection["ids"] == [pk]
    assert recorded.broker_user == broker_user_of(exchange.settings.amqp_url)
    assert recorded.os_user and recorded.host
    assert recorded.result is not None and recorded.result["delivered"] == 1
    detail = await show_message(exchange.settings, pk)
    assert [(r.pk, i.action, i.outcome_before, i.outcome_after) for r, i in detail.history] == [
        (first.replay_pk, "published", "rejected", "delivered"),
        (again.replay_pk, "skipped", "delivered", None),
    ]
    assert detail.size == len(signed)


# -- parked messages ---------------------------------------------------------------------


async def test_a_parked_message_with_a_record_is_replayed_and_its_parked_copy_removed(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    recipient = await exchange.register(HANOI)
    body = sender.client().sign(demo_document(sender, [recipient], 7, "VPCP", "Tạm giữ"))
    user = exchange.broker_user_for(GOVERNMENT_OFFICE)
    # What a worker leaves when the database failed through every retry
    # and came back just in time to record the parking.
    async with exchange.db() as conn:
        record, _ = await queries.record_message(
            conn,
            dedup_key=queries.dedup_key(HANOI, body, user),
            amqp_message_id="parked-1",
            routing_key=HANOI,
            broker_user=user,
            body=body,
            sha256=hashlib.sha256(body).hexdigest(),
            sender=sender.code,
        )
        await queries.set_outcome(
            conn,
            record.pk,
            TransportOutcome.PARKED,
            Failure.DATABASE.parked_code,
            "connection refused",
            attempts=4,
        )
        await queries.mark_published(conn, record.pk)
    await park_as_the_worker_does(exchange, body, HANOI, user)
    assert await exchange.queue_depth(PARKED_QUEUE) == 1

    async with exchange.workers(1):
        done = await run_replay(exchange.settings, Selection(ids=(record.pk,)), wait=WAIT_S)

    assert done.summary.delivered == 1
    assert await exchange.queue_depth(PARKED_QUEUE) == 0
    assert [item.body for item in await exchange.inbox_of(recipient)] == [body]


async def test_messages_parked_without_a_record_are_replayed_from_the_parked_queue(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    recipient = await exchange.register(HANOI)
    user = exchange.broker_user_for(GOVERNMENT_OFFICE)
    client = sender.client()
    # One parked by a worker while the database was down (no row) ...
    parked_body = client.sign(demo_document(sender, [recipient], 1, "VPCP", "Tạm giữ"))
    await park_as_the_worker_does(exchange, parked_body, HANOI, user)
    # ... and one the broker dead-lettered as poison (no worker ever finished it).
    poison_body = client.sign(demo_document(sender, [recipient], 2, "VPCP", "Độc"))
    async with client:
        await client.submit(poison_body, [HANOI])
    await poison(exchange)
    assert await exchange.queue_depth(PARKED_QUEUE) == 2

    before = await state_of(exchange)
    planned = await plan_replay(exchange.settings, Selection(from_queue=True))
    assert sorted(e.reason_code or "" for e in planned) == ["PARKED_DATABASE", "PARKED_POISON"]
    assert {(e.recipient, e.broker_user, e.action) for e in planned} == {
        (HANOI, user, Action.REPLAY)
    }
    assert all(e.message_pk is None for e in planned)
    after_dry_run = await state_of(exchange)
    assert after_dry_run == before

    async with exchange.workers(1):
        done = await run_replay(exchange.settings, Selection(from_queue=True), wait=WAIT_S)
        again = await run_replay(exchange.settings, Selection(from_queue=True), wait=WAIT_S)

    assert (done.summary.published, done.summary.delivered) == (2, 2)
    assert again.summary.selected == 0
    assert await exchange.queue_depth(PARKED_QUEUE) == 0
    inbox = sorted(item.body for item in await exchange.inbox_of(recipient))
    assert inbox == sorted([parked_body, poison_body])
    rows = await exchange.fetch(
        "SELECT source, action, message_pk, outcome_after FROM replay_items WHERE replay_pk = $1",
        done.replay_pk,
    )
    assert {(r["source"], r["action"], r["outcome_after"]) for r in rows} == {
        ("parked_queue", "published", "delivered")
    }
    assert all(r["message_pk"] is not None for r in rows)


# -- the command line ----------------------------------------------------------------------


def replay_parser() -> argparse.ArgumentParser:
    """``lienthong`` with only the replay commands, as exchange/cli.py wires them."""
    parser = argparse.ArgumentParser(prog="lienthong")
    commands = parser.add_subparsers(dest="command", required=True)
    add_commands(commands, ServiceOptions.build())
    return parser


async def lienthong(
    exchange: ExchangeUnderTest, capsys: pytest.CaptureFixture[str], *words: str
) -> tuple[int, str]:
    """Run ``lienthong replay ...`` (in a thread: it runs its own event loop)."""
    broker = ["--amqp-url", exchange.settings.amqp_url] if words[0] in ("list", "run") else []
    args = replay_parser().parse_args(
        ["replay", *words, *broker, "--database-url", exchange.settings.database_url]
    )
    code = await asyncio.to_thread(args.handler, args)
    return code, capsys.readouterr().out


async def test_the_commands_list_show_dry_run_replay_and_record_a_message_rejected_again(
    exchange: ExchangeUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    await exchange.register(HANOI)
    async with exchange.workers(1):
        async with sender.client() as client:
            await client.submit(b"<edXML><not closed>", [HANOI])
        await exchange.wait_settled(1)
        pk = await exchange.fetchval("SELECT message_pk FROM message_state")

        code, out = await lienthong(
            exchange, capsys, "list", "--json", "--sender", GOVERNMENT_OFFICE
        )
        (listed,) = json.loads(out)
        assert code == 0
        assert (listed["id"], listed["reason_code"]) == (pk, "REJECTED_NOT_WELL_FORMED")
        code, out = await lienthong(exchange, capsys, "list", "--reason", "CERT_UNTRUSTED")
        assert "no rejected or parked messages recorded match" in out

        code, out = await lienthong(exchange, capsys, "show", str(pk), "--json")
        shown = json.loads(out)
        assert shown["size"] == len(b"<edXML><not closed>")
        assert shown["reason_detail"]

        code, out = await lienthong(exchange, capsys, "run", str(pk))
        assert code == 0
        assert "dry run: 1 message(s) would be replayed; nothing was changed" in out
        assert await exchange.fetchval("SELECT count(*) FROM replays") == 0

        code, out = await lienthong(exchange, capsys, "run", str(pk), "--yes", "--wait", "30")
        # Not delivered: the exit status says so, the summary says why.
        assert code == 1
        assert "rejected again:  1 (REJECTED_NOT_WELL_FORMED: 1)" in out

    code, out = await lienthong(exchange, capsys, "history", "--json")
    (recorded,) = json.loads(out)
    assert recorded["result"]["rejected"] == {"REJECTED_NOT_WELL_FORMED": 1}
    assert recorded["selection"]["ids"] == [pk]


def test_run_without_saying_what_is_refused_before_anything_runs() -> None:
    from exchange.cli import CommandError

    args = replay_parser().parse_args(["replay", "run", "--yes"])
    with pytest.raises(CommandError, match="say what to replay"):
        args.handler(args)


# -- large sets and concurrent replays --------------------------------------------------------


async def test_a_large_filtered_set_is_published_in_windows_with_progress_and_all_decided(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    await exchange.register(HANOI)
    count = PUBLISH_WINDOW + 16  # more than one window of confirms
    lines = io.StringIO()

    def progress(label: str, total: int) -> Progress:
        return Progress(label, total, lines, tty=False)

    async with exchange.workers(2):
        async with sender.client() as client:
            for n in range(count):
                await client.submit(f"<edXML>{n}".encode(), [HANOI])
        await exchange.wait_settled(count)
        selection = Selection(filters=Filters.parse(reason="NOT_WELL_FORMED", recipient=HANOI))
        done = await run_replay(exchange.settings, selection, wait=WAIT_S, progress=progress)

    assert done.summary.published == count
    assert done.summary.rejected == {"REJECTED_NOT_WELL_FORMED": count}
    assert done.summary.complete and not done.summary.all_delivered
    shown = lines.getvalue().splitlines()
    # One line per window confirmed (each is more than a tenth of the set).
    assert [line for line in shown if line.startswith("publishing")] == [
        f"publishing: {PUBLISH_WINDOW}/{count}",
        f"publishing: {count}/{count}",
    ]
    assert f"waiting for decisions: {count}/{count}" in shown


async def test_a_second_replay_waits_its_turn(exchange: ExchangeUnderTest) -> None:
    async with exchange.db() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", queries.REPLAY_LOCK_KEY)
        with pytest.raises(ReplayError, match="another replay is running"):
            await run_replay(exchange.settings, Selection(all=True), wait=0)
    assert await exchange.fetchval("SELECT count(*) FROM replays") == 0
