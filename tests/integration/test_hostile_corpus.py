"""The hostile input corpus through the real worker.

One run for the whole module (the run is the expensive part): a fresh vhost
and database, four agencies registered with their own broker users, two
workers. The setup phase delivers a few documents and statuses that the
status and duplicate cases refer to. Then every case of
:data:`tests.hostile.corpus.CASES` is published, each followed by a valid
document between other agencies, and the run waits until the database says
every message is decided and its effects confirmed by the broker.

Then each case is its own test (its reason in the record and in the
receipt its publisher got, nothing delivered anywhere), and the run as a
whole must reconcile: every valid document delivered, every message
published has exactly one decided record, nothing waiting in the work,
retry or parked queues.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aio_pika
import pytest
import pytest_asyncio
from aio_pika.abc import AbstractIncomingMessage

from exchange.agency import AgencyCode
from exchange.broker.admin import BrokerAdmin
from exchange.broker.connection import (
    XML_CONTENT_TYPE,
    ConfirmingPublisher,
    broker_user_of,
    connect,
)
from exchange.broker.headers import MESSAGE as HEADER_MESSAGE
from exchange.broker.topology import (
    PARKED_QUEUE,
    RETRY_TIERS,
    SUBMIT_EXCHANGE,
    WORK_QUEUES,
    inbox_queue,
    status_queue,
)
from exchange.reasons import Reason
from exchange.receipts import RECEIPT_CONTENT_TYPE, Receipt
from exchange.registry import url_for_user
from tests.exchange_fixtures import ExchangeUnderTest, isolated_exchange, wait_for
from tests.hostile.corpus import (
    AGENCIES,
    CASES,
    MAX_PACKAGE_BYTES,
    ROGUE,
    Case,
    Publication,
    World,
    hostile_publications,
    setup_publications,
    valid_traffic,
)

WORKERS = 2
# Reasons no case is expected to produce, and why: the schema check runs
# before the reader and refuses these first (as SCHEMA_INVALID).
# Reasons no package can get from the worker, and why (none at present: the
# schema check gives the specific reason when all its problems share one).
UNREACHABLE_IN_THE_WORKER: dict[Reason, str] = {}

# Reasons the worker gives that no publisher of the corpus can provoke, and
# the test that proves each instead.
PROVEN_ELSEWHERE: dict[Reason, str] = {
    # A disabled agency has no broker user to publish with; what it published
    # before it was disabled is what the workers refuse.
    Reason.SENDER_DISABLED: "tests/integration/test_provisioning.py::"
    "test_a_disabled_agency_loses_its_access_and_what_it_sent_is_refused_history_kept",
    # Over an agency's rate: a flood, not a hostile package.
    Reason.QUOTA: "tests/integration/test_limits.py::"
    "test_publisher_over_its_rate_is_refused_quota_with_a_receipt_and_may_send_again",
}


# -- the run --------------------------------------------------------------------------


@dataclass
class Outcome:
    """What became of one published message, from the record and from the queues."""

    publication: Publication
    message_id: str
    records: list[dict[str, Any]] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    # Queues where the message's bytes were delivered (inboxes, forwarded statuses).
    delivered_to: list[str] = field(default_factory=list)
    # Rows in deliveries and events that point at the message.
    record_effects: int = 0

    @property
    def outcome(self) -> str | None:
        """The recorded transport outcome (None when not recorded exactly once)."""
        return self.records[0]["outcome"] if len(self.records) == 1 else None

    @property
    def reason_code(self) -> str | None:
        """The recorded reason code."""
        return self.records[0]["reason_code"] if len(self.records) == 1 else None

    @property
    def detail(self) -> str:
        """The recorded problems, one per line."""
        return (self.records[0]["reason_detail"] or "") if len(self.records) == 1 else ""


@dataclass
class CorpusRun:
    """Everything the run observed, for the tests to judge."""

    setup: list[Outcome]
    hostile: dict[str, Outcome]
    valid: list[Outcome]
    # Message ids the database holds that the run never published.
    unknown_records: list[dict[str, Any]]
    undecided: int
    parked_rows: int
    leftover: dict[str, int]
    # Items on inbox or status queues that no published message explains.
    stray_items: list[str]

    @property
    def published(self) -> list[Outcome]:
        """Every message the run published."""
        return [*self.setup, *self.hostile.values(), *self.valid]


def judge(case: Case, seen: Outcome) -> list[str]:
    """What is wrong with the outcome of a hostile case; empty when it was refused as expected."""
    wrong = []
    reason = case.expected
    if len(seen.records) != 1:
        return [f"recorded {len(seen.records)} times, not once"]
    if (seen.outcome, seen.reason_code) != ("rejected", reason.code):
        wrong.append(f"recorded {seen.outcome} {seen.reason_code or ''}".rstrip())
    if case.mentions not in seen.detail:
        wrong.append(f"the problems do not mention {case.mentions!r}: {seen.detail!r}")
    if case.publisher == ROGUE:
        if seen.receipts:
            wrong.append("a publisher that is no agency got a receipt")
    elif len(seen.receipts) != 1:
        wrong.append(f"the publisher got {len(seen.receipts)} receipts, not 1")
    else:
        receipt = seen.receipts[0]
        if (receipt.outcome.value, receipt.reason_code) != ("rejected", reason.code):
            wrong.append(f"receipt says {receipt.outcome.value} {receipt.reason_code}")
        # The clerk reads the reason's sentence, then what exactly is wrong.
        if not (receipt.reason or "").startswith(reason.vietnamese.rstrip(".")):
            wrong.append(f"receipt's reason for the clerk is {receipt.reason!r}")
        if receipt.problems != seen.detail.splitlines():
            wrong.append(f"receipt's problems {receipt.problems} are not the recorded ones")
        if receipt.recipient != case.routing_key:
            wrong.append(f"receipt names recipient {receipt.recipient!r}")
        if receipt.sha256 != hashlib.sha256(seen.publication.body).hexdigest():
            wrong.append("receipt's SHA-256 is not the package's")
    if seen.delivered_to:
        wrong.append(f"delivered to {', '.join(seen.delivered_to)}")
    if seen.record_effects:
        wrong.append(f"{seen.record_effects} deliveries or history rows point at it")
    return wrong


def table(run: CorpusRun) -> str:
    """Every case in one table: expected, recorded, receipt, verdict."""
    lines = [f"{'case':<52} {'expected':<30} {'recorded':<30} {'receipt':<30} verdict"]
    for case in CASES:
        seen = run.hostile[case.name]
        receipt = ", ".join(r.reason_code or r.outcome.value for r in seen.receipts) or "-"
        wrong = judge(case, seen)
        verdict = "ok" if not wrong else ("known gap: " if case.finding else "") + "; ".join(wrong)
        recorded = seen.reason_code or str(seen.outcome)
        lines.append(
            f"{case.name:<52} {case.expected.code:<30} {recorded:<30} {receipt:<30} {verdict}"
        )
    return "\n".join(lines)


async def take_all(amqp_url: str, queue: str) -> list[AbstractIncomingMessage]:
    """Every message ready in ``queue`` now, acknowledged (basic.get until it is empty)."""
    taken = []
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        source = await channel.get_queue(queue, ensure=False)
        while (message := await source.get(fail=False)) is not None:
            await message.ack()
            taken.append(message)
    finally:
        await connection.close()
    return taken


async def work_queue_empty(exchange: ExchangeUnderTest) -> tuple[bool, str]:
    """Whether ``lienthong.work`` is empty, and what was seen (for :func:`wait_for`)."""
    waiting = await exchange.work_depth()
    return waiting == 0, f"{waiting} messages still waiting for a worker"


class Publishers:
    """One confirming publisher per broker user, publishing as that agency would."""

    def __init__(self, urls: dict[str, str]) -> None:
        """Publishers for each name in ``urls`` (an agency code, or ``ROGUE``)."""
        self._urls = urls
        self._stack = contextlib.AsyncExitStack()
        self._publishers: dict[str, tuple[ConfirmingPublisher, str]] = {}

    async def __aenter__(self) -> Publishers:
        for name, url in self._urls.items():
            connection = await connect(url, name=f"pytest-hostile-{name}")
            self._stack.push_async_callback(connection.close)
            user = broker_user_of(url)
            self._publishers[name] = (await ConfirmingPublisher.open(connection), user)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._stack.aclose()

    async def publish(self, publication: Publication) -> Outcome:
        """Publish one message (confirmed); its outcome is filled in later."""
        publisher, user = self._publishers[publication.publisher]
        message_id = await publisher.publish(
            SUBMIT_EXCHANGE,
            publication.routing_key,
            publication.body,
            message_id=str(uuid.uuid4()),
            content_type=XML_CONTENT_TYPE,
            user_id=user,
        )
        return Outcome(publication, message_id)

    async def publish_all(self, publications: Iterable[Publication]) -> list[Outcome]:
        """Publish in order."""
        return [await self.publish(publication) for publication in publications]


async def observe(exchange: ExchangeUnderTest, outcomes: list[Outcome]) -> tuple[list[str], int]:
    """Fill in each outcome from the database and every agency's queues.

    Returns the status-queue items no published message explains, and the
    number of records without an outcome.
    """
    by_id = {outcome.message_id: outcome for outcome in outcomes}
    rows = await exchange.fetch(
        "SELECT m.id, m.amqp_message_id, m.routing_key, s.outcome, s.reason_code,"
        " s.reason_detail FROM messages m LEFT JOIN message_state s ON s.message_pk = m.id"
    )
    by_pk: dict[int, Outcome] = {}
    undecided = 0
    for row in rows:
        undecided += row["outcome"] is None
        seen = by_id.get(row["amqp_message_id"])
        if seen is not None:
            seen.records.append(dict(row))
            by_pk[row["id"]] = seen
    for table_name in ("deliveries", "events"):
        for row in await exchange.fetch(f"SELECT message_pk FROM {table_name}"):
            if row["message_pk"] in by_pk:
                by_pk[row["message_pk"]].record_effects += 1
    stray = []
    url = exchange.settings.amqp_url
    for code in exchange.agencies:
        for queue in (inbox_queue(code), status_queue(code)):
            for message in await take_all(url, queue):
                if message.content_type == RECEIPT_CONTENT_TYPE:
                    receipt = Receipt.model_validate_json(message.body)
                    if receipt.message_id in by_id:
                        by_id[receipt.message_id].receipts.append(receipt)
                        continue
                pk = (message.headers or {}).get(HEADER_MESSAGE)
                if isinstance(pk, int) and pk in by_pk:
                    by_pk[pk].delivered_to.append(queue)
                else:
                    stray.append(f"{queue}: {message.content_type} {message.message_id}")
    # The rows of messages nobody published (none expected) are reported by the caller.
    return stray, undecided


async def rogue_url(exchange: ExchangeUnderTest) -> str:
    """A broker user with an agency's permissions that the directory does not know."""
    user = exchange.broker_user_for(ROGUE)
    password = secrets.token_urlsafe(16)
    exchange.broker_users.append(user)
    await exchange.admin.provision_agency_user(
        AgencyCode.parse("000.00.00.G99"), password, vhost=exchange.vhost, user=user
    )
    return url_for_user(exchange.settings.amqp_url, user, password)


