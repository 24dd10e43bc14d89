"""The event loop every lienthong process runs on: uvloop's.

uvloop (libuv) makes the loop's own work and, above all, socket writes
cheaper than the standard selector loop: a worker spends most of its CPU
writing frames to RabbitMQ and queries to PostgreSQL, not checking
packages (docs/bench.md). Everything else is plain asyncio.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end on a new uvloop event loop, like :func:`asyncio.run`."""
    return uvloop.run(coroutine)
