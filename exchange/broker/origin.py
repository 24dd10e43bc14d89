"""Where a message comes from, decoded from its properties and headers, in one place.

A message reaches the work queue straight from an agency (the broker's
validated ``user_id`` and the routing key say where from), back from a
retry queue, or from the replay tool: then the exchange's own broker user
published it and headers carry the original routing key and user. A
message reaches the parked queue from a worker (with those headers) or
dead-lettered by the broker (with its ``x-death`` record). The headers of
origin are believed only from the exchange's own users, the agency header
only from gateway users (:data:`exchange.broker.headers.AGENCY`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from exchange.broker import headers as header
from exchange.broker.topology import WORK_QUEUES

# Quorum queues count a message's earlier deliveries in this header.
DELIVERY_COUNT = "x-delivery-count"
# x-death, the broker's record of dead-lettering (RabbitMQ's own names).
X_DEATH = "x-death"
DELIVERY_LIMIT = "delivery_limit"


def delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times the broker handed this message out before (quorum queues count)."""
    count = (message.headers or {}).get(DELIVERY_COUNT, 0)
    return count if isinstance(count, int) else 0


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Origin:
    """Where a message really comes from, whichever way it reached the work queue.

    Straight from an agency, the broker's ``user_id`` and routing key say it.
    Back from a retry queue or sent by the replay tool, the exchange's own
    user published it, and headers carry the original values; those headers
    are believed only then, never from an agency.
    """

    routing_key: str
    broker_user: str | None
    attempts: int = 0
    replay: bool = False
    published_at: datetime | None = None
    # The lane the publisher named (x-lienthong-lane), carried through retries
    # so the worker checks it against the publisher whichever way it came.
    lane: str | None = None

    @classmethod
    def of(
        cls,
        message: AbstractIncomingMessage,
        trusted_users: frozenset[str],
        gateway_users: frozenset[str] = frozenset(),
    ) -> Origin:
        """The origin of a message as the worker received it.

        A gateway's user publishes for the agency its header names
        (``x-lienthong-agency``): the publisher is then that user acting for
        that agency (:func:`exchange.broker.headers.on_behalf`), believed
        from ``gateway_users`` only.
        """
        headers = message.headers or {}
        user = message.user_id
        agency = header.text(headers, header.AGENCY)
        if user in gateway_users and agency:
            user = header.on_behalf(user, agency)
        # The AMQP timestamp has whole seconds; the client adds the publish
        # time to the microsecond. Only latency figures use it, so it is
        # taken from anyone.
        stamped = header.text(headers, header.PUBLISHED_AT)
        published_at = _parse_time(stamped) if stamped else message.timestamp
        if published_at is not None and published_at.tzinfo is None:
            published_at = published_at.replace(tzinfo=UTC)
        lane = header.text(headers, header.LANE)
        if message.user_id not in trusted_users:
            return cls(message.routing_key or "", user, published_at=published_at, lane=lane)
        attempts = headers.get(header.ATTEMPTS, 0)
        return cls(
            routing_key=header.text(headers, header.RECIPIENT) or message.routing_key or "",
            broker_user=header.text(headers, header.ORIGINAL_USER) or user,
            attempts=attempts if isinstance(attempts, int) else 0,
            replay=headers.get(header.REPLAY) is not None,
            published_at=published_at,
            lane=lane,
        )

    def headers(self, *, attempts: int, failure: str | None) -> dict[str, Any]:
        """Headers that carry this origin through a retry queue, the parked or the bulk queue.

        ``failure`` is the code of the failure that sends it there
        (:class:`exchange.failures.Failure`); ``None`` for the bulk queue.
        """
        headers: dict[str, Any] = {
            header.RECIPIENT: self.routing_key,
            header.ATTEMPTS: attempts,
        }
        if failure is not None:
            headers[header.FAILURE] = failure
        if self.broker_user:
            headers[header.ORIGINAL_USER] = self.broker_user
        if self.replay:
            # A replay that meets a transient failure is still a replay when
            # it comes back from the retry queue.
            headers[header.REPLAY] = "retried"
        if self.published_at is not None:
            headers[header.PUBLISHED_AT] = self.published_at.isoformat()
        if self.lane is not None:
            headers[header.LANE] = self.lane
        return headers


@dataclass(frozen=True)
class DeadLetter:
    """What a message in ``lienthong.parked`` says of where it came from and why it is there.

    ``routing_key`` is its recipient, or ``None`` when that is lost;
    ``failure`` the code of the worker's failure that parked it (believed
    from the exchange's own users only), else ``None``; ``delivery_limit``
    whether the broker dead-lettered it after too many deliveries.
    """

    routing_key: str | None
    broker_user: str | None
    failure: str | None
    delivery_limit: bool


def dead_letter(
    routing_key: str | None,
    user_id: str | None,
    headers: Mapping[str, Any] | None,
    trusted_users: frozenset[str],
) -> DeadLetter:
    """The original routing key and broker user of a parked message, and its failure's code.

    A worker parks with ``x-recipient`` and ``x-lienthong-user`` headers,
    believed (as the worker believes them) only when the message's
    ``user_id`` is one of the exchange's own users. The broker dead-letters
    a poison message from the work queue as it was published: ``user_id``
    is the agency's, validated by RabbitMQ, and the routing key is the
    recipient, also in its ``x-death`` record. A routing key of a work
    queue itself means the recipient is lost: ``routing_key`` is then None.
    """
    headers = headers or {}
    deaths = headers.get(X_DEATH)
    death: Mapping[str, Any] = {}
    if isinstance(deaths, list) and deaths:
        from_work = [
            d
            for d in deaths
            if isinstance(d, Mapping) and header.decode(d.get("queue")) in WORK_QUEUES
        ]
        death = from_work[0] if from_work else deaths[0] if isinstance(deaths[0], Mapping) else {}
    keys = death.get("routing-keys")
    death_key = header.decode(keys[0]) if isinstance(keys, list) and keys else None
    trusted = user_id is not None and user_id in trusted_users
    candidates = [death_key, routing_key]
    user = user_id
    failure = None
    if trusted:
        candidates.insert(0, header.text(headers, header.RECIPIENT))
        user = header.text(headers, header.ORIGINAL_USER) or user_id
        failure = header.text(headers, header.FAILURE)
    recipient = next((key for key in candidates if key and key not in WORK_QUEUES), None)
    delivery_limit = bool(death) and header.decode(death.get("reason")) == DELIVERY_LIMIT
    return DeadLetter(recipient, user, failure, delivery_limit)
