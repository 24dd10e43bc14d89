"""The registered agencies as a worker sees them: a cache of the directory table."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from exchange.agency import AgencyCode, InvalidAgencyCode, matches_pattern
from exchange.broker import headers as header
from exchange.pki import SigningRights
from exchange.store import queries
from exchange.store.db import Pool
from exchange.store.records import Agency

# A directory miss (an agency registered after this worker started) reloads
# the directory, but not more often than this, so a flood of messages from
# an unknown broker user cannot turn into a flood of queries.
DIRECTORY_RELOAD_MIN_S = 1.0
# Registrations change rarely; a periodic reload picks up removals and
# renamed broker users without a restart.
DIRECTORY_MAX_AGE_S = 30.0


class TrustedUserError(RuntimeError):
    """An agency's broker user is one of the exchange's own; the message says which."""


def refuse_trusted_users(agencies: Iterable[Agency], trusted: frozenset[str]) -> None:
    """:class:`TrustedUserError` if an agency maps to a broker user of the exchange itself.

    Such an agency would publish with the rights of a worker or a gateway
    (an original sender in headers, acting for any agency), and the
    exchange's own messages would count as the agency's.
    """
    for agency in agencies:
        if agency.broker_user in trusted:
            raise TrustedUserError(
                f"agency {agency.code} has broker user {agency.broker_user!r}, which is the "
                "exchange's own (LIENTHONG_AMQP_URL, LIENTHONG_EXCHANGE_USERS, "
                "LIENTHONG_GATEWAY_USERS or the management API's); give the agency a user "
                f"of its own: lienthong agency set {agency.code} --broker-user NAME"
            )


class Directory:
    """The registered agencies, cached: broker user to agency, who exists, who signs with what."""

    def __init__(self, pool: Pool, gateway_users: frozenset[str] = frozenset()) -> None:
        """A directory read from ``pool`` on first use; ``gateway_users`` may act for agencies."""
        self._pool = pool
        self._gateway_users = gateway_users
        self._by_user: dict[str, AgencyCode] = {}
        self._codes: frozenset[AgencyCode] = frozenset()
        self._disabled: frozenset[AgencyCode] = frozenset()
        # (subscriber, pattern) for every subscription of an enabled agency.
        self._subscriptions: tuple[tuple[AgencyCode, str], ...] = ()
        self._rights = SigningRights()
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def _reload(self, *, at_most_every: float) -> None:
        async with self._lock:
            if time.monotonic() - self._loaded_at < at_most_every:
                return
            async with self._pool.acquire() as conn:
                agencies = await queries.list_agencies(conn)
                certificates, sha1_agencies = await queries.signing_rights(conn)
            self._by_user = {a.broker_user: a.code for a in agencies}
            self._codes = frozenset(a.code for a in agencies)
            self._disabled = frozenset(a.code for a in agencies if a.disabled)
            self._subscriptions = tuple(
                (a.code, pattern) for a in agencies if not a.disabled for pattern in a.subscriptions
            )
            if (certificates, sha1_agencies) != (
                self._rights.certificates,
                self._rights.sha1_agencies,
            ):
                # A new object only when something changed: the worker hands
                # it to its checks when it is not the one they hold.
                self._rights = SigningRights(certificates, sha1_agencies)
            self._loaded_at = time.monotonic()

    async def _fresh(self) -> None:
        if time.monotonic() - self._loaded_at > DIRECTORY_MAX_AGE_S:
            await self._reload(at_most_every=DIRECTORY_MAX_AGE_S)

    async def agency_of_user(self, user: str | None) -> AgencyCode | None:
        """The agency a broker user publishes for, or ``None``."""
        if not user:
            return None
        await self._fresh()
        acting = header.acting_for(user)
        if acting is not None and acting[0] in self._gateway_users:
            # A gateway's user acting for a registered agency publishes for it.
            try:
                agency = AgencyCode.parse(acting[1])
            except InvalidAgencyCode:
                return None
            return agency if await self.is_registered(agency) else None
        if user not in self._by_user:
            await self._reload(at_most_every=DIRECTORY_RELOAD_MIN_S)
        return self._by_user.get(user)

    async def is_registered(self, code: AgencyCode) -> bool:
        """Whether ``code`` is a registered agency."""
        await self._fresh()
        if code not in self._codes:
            await self._reload(at_most_every=DIRECTORY_RELOAD_MIN_S)
        return code in self._codes

    async def is_disabled(self, code: AgencyCode) -> bool:
        """Whether ``code`` is disabled (``agency disable``): what it publishes is refused."""
        await self._fresh()
        return code in self._disabled

    async def subscribers_of(self, recipient: AgencyCode) -> list[tuple[AgencyCode, str]]:
        """Who subscribed to a subtree holding ``recipient``, each once with its first pattern.

        The recipient itself is left out (it has the document), and so are
        disabled agencies.
        """
        await self._fresh()
        found: dict[AgencyCode, str] = {}
        for subscriber, pattern in self._subscriptions:
            if subscriber != recipient and matches_pattern(recipient, pattern):
                found.setdefault(subscriber, pattern)
        return sorted(found.items(), key=lambda item: str(item[0]))

    async def signing_rights(self) -> SigningRights:
        """Which certificates each agency may sign with, and who may use SHA-1.

        The same object until a reload finds a change.
        """
        await self._fresh()
        return self._rights

    async def reload(self) -> None:
        """Read the directory again now (SIGHUP)."""
        await self._reload(at_most_every=0.0)
