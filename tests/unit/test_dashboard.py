"""The Grafana dashboard imports into an existing Grafana, and every query follows its variables.

Grafana's import asks for each ``__inputs`` entry (here the Prometheus
datasource) and writes the choice wherever ``${DS_PROMETHEUS}`` appears: in
the ``datasource`` variable's default. Every panel and query reads that
variable, so the datasource can also be switched on the dashboard, and a
provisioned copy (deploy/grafana/provisioning/) falls back to the default
Prometheus datasource. The ``vhost`` variable chooses the exchange's
RabbitMQ vhost for the queue panels, ``instance`` the worker processes for
the worker panels.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "lienthong.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# A metric selector in a query: the name, and its label matchers if any.
SELECTOR = re.compile(
    r"\b(lienthong_[a-z0-9_]+|lienthong:[a-z0-9_:]+|rabbitmq_detailed_queue_[a-z_]+|up)"
    r"(\{[^}]*\})?"
)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels that show something (not the rows)."""
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def test_the_import_asks_for_a_prometheus_datasource_and_puts_it_in_the_variable(
    dashboard: dict[str, Any],
) -> None:
    (source,) = dashboard["__inputs"]
    text = DASHBOARD.read_text()

    assert source["name"] == "DS_PROMETHEUS"
    assert (source["type"], source["pluginId"]) == ("datasource", "prometheus")
    datasource = variables(dashboard)["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    assert datasource["current"]["value"] == "${DS_PROMETHEUS}"
    # The variable's default is the only place the import writes to.
    assert text.count("${DS_PROMETHEUS}") == 2
    # Importable as a new dashboard: no id of the Grafana it came from.
    assert dashboard["id"] is None


def test_the_requirements_name_grafana_prometheus_and_every_panel_type(
    dashboard: dict[str, Any],
) -> None:
    required = {(item["type"], item["id"]) for item in dashboard["__requires"]}

    assert ("grafana", "grafana") in required
    assert ("datasource", "prometheus") in required
    assert {("panel", panel["type"]) for panel in panels(dashboard)} <= required


def test_every_panel_and_query_reads_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    shown = panels(dashboard)

    assert len(shown) > 20
    for panel in shown:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for name in ("vhost", "instance"):
        assert variables(dashboard)[name]["datasource"] == DATASOURCE, name


def test_the_vhost_and_instance_variables_come_from_the_scraped_series(
    dashboard: dict[str, Any],
) -> None:
    found = variables(dashboard)

    assert list(found) == ["datasource", "vhost", "instance"]
    vhost, instance = found["vhost"], found["instance"]
    assert vhost["type"] == instance["type"] == "query"
    assert re.fullmatch(
        r"label_values\(rabbitmq_detailed_queue_\w+\{[^}]*\}, vhost\)", vhost["query"]["query"]
    )
    assert re.fullmatch(
        r"label_values\(up\{job=\"lienthong-worker\"\}, instance\)", instance["query"]["query"]
    )
    # One exchange (vhost) at a time; any set of workers, all by default.
    assert not vhost["multi"] and not vhost["includeAll"]
    assert instance["multi"] and instance["includeAll"] and instance["allValue"] == ".*"


def test_every_query_is_scoped_by_the_vhost_or_the_instances(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        for target in panel["targets"]:
            selectors = SELECTOR.findall(target["expr"])
            assert selectors, f"{panel['title']}: no metric"
            for name, matchers in selectors:
                from_rabbitmq = name.startswith(("rabbitmq_", "lienthong:inbox"))
                wanted = 'vhost="$vhost"' if from_rabbitmq else 'instance=~"$instance"'
                assert wanted in matchers, f"{panel['title']}: {name} without {wanted}"


def test_the_panels_have_unique_ids_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    every = dashboard["panels"]
    ids = [panel["id"] for panel in every]
    cells: dict[tuple[int, int], str] = {}

    assert len(ids) == len(set(ids))
    for panel in every:
        place = panel["gridPos"]
        assert place["x"] + place["w"] <= 24, panel["title"]
        for x in range(place["x"], place["x"] + place["w"]):
            for y in range(place["y"], place["y"] + place["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
