"""The gateway's metrics, as pure functions: labels, levels, ages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from exchange.gateway import measure
from exchange.gateway.app import OPERATIONS


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_observer_counts_and_times_each_answer_by_operation_and_outcome() -> None:
    observe = measure.observer(OPERATIONS)
    before = _sample("lienthong_gateway_requests_total", operation="sendEdoc", outcome="204")
    timed = _sample("lienthong_gateway_request_seconds_count", operation="sendEdoc")
    observe("sendEdoc", "204", 0.03, "SYS-A")
    observe("sendEdoc", "204", 0.5, None)
    after = _sample("lienthong_gateway_requests_total", operation="sendEdoc", outcome="204")
    assert after - before == 2
    assert _sample("lienthong_gateway_request_seconds_count", operation="sendEdoc") - timed == 2


def test_an_operation_outside_the_protocol_is_counted_as_unknown() -> None:
    observe = measure.observer(OPERATIONS)
    before = _sample("lienthong_gateway_requests_total", operation="unknown", outcome="202")
    observe("../../etc/passwd", "202", 0.001, None)
    after = _sample("lienthong_gateway_requests_total", operation="unknown", outcome="202")
    assert after - before == 1
    assert (
        REGISTRY.get_sample_value(
            "lienthong_gateway_requests_total", {"operation": "../../etc/passwd", "outcome": "202"}
        )
        is None
    )


def test_mailbox_depths_add_up_by_level_and_every_level_is_present() -> None:
    depths = {
        ("000.00.00.H26", "edoc"): 2,  # level 1
        ("000.00.00.G09", "edoc"): 1,  # level 1
        ("000.00.01.H26", "status"): 4,  # level 2
        ("000.46.24.H44", "edoc"): 3,  # level 3
    }
    totals = measure.depths_by_level(depths)
    assert totals[("1", "edoc")] == 3
    assert totals[("2", "status")] == 4
    assert totals[("3", "edoc")] == 3
    assert totals[("4", "edoc")] == 0 and totals[("4", "status")] == 0
    assert len(totals) == 8


def test_ages_are_zero_for_none_and_for_a_moment_ahead_of_the_clock() -> None:
    now = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
    assert measure.age_s(None, now) == 0
    assert measure.age_s(now + timedelta(seconds=5), now) == 0
    assert measure.age_s(now - timedelta(days=8), now) == 8 * 86400
