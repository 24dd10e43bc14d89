"""The replay tool's pure parts: filters, selection, parked origins, judging, the summary."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from exchange.agency import AgencyCode
from exchange.broker import headers as header
from exchange.edxml.model import VIETNAM_TIME
from exchange.replay import (
    Action,
    Entry,
    Filters,
    Progress,
    ReplayError,
    Selection,
    Source,
    describe_selection,
    entry_of,
    is_new_decision,
    judge,
    parked_origin,
    progress_line,
    reason_codes,
    replay_headers,
    summarise,
)
from exchange.status import MessageKind, TransportOutcome
from exchange.store.records import Message

NOW = datetime(2024, 5, 10, 8, 0, tzinfo=UTC)
WORKER = "lienthong-worker"
AGENCY_USER = "000.00.00.G22"
RECIPIENT = "000.00.00.H26"


def message(
    pk: int = 1,
    *,
    outcome: TransportOutcome | None = TransportOutcome.REJECTED,
    reason: str | None = "REJECTED_CERT_UNTRUSTED",
    published: bool = True,
    broker_user: str | None = AGENCY_USER,
    updated_at: datetime = NOW,
) -> Message:
    """A recorded message as the store returns it."""
    return Message(
        pk=pk,
        dedup_key=f"{pk:064x}",
        amqp_message_id=f"m-{pk}",
        routing_key=RECIPIENT,
        broker_user=broker_user,
        sha256="ab" * 32,
        received_at=NOW - timedelta(hours=1),
        kind=MessageKind.DOCUMENT,
        sender=AgencyCode.parse(AGENCY_USER),
        outcome=outcome,
        reason_code=reason,
        reason_detail=None,
        document_pk=None,
        document_id=None,
        attempts=1,
        published_at=updated_at if published else None,
        updated_at=updated_at,
    )


# -- times and reasons -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        ("REJECTED_CERT_UNTRUSTED", ("REJECTED_CERT_UNTRUSTED",)),
        ("cert_untrusted", ("REJECTED_CERT_UNTRUSTED",)),
        ("PARKED_DATABASE", ("PARKED_DATABASE",)),
        ("database", ("PARKED_DATABASE",)),
        ("TRANSIENT_BROKER", ("PARKED_BROKER",)),
        ("poison", ("PARKED_POISON",)),
    ],
)
def test_reason_codes_accept_the_full_code_or_the_name_alone(
    text: str, codes: tuple[str, ...]
) -> None:
    assert reason_codes(text) == codes


@pytest.mark.parametrize("text", ["REJECTED_NO_SUCH_THING", "PARKED_CERT_UNTRUSTED", "banana"])
def test_an_unknown_reason_code_is_refused_with_the_known_ones(text: str) -> None:
    with pytest.raises(ReplayError, match="REJECTED_CERT_UNTRUSTED"):
        reason_codes(text)


# -- filters and selection -----------------------------------------------------------


def test_filters_parse_every_option_into_domain_values() -> None:
    filters = Filters.parse(
        since="2h",
        until="2024-05-10T15:00",
        sender="000.00.00.G22",
        recipient="000.00.00.H26",
        reason="CERT_UNTRUSTED",
        outcome="rejected",
        now=NOW,
    )
    assert filters.since == NOW - timedelta(hours=2)
    assert filters.until == datetime(2024, 5, 10, 15, 0, tzinfo=VIETNAM_TIME)
    assert filters.sender == AgencyCode.parse("000.00.00.G22")
    assert filters.recipient == AgencyCode.parse("000.00.00.H26")
    assert filters.reasons == ("REJECTED_CERT_UNTRUSTED",)
    assert filters.outcome is TransportOutcome.REJECTED
    assert not filters.empty
    assert filters.as_dict()["sender"] == "000.00.00.G22"


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"since": "1h", "until": "2h"}, "not before"),
        ({"sender": "G22"}, "--sender G22"),
        ({"recipient": "000.00.00.h26"}, "--recipient"),
        ({"outcome": "delivered"}, "only rejected or parked"),
    ],
)
def test_filters_that_cannot_be_met_are_refused_naming_the_option(
    options: dict[str, str], complaint: str
) -> None:
    with pytest.raises(ReplayError, match=complaint):
        Filters.parse(now=NOW, **options)


def test_no_filters_is_empty_and_records_nothing() -> None:
    assert Filters.parse(now=NOW).empty
    assert Filters().as_dict() == {}


@pytest.mark.parametrize(
    ("selection", "complaint"),
    [
        (Selection(), "say what to replay"),
        (Selection(ids=(1,), all=True), "not several"),
        (Selection(ids=(1,), filters=Filters(outcome=TransportOutcome.PARKED)), "not several"),
        (Selection(all=True, filters=Filters(outcome=TransportOutcome.PARKED)), "--all"),
        (Selection(ids=(1,), from_queue=True), "--from-queue"),
    ],
)
def test_a_selection_must_name_messages_one_way(selection: Selection, complaint: str) -> None:
    with pytest.raises(ReplayError, match=complaint):
        selection.check()


@pytest.mark.parametrize(
    "selection",
    [
        Selection(ids=(3, 4)),
        Selection(all=True),
        Selection(filters=Filters(outcome=TransportOutcome.PARKED)),
        Selection(from_queue=True),
        Selection(from_queue=True, filters=Filters(recipient=AgencyCode.parse(RECIPIENT))),
    ],
)
def test_a_selection_naming_messages_one_way_is_accepted(selection: Selection) -> None:
    selection.check()


def test_a_recorded_selection_reads_back_as_the_options_given() -> None:
    selection = Selection(
        filters=Filters.parse(sender="000.00.00.G22", reason="CERT_UNTRUSTED", now=NOW)
    )
    assert describe_selection(selection.as_dict()) == (
        "--sender 000.00.00.G22 --reasons REJECTED_CERT_UNTRUSTED"
    )
    assert describe_selection(Selection(ids=(7, 9)).as_dict()) == "ids 7,9"


def test_filters_admit_a_parked_queue_entry_only_when_every_filter_matches() -> None:
    entry = entry_of(message(outcome=TransportOutcome.PARKED, reason="PARKED_DATABASE"))
    assert Filters().admits(entry)
    assert Filters.parse(recipient=RECIPIENT, reason="DATABASE", now=NOW).admits(entry)
    assert not Filters.parse(recipient="000.00.01.H26", now=NOW).admits(entry)
    assert not Filters.parse(reason="POISON", now=NOW).admits(entry)
    assert not Filters.parse(since="10m", now=NOW).admits(entry)
    assert Filters.parse(since="2h", until="10m", now=NOW).admits(entry)


# -- what a replay does with a message -------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "published", "source", "action"),
    [
        (TransportOutcome.REJECTED, True, Source.DATABASE, Action.REPLAY),
        (TransportOutcome.PARKED, True, Source.DATABASE, Action.REPLAY),
        (TransportOutcome.DELIVERED, True, Source.DATABASE, Action.SKIP),
        (TransportOutcome.DELIVERED, True, Source.PARKED_QUEUE, Action.REMOVE),
        # Decided delivered, but parked before its effects were confirmed:
        # the replay lets the worker publish what it owes.
        (TransportOutcome.DELIVERED, False, Source.DATABASE, Action.REPLAY),
        (None, False, Source.DATABASE, Action.SKIP),
        (None, False, Source.PARKED_QUEUE, Action.REPLAY),
    ],
)
def test_only_refused_or_unfinished_messages_are_replayed_and_delivered_ones_never(
    outcome: TransportOutcome | None, published: bool, source: Source, action: Action
) -> None:
    reason = "PARKED_DATABASE" if outcome is TransportOutcome.PARKED else None
    if outcome is TransportOutcome.REJECTED:
        reason = "REJECTED_CERT_UNTRUSTED"
    decided, note = judge(message(outcome=outcome, reason=reason, published=published), source)
    assert decided is action
    assert (note is None) == (action is Action.REPLAY and outcome is not None and published)


def test_a_message_published_without_a_user_id_is_not_replayed() -> None:
    action, note = judge(message(broker_user=None))
    assert action is Action.SKIP
    assert note is not None and "user_id" in note


def test_replay_headers_carry_the_replay_the_recipient_and_the_original_user() -> None:
    entry = entry_of(message())
    assert replay_headers(entry, 42) == {
        header.REPLAY: 42,
        header.RECIPIENT: RECIPIENT,
        header.ORIGINAL_USER: AGENCY_USER,
    }


def test_a_decision_counts_as_new_only_after_the_mark_and_once_its_effects_are_confirmed() -> None:
    mark = NOW
    later = NOW + timedelta(milliseconds=5)
    assert is_new_decision(message(updated_at=later), mark)
    assert not is_new_decision(message(updated_at=NOW - timedelta(seconds=1)), mark)
    assert not is_new_decision(message(updated_at=later, published=False), mark)
    assert not is_new_decision(message(outcome=None, reason=None, updated_at=later), mark)


# -- where a parked message came from --------------------------------------------------


def test_a_message_parked_by_a_worker_keeps_the_origin_its_headers_carry() -> None:
    headers: dict[str, Any] = {
        header.RECIPIENT: RECIPIENT,
        header.ORIGINAL_USER: AGENCY_USER,
        header.FAILURE: "TRANSIENT_DATABASE",
        header.ATTEMPTS: 4,
    }
    origin = parked_origin("lienthong.work", WORKER, headers, frozenset({WORKER}))
    assert (origin.routing_key, origin.broker_user, origin.reason_code) == (
        RECIPIENT,
        AGENCY_USER,
        "PARKED_DATABASE",
    )


def test_origin_headers_from_an_agency_are_not_believed() -> None:
    forged = {header.RECIPIENT: "000.00.01.H26", header.ORIGINAL_USER: "someone-else"}
    origin = parked_origin(RECIPIENT, AGENCY_USER, forged, frozenset({WORKER}))
    assert origin.routing_key == RECIPIENT
    assert origin.broker_user == AGENCY_USER


def test_a_poison_message_dead_lettered_by_the_broker_is_read_from_x_death() -> None:
    headers = {
        "x-death": [
            {
                "count": 1,
                "reason": b"delivery_limit",
                "queue": "lienthong.work",
                "exchange": "lienthong.submit",
                "routing-keys": [RECIPIENT.encode()],
            }
        ],
        "x-first-death-reason": "delivery_limit",
    }
    origin = parked_origin(None, AGENCY_USER, headers, frozenset({WORKER}))
    assert (origin.routing_key, origin.broker_user, origin.reason_code) == (
        RECIPIENT,
        AGENCY_USER,
        "PARKED_POISON",
    )


def test_a_parked_message_whose_recipient_is_lost_has_no_routing_key() -> None:
    origin = parked_origin("lienthong.work", WORKER, {}, frozenset({WORKER}))
    assert origin.routing_key is None
    assert origin.reason_code == "PARKED_INTERNAL"


def test_a_parked_message_is_identified_as_the_worker_records_it() -> None:
    from exchange.store.queries import dedup_key

    origin = parked_origin(RECIPIENT, AGENCY_USER, {}, frozenset({WORKER}))
    assert origin.dedup_key(b"<edXML/>") == dedup_key(RECIPIENT, b"<edXML/>", AGENCY_USER)


# -- the summary and the progress bar ---------------------------------------------------


def _entry(pk: int, action: Action = Action.REPLAY, note: str | None = None) -> Entry:
    return Entry(
        dedup_key=f"{pk:064x}",
        message_pk=pk,
        source=Source.DATABASE,
        received_at=NOW,
        sender=AGENCY_USER,
        recipient=RECIPIENT,
        broker_user=AGENCY_USER,
        outcome="rejected",
        reason_code="REJECTED_CERT_UNTRUSTED",
        attempts=1,
        amqp_message_id=None,
        sha256="ab" * 32,
        action=action,
        note=note,
    )


def test_the_summary_counts_each_new_outcome_and_what_was_not_replayed() -> None:
    entries = [
        _entry(1),
        _entry(2),
        _entry(3),
        _entry(4),
        _entry(5),
        _entry(6, Action.SKIP, "already delivered; a replay would not publish it again"),
        _entry(7, Action.SKIP, "publish failed: the broker nacked it"),
        _entry(8, Action.REMOVE, "already delivered; its stale parked copy is removed"),
    ]
    decisions = {
        f"{1:064x}": message(1, outcome=TransportOutcome.DELIVERED, reason=None),
        f"{2:064x}": message(2, outcome=TransportOutcome.DELIVERED, reason=None),
        f"{3:064x}": message(3, reason="REJECTED_SIGNATURE_INVALID"),
        f"{4:064x}": message(4, outcome=TransportOutcome.PARKED, reason="PARKED_DATABASE"),
    }
    summary = summarise(entries, decisions)
    assert summary.as_dict() == {
        "selected": 8,
        "published": 5,
        "failed": 1,
        "skipped": 1,
        "removed": 1,
        "delivered": 2,
        "rejected": {"REJECTED_SIGNATURE_INVALID": 1},
        "parked": {"PARKED_DATABASE": 1},
        "pending": 1,
    }
    assert not summary.complete and not summary.all_delivered
    text = "\n".join(summary.lines())
    assert "replayed 5 of 8 selected, 1 could not be published" in text
    assert "rejected again:  1 (REJECTED_SIGNATURE_INVALID: 1)" in text
    assert "pending:         1" in text


def test_a_replay_where_everything_was_delivered_is_complete() -> None:
    decisions = {f"{1:064x}": message(1, outcome=TransportOutcome.DELIVERED, reason=None)}
    summary = summarise([_entry(1)], decisions)
    assert summary.complete and summary.all_delivered
    assert summary.delivered == 1


@pytest.mark.parametrize(
    ("done", "total", "expected"),
    [
        (0, 4, "publishing [........] 0/4   0%"),
        (2, 4, "publishing [####....] 2/4  50%"),
        (4, 4, "publishing [########] 4/4 100%"),
        (0, 0, "publishing [########] 0/0 100%"),
    ],
)
def test_the_progress_line_fills_with_the_fraction_done(
    done: int, total: int, expected: str
) -> None:
    assert progress_line("publishing", done, total, width=8) == expected


def test_progress_redraws_one_line_on_a_terminal() -> None:
    out = io.StringIO()
    bar = Progress("publishing", 3, out, tty=True)
    for done in (1, 2, 3):
        bar.update(done)
    bar.finish()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("3/3 100%\n")
    assert text.count("\n") == 1


def test_progress_without_a_terminal_prints_a_line_per_tenth_for_large_sets_only() -> None:
    out = io.StringIO()
    bar = Progress("publishing", 100, out, tty=False)
    for done in range(1, 101):
        bar.update(done)
    bar.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == "publishing: 1/100"
    assert lines[-1] == "publishing: 100/100"
    assert len(lines) == 11
    small = io.StringIO()
    quiet = Progress("publishing", 3, small, tty=False)
    quiet.update(3)
    quiet.finish()
    assert small.getvalue() == ""
