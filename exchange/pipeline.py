"""The decision on one message, as pure functions: bytes and facts in, a verdict out.

:func:`inspect` runs every check that needs nothing but the message and the
configuration: safe parse, schema, signature, reading the package from what
the signature covers, identity and addressing. The worker then looks up the
facts that live in the database (is the recipient registered, was the document
delivered, what is its status) and asks :func:`decide_document` or
:func:`decide_status`. No broker, no database here: everything is unit-tested.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime

from exchange.agency import AgencyCode
from exchange.checks.authorise import (
    DocumentRef,
    authorise_route,
    authorise_sender,
    document_id_of,
    document_ref,
    recipient_of,
)
from exchange.checks.schema import check_schema
from exchange.checks.signature import verify
from exchange.edxml.model import DocumentPackage, StatusPackage
from exchange.edxml.reader import read_package
from exchange.edxml.safexml import parse
from exchange.pki import TrustStore
from exchange.reasons import Reason, Rejection
from exchange.settings import ParserLimits
from exchange.status import (
    DeliveryState,
    IllegalTransition,
    MessageKind,
    StatusCode,
    replay_timeline,
)


@dataclass(frozen=True)
class CheckContext:
    """What the checks need besides the message: trust anchors and limits."""

    trust: TrustStore
    limits: ParserLimits = field(default_factory=ParserLimits)
    allow_sha1: bool = False
    # The time certificates must be valid at; None means now.
    now: datetime | None = None


@dataclass(frozen=True)
class Envelope:
    """One message as the broker handed it over."""

    body: bytes
    routing_key: str
    # The agency behind the AMQP user_id that RabbitMQ validated, looked up in
    # the directory by the shell; None when the user is no registered agency.
    publisher: AgencyCode | None

    @property
    def sha256(self) -> str:
        """SHA-256 of the body, hex."""
        return hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class Inspected:
    """A message that passed every check that needs no database.

    ``package`` is read from the signed content only, never from bytes the
    signature does not cover.
    """

    kind: MessageKind
    package: DocumentPackage | StatusPackage
    sender: AgencyCode
    recipient: AgencyCode
    document_id: str
    # For a status: which delivery it speaks of.
    ref: DocumentRef | None = None

    @property
    def status_code(self) -> StatusCode | None:
        """The business status a status package reports."""
        return self.package.status_code if isinstance(self.package, StatusPackage) else None


def inspect(
    envelope: Envelope, context: CheckContext, timings: dict[str, float] | None = None
) -> Inspected:
    """Every database-free check, in order; raises :class:`Rejection` on the first failure.

    When ``timings`` is given, the seconds spent in each stage are added to
    it (parse, validate, verify, read), also for a message refused half-way.
    """
    clock = _Stopwatch(timings)
    recipient = recipient_of(envelope.routing_key)
    with clock("parse"):
        root = parse(envelope.body, context.limits)
    with clock("validate"):
        check_schema(root)
    with clock("verify"):
        verified = verify(root, context.trust, allow_sha1=context.allow_sha1, now=context.now)
    with clock("read"):
        package = read_package(verified.signed_root)
    sender = authorise_sender(package, signer=verified.agency, publisher=envelope.publisher)
    authorise_route(package, recipient)
    if isinstance(package, DocumentPackage):
        with clock("attachments"):
            # A recipient's QLVB cannot open an attachment that is not base64;
            # the sender's clerk is told now rather than the recipient later.
            for attachment in package.attachments:
                attachment.decode()
        return Inspected(MessageKind.DOCUMENT, package, sender, recipient, document_id_of(package))
    ref = document_ref(package)
    return Inspected(MessageKind.STATUS, package, sender, recipient, ref.document_id, ref)


class _Stopwatch:
    """Adds the time spent in ``with clock(stage):`` blocks to a dict, if there is one."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self._timings = timings
        self._stage = ""
        self._started = 0.0

    def __call__(self, stage: str) -> _Stopwatch:
        self._stage = stage
        return self

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *_: object) -> None:
        if self._timings is not None:
            elapsed = time.perf_counter() - self._started
            self._timings[self._stage] = self._timings.get(self._stage, 0.0) + elapsed


def decide_document(
    inspected: Inspected, *, recipient_registered: bool, existing_sha256: str | None, sha256: str
) -> None:
    """Refuse a document the directory or the record forbids.

    ``existing_sha256`` is the hash of a document already recorded under the
    same sender and DocumentId (the same package sent to another recipient is
    the same document; different bytes under the same id are not).
    """
    if not recipient_registered:
        raise Rejection.of(
            Reason.UNKNOWN_RECIPIENT,
            f"{inspected.recipient} is not registered on the exchange",
            "To/OrganId",
        )
    if existing_sha256 is not None and existing_sha256 != sha256:
        raise Rejection.of(
            Reason.DUPLICATE_DOCUMENT,
            f"{inspected.sender} already sent a different document with DocumentId "
            f"{inspected.document_id!r}",
            "DocumentId",
        )


def decide_status(
    inspected: Inspected, history: list[tuple[datetime, StatusCode]] | None
) -> DeliveryState:
    """The delivery's state with this status added, or a :class:`Rejection`.

    ``history`` holds the statuses already accepted for the delivery the
    status speaks of, with their Timestamps; ``None`` when no such document
    was ever delivered between these agencies. The whole timeline, ordered
    by Timestamp, must be a legal life of a document (see
    :func:`exchange.status.replay_timeline`).
    """
    code = inspected.status_code
    ref = inspected.ref
    assert code is not None and ref is not None, "decide_status takes a status package"
    assert isinstance(inspected.package, StatusPackage)
    if history is None:
        raise Rejection.of(
            Reason.UNKNOWN_DOCUMENT,
            f"no document {ref.document_id!r} from {ref.sender} was delivered to {ref.recipient}",
            "ResponseFor/DocumentId",
        )
    try:
        return replay_timeline([*history, (inspected.package.timestamp, code)])
    except IllegalTransition as error:
        raise Rejection.of(Reason.ILLEGAL_TRANSITION, str(error), "StatusCode") from None
