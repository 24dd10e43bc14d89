"""The alert rules, their runbooks, and the Alertmanager configuration.

``promtool test rules`` runs deploy/prometheus/alerts.test.yml: synthetic
series in, the alerts that must (and must not) fire out, with every
annotation rendered. These tests make sure that file runs and covers every
alert; that every alert tells the on-call person what it means and links a
runbook that exists; that every code the rules and runbooks name is a real
one; that the inbox alert's agency levels are the agency codes' own; and
that Alertmanager accepts deploy/alertmanager/alertmanager.yml and inhibits
only alerts that exist.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from exchange.agency import AgencyCode
from exchange.failures import Failure
from exchange.reasons import Reason

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOKS = REPO / "docs" / "runbooks"

# What the exchange's operators asked to be alerted about,
# and the one alert a broker outage comes down to.
REQUIRED_ALERTS = {
    "LienthongParkedMessages",
    "LienthongWorkQueueWithoutConsumers",
    "LienthongEndToEndLatencyHigh",
    "LienthongRejectionRateSpike",
    "LienthongInboxNotRead",
    "LienthongCertificateExpiringSoon",
    "LienthongWorkerDown",
    "LienthongBrokerDown",
}
# Every alert's runbook_url: the external label, a slash, a page of docs/runbooks/.
RUNBOOK_URL = re.compile(r"\{\{ \$externalLabels\.runbook_base \}\}/([A-Za-z]+\.md)")
# What an on-call person needs from every runbook page.
RUNBOOK_SECTIONS = ("## What it means", "## Confirm", "## Fix")
# A machine code of a rejection or a transient failure, as written anywhere.
CODE = re.compile(r"\b(?:REJECTED|PARKED|TRANSIENT)_[A-Z0-9_]*[A-Z0-9]\b")
# One label_replace of the inbox recording rule: the level and its pattern.
LEVEL_PATTERN = re.compile(r'"level", "([1-4])", "queue", "([^"]+)"')
INBOX_RULE = "lienthong:inbox_unread_for_a_day:messages_ready"


def rules() -> list[dict[str, Any]]:
    """Every rule of alerts.yml, recording and alerting, in order."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    """The alerting rules by name."""
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def seconds(duration: str) -> int:
    """A Prometheus duration of one unit (``90s``, ``2m``, ``1h``) in seconds."""
    match = re.fullmatch(r"([0-9]+)([smhd])", duration)
    assert match is not None, duration
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def known_codes() -> set[str]:
    """Every code exchange/reasons.py and exchange/failures.py define."""
    return (
        {reason.code for reason in Reason}
        | {failure.code for failure in Failure}
        | {failure.parked_code for failure in Failure}
    )


def tool(name: str, package: str, *, required_in_ci: bool = False) -> str:
    """A command-line tool from a Debian package; the test skips without it (fails under CI
    when ``required_in_ci``: scripts/setup.sh installs it)."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (apt-get install {package})"
        if required_in_ci and os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool binary (Debian package ``prometheus``, installed by scripts/setup.sh)."""
    return tool("promtool", "prometheus; scripts/setup.sh does", required_in_ci=True)


@pytest.fixture(scope="module")
def amtool() -> str:
    """The amtool binary (Debian package ``prometheus-alertmanager``)."""
    return tool("amtool", "prometheus-alertmanager")


def run(command: str, *args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [command, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- promtool -----------------------------------------------------------------------------


def test_promtool_accepts_the_alert_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", ALERTS.name)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_accepts_the_prometheus_configuration(promtool: str) -> None:
    result = run(promtool, "check", "config", PROMETHEUS_CONFIG.name)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_every_alert_fires_on_its_series_and_not_on_its_neighbours(promtool: str) -> None:
    result = run(promtool, "test", "rules", ALERT_TESTS.name)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alerts_cover_what_operators_asked_for_and_each_has_a_firing_test() -> None:
    names = set(alerts())
    tests = ALERT_TESTS.read_text()
    # An alert is proven to fire when some test expects it with labels.
    proven = set(re.findall(r"alertname: (\S+)\n\s+exp_alerts:\n\s+- exp_labels:", tests))

    assert names >= REQUIRED_ALERTS
    assert names - proven == set(), "alerts without a test that makes them fire"
    assert set(re.findall(r"alertname: (\S+)", tests)) <= names, "tests of unknown alerts"


# -- what an alert tells the on-call person -------------------------------------------------


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook() -> None:
    for name, rule in alerts().items():
        annotations = rule.get("annotations", {})

        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert annotations.get("summary"), name
        # What it means, the likely cause, the first step: a few sentences.
        description = annotations.get("description", "")
        assert description.count(". ") >= 2, f"{name}: the description is too short"
        assert "First step" in description, f"{name}: the description gives no first step"
        url = RUNBOOK_URL.fullmatch(annotations.get("runbook_url", ""))
        assert url is not None, f"{name}: runbook_url is not the runbook base and a page"
        page = RUNBOOKS / url[1]
        assert page.is_file(), f"{name}: {page} does not exist"
        text = page.read_text()
        assert name in text.splitlines()[0], f"{page.name}'s title does not name {name}"
        for section in RUNBOOK_SECTIONS:
            assert section in text.splitlines(), f"{page.name} has no {section!r}"


def test_every_runbook_page_belongs_to_an_alert_and_is_listed() -> None:
    urls = [rule["annotations"]["runbook_url"] for rule in alerts().values()]
    pages = {match[1] for url in urls if (match := RUNBOOK_URL.fullmatch(url)) is not None}
    index = (RUNBOOKS / "README.md").read_text()

    assert {page.name for page in RUNBOOKS.glob("*.md")} - {"README.md"} == pages
    for name in alerts():
        assert f"`{name}`" in index, f"docs/runbooks/README.md does not list {name}"


def test_the_runbook_base_is_an_absolute_url_set_in_the_prometheus_configuration() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    base = config["global"]["external_labels"]["runbook_base"]

    assert re.fullmatch(r"https://[^\s/]+/\S*[^/]", base), base


def test_every_code_the_rules_and_runbooks_name_exists() -> None:
    texts = [ALERTS, ALERT_TESTS, ALERTMANAGER_CONFIG, *sorted(RUNBOOKS.glob("*.md"))]
    named = {code: path.name for path in texts for code in CODE.findall(path.read_text())}

    assert named, "no code found: the pattern is wrong"
    unknown = {code: where for code, where in named.items() if code not in known_codes()}
    assert unknown == {}, "codes that exchange/reasons.py and exchange/failures.py do not define"


# -- inboxes per level ----------------------------------------------------------------------


@functools.cache
def level_patterns() -> list[tuple[int, re.Pattern[str]]]:
    """The inbox rule's (level, queue pattern) pairs, innermost label_replace first."""
    (rule,) = [rule for rule in rules() if rule.get("record") == INBOX_RULE]
    # label_replace nests: the innermost's arguments come first in the text.
    pairs = LEVEL_PATTERN.findall(rule["expr"])
    # Prometheus anchors the regular expression at both ends.
    return [(int(level), re.compile(pattern)) for level, pattern in pairs]


