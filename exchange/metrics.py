"""Every Prometheus metric of the exchange, declared once, and the endpoint that serves them.

Labels stay bounded: kinds, outcomes, reason codes, stages, retry tiers,
certificate states, agency levels (1 to 4), agency groups (the letter
families of QCVN 102:2016), the gateway's operations (one outside the
protocol counts as ``unknown``) and message types are small fixed sets;
never an agency code, a system id or a document id (there are thousands of
agencies and millions of documents).
Per-queue figures (an inbox per agency) come from RabbitMQ's own Prometheus
plugin, not from here.

Several worker processes on one host: each process serves its own endpoint
on its own port (``--metrics-port``: 9108, 9109, ...) and Prometheus scrapes
each as a target; totals are ``sum()`` over the targets. No shared
multiprocess directory, so a dead process never leaves stale gauges behind
and ``up`` tells which process is down (deploy/prometheus/README.md). A
gateway process serves its own the same way (``lienthong gateway
--metrics-port``, 9128), on loopback unless ``--metrics-host`` says otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)

from exchange import __version__

# No ``*_created`` series: every counter and histogram would otherwise export
# one more series per label set (when it was created), which no dashboard or
# alert reads (``rate`` and ``increase`` cope with restarts without it) and
# which Prometheus would store for every worker process.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

# Per-stage costs run from tens of microseconds (reading a status) to tens of
# milliseconds (verifying a large package on a loaded machine).
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# End-to-end latency, publish to confirmed delivery. The edges include the
# alert thresholds (deploy/prometheus/alerts.yml): 100 ms is the latency
# target, 1 s and 10 s the warning and critical levels, and retries take
# from 1 s to 10 minutes.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 600.0)

# -- what the workers do ----------------------------------------------------------

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
CHECKS_REUSED = Counter(
    "lienthong_checks_reused_total",
    "Messages whose package bytes were examined before (the same package to another"
    " recipient): parse, schema and signature checks not repeated.",
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
)
MOVED_TO_BULK = Counter(
    "lienthong_moved_to_bulk_total",
    "Messages moved from lienthong.work to lienthong.work.bulk: their sender had its "
    "fair share of the worker in hand (a flood).",
)
BYTES_IN_HAND = Gauge(
    "lienthong_worker_bytes_in_hand",
    "Package bytes a worker process is handling now (checks to ack), bounded by "
    "LIENTHONG_HANDLING_BYTES; a message waits for room before its checks.",
)
SUBSCRIPTION_COPIES = Counter(
    "lienthong_subscription_copies_total",
    "Copies of delivered documents the workers published to subscribers' inboxes.",
)

# -- the real state of a worker process, refreshed by its watchdog ---------------------

CONSUMERS = Gauge(
    "lienthong_worker_consumers",
    "Consumers this worker process really has on the work queue, as its channels report "
    "them (0 after a silent loss, e.g. a consumer the broker cancelled).",
)
BROKER_CONNECTED = Gauge(
    "lienthong_broker_connected",
    "1 while every broker connection of this worker process is up, 0 while one is reconnecting.",
)
DB_POOL_CONNECTIONS = Gauge(
    "lienthong_db_pool_connections",
    "Connections of this worker process's PostgreSQL pool, by state (busy, idle).",
    ["state"],
)
DB_POOL_MAX_CONNECTIONS = Gauge(
    "lienthong_db_pool_max_connections",
    "The most connections this worker process's PostgreSQL pool may open.",
)
DATABASE_ROLE_PRIVILEGED = Gauge(
    "lienthong_database_role_privileged",
    "1 when this process works as a PostgreSQL role that can change the schema (a superuser, "
    "the owner of a table or of the schema, or allowed to create in it): tolerated on this "
    "host only; 0 for a role of lienthong_worker or lienthong_gateway.",
)
BUILD = Info("lienthong_build", "Version of the exchange and of Python.")

# -- the directory, computed from the database by every worker (same figure on each) ------

CERTIFICATES = Gauge(
    "lienthong_agency_certificates",
    "Registered agencies' signing certificates by state: valid, expiring (within 30 days), "
    "expired, missing, unreadable.",
    ["state"],
)
CERTIFICATE_EARLIEST_EXPIRY = Gauge(
    "lienthong_agency_certificate_earliest_expiry_timestamp_seconds",
    "When the first of the registered agencies' certificates expires (Unix time; "
    "+Inf when no agency has one).",
)
AGENCIES_REGISTERED = Gauge(
    "lienthong_agencies_registered",
    "Registered agencies, by level (1 to 4) and group (ministry, province, ...).",
    ["level", "group"],
)
AGENCIES_CONNECTED = Gauge(
    "lienthong_agencies_connected",
    "Registered agencies that sent and received at least one document in the last 30 days, "
    "by level and group.",
    ["level", "group"],
)
OVERDUE_DELIVERIES = Gauge(
    "lienthong_overdue_deliveries",
    "Deliveries of documents past their DueDate whose recipient has not reported 06 (done).",
)
DIRECTORY_REFRESHED = Gauge(
    "lienthong_directory_figures_timestamp_seconds",
    "When this worker process last computed the directory figures (Unix time).",
)

# -- trust anchors and revocation lists, as this worker process holds them ------------

CRL_STALE_ISSUERS = Gauge(
    "lienthong_crl_stale_issuers",
    "CAs whose newest revocation list is past its nextUpdate plus LIENTHONG_CRL_GRACE_S: "
    "no certificate they issued is accepted (REJECTED_CRL_STALE).",
)
CRL_EARLIEST_NEXT_UPDATE = Gauge(
    "lienthong_crl_earliest_next_update_timestamp_seconds",
    "The earliest nextUpdate of the revocation lists held (Unix time; +Inf when none).",
)
CRL_LISTS = Gauge("lienthong_crl_lists", "Revocation lists this worker process holds.")
TRUST_RELOADS = Counter(
    "lienthong_trust_reloads_total",
    "Reloads of the revocation lists (periodic), or of them, the trust anchors and the "
    "receipt key (SIGHUP), by outcome (ok, failed: the previous ones stay in use).",
    ["outcome"],
)
RECEIPT_CERTIFICATE_EXPIRY = Gauge(
    "lienthong_receipt_certificate_expiry_timestamp_seconds",
    "When the certificate this worker process signs receipts with expires (Unix time; "
    "0 when receipts are unsigned, development only).",
)
SEALS = Counter(
    "lienthong_seals_total",
    "Seals of the chains' heads written by this worker process at the interval, by outcome "
    "(ok; failed: no seal, the log says why, e.g. the time-stamp authority did not answer).",
    ["outcome"],
)
LAST_SEAL = Gauge(
    "lienthong_last_seal_timestamp_seconds",
    "When this worker process last saw a seal written (by itself or another; Unix time).",
)

# -- the gateway (exchange/gateway), one endpoint per gateway process ---------------

# A gateway request runs from milliseconds (a list) to seconds (checking and
# signing a large package); past 120 s it is answered 901 (REQUEST_TIMEOUT_S).
GATEWAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)

GATEWAY_REQUESTS = Counter(
    "lienthong_gateway_requests_total",
    "Requests the gateway answered, by operation (an unknown one counts as unknown) and "
    "outcome (the ErrorCode of the reply, 0 for OK).",
    ["operation", "outcome"],
)
GATEWAY_REQUEST_SECONDS = Histogram(
    "lienthong_gateway_request_seconds",
    "Time from a request's arrival to its reply, by operation.",
    ["operation"],
    buckets=GATEWAY_BUCKETS,
)
GATEWAY_MAILBOX_ITEMS = Gauge(
    "lienthong_gateway_mailbox_items",
    "Mailbox items no system has confirmed (done) yet, by the agency's level (1 to 4) and "
    "message type (edoc, status); the same figure on every gateway process.",
    ["level", "message_type"],
)
GATEWAY_OLDEST_UNCONFIRMED_AGE = Gauge(
    "lienthong_gateway_oldest_unconfirmed_age_seconds",
    "How long the oldest mailbox item not confirmed has waited (0 when none waits).",
)
GATEWAY_LONGEST_SILENCE = Gauge(
    "lienthong_gateway_longest_silence_seconds",
    "How long the enabled system heard from least recently has not called the gateway "
    "(since its registration if it never did; 0 without enabled systems).",
)
GATEWAY_FIGURES_REFRESHED = Gauge(
    "lienthong_gateway_figures_timestamp_seconds",
    "When this gateway process last computed the mailbox and system figures (Unix time).",
)

# The stages the worker and the ledger time (labels of STAGE_SECONDS); the
# checking stages are named by pipeline.check_message's timings.
STAGE_PERSIST = "persist"
STAGE_PUBLISH = "publish"

# The certificate states, named once (labels of CERTIFICATES).
CERTIFICATE_STATES = ("valid", "expiring", "expired", "missing", "unreadable")


class MetricsEndpointError(RuntimeError):
    """The metrics endpoint could not start; the message says why and what to do."""


def version() -> str:
    """The version of the exchange that runs (``exchange.__version__``, its one source)."""
    return __version__


WORKER_PORT_HINT = (
    "give each worker process a port of its own with --metrics-port (or LIENTHONG_METRICS_PORT)"
)


def serve(
    port: int,
    address: str = "127.0.0.1",
    *,
    hint: str = WORKER_PORT_HINT,
) -> Callable[[], None]:
    """Serve every metric on ``http://address:port/metrics``; returns the function that stops it.

    Loopback by default (``LIENTHONG_METRICS_HOST``, ``LIENTHONG_GATEWAY_METRICS_HOST``):
    the metrics hold counts and codes, never a document or a credential, but
    name agencies and reveal traffic; another address is an operator's choice.
    ``hint`` ends the error when the port is taken: what to do about it.
    """
    BUILD.info({"version": version(), "python": sys.version.split()[0]})
    try:
        server, thread = start_http_server(port, address)
    except OSError as error:
        raise MetricsEndpointError(
            f"cannot serve metrics on {address}:{port} ({error.strerror}); {hint}"
        ) from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
