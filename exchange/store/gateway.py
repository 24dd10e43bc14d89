"""The gateway's rows (migration 0009): systems, their agencies, submissions, mailboxes.

Every query of ``lienthong gateway`` and ``lienthong system``, each an async
function taking a connection (the caller owns the transaction), and the rows
as frozen values. None of these rows is chained: they are state, see the
migration.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from exchange.agency import AgencyCode
from exchange.store.db import Connection

# Mailbox states (updateStatus sets the last three).
PENDING = "pending"
FETCHED = "fetched"
PROCESSING = "processing"
DONE = "done"
FAIL = "fail"
CONFIRMATIONS = (DONE, FAIL, PROCESSING)


class SystemExistsError(ValueError):
    """A system with this id is registered already."""


class UnknownAgencyError(ValueError):
    """A system was to act for an agency the directory does not hold."""


@dataclass(frozen=True, slots=True)
class GatewaySystem:
    """A system registered on the gateway, and the agencies it acts for."""

    system_id: str
    enabled: bool
    agencies: tuple[AgencyCode, ...]
    created_at: datetime
    secret_set_at: datetime
    last_seen_at: datetime | None
    # The HMAC key; never printed, never logged.
    secret: str = field(default="", repr=False)

    @classmethod
    def from_row(cls, row: asyncpg.Record, *, with_secret: bool = False) -> GatewaySystem:
        """Build from a row of ``gateway_systems`` with its ``agencies`` aggregated."""
        return cls(
            system_id=row["system_id"],
            enabled=row["enabled"],
            agencies=tuple(sorted(AgencyCode.parse(code) for code in row["agencies"] if code)),
            created_at=row["created_at"],
            secret_set_at=row["secret_set_at"],
            last_seen_at=row["last_seen_at"],
            secret=row["secret"] if with_secret else "",
        )


_SYSTEM_SELECT = """
SELECT s.system_id, s.secret, s.enabled, s.created_at, s.secret_set_at, s.last_seen_at,
       coalesce(array_agg(a.agency ORDER BY a.agency)
                FILTER (WHERE a.agency IS NOT NULL), '{}') AS agencies
FROM gateway_systems s
LEFT JOIN gateway_system_agencies a ON a.system_id = s.system_id
"""


async def add_system(
    conn: Connection, system_id: str, secret: str, agencies: Sequence[AgencyCode]
) -> GatewaySystem:
    """Register a system acting for ``agencies`` (each registered); one transaction."""
    async with conn.transaction():
        known = {
            row["code"]
            for row in await conn.fetch(
                "SELECT code FROM agencies WHERE code = ANY($1::text[])", [str(a) for a in agencies]
            )
        }
        missing = [str(a) for a in agencies if str(a) not in known]
        if missing:
            raise UnknownAgencyError(", ".join(missing))
        inserted = await conn.fetchval(
            "INSERT INTO gateway_systems (system_id, secret) VALUES ($1, $2)"
            " ON CONFLICT (system_id) DO NOTHING RETURNING system_id",
            system_id,
            secret,
        )
        if inserted is None:
            raise SystemExistsError(system_id)
        await conn.executemany(
            "INSERT INTO gateway_system_agencies (system_id, agency) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING",
            [(system_id, str(a)) for a in agencies],
        )
    system = await get_system(conn, system_id)
    assert system is not None
    return system


async def get_system(conn: Connection, system_id: str) -> GatewaySystem | None:
    """The system with this id, its secret included, or ``None``."""
    row = await conn.fetchrow(
        _SYSTEM_SELECT + " WHERE s.system_id = $1 GROUP BY s.system_id", system_id
    )
    return None if row is None else GatewaySystem.from_row(row, with_secret=True)


async def list_systems(conn: Connection) -> list[GatewaySystem]:
    """Every registered system, by id, without secrets."""
    rows = await conn.fetch(_SYSTEM_SELECT + " GROUP BY s.system_id ORDER BY s.system_id")
    return [GatewaySystem.from_row(row) for row in rows]


async def set_enabled(conn: Connection, system_id: str, enabled: bool) -> bool:
    """Enable or disable a system; ``False`` when there is no such system."""
    result = await conn.execute(
        "UPDATE gateway_systems SET enabled = $2 WHERE system_id = $1", system_id, enabled
    )
    return result != "UPDATE 0"


async def set_secret(conn: Connection, system_id: str, secret: str) -> bool:
    """Replace a system's secret; ``False`` when there is no such system."""
    result = await conn.execute(
        "UPDATE gateway_systems SET secret = $2, secret_set_at = now() WHERE system_id = $1",
        system_id,
        secret,
    )
    return result != "UPDATE 0"


async def touch_system(conn: Connection, system_id: str) -> None:
    """Note an authenticated request of the system (at most one write a minute)."""
    await conn.execute(
        # One write a minute per system, not one per request.
        "UPDATE gateway_systems SET last_seen_at = now() WHERE system_id = $1"
        " AND (last_seen_at IS NULL OR last_seen_at < now() - interval '1 minute')",
        system_id,
    )


