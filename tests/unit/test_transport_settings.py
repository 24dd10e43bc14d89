"""Settings refuse credentials and documents in clear to another host.

Each rule is tried off this host (refused, with a one-line message naming
the setting) and on loopback (allowed: development). The worker's metrics
endpoint binds to loopback unless told otherwise.
"""

from __future__ import annotations

import socket
import urllib.request

import pydantic
import pytest

from exchange import metrics
from exchange.commands import describe_error
from exchange.settings import Settings, is_loopback

SAFE_REMOTE = {
    "amqp_url": "amqps://worker:secret@mq.example:5671/",
    "database_url": "postgresql://lienthong:secret@db.example/lienthong?sslmode=verify-full",
    "rabbitmq_api_url": "https://lienthong-admin:secret@mq.example:15671",
}


def refusal(**settings: str) -> str:
    """The one line a command prints for these settings (they must be refused)."""
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings(**{**SAFE_REMOTE, **settings})
    line = describe_error(caught.value)
    assert "\n" not in line
    return line


def test_every_connection_off_the_host_done_safely_is_accepted() -> None:
    Settings(**SAFE_REMOTE)


def test_loopback_is_allowed_everything_for_development() -> None:
    Settings(
        amqp_url="amqp://guest:guest@localhost:5672/",
        database_url="postgresql://postgres@127.0.0.1:5432/postgres",
        rabbitmq_api_url="http://guest:guest@[::1]:15672",
    )
    Settings(database_url="postgresql:///lienthong?host=/var/run/postgresql")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.1.1", "::1", "[::1]", ""])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["mq.example", "10.0.0.5", "::ffff:10.0.0.5", "0.0.0.0"])
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_amqps_without_checking_the_broker_certificate_off_the_host_is_refused() -> None:
    line = refusal(amqp_url="amqps://worker:secret@mq.example:5671/?no_verify_ssl=1")
    assert line.startswith("bad setting LIENTHONG_AMQP_URL: no_verify_ssl to mq.example")
    Settings(amqp_url="amqps://localhost:5671/?no_verify_ssl=1")


def test_a_certificate_login_url_names_the_certificate_subject(tmp_path) -> None:
    from exchange.pki import TlsRole, create_ca, issue_tls_certificate
    from exchange.settings import url_user

    ca = create_ca(tmp_path)
    issue_tls_certificate(ca, TlsRole.CLIENT, "lienthong-worker", directory=tmp_path)
    url = (
        "amqps://mq.example:5671/?auth=external"
        f"&certfile={tmp_path}/lienthong-worker.cert.pem&keyfile={tmp_path}/lienthong-worker.key.pem"
    )
    assert url_user(url) == "CN=lienthong-worker,O=lienthong,C=VN"
    assert url_user("amqps://mq.example:5671/") == "guest"


def test_plain_amqp_to_another_host_is_refused() -> None:
    line = refusal(amqp_url="amqp://worker:secret@mq.example:5672/")
    assert line.startswith("bad setting LIENTHONG_AMQP_URL: plain amqp:// to mq.example")
    assert "secret" not in line


def test_the_replay_tools_plain_amqp_to_another_host_is_refused() -> None:
    line = refusal(replay_amqp_url="amqp://lienthong-replay:secret@mq.example:5672/")
    assert line.startswith("bad setting LIENTHONG_REPLAY_AMQP_URL: plain amqp:// to mq.example")
    assert "secret" not in line


def test_a_database_off_the_host_without_verify_full_is_refused() -> None:
    for url in (
        "postgresql://lienthong:secret@db.example/lienthong",
        "postgresql://lienthong:secret@db.example/lienthong?sslmode=require",
        "postgresql:///lienthong?host=db.example&sslmode=verify-ca",
    ):
        line = refusal(database_url=url)
        assert "LIENTHONG_DATABASE_URL: the database at db.example needs" in line
        assert "sslmode=verify-full" in line
        assert "secret" not in line


def test_a_passwordless_superuser_login_off_the_host_is_refused() -> None:
    for url in (
        "postgresql://postgres@db.example/lienthong?sslmode=verify-full",
        "postgresql://db.example/lienthong?sslmode=verify-full",
    ):
        line = refusal(database_url=url)
        assert "LIENTHONG_DATABASE_URL: logging in to db.example as superuser" in line
    # With a client certificate, or as the superuser with a password, it may.
    Settings(
        **{
            **SAFE_REMOTE,
            "database_url": "postgresql://postgres@db.example/l?sslmode=verify-full"
            "&sslcert=/etc/lienthong/db.crt&sslkey=/etc/lienthong/db.key",
        }
    )


def test_the_management_api_off_the_host_over_http_is_refused() -> None:
    line = refusal(rabbitmq_api_url="http://lienthong-admin:secret@mq.example:15672")
    assert "LIENTHONG_RABBITMQ_API_URL: the management API at mq.example must be" in line
    assert "https://" in line
    assert "secret" not in line


def test_the_management_api_off_the_host_as_guest_is_refused() -> None:
    for url in ("https://guest:guest@mq.example:15671", "https://mq.example:15671"):
        line = refusal(rabbitmq_api_url=url)
        assert "never guest" in line


def _address_off_loopback() -> str | None:
    """An address of this host that is not loopback (no packet is sent), or ``None``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if is_loopback(address) else address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_the_metrics_endpoint_binds_to_loopback_by_default() -> None:
    assert Settings().metrics_host == "127.0.0.1"
    outside = _address_off_loopback()
    if outside is None:
        pytest.skip("this host has no address other than loopback to try")
    port = _free_port()
    stop = metrics.serve(port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert answer.status == 200
        with pytest.raises(OSError), socket.create_connection((outside, port), timeout=5):
            pass
    finally:
        stop()


def test_the_metrics_endpoint_binds_where_it_is_told() -> None:
    outside = _address_off_loopback()
    if outside is None:
        pytest.skip("this host has no address other than loopback to try")
    port = _free_port()
    stop = metrics.serve(port, "0.0.0.0")
    try:
        with socket.create_connection((outside, port), timeout=5):
            pass
    finally:
        stop()
