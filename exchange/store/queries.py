"""Every query of the exchange: plain SQL over asyncpg, one async function each.

Each function takes a :data:`~exchange.store.db.Connection` and runs inside
whatever transaction the caller opened: the worker handles one message in
one transaction, so everything a message changes commits together or not at
all. Inserts go through the schema's unique keys with ``ON CONFLICT DO
NOTHING`` followed by a select, so running the same message twice finds the
rows of the first run instead of adding new ones (exactly-once effect).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import date, datetime
from typing import Any

import asyncpg

from exchange.agency import AgencyCode
from exchange.reasons import Reason
from exchange.status import (
    DeliveryState,
    MessageKind,
    StatusCode,
    TransportOutcome,
)
from exchange.store.db import Connection
from exchange.store.records import (
    Agency,
    ChainHead,
    ChainLink,
    CopyTrace,
    Delivery,
    DeliveryMismatch,
    Document,
    DocumentTrace,
    Event,
    EventKind,
    Message,
    MessageTally,
    NewDocument,
    NewDocumentMessage,
    RecipientTrace,
    ReplayItemRecord,
    ReplayRecord,
    SenderViewRow,
    StoredDocument,
    UnsettledMessage,
)


class AgencyConflictError(ValueError):
    """The broker user is already the identity of another agency."""


class AgencyExistsError(ValueError):
    """The agency code is registered already."""


class AgencyNotFoundError(LookupError):
    """No agency is registered with that code."""


def dedup_key(routing_key: str, body: bytes, broker_user: str | None = None) -> str:
    """The identity of a message: SHA-256 of who published it, its routing key and body.

    A redelivery or a re-publish by the same broker user is the same
    message. The publisher is part of it so that another agency re-sending a
    copy of a genuine package (refused: it is not the signer) can never take
    the place of the genuine sender's own publication. Lengths come first so
    that no (user, key, body) can be confused with another whose parts are
    prefixes of each other's.
    """
    user = (broker_user or "").encode("utf-8")
    key = routing_key.encode("utf-8")
    digest = hashlib.sha256(f"{len(user)}:{len(key)}:".encode("ascii"))
    digest.update(user)
    digest.update(key)
    digest.update(body)
    return digest.hexdigest()


def _reason_code(reason: Reason | str | None) -> str | None:
    return reason.code if isinstance(reason, Reason) else reason


def _by_hierarchy(agency: Agency) -> AgencyCode:
    return agency.code


def _columns(names: tuple[str, ...], alias: str = "") -> str:
    """A select list of constant column names, qualified by a table alias if given."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + name for name in names)


# -- agencies ----------------------------------------------------------------

_AGENCY_COLUMNS = _columns(
    (
        "code",
        "name",
        "parent",
        "level",
        "broker_user",
        "subscriptions",
        "registered_at",
        "allow_sha1",
        "disabled_at",
    )
)


async def _certificates_of(
    conn: Connection, codes: Iterable[str] | None = None
) -> dict[str, tuple[str, ...]]:
    """Per agency code, its registered certificates' PEM, oldest first (all agencies: None)."""
    rows = await conn.fetch(
        """
        SELECT agency, certificate_pem FROM agency_certificates
        WHERE $1::text[] IS NULL OR agency = ANY($1::text[])
        ORDER BY registered_at, sha256
        """,
        None if codes is None else list(codes),
    )
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row["agency"], []).append(row["certificate_pem"])
    return {code: tuple(pems) for code, pems in found.items()}


async def _agency(conn: Connection, row: asyncpg.Record) -> Agency:
    certificates = await _certificates_of(conn, [row["code"]])
    return Agency.from_row(row, certificates.get(row["code"], ()))


async def add_agency(
    conn: Connection,
    code: AgencyCode,
    name: str,
    *,
    broker_user: str | None = None,
    certificates: Iterable[tuple[str, str]] = (),
    allow_sha1: bool = False,
    subscriptions: Iterable[str] = (),
) -> Agency:
    """Register a new agency; ``broker_user`` defaults to the code.

    ``certificates`` are ``(sha256, pem)`` pairs: the certificates it may
    sign with (see :func:`add_agency_certificate`).

    Raises :class:`AgencyExistsError` when the code is registered already
    (:func:`update_agency` changes a registration) and
    :class:`AgencyConflictError` when the broker user already identifies
    another agency.
    """
    parent = code.parent
    try:
        row = await conn.fetchrow(
            f"""
            INSERT INTO agencies
                (code, name, parent, level, broker_user, allow_sha1, subscriptions)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (code) DO NOTHING
            RETURNING {_AGENCY_COLUMNS}
            """,  # noqa: S608 (a constant column list, no input)
            str(code),
            name,
            None if parent is None else str(parent),
            code.level,
            broker_user or str(code),
            allow_sha1,
            list(subscriptions),
        )
    except asyncpg.UniqueViolationError as error:
        raise AgencyConflictError(
            f"broker user {broker_user or str(code)!r} already identifies another agency; "
            "each agency needs its own broker user"
        ) from error
    if row is None:
        raise AgencyExistsError(
            f"agency {code} is registered already; `lienthong agency set {code}` changes it"
        )
    for sha256, pem in certificates:
        await add_agency_certificate(conn, code, sha256, pem)
    return await _agency(conn, row)


async def update_agency(
    conn: Connection,
    code: AgencyCode,
    *,
    name: str | None = None,
    certificates: Iterable[tuple[str, str]] | None = None,
    allow_sha1: bool | None = None,
    subscriptions: Iterable[str] | None = None,
    broker_user: str | None = None,
) -> Agency:
    """Change what is given (not ``None``) of a registered agency; the rest stays.

    ``certificates`` (``(sha256, pem)`` pairs) replaces every registered
    certificate. Raises :class:`AgencyNotFoundError` when the code is not
    registered and :class:`AgencyConflictError` when ``broker_user``
    already identifies another agency.
    """
    try:
        row = await conn.fetchrow(
            f"""
            UPDATE agencies SET
                name = coalesce($2, name),
                allow_sha1 = coalesce($3, allow_sha1),
                subscriptions = coalesce($4, subscriptions),
                broker_user = coalesce($5, broker_user)
            WHERE code = $1
            RETURNING {_AGENCY_COLUMNS}
            """,  # noqa: S608 (a constant column list, no input)
            str(code),
            name,
            allow_sha1,
            None if subscriptions is None else list(subscriptions),
            broker_user,
        )
    except asyncpg.UniqueViolationError as error:
        raise AgencyConflictError(
            f"broker user {broker_user!r} already identifies another agency; "
            "each agency needs its own broker user"
        ) from error
    if row is None:
        raise AgencyNotFoundError(f"agency {code} is not registered")
    if certificates is not None:
        await conn.execute("DELETE FROM agency_certificates WHERE agency = $1", str(code))
        for sha256, pem in certificates:
            await add_agency_certificate(conn, code, sha256, pem)
    return await _agency(conn, row)


async def set_agency_disabled(conn: Connection, code: AgencyCode, disabled: bool) -> Agency:
    """Disable ``code`` (from now) or enable it; :class:`AgencyNotFoundError` if not registered.

    Disabling an agency disabled already keeps the time it was first disabled.
    """
    row = await conn.fetchrow(
        f"""
        UPDATE agencies SET
            disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now()) END
        WHERE code = $1
        RETURNING {_AGENCY_COLUMNS}
        """,  # noqa: S608 (a constant column list, no input)
        str(code),
        disabled,
    )
    if row is None:
        raise AgencyNotFoundError(f"agency {code} is not registered")
    return await _agency(conn, row)


async def add_agency_certificate(conn: Connection, code: AgencyCode, sha256: str, pem: str) -> bool:
    """Register a certificate (its DER's SHA-256, hex, and its PEM) for ``code``.

    Returns whether it was new. Raises :class:`AgencyNotFoundError` when the
    agency is not registered.
    """
    try:
        status = await conn.execute(
            """
            INSERT INTO agency_certificates (agency, sha256, certificate_pem)
            VALUES ($1, $2, $3) ON CONFLICT DO NOTHING
            """,
            str(code),
            sha256,
            pem,
        )
    except asyncpg.ForeignKeyViolationError:
        raise AgencyNotFoundError(f"agency {code} is not registered") from None
    return bool(status.endswith(" 1"))


