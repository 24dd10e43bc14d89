"""The four-level demo: agencies from the Government Office down to a commune.

``lienthong demo`` registers six agencies, issues their certificates from a
development CA, runs workers, sends documents down and up the hierarchy,
has every recipient report its progress (01, 03, 04, 05, 06, and one return,
02), and prints the table each sender sees, built from the receipts and
statuses that arrived on its own status queue.

:class:`LocalExchange` is also what the integration tests use to stand up
agencies against a real broker and database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from exchange.agency import AgencyCode
from exchange.client import AgencyClient, StatusItem
from exchange.edxml.model import (
    VIETNAM_TIME,
    Code,
    DocumentPackage,
    DocumentType,
    Organization,
    SignerInfo,
)
from exchange.edxml.writer import new_document
from exchange.pki import Credential, KeyType, create_ca, issue_agency_certificate
from exchange.registry import AgencyExistsError, change_agency, prepare, register_agency
from exchange.report import refresh_metrics
from exchange.settings import Settings
from exchange.status import MessageKind, StatusCode, TransportOutcome, life_order
from exchange.worker import run_workers

# The demo's cast, one or more per administrative level.
DEMO_AGENCIES: tuple[tuple[str, str], ...] = (
    ("000.00.00.G22", "Văn phòng Chính phủ"),  # central
    ("000.00.00.G09", "Bộ Nội vụ"),  # ministry
    ("000.00.00.H26", "UBND Thành phố Hà Nội"),  # province
    ("000.00.01.H26", "Sở Nội vụ Hà Nội"),  # department
    ("000.00.24.H44", "UBND huyện Lâm Thao, Phú Thọ"),  # district
    ("000.46.24.H44", "UBND xã Sơn Vi, Lâm Thao"),  # commune
)


@dataclass
class LocalAgency:
    """A registered agency with its signing credential and broker login."""

    code: AgencyCode
    name: str
    credential: Credential
    amqp_url: str

    @property
    def organization(self) -> Organization:
        """How the agency names itself in packages."""
        return Organization(organ_id=self.code, organ_name=self.name)

    def client(self) -> AgencyClient:
        """A client logged in as this agency."""
        return AgencyClient(
            self.code, self.amqp_url, credential=self.credential, organization=self.organization
        )


@dataclass
class LocalExchange:
    """A CA, registered agencies and running workers, on a broker and database."""

    settings: Settings
    keys_dir: Path
    agencies: dict[AgencyCode, LocalAgency] = field(default_factory=dict)
    ca: Credential | None = None

    def __post_init__(self) -> None:
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        ca_cert = self.keys_dir / "ca.cert.pem"
        self.ca = (
            Credential.read(self.keys_dir, "ca")
            if ca_cert.exists()
            else create_ca(self.keys_dir, common_name="lienthong demo CA")
        )
        self.settings = self.settings.model_copy(update={"trust": ca_cert})

    async def prepare(self) -> None:
        """Apply migrations and declare the core topology."""
        await prepare(self.settings)

    async def register(
        self,
        code: str,
        name: str,
        *,
        broker_user: str | None = None,
        subscriptions: Sequence[str] = (),
        key_type: KeyType = KeyType.RSA_2048,
    ) -> LocalAgency:
        """Issue a certificate for an agency and register it on the exchange."""
        agency = AgencyCode.parse(code)
        assert self.ca is not None
        credential = issue_agency_certificate(
            self.ca, agency, common_name=name, key_type=key_type, directory=self.keys_dir
        )
        try:
            registration = await register_agency(
                self.settings,
                agency,
                name,
                certificate_pem=credential.cert_pem.decode(),
                subscriptions=subscriptions,
                broker_user=broker_user,
            )
        except AgencyExistsError:
            # The demo run again on the same database: its new certificate and
            # a new password for the broker user it had.
            registration = await change_agency(
                self.settings,
                agency,
                name=name,
                certificate_pem=credential.cert_pem.decode(),
                subscriptions=subscriptions,
                new_password=True,
            )
        local = LocalAgency(agency, name, credential, registration.amqp_url)
        self.agencies[agency] = local
        return local

    @contextlib.asynccontextmanager
    async def workers(self, count: int = 1) -> AsyncIterator[None]:
        """Run ``count`` workers in the background for the duration of the block."""
        stop = asyncio.Event()
        ready = asyncio.Event()

        async def started(_: object) -> None:
            ready.set()

        task = asyncio.create_task(
            run_workers(
                self.settings,
                count=count,
                stop=stop,
                on_ready=started,
                refresh_figures=refresh_metrics,
            )
        )
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiter.cancel()
            task.result()  # raises what stopped the workers from starting
        try:
            yield
        finally:
            stop.set()
            await task


def demo_document(
    sender: LocalAgency,
    recipients: Sequence[LocalAgency],
    number: int,
    notation: str,
    subject: str,
    *,
    type_name: str = "Công văn",
) -> DocumentPackage:
    """A small official letter from ``sender`` to ``recipients``."""
    today = datetime.now(VIETNAM_TIME).date()
    return new_document(
        sender=sender.organization,
        recipients=[r.organization for r in recipients],
        code=Code(code_number=str(number), code_notation=notation),
        subject=subject,
        promulgation_date=today,
        place="Hà Nội",
        document_type=DocumentType(type="1", type_detail="0", type_name=type_name),
        signer=SignerInfo(competence="TM.", position="Chánh Văn phòng", full_name="Nguyễn Văn A"),
        due_date=today + timedelta(days=10),
    )


# How long an agency's QLVB waits for one more item before it stops reading:
# long enough for the workers to handle what was just sent.
INBOX_IDLE_S = 3.0

# Each recipient's progress, in the order it reports; one recipient returns.
NORMAL_PROGRESS = (
    (StatusCode.ARRIVED, "Phần mềm QLVB đã nhận"),
    (StatusCode.ACCEPTED, "Văn thư đã vào sổ văn bản đến"),
    (StatusCode.ASSIGNED, "Lãnh đạo đã phân công xử lý"),
    (StatusCode.PROCESSING, "Đang xử lý"),
    (StatusCode.DONE, "Đã hoàn thành xử lý"),
)
RETURN_PROGRESS = (
    (StatusCode.ARRIVED, "Phần mềm QLVB đã nhận"),
    (StatusCode.RETURNED, "Văn bản gửi nhầm nơi nhận, trả lại"),
)


@dataclass
class SenderView:
    """What one sender learned from its status queue: the latest news per document x recipient.

    Statuses may arrive out of order (competing workers); the latest is the
    one with the latest Timestamp, ties broken by the document's life order.
    """

    rows: dict[tuple[str, str], tuple[tuple[datetime, int], str]] = field(default_factory=dict)

    def note(self, document: str, recipient: str, news: str, when: tuple[datetime, int]) -> None:
        """Remember news of a document at a recipient, if it is the latest so far."""
        known = self.rows.get((document, recipient))
        if known is None or when >= known[0]:
            self.rows[(document, recipient)] = (when, news)

    def read(self, item: StatusItem) -> None:
        """Take in one item of the sender's status queue."""
        if item.is_receipt:
            receipt = item.receipt
            if receipt.kind is not MessageKind.DOCUMENT:
                return  # the receipt of a status this agency reported
            moment = (receipt.at.astimezone(VIETNAM_TIME).replace(tzinfo=None), -1)
            news = receipt.outcome.value
            if receipt.outcome is not TransportOutcome.DELIVERED:
                news = f"{news}: {receipt.reason_code}"
            self.note(receipt.document_id or "?", receipt.recipient, news, moment)
            return
        status = item.status
        self.note(
            status.response_for.document_id or "?",
            str(status.sender.organ_id),
            STATUS_NAMES[status.status_code],
            (status.timestamp, life_order(status.status_code)),
        )


