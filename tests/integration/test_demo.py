"""The four-level demo with part of the agencies behind the gateway, on the real services.

``lienthong demo --via-gateway`` (scripts/demo.sh runs it): the district of
Phú Thọ and its commune send and receive through the gateway with the axis
protocol, the others over AMQP; every sender's table must show every
document at every recipient with its latest status, whichever way each
side is connected.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exchange.demo import DEMO_AGENCIES, GATEWAY_AGENCIES, run_demo
from tests.exchange_fixtures import ExchangeUnderTest

pytestmark = pytest.mark.services

# The table the README's quick start shows: sender, document, recipient, latest status.
EXPECTED = {
    ("000.00.00.G22", "101/VPCP-TH", "000.00.00.G09"): "06 hoàn thành",
    ("000.00.00.G22", "101/VPCP-TH", "000.00.00.H26"): "06 hoàn thành",
    ("000.00.00.G22", "101/VPCP-TH", "000.00.24.H44"): "06 hoàn thành",
    ("000.00.00.H26", "202/UBND-KSTTHC", "000.00.01.H26"): "06 hoàn thành",
    ("000.00.24.H44", "303/UBND-VP", "000.46.24.H44"): "06 hoàn thành",
    ("000.46.24.H44", "44/UBND", "000.00.24.H44"): "02 trả lại",
    ("000.00.00.G09", "505/BNV-VP", "000.00.00.G22"): "06 hoàn thành",
}


def rows_of(table: str) -> dict[tuple[str, str, str], str]:
    """The table's rows by (sender, number/notation, recipient)."""
    rows = {}
    for line in table.splitlines()[2:]:
        sender, document, recipient, status = line.split(maxsplit=3)
        number, notation = document.split(",")[2].split("/", 1)
        rows[(sender, f"{number}/{notation}", recipient)] = status
    return rows


async def test_the_demo_via_the_gateway_shows_every_document_and_status(
    exchange: ExchangeUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = f"gw-demo-{os.getpid()}"
    prefix = exchange.broker_user_for("")
    exchange.broker_users.extend(f"{prefix}{code}" for code, _ in DEMO_AGENCIES)
    try:
        table = await run_demo(
            exchange.settings,
            tmp_path / "keys",
            via_gateway=True,
            gateway_user=user,
            user_prefix=prefix,
        )
    finally:
        await exchange.admin.delete_user(user)

    assert rows_of(table) == EXPECTED
    printed = capsys.readouterr().out
    assert "gateway serving the axis protocol at http://127.0.0.1:" in printed
    assert "sent 303/UBND-VP from 000.00.24.H44 to 000.46.24.H44 through the gateway" in printed
    assert "000.00.24.H44 received 101/VPCP-TH through the gateway and reported" in printed
    # What the gateway agencies sent was signed for them by the gateway and
    # published as its user; the others' as their own users.
    rows = await exchange.fetch(
        "SELECT DISTINCT broker_user FROM messages WHERE broker_user LIKE '% for %'"
    )
    assert {row["broker_user"] for row in rows} == {
        f"{user} for {code}" for code in GATEWAY_AGENCIES
    }
    signed = await exchange.fetchval(
        "SELECT count(*) FROM gateway_submissions WHERE signed_by_gateway"
    )
    # Every package they sent: the documents 303 and 44, the district's five
    # statuses of 101 and two of 44 (01, 02), the commune's five of 303.
    assert signed == 2 + 5 + 2 + 5
