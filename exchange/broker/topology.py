"""The RabbitMQ topology of the exchange, as data: one source for every name.

Everything the broker holds (exchanges, queues with their arguments, bindings)
is described here by frozen dataclasses, so it can be read, printed, diffed,
declared (:func:`exchange.broker.connection.declare`) and exported as a
RabbitMQ definitions file (:func:`to_definitions`) from the same objects.
The names are the public contract that any AMQP client in any language relies
on; they are documented in docs/architecture.md and must not change lightly.

Message flow::

    agency --(key = recipient code)--> lienthong.submit --#--> lienthong.intake
    lienthong.intake --(hash of x-lienthong-lane)--> lienthong.work.lane.<nn>
    worker --(key = recipient code)--> lienthong.deliver --> lienthong.inbox.<code>
    worker --(key = sender code)-----> lienthong.status  --> lienthong.status.<code>
    worker --(key = tier)------------> lienthong.retry --> lienthong.retry.<tier>
                                        --(expires)--> "" --> lienthong.work
    lienthong.work, lanes --(delivery limit)--> lienthong.parking --> lienthong.parked

Run ``python -m exchange.broker.topology`` to print the core topology as a
definitions file (the committed ``deploy/rabbitmq/definitions.json``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, TypeVar

from exchange.agency import AgencyCode
from exchange.broker import headers as header

# -- names: the public contract -----------------------------------------------

PREFIX = "lienthong"

# Agencies publish documents and status packages here, key = recipient's code.
SUBMIT_EXCHANGE = f"{PREFIX}.submit"
# The submit exchange passes every message on to this one (internal: no one
# publishes to it directly), which hashes the lane header (the sender's own
# agency code, set by the client library and the gateway) to one of the lane
# queues: every message of one sender waits in one lane, so a flood from one
# agency queues in its lane, not in front of the other agencies' documents
# (docs/performance.md, "Fairness"). Consistent-hash exchange: a plugin that
# ships with RabbitMQ (rabbitmq_consistent_hash_exchange).
INTAKE_EXCHANGE = f"{PREFIX}.intake"
# How many lanes: two agencies share a lane with a chance of one in LANES.
# Each lane is a quorum queue (a Raft group on each broker node); 16 keep
# that cost small and the chance of sharing a flooder's lane at 6 %.
LANES = 16
LANE_QUEUE_PREFIX = f"{PREFIX}.work.lane."
# Messages back from a retry queue, replayed, or from a client that predates
# the lanes' binding wait here for a worker; the workers read it beside the
# lanes.
WORK_QUEUE = f"{PREFIX}.work"
# Messages of a sender that already has its fair share of a worker's work in
# hand wait here instead (the worker moves them: exchange/worker.py); the
# workers read both queues, so a flood from one agency is not in front of
# another agency's documents (docs/performance.md, "Fairness").
BULK_QUEUE = f"{PREFIX}.work.bulk"
# Binding key of the intake: every routing key (every recipient).
WORK_BINDING_KEY = "#"
# Each lane's weight on the hash ring (a consistent-hash binding key): equal.
LANE_WEIGHT = "1"
# The worker publishes accepted packages here, key = recipient's code.
DELIVER_EXCHANGE = f"{PREFIX}.deliver"
# The worker publishes receipts and forwarded statuses here, key = the code of
# the agency they are for.
STATUS_EXCHANGE = f"{PREFIX}.status"
# The worker sends a message that failed for a transient reason here, with the
# tier name as routing key; it comes back to the work queue after the delay.
RETRY_EXCHANGE = f"{PREFIX}.retry"
# Messages that exhausted their retries or crashed workers too often land here
# (fanout: the routing key, i.e. the recipient, is kept for the replay tool).
PARKING_EXCHANGE = f"{PREFIX}.parking"
PARKED_QUEUE = f"{PREFIX}.parked"

INBOX_QUEUE_PREFIX = f"{PREFIX}.inbox."
STATUS_QUEUE_PREFIX = f"{PREFIX}.status."

# RabbitMQ's default exchange routes a message to the queue named by its key.
DEFAULT_EXCHANGE = ""


def lane_queue(number: int) -> str:
    """The name of lane ``number`` (0 to :data:`LANES` - 1)."""
    return f"{LANE_QUEUE_PREFIX}{number:02d}"


LANE_QUEUES: tuple[str, ...] = tuple(lane_queue(n) for n in range(LANES))
# Every queue a submitted message waits in for a worker.
WORK_QUEUES: tuple[str, ...] = (WORK_QUEUE, *LANE_QUEUES)


def deal_lanes(connections: int) -> list[tuple[str, ...]]:
    """The lanes dealt out among ``connections`` connections (1 to :data:`LANES`), in turn.

    Every lane goes to exactly one connection, and the connections hold as
    many lanes as one another, give or take one.
    """
    if not 1 <= connections <= LANES:
        raise ValueError(f"{connections} connections for {LANES} lanes: 1 to {LANES}")
    return [LANE_QUEUES[number::connections] for number in range(connections)]


def inbox_queue(code: AgencyCode) -> str:
    """The queue an agency consumes its incoming documents from."""
    return f"{INBOX_QUEUE_PREFIX}{code}"


def status_queue(code: AgencyCode) -> str:
    """The queue an agency consumes receipts and statuses of what it sent from."""
    return f"{STATUS_QUEUE_PREFIX}{code}"


# -- numbers, each with its reason ----------------------------------------------

# A quorum queue counts redeliveries, and it counts every message a dead
# worker held, prefetched or not. The workers park real poison themselves,
# counting only the handlings they start (exchange/worker.py, POISON_STARTS);
# this limit is the broker's backstop for a message that kills a worker
# before it can even be counted. High enough that a run of worker crashes or
# restarts never dead-letters innocent prefetched messages.
WORK_DELIVERY_LIMIT = 20

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS


@dataclass(frozen=True, slots=True)
class RetryTier:
    """One retry delay: a queue whose messages all wait the same time."""

    name: str  # also the routing key on the retry exchange
    ttl_ms: int

    @property
    def queue(self) -> str:
        """The queue holding messages waiting this delay."""
        return f"{RETRY_EXCHANGE}.{self.name}"

    @property
    def routing_key(self) -> str:
        """The key to publish to :data:`RETRY_EXCHANGE` with to wait this delay."""
        return self.name


# One queue per delay, because RabbitMQ expires messages only from the head of a
# queue: a 10-minute message at the head would hold back a 1-second message
# behind it. With one TTL per queue every message expires in arrival order.
# The delays grow tenfold so that a short outage (a worker restart) is bridged
# at once and a long one (the database down) is not hammered.
RETRY_1S = RetryTier("1s", 1 * SECOND_MS)
RETRY_10S = RetryTier("10s", 10 * SECOND_MS)
RETRY_1M = RetryTier("1m", 1 * MINUTE_MS)
RETRY_10M = RetryTier("10m", 10 * MINUTE_MS)
RETRY_TIERS: tuple[RetryTier, ...] = (RETRY_1S, RETRY_10S, RETRY_1M, RETRY_10M)


# -- the data model -------------------------------------------------------------


class ExchangeType(StrEnum):
    """The AMQP exchange types the exchange uses."""

    TOPIC = "topic"
    DIRECT = "direct"
    FANOUT = "fanout"
    # rabbitmq_consistent_hash_exchange: binding keys are weights on a hash ring.
    CONSISTENT_HASH = "x-consistent-hash"


class QueueType(StrEnum):
    """``x-queue-type``: quorum queues are replicated (Raft) and count redeliveries."""

    QUORUM = "quorum"
    CLASSIC = "classic"


class Overflow(StrEnum):
    """``x-overflow``: what a full queue does with a new message."""

    DROP_HEAD = "drop-head"
    REJECT_PUBLISH = "reject-publish"
    REJECT_PUBLISH_DLX = "reject-publish-dlx"


class DeadLetterStrategy(StrEnum):
    """``x-dead-letter-strategy`` of a quorum queue."""

    # The broker forgets the message as soon as it is dead-lettered.
    AT_MOST_ONCE = "at-most-once"
    # The source queue keeps the message until the target queue confirmed it
    # (RabbitMQ >= 3.10; requires overflow reject-publish).
    AT_LEAST_ONCE = "at-least-once"


class TopologyError(ValueError):
    """A queue or binding that RabbitMQ would refuse or that would lose messages."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """An AMQP exchange."""

    name: str
    type: ExchangeType
    durable: bool = True
    # Internal: only reachable through bindings from other exchanges.
    internal: bool = False
    # ``hash-header`` of a consistent-hash exchange: hash this header's value.
    hash_header: str | None = None

    def arguments(self) -> dict[str, Any]:
        """The exchange's arguments as RabbitMQ receives them."""
        return {} if self.hash_header is None else {"hash-header": self.hash_header}


