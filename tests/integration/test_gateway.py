"""The gateway against the real RabbitMQ and PostgreSQL, spoken to as the SDK speaks.

Each test runs its own exchange (vhost, database, CA, workers) with the
gateway in process; requests are signed exactly as SDKVXP-2.0.0 signs them
(:func:`exchange.gateway.auth.sign_request`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aio_pika
import httpx
import pytest

from exchange.broker.headers import AGENCY
from exchange.checks.signature import sign
from exchange.demo import LocalAgency, demo_document
from exchange.edxml.model import DocumentPackage, ResponseFor
from exchange.edxml.reader import read_package
from exchange.edxml.safexml import parse
from exchange.edxml.writer import new_status, write_package
from exchange.gateway.auth import sign_request
from exchange.gateway.protocol import REASON_CODES, sdk_hash
from exchange.pki import revoke
from exchange.reasons import Reason
from exchange.status import StatusCode
from tests.exchange_fixtures import ExchangeUnderTest, wait_for
from tests.gateway_support import (
    BASE_PATH,
    GatewayUnderTest,
    running_gateway,
    serving,
    trust_gateway,
)

pytestmark = pytest.mark.services

G22, H26, G09 = "000.00.00.G22", "000.00.00.H26", "000.00.00.G09"


@pytest.fixture
async def agencies(exchange: ExchangeUnderTest) -> dict[str, LocalAgency]:
    """Three registered agencies; the workers will believe guest's agency header."""
    trust_gateway(exchange)
    return {code: await exchange.register(code) for code in (G22, H26, G09)}


@pytest.fixture
async def gw(
    exchange: ExchangeUnderTest, agencies: dict[str, LocalAgency]
) -> AsyncIterator[GatewayUnderTest]:
    """A gateway with system SYS-A acting for G22 and SYS-B for H26, workers running."""
    async with exchange.workers(1), running_gateway(exchange) as under_test:
        await under_test.add_system("SYS-A", [G22])
        await under_test.add_system("SYS-B", [H26])
        yield under_test


def unsigned_document(agencies: dict[str, LocalAgency], to: list[str], number: int = 1) -> bytes:
    """An unsigned document from G22, as a QLVB hands it to the axis."""
    package = demo_document(
        agencies[G22], [agencies[code] for code in to], number, "VPCP-TH", "Về việc thử cổng"
    )
    return write_package(package)


def status_for(document: bytes, reporter: LocalAgency, code: StatusCode) -> bytes:
    """An unsigned status package ``reporter`` sends about ``document``."""
    package = read_package(parse(document))
    assert isinstance(package, DocumentPackage)
    response_for = ResponseFor(
        organ_id=package.sender.organ_id,
        code=f"{package.code.code_number}/{package.code.code_notation}",
        promulgation_date=package.promulgation.promulgation_date,
        document_id=package.document_id,
    )
    return write_package(
        new_status(sender=reporter.organization, response_for=response_for, status_code=code)
    )


