"""The connectivity report (thống kê kết nối), as the national rollout counted it.

``lienthong report`` says, for a period (30 days unless ``--since`` says
otherwise):

* per level (1 to 4) and per agency group (ministries, provinces, ...): how
  many agencies are registered and how many are *connected*, that is sent
  and received at least one document in the period;
* the backlog of each inbox (documents waiting in ``lienthong.inbox.<code>``,
  from RabbitMQ's management API);
* the statuses not reported in time: deliveries of documents past their
  DueDate whose recipient has not reported 06 (done) nor returned them (02);
* the state of the agencies' signing certificates;
* the gateway (``lienthong gateway``): how many agencies connect through it
  (per level and group, beside registered and connected), its systems, and
  what waits in its mailbox.

The same counts are exported as metrics by every worker
(:func:`refresh_metrics`, called by the worker's watchdog every minute), so
dashboards and alerts see them without anyone running the command.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509

from exchange import metrics
from exchange.agency import AgencyCode, AgencyGroup
from exchange.broker.topology import INBOX_QUEUE_PREFIX
from exchange.commands import (
    EXIT_OK,
    CommandError,
    TimeExpressionError,
    parse_time,
    print_json,
    run,
    settings_from_args,
)
from exchange.edxml.model import VIETNAM_TIME
from exchange.store import queries

if TYPE_CHECKING:
    from exchange.broker.admin import BrokerAdmin
    from exchange.settings import Settings
    from exchange.store.db import Connection, Pool

# The period of the report, and of the connectivity figures the workers export.
DEFAULT_PERIOD = timedelta(days=30)
# A certificate expiring within this is "expiring": time to issue the next one
# and register it before the agency's packages start being refused.
CERTIFICATE_WARNING = timedelta(days=30)
# How many overdue deliveries the report lists (it always gives the total).
DEFAULT_OVERDUE_LIMIT = 100

LEVEL_NAMES = {
    1: "ministries, provinces, central bodies",
    2: "departments, districts",
    3: "communes, units below departments",
    4: "units at level 4",
}
GROUP_NAMES = {
    AgencyGroup.PARTY: "Party bodies",
    AgencyGroup.PRESIDENT_OFFICE: "Office of the President",
    AgencyGroup.NATIONAL_ASSEMBLY: "National Assembly",
    AgencyGroup.SUPREME_COURT: "Supreme People's Court",
    AgencyGroup.SUPREME_PROCURACY: "Supreme People's Procuracy",
    AgencyGroup.STATE_AUDIT: "State Audit",
    AgencyGroup.MINISTRY: "ministries and government agencies",
    AgencyGroup.PROVINCE: "provinces (People's Committees)",
    AgencyGroup.SOCIO_POLITICAL: "central socio-political organisations",
    AgencyGroup.SOCIAL_PROFESSIONAL: "social and professional organisations",
    AgencyGroup.PROVINCIAL_COUNCIL: "provincial People's Councils",
    AgencyGroup.OTHER: "other letters",
}


def group_label(group: AgencyGroup) -> str:
    """The metric label of a group: ``ministry``, ``province``, ..."""
    return group.name.lower()


# -- connectivity -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgencyActivity:
    """What one registered agency did in the period."""

    code: AgencyCode
    sent: bool
    received: bool
    # Some enabled gateway system acts for it (it connects over the axis protocol).
    via_gateway: bool = False

    @property
    def connected(self) -> bool:
        """Connected: it sent and it received at least one document."""
        return self.sent and self.received


@dataclass(frozen=True, slots=True)
class Tally:
    """Registered and connected agencies of one slice of the directory."""

    registered: int = 0
    connected: int = 0
    # Of the registered, those an enabled gateway system acts for.
    via_gateway: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.registered + other.registered,
            self.connected + other.connected,
            self.via_gateway + other.via_gateway,
        )


@dataclass(frozen=True)
class Connectivity:
    """The counts per level, per group, per (level, group), and in total."""

    by_level: dict[int, Tally]
    by_group: dict[AgencyGroup, Tally]
    by_level_and_group: dict[tuple[int, AgencyGroup], Tally]
    total: Tally


def tally(activities: Iterable[AgencyActivity]) -> Connectivity:
    """Count registered and connected agencies per level, per group and in total."""
    cells: dict[tuple[int, AgencyGroup], Tally] = {}
    for activity in activities:
        key = (activity.code.level, activity.code.group)
        cells[key] = cells.get(key, Tally()) + Tally(
            1, int(activity.connected), int(activity.via_gateway)
        )
    by_level: dict[int, Tally] = {}
    by_group: dict[AgencyGroup, Tally] = {}
    for (level, group), cell in cells.items():
        by_level[level] = by_level.get(level, Tally()) + cell
        by_group[group] = by_group.get(group, Tally()) + cell
    total = sum(cells.values(), Tally())
    order = list(AgencyGroup)
    return Connectivity(
        by_level=dict(sorted(by_level.items())),
        by_group=dict(sorted(by_group.items(), key=lambda item: order.index(item[0]))),
        by_level_and_group=dict(
            sorted(cells.items(), key=lambda item: (item[0][0], order.index(item[0][1])))
        ),
        total=total,
    )


# -- certificates -------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateSummary:
    """The registered agencies' signing certificates, counted by state."""

    counts: dict[str, int]
    earliest_expiry: datetime | None


