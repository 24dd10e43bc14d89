"""Each worker process's metrics endpoint, its logs, and its watchdog, on the real services.

Two ``lienthong worker`` processes run side by side, each with its own
``--metrics-port`` (one from the option, one from LIENTHONG_METRICS_PORT):
what each serves is what it did, as its own logs tell, and the two add up
to every message sent. Their logs are JSON (stderr is not a terminal) with
the decision fields, and no package content.

Also here: :class:`WorkerProcess` and :func:`scrape`, which the real
Prometheus test (test_prometheus.py) uses too.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from exchange import metrics, worker
from exchange.demo import demo_document
from exchange.pki import create_ca, issue_exchange_certificate
from exchange.settings import Settings
from tests.exchange_fixtures import ExchangeUnderTest, recording_client

SENDER = "000.00.00.G22"
RECIPIENTS = ("000.00.00.G09", "000.00.00.H26")
# A worker process imports, connects to RabbitMQ and PostgreSQL, and starts
# consuming in a second or two; the margin is for a loaded CI machine.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.1

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def scrape(port: int) -> Samples:
    """Every sample a metrics endpoint serves, keyed by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value, 0 when the endpoint does not have it (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def lienthong_command() -> list[str]:
    """The ``lienthong`` command of this virtual environment."""
    script = Path(sys.executable).with_name("lienthong")
    return [str(script)] if script.exists() else [sys.executable, "-m", "exchange"]


@dataclass
class WorkerProcess:
    """A ``lienthong worker`` process with its metrics port and its log (stderr) file."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @classmethod
    def start(
        cls, settings: Settings, log_path: Path, *, port: int, port_from_env: bool = False
    ) -> WorkerProcess:
        """Start a worker on ``settings``' broker and database, its port from the option or env."""
        env = {
            **os.environ,
            "LIENTHONG_AMQP_URL": settings.amqp_url,
            "LIENTHONG_DATABASE_URL": settings.database_url,
            "LIENTHONG_RABBITMQ_API_URL": settings.rabbitmq_api_url,
            "LIENTHONG_TRUST": str(settings.trust),
            "LIENTHONG_RECEIPT_KEY": str(settings.receipt_key),
            "LIENTHONG_RECEIPT_CERT": str(settings.receipt_cert),
        }
        env.pop("LIENTHONG_LOG_FORMAT", None)  # the default: JSON, stderr is a file
        command = [*lienthong_command(), "worker"]
        if port_from_env:
            env["LIENTHONG_METRICS_PORT"] = str(port)
        else:
            command += ["--metrics-port", str(port)]
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        return cls(process, port, log_path)

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def json_lines(self) -> list[dict[str, Any]]:
        """The process's log lines, each parsed as JSON (a line that is not JSON fails)."""
        lines = []
        for line in self.log().splitlines():
            if line.startswith("stopped after"):
                continue  # the command's own closing words on stdout
            lines.append(json.loads(line))
        return lines

    async def wait_consuming(self) -> Samples:
        """Wait until the process's endpoint says it consumes the work queue."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"worker exited with {self.process.returncode}:\n{self.log()}")
            try:
                samples = await asyncio.to_thread(scrape, self.port)
                if value(samples, "lienthong_worker_consumers") >= 1:
                    return samples
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"worker not consuming after {START_TIMEOUT_S:.0f} s:\n{self.log()}")
            await asyncio.sleep(POLL_S)

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


async def poll_until(check: Any, what: str, timeout: float = START_TIMEOUT_S) -> Any:
    """Call ``check()`` (in a thread) until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await asyncio.to_thread(check)
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(POLL_S)


def decisions(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The worker's one line per decided message."""
    return [
        line for line in lines if line.get("logger") == "lienthong.worker" and "message_pk" in line
    ]


@pytest.mark.services
async def test_two_worker_processes_each_count_what_they_did_and_together_every_message(
    exchange: ExchangeUnderTest, tmp_path: Path
) -> None:
    sender = await exchange.register(SENDER, "Văn phòng Chính phủ")
    for code in RECIPIENTS:
        await exchange.register(code)
    subject = "Về việc thử nghiệm số liệu giám sát"
    documents = [
        demo_document(sender, list(exchange.agencies.values())[1:], n, "VPCP-GS", subject)
        for n in range(1, 6)
    ]
    garbage = b"GARBAGE-MARKER: not an edXML package"
    workers = [
        WorkerProcess.start(exchange.settings, tmp_path / "w1.log", port=free_port()),
        WorkerProcess.start(
            exchange.settings, tmp_path / "w2.log", port=free_port(), port_from_env=True
        ),
    ]
    try:
        await asyncio.gather(*(w.wait_consuming() for w in workers))
        async with recording_client(sender) as client:
            for document in documents:
                await client.send_document(document)
            await client.submit(garbage, [RECIPIENTS[0]])
            published = [body for body, _ in client.published]
        delivered = len(documents) * len(RECIPIENTS)
        await exchange.wait_settled(delivered + 1)

        def totals() -> list[Samples] | None:
            scraped = [scrape(w.port) for w in workers]
            done = sum(
                value(s, "lienthong_messages_total", kind="document", outcome="delivered")
                for s in scraped
            )
            rejected = sum(
                value(s, "lienthong_messages_total", kind="unknown", outcome="rejected")
                for s in scraped
            )
            return scraped if (done, rejected) == (delivered, 1) else None

        scraped = await poll_until(totals, f"{delivered} delivered and 1 rejected on the endpoints")
    finally:
        statuses = await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers))

    assert statuses == [0, 0], [w.log()[-2000:] for w in workers]
    for process, samples in zip(workers, scraped, strict=True):
        lines = process.json_lines()  # every line is JSON: stderr was not a terminal
        decided = Counter((d["kind"], d["outcome"]) for d in decisions(lines))
        # What a process's endpoint says is what its own log says it did.
        assert (
            value(samples, "lienthong_messages_total", kind="document", outcome="delivered")
            == (decided["document", "delivered"])
        )
        assert (
            value(samples, "lienthong_end_to_end_seconds_count", kind="document")
            == (decided["document", "delivered"])
        )
        assert value(samples, "lienthong_worker_consumers") == 1
        assert value(samples, "lienthong_broker_connected") == 1
        assert value(samples, "lienthong_db_pool_max_connections") == exchange.settings.db_pool_size
        assert value(samples, "lienthong_agencies_registered", level="1", group="ministry") == 2
        assert value(samples, "lienthong_agencies_registered", level="1", group="province") == 1
        # Counters and histograms without their *_created series.
        assert [name for name, _ in samples if name.endswith("_created")] == []
    every_line = [line for w in workers for line in w.json_lines()]
    every_decision = decisions(every_line)
    assert len(every_decision) == len(documents) * len(RECIPIENTS) + 1
    for line in every_decision:
        for field in ("message_id", "message_pk", "sender", "recipient", "outcome", "kind"):
            assert line.get(field) is not None, f"{field} missing from {line}"
    delivered_lines = [d for d in every_decision if d["outcome"] == "delivered"]
    assert {d["recipient"] for d in delivered_lines} == set(RECIPIENTS)
    assert {d["sender"] for d in delivered_lines} == {SENDER}
    assert all(d["document_id"].startswith(SENDER) for d in delivered_lines)
    (refused,) = [d for d in every_decision if d["outcome"] == "rejected"]
    assert refused["reason_code"].startswith("REJECTED_")
    assert (
        sum(value(s, "lienthong_rejections_total", reason=refused["reason_code"]) for s in scraped)
        == 1
    )

    # Identifiers only: neither the packages nor the garbage reach the logs.
    logs = "".join(w.log() for w in workers)
    assert subject not in logs
    assert "GARBAGE-MARKER" not in logs
    for body in published:
        assert body.decode(errors="replace")[:200] not in logs
    assert "edXMLEnvelope" not in logs


