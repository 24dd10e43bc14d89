"""The gateway phase of ``lienthong bench``: packages in by ``sendEdoc``, out by ``getEdoc``.

Two agencies of the run connect through a ``lienthong gateway`` process
(its own broker user, one system each), with the same workers as the AMQP
phases behind it. The sending system posts signed packages (the size and
key of the run) to ``sendEdoc``, :data:`SEND_CONCURRENCY` at a time, as
fast as the gateway answers; the receiving system polls
``getReceivedEdocList`` without pause, fetches each item with ``getEdoc``
and confirms it (``updateStatus done``). Two figures, next to the AMQP
path's of the same run:

* **throughput**: packages over the time from the first ``sendEdoc`` to its
  last reply (what the gateway accepts: checks, record, publish), and to the
  last ``getEdoc`` (through the whole exchange and back out of the
  recipient's mailbox);
* **round trip**: more packages at a fixed offered load (by default half
  the ``sendEdoc`` throughput), each timed from its ``sendEdoc`` to the
  ``getEdoc`` that returned it (percentiles).

The HTTP client is :class:`exchange.gateway.sdk.VxpClient`, in this
process's threads, a new connection per request (the SDK keeps them alive):
the load generator costs the machine more than the SDK's would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import socket
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from exchange.benchmark.config import STALL_TIMEOUT_S, START_TIMEOUT_S
from exchange.benchmark.processes import (
    Child,
    child_env,
    lienthong_command,
    percentile,
    start_children,
    stop_children,
)
from exchange.gateway.sdk import VxpClient
from exchange.settings import Settings

# sendEdoc requests in flight at once: several clerks' systems sending
# together, and enough to keep the gateway's checks busy on every core.
SEND_CONCURRENCY = 6
# The receiving system's pause between two empty lists.
POLL_PAUSE_S = 0.01
# A line the gateway logs once its mover consumes an agency's queues.
GATEWAY_READY_TEXT = "into the mailbox"
SENDER_SYSTEM = "BENCH-SEND"
RECIPIENT_SYSTEM = "BENCH-RECEIVE"


def gateway_user(token: str) -> str:
    """The run's gateway broker user (``b<token>-``: ``lienthong bench --drop`` deletes it)."""
    return f"b{token}-gateway"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Mailbox:
    """The receiving system: lists, fetches and confirms without pause; when each body came."""

    def __init__(self, client: VxpClient) -> None:
        self.client = client
        self.fetched: dict[str, float] = {}  # SHA-256 of the body: perf_counter at getEdoc
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    def start(self) -> None:
        """Start polling."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop polling (after the current call)."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            items = await self.client.received("edoc")
            for item in items:
                doc_id = str(item["docId"])
                body = await self.client.get_edoc(doc_id)
                self.fetched[hashlib.sha256(body).hexdigest()] = time.perf_counter()
                self.changed.set()
                await self.client.update_status(doc_id, "done")
            if not items:
                await asyncio.sleep(POLL_PAUSE_S)

    async def wait_for(self, keys: set[str], what: str) -> None:
        """Until every body in ``keys`` was fetched; fails after STALL_TIMEOUT_S without one."""
        while not keys <= self.fetched.keys():
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), STALL_TIMEOUT_S)
            except TimeoutError:
                missing = len(keys - self.fetched.keys())
                raise RuntimeError(
                    f"{what}: {missing} packages not in the recipient's mailbox after "
                    f"{STALL_TIMEOUT_S:.0f} s without progress"
                ) from None


async def _send_all(
    client: VxpClient, sender: str, bodies: Sequence[bytes], *, rate: float | None
) -> dict[str, float]:
    """``sendEdoc`` each body (at ``rate`` per second, or as fast as answered); start times."""
    started: dict[str, float] = {}
    window = asyncio.Semaphore(SEND_CONCURRENCY)
    origin = time.perf_counter()

    async def one(index: int, body: bytes) -> None:
        if rate is not None:
            await asyncio.sleep(max(0.0, origin + index / rate - time.perf_counter()))
        async with window:
            started[hashlib.sha256(body).hexdigest()] = time.perf_counter()
            await client.send_edoc(sender, body)

    await asyncio.gather(*(one(index, body) for index, body in enumerate(bodies)))
    return started


async def _healthy(url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (our loopback URL)
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the bench's gateway did not answer {url}")
        await asyncio.sleep(0.1)


async def register_systems(settings: Settings, sender: str, recipient: str) -> dict[str, str]:
    """The two systems of the phase in the run's database; their secrets."""
    from exchange.agency import AgencyCode
    from exchange.store import gateway as store
    from exchange.store.db import connect

    found = {SENDER_SYSTEM: secrets.token_urlsafe(24), RECIPIENT_SYSTEM: secrets.token_urlsafe(24)}
    conn = await connect(settings)
    try:
        for system, agency in ((SENDER_SYSTEM, sender), (RECIPIENT_SYSTEM, recipient)):
            await store.add_system(conn, system, found[system], [AgencyCode.parse(agency)])
    finally:
        await conn.close()
    return found


