"""The metrics: bounded labels, bucket edges at the alert thresholds, the endpoint,
and the directory figures (connectivity, certificates) computed without I/O."""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.utils import floatToGoString

from exchange import metrics
from exchange.agency import AgencyCode, AgencyGroup
from exchange.report import (
    AgencyActivity,
    CertificateSummary,
    GatewaySummary,
    InboxBacklog,
    OverdueDelivery,
    Report,
    Tally,
    certificate_summary,
    export_metrics,
    format_report,
    report_json,
    tally,
)

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
OBSERVABILITY = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
NOW = datetime(2025, 6, 1, 3, 0, tzinfo=UTC)

# Every label the exchange's metrics may have: each takes a few known values.
BOUNDED_LABELS = {
    "kind",
    "outcome",
    "reason",
    "tier",
    "failure",
    "stage",
    "state",
    "level",
    "group",
    "operation",  # the gateway's nine operations and "unknown" (exchange/gateway/measure.py)
    "message_type",  # edoc, status
}


def declared_metrics() -> list[MetricWrapperBase]:
    """Every metric object exchange/metrics.py declares."""
    return [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]


def test_every_metric_label_is_one_of_the_bounded_ones() -> None:
    declared = declared_metrics()

    assert len(declared) >= 15
    for metric in declared:
        labels = set(metric._labelnames)
        assert labels <= BOUNDED_LABELS, f"{metric._name} has unbounded labels {labels}"


def exposed_names() -> set[str]:
    """The names Prometheus scrapes for the declared metrics (a counter's ``_total``, ...)."""
    suffix = {"counter": "_total", "info": "_info"}
    return {
        family.name + suffix.get(family.type, "")
        for metric in declared_metrics()
        for family in metric.describe()
    }


def test_every_metric_is_described_in_the_observability_guide_and_no_other() -> None:
    documented = set(re.findall(r"^\| `(lienthong_[a-z_]+)` \|", OBSERVABILITY.read_text(), re.M))
    exposed = exposed_names()

    assert "lienthong_messages_total" in exposed and "lienthong_build_info" in exposed
    assert sorted(exposed - documented) == [], "declared in exchange/metrics.py, not described"
    assert sorted(documented - exposed) == [], "described in docs/observability.md, not declared"


def test_every_latency_threshold_of_the_alerts_is_a_bucket_edge() -> None:
    thresholds = set(
        re.findall(r'lienthong_end_to_end_seconds_bucket\{[^}]*le="([^"]+)"', ALERTS.read_text())
    )

    assert thresholds, "the alerts use no latency bucket"
    edges = {floatToGoString(edge) for edge in metrics.LATENCY_BUCKETS}
    assert thresholds <= edges
    # The target itself (100 ms) is an edge too, for the dashboard's ratio.
    assert 0.1 in metrics.LATENCY_BUCKETS


# -- connectivity ------------------------------------------------------------------


def activity(code: str, sent: bool, received: bool) -> AgencyActivity:
    return AgencyActivity(AgencyCode.parse(code), sent, received)


ACTIVITIES = [
    activity("000.00.00.G22", sent=True, received=True),  # level 1 ministry, connected
    activity("000.00.00.G09", sent=True, received=False),  # level 1 ministry, only sent
    activity("000.00.00.H26", sent=True, received=True),  # level 1 province, connected
    activity("000.00.01.H26", sent=False, received=True),  # level 2 province, only received
    activity("000.00.24.H44", sent=True, received=True),  # level 2 province, connected
    activity("000.46.24.H44", sent=False, received=False),  # level 3 province, idle
]


def test_connected_means_sent_and_received() -> None:
    assert activity("000.00.00.G22", True, True).connected
    assert not activity("000.00.00.G22", True, False).connected
    assert not activity("000.00.00.G22", False, True).connected


def test_tally_counts_per_level_per_group_and_in_total() -> None:
    counts = tally(ACTIVITIES)

    assert counts.by_level == {1: Tally(3, 2), 2: Tally(2, 1), 3: Tally(1, 0)}
    assert counts.by_group == {AgencyGroup.MINISTRY: Tally(2, 1), AgencyGroup.PROVINCE: Tally(4, 2)}
    assert counts.by_level_and_group[(2, AgencyGroup.PROVINCE)] == Tally(2, 1)
    assert counts.total == Tally(6, 3)