async def remove_agency_certificate(conn: Connection, code: AgencyCode, sha256: str) -> bool:
    """Retire a certificate of ``code`` (by its SHA-256); returns whether it was registered."""
    status = await conn.execute(
        "DELETE FROM agency_certificates WHERE agency = $1 AND sha256 = $2", str(code), sha256
    )
    return bool(status.endswith(" 1"))


async def signing_rights(
    conn: Connection,
) -> tuple[dict[AgencyCode, frozenset[str]], frozenset[AgencyCode]]:
    """Per agency, its registered certificates' SHA-256; and the agencies allowed SHA-1."""
    rows = await conn.fetch("SELECT agency, sha256 FROM agency_certificates")
    found: dict[AgencyCode, set[str]] = {}
    for row in rows:
        found.setdefault(AgencyCode.parse(row["agency"]), set()).add(row["sha256"])
    sha1 = await conn.fetch("SELECT code FROM agencies WHERE allow_sha1")
    return (
        {code: frozenset(fps) for code, fps in found.items()},
        frozenset(AgencyCode.parse(row["code"]) for row in sha1),
    )


async def get_agency(conn: Connection, code: AgencyCode | str) -> Agency | None:
    """The agency with this code, or ``None`` if it is not registered."""
    row = await conn.fetchrow(
        f"SELECT {_AGENCY_COLUMNS} FROM agencies WHERE code = $1",  # noqa: S608
        str(code),
    )
    return None if row is None else await _agency(conn, row)


async def get_agency_by_broker_user(conn: Connection, broker_user: str) -> Agency | None:
    """The agency whose broker user published a message, or ``None``."""
    row = await conn.fetchrow(
        f"SELECT {_AGENCY_COLUMNS} FROM agencies WHERE broker_user = $1",  # noqa: S608
        broker_user,
    )
    return None if row is None else await _agency(conn, row)


async def list_agencies(conn: Connection) -> list[Agency]:
    """Every registered agency, as a tree: each level-1 unit, then the agencies under it.

    Sorted by :class:`AgencyCode`'s own order (one definition of the
    hierarchy, not a second one in SQL); the directory is small.
    """
    rows = await conn.fetch(f"SELECT {_AGENCY_COLUMNS} FROM agencies")  # noqa: S608
    certificates = await _certificates_of(conn)
    agencies = (Agency.from_row(row, certificates.get(row["code"], ())) for row in rows)
    return sorted(agencies, key=_by_hierarchy)


async def registered_codes(conn: Connection) -> frozenset[AgencyCode]:
    """The codes of every registered agency."""
    rows = await conn.fetch("SELECT code FROM agencies")
    return frozenset(AgencyCode.parse(row["code"]) for row in rows)


# -- messages ----------------------------------------------------------------

_MESSAGE_SELECT = """
SELECT m.id, m.dedup_key, m.amqp_message_id, m.routing_key, m.broker_user, m.sha256,
       m.received_at, m.body_size, s.kind, s.sender, s.outcome, s.reason_code, s.reason_detail,
       s.document_pk, s.document_id, s.attempts, s.published_at, s.updated_at
FROM messages m JOIN message_state s ON s.message_pk = m.id
"""


async def record_message(
    conn: Connection,
    *,
    dedup_key: str,
    amqp_message_id: str | None,
    routing_key: str,
    broker_user: str | None,
    body: bytes,
    sha256: str,
    kind: MessageKind = MessageKind.UNKNOWN,
    sender: AgencyCode | None = None,
    received_at: datetime | None = None,
    body_size: int | None = None,
) -> tuple[Message, bool]:
    """Record a received message; ``(message, True)`` the first time.

    ``body_size`` says ``body`` is only the start (at most 64 KiB) of a body
    of that size, whose SHA-256 ``sha256`` is (migration 0013: junk).

    A redelivery or a re-publish (same ``dedup_key``) inserts nothing and
    returns ``(existing message, False)`` with the outcome and outbox flag
    of its first processing, so the caller only re-publishes what is not
    yet published. When two workers record the same message at once, the
    second waits for the first one's transaction and then finds its row.
    """
    # The usual case, a new message, takes one round trip: the statement
    # returns the new row as _MESSAGE_SELECT would read it.
    created_row = await conn.fetchrow(
        """
        WITH new AS (
            INSERT INTO messages
                (dedup_key, amqp_message_id, routing_key, broker_user, body, sha256, received_at,
                 body_size)
            VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()), $10)
            -- The key is claimed in message_keys (migration 0018): a
            -- message recorded before, in any month, skips the row.
            ON CONFLICT DO NOTHING
            RETURNING id, dedup_key, amqp_message_id, routing_key, broker_user, sha256,
                      received_at, body_size
        ), state AS (
            INSERT INTO message_state (message_pk, kind, sender, received_at)
            SELECT id, $8, $9, received_at FROM new
            RETURNING message_pk, kind, sender, outcome, reason_code, reason_detail,
                      document_pk, document_id, attempts, published_at, updated_at
        )
        SELECT m.id, m.dedup_key, m.amqp_message_id, m.routing_key, m.broker_user, m.sha256,
               m.received_at, m.body_size, s.kind, s.sender, s.outcome, s.reason_code,
               s.reason_detail, s.document_pk, s.document_id, s.attempts, s.published_at,
               s.updated_at
        FROM new m JOIN state s ON s.message_pk = m.id
        """,
        dedup_key,
        amqp_message_id,
        routing_key,
        broker_user,
        body,
        sha256,
        received_at,
        kind.value,
        None if sender is None else str(sender),
        body_size,
    )
    if created_row is not None:
        return Message.from_row(created_row), True
    row = await conn.fetchrow(
        _MESSAGE_SELECT + " WHERE m.dedup_key = $1 AND m.received_at = "  # noqa: S608 (constant)
        "(SELECT k.received_at FROM message_keys k WHERE k.dedup_key = $1)",
        dedup_key,
    )
    if row is None:
        # Its month was detached (lienthong retention): its key and state
        # stay, and what the key is made of (publisher, routing key, body)
        # is what this call was given.
        row = await conn.fetchrow(
            """
            SELECT k.message_pk AS id, k.dedup_key, $2::text AS amqp_message_id,
                   $3::text AS routing_key, $4::text AS broker_user, $5::text AS sha256,
                   k.received_at, s.kind, s.sender, s.outcome, s.reason_code, s.reason_detail,
                   s.document_pk, s.document_id, s.attempts, s.published_at, s.updated_at
            FROM message_keys k JOIN message_state s ON s.message_pk = k.message_pk
            WHERE k.dedup_key = $1
            """,
            dedup_key,
            amqp_message_id,
            routing_key,
            broker_user,
            sha256,
        )
    # Under READ COMMITTED, ON CONFLICT DO NOTHING skips only a row that is
    # committed (it waits for a concurrent inserter) or our own; keys are
    # never deleted, so one of the selects sees it.
    assert row is not None, f"message {dedup_key} vanished between insert and select"
    return Message.from_row(row), False


async def count_start(conn: Connection, dedup_key: str) -> int:
    """Count one more start of handling a redelivered message; returns the starts so far."""
    starts: int = await conn.fetchval(
        """
        INSERT INTO processing_starts (dedup_key, starts) VALUES ($1, 1)
        ON CONFLICT (dedup_key) DO UPDATE
            SET starts = processing_starts.starts + 1, last_at = now()
        RETURNING starts
        """,
        dedup_key,
    )
    return starts


async def get_message(conn: Connection, pk: int) -> Message | None:
    """The message with this primary key (without its body), or ``None``."""
    row = await conn.fetchrow(_MESSAGE_SELECT + " WHERE m.id = $1", pk)
    return None if row is None else Message.from_row(row)


async def message_body(conn: Connection, pk: int) -> bytes | None:
    """The bytes of a message exactly as received, or ``None`` for an unknown id."""
    body: bytes | None = await conn.fetchval("SELECT body FROM messages WHERE id = $1", pk)
    return body


