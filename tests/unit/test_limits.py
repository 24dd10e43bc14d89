"""The limits' numbers agree with each other, and the broker's files with the settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exchange.broker.topology import (
    AGENCY_ROUTING_KEY,
    INBOX_QUEUE_PREFIX,
    STATUS_QUEUE_PREFIX,
    queue_policies,
)
from exchange.settings import (
    DEFAULT_MAX_PACKAGE_BYTES,
    Settings,
    broker_max_message_size,
)

RABBITMQ_CONF = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "rabbitmq.conf"


def conf_value(name: str) -> str:
    """One setting of deploy/rabbitmq/rabbitmq.conf (``name = value``, comments skipped)."""
    for line in RABBITMQ_CONF.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if not line.lstrip().startswith("#") and key.strip() == name:
            return value.strip()
    raise LookupError(f"{name} is not set in {RABBITMQ_CONF}")


def test_broker_max_message_size_is_twice_the_parsers_limit() -> None:
    # Between the two, an oversized package still reaches a worker and its
    # sender gets a REJECTED_TOO_LARGE receipt; past the broker's, only a
    # closed channel.
    configured = int(conf_value("max_message_size"))
    assert configured == broker_max_message_size(DEFAULT_MAX_PACKAGE_BYTES)
    assert configured > Settings().max_package_bytes


def test_every_agency_queue_is_bounded_and_refuses_rather_than_drops() -> None:
    inbox, status = queue_policies(1000, 10)
    assert re.match(inbox.pattern, f"{INBOX_QUEUE_PREFIX}000.00.00.G09")
    assert re.match(status.pattern, f"{STATUS_QUEUE_PREFIX}000.00.00.G09")
    assert not re.match(inbox.pattern, "lienthong.work")
    assert not re.match(status.pattern, "lienthong.work")
    assert inbox.definition == {"max-length-bytes": 1000, "overflow": "reject-publish"}
    assert status.definition == {"max-length-bytes": 10, "overflow": "reject-publish"}


@pytest.mark.parametrize(
    ("key", "allowed"),
    [
        ("000.00.00.G09", True),
        ("000.46.24.H44", True),
        ("#", False),
        ("*.*.*.H26", False),
        ("000.00.00", False),
        ("000.00.00.G09.x", False),
        ("lienthong.work", False),
        ("000.00.00.g09", False),
    ],
)
def test_an_agency_may_publish_only_agency_codes_as_routing_keys(key: str, allowed: bool) -> None:
    # Erlang's PCRE and Python's re agree on this pattern (no {n}: RabbitMQ
    # expands {name} variables in topic permissions).
    assert bool(re.fullmatch(AGENCY_ROUTING_KEY, key)) is allowed
    assert "{" not in AGENCY_ROUTING_KEY