@dataclass(frozen=True, slots=True)
class Queue:
    """An AMQP queue with typed arguments (each ``None`` means "not set")."""

    name: str
    queue_type: QueueType = QueueType.QUORUM
    durable: bool = True
    delivery_limit: int | None = None
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    dead_letter_strategy: DeadLetterStrategy | None = None
    overflow: Overflow | None = None
    message_ttl: int | None = None  # milliseconds

    def __post_init__(self) -> None:
        if self.queue_type is QueueType.QUORUM and not self.durable:
            raise TopologyError(f"quorum queue {self.name} must be durable")
        if self.delivery_limit is not None and self.queue_type is not QueueType.QUORUM:
            raise TopologyError(
                f"queue {self.name}: only quorum queues count deliveries (delivery_limit)"
            )
        if self.dead_letter_strategy is DeadLetterStrategy.AT_LEAST_ONCE:
            if self.queue_type is not QueueType.QUORUM:
                raise TopologyError(
                    f"queue {self.name}: at-least-once dead-lettering needs a quorum queue"
                )
            if self.overflow is not Overflow.REJECT_PUBLISH:
                raise TopologyError(
                    f"queue {self.name}: at-least-once dead-lettering needs "
                    "overflow reject-publish (RabbitMQ ignores the strategy otherwise)"
                )
        if self.dead_letter_routing_key is not None and self.dead_letter_exchange is None:
            raise TopologyError(
                f"queue {self.name}: a dead-letter routing key needs a dead-letter exchange"
            )
        for label, number in (
            ("delivery_limit", self.delivery_limit),
            ("message_ttl", self.message_ttl),
        ):
            if number is not None and number < 0:
                raise TopologyError(f"queue {self.name}: {label} must not be negative")

    def arguments(self) -> dict[str, Any]:
        """The ``x-`` arguments RabbitMQ receives, in a fixed order."""
        optional: list[tuple[str, Any]] = [
            ("x-delivery-limit", self.delivery_limit),
            ("x-dead-letter-exchange", self.dead_letter_exchange),
            ("x-dead-letter-routing-key", self.dead_letter_routing_key),
            ("x-dead-letter-strategy", _wire(self.dead_letter_strategy)),
            ("x-overflow", _wire(self.overflow)),
            ("x-message-ttl", self.message_ttl),
        ]
        arguments: dict[str, Any] = {"x-queue-type": self.queue_type.value}
        arguments.update((key, value) for key, value in optional if value is not None)
        return arguments


