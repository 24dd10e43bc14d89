"""A real Prometheus scrapes real workers and RabbitMQ; the figures come back through its API.

The module starts, once: two ``lienthong worker`` processes (each its own
metrics port), and the Debian package's ``prometheus`` server with
deploy/prometheus/prometheus.yml and alerts.yml, only its addresses and
intervals replaced (scrape every second, the test's ports, a temporary
storage directory, its own free port: the package's service on 9090 is
never involved). Agencies send documents through; the tests read the
counts, the queue depths, the rules and every query of the Grafana
dashboard back from Prometheus' HTTP query API.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from exchange import metrics
from exchange.broker.admin import BrokerAdmin
from exchange.demo import LocalExchange, demo_document
from exchange.settings import Settings
from tests.broker_fixtures import BrokerVhost
from tests.exchange_fixtures import ExchangeUnderTest
from tests.integration.test_metrics_endpoint import WorkerProcess, free_port

pytestmark = pytest.mark.services
# The async tests share the module's event loop, where the scenario runs.
in_module_loop = pytest.mark.asyncio(loop_scope="module")

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "lienthong.json"
DATASOURCES = REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

OFFICE, MINISTRY, HANOI = "000.00.00.G22", "000.00.00.G09", "000.00.00.H26"
# Prometheus answers /-/ready within a second or two of starting.
READY_TIMEOUT_S = 30.0
# Scrapes every second; RabbitMQ refreshes its queue statistics every 5 s.
FIGURES_TIMEOUT_S = 30.0
# Panels with nothing to show when nothing failed: no retry, no parking, no
# inbox left unread for a day.
MAY_BE_EMPTY = {
    "Retries by tier",
    "Parked by failure (last hour)",
    "Inboxes unread for a day, by level",
}


def render_config(text: str, replacements: dict[str, str]) -> str:
    """prometheus.yml with each ``old`` replaced; an ``old`` that is not there is a test bug."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} is not in deploy/prometheus/prometheus.yml any more"
        text = text.replace(old, new)
    return text


@dataclass
class PrometheusServer:
    """A running ``prometheus`` and what it was told to scrape."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @classmethod
    def start(cls, directory: Path, worker_ports: list[int]) -> PrometheusServer:
        """Prometheus on a free port with the deploy configuration, scraping the test's targets."""
        binary = shutil.which("prometheus")
        assert binary is not None
        workers = ", ".join(f'"127.0.0.1:{port}"' for port in worker_ports)
        rabbitmq = urllib.parse.urlsplit(Settings().rabbitmq_api_url).hostname or "127.0.0.1"
        config = render_config(
            (PROMETHEUS_DIR / "prometheus.yml").read_text(),
            {
                "scrape_interval: 15s": "scrape_interval: 1s",
                "evaluation_interval: 15s": "evaluation_interval: 1s",
                '"127.0.0.1:9108"': workers,
                '"127.0.0.1:15692"': f'"{rabbitmq}:15692"',
            },
        )
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "prometheus.yml").write_text(config)
        shutil.copy(PROMETHEUS_DIR / "alerts.yml", directory / "alerts.yml")
        port = free_port()
        log_path = directory / "prometheus.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={directory / 'prometheus.yml'}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=log,
            )
        return cls(process, f"http://127.0.0.1:{port}", log_path)

    def get(self, path: str, **params: str) -> Any:
        """GET an API path; the decoded ``data`` of a successful answer."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        assert body["status"] == "success", f"{path} {params}: {body.get('error')}"
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (fails on a PromQL error)."""
        data = self.get("/api/v1/query", query=promql)
        assert data["resultType"] in ("vector", "scalar"), data
        result: list[dict[str, Any]] = (
            data["result"] if data["resultType"] == "vector" else [{"value": data["result"]}]
        )
        return result

    def number(self, promql: str) -> float | None:
        """The single number a query returns, or ``None`` while it returns nothing."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, f"{promql} returned {len(result)} series"
        return float(result[0]["value"][1])

    async def wait_ready(self) -> None:
        """Wait until the server answers /-/ready."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready:\n{self.log_path.read_text()}")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        """Stop the server; killed, since its storage is thrown away with the test."""
        self.process.kill()
        self.process.wait()


@dataclass
class Scenario:
    """What ran, and what Prometheus should therefore say."""

    prometheus: PrometheusServer
    vhost: str
    workers: list[WorkerProcess]
    delivered: int
    rejected: int


