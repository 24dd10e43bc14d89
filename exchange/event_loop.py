"""The event loop every lienthong process runs on: uvloop's where it installs.

uvloop (libuv) makes the loop's own work and, above all, socket writes
cheaper than the standard selector loop: a worker spends most of its CPU
writing frames to RabbitMQ and queries to PostgreSQL, not checking
packages (docs/bench.md). uvloop does not exist for Windows, where the
package installs without it (an environment marker in pyproject.toml) and
runs on the standard asyncio loop. Everything else is plain asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _uvloop_run() -> Callable[[Coroutine[Any, Any, Any]], Any] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.run


_RUN = _uvloop_run()

LOOP = "uvloop" if _RUN is not None else "asyncio"
"""Which event loop :func:`run` uses."""


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end on a new event loop, like :func:`asyncio.run`."""
    if _RUN is None:
        return asyncio.run(coroutine)
    result: T = _RUN(coroutine)
    return result
