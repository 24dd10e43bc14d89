"""RabbitMQ's management HTTP API: vhosts, users, permissions, queue statistics.

Provisioning an agency (its broker user and what that user may touch) and the
audit's view of the queues go through here. It uses the standard library's
``urllib`` in a worker thread (aiohttp is not a dependency of the exchange),
which is plenty for a handful of administrative calls.

Passwords never appear in logs, reprs or error messages: the API URL's
credentials are split off when the client is built and sent only in the
``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exchange.agency import AgencyCode
from exchange.broker.topology import Permissions, agency_permissions, gateway_permissions
from exchange.settings import Settings

log = logging.getLogger(__name__)

# Seconds an API call may take. The management API answers in milliseconds;
# a definitions import of thousands of queues takes a few seconds.
API_TIMEOUT_S = 30.0

# Permissions of an operator or test user that may do everything in a vhost.
FULL_ACCESS = Permissions(configure=".*", write=".*", read=".*")

# The tag lienthong puts on every broker user it creates for an agency. A
# RabbitMQ tag other than administrator/monitoring/management/policymaker
# grants nothing; it marks the user as lienthong's, so that `agency add`
# never takes over (and resets the password of) a user someone else made.
AGENCY_USER_TAG = "lienthong-agency"


class BrokerAdminError(RuntimeError):
    """The management API refused or failed a call; the message says which and why."""

    def __init__(self, method: str, path: str, status: int | None, detail: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.detail = detail
        where = f"{method} {path}"
        what = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"RabbitMQ management API: {where} failed ({what}): {detail}")


class InvalidApiUrl(ValueError):
    """The management API URL is not an http(s) URL with a host."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue as the management API reports it.

    The counts come from statistics the broker refreshes every few seconds
    (``collect_statistics_interval``, 5 s by default), so they lag behind.
    """

    name: str
    vhost: str
    type: str
    durable: bool
    arguments: dict[str, Any]
    messages: int
    messages_ready: int
    messages_unacknowledged: int
    consumers: int


@dataclass(frozen=True, slots=True)
class AgencyUser:
    """An agency's broker user, as provisioned (the password is not kept)."""

    name: str
    vhost: str
    permissions: Permissions


def _quote(segment: str) -> str:
    """One path segment of the API: vhost ``/`` is ``%2F``."""
    return urllib.parse.quote(segment, safe="")


