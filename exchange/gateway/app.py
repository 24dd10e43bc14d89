"""The gateway's HTTP service: the VXP adapter operations over the exchange.

:class:`Gateway` holds what every request needs (the database pool, the
broker connection and publisher, the trust store, the agencies' keys) and
answers one operation at a time (:meth:`Gateway.answer`); :func:`create_app`
puts it behind Starlette, with ``/healthz``. Every answer goes through
:meth:`Gateway.answer`, which times it and calls :attr:`Gateway.observers`
(operation, outcome, seconds, system): the place metrics hook in. State
lives only in PostgreSQL and RabbitMQ, so several gateway processes run
side by side behind a load balancer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import uvicorn
from aio_pika.abc import AbstractRobustConnection
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from exchange.agency import AgencyCode, InvalidAgencyCode
from exchange.broker import headers as header
from exchange.broker.connection import (
    ConfirmingPublisher,
    broker_user_of,
    connect,
    is_connected,
)
from exchange.broker.topology import SUBMIT_EXCHANGE
from exchange.edxml.model import VIETNAM_TIME
from exchange.failures import Failure, classify
from exchange.gateway import auth, measure
from exchange.gateway.auth import Headers
from exchange.gateway.mover import MailboxMover, new_doc_id
from exchange.gateway.protocol import (
    ALWAYS,
    ErrorCode,
    GatewayError,
    package_of,
    refusal,
    reply,
)
from exchange.gateway.submit import EDOC, MESSAGE_TYPES, Prepared, prepare
from exchange.pipeline import CheckContext
from exchange.pki import Credential, Revocations, TrustStore, load_revocations
from exchange.reasons import Reason, Rejection
from exchange.settings import Settings
from exchange.status import StatusCode
from exchange.store import gateway as store
from exchange.store import queries
from exchange.store.db import Pool, create_pool

log = logging.getLogger("exchange.gateway")

# The SDK sets no HTTP timeout: a request the gateway never answers hangs the
# QLVB. Past this, the gateway answers 901 (try again) whatever it waits for
# (a database or broker away). Checking and signing a 64 MB package takes
# seconds; this leaves room for a loaded machine.
REQUEST_TIMEOUT_S = 120.0
# Bodies of the operations other than sendEdoc are "{}" or a small JSON object.
MAX_SMALL_BODY_BYTES = 64 * 1024
# sendEdoc's body is the package and the CRLF the SDK writes after it.
_CRLF = 2

Observer = measure.Observer
"""Called after each answer: operation, outcome (ErrorCode's code, "0" for OK), seconds, system."""

# What a mailbox item's state says to the clerk (status_desc).
STATE_DESCRIPTIONS = {
    store.PENDING: "Chờ nhận",
    store.FETCHED: "Đã tải về, chưa xác nhận",
    store.PROCESSING: "Đang xử lý",
    store.FAIL: "Hệ thống nhận báo xử lý lỗi",
    store.DONE: "Đã nhận",
}
STATUS_DESCRIPTIONS = {
    StatusCode.ARRIVED: "Đã đến",
    StatusCode.RETURNED: "Từ chối tiếp nhận",
    StatusCode.ACCEPTED: "Đã tiếp nhận",
    StatusCode.ASSIGNED: "Phân công",
    StatusCode.PROCESSING: "Đang xử lý",
    StatusCode.DONE: "Hoàn thành",
    StatusCode.RECALL_REQUESTED: "Yêu cầu lấy lại",
    StatusCode.RECALL_AGREED: "Đồng ý lấy lại, cập nhật",
    StatusCode.RECALL_REFUSED: "Từ chối lấy lại, cập nhật",
}
SEND_DESCRIPTIONS = {
    None: "Trục đang xử lý",
    "accepted": "Trục đã tiếp nhận",
    "delivered": "Đã chuyển tới cơ quan nhận",
    "parked": "Trục chưa xử lý được; đang chờ quản trị trục",
}


@dataclass
class Gateway:
    """One gateway process: answers the operations, moves the mailboxes."""

    settings: Settings
    trust: TrustStore
    keys_dir: Path | None = None
    # The file or directory ``trust`` was read from: the CAs' revocation
    # lists are beside it unless LIENTHONG_CRL_DIR says where.
    trust_path: Path | None = None
    observers: list[Observer] = field(default_factory=list)
    pool: Pool | None = None
    connection: AbstractRobustConnection | None = None
    publisher: ConfirmingPublisher | None = None
    mover: MailboxMover | None = None
    mover_refresh_s: float | None = None
    # Count and time every answer and compute the mailbox figures
    # (exchange/gateway/measure.py) for the process's metrics endpoint.
    measured: bool = False
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _mover_task: asyncio.Task[None] | None = None
    _figures_task: asyncio.Task[None] | None = None
    _revocations_task: asyncio.Task[None] | None = None
    _credentials: dict[AgencyCode, Credential] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # SHA-1 is accepted per agency by the workers (agency add --allow-sha1);
        # the gateway signs with SHA-256 and refuses SHA-1 from every system.
        self.context = CheckContext(
            trust=self.trust, limits=self.settings, revocations=self._revocations()
        )
        # The broker user the gateway publishes as (RabbitMQ checks user_id).
        self.own_user = broker_user_of(self.settings.amqp_url)
        if self.measured:
            self.observers.append(measure.observer(OPERATIONS))

    # -- lifetime -------------------------------------------------------------

    async def start(self) -> None:
        """Open the pool and the broker connection; start the mailbox mover."""
        self.pool = await create_pool(self.settings)
        self.connection = await connect(self.settings.amqp_url, name="lienthong-gateway")
        self.publisher = await ConfirmingPublisher.open(self.connection)
        kwargs = {} if self.mover_refresh_s is None else {"refresh_s": self.mover_refresh_s}
        self.mover = MailboxMover(self.pool, self.connection, **kwargs)
        self._stop.clear()
        self._mover_task = asyncio.create_task(self.mover.run(self._stop))
        if self.measured:
            self._figures_task = asyncio.create_task(measure.keep_refreshed(self.pool, self._stop))
        self._revocations_task = asyncio.create_task(self._keep_revocations())

    def _revocations(self) -> Revocations:
        return load_revocations(self.settings, self.trust_path or self.settings.gateway_trust)

    def reload_revocations(self) -> bool:
        """Read the CAs' revocation lists again (every ``crl_reload_s``, and on SIGHUP).

        A request being checked finishes with the lists it started with.
        Files that cannot be read leave the previous lists in use.
        """
        try:
            revocations = self._revocations()
        except (OSError, ValueError) as error:
            log.error("could not reload the revocation lists: %s", error)
            return False
        self.context = dataclasses.replace(self.context, revocations=revocations)
        log.info("reloaded %d revocation list(s)", len(revocations))
        return True

    async def _keep_revocations(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.crl_reload_s)
            if not self._stop.is_set():
                self.reload_revocations()

    async def close(self) -> None:
        """Stop the mover (messages being inserted are finished), then close everything."""
        self._stop.set()
        tasks = [
            t
            for t in (self._mover_task, self._figures_task, self._revocations_task)
            if t is not None
        ]
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                await self.publisher.close()
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
        if self.pool is not None:
            await self.pool.close()

    async def healthy(self) -> bool:
        """Whether the database answers and the broker connection is up."""
        if self.pool is None or self.connection is None or not is_connected(self.connection):
            return False
        try:
            async with self.pool.acquire() as conn:
                await queries.ping(conn)
        except Exception:
            return False
        return True

    # -- one request ----------------------------------------------------------------

    async def answer(
        self, operation: str, headers: Headers, read_body: Callable[[int], Awaitable[bytes]]
    ) -> dict[str, Any]:
        """The reply to one operation; never raises. ``read_body(limit)`` reads the body."""
        started = time.perf_counter()
        always = ALWAYS.get(operation, {})
        system_id: str | None = None
        outcome = "0"
        try:
            handler = _OPERATIONS.get(operation)
            if handler is None:
                raise GatewayError.of(ErrorCode.UNKNOWN_OPERATION, operation)
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                system = await self._authenticate(headers)
                system_id = system.system_id
                result = await handler(self, system, headers, read_body)
        except GatewayError as error:
            outcome = error.code
            result = refusal(error, **always)
            self._log_refusal(operation, system_id, headers, error)
        except Exception as failure:
            # The database or the broker away (or the request's time up):
            # try again later; anything else is the gateway's own fault.
            transient = classify(failure) is not Failure.INTERNAL
            failed = GatewayError.of(ErrorCode.UNAVAILABLE if transient else ErrorCode.INTERNAL)
            outcome = failed.code
            result = refusal(failed, **always)
            log.exception(
                "%s failed",
                operation,
                extra={
                    "operation": operation,
                    "system": system_id,
                    "agency": headers.param("from"),
                },
            )
        elapsed = time.perf_counter() - started
        for observe in self.observers:
            observe(operation, outcome, elapsed, system_id)
        return result

    def _log_refusal(
        self, operation: str, system_id: str | None, headers: Headers, error: GatewayError
    ) -> None:
        log.info(
            "%s refused: %s %s",
            operation,
            error.code,
            error.reason_code or "",
            extra={
                "operation": operation,
                "system": system_id or headers.get(auth.SYSTEM_ID),
                "agency": headers.param("from"),
                "error_code": error.code,
                "reason_code": error.reason_code,
            },
        )

    async def _authenticate(self, headers: Headers) -> store.GatewaySystem:
        system_id = auth.system_id_of(headers)
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            system = await store.get_system(conn, system_id)
            if system is None or not system.enabled:
                raise GatewayError.of(ErrorCode.UNKNOWN_SYSTEM, system_id)
            auth.verify(headers, system.secret)
            await store.touch_system(conn, system_id)
        return system

    def credential_of(self, agency: AgencyCode) -> Credential | None:
        """The agency's key and certificate in the keys directory, or ``None``.

        A key found is kept for the process's life; a key not found is looked
        for again next time (an operator may add it while the gateway runs).
        """
        found = self._credentials.get(agency)
        keys = self.keys_dir
        if found is None and keys is not None and (keys / f"{agency}.key.pem").exists():
            found = self._credentials[agency] = Credential.read(keys, str(agency))
        return found

    # -- the operations ---------------------------------------------------------------

    async def send_edoc(
        self,
        system: store.GatewaySystem,
        headers: Headers,
        read_body: Callable[[int], Awaitable[bytes]],
    ) -> dict[str, Any]:
        """Check, sign when needed, and publish a package, one message per recipient."""
        sender = _served_agency(system, headers.param("from"))
        message_type = (headers.param("messagetype") or "").lower()
        if message_type not in MESSAGE_TYPES:
            raise GatewayError.of(ErrorCode.BAD_PARAMETER, "messagetype phải là edoc hoặc status")
        hash_file = headers.param("hash-file")
        if not hash_file:
            raise GatewayError.of(ErrorCode.BAD_PARAMETER, "thiếu hash-file")
        body = await read_body(self.settings.max_package_bytes + _CRLF)
        package = package_of(body, hash_file)
        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(
                None,
                lambda: prepare(
                    package,
                    sender=sender,
                    message_type=message_type,
                    context=self.context,
                    credential_of=self.credential_of,
                ),
            )
        except Rejection as rejection:
            raise GatewayError.rejected(rejection) from None
        assert self.pool is not None and self.publisher is not None
        async with self.pool.acquire() as conn:
            registered = await queries.registered_codes(conn)
            unknown = [str(r) for r in prepared.recipients if r not in registered]
            if unknown:
                raise GatewayError.rejected(
                    Rejection.of(
                        Reason.UNKNOWN_RECIPIENT,
                        f"{', '.join(unknown)} is not registered on the exchange",
                        "To/OrganId",
                    )
                )
            doc_id = new_doc_id()
            await store.add_submission(conn, _submission(doc_id, system, message_type, prepared))
        try:
            await asyncio.gather(
                *(
                    self.publisher.publish(
                        SUBMIT_EXCHANGE,
                        str(recipient),
                        prepared.body,
                        message_id=store.submission_message_id(doc_id, recipient),
                        headers={header.AGENCY: str(sender), header.LANE: str(sender)},
                        user_id=self.own_user,
                    )
                    for recipient in prepared.recipients
                )
            )
        except Exception:
            async with self.pool.acquire() as conn:
                await store.forget_submission(conn, doc_id)
            raise
        log.info(
            "sendEdoc %s accepted as %s",
            prepared.document_id,
            doc_id,
            extra={
                "operation": "sendEdoc",
                "system": system.system_id,
                "agency": str(sender),
                "doc_id": doc_id,
                "document_id": prepared.document_id,
                "signed_by_gateway": prepared.signed_by_gateway,
            },
        )
        return reply(DocId=doc_id)

    async def received_list(
        self,
        system: store.GatewaySystem,
        headers: Headers,
        read_body: Callable[[int], Awaitable[bytes]],
    ) -> dict[str, Any]:
        """What waits for the system's agencies, leased to this poller."""
        message_type = _message_type(headers)
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            items = await store.lease_mail(
                conn,
                system.agencies,
                message_type,
                lease_s=self.settings.gateway_lease_s,
                limit=self.settings.gateway_list_limit,
            )
        return reply(data=[_list_item(item) for item in items])

    async def get_edoc(
        self,
        system: store.GatewaySystem,
        headers: Headers,
        read_body: Callable[[int], Awaitable[bytes]],
    ) -> dict[str, Any]:
        """One mailbox item's package, unchanged, base64."""
        doc_id = _doc_id(headers)
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            item = await store.fetch_mail(conn, doc_id, system.agencies)
        if item is None or item.body is None:
            raise GatewayError.of(ErrorCode.UNKNOWN_DOC, doc_id)
        return reply(data=base64.b64encode(item.body).decode("ascii"))

    async def update_status(
        self,
        system: store.GatewaySystem,
        headers: Headers,
        read_body: Callable[[int], Awaitable[bytes]],
    ) -> dict[str, Any]:
        """Record the system's acknowledgement of an item: done, fail or processing."""
        doc_id = _doc_id(headers)
        state = (headers.param("status") or "").lower()
        if state not in store.CONFIRMATIONS:
            raise GatewayError.of(ErrorCode.BAD_STATUS, state)
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            if not await store.confirm_mail(conn, doc_id, system.agencies, state):
                raise GatewayError.of(ErrorCode.UNKNOWN_DOC, doc_id)
        return reply()

    async def sent_list(
        self,
        system: store.GatewaySystem,
        headers: Headers,
        read_body: Callable[[int], Awaitable[bytes]],
    ) -> dict[str, Any]:
        """The system's submissions, each recipient's delivery and latest status."""
        message_type = _message_type(headers)
        doc_id = headers.param("docId") or None
        limit = self.settings.gateway_list_limit
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            lines = await store.sent_lines(conn, system.system_id, message_type, doc_id, limit)
            if not lines and doc_id is not None:
                # A docId naming none of this system's submissions is a stale
                # header of an earlier getEdoc (the SDK keeps parameters
                # between calls): the list is then the whole list.
                lines = await store.sent_lines(conn, system.system_id, message_type, None, limit)
        return reply(data=[_sent_item(line) for line in lines])

    async def agencies_list(
        self,
        system: store.GatewaySystem,
        headers: Headers,
        read_body: Callable[[int], Awaitable[bytes]],
    ) -> dict[str, Any]:
        """The directory: every registered agency."""
        return reply(data=[_unit(agency) for agency in await self._agencies()])

    async def synchronize_unit(
        self,
        system: store.GatewaySystem,
        headers: Headers,
        read_body: Callable[[int], Awaitable[bytes]],
    ) -> dict[str, Any]:
        """The directory with the fields a synchronisation reads."""
        data = [
            {
                **_unit(agency),
                "version": 1,
                "centerCode": "",
                "deleted": False,
                "modifyDate": _time(agency.registered_at),
                "isAgency": True,
            }
            for agency in await self._agencies()
        ]
        return reply(data=data)

    async def not_allowed(
        self,
        system: store.GatewaySystem,
        headers: Headers,
        read_body: Callable[[int], Awaitable[bytes]],
    ) -> dict[str, Any]:
        """registerAgency and deleteAgency: agencies are registered by the exchange's operators."""
        raise GatewayError.of(ErrorCode.NOT_ALLOWED)

    async def _agencies(self) -> list[Any]:
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            return await queries.list_agencies(conn)


Handler = Callable[
    [Gateway, store.GatewaySystem, Headers, Callable[[int], Awaitable[bytes]]],
    Awaitable[dict[str, Any]],
]

_OPERATIONS: dict[str, Handler] = {
    "sendEdoc": Gateway.send_edoc,
    "getReceivedEdocList": Gateway.received_list,
    "getEdoc": Gateway.get_edoc,
    "updateStatus": Gateway.update_status,
    "getSentEdocList": Gateway.sent_list,
    "getAgenciesList": Gateway.agencies_list,
    "getSynchronizeUnit": Gateway.synchronize_unit,
    "registerAgency": Gateway.not_allowed,
    "deleteAgency": Gateway.not_allowed,
}
OPERATIONS = tuple(_OPERATIONS)


def _served_agency(system: store.GatewaySystem, text: str | None) -> AgencyCode:
    if not text:
        raise GatewayError.of(ErrorCode.BAD_PARAMETER, "thiếu from")
    try:
        agency = AgencyCode.parse(text)
    except InvalidAgencyCode:
        raise GatewayError.of(ErrorCode.BAD_PARAMETER, f"from={text}") from None
    if agency not in system.agencies:
        raise GatewayError.of(ErrorCode.AGENCY_NOT_SERVED, str(agency))
    return agency


def _message_type(headers: Headers) -> str:
    message_type = (headers.param("messagetype") or EDOC).lower()
    if message_type not in MESSAGE_TYPES:
        raise GatewayError.of(ErrorCode.BAD_PARAMETER, "messagetype phải là edoc hoặc status")
    return message_type


def _doc_id(headers: Headers) -> str:
    # Header names are case-insensitive: docId and docid are one parameter.
    doc_id = headers.param("docId")
    if not doc_id:
        raise GatewayError.of(ErrorCode.BAD_PARAMETER, "thiếu docId")
    return doc_id


def _submission(
    doc_id: str, system: store.GatewaySystem, message_type: str, prepared: Prepared
) -> store.Submission:
    return store.Submission(
        doc_id=doc_id,
        system_id=system.system_id,
        sender=prepared.sender,
        message_type=message_type,
        document_id=prepared.document_id,
        sha256=hashlib.sha256(prepared.body).hexdigest(),
        signed_by_gateway=prepared.signed_by_gateway,
        recipients=prepared.recipients,
    )


def _time(moment: datetime | None) -> str:
    """Times as the clerk reads them: Vietnam time, ``yyyy-MM-dd HH:mm:ss``."""
    return "" if moment is None else moment.astimezone(VIETNAM_TIME).strftime("%Y-%m-%d %H:%M:%S")


def _list_item(item: store.MailItem) -> dict[str, Any]:
    # `to` is a plain string: the SDK reads it with getAsString.
    return {
        "docId": item.doc_id,
        "serviceType": "eDoc",
        "messageType": item.message_type,
        "from": item.sender or "",
        "to": item.recipient or item.agency,
        "status": item.state,
        "status_desc": STATE_DESCRIPTIONS.get(item.state, item.state),
        "created_time": _time(item.received_at),
        "updated_time": _time(item.updated_at),
    }


def _sent_item(line: store.SentLine) -> dict[str, Any]:
    code = StatusCode(line.latest_code) if line.latest_code else None
    if line.outcome == "rejected" and line.reason_code:
        reason = Reason.from_code(line.reason_code)
        send_desc = reason.vietnamese if reason else line.reason_code
    else:
        send_desc = SEND_DESCRIPTIONS.get(line.outcome, line.outcome or "")
    notation = "/".join(x for x in (line.code_number, line.code_notation) if x)
    return {
        "serviceType": "eDoc",
        "messageType": line.message_type,
        "senderDocId": line.doc_id,
        "receiverDocId": line.receiver_doc_id or "",
        "fromCode": line.sender,
        "toCode": line.recipient,
        "sendStatus": line.outcome or "pending",
        "sendStatusDesc": send_desc,
        "receiveStatus": code.value if code else "",
        "receiveStatusDesc": STATUS_DESCRIPTIONS.get(code, "") if code else "",
        "title": line.subject or "",
        "notation": notation,
        "sentTime": _time(line.submitted_at),
        "receivedTime": _time(line.delivered_at),
    }


def _unit(agency: Any) -> dict[str, Any]:
    return {
        "id": str(agency.code),
        "pid": str(agency.parent) if agency.parent else "",
        "code": str(agency.code),
        "name": agency.name,
        "mail": "",
    }


# -- HTTP --------------------------------------------------------------------------


def _reader(request: Request) -> Callable[[int], Awaitable[bytes]]:
    async def read(limit: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise GatewayError.of(ErrorCode.TOO_LARGE, f"{declared} byte > {limit} byte")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise GatewayError.of(ErrorCode.TOO_LARGE, f"hơn {limit} byte")
            chunks.append(chunk)
        return b"".join(chunks)

    return read


def _small_reader(request: Request) -> Callable[[int], Awaitable[bytes]]:
    read = _reader(request)

    async def small(limit: int) -> bytes:
        return await read(min(limit, MAX_SMALL_BODY_BYTES))

    return small


def create_app(gateway: Gateway, *, manage_lifetime: bool = True) -> Starlette:
    """The ASGI application serving ``gateway`` under its base path, and ``/healthz``.

    With ``manage_lifetime`` the application starts and closes the gateway
    (ASGI lifespan); otherwise the caller does.
    """
    base = "/" + gateway.settings.gateway_base_path.strip("/")

    async def operation(request: Request) -> JSONResponse:
        name = request.path_params["operation"]
        reader = _reader(request) if name == "sendEdoc" else _small_reader(request)
        result = await gateway.answer(name, Headers(request.headers.raw), reader)
        return JSONResponse(result)

    async def healthz(request: Request) -> JSONResponse:
        if await gateway.healthy():
            return JSONResponse({"status": "OK"})
        return JSONResponse({"status": "FAIL"}, status_code=503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_lifetime:
            await gateway.start()
        try:
            yield
        finally:
            if manage_lifetime:
                await gateway.close()

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route(base + "/{operation}", operation, methods=["POST", "GET"]),
        ],
        lifespan=lifespan,
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's server, ending with exit status 0 after a graceful SIGINT or SIGTERM.

    uvicorn raises the signal again once it has shut down, so the process
    would end killed by it; ``lienthong gateway`` ends like ``lienthong
    worker``: its work finished, status 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Shut down gracefully on SIGINT and SIGTERM, then restore the handlers."""
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