STATUS_NAMES = {
    StatusCode.ARRIVED: "01 đã đến",
    StatusCode.RETURNED: "02 trả lại",
    StatusCode.ACCEPTED: "03 đã tiếp nhận",
    StatusCode.ASSIGNED: "04 phân công",
    StatusCode.PROCESSING: "05 đang xử lý",
    StatusCode.DONE: "06 hoàn thành",
    StatusCode.RECALL_REQUESTED: "13 yêu cầu lấy lại",
    StatusCode.RECALL_AGREED: "15 đồng ý lấy lại",
    StatusCode.RECALL_REFUSED: "16 từ chối lấy lại",
}


async def run_demo(settings: Settings, keys_dir: Path, *, workers: int = 2) -> str:
    """Run the whole demo and return the table every sender would see."""
    exchange = LocalExchange(settings, keys_dir)
    await exchange.prepare()
    cast = {}
    for code, name in DEMO_AGENCIES:
        cast[code] = await exchange.register(code, name)
        print(f"registered {code}  level {cast[code].code.level}  {name}")
    gov, ministry, hanoi, department, district, commune = (cast[c] for c, _ in DEMO_AGENCIES)
    # Down and up the hierarchy; the first goes to several recipients at once.
    plan = [
        (gov, [ministry, hanoi, district], 101, "VPCP-TH", "Về việc triển khai liên thông văn bản"),
        (hanoi, [department], 202, "UBND-KSTTHC", "Giao Sở Nội vụ hướng dẫn thực hiện"),
        (district, [commune], 303, "UBND-VP", "Triển khai tới cấp xã"),
        (commune, [district], 44, "UBND", "Báo cáo kết quả thực hiện"),
        (ministry, [gov], 505, "BNV-VP", "Báo cáo Văn phòng Chính phủ"),
    ]
    views: dict[AgencyCode, SenderView] = {}
    async with exchange.workers(workers):
        sent: list[tuple[LocalAgency, DocumentPackage]] = []
        for sender, recipients, number, notation, subject in plan:
            document = demo_document(sender, recipients, number, notation, subject)
            async with sender.client() as client:
                await client.send_document(document)
            sent.append((sender, document))
            to = ", ".join(str(r.code) for r in recipients)
            print(f"sent {number}/{notation} from {sender.code} to {to}")
        # Each recipient reads its inbox and reports, all at once as real
        # agencies would; the district returns the commune's report (a 02).
        await asyncio.gather(
            *(
                _work_inbox(recipient, returns_from=commune if recipient is district else None)
                for recipient in cast.values()
            )
        )
        # Every sender reads its status queue: receipts, then statuses.
        for sender, _ in sent:
            views.setdefault(sender.code, SenderView())
        await asyncio.gather(*(_read_statuses(cast[str(c)], v) for c, v in views.items()))
    return format_views(views)


