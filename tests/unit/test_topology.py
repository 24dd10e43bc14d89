"""The topology as data: names, queue arguments, subscriptions, definitions, permissions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from exchange.agency import AgencyCode, matches_pattern
from exchange.broker.topology import (
    DELIVER_EXCHANGE,
    INTAKE_EXCHANGE,
    LANE_QUEUES,
    LANES,
    PARKED_QUEUE,
    PARKING_EXCHANGE,
    RETRY_EXCHANGE,
    RETRY_TIERS,
    STATUS_EXCHANGE,
    SUBMIT_EXCHANGE,
    UNWANTED_BINDINGS,
    WORK_DELIVERY_LIMIT,
    WORK_QUEUE,
    Binding,
    DeadLetterStrategy,
    Exchange,
    ExchangeType,
    Overflow,
    Queue,
    QueueType,
    SubscriptionError,
    Topology,
    TopologyError,
    agency_permissions,
    agency_topology,
    core_topology,
    deal_lanes,
    definitions_json,
    inbox_queue,
    status_queue,
    to_definitions,
    validate_subscription,
)

REPO = Path(__file__).resolve().parents[2]
COMMITTED_DEFINITIONS = REPO / "deploy" / "rabbitmq" / "definitions.json"
COMMUNE = AgencyCode.parse("000.46.24.H44")


def test_public_names_are_the_documented_ones() -> None:
    assert (SUBMIT_EXCHANGE, WORK_QUEUE) == ("lienthong.submit", "lienthong.work")
    assert (DELIVER_EXCHANGE, STATUS_EXCHANGE) == ("lienthong.deliver", "lienthong.status")
    assert (PARKING_EXCHANGE, PARKED_QUEUE) == ("lienthong.parking", "lienthong.parked")
    assert inbox_queue(COMMUNE) == "lienthong.inbox.000.46.24.H44"
    assert status_queue(COMMUNE) == "lienthong.status.000.46.24.H44"
    assert [tier.queue for tier in RETRY_TIERS] == [
        "lienthong.retry.1s",
        "lienthong.retry.10s",
        "lienthong.retry.1m",
        "lienthong.retry.10m",
    ]


def test_work_queue_parks_poison_messages_without_losing_them() -> None:
    work = core_topology().queue(WORK_QUEUE)

    assert work.arguments() == {
        "x-queue-type": "quorum",
        "x-delivery-limit": WORK_DELIVERY_LIMIT,
        "x-dead-letter-exchange": PARKING_EXCHANGE,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def test_every_submitted_message_reaches_one_lane_by_its_lane_header() -> None:
    topology = core_topology()
    intake = next(e for e in topology.exchanges if e.name == INTAKE_EXCHANGE)

    assert Binding(SUBMIT_EXCHANGE, INTAKE_EXCHANGE, "#", "exchange") in topology.bindings
    assert (intake.type, intake.internal) == (ExchangeType.CONSISTENT_HASH, True)
    assert intake.arguments() == {"hash-header": "x-lienthong-lane"}
    lanes = [b for b in topology.bindings if b.source == INTAKE_EXCHANGE]
    assert sorted(b.destination for b in lanes) == sorted(LANE_QUEUES)
    assert {b.routing_key for b in lanes} == {"1"}, "equal weights on the hash ring"
    assert len(set(LANE_QUEUES)) == LANES
    for name in LANE_QUEUES:
        assert topology.queue(name).arguments() == topology.queue(WORK_QUEUE).arguments()


@pytest.mark.parametrize("connections", range(1, LANES + 1))
def test_the_lanes_are_dealt_out_each_to_one_connection_evenly(connections: int) -> None:
    dealt = deal_lanes(connections)
    assert len(dealt) == connections
    assert sorted(lane for hand in dealt for lane in hand) == sorted(LANE_QUEUES)
    assert max(map(len, dealt)) - min(map(len, dealt)) <= 1


@pytest.mark.parametrize("connections", [0, LANES + 1])
def test_lanes_cannot_be_dealt_to_no_connection_or_to_more_than_there_are_lanes(
    connections: int,
) -> None:
    with pytest.raises(ValueError, match="1 to 16"):
        deal_lanes(connections)


def test_the_work_queue_is_not_bound_to_the_submit_exchange_beside_the_lanes() -> None:
    wrong = Binding(SUBMIT_EXCHANGE, WORK_QUEUE, "#")

    assert wrong not in core_topology().bindings
    assert wrong in UNWANTED_BINDINGS


def test_retry_tiers_wait_longer_each_and_return_to_work() -> None:
    topology = core_topology()
    delays = [tier.ttl_ms for tier in RETRY_TIERS]

    assert delays == sorted(delays) and len(set(delays)) == len(delays)
    assert delays[0] == 1000 and delays[-1] == 10 * 60 * 1000
    for tier in RETRY_TIERS:
        queue = topology.queue(tier.queue)
        assert queue.message_ttl == tier.ttl_ms
        assert (queue.dead_letter_exchange, queue.dead_letter_routing_key) == ("", WORK_QUEUE)
        assert Binding(RETRY_EXCHANGE, tier.queue, tier.routing_key) in topology.bindings


def test_parking_exchange_fans_out_to_the_parked_queue() -> None:
    topology = core_topology()

    assert Exchange(PARKING_EXCHANGE, ExchangeType.FANOUT) in topology.exchanges
    assert [b for b in topology.bindings if b.source == PARKING_EXCHANGE] == [
        Binding(PARKING_EXCHANGE, PARKED_QUEUE, "")
    ]


def test_every_core_queue_is_a_durable_quorum_queue() -> None:
    for queue in core_topology().queues:
        assert (queue.queue_type, queue.durable) == (QueueType.QUORUM, True), queue.name


def test_every_binding_joins_declared_exchanges_and_queues() -> None:
    topology = core_topology() + agency_topology(COMMUNE)
    exchanges = {e.name for e in topology.exchanges}
    queues = {q.name for q in topology.queues}

    for binding in topology.bindings:
        targets = exchanges if binding.destination_type == "exchange" else queues
        assert binding.source in exchanges and binding.destination in targets, binding


def test_agency_queues_are_bound_with_its_code_only() -> None:
    # Subscriptions are no bindings: the worker publishes and records each copy.
    topology = agency_topology(COMMUNE)

    assert [b for b in topology.bindings if b.source == DELIVER_EXCHANGE] == [
        Binding(DELIVER_EXCHANGE, inbox_queue(COMMUNE), "000.46.24.H44")
    ]
    assert [b for b in topology.bindings if b.source == STATUS_EXCHANGE] == [
        Binding(STATUS_EXCHANGE, status_queue(COMMUNE), "000.46.24.H44")
    ]
    assert {q.name for q in topology.queues} == {inbox_queue(COMMUNE), status_queue(COMMUNE)}


@pytest.mark.parametrize(
    ("pattern", "covers"),
    [
        ("*.*.24.H44", True),
        ("*.*.*.H44", True),
        ("*.46.24.H44", True),
        ("000.46.24.H44", True),
        ("*.*.25.H44", False),
        ("*.*.*.H26", False),
        ("*.47.24.H44", False),
    ],
)
def test_a_subscription_covers_the_codes_of_its_subtree(pattern: str, covers: bool) -> None:
    assert matches_pattern(COMMUNE, validate_subscription(pattern)) is covers


@pytest.mark.parametrize("pattern", ["*.*.*.H26", "*.*.24.H44", "000.46.24.H44", "*.46.*.H44"])
def test_subtree_patterns_are_accepted(pattern: str) -> None:
    assert validate_subscription(pattern) == pattern


@pytest.mark.parametrize(
    ("pattern", "complaint"),
    [
        ("#", "'#'"),
        ("*.*.#", "'#'"),
        ("*.#.H26", "'#'"),
        ("*.*.H26", "3 groups"),
        ("*.*.*.*.H26", "5 groups"),
        ("*.*.*.h26", "group 4"),
        ("*.*.4.H44", "group 3"),
        ("00.*.*.H44", "group 1"),
        ("*.*.24.*", "last group"),
        ("*.*.*.*", "last group"),
        ("", "1 groups"),
    ],
)
def test_bad_subscription_patterns_are_refused_with_the_reason(
    pattern: str, complaint: str
) -> None:
    with pytest.raises(SubscriptionError, match=re.escape(complaint)):
        validate_subscription(pattern)


def test_subtree_pattern_of_every_level_is_a_valid_subscription() -> None:
    for code in ("000.00.00.H26", "000.00.24.H44", "000.46.24.H44"):
        agency = AgencyCode.parse(code)
        pattern = validate_subscription(agency.subtree_pattern)
        assert matches_pattern(agency, pattern)


def test_quorum_queue_must_be_durable() -> None:
    with pytest.raises(TopologyError, match="durable"):
        Queue("q", QueueType.QUORUM, durable=False)


def test_delivery_limit_needs_a_quorum_queue() -> None:
    with pytest.raises(TopologyError, match="delivery_limit"):
        Queue("q", QueueType.CLASSIC, delivery_limit=3)


def test_at_least_once_dead_lettering_needs_reject_publish() -> None:
    with pytest.raises(TopologyError, match="reject-publish"):
        Queue(
            "q",
            dead_letter_exchange="x",
            dead_letter_strategy=DeadLetterStrategy.AT_LEAST_ONCE,
            overflow=Overflow.DROP_HEAD,
        )


def test_dead_letter_key_needs_a_dead_letter_exchange() -> None:
    with pytest.raises(TopologyError, match="dead-letter exchange"):
        Queue("q", dead_letter_routing_key="k")


def test_merging_topologies_keeps_one_of_each() -> None:
    merged = agency_topology(COMMUNE) + agency_topology(COMMUNE) + core_topology()

    assert len(merged.queues) == len({q.name for q in merged.queues})
    assert len(merged.bindings) == len(set(merged.bindings))
    assert merged.queue(inbox_queue(COMMUNE)) == Queue(inbox_queue(COMMUNE))


def test_merging_two_different_queues_of_one_name_is_refused() -> None:
    classic = Topology(queues=(Queue(WORK_QUEUE, QueueType.CLASSIC),))

    with pytest.raises(TopologyError, match="declared twice"):
        core_topology() + classic


def test_definitions_hold_every_exchange_queue_and_binding_in_a_stable_order() -> None:
    topology = core_topology() + agency_topology(COMMUNE)
    shuffled = Topology(
        exchanges=topology.exchanges[::-1],
        queues=topology.queues[::-1],
        bindings=topology.bindings[::-1],
    )

    definitions = to_definitions(topology, vhost="lienthong")

    assert definitions == to_definitions(shuffled, vhost="lienthong")
    assert [q["name"] for q in definitions["queues"]] == sorted(q.name for q in topology.queues)
    assert {e["name"] for e in definitions["exchanges"]} == {e.name for e in topology.exchanges}
    assert len(definitions["bindings"]) == len(topology.bindings)
    assert {item["vhost"] for kind in definitions.values() for item in kind} == {"lienthong"}
    work = next(q for q in definitions["queues"] if q["name"] == WORK_QUEUE)
    assert work["arguments"]["x-delivery-limit"] == WORK_DELIVERY_LIMIT
    assert work["durable"] is True


def test_committed_definitions_file_matches_the_core_topology() -> None:
    expected = definitions_json(core_topology())
    committed = COMMITTED_DEFINITIONS.read_text(encoding="utf-8")

    assert committed == expected, (
        f"{COMMITTED_DEFINITIONS.relative_to(REPO)} is stale; regenerate it with\n"
        "  .venv/bin/python -m exchange.broker.topology > deploy/rabbitmq/definitions.json\n"
        "and commit it with the topology change"
    )
    assert json.loads(committed) == to_definitions(core_topology())


def test_agency_user_may_write_only_the_submit_exchange() -> None:
    write = re.compile(agency_permissions(COMMUNE).write)

    assert write.search(SUBMIT_EXCHANGE)
    for other in (DELIVER_EXCHANGE, STATUS_EXCHANGE, RETRY_EXCHANGE, "lienthong.submitx", ""):
        assert not write.search(other), other


def test_agency_user_may_read_only_its_own_queues() -> None:
    read = re.compile(agency_permissions(COMMUNE).read)
    neighbour = AgencyCode.parse("000.47.24.H44")

    assert read.search(inbox_queue(COMMUNE)) and read.search(status_queue(COMMUNE))
    for other in (
        inbox_queue(neighbour),
        status_queue(neighbour),
        WORK_QUEUE,
        PARKED_QUEUE,
        "lienthong.inbox.000x46.24.H44",  # the dots are literal, not "any character"
        inbox_queue(COMMUNE) + ".extra",
    ):
        assert not read.search(other), other


def test_agency_user_may_configure_nothing() -> None:
    configure = re.compile(agency_permissions(COMMUNE).configure)

    assert configure.fullmatch("")
    assert not configure.search(inbox_queue(COMMUNE))
