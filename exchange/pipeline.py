"""The decision on one message, as pure functions: bytes and facts in, a verdict out.

:func:`check_message` runs every check that needs nothing but the message and the
configuration: safe parse, schema, signature, reading the package from what
the signature covers, identity and addressing. The worker then looks up the
facts that live in the database (is the recipient registered, was the document
delivered, what is its status) and asks :func:`decide_document` or
:func:`decide_status`. No broker, no database here: everything is unit-tested.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property

from cryptography import x509

from exchange.agency import AgencyCode
from exchange.checks.authorise import (
    DocumentRef,
    authorise_lane,
    authorise_route,
    authorise_sender,
    document_id_of,
    document_ref,
    recipient_of,
)
from exchange.checks.schema import check_schema
from exchange.checks.signature import verify
from exchange.edxml.model import VIETNAM_TIME, DocumentPackage, StatusPackage
from exchange.edxml.reader import read_package
from exchange.edxml.safexml import parse_received
from exchange.pki import Revocations, SigningRights, TrustStore
from exchange.reasons import Reason, Rejection
from exchange.settings import ParserLimits
from exchange.status import (
    DeliveryState,
    IllegalTransition,
    MessageKind,
    StatusCode,
    replay_timeline,
)

# How long an examination of a package's bytes is reused for other copies of
# the same package (CheckCache): a burst to every recipient arrives within
# seconds, and a verdict reused is never older than this.
REMEMBER_S = 60.0


@dataclass(frozen=True)
class CheckContext:
    """What the checks need besides the message: trust anchors, revocations, rights, limits."""

    trust: TrustStore
    limits: ParserLimits = field(default_factory=ParserLimits)
    # SHA-1 from every sender (``lienthong verify --allow-sha1``); the worker
    # allows it per agency instead, through ``rights``.
    allow_sha1: bool = False
    # The time certificates must be valid at; None means now.
    now: datetime | None = None
    # The CAs' revocation lists; None checks no revocation.
    revocations: Revocations | None = None
    # The certificates registered per agency, and who may use SHA-1; None
    # accepts any trusted certificate naming the agency (tools, not the worker).
    rights: SigningRights | None = None


@dataclass(frozen=True)
class Envelope:
    """One message as the broker handed it over."""

    body: bytes
    routing_key: str
    # The agency behind the AMQP user_id that RabbitMQ validated, looked up in
    # the directory by the shell; None when the user is no registered agency.
    publisher: AgencyCode | None
    # Whether the directory marks the publisher disabled (`agency disable`).
    publisher_disabled: bool = False
    # The lane the publisher named (header x-lienthong-lane): its own code.
    lane: str | None = None

    @cached_property
    def sha256(self) -> str:
        """SHA-256 of the body, hex."""
        return hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class CheckedMessage:
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


@dataclass(frozen=True)
class CheckedBytes:
    """What a package's bytes prove by themselves, whoever published them to whomever.

    The outcome of the checks that read nothing but the bytes and the
    configuration: parse, schema, signature, the package read from what the
    signature covers, its attachments. A directive to every province is the
    same bytes published once per recipient; :class:`CheckCache` examines
    them once.
    """

    package: DocumentPackage | StatusPackage
    signer: AgencyCode
    # The signing certificate's end of validity: a verdict is not reused past it.
    signer_not_after: datetime
    # An attachment that is not base64. Raised only after the sender and the
    # route are checked, as it always was: those reasons come first.
    bad_attachment: Rejection | None = None
    # The signing certificate and its validated chain (signer first): the
    # revocation and registration checks run again on every reuse.
    certificate: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = ()
    # Whether the signature uses SHA-1 (accepted only from agencies allowed it).
    uses_sha1: bool = False


def check_bytes(
    body: bytes, context: CheckContext, timings: dict[str, float] | None = None
) -> CheckedBytes:
    """The checks of the bytes alone, in order; raises :class:`Rejection` on the first failure.

    When ``timings`` is given, the seconds spent in each stage are added to
    it (parse, validate, verify, read, attachments), also for a package
    refused half-way.
    """
    clock = _Stopwatch(timings)
    with before_signature(), clock("parse"):
        root = parse_received(body, context.limits)
    with before_signature(), clock("validate"):
        check_schema(root)
    with before_signature(), clock("verify"):
        # Which agency signed is known only once the certificate is checked:
        # SHA-1 passes here if any agency may use it, and check_standing
        # refuses it from the others.
        sha1_somewhere = context.rights is not None and bool(context.rights.sha1_agencies)
        verified = verify(
            root,
            context.trust,
            allow_sha1=context.allow_sha1 or sha1_somewhere,
            now=context.now,
            revocations=context.revocations,
        )
    with clock("read"):
        package = read_package(verified.signed_root)
    bad_attachment = None
    if isinstance(package, DocumentPackage):
        with clock("attachments"):
            # A recipient's QLVB cannot open an attachment that is not base64;
            # the sender's clerk is told now rather than the recipient later.
            try:
                for attachment in package.attachments:
                    attachment.check()
            except Rejection as rejection:
                bad_attachment = rejection
    examined = CheckedBytes(
        package,
        verified.agency,
        verified.certificate.not_valid_after_utc,
        bad_attachment,
        verified.certificate,
        verified.chain,
        verified.uses_sha1,
    )
    with before_signature():
        check_standing(examined, context)
    return examined


@contextmanager
def before_signature() -> Iterator[None]:
    """Mark a :class:`Rejection` raised in the block as raised before the signature was accepted.

    What such a message proves about its sender is nothing; the ledger keeps
    only the start of its body.
    """
    try:
        yield
    except Rejection as rejection:
        rejection.before_signature = True
        raise


def check_standing(examined: CheckedBytes, context: CheckContext) -> None:
    """What may change while an examination is remembered: revocation, registration, SHA-1.

    Cheap (dictionary look-ups), so run on every message, also when the
    bytes' examination is reused: a certificate revoked, or removed from
    the directory, a moment ago is refused from the next message on.
    """
    if context.revocations is not None and examined.chain:
        context.revocations.check(examined.chain, at=context.now)
    rights = context.rights
    if rights is None:
        return
    if examined.certificate is not None:
        rights.check(examined.signer, examined.certificate)
    if examined.uses_sha1 and not (context.allow_sha1 or rights.may_use_sha1(examined.signer)):
        raise Rejection.of(
            Reason.SIGNATURE_ALGORITHM,
            f"the signature uses SHA-1, which is accepted only from agencies the operator "
            f"allows it for (agency add --allow-sha1); {examined.signer} is not one; "
            "sign with SHA-256",
            "edXML/edXMLEnvelope/edXMLHeader/Signature/SignedInfo",
        )


def check_envelope(envelope: Envelope) -> AgencyCode:
    """What the broker's envelope alone decides, before any parsing; returns the recipient.

    The routing key names an agency, the publisher is not disabled, and its
    lane header, if any, names the publisher.
    """
    with before_signature():
        recipient = recipient_of(envelope.routing_key)
        if envelope.publisher_disabled:
            raise Rejection.of(
                Reason.SENDER_DISABLED,
                f"the message was published for {envelope.publisher}, which is disabled",
                "user_id",
            )
        authorise_lane(envelope.lane, envelope.publisher)
    return recipient


def check_message(
    envelope: Envelope,
    context: CheckContext,
    timings: dict[str, float] | None = None,
    *,
    checked_bytes: CheckedBytes | None = None,
) -> CheckedMessage:
    """Every database-free check, in order; raises :class:`Rejection` on the first failure.

    The routing key first, then :func:`check_bytes` of the bytes (unless
    ``checked_bytes`` says what the bytes prove already: then :func:`check_standing`
    alone, with the context of now), then who published the package to
    whom. ``timings`` as for :func:`check_bytes`.
    """
    recipient = check_envelope(envelope)
    if checked_bytes is None:
        checked_bytes = check_bytes(envelope.body, context, timings)
    else:
        with before_signature():
            check_standing(checked_bytes, context)
    package = checked_bytes.package
    sender = authorise_sender(package, signer=checked_bytes.signer, publisher=envelope.publisher)
    authorise_route(package, recipient)
    if isinstance(package, DocumentPackage):
        if checked_bytes.bad_attachment is not None:
            raise checked_bytes.bad_attachment
        return CheckedMessage(
            MessageKind.DOCUMENT, package, sender, recipient, document_id_of(package)
        )
    ref = document_ref(package)
    return CheckedMessage(MessageKind.STATUS, package, sender, recipient, ref.document_id, ref)


def check_status_time(
    package: StatusPackage, arrived_at: datetime | None, skew: timedelta | None
) -> None:
    """Refuse a status whose Timestamp is more than ``skew`` from its arrival.

    Statuses are judged in Timestamp order (:func:`decide_status`), so one
    dated a year ahead would stand after every later report of the
    document. ``arrived_at`` None means now; ``skew`` None checks nothing.
    """
    if skew is None:
        return
    arrived = arrived_at or datetime.now(UTC)
    stamped = package.timestamp
    if stamped.tzinfo is None:
        stamped = stamped.replace(tzinfo=VIETNAM_TIME)
    if abs(stamped - arrived) <= skew:
        return
    local = arrived.astimezone(VIETNAM_TIME).strftime("%Y/%m/%d %H:%M:%S")
    direction = "ahead of" if stamped > arrived else "behind"
    hours = skew.total_seconds() / 3600
    raise Rejection.of(
        Reason.BAD_TIMESTAMP,
        f"Timestamp {package.timestamp:%Y/%m/%d %H:%M:%S} is {direction} the exchange's "
        f"time of arrival {local} (Vietnam time) by more than {hours:g} hours",
        "Timestamp",
    )


class CheckCache:
    """:func:`check_message` that remembers, for a while, what the bytes of recent packages proved.

    The same package sent to sixty recipients is one message per recipient
    with the same bytes; parsing, validating and verifying it sixty times
    proves nothing more than once. The memory is keyed by the SHA-256 of the
    whole body, so only byte-identical packages share an examination; the
    checks of the envelope (routing key, publisher, route) run for every
    message. Only packages that passed are remembered (a refusal is cheap,
    and may depend on the time). An examination is forgotten after
    ``remember_s`` seconds or when the signing certificate expires, whichever
    comes first, and the memory holds at most ``max_bytes`` of package bytes
    (the least recently used go first), so its size depends on the setting,
    never on the backlog. ``max_bytes`` 0 remembers nothing.

    Safe to call from several threads (the worker inspects in an executor
    and recalls on the event loop).
    """

    def __init__(
        self, context: CheckContext, *, max_bytes: int, remember_s: float = REMEMBER_S
    ) -> None:
        self.context = context
        self._max_bytes = max_bytes
        self._remember_for = timedelta(seconds=remember_s)
        self._lock = threading.Lock()
        # sha256 -> (examination, forgotten at, body size), least recently used first
        self._memory: OrderedDict[str, tuple[CheckedBytes, datetime, int]] = OrderedDict()
        self._bytes = 0

    def use(
        self,
        *,
        trust: TrustStore | None = None,
        revocations: Revocations | None = None,
        rights: SigningRights | None = None,
    ) -> None:
        """Check from now on with what is given (the rest of the context stays).

        New trust anchors forget every remembered examination: a CA removed
        must not be outlived by a verdict it signed. New revocations or
        rights need not, as :func:`check_standing` runs on every reuse.
        Messages being inspected finish with the context they started with.
        """
        changes: dict[str, object] = {}
        if trust is not None:
            changes["trust"] = trust
        if revocations is not None:
            changes["revocations"] = revocations
        if rights is not None:
            changes["rights"] = rights
        self.context = dataclasses.replace(self.context, **changes)  # type: ignore[arg-type]
        if trust is not None:
            with self._lock:
                self._memory.clear()
                self._bytes = 0

    @property
    def remembered_bytes(self) -> int:
        """Package bytes whose examination is remembered now."""
        return self._bytes

    def recall(self, envelope: Envelope) -> CheckedMessage | None:
        """The inspection of a package checked before, or ``None`` if it must be checked.

        Raises :class:`Rejection` when the envelope's own checks fail.
        """
        if not self._max_bytes:
            return None
        now = self._now()
        with self._lock:
            remembered = self._memory.get(envelope.sha256)
            if remembered is None:
                return None
            checked, forgotten_at, size = remembered
            if now >= forgotten_at:
                del self._memory[envelope.sha256]
                self._bytes -= size
                return None
            self._memory.move_to_end(envelope.sha256)
        return check_message(envelope, self.context, checked_bytes=checked)

    def check(self, envelope: Envelope, timings: dict[str, float] | None = None) -> CheckedMessage:
        """Every database-free check (:func:`check_message`); remembers what the bytes proved."""
        check_envelope(envelope)  # refused from its envelope before any parsing
        checked = check_bytes(envelope.body, self.context, timings)
        self._remember(envelope, checked)
        return check_message(envelope, self.context, checked_bytes=checked)

    def _remember(self, envelope: Envelope, checked: CheckedBytes) -> None:
        size = len(envelope.body)
        if size > self._max_bytes:
            return
        forgotten_at = min(self._now() + self._remember_for, checked.signer_not_after)
        with self._lock:
            previous = self._memory.pop(envelope.sha256, None)
            if previous is not None:
                self._bytes -= previous[2]
            self._memory[envelope.sha256] = (checked, forgotten_at, size)
            self._bytes += size
            while self._bytes > self._max_bytes:
                _, (_, _, dropped) = self._memory.popitem(last=False)
                self._bytes -= dropped

    def _now(self) -> datetime:
        return self.context.now or datetime.now(UTC)


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
    inspected: CheckedMessage,
    *,
    recipient_registered: bool,
    existing_sha256: str | None,
    sha256: str,
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
    inspected: CheckedMessage,
    history: list[tuple[datetime, StatusCode]] | None,
    *,
    arrived_at: datetime | None = None,
    skew: timedelta | None = None,
) -> DeliveryState:
    """The delivery's state with this status added, or a :class:`Rejection`.

    ``history`` holds the statuses already accepted for the delivery the
    status speaks of, with their Timestamps; ``None`` when no such document
    was ever delivered between these agencies. The whole timeline, ordered
    by Timestamp, must be a legal life of a document (see
    :func:`exchange.status.replay_timeline`), and the Timestamp must be
    within ``skew`` of ``arrived_at`` (:func:`check_status_time`).
    """
    code = inspected.status_code
    ref = inspected.ref
    assert code is not None and ref is not None, "decide_status takes a status package"
    assert isinstance(inspected.package, StatusPackage)
    check_status_time(inspected.package, arrived_at, skew)
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