async def served_agencies(conn: Connection) -> list[AgencyCode]:
    """The agencies some enabled system acts for: whose queues the gateway empties."""
    rows = await conn.fetch(
        "SELECT DISTINCT a.agency FROM gateway_system_agencies a"
        " JOIN gateway_systems s ON s.system_id = a.system_id WHERE s.enabled"
    )
    return sorted(AgencyCode.parse(row["agency"]) for row in rows)


# -- submissions ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submission:
    """A package the gateway accepted from a system and published, one message per recipient."""

    doc_id: str
    system_id: str
    sender: AgencyCode
    message_type: str
    document_id: str
    sha256: str
    signed_by_gateway: bool
    recipients: tuple[AgencyCode, ...]


def submission_message_id(doc_id: str, recipient: AgencyCode | str) -> str:
    """The AMQP message id of a submission's message to one recipient."""
    return f"{doc_id}.{recipient}"


async def add_submission(conn: Connection, submission: Submission) -> None:
    """Record a submission before its messages are published."""
    await conn.execute(
        "INSERT INTO gateway_submissions (doc_id, system_id, sender, message_type, document_id,"
        " sha256, signed_by_gateway, recipients) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        submission.doc_id,
        submission.system_id,
        str(submission.sender),
        submission.message_type,
        submission.document_id,
        submission.sha256,
        submission.signed_by_gateway,
        [str(r) for r in submission.recipients],
    )


async def forget_submission(conn: Connection, doc_id: str) -> None:
    """Remove a submission none of whose messages could be published."""
    await conn.execute("DELETE FROM gateway_submissions WHERE doc_id = $1", doc_id)


@dataclass(frozen=True, slots=True)
class SentLine:
    """One recipient of a submission, as the record sees it now."""

    doc_id: str
    sender: str
    recipient: str
    message_type: str
    submitted_at: datetime
    # The worker's decision: None while it has not decided.
    outcome: str | None
    reason_code: str | None
    reason_detail: str | None
    subject: str | None
    code_number: str | None
    code_notation: str | None
    delivered_at: datetime | None
    latest_code: str | None
    latest_at: datetime | None
    # The recipient's docId, when the recipient is behind a gateway too.
    receiver_doc_id: str | None


async def sent_lines(
    conn: Connection,
    system_id: str,
    message_type: str,
    doc_id: str | None,
    limit: int,
) -> list[SentLine]:
    """The system's submissions (one, with ``doc_id``), newest first, one line per recipient."""
    rows = await conn.fetch(
        """
        SELECT s.doc_id, s.sender, r.recipient, s.message_type, s.submitted_at,
               st.outcome, st.reason_code, st.reason_detail,
               doc.subject, doc.code_number, doc.code_notation,
               d.delivered_at, latest.code AS latest_code, latest.at AS latest_at,
               mb.doc_id AS receiver_doc_id
        FROM gateway_submissions s
        CROSS JOIN LATERAL unnest(s.recipients) AS r(recipient)
        LEFT JOIN LATERAL (
            SELECT m.id FROM messages m
            WHERE m.amqp_message_id = s.doc_id || '.' || r.recipient
            ORDER BY m.id DESC LIMIT 1
        ) m ON true
        LEFT JOIN message_state st ON st.message_pk = m.id
        LEFT JOIN documents doc ON doc.id = st.document_pk AND s.message_type = 'edoc'
        LEFT JOIN deliveries d ON d.document_pk = doc.id AND d.recipient = r.recipient
        LEFT JOIN LATERAL (
            SELECT e.code, e.at FROM events e
            WHERE e.delivery_pk = d.id AND e.kind = 'status'
            ORDER BY e.at DESC, e.id DESC LIMIT 1
        ) latest ON true
        LEFT JOIN gateway_mailbox mb
               ON mb.message_id = 'lienthong:' || m.id AND mb.agency = r.recipient
        WHERE s.system_id = $1 AND s.message_type = $2 AND ($3::text IS NULL OR s.doc_id = $3)
        ORDER BY s.submitted_at DESC, s.doc_id, r.recipient
        LIMIT $4
        """,
        system_id,
        message_type,
        doc_id,
        limit,
    )
    return [SentLine(**dict(row)) for row in rows]


# -- mailboxes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewMail:
    """A message taken from an agency's inbox or status queue."""

    doc_id: str
    queue: str
    message_id: str
    agency: AgencyCode
    message_type: str
    kind: str
    sender: str | None
    recipient: str | None
    document_id: str | None
    content_type: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class MailItem:
    """A mailbox item as a system sees it (the body only when fetched)."""

    doc_id: str
    agency: str
    message_type: str
    kind: str
    sender: str | None
    recipient: str | None
    document_id: str | None
    state: str
    received_at: datetime
    updated_at: datetime
    body: bytes | None = None