def certificate_summary(
    pems: Iterable[str | None], now: datetime, *, warning: timedelta = CERTIFICATE_WARNING
) -> CertificateSummary:
    """Count certificates as valid, expiring (within ``warning``), expired, missing, unreadable."""
    counts = dict.fromkeys(metrics.CERTIFICATE_STATES, 0)
    earliest: datetime | None = None
    for pem in pems:
        if not pem:
            counts["missing"] += 1
            continue
        try:
            expiry = x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc
        except ValueError:
            counts["unreadable"] += 1
            continue
        if expiry <= now:
            counts["expired"] += 1
        elif expiry - now <= warning:
            counts["expiring"] += 1
        else:
            counts["valid"] += 1
        earliest = expiry if earliest is None else min(earliest, expiry)
    return CertificateSummary(counts, earliest)


# -- the report -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InboxBacklog:
    """One agency's inbox as RabbitMQ counts it."""

    agency: str
    queue: str
    messages: int
    consumers: int


@dataclass(frozen=True, slots=True)
class OverdueDelivery:
    """A document past its DueDate at a recipient that has not reported 06."""

    document_id: str
    sender: str
    recipient: str
    due_date: date
    state: str | None


@dataclass(frozen=True)
class Report:
    """Everything ``lienthong report`` prints."""

    since: datetime
    until: datetime
    connectivity: Connectivity
    certificates: CertificateSummary
    overdue_total: int
    overdue: list[OverdueDelivery]
    inboxes: list[InboxBacklog] | None = None
    # Why the inbox backlog is missing (the management API did not answer).
    inboxes_unavailable: str | None = None
    activities: list[AgencyActivity] = field(default_factory=list)
    gateway: GatewaySummary | None = None


@dataclass(frozen=True)
class GatewaySummary:
    """The gateway's systems and mailbox, as the report shows them."""

    systems_enabled: int
    systems_disabled: int
    # Enabled systems with no request for a day (LienthongGatewaySystemSilent).
    systems_silent: int
    # Mailbox items not confirmed, and when the oldest of them arrived.
    unconfirmed: int
    oldest_unconfirmed: datetime | None


async def directory_figures(
    conn: Connection, since: datetime, until: datetime
) -> tuple[list[AgencyActivity], list[str | None]]:
    """Each agency's activity in ``[since, until)``, and every agency's certificate (PEM)."""
    rows = await queries.agency_activity(conn, since, until)
    activities = [
        AgencyActivity(
            AgencyCode.parse(row["code"]), row["sent"], row["received"], row["via_gateway"]
        )
        for row in rows
    ]
    return activities, [row["certificate_pem"] for row in rows]


