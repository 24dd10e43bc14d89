"""Transactions PostgreSQL aborted for a conflict are run again; other failures are not."""

from __future__ import annotations

import asyncpg
import pytest

from exchange.store import db
from exchange.store.db import again_on_conflict, is_conflict


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "CONFLICT_PAUSE_S", 0.0)


def deadlock() -> asyncpg.exceptions.DeadlockDetectedError:
    return asyncpg.exceptions.DeadlockDetectedError("deadlock detected")


async def test_a_deadlock_victim_is_run_again_until_it_goes_through() -> None:
    calls = []

    async def run() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise deadlock()
        return "written"

    assert await again_on_conflict(run) == "written"
    assert len(calls) == 3


async def test_the_last_conflict_is_raised_after_the_attempts() -> None:
    calls = []

    async def run() -> None:
        calls.append(1)
        raise asyncpg.exceptions.SerializationError("could not serialize access")

    with pytest.raises(asyncpg.exceptions.SerializationError):
        await again_on_conflict(run, attempts=3)
    assert len(calls) == 3


async def test_any_other_failure_is_raised_at_once() -> None:
    calls = []

    async def run() -> None:
        calls.append(1)
        raise asyncpg.exceptions.UniqueViolationError("duplicate key")

    with pytest.raises(asyncpg.exceptions.UniqueViolationError):
        await again_on_conflict(run)
    assert len(calls) == 1


def test_only_deadlocks_and_serialization_failures_are_conflicts() -> None:
    assert is_conflict(deadlock())
    assert is_conflict(asyncpg.exceptions.SerializationError("x"))
    assert not is_conflict(asyncpg.exceptions.UniqueViolationError("x"))
    assert not is_conflict(ConnectionResetError())