class BrokerAdmin:
    """A client of the management HTTP API at ``api_url`` (credentials in the URL)."""

    def __init__(
        self, api_url: str, *, ca: Path | None = None, timeout: float = API_TIMEOUT_S
    ) -> None:
        """Parse ``api_url`` (``https://user:password@host:15671``) and keep its parts.

        Over HTTPS the server's certificate and host name are checked against
        ``ca`` (a PEM file of CA certificates), or the system's trust store.
        """
        parts = urllib.parse.urlsplit(api_url)
        try:
            parts.port  # noqa: B018 (parsing the port raises on a bad one)
        except ValueError:
            parts = parts._replace(scheme="")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidApiUrl(
                f"the RabbitMQ management API URL {api_url.split('@')[-1]!r} must look like "
                "https://user:password@host:15671 (--rabbitmq-api-url or "
                "LIENTHONG_RABBITMQ_API_URL)"
            )
        user = urllib.parse.unquote(parts.username or "guest")
        password = urllib.parse.unquote(parts.password or "guest")
        port = f":{parts.port}" if parts.port else ""
        self._base = f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}/api"
        self._user = user
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._authorization = f"Basic {token}"
        self._timeout = timeout
        self._tls = (
            ssl.create_default_context(cafile=str(ca) if ca else None)
            if parts.scheme == "https"
            else None
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerAdmin:
        """The client for ``settings.rabbitmq_api_url`` (``LIENTHONG_RABBITMQ_API_URL``)."""
        return cls(settings.rabbitmq_api_url, ca=settings.rabbitmq_api_ca)

    def __repr__(self) -> str:
        return f"BrokerAdmin({self._base!r}, user={self._user!r})"

    @property
    def user(self) -> str:
        """The management user this client acts as."""
        return self._user

    # -- transport --------------------------------------------------------------

    def _request_blocking(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        url = self._base + path
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (http(s) checked)
        request.add_header("Authorization", self._authorization)
        request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=self._timeout, context=self._tls
            ) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")
            raise BrokerAdminError(method, path, error.code, _reason(detail)) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise BrokerAdminError(
                method,
                path,
                None,
                f"{reason}; is the rabbitmq_management plugin enabled "
                "(rabbitmq-plugins enable rabbitmq_management)?",
            ) from None
        return json.loads(payload) if payload else None

    async def request(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None
    ) -> Any:
        """Call the API (``path`` below ``/api``) and return the decoded JSON answer."""
        return await asyncio.to_thread(self._request_blocking, method, path, body, headers)

    async def _delete(self, path: str) -> bool:
        """DELETE ``path``; ``False`` when there was nothing to delete."""
        try:
            await self.request("DELETE", path)
        except BrokerAdminError as error:
            if error.status == 404:
                return False
            raise
        return True

    # -- the broker ---------------------------------------------------------------

    async def overview(self) -> dict[str, Any]:
        """The broker's overview (versions, totals); a cheap way to check access."""
        answer: dict[str, Any] = await self.request("GET", "/overview")
        return answer

    # -- vhosts -------------------------------------------------------------------

    async def create_vhost(
        self, name: str, *, description: str = "", grant: Iterable[str] = ()
    ) -> None:
        """Create the vhost ``name`` (nothing happens if it exists); full access to ``grant``.

        ``grant`` names the exchange's own users that work in it: this
        client's and the workers' (``LIENTHONG_AMQP_URL``'s), which differ
        when the management API has an operator user of its own.
        """
        await self.request("PUT", f"/vhosts/{_quote(name)}", {"description": description})
        log.info("vhost %s created", name)
        for user in dict.fromkeys(grant):
            await self.set_permissions(name, user, FULL_ACCESS)

    async def delete_vhost(self, name: str) -> bool:
        """Delete the vhost ``name`` with everything in it; ``False`` if it did not exist."""
        deleted = await self._delete(f"/vhosts/{_quote(name)}")
        if deleted:
            log.info("vhost %s deleted", name)
        return deleted

    # -- users ----------------------------------------------------------------------

    async def create_user(self, name: str, password: str | None, *, tags: str = "") -> None:
        """Create the user ``name`` (or set its password and tags if it exists).

        ``password`` ``None``: a user no password logs in as, only a client
        certificate whose subject is ``name`` (``auth=external``). ``tags``
        empty: no access to the management UI, which agencies do not need.
        """
        secret = {"password": password} if password is not None else {"password_hash": ""}
        await self.request("PUT", f"/users/{_quote(name)}", {**secret, "tags": tags})
        log.info("broker user %s created or updated", name)  # never the password

    async def user_tags(self, name: str) -> list[str] | None:
        """The tags of the user ``name``; ``None`` when the broker has no such user."""
        try:
            answer = await self.request("GET", f"/users/{_quote(name)}")
        except BrokerAdminError as error:
            if error.status == 404:
                return None
            raise
        tags = answer.get("tags", [])
        # RabbitMQ 3.x answers a comma-separated string, 4.x a list.
        return [t for t in tags.split(",") if t] if isinstance(tags, str) else list(tags)

    async def user_exists(self, name: str) -> bool:
        """Whether the broker has a user ``name``."""
        try:
            await self.request("GET", f"/users/{_quote(name)}")
        except BrokerAdminError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def delete_user(self, name: str) -> bool:
        """Delete the user ``name``; ``False`` if it did not exist."""
        deleted = await self._delete(f"/users/{_quote(name)}")
        if deleted:
            log.info("broker user %s deleted", name)
        return deleted

    async def set_permissions(self, vhost: str, user: str, permissions: Permissions) -> None:
        """Give ``user`` exactly ``permissions`` in ``vhost`` (replacing earlier ones)."""
        await self.request(
            "PUT",
            f"/permissions/{_quote(vhost)}/{_quote(user)}",
            {
                "configure": permissions.configure,
                "write": permissions.write,
                "read": permissions.read,
            },
        )
        log.info("permissions of %s in vhost %s set to %s", user, vhost, permissions)

    async def clear_permissions(self, vhost: str, user: str) -> bool:
        """Take every permission of ``user`` in ``vhost`` away; ``False`` if it had none."""
        cleared = await self._delete(f"/permissions/{_quote(vhost)}/{_quote(user)}")
        if cleared:
            log.info("permissions of %s in vhost %s removed", user, vhost)
        return cleared

    async def close_connections(self, user: str, *, reason: str) -> int:
        """Close every open connection of ``user``; returns how many were closed.

        Taking permissions away does not end a connection, and a channel keeps
        what it was allowed to do, so access is revoked only once they close.
        """
        answer = await self.request("GET", "/connections?columns=name,user")
        closed = 0
        for connection in answer:
            if connection.get("user") != user:
                continue
            path = f"/connections/{_quote(connection['name'])}"
            try:
                await self.request("DELETE", path, headers={"X-Reason": reason})
            except BrokerAdminError as error:
                if error.status != 404:  # closed meanwhile
                    raise
            closed += 1
        if closed:
            log.info("closed %d connection(s) of broker user %s", closed, user)
        return closed

    async def get_permissions(self, vhost: str, user: str) -> Permissions | None:
        """The permissions of ``user`` in ``vhost``; ``None`` when it has none."""
        try:
            answer = await self.request("GET", f"/permissions/{_quote(vhost)}/{_quote(user)}")
        except BrokerAdminError as error:
            if error.status == 404:
                return None
            raise
        return Permissions(answer["configure"], answer["write"], answer["read"])

    async def provision_agency_user(
        self, code: AgencyCode, password: str | None, *, vhost: str = "/", user: str | None = None
    ) -> AgencyUser:
        """Create an agency's broker user and give it only what the agency needs.

        The user (by default named after the code) may publish to
        ``lienthong.submit`` and consume ``lienthong.inbox.<code>`` and
        ``lienthong.status.<code>``, nothing else. It carries
        :data:`AGENCY_USER_TAG`. ``password`` ``None``: it logs in with its
        certificate only (see :meth:`create_user`). Running it again changes
        the password and resets the permissions.
        """
        name = user or str(code)
        permissions = agency_permissions(code)
        await self.create_user(name, password, tags=AGENCY_USER_TAG)
        await self.set_permissions(vhost, name, permissions)
        return AgencyUser(name, vhost, permissions)

    async def provision_gateway_user(self, name: str, password: str, *, vhost: str = "/") -> None:
        """Create a gateway's broker user with the permissions of ``gateway_permissions()``.

        Running it again changes the password and resets the permissions.
        """
        await self.create_user(name, password)
        await self.set_permissions(vhost, name, gateway_permissions())

    # -- topology and statistics ----------------------------------------------------

    async def list_queues(self, vhost: str) -> list[QueueStats]:
        """Every queue of ``vhost`` with its message and consumer counts, by name."""
        answer = await self.request("GET", f"/queues/{_quote(vhost)}")
        return sorted(
            (
                QueueStats(
                    name=item["name"],
                    vhost=item["vhost"],
                    type=item.get("type", "classic"),
                    durable=item.get("durable", False),
                    arguments=item.get("arguments", {}),
                    # A queue just declared has no statistics yet.
                    messages=item.get("messages", 0),
                    messages_ready=item.get("messages_ready", 0),
                    messages_unacknowledged=item.get("messages_unacknowledged", 0),
                    consumers=item.get("consumers", 0),
                )
                for item in answer
            ),
            key=lambda stats: stats.name,
        )

    async def list_bindings(self, vhost: str) -> list[dict[str, Any]]:
        """Every binding of ``vhost`` (including each queue's default-exchange binding)."""
        answer: list[dict[str, Any]] = await self.request("GET", f"/bindings/{_quote(vhost)}")
        return answer

    async def import_definitions(self, vhost: str, definitions: dict[str, Any]) -> None:
        """Import a definitions document (:func:`~exchange.broker.topology.to_definitions`)
        into ``vhost``, whatever its ``vhost`` fields say."""
        await self.request("POST", f"/definitions/{_quote(vhost)}", definitions)


def _reason(detail: str) -> str:
    """The ``reason`` of a management API error body, or the body itself."""
    try:
        body = json.loads(detail)
    except ValueError:
        return detail[:500]
    if isinstance(body, dict) and "reason" in body:
        return str(body["reason"])
    return detail[:500]