async def run_corpus(exchange: ExchangeUnderTest) -> CorpusRun:
    """Register the cast, run the setup, then the corpus with valid traffic; observe it all."""
    agencies = {code: await exchange.register(code, name) for code, name in AGENCIES.items()}
    assert exchange.local.ca is not None
    world = World(exchange.local.ca, {code: a.credential for code, a in agencies.items()})
    # Beside the trust anchor, where the workers look for them at start.
    world.write_revocation_lists(exchange.local.keys_dir)
    setup_documents, setup_statuses = setup_publications(world)
    hostile = hostile_publications(world)
    valid = valid_traffic(world, len(hostile))
    everything = [*setup_documents, *setup_statuses, *hostile, *valid]
    # The record keys a message by (routing key, bytes): two identical ones
    # would be one message, and a case would hide behind another.
    repeated = Counter((p.routing_key, p.body) for p in everything)
    twins = [p.label for p in everything if repeated[(p.routing_key, p.body)] > 1]
    assert not twins, f"publications with the same routing key and bytes: {twins}"

    urls = {code: agency.amqp_url for code, agency in agencies.items()}
    urls[ROGUE] = await rogue_url(exchange)
    # The broker's topic permission refuses a routing key that is no agency
    # code before any worker sees it (tests/integration/test_limits.py); this
    # corpus probes the worker's own check behind it, so the agencies here
    # publish without that permission.
    for code in agencies:
        user = quote(broker_user_of(urls[code]), safe="")
        vhost = quote(exchange.vhost, safe="")
        await exchange.admin.request("DELETE", f"/topic-permissions/{vhost}/{user}")
    async with exchange.workers(WORKERS), Publishers(urls) as publishers:
        setup = await publishers.publish_all(setup_documents)
        await exchange.wait_settled(len(setup))
        setup += await publishers.publish_all(setup_statuses)
        await exchange.wait_settled(len(setup))
        await observe(exchange, setup)  # empties the queues for what follows
        sent_hostile: list[Outcome] = []
        sent_valid: list[Outcome] = []
        for attack, ordinary in zip(hostile, valid, strict=True):
            sent_hostile.append(await publishers.publish(attack))
            sent_valid.append(await publishers.publish(ordinary))
        await exchange.wait_settled(len(everything))
        await wait_for(lambda: work_queue_empty(exchange))

    stray, undecided = await observe(exchange, [*sent_hostile, *sent_valid])
    published_ids = {o.message_id for o in [*setup, *sent_hostile, *sent_valid]}
    rows = await exchange.fetch(
        "SELECT m.amqp_message_id, s.outcome FROM messages m"
        " LEFT JOIN message_state s ON s.message_pk = m.id"
    )
    leftover = {
        queue: await exchange.queue_depth(queue)
        for queue in (*WORK_QUEUES, PARKED_QUEUE, *(tier.queue for tier in RETRY_TIERS))
    }
    return CorpusRun(
        setup=setup,
        hostile={o.publication.label: o for o in sent_hostile},
        valid=sent_valid,
        unknown_records=[dict(r) for r in rows if r["amqp_message_id"] not in published_ids],
        undecided=undecided,
        parked_rows=sum(r["outcome"] == "parked" for r in rows),
        leftover=leftover,
        stray_items=stray,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def corpus_run(
    broker_admin: BrokerAdmin, module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[CorpusRun]:
    """The whole corpus, run once for the module."""
    keys_dir = tmp_path_factory.mktemp("hostile-keys")
    async with isolated_exchange(
        broker_admin, module_database_url, keys_dir, max_package_bytes=MAX_PACKAGE_BYTES
    ) as exchange:
        yield await run_corpus(exchange)


# -- the corpus itself (no services) -------------------------------------------------


def test_corpus_has_at_least_forty_cases_with_unique_names() -> None:
    names = [case.name for case in CASES]
    assert len(names) >= 40
    assert len(set(names)) == len(names), [n for n, c in Counter(names).items() if c > 1]


def test_corpus_expects_every_reason_the_worker_can_give() -> None:
    expected = {case.expected for case in CASES}
    missing = set(Reason) - expected - set(UNREACHABLE_IN_THE_WORKER) - set(PROVEN_ELSEWHERE)
    assert not missing, f"no case expects {sorted(r.code for r in missing)}"
    assert not expected & set(UNREACHABLE_IN_THE_WORKER)
    assert not expected & set(PROVEN_ELSEWHERE)


# -- each case --------------------------------------------------------------------------


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.finding)] if case.finding else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.services
@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_hostile_case_is_rejected_with_its_reason_and_delivered_nowhere(
    corpus_run: CorpusRun, case: Case
) -> None:
    seen = corpus_run.hostile[case.name]
    wrong = judge(case, seen)
    assert not wrong, f"{case.name}: " + "; ".join(wrong) + "\n\n" + table(corpus_run)