async def set_outcome(
    conn: Connection,
    message_pk: int,
    outcome: TransportOutcome,
    reason: Reason | str | None = None,
    detail: str | None = None,
    *,
    kind: MessageKind | None = None,
    sender: AgencyCode | None = None,
    document_pk: int | None = None,
    document_id: str | None = None,
    attempts: int | None = None,
) -> Message:
    """Record what the exchange decided for a message.

    ``reason`` is required for ``rejected`` and ``parked`` and refused for
    the others (the database checks it). ``kind``, ``sender``,
    ``document_pk``, ``document_id`` and ``attempts`` are updated when given. A changed
    outcome (a parked message replayed and now delivered) has new side
    effects to publish, so it clears the outbox flag; so does deciding again a
    message refused for its sender's rate (``REJECTED_QUOTA``: sent again).
    """
    # One round trip: the update returns the state as _MESSAGE_SELECT reads it.
    row = await conn.fetchrow(
        """
        WITH s AS (
        UPDATE message_state SET
            outcome = $2,
            reason_code = $3,
            reason_detail = $4,
            kind = coalesce($5, kind),
            sender = coalesce($6, sender),
            document_pk = coalesce($7, document_pk),
            attempts = coalesce($8, attempts),
            document_id = coalesce($9, document_id),
            -- A message refused for its sender's rate and decided again
            -- (sent again) owes a new receipt, whatever the new outcome.
            published_at = CASE WHEN outcome IS DISTINCT FROM $2
                                  OR reason_code = 'REJECTED_QUOTA'
                                THEN NULL ELSE published_at END,
            updated_at = now()
        WHERE message_pk = $1
        RETURNING message_pk, kind, sender, outcome, reason_code, reason_detail,
                  document_pk, document_id, attempts, published_at, updated_at
        )
        SELECT m.id, m.dedup_key, m.amqp_message_id, m.routing_key, m.broker_user, m.sha256,
               m.received_at, m.body_size, s.kind, s.sender, s.outcome, s.reason_code,
               s.reason_detail, s.document_pk, s.document_id, s.attempts, s.published_at,
               s.updated_at
        FROM s JOIN messages m ON m.id = s.message_pk
        """,
        message_pk,
        outcome.value,
        _reason_code(reason),
        detail,
        None if kind is None else kind.value,
        None if sender is None else str(sender),
        document_pk,
        attempts,
        document_id,
    )
    if row is None:
        raise LookupError(f"no message {message_pk} to set the outcome of")
    return Message.from_row(row)


async def mark_published(conn: Connection, message_pk: int) -> bool:
    """Set the outbox flag: the outcome's side effects were published and confirmed.

    The deliveries the message created count as delivered from now on.
    Returns ``False`` when the message was already marked (a second worker
    got there first), which is harmless.
    """
    return bool(await mark_published_many(conn, [message_pk]))


# The outbox flags of the messages in the array {pks}, as CTEs `marked` and
# `delivered`, shared by mark_published_many and record_delivered_documents.
_MARK_PUBLISHED = """
        marked AS (
            UPDATE message_state SET published_at = now(), updated_at = now()
            WHERE message_pk = ANY({pks}::bigint[]) AND published_at IS NULL
            RETURNING message_pk, published_at
        ), delivered AS (
            UPDATE deliveries d SET delivered_at = marked.published_at, updated_at = now()
            FROM marked
            WHERE d.message_pk = marked.message_pk AND d.delivered_at IS NULL
        )
"""
_MARK_PUBLISHED_MANY = f"WITH {_MARK_PUBLISHED.format(pks='$1')} SELECT count(*) FROM marked"  # noqa: S608 (constant text)


async def mark_published_many(conn: Connection, message_pks: Iterable[int]) -> int:
    """:func:`mark_published` for several messages in one statement; how many were marked."""
    changed: int = await conn.fetchval(_MARK_PUBLISHED_MANY, sorted(set(message_pks)))
    return changed


async def list_unpublished(conn: Connection, limit: int = 100) -> list[Message]:
    """Decided messages whose side effects are not confirmed yet, oldest first.

    The outbox sweep: after a crash between the commit and the broker's
    confirms, these are the messages whose effects must be published again.
    """
    rows = await conn.fetch(
        _MESSAGE_SELECT
        + " WHERE s.outcome IS NOT NULL AND s.published_at IS NULL ORDER BY m.id LIMIT $1",
        limit,
    )
    return [Message.from_row(row) for row in rows]


# -- documents ---------------------------------------------------------------

_DOCUMENT_FIELDS = (
    "id",
    "sender",
    "document_id",
    "sha256",
    "code_number",
    "code_notation",
    "subject",
    "promulgation_date",
    "due_date",
    "doc_type",
    "priority",
    "first_message_pk",
    "created_at",
)
_DOCUMENT_COLUMNS = _columns(_DOCUMENT_FIELDS)


# A document, once per (sender, DocumentId); $1 to $11 as upsert_document passes them.
_INSERT_DOCUMENT = f"""
    INSERT INTO documents
        (sender, document_id, sha256, code_number, code_notation, subject,
         promulgation_date, due_date, doc_type, priority, first_message_pk)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT (sender, document_id) DO NOTHING
    RETURNING {_DOCUMENT_COLUMNS}
"""  # noqa: S608 (a constant column list, no input)


def _document_values(document: NewDocument) -> tuple[Any, ...]:
    """$1 to $10 of _INSERT_DOCUMENT."""
    return (
        str(document.sender),
        document.document_id,
        document.sha256,
        document.code_number,
        document.code_notation,
        document.subject,
        document.promulgation_date,
        document.due_date,
        document.doc_type.value,
        None if document.priority is None else document.priority.value,
    )


async def upsert_document(
    conn: Connection, document: NewDocument, *, first_message_pk: int
) -> StoredDocument:
    """Store a document once per (sender, document id) and say what was there.

    The first call inserts; later calls (the same package for another
    recipient, a redelivery) change nothing and return the stored row.
    ``conflict`` in the answer is true when the stored row has another
    SHA-256 than ``document.sha256``: the id was reused for different content.
    """
    # One round trip whether the document is new or known (the same package
    # for its next recipient, the usual case): the insert's row, or else the
    # stored one as this statement's snapshot sees it.
    row = await conn.fetchrow(
        f"""
        WITH new AS (
            {_INSERT_DOCUMENT}
        )
        SELECT true AS created, {_DOCUMENT_COLUMNS} FROM new
        UNION ALL
        SELECT false AS created, {_DOCUMENT_COLUMNS} FROM documents
        WHERE sender = $1 AND document_id = $2 AND NOT EXISTS (SELECT FROM new)
        """,  # noqa: S608
        *_document_values(document),
        first_message_pk,
    )
    created = row is not None and bool(row["created"])
    if row is None:
        # Stored by a transaction that committed after this statement's
        # snapshot was taken (the insert waited for it): read it now.
        row = await conn.fetchrow(
            f"SELECT {_DOCUMENT_COLUMNS} FROM documents "  # noqa: S608
            "WHERE sender = $1 AND document_id = $2",
            str(document.sender),
            document.document_id,
        )
        assert row is not None  # the conflict proves it exists
    stored = Document.from_row(row)
    return StoredDocument(stored, created, conflict=stored.sha256 != document.sha256)


_MESSAGE_FIELDS = (
    "id",
    "dedup_key",
    "amqp_message_id",
    "routing_key",
    "broker_user",
    "sha256",
    "received_at",
)
_STATE_FIELDS = (
    "kind",
    "sender",
    "outcome",
    "reason_code",
    "reason_detail",
    "document_pk",
    "document_id",
    "attempts",
    "published_at",
    "updated_at",
)