def _wire(value: Enum | None) -> Any:
    return None if value is None else value.value


@dataclass(frozen=True, slots=True)
class Binding:
    """A binding of a queue (or exchange) to an exchange with a routing key (or pattern)."""

    source: str
    destination: str
    routing_key: str
    # "queue", or "exchange" for an exchange-to-exchange binding.
    destination_type: str = "queue"


@dataclass(frozen=True, slots=True)
class Topology:
    """Exchanges, queues and bindings; ``a + b`` merges two, dropping repeats."""

    exchanges: tuple[Exchange, ...] = ()
    queues: tuple[Queue, ...] = ()
    bindings: tuple[Binding, ...] = ()

    def __add__(self, other: Topology) -> Topology:
        return Topology(
            exchanges=_unique_by_name((*self.exchanges, *other.exchanges)),
            queues=_unique_by_name((*self.queues, *other.queues)),
            bindings=tuple(dict.fromkeys((*self.bindings, *other.bindings))),
        )

    def queue(self, name: str) -> Queue:
        """The queue called ``name``; ``KeyError`` when the topology has none."""
        for queue in self.queues:
            if queue.name == name:
                return queue
        raise KeyError(name)


_Named = TypeVar("_Named", Exchange, Queue)


def _unique_by_name(items: Iterable[_Named]) -> tuple[_Named, ...]:
    """Keep the first of each name; two different objects with one name is a bug."""
    kept: dict[str, _Named] = {}
    for item in items:
        first = kept.setdefault(item.name, item)
        if first != item:
            raise TopologyError(f"{item.name} is declared twice, differently: {first} and {item}")
    return tuple(kept.values())