async def count_overdue(conn: Connection, today: date) -> int:
    """Deliveries of documents due before ``today`` whose recipient has not answered."""
    return await queries.count_overdue_deliveries(conn, today)


async def list_overdue(conn: Connection, today: date, limit: int) -> list[OverdueDelivery]:
    """The first ``limit`` overdue deliveries, longest overdue first."""
    rows = await queries.list_overdue_deliveries(conn, today, limit)
    return [
        OverdueDelivery(
            row["document_id"], row["sender"], row["recipient"], row["due_date"], row["state"]
        )
        for row in rows
    ]


async def inbox_backlog(admin: BrokerAdmin, vhost: str) -> list[InboxBacklog]:
    """Every agency inbox of ``vhost``, most documents waiting first."""
    queues = await admin.list_queues(vhost)
    inboxes = [
        InboxBacklog(q.name.removeprefix(INBOX_QUEUE_PREFIX), q.name, q.messages, q.consumers)
        for q in queues
        if q.name.startswith(INBOX_QUEUE_PREFIX)
    ]
    return sorted(inboxes, key=lambda inbox: (-inbox.messages, inbox.queue))


# An enabled system silent this long is counted as silent (the alert's threshold).
SILENT_AFTER = timedelta(days=1)


async def gateway_summary(conn: Connection, now: datetime) -> GatewaySummary:
    """The gateway's systems (enabled, disabled, silent for a day) and unconfirmed mail."""
    from exchange.store import gateway as store

    systems = await store.list_systems(conn)
    enabled = [s for s in systems if s.enabled]
    silent = [s for s in enabled if (s.last_seen_at or s.created_at) < now - SILENT_AFTER]
    depths = await store.mailbox_depths(conn)
    return GatewaySummary(
        systems_enabled=len(enabled),
        systems_disabled=len(systems) - len(enabled),
        systems_silent=len(silent),
        unconfirmed=sum(depths.values()),
        oldest_unconfirmed=await store.oldest_unconfirmed(conn),
    )


def today_in_vietnam(now: datetime) -> date:
    """The calendar day in Vietnam at ``now``: DueDates are Vietnamese dates."""
    return now.astimezone(VIETNAM_TIME).date()


async def build_report(
    settings: Settings,
    since: datetime,
    *,
    until: datetime | None = None,
    overdue_limit: int = DEFAULT_OVERDUE_LIMIT,
    admin: BrokerAdmin | None = None,
) -> Report:
    """Read the directory and the deliveries from the database, the inboxes from the broker."""
    from exchange.broker.admin import BrokerAdmin, BrokerAdminError
    from exchange.registry import vhost_of
    from exchange.store.db import connect

    until = until or datetime.now(UTC)
    today = today_in_vietnam(until)
    conn = await connect(settings)
    try:
        activities, pems = await directory_figures(conn, since, until)
        overdue_total = await count_overdue(conn, today)
        overdue = await list_overdue(conn, today, overdue_limit)
        gateway = await gateway_summary(conn, until)
    finally:
        await conn.close()
    inboxes: list[InboxBacklog] | None = None
    unavailable = None
    try:
        admin = admin or BrokerAdmin.from_settings(settings)
        inboxes = await inbox_backlog(admin, vhost_of(settings.amqp_url))
    except (BrokerAdminError, ValueError) as error:
        unavailable = str(error)
    return Report(
        since=since,
        until=until,
        connectivity=tally(activities),
        certificates=certificate_summary(pems, until),
        overdue_total=overdue_total,
        overdue=overdue,
        inboxes=inboxes,
        inboxes_unavailable=unavailable,
        activities=activities,
        gateway=gateway,
    )


# -- metrics ---------------------------------------------------------------------------


