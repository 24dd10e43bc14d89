"""A real Alertmanager with deploy/alertmanager/alertmanager.yml: one broker outage is one page.

The Debian package's ``prometheus-alertmanager`` runs on a free port with a
temporary storage directory and clustering off (the package's own service,
if any, is never involved). The test posts the alerts a broker outage fires
together, as Prometheus would, and reads back which ones Alertmanager
suppresses and which one it lets through.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_metrics_endpoint import free_port
from tests.unit.test_alert_rules import ALERTMANAGER_CONFIG, tool

# Alertmanager answers /-/ready within a second or two of starting.
READY_TIMEOUT_S = 30.0
# It marks an alert inhibited as soon as it has the source; polling covers a
# loaded machine.
STATE_TIMEOUT_S = 30.0


@dataclass
class Alertmanager:
    """A running Alertmanager and its API."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @classmethod
    def start(cls, binary: str, directory: Path) -> Alertmanager:
        """Alertmanager on a free port with the deploy configuration."""
        port = free_port()
        log_path = directory / "alertmanager.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={ALERTMANAGER_CONFIG}",
                    f"--storage.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--cluster.listen-address=",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=log,
            )
        return cls(process, f"http://127.0.0.1:{port}", log_path)

    def wait_ready(self) -> None:
        """Wait until the server answers /-/ready."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"alertmanager exited:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"alertmanager not ready:\n{self.log_path.read_text()}")
            time.sleep(0.2)

    def post(self, alerts: list[dict[str, Any]]) -> None:
        """Send alerts as Prometheus does (API v2)."""
        request = urllib.request.Request(
            f"{self.url}/api/v2/alerts",
            data=json.dumps(alerts).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200

    def states(self) -> dict[str, str]:
        """Each alert's state (``active``, ``suppressed``) keyed by name and instance."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=10) as answer:
            alerts = json.load(answer)
        return {
            key(alert["labels"]["alertname"], alert["labels"].get("instance")): alert["status"][
                "state"
            ]
            for alert in alerts
        }

    def stop(self) -> None:
        """Stop the server; killed, since its storage is thrown away with the test."""
        self.process.kill()
        self.process.wait()


def key(name: str, instance: str | None) -> str:
    return f"{name}@{instance}" if instance else name


def firing(name: str, severity: str, **labels: str) -> dict[str, Any]:
    """An alert as Prometheus sends it, firing since a minute ago for an hour."""
    now = datetime.now(UTC)
    return {
        "labels": {"alertname": name, "severity": severity, **labels},
        "annotations": {"summary": name},
        "startsAt": (now - timedelta(minutes=1)).isoformat(),
        "endsAt": (now + timedelta(hours=1)).isoformat(),
    }


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    binary = tool("prometheus-alertmanager", "prometheus-alertmanager")
    server = Alertmanager.start(binary, tmp_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def wait_for(alertmanager: Alertmanager, expected: dict[str, str]) -> dict[str, str]:
    """Poll the alerts' states until they are ``expected`` (or give up, showing the last)."""
    deadline = time.monotonic() + STATE_TIMEOUT_S
    while True:
        states = alertmanager.states()
        if states == expected or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def test_a_broker_outage_is_one_page_and_a_dead_worker_still_pages(
    alertmanager: Alertmanager,
) -> None:
    workers = {"job": "lienthong-worker"}
    queues = {"job": "rabbitmq-queues", "vhost": "/"}
    alertmanager.post(
        [
            firing("LienthongBrokerDown", "critical"),
            firing("LienthongWorkerDisconnected", "critical", instance="w1:9108", **workers),
            firing("LienthongWorkerDisconnected", "critical", instance="w2:9109", **workers),
            firing("LienthongWorkerNotConsuming", "critical", instance="w1:9108", **workers),
            firing("LienthongWorkQueueWithoutConsumers", "critical", **queues),
            firing("LienthongTransientFailures", "warning", failure="TRANSIENT_BROKER"),
            firing("LienthongInboxNotRead", "warning", level="3", vhost="/"),
            firing("RabbitMQMetricsDown", "critical", instance="mq:15692", job="rabbitmq"),
            # Not explained by the outage: a worker process that died.
            firing("LienthongWorkerDown", "critical", instance="w3:9110", **workers),
        ]
    )

    states = wait_for(
        alertmanager,
        {
            "LienthongBrokerDown": "active",
            "LienthongWorkerDisconnected@w1:9108": "suppressed",
            "LienthongWorkerDisconnected@w2:9109": "suppressed",
            "LienthongWorkerNotConsuming@w1:9108": "suppressed",
            "LienthongWorkQueueWithoutConsumers": "suppressed",
            "LienthongTransientFailures": "suppressed",
            "LienthongInboxNotRead": "suppressed",
            "RabbitMQMetricsDown@mq:15692": "suppressed",
            "LienthongWorkerDown@w3:9110": "active",
        },
    )

    assert sorted(name for name, state in states.items() if state == "active") == [
        "LienthongBrokerDown",
        "LienthongWorkerDown@w3:9110",
    ]
    assert len(states) == 9


def test_without_the_broker_down_each_alert_is_its_own(alertmanager: Alertmanager) -> None:
    workers = {"job": "lienthong-worker"}
    alertmanager.post(
        [
            firing("LienthongWorkerDisconnected", "critical", instance="w1:9108", **workers),
            firing("LienthongInboxNotRead", "warning", level="3", vhost="/"),
            firing("LienthongEndToEndLatencyHigh", "warning"),
        ]
    )

    states = wait_for(
        alertmanager,
        {
            "LienthongWorkerDisconnected@w1:9108": "active",
            "LienthongInboxNotRead": "active",
            "LienthongEndToEndLatencyHigh": "active",
        },
    )

    assert set(states.values()) == {"active"}
    assert len(states) == 3