# record_delivered_documents' statement. $1 to $17 are arrays, one element
# per message: $1 its number in the call, $2 to $6 the message as
# record_message stores it (dedup key, AMQP message id, routing key, broker
# user, body), $7 the recipient, $8 to $17 the document as _INSERT_DOCUMENT
# ($8 sender ... $17 priority; the message's SHA-256 is the document's, $10:
# a document is the bytes of the message that brought it), $22 its warnings
# (the reason_detail of a delivered message). $18 the outbox flags to set,
# $19 to $21 the receipt kind, the outcome and the kind.
#
# Only the first copy of a message (its dedup key), and of a document to a
# recipient, is taken: a second copy in one call (a re-publish racing its
# first copy) gets no row. A message is inserted only when no document of
# its sender holds its DocumentId with other bytes; its state says
# delivered only when the document and the delivery are in the statement's
# sight. Several messages of one document (to several recipients) are the
# usual case: the first of them is the document's first message.
_RECORD_DELIVERED_DOCUMENTS = f"""
        WITH given AS (
            SELECT * FROM unnest(
                $1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                $13::text[], $14::date[], $15::date[], $16::text[], $17::text[], $22::text[]
            ) AS i(n, dedup_key, amqp_message_id, routing_key, broker_user, body,
                   recipient, sender, document_id, sha256, code_number, code_notation,
                   subject, promulgation_date, due_date, doc_type, priority, warnings)
        ), ranked AS (
            SELECT given.*,
                   row_number() OVER (PARTITION BY dedup_key ORDER BY n) AS copy_of_message,
                   row_number() OVER (PARTITION BY sender, document_id, recipient ORDER BY n)
                       AS copy_of_delivery
            FROM given
        ), input AS (
            SELECT n, dedup_key, amqp_message_id, routing_key, broker_user, body,
                   recipient, sender, document_id, sha256, code_number, code_notation,
                   subject, promulgation_date, due_date, doc_type, priority, warnings
            FROM ranked WHERE copy_of_message = 1 AND copy_of_delivery = 1
        ), {_MARK_PUBLISHED.format(pks="$18").strip()}, before AS (
            SELECT i.n, d.id, d.sha256, d.due_date
            FROM input i JOIN documents d ON d.sender = i.sender AND d.document_id = i.document_id
        ), m AS (
            INSERT INTO messages
                (dedup_key, amqp_message_id, routing_key, broker_user, body, sha256, received_at)
            SELECT i.dedup_key, i.amqp_message_id, i.routing_key, i.broker_user, i.body,
                   i.sha256, now()
            FROM input i
            WHERE NOT EXISTS (SELECT FROM before b WHERE b.n = i.n AND b.sha256 <> i.sha256)
            ORDER BY i.n
            ON CONFLICT DO NOTHING
            RETURNING {_columns(_MESSAGE_FIELDS)}
        ), mi AS (
            SELECT i.n, i.recipient, i.sender, i.document_id, i.warnings, m.*
            FROM m JOIN input i ON i.dedup_key = m.dedup_key
        ), new_doc AS (
            INSERT INTO documents
                (sender, document_id, sha256, code_number, code_notation, subject,
                 promulgation_date, due_date, doc_type, priority, first_message_pk)
            SELECT sender, document_id, sha256, code_number, code_notation, subject,
                   promulgation_date, due_date, doc_type, priority, message_pk
            FROM (
                SELECT DISTINCT ON (i.sender, i.document_id) i.*, mi.id AS message_pk
                FROM input i JOIN mi ON mi.n = i.n
                WHERE NOT EXISTS (SELECT FROM before b WHERE b.n = i.n)
                ORDER BY i.sender, i.document_id, i.n
            ) first
            -- Rows locked in the caller's order (the worker's: by document),
            -- as every writer of documents takes them.
            ORDER BY first.n
            ON CONFLICT (sender, document_id) DO NOTHING
            RETURNING id, sender, document_id, sha256, due_date
        ), doc AS (
            SELECT mi.n, nd.id, nd.due_date FROM mi
            JOIN new_doc nd ON nd.sender = mi.sender AND nd.document_id = mi.document_id
                           AND nd.sha256 = mi.sha256
            UNION ALL
            SELECT mi.n, b.id, b.due_date FROM mi JOIN before b ON b.n = mi.n
        ), new_delivery AS (
            INSERT INTO deliveries (document_pk, recipient, message_pk, due_date)
            SELECT doc.id, mi.recipient, mi.id, doc.due_date FROM doc JOIN mi ON mi.n = doc.n
            ORDER BY doc.n
            ON CONFLICT (document_pk, recipient) DO NOTHING
            RETURNING id, document_pk, recipient
        ), delivery AS (
            SELECT doc.n, nd.id FROM doc JOIN mi ON mi.n = doc.n
            JOIN new_delivery nd ON nd.document_pk = doc.id AND nd.recipient = mi.recipient
            UNION ALL
            SELECT doc.n, d.id FROM doc JOIN mi ON mi.n = doc.n
            JOIN deliveries d ON d.document_pk = doc.id AND d.recipient = mi.recipient
            WHERE NOT EXISTS (
                SELECT FROM new_delivery nd
                WHERE nd.document_pk = doc.id AND nd.recipient = mi.recipient
            )
        ), receipt AS (
            INSERT INTO events (delivery_pk, message_pk, kind, code, at)
            SELECT delivery.id, mi.id, $19, $20, now()
            FROM delivery JOIN mi ON mi.n = delivery.n
            ORDER BY delivery.n
        ), state AS (
            INSERT INTO message_state
                (message_pk, kind, sender, outcome, document_pk, document_id, reason_detail,
                 received_at)
            SELECT mi.id, $21, mi.sender,
                   CASE WHEN delivery.id IS NOT NULL THEN $20 END,
                   CASE WHEN delivery.id IS NOT NULL THEN doc.id END,
                   mi.document_id,
                   CASE WHEN delivery.id IS NOT NULL THEN mi.warnings END, mi.received_at
            FROM mi LEFT JOIN delivery ON delivery.n = mi.n LEFT JOIN doc ON doc.n = mi.n
            RETURNING message_pk, {_columns(_STATE_FIELDS)}
        )
        SELECT mi.n, {_columns(_MESSAGE_FIELDS, "mi")}, {_columns(_STATE_FIELDS, "state")}
        FROM mi JOIN state ON state.message_pk = mi.id
        """  # noqa: S608 (constant column lists, no input)


async def record_delivered_documents(
    conn: Connection, messages: Sequence[NewDocumentMessage], published: Iterable[int] = ()
) -> list[Message | None]:
    """Record new document messages and their deliveries in one statement: the worker's usual case.

    What :func:`record_message` then the general path's delivery
    (:func:`upsert_document`, :func:`create_delivery`, :func:`append_event`,
    :func:`set_outcome`) do for each message, for messages that passed every
    check and whose recipients are registered; ``published`` are outbox
    flags set in the same statement (:func:`mark_published_many`). Returns,
    in the order of ``messages``, each message's record: decided
    (``delivered``), or undecided when a row a concurrent transaction
    committed was out of the statement's sight (the caller decides it as any
    recorded message); or ``None``, having written nothing for it, when the
    message was recorded before (a redelivery, a re-publish), its sender
    already holds the DocumentId with other bytes, or it is a second copy in
    ``messages`` of an earlier one's dedup key or of its document and
    recipient: the caller takes the general path, which knows what to say.

    Run outside a transaction, the statement is one: it commits alone.
    """
    documents = [message.document for message in messages]
    rows = await conn.fetch(
        _RECORD_DELIVERED_DOCUMENTS,
        list(range(len(messages))),
        [message.dedup_key for message in messages],
        [message.amqp_message_id for message in messages],
        [message.routing_key for message in messages],
        [message.broker_user for message in messages],
        [message.body for message in messages],
        [str(message.recipient) for message in messages],
        [str(document.sender) for document in documents],
        [document.document_id for document in documents],
        [document.sha256 for document in documents],
        [document.code_number for document in documents],
        [document.code_notation for document in documents],
        [document.subject for document in documents],
        [document.promulgation_date for document in documents],
        [document.due_date for document in documents],
        [document.doc_type.value for document in documents],
        [None if document.priority is None else document.priority.value for document in documents],
        sorted(set(published)),
        EventKind.RECEIPT.value,
        TransportOutcome.DELIVERED.value,
        MessageKind.DOCUMENT.value,
        [message.warnings for message in messages],
    )
    recorded: list[Message | None] = [None] * len(messages)
    for row in rows:
        recorded[row["n"]] = Message.from_row(row)
    return recorded


async def get_document(conn: Connection, sender: AgencyCode, document_id: str) -> Document | None:
    """The document a sender stored under this id, or ``None``."""
    row = await conn.fetchrow(
        f"SELECT {_DOCUMENT_COLUMNS} FROM documents "  # noqa: S608
        "WHERE sender = $1 AND document_id = $2",
        str(sender),
        document_id,
    )
    return None if row is None else Document.from_row(row)


# -- deliveries --------------------------------------------------------------