async def test_a_document_goes_from_one_system_to_another_and_statuses_come_back(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    package = unsigned_document(agencies, [H26])
    sent = await gw.send("SYS-A", G22, package)
    assert sent["status"] == "OK" and sent["ErrorCode"] == "0", sent
    doc_id = sent["DocId"]
    assert len(doc_id) == 24

    (item,) = await gw.wait_received("SYS-B", 1)
    assert item["from"] == G22 and item["to"] == H26 and item["messageType"] == "edoc"
    received = await gw.get("SYS-B", item["docId"])
    # The gateway signed it for G22; what arrives is exactly what the worker delivered.
    assert b"http://www.w3.org/2000/09/xmldsig#" in received
    assert read_package(parse(received)).subject == "Về việc thử cổng"
    assert (await gw.confirm("SYS-B", item["docId"]))["ErrorCode"] == "0"
    assert await gw.received("SYS-B") == []

    for code in (StatusCode.ACCEPTED, StatusCode.DONE):
        reply = await gw.send(
            "SYS-B", H26, status_for(received, agencies[H26], code), message_type="status"
        )
        assert reply["ErrorCode"] == "0", reply

    # SYS-A gets the receipt of its document and the two statuses; SYS-B the
    # receipts of its two statuses.
    statuses = await gw.wait_received("SYS-A", 3, "status")
    assert {(s["from"], s["to"], s["messageType"]) for s in statuses} == {(H26, G22, "status")}
    kinds = await gw.exchange.fetch(
        "SELECT kind FROM gateway_mailbox WHERE agency = $1 ORDER BY id", G22
    )
    assert sorted(row["kind"] for row in kinds) == ["receipt", "status", "status"]
    sent_list = await gw.call(
        "getSentEdocList", "SYS-A", {"servicetype": "eDoc", "messagetype": "edoc", "docId": doc_id}
    )
    (line,) = sent_list["data"]
    assert line["senderDocId"] == doc_id and line["toCode"] == H26
    assert line["sendStatus"] == "delivered"
    assert line["receiveStatus"] == "06"
    assert line["receiverDocId"] == item["docId"]
    # The record says who published: the gateway's user for G22.
    publisher = await gw.exchange.fetchval(
        "SELECT broker_user FROM messages WHERE amqp_message_id = $1", f"{doc_id}.{H26}"
    )
    assert publisher == f"guest for {G22}"


async def test_headers_are_read_in_any_case_and_stale_ones_are_ignored(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    reply = await gw.call(
        "getReceivedEdocList",
        "SYS-B",
        {"servicetype": "eDoc", "messagetype": "edoc"},
        headers=[
            # What an earlier sendEdoc of the same SDK object left behind, unsigned here.
            ("XROADVNPT-FROM", G09),
            ("xroadvnpt-hash-file", "00"),
            ("XroadVnpt-docId", "ffffffffffffffffffffffff"),
        ],
    )
    assert reply == {"status": "OK", "ErrorCode": "0", "ErrorDesc": "", "data": []}
    # Names in another case than the SDK's: the same headers.
    headers = [
        (name.upper() if name.startswith("XroadVnpt-") else name, value)
        for name, value in sign_request("SYS-B", gw.secrets["SYS-B"], {"messagetype": "edoc"})
    ]
    response = await gw.http.post(
        f"{BASE_PATH}/getReceivedEdocList", content=b"{}", headers=headers
    )
    assert response.json()["ErrorCode"] == "0"


async def test_the_shortened_hash_and_the_full_one_are_both_accepted(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    # Find a package whose digest has a byte below 0x10, so the SDK's hex is shorter.
    number = 1
    while True:
        package = unsigned_document(agencies, [H26], number)
        digest = hashlib.sha256(package).digest()
        if any(byte < 0x10 for byte in digest):
            break
        number += 1
    assert len(sdk_hash(digest)) < 64
    assert (await gw.send("SYS-A", G22, package))["ErrorCode"] == "0"
    other = unsigned_document(agencies, [H26], number + 1000)
    full = hashlib.sha256(other).hexdigest()
    assert (await gw.send("SYS-A", G22, other, hash_file=full))["ErrorCode"] == "0"


async def test_an_altered_body_is_refused_with_an_empty_doc_id(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    package = unsigned_document(agencies, [H26])
    hash_file = sdk_hash(hashlib.sha256(package).digest())
    reply = await gw.send(
        "SYS-A", G22, package.replace("thử".encode(), "sửa".encode()), hash_file=hash_file
    )
    assert reply["status"] == "FAIL" and reply["ErrorCode"] == "204" and reply["DocId"] == ""


async def test_wrong_secret_missing_headers_and_another_systems_agency_are_refused(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    package = unsigned_document(agencies, [H26])
    wrong = await gw.call(
        "getReceivedEdocList", "SYS-A", {"messagetype": "edoc"}, secret="not-the-secret-at-all"
    )
    assert (wrong["status"], wrong["ErrorCode"]) == ("FAIL", "103")
    assert wrong["data"] == []
    unknown = await gw.call("getEdoc", "SYS-A", {"docId": "x"}, headers=[])
    assert unknown["ErrorCode"] == "401" and unknown["data"] == ""
    bare = await gw.http.post(f"{BASE_PATH}/sendEdoc", content=package)
    assert bare.json() == {
        "status": "FAIL",
        "ErrorCode": "101",
        "ErrorDesc": bare.json()["ErrorDesc"],
        "DocId": "",
    }
    not_theirs = await gw.send("SYS-B", G22, package)
    assert not_theirs["ErrorCode"] == "105" and not_theirs["DocId"] == ""


async def test_a_signed_header_that_differs_from_the_sent_one_is_refused(
    gw: GatewayUnderTest,
) -> None:
    headers = [
        (name, G09 if name == "XroadVnpt-from" else value)
        for name, value in sign_request("SYS-A", gw.secrets["SYS-A"], {"from": G22})
    ]
    # The value sent is not the value signed: only the first header counts.
    headers = [h for h in headers if h[0] != "XroadVnpt-from"] + [("XroadVnpt-from", G09)]
    response = await gw.http.post(
        f"{BASE_PATH}/getReceivedEdocList", content=b"{}", headers=headers
    )
    assert response.json()["ErrorCode"] == "104"


async def test_packages_the_checks_refuse_get_the_receipts_reason_and_its_code(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    broken = await gw.send("SYS-A", G22, b"<edXML><unclosed></edXML>")
    assert broken["ErrorCode"] == REASON_CODES[Reason.NOT_WELL_FORMED]
    assert broken["ErrorDesc"].startswith(Reason.NOT_WELL_FORMED.vietnamese.rstrip("."))
    # An unregistered recipient.
    outsider = LocalAgency(
        agencies[G09].code.__class__.parse("000.00.00.H49"),
        "UBND tỉnh Quảng Ninh",
        agencies[G09].credential,
        "",
    )
    package = write_package(
        demo_document(agencies[G22], [outsider], 7, "VPCP-TH", "Gửi nơi chưa đăng ký")
    )
    unknown = await gw.send("SYS-A", G22, package)
    assert unknown["ErrorCode"] == REASON_CODES[Reason.UNKNOWN_RECIPIENT], unknown
    # A status package sent as an edoc.
    document = unsigned_document(agencies, [H26])
    status = status_for(document, agencies[H26], StatusCode.ACCEPTED)
    assert (await gw.send("SYS-B", H26, status))["ErrorCode"] == "205"


async def test_an_unsigned_package_of_an_agency_whose_key_the_gateway_lacks_is_refused(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency], exchange: ExchangeUnderTest
) -> None:
    (exchange.local.keys_dir / f"{G22}.key.pem").rename(exchange.local.keys_dir / "moved.pem")
    gw.gateway._credentials.clear()
    reply = await gw.send("SYS-A", G22, unsigned_document(agencies, [H26]))
    assert reply["ErrorCode"] == "330" and G22 in reply["ErrorDesc"]


async def test_a_package_with_a_real_signature_is_published_as_it_is(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    credential = agencies[G22].credential
    signed = sign(unsigned_document(agencies, [H26]), credential.key_pem, credential.cert_chain_pem)
    reply = await gw.send("SYS-A", G22, signed)
    assert reply["ErrorCode"] == "0", reply
    (item,) = await gw.wait_received("SYS-B", 1)
    assert await gw.get("SYS-B", item["docId"]) == signed


async def test_a_package_signed_with_a_revoked_certificate_is_refused_after_a_reload(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency], exchange: ExchangeUnderTest
) -> None:
    credential = agencies[G22].credential
    signed = sign(unsigned_document(agencies, [H26]), credential.key_pem, credential.cert_chain_pem)
    assert exchange.local.ca is not None
    # The CRL goes beside the trust anchors, where the gateway looks (LIENTHONG_CRL_DIR unset).
    revoke(exchange.local.ca, credential.certificate, exchange.local.keys_dir)
    assert gw.gateway.reload_revocations()
    reply = await gw.send("SYS-A", G22, signed)
    assert reply["ErrorCode"] == REASON_CODES[Reason.CERT_REVOKED], reply


async def test_oversized_bodies_are_refused_before_they_are_read(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    limit = gw.gateway.settings.max_package_bytes
    reply = await gw.call(
        "sendEdoc",
        "SYS-A",
        {"from": G22, "messagetype": "edoc", "hash-file": "00"},
        body=b"x" * (limit + 3),
    )
    assert reply["ErrorCode"] == "203" and reply["DocId"] == ""


async def test_concurrent_pollers_of_one_system_get_each_item_once(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    for number in range(6):
        reply = await gw.send("SYS-A", G22, unsigned_document(agencies, [H26], number + 1))
        assert reply["ErrorCode"] == "0"
    await gw.exchange.wait_settled(6)

    async def moved() -> tuple[bool, str]:
        count = await gw.exchange.fetchval(
            "SELECT count(*) FROM gateway_mailbox WHERE kind = 'document'"
        )
        return count == 6, f"{count} of 6 in the mailbox"

    await wait_for(moved)
    lists = await asyncio.gather(*(gw.received("SYS-B") for _ in range(4)))
    ids = [item["docId"] for listed in lists for item in listed]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 6
    # Nothing was confirmed: once the leases end, every item is listed again.
    await gw.exchange.fetch("UPDATE gateway_mailbox SET leased_until = now()")
    assert len(await gw.received("SYS-B")) == 6


async def test_registering_and_deleting_agencies_is_refused_and_the_directory_is_listed(
    gw: GatewayUnderTest,
) -> None:
    refused = await gw.call("registerAgency", "SYS-A", body=b'{"code": "000.00.00.H49"}')
    assert refused["ErrorCode"] == "501" and refused["status"] == "FAIL"
    assert (await gw.call("deleteAgency", "SYS-A", {"AgencyCode": G22}))["ErrorCode"] == "501"
    listed = await gw.call("getAgenciesList", "SYS-A", body=b"")
    assert {unit["code"] for unit in listed["data"]} == {G22, H26, G09}
    unit = (await gw.call("getSynchronizeUnit", "SYS-A"))["data"][0]
    assert set(unit) == {
        "id",
        "pid",
        "code",
        "name",
        "mail",
        "version",
        "centerCode",
        "deleted",
        "modifyDate",
        "isAgency",
    }


async def test_healthz_and_a_real_port(gw: GatewayUnderTest) -> None:
    async with serving(gw) as endpoint, httpx.AsyncClient() as client:
        root = endpoint.removesuffix(BASE_PATH)
        assert (await client.get(f"{root}/healthz")).json() == {"status": "OK"}
        reply = await client.post(f"{endpoint}/noSuchOperation", content=b"{}")
        assert reply.json()["ErrorCode"] == "202"


async def _publish(url: str, user: str, body: bytes, recipient: str, message_id: str) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("lienthong.submit", ensure=False)
        await exchange.publish(
            aio_pika.Message(body, message_id=message_id, user_id=user, headers={AGENCY: G22}),
            recipient,
        )
    finally:
        await connection.close()


async def test_the_agency_header_is_believed_only_from_gateway_users(
    exchange: ExchangeUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    credential = agencies[G22].credential
    package = sign(unsigned_document(agencies, [H26]), credential.key_pem, credential.cert_pem)
    async with exchange.workers(1):
        # An agency's own user naming another agency in the header: still itself.
        await _publish(
            agencies[H26].amqp_url, exchange.broker_user_for(H26), package, H26, "from-h26"
        )
        # The gateway's user (guest, in LIENTHONG_GATEWAY_USERS) acting for G22.
        await _publish(exchange.settings.amqp_url, "guest", package, H26, "from-gateway")
        await exchange.wait_settled(2)
    rows = await exchange.fetch(
        "SELECT m.amqp_message_id, m.broker_user, s.outcome, s.reason_code, s.sender"
        " FROM messages m JOIN message_state s ON s.message_pk = m.id"
    )
    by_id = {row["amqp_message_id"]: row for row in rows}
    assert by_id["from-h26"]["outcome"] == "rejected"
    assert by_id["from-h26"]["reason_code"] == "REJECTED_SENDER_MISMATCH"
    assert by_id["from-h26"]["broker_user"] == exchange.broker_user_for(H26)
    assert by_id["from-gateway"]["outcome"] == "delivered"
    assert by_id["from-gateway"]["broker_user"] == f"guest for {G22}"
    assert by_id["from-gateway"]["sender"] == G22


async def test_without_the_setting_the_gateways_header_is_not_believed(
    exchange: ExchangeUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    exchange.local.settings = exchange.local.settings.model_copy(update={"gateway_users": []})
    credential = agencies[G22].credential
    package = sign(unsigned_document(agencies, [H26]), credential.key_pem, credential.cert_pem)
    async with exchange.workers(1):
        await _publish(exchange.settings.amqp_url, "guest", package, H26, "unlisted-gateway")
        await exchange.wait_settled(1)
    outcome = await exchange.fetchval("SELECT outcome FROM message_state")
    assert outcome == "rejected"


async def test_fail_and_processing_keep_an_item_listed_and_done_takes_it_off(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    assert (await gw.send("SYS-A", G22, unsigned_document(agencies, [H26])))["ErrorCode"] == "0"
    (item,) = await gw.wait_received("SYS-B", 1)
    assert item["status"] == "pending"
    await gw.get("SYS-B", item["docId"])
    for state in ("processing", "fail"):
        assert (await gw.confirm("SYS-B", item["docId"], state))["ErrorCode"] == "0"
        (again,) = await gw.wait_received("SYS-B", 1)
        assert again["docId"] == item["docId"] and again["status"] == state
    assert (await gw.confirm("SYS-B", item["docId"], "read"))["ErrorCode"] == "402"
    # Another system cannot see, fetch or confirm it.
    assert (await gw.call("getEdoc", "SYS-A", {"docId": item["docId"]}))["ErrorCode"] == "401"
    assert (await gw.confirm("SYS-A", item["docId"]))["ErrorCode"] == "401"
    assert (await gw.confirm("SYS-B", item["docId"]))["ErrorCode"] == "0"
    await gw.exchange.fetch("UPDATE gateway_mailbox SET leased_until = NULL")
    assert await gw.received("SYS-B") == []


async def test_a_stale_doc_id_in_get_sent_edoc_list_lists_every_submission(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    first = await gw.send("SYS-A", G22, unsigned_document(agencies, [H26], 1))
    second = await gw.send("SYS-A", G22, unsigned_document(agencies, [H26, G09], 2))
    params = {"servicetype": "eDoc", "messagetype": "edoc"}
    one = await gw.call("getSentEdocList", "SYS-A", {**params, "docId": first["DocId"]})
    assert [line["senderDocId"] for line in one["data"]] == [first["DocId"]]
    stale = await gw.call("getSentEdocList", "SYS-A", {**params, "docId": "0" * 24})
    assert sorted((line["senderDocId"], line["toCode"]) for line in stale["data"]) == sorted(
        [(first["DocId"], H26), (second["DocId"], H26), (second["DocId"], G09)]
    )
    # Another system's submissions are not listed.
    assert (await gw.call("getSentEdocList", "SYS-B", params))["data"] == []


async def test_with_the_database_away_the_reply_says_to_try_again(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    assert gw.gateway.pool is not None
    await gw.gateway.pool.close()
    reply = await gw.send("SYS-A", G22, unsigned_document(agencies, [H26]))
    assert (reply["status"], reply["ErrorCode"], reply["DocId"]) == ("FAIL", "901", "")
    listed = await gw.call("getReceivedEdocList", "SYS-B", {"messagetype": "edoc"})
    assert (listed["ErrorCode"], listed["data"]) == ("901", [])


async def test_mailbox_depths_and_the_oldest_unconfirmed_item(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    from exchange.store import gateway as store

    async with gw.exchange.db() as conn:
        assert await store.oldest_unconfirmed(conn) is None
    assert (await gw.send("SYS-A", G22, unsigned_document(agencies, [H26])))["ErrorCode"] == "0"
    (item,) = await gw.wait_received("SYS-B", 1)
    async with gw.exchange.db() as conn:
        depths = await store.mailbox_depths(conn)
        assert depths[(H26, "edoc")] == 1
        assert await store.oldest_unconfirmed(conn) is not None
    await gw.confirm("SYS-B", item["docId"])
    async with gw.exchange.db() as conn:
        assert (H26, "edoc") not in await store.mailbox_depths(conn)


async def test_every_answer_is_reported_to_the_observers(gw: GatewayUnderTest) -> None:
    seen: list[tuple[str, str, float, str | None]] = []
    gw.gateway.observers.append(lambda *answer: seen.append(answer))
    await gw.received("SYS-B")
    await gw.call("getEdoc", "SYS-B", {"docId": "nothing"})
    await gw.http.post(f"{BASE_PATH}/getEdoc", content=b"{}")
    assert [(op, outcome, system) for op, outcome, _, system in seen] == [
        ("getReceivedEdocList", "0", "SYS-B"),
        ("getEdoc", "401", "SYS-B"),
        ("getEdoc", "101", None),
    ]
    assert all(seconds >= 0 for _, _, seconds, _ in seen)


async def test_the_mailbox_figures_follow_items_until_confirmed(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency]
) -> None:
    from prometheus_client import REGISTRY

    from exchange.gateway import measure

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    assert gw.gateway.pool is not None
    await measure.refresh(gw.gateway.pool)
    assert sample("lienthong_gateway_mailbox_items", level="1", message_type="edoc") == 0
    assert sample("lienthong_gateway_oldest_unconfirmed_age_seconds") == 0
    # SYS-A and SYS-B were registered moments ago and have called nothing yet.
    silence = sample("lienthong_gateway_longest_silence_seconds")
    assert silence is not None and 0 <= silence < 3600
    assert (await gw.send("SYS-A", G22, unsigned_document(agencies, [H26])))["ErrorCode"] == "0"
    (item,) = await gw.wait_received("SYS-B", 1)
    async with gw.exchange.db() as conn:
        await conn.execute("UPDATE gateway_mailbox SET received_at = now() - interval '8 days'")
    await measure.refresh(gw.gateway.pool)
    assert sample("lienthong_gateway_mailbox_items", level="1", message_type="edoc") == 1
    age = sample("lienthong_gateway_oldest_unconfirmed_age_seconds")
    assert age is not None and age >= 8 * 86400
    await gw.confirm("SYS-B", item["docId"])
    await measure.refresh(gw.gateway.pool)
    assert sample("lienthong_gateway_mailbox_items", level="1", message_type="edoc") == 0


async def test_a_system_silent_for_days_sets_the_longest_silence(gw: GatewayUnderTest) -> None:
    from prometheus_client import REGISTRY

    from exchange.gateway import measure

    assert gw.gateway.pool is not None
    async with gw.exchange.db() as conn:
        await conn.execute(
            "UPDATE gateway_systems SET last_seen_at = now() - interval '2 days',"
            " created_at = now() - interval '3 days' WHERE system_id = 'SYS-A'"
        )
    await measure.refresh(gw.gateway.pool)
    silence = REGISTRY.get_sample_value("lienthong_gateway_longest_silence_seconds")
    assert silence is not None and 2 * 86400 <= silence < 2 * 86400 + 3600
    # A disabled system is not expected to call.
    async with gw.exchange.db() as conn:
        await conn.execute("UPDATE gateway_systems SET enabled = false WHERE system_id = 'SYS-A'")
    await measure.refresh(gw.gateway.pool)
    silence = REGISTRY.get_sample_value("lienthong_gateway_longest_silence_seconds")
    assert silence is not None and silence < 2 * 86400


async def test_json_log_lines_carry_the_system_and_the_agency(
    gw: GatewayUnderTest, agencies: dict[str, LocalAgency], caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import logging

    from exchange.logs import JsonFormatter

    caplog.set_level(logging.INFO, logger="exchange.gateway")
    package = unsigned_document(agencies, [H26])
    assert (await gw.send("SYS-A", G22, package))["ErrorCode"] == "0"
    altered = package.replace("thử".encode(), "sửa".encode())
    hash_file = sdk_hash(hashlib.sha256(package).digest())
    assert (await gw.send("SYS-A", G22, altered, hash_file=hash_file))["ErrorCode"] == "204"
    lines = [
        json.loads(JsonFormatter().format(record))
        for record in caplog.records
        if record.name == "exchange.gateway" and getattr(record, "operation", None) == "sendEdoc"
    ]
    accepted, refused = lines
    assert (accepted["system"], accepted["agency"]) == ("SYS-A", G22)
    assert accepted["doc_id"] and accepted["document_id"]
    assert (refused["system"], refused["agency"], refused["error_code"]) == ("SYS-A", G22, "204")