def level_of_queue(queue: str) -> int | None:
    """The level the recording rule gives an inbox queue: the last pattern that matched."""
    level = None
    for candidate, pattern in level_patterns():
        if pattern.fullmatch(queue):
            level = candidate
    return level


@pytest.mark.parametrize(
    ("code", "level"),
    [
        ("000.00.00.G22", 1),
        ("000.00.01.H26", 2),
        ("000.00.24.H44", 2),
        ("000.00.10.H26", 2),
        ("000.46.24.H44", 3),
        ("000.10.00.H26", 3),
        ("000.01.00.H26", 3),
        ("010.00.00.G22", 4),
        ("001.46.24.H44", 4),
        ("100.00.00.G09", 4),
    ],
)
def test_the_inbox_rule_gives_each_agency_code_its_level(code: str, level: int) -> None:
    assert AgencyCode.parse(code).level == level
    assert level_of_queue(f"lienthong.inbox.{code}") == level


def group(width: int) -> st.SearchStrategy[str]:
    """One numeric group of a code: zeros half the time (not at this level), else any digits."""
    return st.one_of(st.just("0" * width), st.from_regex(f"[0-9]{{{width}}}", fullmatch=True))


@given(
    st.builds(
        lambda level4, level3, level2, level1: f"{level4}.{level3}.{level2}.{level1}",
        group(3),
        group(2),
        group(2),
        st.from_regex(r"[A-Z][0-9]{2}", fullmatch=True),
    )
)
def test_the_inbox_rule_and_agency_code_agree_on_every_level(code: str) -> None:
    assert level_of_queue(f"lienthong.inbox.{code}") == AgencyCode.parse(code).level


