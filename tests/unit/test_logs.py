"""Structured logs: JSON for machines, text for people, identifiers only."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from exchange.logs import (
    MAX_MESSAGE_CHARS,
    JsonFormatter,
    TextFormatter,
    chosen_format,
    configure_logging,
)
from exchange.settings import Settings

DECISION = {
    "message_id": "3f2a9c1e-0d7b-4e55-9a51-8b6f0d2c4e11",
    "message_pk": 42,
    "document_id": "000.00.00.G22,2024/05/02,101/VPCP-TH",
    "sender": "000.00.00.G22",
    "recipient": "000.00.00.G09",
    "kind": "document",
    "outcome": "delivered",
}


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def record(message: str = "message 42 document: delivered", **extra: object) -> logging.LogRecord:
    """A log record as ``log.info(message, extra=extra)`` makes it."""
    made = logging.getLogger("lienthong.worker").makeRecord(
        "lienthong.worker", logging.INFO, __file__, 1, message, (), None, extra=extra
    )
    return made


@pytest.fixture
def root_handlers() -> Iterator[None]:
    """Put the root logger back as it was (configure_logging replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_line_carries_every_decision_field_as_its_own_key() -> None:
    line = json.loads(JsonFormatter().format(record(**DECISION)))

    assert {key: line[key] for key in DECISION} == DECISION
    assert line["level"] == "info"
    assert line["logger"] == "lienthong.worker"
    assert line["message"] == "message 42 document: delivered"
    assert line["time"].endswith("+00:00")


def test_fields_outside_the_list_never_reach_the_log() -> None:
    package = "<edXMLEnvelope>Về việc triển khai liên thông</edXMLEnvelope>"

    for formatter in (JsonFormatter(), TextFormatter()):
        text = formatter.format(record(body=package, subject="Về việc triển khai", **DECISION))
        assert "edXMLEnvelope" not in text
        assert "triển khai" not in text
        assert DECISION["document_id"] in text


def test_a_huge_message_is_cut_so_no_package_is_copied_into_the_log() -> None:
    body = "A" * (10 * MAX_MESSAGE_CHARS)

    line = json.loads(JsonFormatter().format(record(f"could not read {body}")))

    assert len(line["message"]) < MAX_MESSAGE_CHARS + 100
    assert "more characters" in line["message"]


def test_absent_fields_are_left_out_rather_than_written_as_none() -> None:
    line = json.loads(JsonFormatter().format(record(sender=None, outcome="rejected")))

    assert "sender" not in line
    assert line["outcome"] == "rejected"


def test_an_exception_is_part_of_the_same_json_line() -> None:
    try:
        raise ConnectionError("database went away")
    except ConnectionError:
        made = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info()
        )

    text = JsonFormatter().format(made)

    assert "\n" not in text
    assert "ConnectionError: database went away" in json.loads(text)["exception"]


def test_text_line_is_readable_with_the_fields_after_the_message() -> None:
    text = TextFormatter().format(record(**DECISION))

    assert "INFO" in text
    assert "lienthong.worker: message 42 document: delivered" in text
    assert "outcome=delivered" in text
    assert f"message_id={DECISION['message_id']}" in text


def test_format_is_json_off_a_terminal_and_text_on_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIENTHONG_LOG_FORMAT", raising=False)

    assert chosen_format(Settings().log_format, io.StringIO()) == "json"
    assert chosen_format(None, io.StringIO()) == "json"
    assert chosen_format(None, Terminal()) == "text"
    assert chosen_format("auto", Terminal()) == "text"


def test_environment_and_argument_override_the_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment is read once, into Settings.log_format.
    monkeypatch.setenv("LIENTHONG_LOG_FORMAT", "json")
    assert chosen_format(Settings().log_format, Terminal()) == "json"
    monkeypatch.setenv("LIENTHONG_LOG_FORMAT", "text")
    assert chosen_format(Settings().log_format, io.StringIO()) == "text"
    assert chosen_format("json", io.StringIO()) == "json"


def test_an_unknown_format_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="auto, json, text"):
        chosen_format("xml", io.StringIO())


@pytest.mark.usefixtures("root_handlers")
def test_configure_logging_twice_writes_each_line_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIENTHONG_LOG_FORMAT", raising=False)
    stream = io.StringIO()
    configure_logging(stream=io.StringIO())
    configure_logging(stream=stream)

    logging.getLogger("lienthong.worker").info("decided", extra={"outcome": "delivered"})

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["outcome"] == "delivered"
