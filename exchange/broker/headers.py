"""AMQP message headers of the exchange: the wire contract, named once.

What the worker publishes carries the first group, so receivers can route,
deduplicate and trace without parsing the body. The second group carries a
message's origin through retry queues and replays; the worker believes those
only from the exchange's own broker users, never from an agency.
"""

from __future__ import annotations

from collections.abc import Mapping

# -- on everything the worker publishes ---------------------------------------
MESSAGE = "x-lienthong-message"  # the exchange's id of the received message
KIND = "x-lienthong-kind"  # document, status or receipt
DOCUMENT_ID = "x-document-id"
SENDER = "x-sender"  # the authenticated sender's agency code
RECIPIENT = "x-recipient"  # also: the original routing key, through retries
SHA256 = "x-sha256"
# On a subscription copy: the subscription that brought it (x-recipient
# names the agency the document was addressed to).
SUBSCRIPTION = "x-lienthong-subscription"

# -- on what an agency (or the gateway for it) publishes -----------------------
# The sender's own agency code: the intake hashes it to the sender's lane
# (exchange/broker/topology.py, LANES). The worker refuses a message whose
# lane names another agency than the one that published it.
LANE = "x-lienthong-lane"

# -- the origin of a message, through retry queues and replays ----------------
ORIGINAL_USER = "x-lienthong-user"
ATTEMPTS = "x-lienthong-attempts"
FAILURE = "x-lienthong-failure"
REPLAY = "x-lienthong-replay"
# The publish time to the microsecond (the AMQP timestamp has whole seconds);
# set by the client, used only for latency figures.
PUBLISHED_AT = "x-lienthong-published-at"

# -- the agency a gateway publishes for -----------------------------------------
# Set by `lienthong gateway` on what it publishes; the worker believes it only
# from the broker users in LIENTHONG_GATEWAY_USERS.
AGENCY = "x-lienthong-agency"
# A gateway's broker user acting for an agency is recorded as one publisher,
# "<user> for <agency code>", so that the record, retries and replays carry
# both without another column.
_ON_BEHALF = " for "


def on_behalf(user: str, agency: str) -> str:
    """The publisher a gateway's broker user acting for ``agency`` is recorded as."""
    return f"{user}{_ON_BEHALF}{agency}"


def acting_for(publisher: str) -> tuple[str, str] | None:
    """``(gateway user, agency)`` of a publisher written by :func:`on_behalf`, else ``None``."""
    user, found, agency = publisher.rpartition(_ON_BEHALF)
    return (user, agency) if found and user and agency else None


def decode(value: object) -> str | None:
    """A header value as text: AMQP carries a string as bytes or as str, depending on the
    publisher's library; both are read as UTF-8. ``None`` for anything else."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def text(headers: Mapping[str, object] | None, name: str) -> str | None:
    """The header ``name`` as text (:func:`decode`); ``None`` when absent or not text."""
    return decode((headers or {}).get(name))