def test_the_inbox_rule_gives_no_level_to_other_queues() -> None:
    assert len(level_patterns()) == 4
    assert level_of_queue("lienthong.work") is None
    assert level_of_queue("lienthong.status.000.00.00.G22") is None


# -- Alertmanager ------------------------------------------------------------------------


def alertmanager() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    return config


def matched_names(matchers: list[str]) -> set[str]:
    """The alert names a list of matchers selects (``alertname="X"`` or ``=~"X|Y"``)."""
    names: set[str] = set()
    for matcher in matchers:
        match = re.fullmatch(r'alertname(=~?)"([^"]+)"', matcher)
        assert match is not None, f"{matcher}: match alerts by name"
        names |= set(match[2].split("|")) if match[1] == "=~" else {match[2]}
    return names


def test_amtool_accepts_the_alertmanager_configuration(amtool: str) -> None:
    result = run(amtool, "check-config", ALERTMANAGER_CONFIG.name, cwd=ALERTMANAGER_CONFIG.parent)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(alertmanager()['inhibit_rules'])} inhibit rules" in result.stdout


def test_every_alert_the_alertmanager_inhibits_exists() -> None:
    names = set(alerts())
    inhibit_rules = alertmanager()["inhibit_rules"]

    assert inhibit_rules
    for rule in inhibit_rules:
        sources = matched_names(rule["source_matchers"])
        targets = matched_names(rule["target_matchers"])
        assert sources <= names, f"unknown source alerts {sources - names}"
        assert targets <= names, f"unknown target alerts {targets - names}"
        assert not sources & targets


def test_a_broker_outage_comes_down_to_one_alert_that_fires_first() -> None:
    (outage,) = [
        rule
        for rule in alertmanager()["inhibit_rules"]
        if matched_names(rule["source_matchers"]) == {"LienthongBrokerDown"}
    ]
    inhibited = matched_names(outage["target_matchers"])
    every = alerts()

    # What an outage sets off: the workers, the queues, retries, latency, the
    # broker's metrics.
    assert {
        "LienthongWorkerDisconnected",
        "LienthongWorkerNotConsuming",
        "LienthongWorkQueueWithoutConsumers",
        "LienthongWorkBacklog",
        "LienthongTransientFailures",
        "LienthongInboxNotRead",
        "LienthongEndToEndLatencyHigh",
        "LienthongEndToEndLatencyCritical",
        "RabbitMQMetricsDown",
    } <= inhibited
    # A dead worker process is another problem.
    assert "LienthongWorkerDown" not in inhibited
    # The alerts it explains wait longer than it does, so it arrives first.
    broker_down = seconds(every["LienthongBrokerDown"]["for"])
    for name in inhibited:
        waits = every[name].get("for")
        if waits is not None:
            assert seconds(waits) > broker_down, name