def test_a_second_worker_on_a_taken_metrics_port_refuses_to_start_and_says_why(
    tmp_path: Path,
) -> None:
    issue_exchange_certificate(create_ca(tmp_path), directory=tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # the worker binds loopback (LIENTHONG_METRICS_HOST)
        taken.listen()
        port = taken.getsockname()[1]

        result = subprocess.run(
            [*lienthong_command(), "worker", "--metrics-port", str(port)],
            env={
                **os.environ,
                "LIENTHONG_TRUST": str(tmp_path / "ca.cert.pem"),
                "LIENTHONG_RECEIPT_KEY": str(tmp_path / "exchange.key.pem"),
                "LIENTHONG_RECEIPT_CERT": str(tmp_path / "exchange.cert.pem"),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert result.returncode == 2, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "--metrics-port" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.services
async def test_watchdog_shows_a_consumer_the_broker_cancelled(
    exchange: ExchangeUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "WATCH_INTERVAL_S", 0.05)

    def gauge(name: str) -> float | None:
        return REGISTRY.get_sample_value(name)

    async with exchange.workers(2):
        await poll_until(lambda: gauge("lienthong_worker_consumers") == 2, "two consumers")
        assert gauge("lienthong_broker_connected") == 1
        assert (gauge("lienthong_db_pool_max_connections") or 0) >= 1

        # The work queue goes away under the workers (as after a broker that
        # lost it): the broker cancels their consumers, and aio-pika does not
        # consume again. Nothing fails; only the gauge tells.
        vhost = exchange.vhost.replace("/", "%2F")
        await exchange.admin.request("DELETE", f"/queues/{vhost}/lienthong.work")

        await poll_until(lambda: gauge("lienthong_worker_consumers") == 0, "zero consumers")
        assert gauge("lienthong_broker_connected") == 1
    assert metrics.CONSUMERS._value.get() == 0