def export_metrics(
    connectivity: Connectivity, overdue_total: int, certificates: CertificateSummary, now: datetime
) -> None:
    """Set the directory gauges (connectivity, overdue deliveries, certificates)."""
    # Cleared first: a (level, group) with no agency left must not keep its
    # last count.
    metrics.AGENCIES_REGISTERED.clear()
    metrics.AGENCIES_CONNECTED.clear()
    for (level, group), cell in connectivity.by_level_and_group.items():
        labels = (str(level), group_label(group))
        metrics.AGENCIES_REGISTERED.labels(*labels).set(cell.registered)
        metrics.AGENCIES_CONNECTED.labels(*labels).set(cell.connected)
    metrics.OVERDUE_DELIVERIES.set(overdue_total)
    for state, count in certificates.counts.items():
        metrics.CERTIFICATES.labels(state).set(count)
    earliest = certificates.earliest_expiry
    metrics.CERTIFICATE_EARLIEST_EXPIRY.set(
        float("inf") if earliest is None else earliest.timestamp()
    )
    metrics.DIRECTORY_REFRESHED.set(now.timestamp())


async def refresh_metrics(pool: Pool, *, period: timedelta = DEFAULT_PERIOD) -> None:
    """Compute the directory figures over the last ``period`` and export them."""
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        activities, pems = await directory_figures(conn, now - period, now)
        overdue_total = await count_overdue(conn, today_in_vietnam(now))
    export_metrics(tally(activities), overdue_total, certificate_summary(pems, now), now)


# -- output ------------------------------------------------------------------------------


def _tally_json(cell: Tally) -> dict[str, int]:
    return {
        "registered": cell.registered,
        "connected": cell.connected,
        "via_gateway": cell.via_gateway,
    }


