"""The pass-through consumer: the same messages moved over the same queues, checking nothing.

Run as ``python -m exchange.benchmark.passthroughmark.passthrough``; its figures are the
broker's limit that the real workers are compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

from exchange.benchmark.config import BENCH_DOCUMENT_ID, BENCH_SENDER, PASSTHROUGH_READY_TEXT
from exchange.broker import headers as header


async def passthrough(amqp_url: str, prefetch: int) -> int:
    """Move the work queues to inbox and status queues as the worker would, checking nothing.

    Per message, in the worker's order: publish the package to the
    recipient's inbox, then a receipt to the sender, each confirmed, then
    ack. Runs until SIGTERM; returns how many messages it moved.
    """
    from exchange.broker.connection import ConfirmingPublisher, connect
    from exchange.broker.topology import DELIVER_EXCHANGE, STATUS_EXCHANGE, WORK_QUEUES

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    connection = await connect(amqp_url, name="lienthong-bench-passthrough")
    publisher = await ConfirmingPublisher.open(connection)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    queues = [await channel.get_queue(name, ensure=True) for name in WORK_QUEUES]
    tasks: set[asyncio.Task[None]] = set()
    moved = 0

    async def move(message: Any) -> None:
        nonlocal moved
        headers = message.headers or {}
        document_id = header.text(headers, BENCH_DOCUMENT_ID) or ""
        sender = header.text(headers, BENCH_SENDER) or ""
        recipient = message.routing_key or ""
        labels = {
            header.DOCUMENT_ID: document_id,
            header.RECIPIENT: recipient,
            header.SENDER: sender,
        }
        await publisher.publish(
            DELIVER_EXCHANGE,
            recipient,
            message.body,
            message_id=f"pt:{message.message_id}",
            headers=labels,
        )
        receipt = json.dumps({"outcome": "delivered", "message_id": message.message_id}).encode()
        await publisher.publish(
            STATUS_EXCHANGE,
            sender,
            receipt,
            message_id=f"pt:{message.message_id}:receipt",
            headers={**labels, header.KIND: "receipt"},
            content_type="application/json",
        )
        await message.ack()
        moved += 1

    def on_message(message: Any) -> Any:
        task = asyncio.create_task(move(message))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return None

    async def consume(message: Any) -> None:
        on_message(message)

    tags = [await queue.consume(consume) for queue in queues]
    print(PASSTHROUGH_READY_TEXT, flush=True)
    await stop.wait()
    for queue, tag in zip(queues, tags, strict=True):
        await queue.cancel(tag)
    if tasks:
        await asyncio.wait(set(tasks))
    await connection.close()
    print(f"stopped after {moved} messages", flush=True)
    return moved


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m exchange.benchmark.passthrough``: the pass-through consumer process."""
    parser = argparse.ArgumentParser(prog="python -m exchange.benchmark.passthrough")
    parser.add_argument("--prefetch", type=int, default=32)
    args = parser.parse_args(argv)
    from exchange import event_loop
    from exchange.settings import Settings

    # A process of its own: its settings are the environment the harness gave it.
    settings = Settings()
    event_loop.run(passthrough(settings.amqp_url, args.prefetch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