async def eventually(check: Callable[[], Any], what: str) -> Any:
    """Poll ``check`` (in a thread) until it returns something true."""
    deadline = time.monotonic() + FIGURES_TIMEOUT_S
    while True:
        seen = await asyncio.to_thread(check)
        if seen:
            return seen
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {FIGURES_TIMEOUT_S:.0f} s waiting for {what}")
        await asyncio.sleep(0.25)


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    """The prometheus server of the Debian package; missing fails under CI."""
    found = shutil.which("prometheus")
    if found is None:
        message = "prometheus is not installed (apt-get install prometheus; scripts/setup.sh does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scenario(
    prometheus_binary: str,
    broker_admin: BrokerAdmin,
    make_vhost: Callable[[], BrokerVhost],
    module_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Scenario]:
    """Workers and Prometheus running, documents sent and settled."""
    directory = tmp_path_factory.mktemp("prometheus")
    vhost = make_vhost()
    settings = Settings().model_copy(
        update={"amqp_url": vhost.amqp_url, "database_url": module_database_url}
    )
    local = LocalExchange(settings, directory / "keys")
    exchange = ExchangeUnderTest(local, broker_admin, vhost.name, f"p{uuid.uuid4().hex[:8]}")
    await local.prepare()
    workers: list[WorkerProcess] = []
    prometheus: PrometheusServer | None = None
    try:
        office = await exchange.register(OFFICE, "Văn phòng Chính phủ")
        ministry = await exchange.register(MINISTRY, "Bộ Nội vụ")
        hanoi = await exchange.register(HANOI, "UBND Thành phố Hà Nội")
        workers = [
            WorkerProcess.start(local.settings, directory / f"worker{n}.log", port=free_port())
            for n in (1, 2)
        ]
        prometheus = PrometheusServer.start(directory, [w.port for w in workers])
        await asyncio.gather(prometheus.wait_ready(), *(w.wait_consuming() for w in workers))
        async with office.client() as client:
            for number in (1, 2):
                document = demo_document(office, [ministry, hanoi], number, "VPCP-TK", "Thống kê")
                await client.send_document(document)
            await client.submit(b"not an edXML package", [MINISTRY])
        async with ministry.client() as client:
            await client.send_document(demo_document(ministry, [office], 3, "BNV-VP", "Báo cáo"))
        await exchange.wait_settled(6)
        yield Scenario(prometheus, vhost.name, workers, delivered=5, rejected=1)
    finally:
        if prometheus is not None:
            prometheus.stop()
        await asyncio.gather(*(asyncio.to_thread(worker.stop) for worker in workers))
        for user in exchange.broker_users:
            await broker_admin.delete_user(user)


@in_module_loop
async def test_prometheus_reads_the_workers_counts_summed_over_both_processes(
    scenario: Scenario,
) -> None:
    prometheus = scenario.prometheus
    delivered = 'sum(lienthong_messages_total{kind="document",outcome="delivered"})'

    await eventually(
        lambda: prometheus.number(delivered) == scenario.delivered,
        f"{scenario.delivered} delivered documents in Prometheus",
    )

    assert prometheus.number('sum(lienthong_messages_total{outcome="rejected"})') == 1
    assert prometheus.number("sum(lienthong_rejections_total)") == scenario.rejected
    assert prometheus.number('sum(lienthong_end_to_end_seconds_count{kind="document"})') == 5
    # Both processes are up, each consuming and connected.
    assert prometheus.number('count(up{job="lienthong-worker"} == 1)') == 2
    assert prometheus.number("sum(lienthong_worker_consumers)") == 2
    assert prometheus.number("min(lienthong_broker_connected)") == 1
    # Directory figures: the same on every process, hence max.
    assert prometheus.number("sum(max by (level, group) (lienthong_agencies_registered))") == 3
    assert prometheus.number('max(lienthong_agency_certificates{state="valid"})') == 3
    (build,) = prometheus.query("count by (version) (lienthong_build_info)")
    assert build["metric"]["version"] == metrics.version()
    # Latency went through the histogram (counts since the start): the median is
    # under the 10 s edge.
    median = prometheus.number(
        "histogram_quantile(0.5, sum by (le) "
        '(lienthong_end_to_end_seconds_bucket{kind="document"}))'
    )
    assert median is not None and 0 <= median <= 10


@in_module_loop
async def test_prometheus_reads_queue_depths_and_consumers_from_rabbitmq(
    scenario: Scenario,
) -> None:
    prometheus = scenario.prometheus
    where = f'vhost="{scenario.vhost}"'
    expected = {
        f"lienthong.inbox.{MINISTRY}": 2,
        f"lienthong.inbox.{HANOI}": 2,
        f"lienthong.inbox.{OFFICE}": 1,
        # Receipts: four deliveries and one refusal for the office, one for the ministry.
        f"lienthong.status.{OFFICE}": 5,
        f"lienthong.status.{MINISTRY}": 1,
        "lienthong.work": 0,
        "lienthong.parked": 0,
    }

    def depths() -> dict[str, float] | None:
        rows = prometheus.query(f"rabbitmq_detailed_queue_messages{{{where}}}")
        seen = {row["metric"]["queue"]: float(row["value"][1]) for row in rows}
        return seen if all(seen.get(q) == n for q, n in expected.items()) else None

    seen = await eventually(depths, f"queue depths {expected} from RabbitMQ")

    assert sum(1 for queue in seen if queue.startswith("lienthong.retry.")) == 4
    assert (
        prometheus.number(f'rabbitmq_detailed_queue_consumers{{{where},queue="lienthong.work"}}')
        == 2
    )
    assert (
        prometheus.number(
            f'rabbitmq_detailed_queue_consumers{{{where},queue="lienthong.inbox.{HANOI}"}}'
        )
        == 0
    )


