"""Transient failures: what went wrong that is not the package's fault.

Every failure is one of two classes:

* permanent: the package is wrong. The checks raise a
  :class:`~exchange.reasons.Rejection` with a ``REJECTED_*`` reason; the
  message is rejected at once and its sender gets a receipt that says why.
* transient: the exchange could not finish (the database is down, a confirm
  timed out). The message is retried after
  a delay, a bounded number of times, then parked with a ``PARKED_*``
  reason and replayed by an operator once the cause is fixed.

:data:`TRANSIENT_FAILURES` is the one table that classifies exceptions.

A third kind of error is no failure of the message at all: the exchange's
own installation is broken (:class:`~exchange.installation.BrokenInstallation`,
its schema files missing). No retry can fix it and parking would blame the
sender, so it is never classified: :func:`is_fatal` says so, and a worker
that meets it gives the message back to the queue and stops.
"""

from __future__ import annotations

from enum import Enum

import asyncpg

from exchange.broker.connection import BrokerError, PublishError
from exchange.installation import BrokenInstallation


class Failure(Enum):
    """A transient failure, with a stable code and a sentence for the operator and the clerk."""

    DATABASE = (
        "the database could not be reached or refused the write",
        "Hệ thống trục liên thông tạm thời không lưu được văn bản; văn bản sẽ được xử lý lại.",
    )
    BROKER = (
        "the broker did not confirm a publication (timeout, nack, or a closed channel)",
        "Hệ thống trục liên thông tạm thời không chuyển được văn bản; văn bản sẽ được xử lý lại.",
    )
    POISON = (
        "the message was handed out repeatedly without being finished (a worker died on it)",
        "Văn bản làm lỗi hệ thống xử lý nhiều lần và đã được tạm giữ để kiểm tra.",
    )
    INTERNAL = (
        "an unexpected error in the exchange itself",
        "Hệ thống trục liên thông gặp lỗi khi xử lý văn bản; văn bản đã được tạm giữ để kiểm tra.",
    )

    def __init__(self, english: str, vietnamese: str) -> None:
        self.english = english
        self.vietnamese = vietnamese

    @property
    def code(self) -> str:
        """The stable code, as in metrics labels, parked rows and receipts."""
        return f"TRANSIENT_{self.name}"

    @property
    def parked_code(self) -> str:
        """The code a message parked after this failure carries."""
        return f"PARKED_{self.name}"

    @classmethod
    def from_code(cls, code: str) -> Failure | None:
        """The failure with this code (``TRANSIENT_X`` or ``PARKED_X``), or ``None``."""
        name = code.removeprefix("TRANSIENT_").removeprefix("PARKED_")
        return cls.__members__.get(name)


# The classification: the first entry whose exception type matches wins.
# Anything not listed is INTERNAL (a bug): retried too, since a retry costs
# little and some bugs are races, then parked for a person to look at.
TRANSIENT_FAILURES: tuple[tuple[tuple[type[BaseException], ...], Failure], ...] = (
    # TargetServerAttributeNotMatched: every host of the database URL answers
    # but none is the writable primary (a failover under way).
    (
        (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.TargetServerAttributeNotMatched),
        Failure.DATABASE,
    ),
    ((PublishError, BrokerError, TimeoutError), Failure.BROKER),
    # The broker's socket errors arrive wrapped in BrokerError (above); a bare
    # OSError is asyncpg failing to (re)connect to the database.
    ((OSError,), Failure.DATABASE),
)


# Errors no message is to blame for and no retry can fix: the worker stops.
FATAL_ERRORS: tuple[type[BaseException], ...] = (BrokenInstallation,)


def is_fatal(error: BaseException) -> bool:
    """Whether ``error`` means the worker cannot work at all (never retried, never parked)."""
    return isinstance(error, FATAL_ERRORS)


def classify(error: BaseException) -> Failure:
    """The transient failure an exception stands for; a fatal error is refused.

    Raises :class:`ValueError` for an error :func:`is_fatal` accepts, which
    must never send a message to a retry queue or the parked queue.
    """
    if is_fatal(error):
        raise ValueError(f"{type(error).__name__} is fatal, not transient: {error}")
    for types, failure in TRANSIENT_FAILURES:
        if isinstance(error, types):
            return failure
    return Failure.INTERNAL
