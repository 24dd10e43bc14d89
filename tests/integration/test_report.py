"""``lienthong report`` on the real RabbitMQ and PostgreSQL: connectivity, backlogs, overdue.

Five agencies on three levels exchange three documents; one recipient
finishes (06), another only registers its copy (03) of a document already
past its DueDate, and nobody reads their inbox. The report must count who
is connected, what waits in each inbox, and the one status not reported in
time, and the workers' exported figures must say the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from exchange.agency import AgencyCode, AgencyGroup
from exchange.demo import LocalAgency, demo_document
from exchange.edxml.model import VIETNAM_TIME, DocumentPackage
from exchange.registry import vhost_of
from exchange.report import (
    Tally,
    add_commands,
    build_report,
    inbox_backlog,
    refresh_metrics,
)
from exchange.status import StatusCode
from exchange.store import gateway as gateway_store
from exchange.store.db import create_pool
from tests.exchange_fixtures import ExchangeUnderTest

pytestmark = pytest.mark.services

GOVERNMENT_OFFICE = "000.00.00.G22"
HOME_AFFAIRS = "000.00.00.G09"
HANOI = "000.00.00.H26"
HANOI_HOME_AFFAIRS = "000.00.01.H26"  # level 2: only receives
SON_VI = "000.46.24.H44"  # level 3: registered, silent
# Queue statistics of the management API are refreshed every 5 s.
STATS_TIMEOUT_S = 20.0


def document(
    sender: LocalAgency, recipients: list[LocalAgency], number: int, *, overdue: bool = False
) -> DocumentPackage:
    made = demo_document(sender, recipients, number, "TEST-BC", "Về việc báo cáo kết nối")
    if overdue:
        yesterday = datetime.now(VIETNAM_TIME).date() - timedelta(days=1)
        made = made.model_copy(update={"due_date": yesterday})
    return made


async def test_report_counts_connected_agencies_inbox_backlogs_and_overdue_statuses(
    exchange: ExchangeUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    started = datetime.now(UTC)
    office = await exchange.register(GOVERNMENT_OFFICE, "Văn phòng Chính phủ")
    ministry = await exchange.register(HOME_AFFAIRS, "Bộ Nội vụ")
    hanoi = await exchange.register(HANOI, "UBND Thành phố Hà Nội")
    department = await exchange.register(HANOI_HOME_AFFAIRS, "Sở Nội vụ Hà Nội")
    await exchange.register(SON_VI, "UBND xã Sơn Vi")
    late = document(office, [ministry, hanoi], 1, overdue=True)

    async with exchange.workers(2):
        for sender, package in (
            (office, late),
            (ministry, document(ministry, [office], 2)),
            (hanoi, document(hanoi, [department], 3)),
        ):
            async with sender.client() as client:
                await client.send_document(package)
        await exchange.wait_settled(4)
        async with ministry.client() as client:
            await client.report_status(late, StatusCode.DONE, "Đã hoàn thành")
        async with hanoi.client() as client:
            await client.report_status(late, StatusCode.ACCEPTED, "Đã vào sổ")
        await exchange.wait_settled(6)

    # Nobody read an inbox: one document waits in each addressee's. The
    # management API's statistics lag, so wait until they show it.
    expected_backlog = {HOME_AFFAIRS: 1, HANOI: 1, GOVERNMENT_OFFICE: 1, HANOI_HOME_AFFAIRS: 1}
    vhost = vhost_of(exchange.settings.amqp_url)
    deadline = time.monotonic() + STATS_TIMEOUT_S
    while True:
        backlog = {i.agency: i.messages for i in await inbox_backlog(exchange.admin, vhost)}
        if {a: n for a, n in backlog.items() if n} == expected_backlog:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"inbox backlog {backlog}, expected {expected_backlog}")
        await asyncio.sleep(0.5)

    # Hà Nội and Sơn Vi connect through the gateway: one enabled system acts
    # for both; a disabled one for the ministry counts for nothing.
    async with exchange.db() as conn:
        await gateway_store.add_system(
            conn, "SYS-HN", "s" * 32, [AgencyCode.parse(HANOI), AgencyCode.parse(SON_VI)]
        )
        await gateway_store.add_system(conn, "SYS-OLD", "s" * 32, [AgencyCode.parse(HOME_AFFAIRS)])
        await gateway_store.set_enabled(conn, "SYS-OLD", False)

    report = await build_report(exchange.settings, started - timedelta(minutes=5))

    connectivity = report.connectivity
    # Connected: the office, the ministry and Hà Nội each sent and received.
    assert connectivity.by_level == {1: Tally(3, 3, 1), 2: Tally(1, 0), 3: Tally(1, 0, 1)}
    assert connectivity.by_group == {
        AgencyGroup.MINISTRY: Tally(2, 2),
        AgencyGroup.PROVINCE: Tally(3, 1, 2),
    }
    assert connectivity.total == Tally(5, 3, 2)
    assert report.gateway is not None
    assert (report.gateway.systems_enabled, report.gateway.systems_disabled) == (1, 1)
    assert (report.gateway.systems_silent, report.gateway.unconfirmed) == (0, 0)
    assert report.inboxes is not None
    assert {i.agency: i.messages for i in report.inboxes} == {**expected_backlog, SON_VI: 0}
    assert report.inboxes[0].messages == 1  # most waiting first
    # Overdue: Hà Nội's copy of the late document (03, not 06); the
    # ministry finished its copy.
    assert report.overdue_total == 1
    (overdue,) = report.overdue
    assert (overdue.sender, overdue.recipient, overdue.state) == (GOVERNMENT_OFFICE, HANOI, "03")
    assert overdue.document_id == late.document_id
    assert report.certificates.counts["valid"] == 5

    # A period that starts after everything happened: nobody connected.
    quiet = await build_report(exchange.settings, datetime.now(UTC))
    assert quiet.connectivity.total == Tally(5, 0, 2)
    assert quiet.overdue_total == 1  # overdue does not depend on the period

    # The command, with --json, as an operator runs it.
    parser = argparse.ArgumentParser()
    services = argparse.ArgumentParser(add_help=False)
    services.add_argument("--amqp-url")
    services.add_argument("--database-url")
    services.add_argument("--rabbitmq-api-url")
    add_commands(parser.add_subparsers(dest="command"), services)
    args = parser.parse_args(
        [
            "report",
            "--json",
            "--since",
            "1h",
            "--amqp-url",
            exchange.settings.amqp_url,
            "--database-url",
            exchange.settings.database_url,
        ]
    )
    capsys.readouterr()
    assert await asyncio.to_thread(args.handler, args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["total"] == {"registered": 5, "connected": 3, "via_gateway": 2}
    assert printed["gateway"]["systems_enabled"] == 1
    assert {row["group"]: row["connected"] for row in printed["by_group"]} == {
        "ministry": 2,
        "province": 1,
    }
    assert printed["overdue_total"] == 1
    assert printed["overdue"][0]["recipient"] == HANOI
    assert {row["agency"]: row["messages"] for row in printed["inboxes"]}[HANOI] == 1

    # The same figures, as the workers export them.
    pool = await create_pool(exchange.settings)
    try:
        await refresh_metrics(pool)
    finally:
        await pool.close()

    def gauge(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    assert gauge("lienthong_agencies_registered", level="1", group="ministry") == 2
    assert gauge("lienthong_agencies_connected", level="1", group="ministry") == 2
    assert gauge("lienthong_agencies_connected", level="1", group="province") == 1
    assert gauge("lienthong_agencies_connected", level="2", group="province") == 0
    assert gauge("lienthong_agencies_registered", level="3", group="province") == 1
    assert gauge("lienthong_overdue_deliveries") == 1
    assert gauge("lienthong_agency_certificates", state="valid") == 5