@in_module_loop
async def test_prometheus_loads_and_evaluates_every_alert_and_none_fires_for_a_healthy_exchange(
    scenario: Scenario,
) -> None:
    prometheus = scenario.prometheus
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    # Alerts and recording rules alike.
    names = {rule.get("alert") or rule["record"] for group in groups for rule in group["rules"]}

    def evaluated() -> dict[str, str] | None:
        groups = prometheus.get("/api/v1/rules")["groups"]
        health = {rule["name"]: rule["health"] for g in groups for rule in g["rules"]}
        return health if set(health) == names and set(health.values()) == {"ok"} else None

    await eventually(evaluated, "every alert rule loaded and evaluated without error")

    # Other tests' vhosts on the same broker may have their own trouble;
    # nothing of this exchange, its vhost or its workers, is alerting.
    ours = {scenario.vhost} | {f"127.0.0.1:{w.port}" for w in scenario.workers}
    alerts = prometheus.get("/api/v1/alerts")["alerts"]
    mine = [a for a in alerts if {a["labels"].get("vhost"), a["labels"].get("instance")} & ours]
    assert mine == []


def dashboard_targets(scenario: Scenario) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard, its variables set as Grafana
    would: the scenario's vhost, and all its workers."""
    dashboard = json.loads(DASHBOARD.read_text())
    instances = "|".join(f"127.0.0.1:{worker.port}" for worker in scenario.workers)
    values = {"$vhost": scenario.vhost, "$instance": instances}
    targets = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            promql = target["expr"]
            for variable, value in values.items():
                promql = promql.replace(variable, value)
            assert "$" not in promql, f"{panel['title']}: a variable the test does not set"
            targets.append((panel["title"], promql))
    return targets


def metric_names(promql: str) -> set[str]:
    """The metric names a query reads."""
    return set(re.findall(r"\b(lienthong_[a-z0-9_]+|rabbitmq_[a-z0-9_]+|up)\b", promql))


def declared_metric_names() -> set[str]:
    """Every series name the exchange's metrics can produce."""
    names = set()
    for value in vars(metrics).values():
        describe = getattr(value, "describe", None)
        if describe is None or not hasattr(value, "_labelnames"):
            continue
        for family in describe():
            for suffix in ("", "_total", "_bucket", "_count", "_sum", "_info"):
                names.add(family.name + suffix)
    return names


def test_dashboard_is_provisionable_and_queries_only_known_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    # The dashboard reads its datasource variable (tests/unit/test_dashboard.py):
    # provisioned, it falls back to the default Prometheus datasource.
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["isDefault"] is True
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]

    assert len(ids) == len(set(ids))
    declared = declared_metric_names()
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                assert (
                    name in declared or name.startswith("rabbitmq_detailed_queue_") or name == "up"
                ), f"{panel['title']}: {name} is exported by nobody"
    titles = {panel["title"] for panel in panels}
    # What operators asked to see.
    for wanted in (
        "Messages by kind and outcome",
        "End-to-end latency (sender publish to inbox)",
        "Rejections by reason (last hour)",
        "Work, retry and parked queues",
        "Parked",
        "Connected agencies by level",
    ):
        assert wanted in titles
    assert titles >= MAY_BE_EMPTY


@in_module_loop
async def test_every_dashboard_query_runs_in_prometheus_and_returns_data(
    scenario: Scenario,
) -> None:
    prometheus = scenario.prometheus
    targets = dashboard_targets(scenario)
    assert len(targets) > 20

    for title, promql in targets:
        result = prometheus.query(promql)  # a PromQL error fails here
        if title in MAY_BE_EMPTY:
            continue
        if not result:
            # Rates need two scrapes after the first message; wait for them.
            await eventually(lambda q=promql: prometheus.query(q), f"data for {title!r}: {promql}")


@in_module_loop
async def test_the_dashboard_variables_offer_the_exchange_vhost_and_its_workers(
    scenario: Scenario,
) -> None:
    prometheus = scenario.prometheus
    variables = {
        variable["name"]: variable["query"]["query"]
        for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]
        if variable["type"] == "query"
    }

    def offered(name: str) -> set[str]:
        """What Grafana's label_values(SERIES, LABEL) lists: the values of LABEL on SERIES."""
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variables[name])
        assert match is not None, variables[name]
        series, label = match[1], match[2]
        return {row["metric"][label] for row in prometheus.query(f"count by ({label}) ({series})")}

    workers = {f"127.0.0.1:{worker.port}" for worker in scenario.workers}
    await eventually(lambda: scenario.vhost in offered("vhost"), "the vhost among the choices")
    assert offered("instance") == workers
