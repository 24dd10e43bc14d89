"""Every Prometheus metric of the exchange, declared once.

Labels stay bounded: kinds, outcomes, reason codes, stages and retry tiers
are small fixed sets; never an agency code or a document id (there are
thousands of agencies and millions of documents).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

# Per-stage costs run from tens of microseconds (reading a status) to tens of
# milliseconds (verifying a large package on a loaded machine).
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# End-to-end latency, publish to confirmed delivery. The edges include the
# alert thresholds (deploy/prometheus/alerts.yml): 100 ms is the latency
# target, 1 s and 10 s the warning and critical levels, and retries take
# from 1 s to 10 minutes.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 600.0)

MESSAGES = Counter(
    "lienthong_messages_total",
    "Messages the workers finished, by kind (document, status, unknown) and transport outcome.",
    ["kind", "outcome"],
)
REJECTIONS = Counter(
    "lienthong_rejections_total",
    "Messages rejected, by reason code (REJECTED_...).",
    ["reason"],
)
RETRIES = Counter(
    "lienthong_retries_total",
    "Messages sent to a retry queue after a transient failure, by tier and failure code.",
    ["tier", "failure"],
)
PARKED = Counter(
    "lienthong_parked_total",
    "Messages parked after failing too often, by failure code.",
    ["failure"],
)
DUPLICATES = Counter(
    "lienthong_duplicates_total",
    "Messages received again (a redelivery or a re-publish) and recognised as already handled.",
)
STAGE_SECONDS = Histogram(
    "lienthong_stage_seconds",
    "Time spent in each stage of handling one message.",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
END_TO_END_SECONDS = Histogram(
    "lienthong_end_to_end_seconds",
    "From the sender's publish (AMQP timestamp) to the confirmed delivery, by kind.",
    ["kind"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "lienthong_in_flight_messages",
    "Messages a worker process holds (received, not yet acknowledged).",
    multiprocess_mode="livesum",
)
CONSUMERS = Gauge(
    "lienthong_worker_consumers",
    "Consumers this worker process has on the work queue (0 after a silent loss).",
    multiprocess_mode="livesum",
)
BROKER_CONNECTED = Gauge(
    "lienthong_broker_connected",
    "1 while this worker process is connected to RabbitMQ.",
    multiprocess_mode="livemin",
)
BUILD = Info("lienthong_build", "Version of the exchange.")

# The stages, named once (labels of STAGE_SECONDS).
STAGE_PARSE = "parse"
STAGE_VALIDATE = "validate"
STAGE_VERIFY = "verify"
STAGE_READ = "read"
STAGE_PERSIST = "persist"
STAGE_PUBLISH = "publish"