_DELIVERY_FIELDS = (
    "id",
    "document_pk",
    "recipient",
    "message_pk",
    "state",
    "recall_pending",
    "withdrawn",
    "delivered_at",
    "created_at",
    "updated_at",
)
_DELIVERY_COLUMNS = _columns(_DELIVERY_FIELDS)


async def create_delivery(
    conn: Connection, document_pk: int, recipient: AgencyCode, message_pk: int
) -> tuple[Delivery, bool]:
    """The delivery of a document to a recipient; ``(delivery, True)`` when new.

    ``message_pk`` is the message that carries the document there. A second
    call for the same (document, recipient) returns the existing delivery.
    """
    row = await conn.fetchrow(
        f"""
        INSERT INTO deliveries (document_pk, recipient, message_pk, due_date)
        VALUES ($1, $2, $3, (SELECT due_date FROM documents WHERE id = $1))
        ON CONFLICT (document_pk, recipient) DO NOTHING
        RETURNING {_DELIVERY_COLUMNS}
        """,  # noqa: S608
        document_pk,
        str(recipient),
        message_pk,
    )
    created = row is not None
    if row is None:
        row = await conn.fetchrow(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries "  # noqa: S608
            "WHERE document_pk = $1 AND recipient = $2",
            document_pk,
            str(recipient),
        )
        assert row is not None  # the conflict proves it exists
    return Delivery.from_row(row), created


async def get_delivery(
    conn: Connection,
    sender: AgencyCode,
    document_id: str,
    recipient: AgencyCode,
    *,
    lock: bool = False,
) -> Delivery | None:
    """The delivery of a sender's document to a recipient, or ``None``.

    With ``lock``, the row stays locked until the transaction ends: two
    workers handling two statuses of one delivery then apply them one after
    the other, each checking its transition against the other's result.
    """
    row = await conn.fetchrow(
        f"""
        SELECT {_columns(_DELIVERY_FIELDS, "d")}
        FROM deliveries d JOIN documents doc ON doc.id = d.document_pk
        WHERE doc.sender = $1 AND doc.document_id = $2 AND d.recipient = $3
        {"FOR UPDATE OF d" if lock else ""}
        """,  # noqa: S608
        str(sender),
        document_id,
        str(recipient),
    )
    return None if row is None else Delivery.from_row(row)


async def update_delivery_state(
    conn: Connection, delivery_pk: int, state: DeliveryState
) -> Delivery:
    """Store a delivery's new business state (computed by :func:`exchange.status.next_state`)."""
    row = await conn.fetchrow(
        f"""
        UPDATE deliveries SET state = $2, recall_pending = $3, withdrawn = $4, updated_at = now()
        WHERE id = $1
        RETURNING {_DELIVERY_COLUMNS}
        """,  # noqa: S608
        delivery_pk,
        None if state.latest is None else state.latest.value,
        state.recall_pending,
        state.withdrawn,
    )
    if row is None:
        raise LookupError(f"no delivery {delivery_pk} to update")
    return Delivery.from_row(row)


# -- events ------------------------------------------------------------------

_EVENT_FIELDS = (
    "id",
    "delivery_pk",
    "message_pk",
    "kind",
    "code",
    "reason_code",
    "description",
    "at",
    "recorded_at",
)
_EVENT_COLUMNS = _columns(_EVENT_FIELDS)


async def append_event(
    conn: Connection,
    *,
    delivery_pk: int,
    message_pk: int,
    code: StatusCode | TransportOutcome,
    at: datetime | None = None,
    reason: Reason | str | None = None,
    description: str | None = None,
) -> tuple[Event, bool]:
    """Add a receipt (a :class:`TransportOutcome`) or a status (a :class:`StatusCode`).

    The kind follows from the code's vocabulary. A message adds at most one
    event of each kind to a delivery: a second call returns the first
    event and ``False``. ``at`` defaults to now (for a status, pass the
    package's Timestamp).
    """
    kind = EventKind.of(code)
    row = await conn.fetchrow(
        f"""
        INSERT INTO events (delivery_pk, message_pk, kind, code, reason_code, description, at)
        VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()))
        -- The key (message, delivery, kind) is claimed in event_keys (0018).
        ON CONFLICT DO NOTHING
        RETURNING {_EVENT_COLUMNS}
        """,  # noqa: S608
        delivery_pk,
        message_pk,
        kind.value,
        code.value,
        _reason_code(reason),
        description,
        at,
    )
    created = row is not None
    if row is None:
        row = await conn.fetchrow(
            f"SELECT {_EVENT_COLUMNS} FROM events "  # noqa: S608
            "WHERE message_pk = $1 AND delivery_pk = $2 AND kind = $3",
            message_pk,
            delivery_pk,
            kind.value,
        )
        assert row is not None  # the conflict proves it exists
    return Event.from_row(row), created


async def list_events(conn: Connection, delivery_pk: int) -> list[Event]:
    """A delivery's history, oldest first."""
    rows = await conn.fetch(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE delivery_pk = $1 "  # noqa: S608
        "ORDER BY at, id",
        delivery_pk,
    )
    return [Event.from_row(row) for row in rows]


# -- what senders and operators read -----------------------------------------


async def trace(
    conn: Connection, document_id: str, sender: AgencyCode | None = None
) -> list[DocumentTrace]:
    """The timeline of a document: when submitted, and per recipient its history.

    Without ``sender``, every sender's document with this id (ids follow a
    convention that starts with the sender's code, so normally one).
    Recipients come in hierarchy order, each history oldest first.
    """
    rows = await conn.fetch(
        f"""
        SELECT {_columns(_DOCUMENT_FIELDS, "d")},
               k.received_at AS submitted_at
        FROM documents d JOIN message_keys k ON k.message_pk = d.first_message_pk
        WHERE d.document_id = $1 AND ($2::text IS NULL OR d.sender = $2)
        ORDER BY d.created_at, d.id
        """,  # noqa: S608
        document_id,
        None if sender is None else str(sender),
    )
    traces: list[DocumentTrace] = []
    for row in rows:
        document = Document.from_row(row)
        delivery_rows = await conn.fetch(
            f"""
            SELECT {_columns(_DELIVERY_FIELDS, "d")},
                   a.name AS recipient_name
            FROM deliveries d JOIN agencies a ON a.code = d.recipient
            WHERE d.document_pk = $1
            """,  # noqa: S608
            document.pk,
        )
        event_rows = await conn.fetch(
            f"""
            SELECT {_columns(_EVENT_FIELDS, "e")}
            FROM events e JOIN deliveries d ON d.id = e.delivery_pk
            WHERE d.document_pk = $1
              -- Recorded with the document or after it (recorded_at is
              -- the start of the recording transaction: a day covers any
              -- that started before the document's and saw it committed),
              -- so the months before are not read (0018 partitions events
              -- by recorded_at).
              AND e.recorded_at >= $2::timestamptz - interval '1 day'
            ORDER BY e.at, e.id
            """,  # noqa: S608
            document.pk,
            document.created_at,
        )
        copies_by_message: dict[int, list[CopyTrace]] = {}
        for copy_row in await conn.fetch(
            """
            SELECT c.message_pk, c.subscriber, a.name, c.pattern, c.published_at
            FROM subscription_copies c
            JOIN deliveries d ON d.message_pk = c.message_pk
            JOIN agencies a ON a.code = c.subscriber
            WHERE d.document_pk = $1
            ORDER BY c.subscriber
            """,
            document.pk,
        ):
            copies_by_message.setdefault(copy_row["message_pk"], []).append(
                CopyTrace(
                    AgencyCode.parse(copy_row["subscriber"]),
                    copy_row["name"],
                    copy_row["pattern"],
                    copy_row["published_at"],
                )
            )
        events_by_delivery: dict[int, list[Event]] = {}
        for event_row in event_rows:
            event = Event.from_row(event_row)
            events_by_delivery.setdefault(event.delivery_pk, []).append(event)
        recipients = sorted(
            (
                RecipientTrace(
                    recipient_name=delivery_row["recipient_name"],
                    delivery=(delivery := Delivery.from_row(delivery_row)),
                    events=tuple(events_by_delivery.get(delivery.pk, ())),
                    copies=tuple(copies_by_message.get(delivery.message_pk, ())),
                )
                for delivery_row in delivery_rows
            ),
            key=lambda recipient: recipient.delivery.recipient,
        )
        traces.append(DocumentTrace(document, row["submitted_at"], tuple(recipients)))
    return traces


