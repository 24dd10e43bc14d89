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
"""

from __future__ import annotations

from enum import Enum

import asyncpg
from aiormq.exceptions import AMQPError

from exchange.broker.connection import PublishError


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
    ((asyncpg.PostgresError, asyncpg.InterfaceError), Failure.DATABASE),
    ((PublishError, AMQPError, TimeoutError), Failure.BROKER),
    # The broker's socket errors arrive wrapped in AMQPError (above); a bare
    # OSError is asyncpg failing to (re)connect to the database.
    ((OSError,), Failure.DATABASE),
)


def classify(error: BaseException) -> Failure:
    """The transient failure an exception stands for."""
    for types, failure in TRANSIENT_FAILURES:
        if isinstance(error, types):
            return failure
    return Failure.INTERNAL
