"""The business-status state machine over the QCVN 102 code list."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.status import (
    DeliveryState,
    IllegalTransition,
    StatusCode,
    next_state,
    replay,
)

S = StatusCode


@pytest.mark.parametrize(
    "history",
    [
        [S.ARRIVED, S.ACCEPTED, S.ASSIGNED, S.PROCESSING, S.DONE],
        [S.ACCEPTED, S.DONE],
        [S.ARRIVED, S.RETURNED],
        [S.RETURNED],
        [S.ACCEPTED, S.ASSIGNED, S.ASSIGNED, S.PROCESSING, S.PROCESSING, S.DONE],
        [S.ARRIVED, S.ACCEPTED, S.PROCESSING, S.RETURNED],
        [S.ARRIVED, S.RECALL_REQUESTED, S.RECALL_REFUSED, S.ACCEPTED, S.DONE],
        [S.ARRIVED, S.ACCEPTED, S.RECALL_REQUESTED, S.RECALL_AGREED],
        [S.ACCEPTED, S.DONE, S.RECALL_REQUESTED, S.RECALL_REFUSED],
        [S.DONE],
        [S.ARRIVED, S.ASSIGNED, S.DONE],
        [S.PROCESSING, S.ASSIGNED, S.PROCESSING],
    ],
)
def test_real_histories_are_allowed(history: list[StatusCode]) -> None:
    replay(history)


@pytest.mark.parametrize(
    ("history", "says"),
    [
        ([S.ARRIVED, S.ACCEPTED, S.DONE, S.PROCESSING], "cannot follow 06"),
        ([S.RETURNED, S.ACCEPTED], "cannot follow 02"),
        ([S.ARRIVED, S.ARRIVED], "cannot follow 01"),
        ([S.ACCEPTED, S.ARRIVED], "cannot follow 03"),
        ([S.PROCESSING, S.ACCEPTED], "cannot follow 05"),
        ([S.RECALL_AGREED], "none is pending"),
        ([S.RECALL_REQUESTED, S.RECALL_REQUESTED], "already waiting"),
        ([S.RETURNED, S.RECALL_REQUESTED], "nothing to recall"),
        ([S.RECALL_REQUESTED, S.RECALL_AGREED, S.ACCEPTED], "withdrawn"),
    ],
)
def test_illegal_histories_name_the_problem(history: list[StatusCode], says: str) -> None:
    with pytest.raises(IllegalTransition, match=says):
        replay(history)


def test_done_and_returned_close_the_delivery() -> None:
    assert replay([S.ACCEPTED, S.DONE]).closed
    assert replay([S.RETURNED]).closed
    assert replay([S.RECALL_REQUESTED, S.RECALL_AGREED]).closed
    assert not replay([S.ACCEPTED, S.PROCESSING]).closed


def test_only_recall_requests_come_from_the_sender() -> None:
    assert [c for c in StatusCode if c.reported_by_sender] == [S.RECALL_REQUESTED]


@given(st.lists(st.sampled_from(list(StatusCode)), max_size=12))
def test_a_closed_delivery_accepts_nothing_but_a_recall_answer_path(
    history: list[StatusCode],
) -> None:
    """Whatever the history, once closed only the recall codes may still move it."""
    state = DeliveryState()
    for code in history:
        try:
            after = next_state(state, code)
        except IllegalTransition:
            continue
        if state.closed and not state.withdrawn:
            assert code in (S.RECALL_REQUESTED, S.RECALL_AGREED, S.RECALL_REFUSED)
        assert not state.withdrawn  # a withdrawn delivery never moves
        state = after


def test_statuses_that_overtook_each_other_are_judged_in_timestamp_order() -> None:
    from datetime import datetime, timedelta

    from exchange.status import replay_timeline

    t0 = datetime(2026, 1, 1, 8, 0, 0)
    arrived_late = [(t0 + timedelta(seconds=3), S.DONE), (t0 + timedelta(seconds=1), S.ACCEPTED)]
    assert replay_timeline(arrived_late).latest is S.DONE
    same_second = [(t0, S.DONE), (t0, S.ARRIVED), (t0, S.ACCEPTED)]
    assert replay_timeline(same_second).latest is S.DONE
    with pytest.raises(IllegalTransition, match="cannot follow 06"):
        replay_timeline([(t0, S.DONE), (t0 + timedelta(seconds=1), S.PROCESSING)])