async def record_subscription_copies(
    conn: Connection, copies: Sequence[tuple[int, str, str]]
) -> None:
    """Record subscription copies ``(message_pk, subscriber, pattern)`` published; once each."""
    await conn.executemany(
        """
        INSERT INTO subscription_copies (message_pk, subscriber, pattern) VALUES ($1, $2, $3)
        ON CONFLICT (message_pk, subscriber) DO NOTHING
        """,
        copies,
    )


async def sender_view(conn: Connection, sender: AgencyCode) -> list[SenderViewRow]:
    """What a sender sees: each of its documents at each recipient, with the latest status.

    Documents oldest first, recipients in hierarchy order.
    """
    rows = await conn.fetch(
        """
        SELECT doc.id AS document_pk, doc.document_id, doc.subject,
               k.received_at AS submitted_at,
               d.recipient, a.name AS recipient_name,
               d.state, d.recall_pending, d.withdrawn, d.delivered_at,
               latest.code AS latest_code, latest.at AS latest_at
        FROM documents doc
        JOIN message_keys k ON k.message_pk = doc.first_message_pk
        JOIN deliveries d ON d.document_pk = doc.id
        JOIN agencies a ON a.code = d.recipient
        LEFT JOIN LATERAL (
            SELECT e.code, e.at FROM events e
            WHERE e.delivery_pk = d.id AND e.kind = 'status'
            ORDER BY e.at DESC, e.id DESC
            LIMIT 1
        ) latest ON true
        WHERE doc.sender = $1
        """,
        str(sender),
    )
    view = [
        SenderViewRow(
            document_pk=row["document_pk"],
            document_id=row["document_id"],
            subject=row["subject"],
            submitted_at=row["submitted_at"],
            recipient=AgencyCode.parse(row["recipient"]),
            recipient_name=row["recipient_name"],
            state=DeliveryState(
                latest=None if row["state"] is None else StatusCode(row["state"]),
                recall_pending=row["recall_pending"],
                withdrawn=row["withdrawn"],
            ),
            latest_code=None if row["latest_code"] is None else StatusCode(row["latest_code"]),
            latest_at=row["latest_at"],
            delivered_at=row["delivered_at"],
        )
        for row in rows
    ]
    view.sort(key=lambda line: (line.submitted_at, line.document_pk, line.recipient))
    return view


# -- replays (the replay tool) ---------------------------------
#
# Added by the replay tool (exchange/replay.py); kept apart so the rest of the
# file can change without touching it. The rows of `replays` and
# `replay_items` (migration 0003) are values of their own, defined here.

REFUSED_OUTCOMES = (TransportOutcome.REJECTED, TransportOutcome.PARKED)

# The refused states, oldest first, with their messages. The outcomes are
# written as the predicate of the indexes the list reads
# (message_state_refused_received, message_state_refused_sender: migration
# 0020) says them: PostgreSQL uses a partial index only for a query whose
# conditions say what its predicate says. Each state then probes its own
# message, by its key, in its month: a plain join would let the planner
# read every message of the period instead, since a generic plan costs that
# probe in every month (the months are pruned when it runs, not planned);
# OFFSET 0 keeps the subquery a probe.
_REFUSED_SELECT = f"""
SELECT m.id, m.dedup_key, m.amqp_message_id, m.routing_key, m.broker_user, m.sha256,
       m.received_at, m.body_size, s.kind, s.sender, s.outcome, s.reason_code, s.reason_detail,
       s.document_pk, s.document_id, s.attempts, s.published_at, s.updated_at
FROM message_state s
CROSS JOIN LATERAL (
    SELECT m.id, m.dedup_key, m.amqp_message_id, m.routing_key, m.broker_user, m.sha256,
           m.received_at, m.body_size
    FROM messages m
    WHERE m.id = s.message_pk AND m.received_at = s.received_at
      AND m.received_at >= coalesce($1::timestamptz, '-infinity')
      AND m.received_at < coalesce($2::timestamptz, 'infinity')
    OFFSET 0
) m
WHERE s.outcome IN ({", ".join(f"'{o.value}'" for o in REFUSED_OUTCOMES)})
  AND s.received_at >= coalesce($1::timestamptz, '-infinity')
  AND s.received_at < coalesce($2::timestamptz, 'infinity')
"""  # noqa: S608 (constant outcomes, no input)


async def list_refused(
    conn: Connection,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    sender: AgencyCode | None = None,
    recipient: AgencyCode | None = None,
    reason_codes: Iterable[str] | None = None,
    outcomes: Iterable[TransportOutcome] = REFUSED_OUTCOMES,
    limit: int | None = None,
) -> list[Message]:
    """Rejected and parked messages, oldest first, filtered as given.

    ``since`` and ``until`` bound the time received (``since`` included,
    ``until`` not); ``sender`` is the agency the exchange identified as the
    publisher, ``recipient`` the routing key; ``reason_codes`` keeps those
    refused for one of these codes. ``outcomes`` may only narrow the refused
    outcomes: a delivered message is never listed.
    """
    query, args = refused_query(
        since=since,
        until=until,
        sender=sender,
        recipient=recipient,
        reason_codes=reason_codes,
        outcomes=outcomes,
        limit=limit,
    )
    rows = await conn.fetch(query, *args)
    return [Message.from_row(row) for row in rows]


def refused_query(
    *,
    since: datetime | None,
    until: datetime | None,
    sender: AgencyCode | None,
    recipient: AgencyCode | None,
    reason_codes: Iterable[str] | None,
    outcomes: Iterable[TransportOutcome],
    limit: int | None,
) -> tuple[str, list[Any]]:
    """The statement :func:`list_refused` runs for these filters, and its arguments."""
    # A filter not given is left out of the statement rather than written
    # "$n IS NULL OR ...": a prepared statement's generic plan cannot use
    # the sender's index for a condition that may be void. So are outcomes
    # that keep every refused one: beside the outcomes of the indexes'
    # predicate, the planner would count them twice and expect too few rows.
    chosen = set(outcomes)
    wanted = [o.value for o in REFUSED_OUTCOMES if o in chosen]
    args: list[Any] = [since, until]
    query = _REFUSED_SELECT
    for condition, value in (
        ("s.outcome = ANY(${}::text[])", None if len(wanted) == len(REFUSED_OUTCOMES) else wanted),
        ("s.sender = ${}::text", None if sender is None else str(sender)),
        ("m.routing_key = ${}::text", None if recipient is None else str(recipient)),
        ("s.reason_code = ANY(${}::text[])", None if reason_codes is None else list(reason_codes)),
    ):
        if value is not None:
            args.append(value)
            query += f"  AND {condition.format(len(args))}\n"
    query += "ORDER BY s.received_at, s.message_pk"
    if limit is not None:
        args.append(limit)
        query += f" LIMIT ${len(args)}::bigint"
    return query, args


async def get_messages(conn: Connection, pks: Iterable[int]) -> dict[int, Message]:
    """The messages with these primary keys that exist, by key."""
    rows = await conn.fetch(_MESSAGE_SELECT + " WHERE m.id = ANY($1::bigint[])", list(pks))
    return {row["id"]: Message.from_row(row) for row in rows}


async def messages_by_dedup_key(conn: Connection, keys: Iterable[str]) -> dict[str, Message]:
    """The recorded messages with these dedup keys, by key (absent ones are left out)."""
    rows = await conn.fetch(_MESSAGE_SELECT + " WHERE m.dedup_key = ANY($1::text[])", list(keys))
    return {row["dedup_key"]: Message.from_row(row) for row in rows}


async def database_now(conn: Connection) -> datetime:
    """The database's clock: the instant later decisions are compared with."""
    now: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return now


async def start_replay(
    conn: Connection, *, os_user: str, host: str, broker_user: str, selection: dict[str, Any]
) -> int:
    """Record that a replay starts; returns its id (the ``x-lienthong-replay`` header)."""
    pk: int = await conn.fetchval(
        """
        INSERT INTO replays (os_user, host, broker_user, selection)
        VALUES ($1, $2, $3, $4::jsonb)
        RETURNING id
        """,
        os_user,
        host,
        broker_user,
        json.dumps(selection, ensure_ascii=False, sort_keys=True),
    )
    return pk