# -- the topologies ---------------------------------------------------------------


def _waiting_for_a_worker(name: str) -> Queue:
    """A quorum queue the workers consume: its poison is parked, never lost."""
    return Queue(
        name,
        QueueType.QUORUM,
        delivery_limit=WORK_DELIVERY_LIMIT,
        dead_letter_exchange=PARKING_EXCHANGE,
        # A poison message must not vanish between the work and parked queues.
        dead_letter_strategy=DeadLetterStrategy.AT_LEAST_ONCE,
        overflow=Overflow.REJECT_PUBLISH,
    )


def work_queue() -> Queue:
    """The quorum queue of retried and replayed messages, consumed by the workers."""
    return _waiting_for_a_worker(WORK_QUEUE)


def lane(number: int) -> Queue:
    """A lane: a work queue for the senders whose lane header hashes to ``number``."""
    return _waiting_for_a_worker(lane_queue(number))


def bulk_queue() -> Queue:
    """The quorum queue holding the excess of a flooding sender, read by the workers too."""
    return _waiting_for_a_worker(BULK_QUEUE)


def retry_queue(tier: RetryTier) -> Queue:
    """The queue where a message waits ``tier.ttl_ms`` before going back to work."""
    return Queue(
        tier.queue,
        QueueType.QUORUM,
        message_ttl=tier.ttl_ms,
        # Expired messages go through the default exchange straight to the work
        # queue (not to the submit exchange, which would copy them to every
        # queue bound there in the future).
        dead_letter_exchange=DEFAULT_EXCHANGE,
        dead_letter_routing_key=WORK_QUEUE,
        # A waiting message is one the exchange has accepted: the queue keeps it
        # until the work queue has confirmed it back.
        dead_letter_strategy=DeadLetterStrategy.AT_LEAST_ONCE,
        overflow=Overflow.REJECT_PUBLISH,
    )


# Bindings that must not exist: the work queue bound to the submit exchange
# would receive a second copy of every message beside its lane.
# :func:`exchange.broker.connection.declare` removes them where a broker
# still has them.
UNWANTED_BINDINGS: tuple[Binding, ...] = (Binding(SUBMIT_EXCHANGE, WORK_QUEUE, WORK_BINDING_KEY),)


def core_topology() -> Topology:
    """Everything that exists once per broker: exchanges, work, retry and parked queues."""
    return Topology(
        exchanges=(
            Exchange(SUBMIT_EXCHANGE, ExchangeType.TOPIC),
            Exchange(
                INTAKE_EXCHANGE,
                ExchangeType.CONSISTENT_HASH,
                internal=True,
                hash_header=header.LANE,
            ),
            Exchange(DELIVER_EXCHANGE, ExchangeType.TOPIC),
            Exchange(STATUS_EXCHANGE, ExchangeType.TOPIC),
            Exchange(RETRY_EXCHANGE, ExchangeType.DIRECT),
            Exchange(PARKING_EXCHANGE, ExchangeType.FANOUT),
        ),
        queues=(
            work_queue(),
            *(lane(number) for number in range(LANES)),
            bulk_queue(),
            *(retry_queue(tier) for tier in RETRY_TIERS),
            Queue(PARKED_QUEUE, QueueType.QUORUM),
        ),
        bindings=(
            Binding(SUBMIT_EXCHANGE, INTAKE_EXCHANGE, WORK_BINDING_KEY, "exchange"),
            *(Binding(INTAKE_EXCHANGE, name, LANE_WEIGHT) for name in LANE_QUEUES),
            *(Binding(RETRY_EXCHANGE, tier.queue, tier.routing_key) for tier in RETRY_TIERS),
            # A fanout exchange ignores the key; "" is what RabbitMQ reports.
            Binding(PARKING_EXCHANGE, PARKED_QUEUE, ""),
        ),
    )


class SubscriptionError(ValueError):
    """A subscription pattern the exchange refuses; the message says why."""


# What each word of a pattern may be when it is not ``*``: the same shapes as
# the groups of an agency code, from level 4 (leftmost) to level 1.
_PATTERN_WORDS = (
    (re.compile(r"[0-9]{3}"), "3 digits"),
    (re.compile(r"[0-9]{2}"), "2 digits"),
    (re.compile(r"[0-9]{2}"), "2 digits"),
    (re.compile(r"[A-Z][0-9]{2}"), "a capital letter and two digits"),
)