def test_tally_counts_the_agencies_behind_the_gateway() -> None:
    behind = [
        AgencyActivity(AgencyCode.parse("000.00.00.H26"), True, True, via_gateway=True),
        AgencyActivity(AgencyCode.parse("000.46.24.H44"), False, False, via_gateway=True),
        activity("000.00.00.G22", sent=True, received=True),
    ]
    counts = tally(behind)

    assert counts.by_level == {1: Tally(2, 2, 1), 3: Tally(1, 0, 1)}
    assert counts.by_group[AgencyGroup.PROVINCE] == Tally(2, 1, 2)
    assert counts.total == Tally(3, 2, 2)


def test_the_report_says_how_the_gateways_systems_and_mailbox_stand() -> None:
    report = Report(
        since=NOW - timedelta(days=30),
        until=NOW,
        connectivity=tally(
            [AgencyActivity(AgencyCode.parse("000.00.00.H26"), True, True, via_gateway=True)]
        ),
        certificates=certificate_summary([None], NOW),
        overdue_total=0,
        overdue=[],
        gateway=GatewaySummary(
            systems_enabled=3,
            systems_disabled=1,
            systems_silent=1,
            unconfirmed=7,
            oldest_unconfirmed=datetime(2025, 5, 20, 1, 0, tzinfo=UTC),
        ),
    )

    text = format_report(report)
    data = report_json(report)

    assert re.search(r"total +1 +1 +1", text)
    assert (
        "Gateway: 3 systems enabled (1 silent for a day), 1 disabled; "
        "mailbox: 7 items not confirmed, the oldest since 2025-05-20 08:00" in text
    )
    assert data["gateway"] == {
        "systems_enabled": 3,
        "systems_disabled": 1,
        "systems_silent": 1,
        "unconfirmed": 7,
        "oldest_unconfirmed": "2025-05-20T01:00:00+00:00",
    }


def test_tally_of_an_empty_directory_is_zero() -> None:
    counts = tally([])

    assert counts.total == Tally(0, 0)
    assert counts.by_level == {}


@pytest.fixture
def clean_directory_gauges() -> Iterator[None]:
    yield
    metrics.AGENCIES_REGISTERED.clear()
    metrics.AGENCIES_CONNECTED.clear()


@pytest.mark.usefixtures("clean_directory_gauges")
def test_export_sets_the_gauges_and_forgets_slices_that_are_gone() -> None:
    certificates = CertificateSummary(
        {"valid": 4, "expiring": 1, "expired": 1, "missing": 0, "unreadable": 0},
        NOW + timedelta(days=3),
    )
    export_metrics(tally(ACTIVITIES), 7, certificates, NOW)

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    assert value("lienthong_agencies_registered", level="1", group="ministry") == 2
    assert value("lienthong_agencies_connected", level="1", group="ministry") == 1
    assert value("lienthong_agencies_connected", level="3", group="province") == 0
    assert value("lienthong_overdue_deliveries") == 7
    assert value("lienthong_agency_certificates", state="expired") == 1
    assert value("lienthong_agency_certificate_earliest_expiry_timestamp_seconds") == (
        (NOW + timedelta(days=3)).timestamp()
    )
    assert value("lienthong_directory_figures_timestamp_seconds") == NOW.timestamp()

    # The level-3 commune leaves the directory: its slice disappears.
    export_metrics(tally(ACTIVITIES[:-1]), 0, certificates, NOW)
    assert value("lienthong_agencies_registered", level="3", group="province") is None
    assert value("lienthong_agencies_registered", level="2", group="province") == 2


def test_no_certificate_exports_an_expiry_that_never_comes() -> None:
    export_metrics(tally([]), 0, CertificateSummary({}, None), NOW)

    assert REGISTRY.get_sample_value(
        "lienthong_agency_certificate_earliest_expiry_timestamp_seconds"
    ) == float("inf")


# -- certificates -------------------------------------------------------------------