# -- the run as a whole -----------------------------------------------------------------


@pytest.mark.services
def test_setup_documents_and_statuses_were_all_accepted(corpus_run: CorpusRun) -> None:
    refused = [
        (o.publication.label, o.outcome, o.reason_code, o.detail)
        for o in corpus_run.setup
        if o.outcome != "delivered"
    ]
    assert not refused, "the setup the status cases rely on did not go through"


@pytest.mark.services
def test_valid_traffic_between_other_agencies_is_delivered_throughout_the_attack(
    corpus_run: CorpusRun,
) -> None:
    wrong = []
    for seen in corpus_run.valid:
        route = seen.publication
        if seen.outcome != "delivered":
            wrong.append(f"{route.label}: {seen.outcome} {seen.reason_code} {seen.detail}")
        elif seen.delivered_to != [inbox_queue(AgencyCode.parse(route.routing_key))]:
            wrong.append(f"{route.label}: reached {seen.delivered_to}")
        elif [r.outcome.value for r in seen.receipts] != ["delivered"]:
            wrong.append(f"{route.label}: receipts {[r.outcome.value for r in seen.receipts]}")
    assert not wrong
    assert len(corpus_run.valid) == len(CASES)


@pytest.mark.services
def test_every_published_message_has_one_outcome_and_the_counts_reconcile(
    corpus_run: CorpusRun,
) -> None:
    published = corpus_run.published
    assert all(len(o.records) == 1 for o in published)
    assert corpus_run.unknown_records == [], "records of messages nobody published"
    assert corpus_run.undecided == 0
    assert corpus_run.parked_rows == 0, "a hostile package made the worker fail, not refuse"
    outcomes = Counter(o.outcome for o in published)
    known_gaps = [case for case in CASES if case.finding]
    rejected = len(CASES) - sum(
        corpus_run.hostile[c.name].outcome != "rejected" for c in known_gaps
    )
    delivered = len(corpus_run.setup) + len(corpus_run.valid) + len(CASES) - rejected
    assert outcomes == Counter({"rejected": rejected, "delivered": delivered}), table(corpus_run)
    assert len(published) == rejected + delivered


@pytest.mark.services
def test_nothing_is_left_in_the_work_retry_or_parked_queues(corpus_run: CorpusRun) -> None:
    assert corpus_run.leftover == dict.fromkeys(corpus_run.leftover, 0)
    assert corpus_run.stray_items == []
