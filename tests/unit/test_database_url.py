"""A database URL may list a primary and its standbys; everything that reads it sees them all.

The syntax is libpq's (and asyncpg's): ``postgresql://u:p@db1:5432,db2:5433/
lienthong?target_session_attrs=read-write``, or the hosts in ``?host=``.
The transport rules apply to every host, log lines and error messages name
every host, and a failover under way (no writable host yet) is a transient
database failure, never the package's fault.
"""

from __future__ import annotations

import asyncpg
import pydantic
import pytest

from exchange.commands import address_of, describe_error
from exchange.failures import Failure, classify
from exchange.settings import DatabaseHost, Settings, database_hosts
from exchange.store.db import database_address, host_url, is_database_unreachable

PAIR = "postgresql://lt:s3cret@db1.example:5432,db2.example:5433/lienthong"


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        ("postgresql://postgres@127.0.0.1:5432/postgres", [("127.0.0.1", 5432)]),
        ("postgresql://postgres@127.0.0.1/postgres", [("127.0.0.1", 5432)]),
        (PAIR, [("db1.example", 5432), ("db2.example", 5433)]),
        ("postgresql://u@db1,db2:6432/x", [("db1", 5432), ("db2", 6432)]),
        ("postgresql://u@[::1]:5433,[fe80::1]/x", [("::1", 5433), ("fe80::1", 5432)]),
        ("postgresql:///x?host=/run/postgresql", [("/run/postgresql", 5432)]),
        ("postgresql:///x?host=db1,db2&port=5432,5433", [("db1", 5432), ("db2", 5433)]),
        ("postgresql:///x?host=db1,db2&port=6432", [("db1", 6432), ("db2", 6432)]),
        ("postgresql:///x", [("localhost", 5432)]),
    ],
)
def test_every_host_of_a_database_url_in_the_order_they_are_tried(
    url: str, hosts: list[tuple[str, int]]
) -> None:
    assert database_hosts(url) == [DatabaseHost(*host) for host in hosts]


@pytest.mark.parametrize(
    "url",
    ["postgresql://u@db1:port/x", "postgresql:///x?host=a,b,c&port=1,2"],
)
def test_a_host_list_that_cannot_be_read_is_refused_by_name(url: str) -> None:
    with pytest.raises(ValueError, match="port"):
        database_hosts(url)
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings(database_url=url)
    assert "LIENTHONG_DATABASE_URL" in describe_error(caught.value)


def test_a_standby_on_loopback_and_its_primary_on_loopback_are_development() -> None:
    Settings(
        database_url="postgresql://postgres@127.0.0.1:5432,localhost:5433/x"
        "?target_session_attrs=read-write"
    )


def test_every_host_of_the_list_must_be_reached_safely() -> None:
    # The first host local, the standby on another machine: still clear text off the host.
    for url in (
        "postgresql://lt:s3cret@127.0.0.1:5432,db2.example:5432/lienthong",
        "postgresql:///lienthong?host=/run/postgresql,db2.example&user=lt&password=s3cret",
    ):
        with pytest.raises(pydantic.ValidationError) as caught:
            Settings(database_url=url)
        line = describe_error(caught.value)
        assert "the database at db2.example needs sslmode=verify-full" in line
        assert "s3cret" not in line
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings(database_url="postgresql://postgres@db1.example,db2.example/x?sslmode=verify-full")
    assert "logging in to db1.example, db2.example as superuser" in describe_error(caught.value)
    Settings(
        database_url=PAIR + "?sslmode=verify-full&target_session_attrs=read-write",
        amqp_url="amqps://w:p@mq.example:5671/",
        rabbitmq_api_url="https://admin:p@mq.example:15671",
    )


def test_log_lines_and_messages_name_every_host_never_the_password() -> None:
    assert database_address(PAIR) == "db1.example:5432,db2.example:5433 database lienthong"
    assert database_address("postgresql://u@[::1]:5433/x") == "[::1]:5433 database x"
    assert address_of(PAIR) == "postgresql://lt@db1.example:5432,db2.example:5433/lienthong"
    assert address_of("postgresql://u@db1:x/y") == "(an unreadable URL)"


def test_no_writable_primary_yet_is_a_database_not_there_yet() -> None:
    during_failover = asyncpg.TargetServerAttributeNotMatched(
        "None of the hosts match the target attribute requirement 'read-write'"
    )
    assert is_database_unreachable(during_failover)
    assert classify(during_failover) is Failure.DATABASE
    settings = Settings(database_url="postgresql://postgres@127.0.0.1:5432,127.0.0.1:5433/x")
    line = describe_error(during_failover, settings)
    assert "127.0.0.1:5432,127.0.0.1:5433" in line
    assert "no host is a writable primary" in line


@pytest.mark.parametrize(
    ("url", "host", "expected"),
    [
        (
            PAIR + "?target_session_attrs=read-write&sslmode=verify-full",
            DatabaseHost("db2.example", 5433),
            "postgresql://lt:s3cret@db2.example:5433/lienthong"
            "?target_session_attrs=read-write&sslmode=verify-full",
        ),
        (
            "postgresql://u@[::1]:5432,[fe80::2]/x",
            DatabaseHost("fe80::2", 5432),
            "postgresql://u@[fe80::2]:5432/x",
        ),
        (
            "postgresql:///x?host=/run/postgresql,db2&port=5432,5433&user=lt",
            DatabaseHost("/run/postgresql", 5432),
            "postgresql:///x?user=lt&host=%2Frun%2Fpostgresql&port=5432",
        ),
        (
            "postgresql:///x?host=/run/postgresql,db2&port=5432,5433&user=lt",
            DatabaseHost("db2", 5433),
            "postgresql://db2:5433/x?user=lt",
        ),
    ],
)
def test_each_host_gets_a_url_of_its_own_with_everything_else_kept(
    url: str, host: DatabaseHost, expected: str
) -> None:
    assert host_url(url, host) == expected
    assert database_hosts(expected) == [host]


def test_another_database_on_the_same_servers_keeps_every_host() -> None:
    from exchange.benchmark.harness import _database_url
    from tests.db_fixtures import database_dsn

    url = PAIR + "?target_session_attrs=read-write"
    for other in (database_dsn(url, "lienthong_test_x"), _database_url(url, "lienthong_test_x")):
        assert other == (
            "postgresql://lt:s3cret@db1.example:5432,db2.example:5433/lienthong_test_x"
            "?target_session_attrs=read-write"
        )