def certificate(expires: datetime) -> str:
    """A self-signed certificate (PEM) that expires at ``expires``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(expires - timedelta(days=400))
        .not_valid_after(expires)
        .sign(key, hashes.SHA256())
    )
    return built.public_bytes(serialization.Encoding.PEM).decode()


def test_certificates_are_counted_by_state_with_the_earliest_expiry() -> None:
    pems = [
        certificate(NOW + timedelta(days=300)),
        certificate(NOW + timedelta(days=10)),
        certificate(NOW - timedelta(days=1)),
        None,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    ]

    summary = certificate_summary(pems, NOW)

    assert summary.counts == {
        "valid": 1,
        "expiring": 1,
        "expired": 1,
        "missing": 1,
        "unreadable": 1,
    }
    assert summary.earliest_expiry is not None
    assert abs(summary.earliest_expiry - (NOW - timedelta(days=1))) < timedelta(seconds=1)


def test_a_certificate_expiring_just_past_the_warning_is_still_valid() -> None:
    summary = certificate_summary([certificate(NOW + timedelta(days=31))], NOW)

    assert summary.counts["valid"] == 1
    assert summary.counts["expiring"] == 0


# -- the report's period and output ----------------------------------------------------


def test_report_lists_levels_groups_inboxes_and_overdue_in_text_and_json() -> None:
    report = Report(
        since=NOW - timedelta(days=30),
        until=NOW,
        connectivity=tally(ACTIVITIES),
        certificates=certificate_summary([None], NOW),
        overdue_total=3,
        overdue=[
            OverdueDelivery("DOC-1", "000.00.00.G22", "000.00.00.G09", date(2025, 5, 20), "03")
        ],
        inboxes=[
            InboxBacklog("000.00.00.G09", "lienthong.inbox.000.00.00.G09", 5, 0),
            InboxBacklog("000.00.00.H26", "lienthong.inbox.000.00.00.H26", 0, 1),
        ],
    )

    text = format_report(report)
    data = report_json(report)

    assert re.search(r"1 +ministries, provinces, central bodies +3 +2", text)
    assert re.search(r"G +ministries and government agencies +2 +1", text)
    assert re.search(r"total +6 +3", text)
    assert "5 documents waiting in 1 of 2 inboxes" in text
    assert re.search(r"000\.00\.00\.G09 +5 waiting, 0 consumers", text)
    assert "000.00.00.H26" not in text.split("inboxes")[1].split("Statuses")[0]
    assert "DOC-1  000.00.00.G22 -> 000.00.00.G09  due 2025-05-20  latest status 03" in text
    assert "... and 2 more" in text
    assert data["total"] == {"registered": 6, "connected": 3, "via_gateway": 0}
    assert data["by_level"][0] == {
        "level": 1,
        "name": "ministries, provinces, central bodies",
        "registered": 3,
        "connected": 2,
        "via_gateway": 0,
    }
    assert [g["group"] for g in data["by_group"]] == ["ministry", "province"]
    assert data["inboxes"][0]["messages"] == 5
    assert data["overdue"][0]["due_date"] == "2025-05-20"
    assert data["certificates"]["missing"] == 1


# -- the endpoint ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_endpoint_serves_the_metrics_with_the_build_version() -> None:
    port = free_port()
    stop = metrics.serve(port, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    finally:
        stop()

    assert 'lienthong_build_info{python="' in text
    assert f'version="{metrics.version()}"' in text
    assert "# TYPE lienthong_end_to_end_seconds histogram" in text
    assert "lienthong_worker_consumers" in text


def test_endpoint_serves_no_created_series() -> None:
    # A child of each kind that would carry one: a labelled counter, an
    # unlabelled counter, a histogram.
    metrics.MESSAGES.labels("document", "delivered")
    metrics.END_TO_END_SECONDS.labels("document")
    port = free_port()
    stop = metrics.serve(port, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    finally:
        stop()

    assert 'lienthong_messages_total{kind="document",outcome="delivered"}' in text
    assert 'lienthong_end_to_end_seconds_count{kind="document"}' in text
    assert "lienthong_duplicates_total " in text
    assert [line for line in text.splitlines() if "_created" in line] == []


def test_endpoint_on_a_taken_port_says_to_give_each_process_its_own() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(metrics.MetricsEndpointError, match="--metrics-port"):
            metrics.serve(port, "127.0.0.1")
