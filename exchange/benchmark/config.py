"""What a benchmark run is asked to do: its options, phases, sizes and the targets it is held to."""

from __future__ import annotations

from dataclasses import dataclass

# Message headers the benchmark adds to what it publishes, read only by the
# pass-through consumer (the real worker ignores them): the pass-through must
# route and label like the worker without parsing the package.
BENCH_DOCUMENT_ID = "x-bench-document-id"
BENCH_SENDER = "x-bench-sender"

SIZES = {"5k": 5 * 1024, "100k": 100 * 1024, "1m": 1024 * 1024}
READY_TEXT = "worker consuming lienthong.work"
PASSTHROUGH_READY_TEXT = "passthrough consuming"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
# Publishes awaiting their confirm at once, over every sender: enough to keep
# the broker busy, few enough that one slow confirm does not hide a stall.
PUBLISH_WINDOW = 256
# A phase that makes no progress for this long has failed (a worker died,
# a message was rejected and so never delivered).
STALL_TIMEOUT_S = 60.0
PROGRESS_EVERY_S = 2.0

# The targets on a two-core machine, for 5 KB RSA-2048 packages.
TARGET_DOCS_PER_S = {"5k": 1000.0, "100k": 400.0, "1m": 50.0}
TARGET_PASSTHROUGH_RATIO = 0.6
TARGET_P99_MS = 100.0


@dataclass(frozen=True)
class BenchConfig:
    """What to run: the workload, the workers and the offered load."""

    agencies: int = 24
    size: str = "5k"
    key_type: str = "rsa-2048"
    workers: int = 2
    messages: int = 5000  # sustained and pass-through runs
    latency_messages: int = 2000  # the fixed-load run
    recipients: int = 4  # messages per document (one per recipient)
    rate: float | None = None  # docs/s for the latency run; None: half the sustained
    prefetch: int | None = None  # the workers' prefetch; None: their default
    keep: bool = False  # leave the vhost, database and keys for inspection
    phases: tuple[str, ...] = ("verify", "passthrough", "sustained", "latency", "gateway")
    backlog: int = 100_000  # messages of the backlog run
    # The sustained run at ``rate`` for this many seconds instead of
    # ``messages`` as fast as confirmed (a long run, to watch memory).
    duration: float | None = None
    sample_every: float = 5.0  # seconds between two samples of each worker's VmRSS
    # The gateway phase (exchange/benchmark/gateway.py): packages through
    # sendEdoc as fast as answered, then at a fixed load for the round trip
    # to getEdoc (``rate``, or half the sendEdoc throughput).
    gateway_messages: int = 1000
    gateway_round_trips: int = 300
    # The fairness phase (exchange/benchmark/fairness.py): one agency
    # publishes ``flood`` messages as fast as confirmed while another
    # publishes ``flood_others`` at ``fair_rate`` docs/s.
    flood: int = 20_000
    flood_others: int = 100
    fair_rate: float = 10.0

    @property
    def sustained_messages(self) -> int:
        """Messages of the sustained run: ``messages``, or ``rate`` x ``duration``."""
        if self.duration is not None and self.rate is not None:
            return max(1, round(self.rate * self.duration))
        return self.messages


# In the order they run. The gateway phase uses the workers of the sustained
# and latency runs. The backlog comes last: it needs the work queue to
# itself with no worker running, and a drained queue before it.
PHASES = ("verify", "passthrough", "sustained", "latency", "gateway", "fairness", "backlog")
QUICK = {
    "agencies": 6,
    "messages": 300,
    "latency_messages": 150,
    "backlog": 1000,
    "gateway_messages": 100,
    "gateway_round_trips": 50,
    "flood": 1000,
    "flood_others": 50,
}
# The growth of a worker's memory is counted from its first sample after this
# share of a run's messages was done: imports, caches, pools and buffers fill
# up in the first messages, and that is not a leak.
WARM_UP_FRACTION = 0.1