_ITEM_COLUMNS = (
    "doc_id, agency, message_type, kind, sender, recipient, document_id, state,"
    " received_at, updated_at"
)


async def add_mail(conn: Connection, mail: NewMail) -> bool:
    """Put a message into its agency's mailbox; ``False`` when it is there already."""
    inserted = await conn.fetchval(
        "INSERT INTO gateway_mailbox (doc_id, queue, message_id, agency, message_type, kind,"
        " sender, recipient, document_id, content_type, body)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        # The key (queue, message_id) is claimed in mailbox_keys (0018).
        " ON CONFLICT DO NOTHING RETURNING id",
        mail.doc_id,
        mail.queue,
        mail.message_id,
        str(mail.agency),
        mail.message_type,
        mail.kind,
        mail.sender,
        mail.recipient,
        mail.document_id,
        mail.content_type,
        mail.body,
    )
    return inserted is not None


async def lease_mail(
    conn: Connection,
    agencies: Iterable[AgencyCode],
    message_type: str,
    *,
    lease_s: float,
    limit: int,
) -> list[MailItem]:
    """What waits for ``agencies``, oldest first, kept off other pollers' lists for ``lease_s``.

    Two pollers listing at once never get the same item (``SKIP LOCKED``);
    an item listed and not confirmed (``done``) is listed again once its
    lease ends.
    """
    rows = await conn.fetch(
        f"""
        UPDATE gateway_mailbox SET leased_until = now() + make_interval(secs => $3)
        WHERE id IN (
            SELECT id FROM gateway_mailbox
            WHERE agency = ANY($1::text[]) AND message_type = $2 AND state <> 'done'
              AND (leased_until IS NULL OR leased_until <= now())
            ORDER BY id
            LIMIT $4
            FOR UPDATE SKIP LOCKED
        )
        RETURNING id, {_ITEM_COLUMNS}
        """,  # noqa: S608 (constant column list)
        [str(a) for a in agencies],
        message_type,
        lease_s,
        limit,
    )
    return [
        MailItem(**{k: v for k, v in row.items() if k != "id"})
        for row in sorted(rows, key=lambda row: row["id"])
    ]


async def fetch_mail(
    conn: Connection, doc_id: str, agencies: Iterable[AgencyCode]
) -> MailItem | None:
    """An item of ``agencies``' mailboxes with its body, marked fetched; ``None`` if none."""
    row = await conn.fetchrow(
        f"""
        UPDATE gateway_mailbox
        SET state = CASE WHEN state = 'pending' THEN 'fetched' ELSE state END,
            fetched_at = coalesce(fetched_at, now()), updated_at = now()
        WHERE doc_id = $1 AND agency = ANY($2::text[])
        RETURNING {_ITEM_COLUMNS}, body
        """,  # noqa: S608 (constant column list)
        doc_id,
        [str(a) for a in agencies],
    )
    return None if row is None else MailItem(**dict(row))


async def confirm_mail(
    conn: Connection, doc_id: str, agencies: Iterable[AgencyCode], state: str
) -> bool:
    """Record a system's acknowledgement of an item; ``False`` when it has no such item.

    ``done`` takes the item off the lists for good; ``fail`` and
    ``processing`` are recorded, and the item stays.
    """
    assert state in CONFIRMATIONS
    result = await conn.execute(
        """
        UPDATE gateway_mailbox
        SET state = $3, updated_at = now(),
            confirmed_at = CASE WHEN $3 = 'done' THEN now() ELSE confirmed_at END
        WHERE doc_id = $1 AND agency = ANY($2::text[])
        """,
        doc_id,
        [str(a) for a in agencies],
        state,
    )
    return result != "UPDATE 0"


async def mailbox_depths(conn: Connection) -> dict[tuple[str, str], int]:
    """Items not confirmed, by agency and message type."""
    rows = await conn.fetch(
        "SELECT agency, message_type, count(*) AS n FROM gateway_mailbox"
        " WHERE state <> 'done' GROUP BY agency, message_type"
    )
    return {(row["agency"], row["message_type"]): row["n"] for row in rows}


async def oldest_unconfirmed(conn: Connection) -> datetime | None:
    """When the oldest item not confirmed (``done``) came into a mailbox; ``None`` if none."""
    oldest: datetime | None = await conn.fetchval(
        "SELECT min(received_at) FROM gateway_mailbox WHERE state <> 'done'"
    )
    return oldest


async def least_recent_contact(conn: Connection) -> datetime | None:
    """When the enabled system heard from least recently last called (or was registered).

    ``None`` without enabled systems. A system that never called counts from
    its registration, so a system registered and never connected is noticed.
    """
    moment: datetime | None = await conn.fetchval(
        "SELECT min(coalesce(last_seen_at, created_at)) FROM gateway_systems WHERE enabled"
    )
    return moment