def report_json(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data (``lienthong report --json``)."""
    connectivity = report.connectivity
    earliest = report.certificates.earliest_expiry
    return {
        "since": report.since.isoformat(),
        "until": report.until.isoformat(),
        "connected_means": "sent and received at least one document in the period",
        "by_level": [
            {"level": level, "name": LEVEL_NAMES[level], **_tally_json(cell)}
            for level, cell in connectivity.by_level.items()
        ],
        "by_group": [
            {
                "group": group_label(group),
                "letter": group.value,
                "name": GROUP_NAMES[group],
                **_tally_json(cell),
            }
            for group, cell in connectivity.by_group.items()
        ],
        "total": _tally_json(connectivity.total),
        "inboxes": None
        if report.inboxes is None
        else [
            {
                "agency": inbox.agency,
                "queue": inbox.queue,
                "messages": inbox.messages,
                "consumers": inbox.consumers,
            }
            for inbox in report.inboxes
        ],
        "inboxes_unavailable": report.inboxes_unavailable,
        "overdue_total": report.overdue_total,
        "overdue": [
            {
                "document_id": item.document_id,
                "sender": item.sender,
                "recipient": item.recipient,
                "due_date": item.due_date.isoformat(),
                "state": item.state,
            }
            for item in report.overdue
        ],
        "certificates": {
            **report.certificates.counts,
            "earliest_expiry": None if earliest is None else earliest.isoformat(),
        },
        "gateway": None if report.gateway is None else _gateway_json(report.gateway),
    }


def _gateway_json(gateway: GatewaySummary) -> dict[str, Any]:
    oldest = gateway.oldest_unconfirmed
    return {
        "systems_enabled": gateway.systems_enabled,
        "systems_disabled": gateway.systems_disabled,
        "systems_silent": gateway.systems_silent,
        "unconfirmed": gateway.unconfirmed,
        "oldest_unconfirmed": None if oldest is None else oldest.isoformat(),
    }


def format_report(report: Report) -> str:
    """The report for a terminal."""
    local = "%Y-%m-%d %H:%M"
    since = report.since.astimezone(VIETNAM_TIME).strftime(local)
    until = report.until.astimezone(VIETNAM_TIME).strftime(local)
    lines = [
        f"Connectivity from {since} to {until} (Vietnam time)",
        "connected = sent and received at least one document in the period; "
        "gateway = connects through the gateway",
        "",
        f"{'by level':<48} {'registered':>10} {'connected':>10} {'gateway':>8}",
    ]
    connectivity = report.connectivity
    for level, cell in connectivity.by_level.items():
        name = f"  {level}  {LEVEL_NAMES[level]}"
        lines.append(_tally_line(name, cell))
    lines.append(f"{'by group':<48}")
    for group, cell in connectivity.by_group.items():
        name = f"  {group.value}  {GROUP_NAMES[group]}"
        lines.append(_tally_line(name, cell))
    total = connectivity.total
    lines.append(_tally_line("total", total))
    lines.append("")
    if report.inboxes is None:
        lines.append(f"Inbox backlog: unavailable ({report.inboxes_unavailable})")
    else:
        waiting = [inbox for inbox in report.inboxes if inbox.messages]
        lines.append(
            f"Inbox backlog: {sum(i.messages for i in waiting)} documents waiting "
            f"in {len(waiting)} of {len(report.inboxes)} inboxes"
        )
        for inbox in waiting:
            lines.append(
                f"  {inbox.agency:<16} {inbox.messages:>6} waiting, "
                f"{inbox.consumers} consumer{'s' if inbox.consumers != 1 else ''}"
            )
    lines.append("")
    lines.append(f"Statuses not reported in time (past DueDate, no 06): {report.overdue_total}")
    for item in report.overdue:
        state = item.state or "none"
        lines.append(
            f"  {item.document_id}  {item.sender} -> {item.recipient}  "
            f"due {item.due_date.isoformat()}  latest status {state}"
        )
    if report.overdue_total > len(report.overdue):
        lines.append(f"  ... and {report.overdue_total - len(report.overdue)} more")
    counts = report.certificates.counts
    earliest = report.certificates.earliest_expiry
    lines.append("")
    lines.append(
        "Certificates: "
        + ", ".join(f"{counts[state]} {state}" for state in metrics.CERTIFICATE_STATES)
        + ("" if earliest is None else f"; the first expires {earliest:%Y-%m-%d}")
    )
    if report.gateway is not None:
        lines.append("")
        lines.append(_gateway_line(report.gateway, local))
    return "\n".join(lines)


def _tally_line(name: str, cell: Tally) -> str:
    return f"{name:<48} {cell.registered:>10} {cell.connected:>10} {cell.via_gateway:>8}"


def _gateway_line(gateway: GatewaySummary, local: str) -> str:
    oldest = gateway.oldest_unconfirmed
    since = (
        "" if oldest is None else f", the oldest since {oldest.astimezone(VIETNAM_TIME):{local}}"
    )
    return (
        f"Gateway: {gateway.systems_enabled} systems enabled "
        f"({gateway.systems_silent} silent for a day), {gateway.systems_disabled} disabled; "
        f"mailbox: {gateway.unconfirmed} items not confirmed{since}"
    )


# -- the command ------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    """Print the connectivity report: agencies connected, inbox backlogs, overdue statuses."""
    now = datetime.now(UTC)
    try:
        since = parse_time(args.since, now=now)
    except TimeExpressionError as error:
        raise CommandError(f"--since {error}") from None
    if since >= now:
        raise CommandError(f"--since {args.since} is not in the past")
    settings = settings_from_args(args)

    async def reporting() -> int:
        report = await build_report(settings, since, until=now, overdue_limit=args.overdue_limit)
        if args.json:
            print_json(report_json(report))
        else:
            print(format_report(report))
        return EXIT_OK

    return run(reporting())


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    services_parent: argparse.ArgumentParser,
) -> None:
    """Add ``lienthong report`` to the command line (``services_parent``: connection options)."""
    report = commands.add_parser(
        "report",
        parents=[services_parent],
        help="connectivity report: agencies connected, inbox backlogs, overdue statuses",
    )
    report.add_argument(
        "--since",
        default="30d",
        help="start of the period: an age (30d, 12h, 2w) or a date (2025-01-31); default 30d",
    )
    report.add_argument(
        "--overdue-limit",
        type=int,
        default=DEFAULT_OVERDUE_LIMIT,
        help="list at most this many overdue deliveries (the total is always given)",
    )
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.set_defaults(handler=cmd_report)
