"""``lienthong bench`` on a one-node and on a three-node RabbitMQ cluster of this machine.

Usage::

    .venv/bin/python bench/cluster.py [--nodes 1,3] [--json] [-- BENCH OPTIONS...]

For each node count it starts RabbitMQ nodes of its own (``tests/cluster.py``:
their own node names, ports, data folders and cookie; the machine's node is
not touched), joins them, runs ``lienthong bench`` with a
``--amqp-url`` naming every node and ``--rabbitmq-api-url`` of the first,
and tears the nodes down. The database is the machine's PostgreSQL
(``LIENTHONG_DATABASE_URL``), as for any bench run. The options after
``--`` go to ``lienthong bench`` (default: ``--phases sustained,latency
--messages 3000 --latency-messages 1000``).

It prints, for each node count, the sustained throughput, the CPU each
document cost (the machine's, and RabbitMQ's share) and the latency at
half load, then the ratio of the three-node figures to the one-node ones.
Both runs use the same nodes (plain AMQP on loopback, the management
plugin), so the difference is the cluster's: quorum queues replicated on
three nodes instead of one, on the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster import RabbitCluster, installed  # noqa: E402

DEFAULT_BENCH = [
    *("--phases", "sustained,latency"),
    *("--messages", "3000", "--latency-messages", "1000"),
]


async def bench_on(nodes: int, bench_args: list[str]) -> dict[str, Any]:
    """Start ``nodes`` RabbitMQ nodes, run ``lienthong bench --json`` on them, stop them."""
    cluster = RabbitCluster(Path(tempfile.mkdtemp(prefix=f"lienthong-bench-{nodes}n-")), nodes)
    try:
        print(f"starting {nodes} RabbitMQ node(s)...", file=sys.stderr, flush=True)
        await cluster.start()
        command = [
            sys.executable,
            "-m",
            "exchange",
            "bench",
            "--amqp-url",
            cluster.amqp_url(),
            "--rabbitmq-api-url",
            cluster.api_url(),
            *bench_args,
            "--json",
        ]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        # The nodes' own CPU, exactly (the bench's RabbitMQ figure counts every
        # beam.smp of the machine, the machine's own node included).
        cpu_before = cluster.cpu_seconds()
        load_before = os.getloadavg()[0]
        process = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=asyncio.subprocess.PIPE, cwd=REPO
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"lienthong bench on {nodes} node(s) failed ({process.returncode})")
        result: dict[str, Any] = json.loads(output)
        result["rabbitmq_nodes"] = nodes
        messages = result.get("sustained_messages", 0) + result.get("latency_ms", {}).get(
            "messages", 0
        )
        result["cluster_cpu_ms_per_message"] = round(
            1000 * (cluster.cpu_seconds() - cpu_before) / max(messages, 1), 2
        )
        result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        return result
    finally:
        await cluster.close()


def line(result: dict[str, Any]) -> str:
    """One node count's figures."""
    cpu = result.get("cpu_ms_per_doc", {})
    latency = result.get("latency_ms", {})
    return (
        f"{result['rabbitmq_nodes']} node(s): {result.get('throughput_docs_per_s', 0):.0f} docs/s "
        f"sustained; CPU per document {cpu.get('machine', 0):.1f} ms (RabbitMQ "
        f"{cpu.get('rabbitmq', 0):.1f} ms, PostgreSQL {cpu.get('postgresql', 0):.1f} ms, "
        f"workers {cpu.get('workers', 0):.1f} ms; the cluster's nodes alone "
        f"{result['cluster_cpu_ms_per_message']:.1f} ms a message over the run); at "
        f"{latency.get('offered_docs_per_s', 0):.0f} docs/s offered: p50 "
        f"{latency.get('p50', 0):.0f} ms, p99 {latency.get('p99', 0):.0f} ms; load average "
        f"{result['load_average'][0]:.1f} then {result['load_average'][1]:.1f}"
    )


def main() -> int:
    """Run the bench on each node count and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", default="1,3", help="node counts to run on (default 1,3)")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    parser.add_argument("bench", nargs=argparse.REMAINDER, help="-- then lienthong bench options")
    args = parser.parse_args()
    if not installed():
        print("bench/cluster.py: rabbitmq-server is not installed", file=sys.stderr)
        return 2
    bench_args = [a for a in args.bench if a != "--"] or DEFAULT_BENCH
    results = [asyncio.run(bench_on(int(n), bench_args)) for n in args.nodes.split(",")]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        print(line(result))
    if len(results) == 2:
        one, many = results
        print(
            f"{many['rabbitmq_nodes']} nodes / {one['rabbitmq_nodes']}: throughput "
            f"{many['throughput_docs_per_s'] / one['throughput_docs_per_s']:.2f}, CPU per document "
            f"{many['cpu_ms_per_doc']['machine'] / one['cpu_ms_per_doc']['machine']:.2f}, "
            f"the nodes' CPU per message "
            f"{many['cluster_cpu_ms_per_message'] / one['cluster_cpu_ms_per_message']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