async def add_replay_items(
    conn: Connection,
    replay_pk: int,
    items: Iterable[tuple[str, int | None, str, str, str | None, str | None, str | None]],
) -> None:
    """Record what a replay takes: ``(dedup_key, message_pk, source, action, note,
    outcome_before, reason_before)`` per message."""
    await conn.executemany(
        """
        INSERT INTO replay_items
            (replay_pk, dedup_key, message_pk, source, action, note, outcome_before, reason_before)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (replay_pk, dedup_key) DO NOTHING
        """,
        [(replay_pk, *item) for item in items],
    )


async def set_replay_item_action(
    conn: Connection, replay_pk: int, dedup_key: str, action: str, note: str | None = None
) -> None:
    """Record what became of publishing one message of a replay."""
    await conn.execute(
        """
        UPDATE replay_items SET action = $3, note = coalesce($4, note)
        WHERE replay_pk = $1 AND dedup_key = $2
        """,
        replay_pk,
        dedup_key,
        action,
        note,
    )


async def set_replay_item_decisions(
    conn: Connection, replay_pk: int, decisions: Iterable[Message]
) -> None:
    """Record the new decision each replayed message led to (and its row, if it was new)."""
    await conn.executemany(
        """
        UPDATE replay_items SET
            message_pk = $3, outcome_after = $4, reason_after = $5, decided_at = $6
        WHERE replay_pk = $1 AND dedup_key = $2
        """,
        [
            (
                replay_pk,
                m.dedup_key,
                m.pk,
                None if m.outcome is None else m.outcome.value,
                m.reason_code,
                m.updated_at,
            )
            for m in decisions
        ],
    )


async def finish_replay(
    conn: Connection, replay_pk: int, *, complete: bool, result: dict[str, Any]
) -> None:
    """Record the end of a replay and its outcome counts."""
    await conn.execute(
        """
        UPDATE replays SET finished_at = now(), state = $2, result = $3::jsonb
        WHERE id = $1
        """,
        replay_pk,
        "finished" if complete else "incomplete",
        json.dumps(result, ensure_ascii=False, sort_keys=True),
    )


_REPLAY_SELECT = """
SELECT r.id, r.started_at, r.finished_at, r.os_user, r.host, r.broker_user,
       r.selection::text AS selection, r.state, r.result::text AS result,
       (SELECT count(*) FROM replay_items i WHERE i.replay_pk = r.id) AS items
FROM replays r
"""


async def list_replays(conn: Connection, limit: int | None = None) -> list[ReplayRecord]:
    """The replays executed so far, the latest first."""
    rows = await conn.fetch(_REPLAY_SELECT + " ORDER BY r.id DESC LIMIT $1", limit)
    return [ReplayRecord.from_row(row) for row in rows]


async def get_replay(conn: Connection, replay_pk: int) -> ReplayRecord | None:
    """One replay, or ``None``."""
    row = await conn.fetchrow(_REPLAY_SELECT + " WHERE r.id = $1", replay_pk)
    return None if row is None else ReplayRecord.from_row(row)


async def replays_of_message(
    conn: Connection, message: Message
) -> list[tuple[ReplayRecord, ReplayItemRecord]]:
    """Every replay that took this message (by id or by identity), oldest first."""
    rows = await conn.fetch(
        "SELECT * FROM replay_items WHERE message_pk = $1 OR dedup_key = $2 ORDER BY replay_pk",
        message.pk,
        message.dedup_key,
    )
    history = []
    for row in rows:
        replay = await get_replay(conn, row["replay_pk"])
        assert replay is not None  # a foreign key
        history.append((replay, ReplayItemRecord.from_row(row)))
    return history


# -- audit and tamper evidence (exchange/audit.py) ------
#
# Added by the audit; kept apart so the rest of the file can change without
# touching it. Read-only: the audit never changes the record. The hash chains
# of `messages`, `documents` and `events` are migration 0002's.

CHAINED_TABLES = ("messages", "documents", "events", "operator_actions")
"""The append-only, hash-chained history tables, each one chain (the operator log too)."""

# Rows the audit names per discrepancy; the counts stay exact beyond it.
AUDIT_LISTING_LIMIT = 50


async def tally_messages(conn: Connection) -> MessageTally:
    """Count the received messages by outcome, undecided and unpublished.

    A ``messages`` row without its ``message_state`` (which the store never
    writes apart) counts as undecided.
    """
    row = await conn.fetchrow(
        """
        SELECT count(*) AS received,
               count(*) FILTER (WHERE s.outcome IS NULL) AS undecided,
               count(*) FILTER (WHERE s.outcome IS NOT NULL AND s.published_at IS NULL)
                   AS unpublished,
               count(*) FILTER (WHERE s.outcome = 'parked' AND s.published_at IS NOT NULL)
                   AS parked_published
        FROM messages m LEFT JOIN message_state s ON s.message_pk = m.id
        """
    )
    assert row is not None  # an aggregate always returns a row
    outcomes = {
        r["outcome"]: r["count"]
        for r in await conn.fetch(
            "SELECT outcome, count(*) AS count FROM message_state "
            "WHERE outcome IS NOT NULL GROUP BY outcome"
        )
    }
    return MessageTally(
        received=row["received"],
        outcomes=outcomes,
        undecided=row["undecided"],
        unpublished=row["unpublished"],
        parked_published=row["parked_published"],
    )


async def unsettled_messages(
    conn: Connection, limit: int = AUDIT_LISTING_LIMIT
) -> list[UnsettledMessage]:
    """The oldest messages without an outcome, or decided but unpublished."""
    rows = await conn.fetch(
        """
        SELECT m.id, m.received_at, m.routing_key, m.broker_user,
               s.outcome, s.reason_code, coalesce(s.attempts, 1) AS attempts
        FROM messages m LEFT JOIN message_state s ON s.message_pk = m.id
        WHERE s.outcome IS NULL OR s.published_at IS NULL
        ORDER BY m.id
        LIMIT $1
        """,
        limit,
    )
    return [
        UnsettledMessage(
            pk=row["id"],
            received_at=row["received_at"],
            routing_key=row["routing_key"],
            broker_user=row["broker_user"],
            outcome=None if row["outcome"] is None else TransportOutcome(row["outcome"]),
            reason_code=row["reason_code"],
            attempts=row["attempts"],
        )
        for row in rows
    ]


async def deliveries_marked_but_message_not(
    conn: Connection, limit: int = AUDIT_LISTING_LIMIT
) -> list[DeliveryMismatch]:
    """Deliveries marked delivered whose message is not delivered and published.

    ``delivered_at`` is set only by :func:`mark_published` of the message
    that created the delivery, so any of these was written by something else.
    """
    rows = await conn.fetch(
        """
        SELECT d.id AS delivery_pk, d.message_pk, d.recipient, d.delivered_at,
               s.outcome, s.published_at IS NOT NULL AS published
        FROM deliveries d LEFT JOIN message_state s ON s.message_pk = d.message_pk
        WHERE d.delivered_at IS NOT NULL
          AND (s.outcome IS DISTINCT FROM 'delivered' OR s.published_at IS NULL)
        ORDER BY d.id
        LIMIT $1
        """,
        limit,
    )
    return [_delivery_mismatch(row) for row in rows]


async def delivered_documents_not_marked(
    conn: Connection, limit: int = AUDIT_LISTING_LIMIT
) -> list[DeliveryMismatch]:
    """Document messages delivered and published whose delivery is not marked delivered.

    The delivery is the document's at the message's recipient (its routing
    key); ``delivery_pk`` is ``None`` when there is no such delivery at all.
    """
    rows = await conn.fetch(
        """
        SELECT d.id AS delivery_pk, s.message_pk, m.routing_key AS recipient,
               d.delivered_at, s.outcome, true AS published
        FROM message_state s
        JOIN messages m ON m.id = s.message_pk
        LEFT JOIN deliveries d ON d.document_pk = s.document_pk AND d.recipient = m.routing_key
        WHERE s.kind = 'document' AND s.outcome = 'delivered' AND s.published_at IS NOT NULL
          AND d.delivered_at IS NULL
        ORDER BY s.message_pk
        LIMIT $1
        """,
        limit,
    )
    return [_delivery_mismatch(row) for row in rows]


