"""Revocation, registered certificates and SHA-1 per agency, through the real worker.

Agencies publish through their own broker users to in-process workers
(:meth:`exchange.demo.LocalExchange.workers`); revocation lists are written
beside the trust anchor, where the workers read them, and SIGHUP makes the
running workers read them (and the trust anchors and the directory) again.
"""

from __future__ import annotations

import os
import signal

import pytest
from prometheus_client import REGISTRY

from exchange.checks.signature import sign
from exchange.demo import LocalAgency, demo_document
from exchange.edxml.writer import write_package
from exchange.pki import issue_agency_certificate, revoke
from exchange.reasons import Reason
from exchange.registry import add_certificate, change_agency, register_agency, remove_certificate
from exchange.status import TransportOutcome
from tests.exchange_fixtures import ExchangeUnderTest, wait_for
from tests.integration.test_exchange import Sent, assert_rejected, expect_rejection, inbox_bodies

pytestmark = pytest.mark.services

GOVERNMENT_OFFICE = "000.00.00.G22"
MINISTRY = "000.00.00.G09"
HANOI = "000.00.00.H26"


def _reloads() -> float:
    return REGISTRY.get_sample_value("lienthong_trust_reloads_total", {"outcome": "ok"}) or 0.0


def _signatures_verified() -> float:
    sample = {"stage": "verify"}
    return REGISTRY.get_sample_value("lienthong_stage_seconds_count", sample) or 0.0


async def sighup_and_wait() -> None:
    """SIGHUP this process (the workers run in it), and wait until they reloaded."""
    # Without the workers' handler, SIGHUP would end the test run itself.
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, None)
    before = _reloads()
    os.kill(os.getpid(), signal.SIGHUP)

    async def reloaded() -> tuple[bool, str]:
        return _reloads() > before, "the workers have not reloaded yet"

    await wait_for(reloaded)


async def _delivered(exchange: ExchangeUnderTest, count: int) -> None:
    outcomes = [row["outcome"] for row in await exchange.fetch("SELECT outcome FROM message_state")]
    assert outcomes == [TransportOutcome.DELIVERED.value] * count, outcomes


async def test_revoked_certificate_is_refused_at_the_next_crl_reload_even_if_examined_before(
    exchange: ExchangeUnderTest,
) -> None:
    # The periodic reload (not SIGHUP, which also reloads the trust anchors
    # and so forgets every remembered examination): the worker's memory of
    # the package's examination survives it, and must not outlive the CRL.
    exchange.local.settings = exchange.settings.model_copy(update={"crl_reload_s": 0.2})
    sender = await exchange.register(GOVERNMENT_OFFICE)
    ministry = await exchange.register(MINISTRY)
    hanoi = await exchange.register(HANOI)
    document = demo_document(sender, [ministry, hanoi], 12, "VPCP", "Về việc thu hồi chứng thư")
    async with sender.client() as client:
        signed = client.sign(document)

    # One worker: the second copy meets the examination the first one left.
    async with exchange.workers(1):
        async with sender.client() as client:
            await client.submit(signed, [MINISTRY])
        await exchange.wait_settled(1)
        assert await inbox_bodies(exchange, ministry) == [signed]
        await exchange.statuses_of(sender)  # the receipt, out of the way

        assert exchange.local.ca is not None
        before = _reloads()
        revoke(exchange.local.ca, sender.credential.certificate, exchange.local.keys_dir)

        async def reloaded_with_the_crl() -> tuple[bool, str]:
            lists = REGISTRY.get_sample_value("lienthong_crl_lists")
            return _reloads() > before and lists == 1.0, f"{lists} lists after the reloads"

        await wait_for(reloaded_with_the_crl)
        verified = _signatures_verified()

        # The same bytes, remembered for a minute by the worker: refused all the same.
        receipt = await expect_rejection(
            exchange,
            sender,
            signed,
            HANOI,
            Reason.CERT_REVOKED,
            settled_before=1,
            problem="revoked on",
        )
    assert receipt.reason_code == "REJECTED_CERT_REVOKED"
    assert await inbox_bodies(exchange, hanoi) == []
    # It was the remembered examination that met the revocation: no signature verified.
    assert _signatures_verified() == verified


async def test_sighup_reloads_the_revocation_lists(exchange: ExchangeUnderTest) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    await exchange.register(MINISTRY)
    document = demo_document(
        sender, [exchange.agencies[sender.code.parse(MINISTRY)]], 13, "VPCP", "Về việc ký số"
    )
    async with sender.client() as client:
        signed = client.sign(document)
    async with exchange.workers(1):
        assert exchange.local.ca is not None
        revoke(exchange.local.ca, sender.credential.certificate, exchange.local.keys_dir)
        await sighup_and_wait()
        await expect_rejection(exchange, sender, signed, MINISTRY, Reason.CERT_REVOKED)


