"""The four-level demo: agencies from the Government Office down to a commune.

``lienthong demo`` registers six agencies, issues their certificates from a
development CA, runs workers, sends documents down and up the hierarchy,
has every recipient report its progress (01, 03, 04, 05, 06, and one return,
02), and prints the table each sender sees, built from the receipts and
statuses that arrived on its own status queue.

With ``--via-gateway`` the district of Phú Thọ and its commune connect the
way most document-management systems in service do: through the gateway
(``lienthong gateway``, run in the demo's process on a port of 127.0.0.1),
each with a QLVB that speaks the axis protocol (:mod:`exchange.gateway.sdk`)
and sends unsigned packages, which the gateway signs with the agency's key.
Their receipts and statuses come from the gateway's mailbox; the others'
from their own status queues.

:class:`LocalExchange` is also what the integration tests use to stand up
agencies against a real broker and database.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from exchange.agency import AgencyCode
from exchange.broker.topology import GATEWAY_USER
from exchange.client import AgencyClient, StatusItem, status_report
from exchange.edxml.model import (
    VIETNAM_TIME,
    Code,
    DocumentPackage,
    DocumentType,
    Organization,
    SignerInfo,
    StatusPackage,
)
from exchange.edxml.reader import read_document, read_status
from exchange.edxml.writer import new_document, write_package
from exchange.gateway.sdk import VxpClient
from exchange.pki import Credential, KeyType, TrustStore, create_ca, issue_agency_certificate
from exchange.receipts import Receipt
from exchange.registry import (
    AgencyExistsError,
    change_agency,
    prepare,
    provision_gateway_user,
    register_agency,
    url_for_certificate,
)
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
# With --via-gateway: the agencies whose QLVB reaches the exchange through the
# gateway (the axis SDK's protocol), one system each.
GATEWAY_AGENCIES = ("000.00.24.H44", "000.46.24.H44")
# The demo gateway's broker user: not the production default (GATEWAY_USER),
# whose password the demo would otherwise reset on a shared broker.
DEMO_GATEWAY_USER = f"{GATEWAY_USER}-demo"
# The demo's agencies log in as "demo." and their code: RabbitMQ users are
# global to the broker, so a demo run on a shared broker never takes over
# (nor is refused by) the user of a real agency of the same code.
DEMO_USER_PREFIX = "demo."


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
    # Agencies log in to the broker with their certificates (auth=external):
    # only when the broker trusts the CA in keys_dir; else with passwords.
    certificate_login: bool = False

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
        """Issue a certificate for an agency and register it on the exchange.

        The demo hands out a new password every time: a broker user it made
        in an earlier run (on another database) gets a new one.
        """
        agency = AgencyCode.parse(code)
        assert self.ca is not None
        # O names the demo, so that a demo certificate's subject (its broker
        # user with certificate login) is never a real agency's.
        credential = issue_agency_certificate(
            self.ca,
            agency,
            common_name=name,
            organization=f"{name} (lienthong demo)",
            key_type=key_type,
            directory=self.keys_dir,
        )
        password_login = not self.certificate_login
        try:
            registration = await register_agency(
                self.settings,
                agency,
                name,
                certificate_pem=credential.cert_pem.decode(),
                subscriptions=subscriptions,
                broker_user=broker_user if password_login else None,
                rotate_password=password_login,
                password_login=password_login,
            )
        except AgencyExistsError:
            # The demo run again on the same database: its new certificate and
            # (with password login) a new password for the broker user it had.
            registration = await change_agency(
                self.settings,
                agency,
                name=name,
                certificate_pem=credential.cert_pem.decode(),
                subscriptions=subscriptions,
                rotate_password=password_login,
            )
        amqp_url = registration.amqp_url
        if registration.certificate_login:
            amqp_url = url_for_certificate(
                self.settings.amqp_url,
                str(self.keys_dir / f"{agency}.cert.pem"),
                str(self.keys_dir / f"{agency}.key.pem"),
            )
        local = LocalAgency(agency, name, credential, amqp_url)
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
            self.read_receipt(item.receipt)
        else:
            self.read_status(item.status)

    def read_mail(self, body: bytes) -> None:
        """Take in one status item of the sender's gateway mailbox (a receipt or a status)."""
        if body.lstrip().startswith(b"{"):
            self.read_receipt(Receipt.model_validate_json(body))
        else:
            self.read_status(read_status(body))

    def read_receipt(self, receipt: Receipt) -> None:
        """Take in the exchange's receipt of a document the sender sent."""
        if receipt.kind is not MessageKind.DOCUMENT:
            return  # the receipt of a status this agency reported
        moment = (receipt.at.astimezone(VIETNAM_TIME).replace(tzinfo=None), -1)
        news = receipt.outcome.value
        if receipt.outcome is not TransportOutcome.DELIVERED:
            news = f"{news}: {receipt.reason_code}"
        self.note(receipt.document_id or "?", receipt.recipient, news, moment)

    def read_status(self, status: StatusPackage) -> None:
        """Take in a recipient's business status of a document the sender sent."""
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