def _delivery_mismatch(row: asyncpg.Record) -> DeliveryMismatch:
    return DeliveryMismatch(
        delivery_pk=row["delivery_pk"],
        message_pk=row["message_pk"],
        recipient=row["recipient"],
        outcome=None if row["outcome"] is None else TransportOutcome(row["outcome"]),
        published=row["published"],
        delivered_at=row["delivered_at"],
    )


async def chain_heads(conn: Connection) -> dict[str, ChainHead]:
    """Each chain's head, by table name."""
    rows = await conn.fetch("SELECT chain, seq, hash FROM chain_heads")
    return {row["chain"]: ChainHead(row["chain"], row["seq"], row["hash"]) for row in rows}


async def chain_genesis(conn: Connection, chain: str) -> str:
    """The hash a chain starts from (the "previous hash" of its position 1)."""
    genesis: str = await conn.fetchval("SELECT chain_genesis($1)", chain)
    return genesis


async def chain_links(
    conn: Connection, chain: str, *, prefetch: int = 1000
) -> AsyncIterator[ChainLink]:
    """Every row of ``chain`` in chain order, with its content encoded now.

    A server-side cursor, so a chain of millions of rows streams in batches;
    call it inside a transaction (a REPEATABLE READ one sees every chain and
    the heads at one instant).
    """
    if chain not in CHAINED_TABLES:
        raise ValueError(f"{chain!r} is not a chained table; chains: {', '.join(CHAINED_TABLES)}")
    query = (
        f"SELECT t.id, t.chain_seq, t.chain_hash, chain_content(t) AS content "  # noqa: S608
        f"FROM {chain} t ORDER BY t.chain_seq"
    )
    async for row in conn.cursor(query, prefetch=prefetch):
        yield ChainLink(row["id"], row["chain_seq"], row["chain_hash"], bytes(row["content"]))


# -- the directory figures of ``lienthong report`` and the watchdog ---------------------

_AGENCY_ACTIVITY = """
SELECT a.code,
       (SELECT c.certificate_pem FROM agency_certificates c WHERE c.agency = a.code
        ORDER BY c.registered_at DESC LIMIT 1) AS certificate_pem,
       EXISTS (SELECT 1 FROM documents d
               WHERE d.sender = a.code AND d.created_at >= $1 AND d.created_at < $2) AS sent,
       EXISTS (SELECT 1 FROM deliveries v
               WHERE v.recipient = a.code
                 AND v.delivered_at >= $1 AND v.delivered_at < $2) AS received,
       EXISTS (SELECT 1 FROM gateway_system_agencies g
               JOIN gateway_systems s ON s.system_id = g.system_id
               WHERE g.agency = a.code AND s.enabled) AS via_gateway
FROM agencies a
"""

# A returned document (02) was answered; a done one (06) is finished. Any
# other state past the DueDate is a status not reported in time. The
# conditions are the predicate of the index the overdue queries read
# (deliveries_overdue, migration 0020), written as it says them: PostgreSQL
# uses a partial index only for a query whose conditions say what its
# predicate says. A delivery's due_date is its document's.
ANSWERED_STATES = (StatusCode.RETURNED.value, StatusCode.DONE.value)
_OVERDUE_WHERE = f"""
WHERE v.due_date < $1
  AND v.due_date IS NOT NULL AND v.delivered_at IS NOT NULL AND NOT v.withdrawn
  AND coalesce(v.state, '') NOT IN ({", ".join(f"'{state}'" for state in ANSWERED_STATES)})
"""


async def agency_activity(
    conn: Connection, since: datetime, until: datetime
) -> list[asyncpg.Record]:
    """Every agency's ``code``, ``certificate_pem``, whether it ``sent`` and ``received``
    a document in ``[since, until)``, and whether an enabled gateway system acts for it
    (``via_gateway``)."""
    return await conn.fetch(_AGENCY_ACTIVITY, since, until)


async def count_overdue_deliveries(conn: Connection, today: date) -> int:
    """Deliveries of documents due before ``today`` whose state is none of ``ANSWERED_STATES``."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM deliveries v " + _OVERDUE_WHERE,  # noqa: S608 (constant)
        today,
    )
    return count


async def list_overdue_deliveries(
    conn: Connection, today: date, limit: int
) -> list[asyncpg.Record]:
    """The first ``limit`` overdue deliveries (``document_id``, ``sender``, ``recipient``,
    ``due_date``, ``state``), longest overdue first."""
    return await conn.fetch(
        "SELECT d.document_id, d.sender, v.recipient, v.due_date, v.state "
        "FROM deliveries v JOIN documents d ON d.id = v.document_pk "
        + _OVERDUE_WHERE
        + " ORDER BY v.due_date, d.document_id, v.recipient LIMIT $2",
        today,
        limit,
    )


# -- one replay at a time -----------------------------------------------------------------

# One replay at a time: two operators replaying overlapping sets would
# publish the same message twice, and both would wait on the same decisions.
# The first eight bytes of SHA-256("lienthong.replay"), as a signed 64-bit integer.
REPLAY_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"lienthong.replay").digest()[:8], "big", signed=True
)


async def try_replay_lock(conn: Connection) -> bool:
    """Take the replay's session lock; ``False`` when another replay holds it."""
    taken: bool = await conn.fetchval("SELECT pg_try_advisory_lock($1)", REPLAY_LOCK_KEY)
    return taken


async def release_replay_lock(conn: Connection) -> None:
    """Give back the lock :func:`try_replay_lock` took."""
    await conn.execute("SELECT pg_advisory_unlock($1)", REPLAY_LOCK_KEY)


async def ping(conn: Connection) -> None:
    """One round trip: raises if the database does not answer."""
    await conn.fetchval("SELECT 1")


# -- rates per agency: the token bucket (migration 0016) -------------------------

# One statement per message: refill the agency's bucket for the time since
# its last refill (up to its burst), then take a token if there is one. The
# row lock of the upsert serialises the workers on one agency's bucket; other
# agencies' rows are not touched. Returns a row when the token was taken.
_TAKE_FROM_BUCKET = """
WITH limits AS (
    SELECT code, coalesce(rate_per_s, $2::float8) AS rate, coalesce(burst, $3::int) AS burst
    FROM agencies WHERE code = $1
)
INSERT INTO quota_buckets AS b (agency, tokens, refilled_at)
SELECT code, burst - 1, clock_timestamp() FROM limits
ON CONFLICT (agency) DO UPDATE SET
    tokens = least(
        (SELECT burst FROM limits),
        b.tokens + (SELECT rate FROM limits)
            * extract(epoch FROM clock_timestamp() - b.refilled_at)::float8
    ) - 1,
    refilled_at = clock_timestamp()
WHERE least(
    (SELECT burst FROM limits),
    b.tokens + (SELECT rate FROM limits)
        * extract(epoch FROM clock_timestamp() - b.refilled_at)::float8
) >= 1
RETURNING tokens
"""


async def take_token(
    conn: Connection, code: AgencyCode | str, *, default_rate: float, default_burst: int
) -> bool:
    """Take one token from ``code``'s bucket; ``False`` when it is empty (over its rate).

    The agency's own rate and burst (``agencies.rate_per_s``, ``burst``) or
    the defaults. Only for a registered agency (an unknown code finds no
    token: ``False``).
    """
    row = await conn.fetchrow(_TAKE_FROM_BUCKET, str(code), default_rate, default_burst)
    return row is not None


async def set_agency_rate(
    conn: Connection, code: AgencyCode | str, *, rate_per_s: float | None, burst: int | None
) -> None:
    """Set (``None``: back to the defaults) the rate and burst of one agency."""
    done = await conn.execute(
        "UPDATE agencies SET rate_per_s = $2, burst = $3 WHERE code = $1",
        str(code),
        rate_per_s,
        burst,
    )
    if done == "UPDATE 0":
        raise AgencyNotFoundError(f"agency {code} is not registered")


async def agency_rate(conn: Connection, code: AgencyCode | str) -> tuple[float | None, int | None]:
    """The rate and burst set for one agency (``None``: the default)."""
    row = await conn.fetchrow("SELECT rate_per_s, burst FROM agencies WHERE code = $1", str(code))
    if row is None:
        raise AgencyNotFoundError(f"agency {code} is not registered")
    return row["rate_per_s"], row["burst"]
