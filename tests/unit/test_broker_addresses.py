"""A broker URL names one node or the nodes of a RabbitMQ cluster (issue 16, point 1).

``amqps://user:pw@mq1:5671,mq2:5671,mq3:5671/vhost?query``: every node with
the same user, vhost and query. Each reader of the URL (settings, log lines,
command errors, the URL made for an agency's user) sees every node.
"""

from __future__ import annotations

import pydantic
import pytest

from exchange.broker.connection import broker_address, broker_user_of
from exchange.commands import address_of, describe_error
from exchange.registry import url_for_user, vhost_of
from exchange.settings import Settings, amqp_addresses

CLUSTER = "amqps://worker:s%40cret@mq1:5671,mq2:5671,[fd00::3]:5671/lien%2Fthong?cafile=/ca.pem"


def test_a_cluster_url_gives_one_url_per_node_with_the_same_user_vhost_and_query() -> None:
    assert amqp_addresses(CLUSTER) == (
        "amqps://worker:s%40cret@mq1:5671/lien%2Fthong?cafile=/ca.pem",
        "amqps://worker:s%40cret@mq2:5671/lien%2Fthong?cafile=/ca.pem",
        "amqps://worker:s%40cret@[fd00::3]:5671/lien%2Fthong?cafile=/ca.pem",
    )


def test_a_url_of_one_broker_gives_itself() -> None:
    for url in ("amqp://guest:guest@127.0.0.1:5672/", "amqps://localhost/?cafile=/ca.pem"):
        assert amqp_addresses(url) == (url,)


def test_hosts_without_a_port_take_the_schemes_default() -> None:
    assert amqp_addresses("amqp://u:p@a,b/") == ("amqp://u:p@a/", "amqp://u:p@b/")


@pytest.mark.parametrize(
    ("url", "fault"),
    [
        ("amqps://u:p@mq1:5671,,mq3:5671/", "has an empty host"),
        ("amqps://u:p@mq1:5671,:5671/", "has an empty host"),
        ("amqps://u:p@mq1:5671,mq2:56x1/", "'mq2:56x1' has no valid port"),
        ("amqps://u:p@mq1:99999/", "'mq1:99999' has no valid port"),
    ],
)
def test_a_list_of_hosts_with_a_fault_is_refused_naming_it(url: str, fault: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings(amqp_url=url)
    line = describe_error(caught.value)
    assert "LIENTHONG_AMQP_URL" in line
    assert fault in line
    assert "\n" not in line


def test_every_node_off_the_host_must_be_reached_over_tls() -> None:
    # Loopback first, a remote node in clear second: the second is refused.
    url = "amqp://worker:secret@127.0.0.1:5672,mq2.example:5672/"
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings(amqp_url=url)
    line = describe_error(caught.value)
    assert "plain amqp:// to mq2.example" in line
    assert "secret" not in line
    Settings(amqp_url="amqp://guest:guest@127.0.0.1:5781,127.0.0.1:5782,localhost:5783/")
    Settings(amqp_url="amqps://worker:secret@mq1.example:5671,mq2.example:5671/")


def test_readers_of_the_url_see_every_node_the_user_and_the_vhost() -> None:
    assert broker_user_of(CLUSTER) == "worker"
    assert vhost_of(CLUSTER) == "lien/thong"
    assert broker_address(CLUSTER) == "mq1:5671,mq2:5671,[fd00::3]:5671 vhost lien/thong"
    assert address_of(CLUSTER) == "amqps://worker@mq1:5671,mq2:5671,[fd00::3]:5671/lien%2Fthong"


def test_an_agencys_url_keeps_every_node_and_the_query() -> None:
    assert url_for_user(CLUSTER, "000.00.00.G22", "p w") == (
        "amqps://000.00.00.G22:p%20w@mq1:5671,mq2:5671,[fd00::3]:5671/lien%2Fthong?cafile=/ca.pem"
    )
