"""Structured logs: one JSON object a line in production, readable lines on a terminal.

Every decision the worker takes is one log line carrying the message id,
the DocumentId, the sender, the recipient and the outcome as separate
fields (passed with ``extra=``), so an operator can search the logs the way
``lienthong trace`` searches the database.

Package content never reaches a log: only the fields named in
:data:`FIELDS` are written out of ``extra``, whatever else a caller passes,
and a message text is cut at :data:`MAX_MESSAGE_CHARS` so an error that
quotes its input cannot copy a document into the log.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

# The fields a log line may carry besides its text, in the order a terminal
# shows them. Identifiers and codes only: never bodies, subjects or names.
FIELDS = (
    "message_id",  # the AMQP message id the publisher set
    "message_pk",  # the exchange's id of the received message (x-lienthong-message)
    "document_id",
    "sender",
    "recipient",
    "broker_user",
    "kind",
    "outcome",
    "reason_code",
    "failure",
    "attempt",
    "tier",
    "service",  # RabbitMQ or PostgreSQL, while a starting worker waits for it
    # the gateway's requests (exchange/gateway)
    "operation",
    "system",
    "agency",
    "error_code",
    "doc_id",
)

# A log line's text is for people; past this it is an accident (an error
# quoting a whole input), cut so that no package ends up in the log.
MAX_MESSAGE_CHARS = 2000

# Settings.log_format (LIENTHONG_LOG_FORMAT): json, text, or auto (json unless
# the output is a terminal).
FORMATS = ("auto", "json", "text")


def _text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if len(text) > MAX_MESSAGE_CHARS:
        return text[:MAX_MESSAGE_CHARS] + f"... ({len(text) - MAX_MESSAGE_CHARS} more characters)"
    return text


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record carries (only those in :data:`FIELDS`, set and not None)."""
    fields = {}
    for name in FIELDS:
        value = record.__dict__.get(name)
        if value is None:
            continue
        fields[name] = value if isinstance(value, bool | int | float) else str(value)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the fields, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _text(record),
            **fields_of(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...``, for a person at a terminal."""

    def __init__(self) -> None:
        """A formatter with local times to the second."""
        super().__init__(datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        """The record as one readable line (and its traceback, if any)."""
        fields = " ".join(f"{name}={value}" for name, value in fields_of(record).items())
        line = (
            f"{self.formatTime(record, self.datefmt)} {record.levelname:<7} "
            f"{record.name}: {_text(record)}"
        )
        if fields:
            line += f"  [{fields}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def chosen_format(requested: str | None, stream: TextIO) -> str:
    """``json`` or ``text``: as requested (``Settings.log_format``), else by the stream.

    ``auto`` (the default) writes JSON unless the stream is a terminal: a
    service manager, a container runtime or a pipe gets JSON, a person gets text.
    """
    choice = (requested or "auto").lower()
    if choice not in FORMATS:
        raise ValueError(f"log format {choice!r} is not one of {', '.join(FORMATS)}")
    if choice == "auto":
        isatty = getattr(stream, "isatty", None)
        return "text" if isatty is not None and isatty() else "json"
    return choice


def configure_logging(
    log_format: str | None = None, *, level: int | str = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record of the process to ``stream`` (stderr) in the chosen format.

    Replaces the root logger's handlers, so calling it twice does not
    duplicate lines. Returns the handler (tests read what it wrote).
    """
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    formatter = JsonFormatter() if chosen_format(log_format, stream) == "json" else TextFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