def validate_subscription(pattern: str) -> str:
    """Check a subtree pattern such as ``*.*.*.H26``; return it or raise why not.

    Four words, each ``*`` or the literal group of an agency code. ``#`` is
    refused (it matches any number of words, so it would reach past the
    hierarchy), and so is a ``*`` as the level-1 word: an inbox subscribed to
    ``*.*.*.*`` would receive every document of the country.
    """
    words = pattern.split(".")
    if "#" in pattern:
        raise SubscriptionError(
            f"the subscription {pattern!r} contains '#'; use '*' for one group, "
            "for example *.*.*.H26"
        )
    if len(words) != 4:
        raise SubscriptionError(
            f"the subscription {pattern!r} has {len(words)} groups; it needs 4, "
            "like an agency code (for example *.*.24.H44)"
        )
    for position, (word, (shape, description)) in enumerate(
        zip(words, _PATTERN_WORDS, strict=True), 1
    ):
        if word == "*":
            continue
        if not shape.fullmatch(word):
            raise SubscriptionError(
                f"group {position} of the subscription {pattern!r} is {word!r}; "
                f"it must be '*' or {description}"
            )
    if words[3] == "*":
        raise SubscriptionError(
            f"the subscription {pattern!r} has '*' as its last group; name the "
            "level-1 unit (for example *.*.*.H26), a subscription covers one subtree"
        )
    return pattern


def agency_topology(code: AgencyCode) -> Topology:
    """An agency's inbox and status queues, each bound with its code.

    Subscriptions are no bindings: the worker publishes each subscription
    copy itself, with the subscriber's code as routing key, and records it
    (so ``lienthong trace`` names who received a copy).
    """
    inbox = inbox_queue(code)
    status = status_queue(code)
    return Topology(
        # The exchanges are the core's; repeating them here lets an agency's
        # topology be declared on its own (declaring is idempotent).
        exchanges=(
            Exchange(DELIVER_EXCHANGE, ExchangeType.TOPIC),
            Exchange(STATUS_EXCHANGE, ExchangeType.TOPIC),
        ),
        # No delivery limit on inboxes: there is nowhere safer to dead-letter
        # an agency's document to, and its own client decides when it is done.
        queues=(Queue(inbox, QueueType.QUORUM), Queue(status, QueueType.QUORUM)),
        bindings=(
            Binding(DELIVER_EXCHANGE, inbox, code.routing_key),
            Binding(STATUS_EXCHANGE, status, code.routing_key),
        ),
    )


