"""Reading the exchange's message headers: one decoder for every reader."""

from __future__ import annotations

from exchange.broker import headers as header
from exchange.broker.origin import dead_letter


def test_a_header_is_read_as_text_from_bytes_or_str_and_nothing_else() -> None:
    headers = {header.SENDER: b"000.00.00.G22", header.RECIPIENT: "000.00.00.H41", "n": 3}
    assert header.text(headers, header.SENDER) == "000.00.00.G22"
    assert header.text(headers, header.RECIPIENT) == "000.00.00.H41"
    assert header.text(headers, "n") is None
    assert header.text(headers, header.DOCUMENT_ID) is None
    assert header.text(None, header.SENDER) is None


def test_a_dead_letter_believes_origin_headers_from_the_exchange_users_only() -> None:
    forged = {header.RECIPIENT: "000.00.00.H99", header.ORIGINAL_USER: "someone-else"}
    from_agency = dead_letter("000.00.00.H41", "agency-user", forged, frozenset({"worker"}))
    assert (from_agency.routing_key, from_agency.broker_user) == ("000.00.00.H41", "agency-user")
    assert from_agency.failure is None
    parked = {**forged, header.FAILURE: b"database"}
    from_worker = dead_letter("lienthong.work", "worker", parked, frozenset({"worker"}))
    assert (from_worker.routing_key, from_worker.broker_user) == ("000.00.00.H99", "someone-else")
    assert from_worker.failure == "database"


def test_a_dead_letter_from_the_delivery_limit_keeps_the_recipient_of_its_death_record() -> None:
    deaths = [
        {
            "queue": b"lienthong.work",
            "reason": b"delivery_limit",
            "routing-keys": [b"000.00.00.H41"],
        }
    ]
    letter = dead_letter("lienthong.work", "agency-user", {"x-death": deaths}, frozenset())
    assert letter.routing_key == "000.00.00.H41" and letter.delivery_limit
