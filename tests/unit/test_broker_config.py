"""The broker configuration shipped in deploy/rabbitmq/: TLS only, peers verified.

A real node boots the files in the deployment; here they are read as data,
so that a change that opens a plain listener, stops checking client
certificates or their revocation, or puts the management API or the
metrics on an open port fails a test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq"


@pytest.fixture(scope="module")
def conf() -> dict[str, str]:
    """rabbitmq.conf as key = value pairs (comments and blank lines dropped)."""
    pairs = {}
    for line in (DEPLOY / "rabbitmq.conf").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, value = (part.strip() for part in line.split("=", 1))
            assert key not in pairs, f"{key} is set twice"
            pairs[key] = value
    return pairs


def test_amqp_is_served_over_tls_only(conf: dict[str, str]) -> None:
    assert conf["listeners.tcp"] == "none"
    assert not [key for key in conf if key.startswith("listeners.tcp.")]
    assert conf["listeners.ssl.default"] == "5671"


def test_every_client_presents_a_certificate_that_is_verified(conf: dict[str, str]) -> None:
    assert conf["ssl_options.verify"] == "verify_peer"
    assert conf["ssl_options.fail_if_no_peer_cert"] == "true"
    assert set(conf[k] for k in conf if k.startswith("ssl_options.versions.")) <= {
        "tlsv1.2",
        "tlsv1.3",
    }


def test_agencies_log_in_with_their_certificate_subject(conf: dict[str, str]) -> None:
    assert conf["auth_mechanisms.1"] == "EXTERNAL"
    assert conf["ssl_cert_login_from"] == "distinguished_name"
    plugins = (DEPLOY / "enabled_plugins").read_text()
    assert "rabbitmq_auth_mechanism_ssl" in plugins


def test_the_listener_checks_revocation_lists() -> None:
    advanced = (DEPLOY / "advanced.config").read_text()
    assert "{crl_check, peer}" in advanced
    assert "ssl_crl_hash_dir" in advanced
    assert "{fail_if_no_peer_cert, true}" in advanced


def test_management_is_https_only_and_metrics_stay_on_loopback(conf: dict[str, str]) -> None:
    assert "management.ssl.port" in conf
    assert not [key for key in conf if key.startswith("management.tcp.")]
    assert conf["prometheus.tcp.ip"] == "127.0.0.1"
    assert conf["loopback_users.guest"] == "true"