# -- bounds on an agency's queues: policies ------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """A RabbitMQ policy: a definition applied to every queue whose name matches ``pattern``.

    Bounds are policies, not queue arguments: a queue's arguments cannot
    change once it exists (RabbitMQ refuses the declaration,
    PRECONDITION_FAILED), a policy can be changed at any time and applies
    to queues old and new.
    """

    name: str
    pattern: str
    definition: dict[str, Any]
    priority: int = 0
    apply_to: str = "queues"


# A policy name is global to a vhost; the prefix marks lienthong's own.
INBOX_POLICY = f"{PREFIX}-inbox-bounds"
STATUS_POLICY = f"{PREFIX}-status-bounds"


def queue_policies(inbox_max_bytes: int, status_max_bytes: int) -> tuple[Policy, ...]:
    """The bounds of every agency's inbox and status queue (``LIENTHONG_*_MAX_BYTES``).

    A full queue refuses a new message (``reject-publish``: the worker's
    publish is nacked) rather than dropping the oldest: nothing an agency
    has not read is ever thrown away by the broker.
    """
    return (
        Policy(
            INBOX_POLICY,
            f"^{re.escape(INBOX_QUEUE_PREFIX)}",
            {"max-length-bytes": inbox_max_bytes, "overflow": Overflow.REJECT_PUBLISH.value},
        ),
        Policy(
            STATUS_POLICY,
            f"^{re.escape(STATUS_QUEUE_PREFIX)}",
            {"max-length-bytes": status_max_bytes, "overflow": Overflow.REJECT_PUBLISH.value},
        ),
    )


# -- permissions of an agency's broker user -------------------------------------


@dataclass(frozen=True, slots=True)
class Permissions:
    """RabbitMQ permission regexes (Erlang PCRE) for one user in one vhost."""

    configure: str
    write: str
    read: str


# RabbitMQ's regex for "no resource at all".
NOTHING = "^$"


def agency_permissions(code: AgencyCode) -> Permissions:
    """What an agency's user may do: publish to submit, consume its own two queues.

    Configure nothing (the exchange declares every queue), write only the
    submit exchange, read only ``lienthong.inbox.<code>`` and
    ``lienthong.status.<code>``.
    """
    return Permissions(
        configure=NOTHING,
        write=f"^{re.escape(SUBMIT_EXCHANGE)}$",
        read=f"^{re.escape(PREFIX)}\\.(inbox|status)\\.{re.escape(str(code))}$",
    )


# The routing keys an agency may publish to the submit exchange with: agency
# codes, DDD.DD.DD.LNN (a topic permission, checked by the broker on every
# publish). Written without {n} repeats: RabbitMQ expands {name} variables in
# topic permissions.
AGENCY_ROUTING_KEY = "^[0-9][0-9][0-9]\\.[0-9][0-9]\\.[0-9][0-9]\\.[A-Z][0-9][0-9]$"


@dataclass(frozen=True, slots=True)
class TopicPermission:
    """A RabbitMQ topic permission: the routing keys a user may write to ``exchange``."""

    exchange: str
    write: str
    read: str


def agency_topic_permission() -> TopicPermission:
    """What an agency may publish to ``lienthong.submit``: agency codes as routing keys only.

    Anything else (``#``, a pattern, a word of junk) is refused by the
    broker (ACCESS_REFUSED closes the publisher's channel) before it costs
    the exchange a record.
    """
    return TopicPermission(SUBMIT_EXCHANGE, write=AGENCY_ROUTING_KEY, read=NOTHING)


# The broker user `lienthong gateway-user` creates for the gateways.
GATEWAY_USER = "lienthong-gateway"


def gateway_permissions() -> Permissions:
    """What a gateway's user may do: publish to submit, consume every agency's two queues.

    The gateway publishes for the agencies its systems serve (the workers
    believe its agency header because its user is in
    ``LIENTHONG_GATEWAY_USERS``) and moves their inbox and status queues into
    its mailbox; which agencies those are changes with the systems, so it may
    read every agency's queues. It configures nothing.
    """
    return Permissions(
        configure=NOTHING,
        write=f"^{re.escape(SUBMIT_EXCHANGE)}$",
        read=f"^{re.escape(PREFIX)}\\.(inbox|status)\\..+$",
    )


# -- definitions file -------------------------------------------------------------


def to_definitions(topology: Topology, vhost: str = "/") -> dict[str, Any]:
    """The topology in RabbitMQ's definitions-file format, sorted for stable diffs.

    Import it with ``rabbitmqctl import_definitions``, the management UI, or
    ``POST /api/definitions/{vhost}`` (which imports into that vhost whatever
    the ``vhost`` fields say).
    """
    exchanges: list[dict[str, Any]] = [
        {
            "name": exchange.name,
            "vhost": vhost,
            "type": exchange.type.value,
            "durable": exchange.durable,
            "auto_delete": False,
            "internal": exchange.internal,
            "arguments": exchange.arguments(),
        }
        for exchange in sorted(topology.exchanges, key=lambda e: e.name)
    ]
    queues = [
        {
            "name": queue.name,
            "vhost": vhost,
            "durable": queue.durable,
            "auto_delete": False,
            "arguments": dict(sorted(queue.arguments().items())),
        }
        for queue in sorted(topology.queues, key=lambda q: q.name)
    ]
    bindings = [
        {
            "source": binding.source,
            "vhost": vhost,
            "destination": binding.destination,
            "destination_type": binding.destination_type,
            "routing_key": binding.routing_key,
            "arguments": {},
        }
        for binding in sorted(
            topology.bindings, key=lambda b: (b.source, b.destination, b.routing_key)
        )
    ]
    return {"exchanges": exchanges, "queues": queues, "bindings": bindings}


def definitions_json(topology: Topology, vhost: str = "/") -> str:
    """:func:`to_definitions` as the exact text of ``deploy/rabbitmq/definitions.json``."""
    return json.dumps(to_definitions(topology, vhost), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(definitions_json(core_topology()), end="")
