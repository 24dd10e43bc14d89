"""Provisioning safety (issue 14, point 8), against the real management API, broker and database.

An agency's broker user is never one of the exchange's own and never a user
lienthong did not make; a password is reset only when asked; a new broker
user replaces (and deletes) the old one; a disabled agency loses its access
but not its history; workers do not start when an agency maps to a trusted
user.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess

import aio_pika
import pytest

from exchange.agency import AgencyCode
from exchange.broker.admin import AGENCY_USER_TAG, FULL_ACCESS
from exchange.demo import demo_document
from exchange.directory import TrustedUserError
from exchange.reasons import Reason
from exchange.registry import (
    RegistrationError,
    change_agency,
    disable_agency,
    enable_agency,
    register_agency,
    url_for_user,
)
from exchange.settings import Settings
from exchange.status import TransportOutcome
from exchange.worker import run_workers
from tests.exchange_fixtures import ExchangeUnderTest, wait_for
from tests.integration.test_exchange import Sent, assert_rejected
from tests.integration.test_metrics_endpoint import lienthong_command

pytestmark = pytest.mark.services

GOVERNMENT_OFFICE = "000.00.00.G22"
MINISTRY = "000.00.00.G09"
HANOI = AgencyCode.parse("000.00.00.H26")


async def _logs_in(url: str) -> bool:
    try:
        connection = await aio_pika.connect(url)
    except aio_pika.exceptions.ProbableAuthenticationError:
        return False
    await connection.close()
    return True


async def _registered(exchange: ExchangeUnderTest) -> list[str]:
    return [row["code"] for row in await exchange.fetch("SELECT code FROM agencies")]


async def test_agency_add_refuses_every_broker_user_of_the_exchange_itself(
    exchange: ExchangeUnderTest,
) -> None:
    worker_user = exchange.broker_user_for("replay")
    gateway_user = exchange.broker_user_for("gateway")
    settings = exchange.settings.model_copy(
        update={"exchange_users": [worker_user], "gateway_users": [gateway_user]}
    )
    own = "guest"  # the user of the test's LIENTHONG_AMQP_URL and management API
    for user in (own, worker_user, gateway_user):
        with pytest.raises(RegistrationError, match="is the exchange's own"):
            await register_agency(settings, HANOI, "Hà Nội", broker_user=user)
        # Not even when lienthong is told to leave the broker alone.
        with pytest.raises(RegistrationError, match="is the exchange's own"):
            await register_agency(settings, HANOI, "Hà Nội", broker_user=user, provision_user=False)
    assert await _registered(exchange) == []
    assert await exchange.admin.user_tags(worker_user) is None
    assert await _logs_in(settings.amqp_url)  # guest's password untouched


async def test_agency_add_refuses_a_broker_user_lienthong_did_not_create(
    exchange: ExchangeUnderTest,
) -> None:
    user = exchange.broker_user_for("operator")
    exchange.broker_users.append(user)
    await exchange.admin.create_user(user, "operators-own")
    await exchange.admin.set_permissions(exchange.vhost, user, FULL_ACCESS)
    with pytest.raises(RegistrationError, match="lienthong did not create it"):
        await register_agency(exchange.settings, HANOI, "Hà Nội", broker_user=user)
    with pytest.raises(RegistrationError, match="lienthong did not create it"):
        await register_agency(
            exchange.settings, HANOI, "Hà Nội", broker_user=user, rotate_password=True
        )
    assert await _registered(exchange) == []
    assert await _logs_in(url_for_user(exchange.settings.amqp_url, user, "operators-own"))
    assert await exchange.admin.get_permissions(exchange.vhost, user) == FULL_ACCESS


async def test_registering_again_resets_a_password_only_with_rotate_password(
    exchange: ExchangeUnderTest,
) -> None:
    first = await exchange.register(str(HANOI))
    user = exchange.broker_user_for(str(HANOI))
    assert AGENCY_USER_TAG in (await exchange.admin.user_tags(user) or [])
    # The directory loses the agency (a fresh database), the broker user stays.
    await exchange.fetch("DELETE FROM agencies WHERE code = $1", str(HANOI))

    with pytest.raises(RegistrationError, match=r"exists already.*--rotate-password"):
        await register_agency(exchange.settings, HANOI, "Hà Nội", broker_user=user)
    assert await _registered(exchange) == []
    assert await _logs_in(first.amqp_url)

    again = await register_agency(
        exchange.settings, HANOI, "Hà Nội", broker_user=user, rotate_password=True
    )
    assert again.password is not None
    assert await _logs_in(again.amqp_url)
    assert not await _logs_in(first.amqp_url)


async def test_agency_set_changes_the_password_only_with_rotate_password(
    exchange: ExchangeUnderTest,
) -> None:
    first = await exchange.register(str(HANOI))
    with pytest.raises(RegistrationError, match="add --rotate-password"):
        await change_agency(exchange.settings, HANOI, password="chosen-by-the-operator")
    assert await _logs_in(first.amqp_url)
    rotated = await change_agency(
        exchange.settings, HANOI, password="chosen-by-the-operator", rotate_password=True
    )
    assert rotated.password == "chosen-by-the-operator"
    assert await _logs_in(rotated.amqp_url)
    assert not await _logs_in(first.amqp_url)


async def test_a_new_broker_user_replaces_and_deletes_the_old_one(
    exchange: ExchangeUnderTest,
) -> None:
    first = await exchange.register(str(HANOI))
    old = exchange.broker_user_for(str(HANOI))
    new = exchange.broker_user_for("hanoi-2")
    exchange.broker_users.append(new)

    with pytest.raises(RegistrationError, match="is the exchange's own"):
        await change_agency(exchange.settings, HANOI, broker_user="guest")
    moved = await change_agency(exchange.settings, HANOI, broker_user=new)

    assert moved.broker_user == new and moved.replaced_user == old
    assert await exchange.fetchval(
        "SELECT broker_user FROM agencies WHERE code = $1", str(HANOI)
    ) == new  # fmt: skip
    assert await exchange.admin.user_tags(old) is None
    assert AGENCY_USER_TAG in (await exchange.admin.user_tags(new) or [])
    assert await _logs_in(moved.amqp_url)
    assert not await _logs_in(first.amqp_url)


async def test_a_disabled_agency_loses_its_access_and_what_it_sent_is_refused_history_kept(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    recipient = await exchange.register(MINISTRY)
    async with exchange.workers(1):
        async with sender.client() as client:
            await client.send_document(demo_document(sender, [recipient], 1, "VPCP", "Trước"))
        await exchange.wait_settled(1)
    assert len(await exchange.statuses_of(sender)) == 1  # its receipt, read

    # Published while the workers are stopped, decided after the disable.
    async with sender.client() as client:
        body = client.sign(demo_document(sender, [recipient], 2, "VPCP", "Sau"))
        (message_id,) = await client.submit(body, [MINISTRY])
    open_connection = await aio_pika.connect(sender.amqp_url)
    disabled = await disable_agency(exchange.settings, sender.code)

    async def closed() -> tuple[bool, str]:
        try:
            channel = await open_connection.channel()
        except Exception:  # whichever way aio-pika reports a connection the broker closed
            return True, ""
        await channel.close()
        return False, "the agency's open connection still opens channels"

    await wait_for(closed)
    assert disabled.disabled
    user = exchange.broker_user_for(GOVERNMENT_OFFICE)
    assert await exchange.admin.user_tags(user) is None
    assert not await _logs_in(sender.amqp_url)

    async with exchange.workers(1):
        await exchange.wait_settled(2)
    rows = await exchange.fetch(
        "SELECT outcome, reason_code FROM message_state ORDER BY message_pk"
    )
    assert [(r["outcome"], r["reason_code"]) for r in rows] == [
        (TransportOutcome.DELIVERED.value, None),
        (TransportOutcome.REJECTED.value, Reason.SENDER_DISABLED.code),
    ]
    # History: the agency, its message and its delivery are all still there.
    assert sorted(await _registered(exchange)) == sorted([GOVERNMENT_OFFICE, MINISTRY])
    assert await exchange.fetchval("SELECT count(*) FROM deliveries") == 1

    enabled = await enable_agency(exchange.settings, sender.code)
    assert not enabled.agency.disabled and enabled.password is not None
    assert not await _logs_in(sender.amqp_url)  # the password from before the disable
    sender = dataclasses.replace(sender, amqp_url=enabled.amqp_url)
    assert len(await exchange.inbox_of(recipient)) == 1
    await assert_rejected(
        exchange,
        Sent(sender, message_id, body, MINISTRY),
        Reason.SENDER_DISABLED,
        settled_before=1,
        problem="disabled",
    )


async def test_workers_refuse_to_start_when_an_agency_maps_to_a_trusted_user(
    exchange: ExchangeUnderTest,
) -> None:
    await exchange.register(str(HANOI))
    user = exchange.broker_user_for(str(HANOI))
    settings = exchange.settings.model_copy(
        update={"exchange_users": [user], "trust": exchange.local.keys_dir / "ca.cert.pem"}
    )
    with pytest.raises(TrustedUserError, match=f"agency {HANOI} has broker user"):
        await asyncio.wait_for(run_workers(settings, metrics_port=0), 60)

    env = {
        **os.environ,
        "LIENTHONG_AMQP_URL": settings.amqp_url,
        "LIENTHONG_DATABASE_URL": settings.database_url,
        "LIENTHONG_GATEWAY_USERS": json.dumps([user]),
        "LIENTHONG_TRUST": str(settings.trust),
        "LIENTHONG_RECEIPT_KEY": str(settings.receipt_key),
        "LIENTHONG_RECEIPT_CERT": str(settings.receipt_cert),
        "LIENTHONG_METRICS_PORT": "0",
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [*lienthong_command(), "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"agency {HANOI} has broker user {user!r}" in lines[0], lines
    assert "Traceback" not in result.stderr


def test_a_settings_object_names_every_trusted_user() -> None:
    settings = Settings(
        amqp_url="amqp://worker:x@127.0.0.1/",
        rabbitmq_api_url="http://admin:y@127.0.0.1:15672",
        exchange_users=["replay"],
        gateway_users=["gateway"],
    )
    assert settings.trusted_broker_users == {"worker", "admin", "replay", "gateway"}
