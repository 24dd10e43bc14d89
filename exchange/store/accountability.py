"""The queries of accountability: the seals of the chains' heads (migration 0014) and the
operator log (migration 0015).

Kept apart from :mod:`exchange.store.queries` (the exchange's own record)
because only the operators' tools and the sealing touch them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from exchange.store.db import Connection

# -- seals -----------------------------------------------------------------------

_SEAL_COLUMNS = (
    "number, sealed_at, convert_to(payload, 'UTF8') AS payload, signature, algorithm,"
    " certificate AS certificate_pem, tsa_token, tsa_time, sealed_by"
)


@contextlib.asynccontextmanager
async def seal_lock(conn: Connection, key: int, *, wait: bool) -> AsyncIterator[bool]:
    """Hold the session-level advisory lock ``key`` for the block; yields whether it is held.

    With ``wait`` it waits for the lock; without, it yields ``False`` at
    once when another session holds it.
    """
    if wait:
        await conn.execute("SELECT pg_advisory_lock($1)", key)
        held = True
    else:
        held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
    try:
        yield held
    finally:
        if held:
            await conn.execute("SELECT pg_advisory_unlock($1)", key)


async def current_heads(conn: Connection) -> dict[str, tuple[int, str]]:
    """Each chain's head (position, hash), by chain."""
    rows = await conn.fetch("SELECT chain, seq, hash FROM chain_heads")
    return {row["chain"]: (row["seq"], row["hash"]) for row in rows}


async def database_now(conn: Connection) -> datetime:
    """The database's clock."""
    now: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return now


async def last_seal(conn: Connection) -> Mapping[str, Any] | None:
    """The seal with the highest number (its number, payload bytes and signature)."""
    row = await conn.fetchrow(
        "SELECT number, convert_to(payload, 'UTF8') AS payload, signature"
        " FROM head_seals ORDER BY number DESC LIMIT 1"
    )
    if row is None:
        return None
    return {
        "number": row["number"],
        "payload": bytes(row["payload"]),
        "signature": row["signature"],
    }


async def last_seal_age(conn: Connection) -> timedelta | None:
    """How long ago the last seal was written, by the database's clock; ``None``: no seal."""
    age: timedelta | None = await conn.fetchval(
        "SELECT clock_timestamp() - max(sealed_at) FROM head_seals"
    )
    return age


async def insert_seal(
    conn: Connection,
    *,
    number: int,
    sealed_at: datetime,
    payload: bytes,
    signature: bytes,
    algorithm: str,
    certificate_pem: str,
    tsa_token: bytes | None,
    tsa_time: datetime | None,
) -> dict[str, Any]:
    """Record a seal; returns it as stored (the fields of ``exchange.seals.Seal``)."""
    row = await conn.fetchrow(
        "INSERT INTO head_seals"
        " (number, sealed_at, payload, signature, algorithm, certificate, tsa_token, tsa_time)"
        " VALUES ($1, $2, convert_from($3, 'UTF8'), $4, $5, $6, $7, $8)"
        " RETURNING number, sealed_at, convert_to(payload, 'UTF8') AS payload, signature,"
        " algorithm, certificate AS certificate_pem, tsa_token, tsa_time, sealed_by",
        number,
        sealed_at,
        payload,
        signature,
        algorithm,
        certificate_pem,
        tsa_token,
        tsa_time,
    )
    assert row is not None
    return _seal_fields(row)


async def seals(conn: Connection) -> list[dict[str, Any]]:
    """Every seal in number order (the fields of ``exchange.seals.Seal``)."""
    rows = await conn.fetch(f"SELECT {_SEAL_COLUMNS} FROM head_seals ORDER BY number")  # noqa: S608
    return [_seal_fields(row) for row in rows]


def _seal_fields(row: asyncpg.Record) -> dict[str, Any]:
    fields = dict(row)
    fields["payload"] = bytes(fields["payload"])
    fields["signature"] = bytes(fields["signature"])
    if fields["tsa_token"] is not None:
        fields["tsa_token"] = bytes(fields["tsa_token"])
    return fields


# -- the operator log --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OperatorAction:
    """One row of ``operator_actions``."""

    pk: int
    at: datetime
    db_role: str
    client_addr: str | None
    action: str
    arguments: dict[str, Any]
    outcome: str
    chain_seq: int


async def record_action(
    conn: Connection, action: str, arguments: Mapping[str, Any], outcome: str
) -> OperatorAction:
    """Append one operator action; the database fills in who and when (session_user)."""
    row = await conn.fetchrow(
        "INSERT INTO operator_actions (db_role, action, arguments, outcome)"
        " VALUES ('', $1, $2::jsonb, $3)"
        " RETURNING id, at, db_role, host(client_addr) AS client_addr, action,"
        " arguments::text AS arguments, outcome, chain_seq",
        action,
        json.dumps(dict(arguments), ensure_ascii=False, sort_keys=True, default=str),
        outcome,
    )
    assert row is not None
    return _action(row)


async def operator_actions(conn: Connection, *, limit: int | None = None) -> list[OperatorAction]:
    """The operator log, newest first."""
    rows = await conn.fetch(
        "SELECT id, at, db_role, host(client_addr) AS client_addr, action,"
        " arguments::text AS arguments, outcome, chain_seq"
        " FROM operator_actions ORDER BY id DESC LIMIT $1",
        limit,
    )
    return [_action(row) for row in rows]


def _action(row: asyncpg.Record) -> OperatorAction:
    return OperatorAction(
        pk=row["id"],
        at=row["at"],
        db_role=row["db_role"],
        client_addr=row["client_addr"],
        action=row["action"],
        arguments=json.loads(row["arguments"]),
        outcome=row["outcome"],
        chain_seq=row["chain_seq"],
    )


__all__ = [
    "OperatorAction",
    "current_heads",
    "database_now",
    "insert_seal",
    "last_seal",
    "last_seal_age",
    "operator_actions",
    "record_action",
    "seal_lock",
    "seals",
]