async def run_gateway_phase(
    settings: Settings,
    gateway_amqp_url: str,
    keys_dir: Path,
    log_dir: Path,
    sender: str,
    recipient: str,
    throughput_bodies: Sequence[bytes],
    round_trip_bodies: Sequence[bytes],
    rate: float | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Run the phase against the running workers (see the module); its figures."""
    found = await register_systems(settings, sender, recipient)
    port = _free_port()
    env = child_env(settings.model_copy(update={"amqp_url": gateway_amqp_url}))
    command = lienthong_command(
        "gateway", "--port", str(port), "--keys", str(keys_dir), "--metrics-port", "0"
    )
    children: list[Child] = await start_children([command], env, log_dir, GATEWAY_READY_TEXT)
    mailbox: Mailbox | None = None
    try:
        await _healthy(f"http://127.0.0.1:{port}/healthz")
        endpoint = f"http://127.0.0.1:{port}{settings.gateway_base_path}"
        sending = VxpClient(endpoint, SENDER_SYSTEM, found[SENDER_SYSTEM])
        mailbox = Mailbox(VxpClient(endpoint, RECIPIENT_SYSTEM, found[RECIPIENT_SYSTEM]))
        mailbox.start()
        (gateway,) = children

        progress(f"gateway: {len(throughput_bodies)} packages through sendEdoc")
        gateway.mark()
        first = time.perf_counter()
        started = await _send_all(sending, sender, throughput_bodies, rate=None)
        replied = time.perf_counter()
        await mailbox.wait_for(set(started), "gateway throughput")
        fetched = max(mailbox.fetched[key] for key in started)
        send_rate = len(throughput_bodies) / (replied - first)
        figures: dict[str, Any] = {
            "messages": len(throughput_bodies),
            "send_concurrency": SEND_CONCURRENCY,
            "send_edoc_docs_per_s": round(send_rate, 1),
            "through_docs_per_s": round(len(throughput_bodies) / (fetched - first), 1),
            "gateway_process": gateway.figures(replied - first),
        }
        progress(
            f"gateway: sendEdoc {send_rate:.0f} docs/s, to getEdoc "
            f"{figures['through_docs_per_s']:.0f} docs/s"
        )

        offered = rate or send_rate / 2
        progress(f"gateway round trip: {len(round_trip_bodies)} packages at {offered:.0f} docs/s")
        started = await _send_all(sending, sender, round_trip_bodies, rate=offered)
        await mailbox.wait_for(set(started), "gateway round trip")
        trips = sorted(1000 * (mailbox.fetched[key] - at) for key, at in started.items())
        figures["round_trip_ms"] = {
            "messages": len(trips),
            "offered_docs_per_s": round(offered, 1),
            "p50": round(percentile(trips, 0.50), 1),
            "p95": round(percentile(trips, 0.95), 1),
            "p99": round(percentile(trips, 0.99), 1),
            "max": round(trips[-1], 1),
        }
        return figures
    finally:
        if mailbox is not None:
            with contextlib.suppress(Exception):
                await mailbox.stop()
        await stop_children(children)