async def test_sighup_while_messages_flow_drops_none(exchange: ExchangeUnderTest) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    ministry = await exchange.register(MINISTRY)
    count = 30
    async with sender.client() as client:
        bodies = [
            client.sign(demo_document(sender, [ministry], 200 + n, "VPCP", f"Văn bản số {n}"))
            for n in range(count)
        ]
    async with exchange.workers(2):
        async with sender.client() as client:
            for n, body in enumerate(bodies):
                await client.submit(body, [MINISTRY])
                if n == count // 2:
                    await sighup_and_wait()
        await exchange.wait_settled(count)
    await _delivered(exchange, count)
    assert sorted(await inbox_bodies(exchange, ministry)) == sorted(bodies)


async def test_only_a_registered_certificate_signs_and_a_rollover_keeps_both_until_retired(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    ministry = await exchange.register(MINISTRY)
    assert exchange.local.ca is not None
    # A second certificate from the trusted CA, naming the office: not registered.
    renewed = issue_agency_certificate(
        exchange.local.ca, sender.code, common_name="Văn phòng Chính phủ (2027)"
    )

    def signed_with(credential: object, number: int) -> bytes:
        document = demo_document(sender, [ministry], number, "VPCP", "Về việc đổi chứng thư số")
        key = credential.key_pem  # type: ignore[attr-defined]
        return sign(write_package(document), key, credential.cert_chain_pem)  # type: ignore[attr-defined]

    async with exchange.workers(1):
        await expect_rejection(
            exchange,
            sender,
            signed_with(renewed, 1),
            MINISTRY,
            Reason.CERT_NOT_REGISTERED,
            problem="not among the 1 registered",
        )
        # The rollover: the new certificate registered beside the old one.
        agency = await add_certificate(exchange.settings, sender.code, renewed.cert_pem.decode())
        assert len(agency.certificates) == 2
        await sighup_and_wait()
        async with sender.client() as client:
            await client.submit(signed_with(renewed, 2), [MINISTRY])
            await client.submit(signed_with(sender.credential, 3), [MINISTRY])
        await exchange.wait_settled(3)
        assert len(await inbox_bodies(exchange, ministry)) == 2
        await exchange.statuses_of(sender)
        # The old one retired: what it signs is refused from the reload on.
        await remove_certificate(
            exchange.settings, sender.code, sender.credential.cert_pem.decode()
        )
        await sighup_and_wait()
        await expect_rejection(
            exchange,
            sender,
            signed_with(sender.credential, 4),
            MINISTRY,
            Reason.CERT_NOT_REGISTERED,
            settled_before=3,
        )


async def test_agency_registered_without_a_certificate_receives_but_cannot_send(
    exchange: ExchangeUnderTest,
) -> None:
    sender = await exchange.register(GOVERNMENT_OFFICE)
    user = exchange.broker_user_for(MINISTRY)
    exchange.broker_users.append(user)
    registration = await register_agency(
        exchange.settings, ministry_code := sender.code.parse(MINISTRY), "Bộ Nội vụ",
        broker_user=user,
    )  # fmt: skip
    assert registration.agency.certificates == ()
    assert exchange.local.ca is not None
    credential = issue_agency_certificate(exchange.local.ca, ministry_code, common_name="Bộ Nội vụ")
    ministry = LocalAgency(ministry_code, "Bộ Nội vụ", credential, registration.amqp_url)
    exchange.local.agencies[ministry_code] = ministry

    async with exchange.workers(1):
        async with sender.client() as client:
            await client.send_document(demo_document(sender, [ministry], 5, "VPCP", "Gửi Bộ"))
        await exchange.wait_settled(1)
        assert len(await inbox_bodies(exchange, ministry)) == 1
        async with ministry.client() as client:
            body = client.sign(demo_document(ministry, [sender], 6, "BNV", "Trả lời"))
            (message_id,) = await client.submit(body, [GOVERNMENT_OFFICE])
        await assert_rejected(
            exchange,
            Sent(ministry, message_id, body, GOVERNMENT_OFFICE),
            Reason.CERT_NOT_REGISTERED,
            settled_before=1,
            problem="can receive but not send",
        )


async def test_sha1_is_accepted_only_from_the_agency_allowed_it(
    exchange: ExchangeUnderTest,
) -> None:
    legacy = await exchange.register(GOVERNMENT_OFFICE)
    modern = await exchange.register(HANOI)
    ministry = await exchange.register(MINISTRY)
    await change_agency(exchange.settings, legacy.code, allow_sha1=True)

    def sha1_signed(agency: LocalAgency, number: int) -> bytes:
        document = demo_document(agency, [ministry], number, "CV", "Văn bản ký SHA-1")
        credential = agency.credential
        return sign(write_package(document), credential.key_pem, credential.cert_pem, digest="sha1")

    async with exchange.workers(1):
        allowed = sha1_signed(legacy, 1)
        async with legacy.client() as client:
            await client.submit(allowed, [MINISTRY])
        await exchange.wait_settled(1)
        assert await inbox_bodies(exchange, ministry) == [allowed]
        await expect_rejection(
            exchange,
            modern,
            sha1_signed(modern, 2),
            MINISTRY,
            Reason.SIGNATURE_ALGORITHM,
            settled_before=1,
            problem="accepted only from agencies the operator allows it for",
        )