# How often a QLVB behind the gateway polls its mailbox while it waits (the
# SDK's users poll every few minutes; the demo cannot wait that long).
MAILBOX_POLL_S = 0.3


@contextlib.asynccontextmanager
async def running_gateway(
    exchange: LocalExchange, agencies: Sequence[LocalAgency], *, user_name: str = DEMO_GATEWAY_USER
) -> AsyncIterator[dict[AgencyCode, VxpClient]]:
    """The gateway on a port of 127.0.0.1, one system per agency; yields each agency's QLVB.

    The gateway logs in as its own broker user (``lienthong gateway-user``),
    which the exchange's workers must list in ``gateway_users``; it signs
    the agencies' unsigned packages with their keys in the demo's keys
    directory.
    """
    import uvicorn

    from exchange.gateway.app import Gateway, create_app
    from exchange.store import gateway as store
    from exchange.store.db import connect

    user = await provision_gateway_user(exchange.settings, user_name)
    settings = exchange.settings.model_copy(update={"amqp_url": user.amqp_url})
    systems: dict[AgencyCode, tuple[str, str]] = {}
    conn = await connect(settings)
    try:
        for agency in agencies:
            system_id, secret = f"QLVB-{agency.code}", secrets.token_urlsafe(24)
            try:
                await store.add_system(conn, system_id, secret, [agency.code])
            except store.SystemExistsError:  # the demo run again on the same database
                await store.set_secret(conn, system_id, secret)
            systems[agency.code] = (system_id, secret)
    finally:
        await conn.close()
    assert settings.trust is not None
    gateway = Gateway(settings, trust=TrustStore.load(settings.trust), keys_dir=exchange.keys_dir)
    await gateway.start()
    config = uvicorn.Config(
        create_app(gateway, manage_lifetime=False),
        host="127.0.0.1",
        port=0,
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()  # raises what stopped it from listening
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        endpoint = f"http://127.0.0.1:{port}{settings.gateway_base_path}"
        print(f"gateway serving the axis protocol at {endpoint}")
        yield {code: VxpClient(endpoint, *system) for code, system in systems.items()}
    finally:
        server.should_exit = True
        await serving
        await gateway.close()


async def run_demo(
    settings: Settings,
    keys_dir: Path,
    *,
    workers: int = 2,
    via_gateway: bool = False,
    gateway_user: str = DEMO_GATEWAY_USER,
    user_prefix: str = DEMO_USER_PREFIX,
    certificate_login: bool = False,
) -> str:
    """Run the whole demo and return the table every sender would see.

    With ``via_gateway``, the agencies of :data:`GATEWAY_AGENCIES` connect
    through the gateway instead of AMQP; its broker user is ``gateway_user``.
    With ``certificate_login`` (the broker trusts the CA in ``keys_dir``),
    the agencies log in with their certificates; else each agency's broker
    user is ``user_prefix`` and its code, with a password (RabbitMQ users
    are global to the broker: a test keeps its own apart).
    """
    if via_gateway:
        # The workers believe the agency the gateway's user names.
        users = [*settings.gateway_users, gateway_user]
        settings = settings.model_copy(update={"gateway_users": users})
    exchange = LocalExchange(settings, keys_dir, certificate_login=certificate_login)
    await exchange.prepare()
    cast = {}
    behind_gateway = GATEWAY_AGENCIES if via_gateway else ()
    for code, name in DEMO_AGENCIES:
        cast[code] = await exchange.register(code, name, broker_user=f"{user_prefix}{code}")
        how = "  (through the gateway)" if code in behind_gateway else ""
        print(f"registered {code}  level {cast[code].code.level}  {name}{how}")
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
    async with contextlib.AsyncExitStack() as running:
        await running.enter_async_context(exchange.workers(workers))
        qlvb: dict[AgencyCode, VxpClient] = {}
        if via_gateway:
            qlvb = await running.enter_async_context(
                running_gateway(
                    exchange, [cast[c] for c in GATEWAY_AGENCIES], user_name=gateway_user
                )
            )
        sent: list[tuple[LocalAgency, DocumentPackage]] = []
        for sender, recipients, number, notation, subject in plan:
            document = demo_document(sender, recipients, number, notation, subject)
            if sender.code in qlvb:
                # Unsigned, as packages on the axis are: the gateway signs it.
                await qlvb[sender.code].send_edoc(str(sender.code), write_package(document))
                how = " through the gateway"
            else:
                async with sender.client() as client:
                    await client.send_document(document)
                how = ""
            sent.append((sender, document))
            to = ", ".join(str(r.code) for r in recipients)
            print(f"sent {number}/{notation} from {sender.code} to {to}{how}")

        # Each recipient reads its inbox (or its mailbox on the gateway) and
        # reports, all at once as real agencies would; the district returns
        # the commune's report (a 02).
        def returns(recipient: LocalAgency) -> LocalAgency | None:
            return commune if recipient is district else None

        await asyncio.gather(
            *(
                _work_mailbox(recipient, qlvb[recipient.code], returns_from=returns(recipient))
                if recipient.code in qlvb
                else _work_inbox(recipient, returns_from=returns(recipient))
                for recipient in cast.values()
            )
        )
        # Every sender reads its status queue (or mailbox): receipts, then statuses.
        for sender, _ in sent:
            views.setdefault(sender.code, SenderView())
        await asyncio.gather(
            *(
                _read_mailbox_statuses(qlvb[code], view)
                if code in qlvb
                else _read_statuses(cast[str(code)], view)
                for code, view in views.items()
            )
        )
    return format_views(views)


def _progress_of(
    document: DocumentPackage, returns_from: LocalAgency | None
) -> tuple[tuple[StatusCode, str], ...]:
    returns = returns_from is not None and document.sender.organ_id == returns_from.code
    return RETURN_PROGRESS if returns else NORMAL_PROGRESS


def _received(
    recipient: LocalAgency,
    document: DocumentPackage,
    progress: Sequence[tuple[StatusCode, str]],
    how: str = "",
) -> None:
    print(
        f"{recipient.code} received {document.code.code_number}/"
        f"{document.code.code_notation}{how} and reported "
        + ", ".join(c.value for c, _ in progress)
    )


async def _work_inbox(recipient: LocalAgency, *, returns_from: LocalAgency | None) -> None:
    """A recipient's QLVB: take each document, report its progress, acknowledge it."""
    async with recipient.client() as client:
        async for item in client.inbox(idle_timeout=INBOX_IDLE_S):
            document = item.package
            progress = _progress_of(document, returns_from)
            base = datetime.now(VIETNAM_TIME).replace(tzinfo=None, microsecond=0)
            for step, (code, description) in enumerate(progress):
                at = base + timedelta(seconds=step)
                await client.report_status(document, code, description, at=at)
            await item.ack()
            _received(recipient, document, progress)


async def _poll(qlvb: VxpClient, message_type: str) -> AsyncIterator[dict[str, object]]:
    """Each item of a mailbox, as the SDK's users poll: until none came for INBOX_IDLE_S."""
    loop = asyncio.get_running_loop()
    idle_since = loop.time()
    while loop.time() - idle_since < INBOX_IDLE_S:
        items = await qlvb.received(message_type)
        for item in items:
            yield item
        if items:
            idle_since = loop.time()
        else:
            await asyncio.sleep(MAILBOX_POLL_S)


async def _work_mailbox(
    recipient: LocalAgency, qlvb: VxpClient, *, returns_from: LocalAgency | None
) -> None:
    """A recipient's QLVB behind the gateway: get each document, report, confirm it."""
    async for item in _poll(qlvb, "edoc"):
        doc_id = str(item["docId"])
        document = read_document(await qlvb.get_edoc(doc_id))
        progress = _progress_of(document, returns_from)
        base = datetime.now(VIETNAM_TIME).replace(tzinfo=None, microsecond=0)
        for step, (code, description) in enumerate(progress):
            at = base + timedelta(seconds=step)
            status = status_report(document, recipient.organization, code, description, at=at)
            await qlvb.send_edoc(str(recipient.code), write_package(status), "status")
        await qlvb.update_status(doc_id, "done")
        _received(recipient, document, progress, " through the gateway")


async def _read_statuses(sender: LocalAgency, view: SenderView) -> None:
    """A sender's QLVB: read every receipt and status waiting for it."""
    async with sender.client() as client:
        async for news in client.statuses(idle_timeout=INBOX_IDLE_S):
            view.read(news)
            await news.ack()


async def _read_mailbox_statuses(qlvb: VxpClient, view: SenderView) -> None:
    """A sender's QLVB behind the gateway: every receipt and status in its mailbox."""
    async for item in _poll(qlvb, "status"):
        doc_id = str(item["docId"])
        view.read_mail(await qlvb.get_edoc(doc_id))
        await qlvb.update_status(doc_id, "done")


def format_views(views: dict[AgencyCode, SenderView]) -> str:
    """The demo's closing table: sender, document, recipient, latest status."""
    lines = [f"{'sender':<14} {'document':<44} {'recipient':<14} latest status"]
    lines.append("-" * len(lines[0]) + "-" * 12)
    for sender, view in views.items():
        for (document, recipient), (_, news) in sorted(view.rows.items()):
            lines.append(f"{sender!s:<14} {document:<44} {recipient:<14} {news}")
    return "\n".join(lines)
