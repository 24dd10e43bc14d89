"""An agency's client after a broker restart: it receives on by itself, each item once.

Issue 4: real agencies' applications read their inbox through
:class:`~exchange.client.AgencyClient`. Each application here holds an item
while RabbitMQ stops and starts again (``rabbitmqctl stop_app/start_app``),
acknowledges it once the broker is back, and must then be handed every
item published after the restart, each exactly once, with nothing left in
its inbox: no error reaches it, the held item's redelivery is dropped, and
no consumer left over from before the restart holds items it never sees.

Two applications: the plainest one (one endless ``inbox()``, no error
handling at all), and one that reads until idle and looks again (as
``lienthong inbox --idle`` run in a loop, or the crash test's agencies).

Marked ``disruptive``: it restarts the shared broker (and leaves it running).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

import aio_pika
import pytest

from exchange.agency import AgencyCode
from exchange.broker.connection import ConfirmingPublisher, connect
from exchange.broker.topology import DELIVER_EXCHANGE, inbox_queue
from exchange.client import CLIENT_PREFETCH, AgencyClient, InboxItem
from tests.crash.services import broker_kept_running, require, start_broker, stop_broker
from tests.exchange_fixtures import ExchangeUnderTest

pytestmark = [pytest.mark.services, pytest.mark.disruptive]

PLAIN = "000.00.00.G09"  # Bộ Nội vụ: one endless inbox()
DRAINING = "000.00.00.H26"  # UBND Thành phố Hà Nội: inbox(idle_timeout=...) again and again

# Items each application handles before the restart; the last one it holds.
BEFORE = 10
# Items published once the broker is back: more than a consumer's prefetch,
# so a consumer nobody reads could not hide them all.
AFTER = 3 * CLIENT_PREFETCH
# How long the broker stays down: more than one reconnection attempt (2 s).
OUTAGE_S = 3.0
DRAINING_IDLE_S = 0.5
# Generous: a broker restart on a loaded two-core machine takes seconds.
DEADLINE_S = 90.0
PUBLISH_RETRY_PAUSE_S = 0.5


@dataclass
class Application:
    """An agency's QLVB: counts each item it is handed, holds one until released."""

    client: AgencyClient
    hold: str  # message id of the item held across the restart
    release: asyncio.Event
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    seen: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    async def handle(self, item: InboxItem) -> None:
        self.seen[item.message_id] += 1
        if item.message_id == self.hold:
            self.holding.set()
            await self.release.wait()
        await item.ack()

    async def read_endlessly(self) -> None:
        """The plainest application: one endless stream, no error handling."""
        async for item in self.client.inbox():
            await self.handle(item)

    async def read_until_idle_again_and_again(self, stop: asyncio.Event) -> None:
        """Read until idle, then look again; errors are recorded (and must not happen)."""
        while not stop.is_set():
            try:
                async for item in self.client.inbox(idle_timeout=DRAINING_IDLE_S):
                    await self.handle(item)
            except Exception as error:
                self.errors.append(repr(error))
                await asyncio.sleep(DRAINING_IDLE_S)


async def deliver(exchange: ExchangeUnderTest, code: str, message_ids: list[str]) -> None:
    """Put items in an agency's inbox as the workers do, retrying until confirmed."""
    connection = await connect(exchange.settings.amqp_url, name="test-deliver")
    try:
        publisher = await ConfirmingPublisher.open(connection)
        deadline = time.monotonic() + DEADLINE_S
        for message_id in message_ids:
            while True:
                try:
                    await publisher.publish(
                        DELIVER_EXCHANGE,
                        code,
                        f"<item {message_id}/>".encode(),
                        message_id=message_id,
                    )
                    break
                except Exception:
                    # The broker is still starting: as any sender, try again.
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(PUBLISH_RETRY_PAUSE_S)
    finally:
        await connection.close()


async def consumers_of(exchange: ExchangeUnderTest, code: AgencyCode) -> int:
    """Consumers of an agency's inbox right now (the broker's answer to a passive declare)."""
    connection = await aio_pika.connect(exchange.settings.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(inbox_queue(code), passive=True)
        return int(queue.declaration_result.consumer_count or 0)
    finally:
        await connection.close()


async def test_client_receives_on_after_a_broker_restart_each_item_once(
    exchange: ExchangeUnderTest,
) -> None:
    require("rabbitmqctl")
    agencies = {code: await exchange.register(code) for code in (PLAIN, DRAINING)}
    before = {code: [f"{code}-before-{n}" for n in range(BEFORE)] for code in agencies}
    after = {code: [f"{code}-after-{n}" for n in range(AFTER)] for code in agencies}
    release = asyncio.Event()
    stop = asyncio.Event()
    apps = {
        code: Application(agency.client(), hold=before[code][-1], release=release)
        for code, agency in agencies.items()
    }
    for app in apps.values():
        await app.client.connect()
    tasks = {
        PLAIN: asyncio.create_task(apps[PLAIN].read_endlessly()),
        DRAINING: asyncio.create_task(apps[DRAINING].read_until_idle_again_and_again(stop)),
    }
    try:
        async with broker_kept_running():
            for code in agencies:
                await deliver(exchange, code, before[code])
            async with asyncio.timeout(DEADLINE_S):
                await asyncio.gather(*(app.holding.wait() for app in apps.values()))
            await stop_broker()
            # The outage itself: its length is the scenario, not a wait for a result.
            await asyncio.sleep(OUTAGE_S)
            await start_broker()
            # Each application finishes the item it held: its ack went with the
            # connection, and the broker will deliver that item again.
            release.set()
            for code in agencies:
                await deliver(exchange, code, after[code])

            async def all_seen() -> bool:
                return all(
                    set(before[code] + after[code]) <= set(apps[code].seen) for code in agencies
                )

            give_up = time.monotonic() + DEADLINE_S
            while not await all_seen() and time.monotonic() < give_up:
                for code, task in tasks.items():
                    if task.done():
                        pytest.fail(f"{code}'s application stopped: {task.exception()!r}")
                await asyncio.sleep(0.1)
            for code, app in apps.items():
                missing = [m for m in before[code] + after[code] if m not in app.seen]
                assert not missing, (
                    f"{code}'s application was never handed {len(missing)} items after the "
                    f"restart, e.g. {missing[:3]}"
                )
                twice = {m: n for m, n in app.seen.items() if n > 1}
                assert not twice, f"{code}'s application was handed items twice: {twice}"
                assert not app.errors, f"{code}'s application saw errors: {app.errors[:3]}"
            for code in agencies:
                assert not tasks[code].done(), tasks[code]
            # No consumer left over from before the restart: the endless
            # stream is the only consumer of its inbox, the other at most one.
            assert await consumers_of(exchange, agencies[PLAIN].code) == 1
            assert await consumers_of(exchange, agencies[DRAINING].code) <= 1
    finally:
        stop.set()
        tasks[PLAIN].cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for app in apps.values():
            with contextlib.suppress(Exception):
                await app.client.close()
    # Everything handed over was acknowledged: nothing waits or is held in the inboxes.
    for code in agencies:
        assert await exchange.queue_depth(inbox_queue(agencies[code].code)) == 0