async def _work_inbox(recipient: LocalAgency, *, returns_from: LocalAgency | None) -> None:
    """A recipient's QLVB: take each document, report its progress, acknowledge it."""
    async with recipient.client() as client:
        async for item in client.inbox(idle_timeout=INBOX_IDLE_S):
            document = item.package
            returns = returns_from is not None and document.sender.organ_id == returns_from.code
            progress = RETURN_PROGRESS if returns else NORMAL_PROGRESS
            base = datetime.now(VIETNAM_TIME).replace(tzinfo=None, microsecond=0)
            for step, (code, description) in enumerate(progress):
                at = base + timedelta(seconds=step)
                await client.report_status(document, code, description, at=at)
            await item.ack()
            print(
                f"{recipient.code} received {document.code.code_number}/"
                f"{document.code.code_notation} and reported "
                + ", ".join(c.value for c, _ in progress)
            )


async def _read_statuses(sender: LocalAgency, view: SenderView) -> None:
    """A sender's QLVB: read every receipt and status waiting for it."""
    async with sender.client() as client:
        async for news in client.statuses(idle_timeout=INBOX_IDLE_S):
            view.read(news)
            await news.ack()


def format_views(views: dict[AgencyCode, SenderView]) -> str:
    """The demo's closing table: sender, document, recipient, latest status."""
    lines = [f"{'sender':<14} {'document':<44} {'recipient':<14} latest status"]
    lines.append("-" * len(lines[0]) + "-" * 12)
    for sender, view in views.items():
        for (document, recipient), (_, news) in sorted(view.rows.items()):
            lines.append(f"{sender!s:<14} {document:<44} {recipient:<14} {news}")
    return "\n".join(lines)
