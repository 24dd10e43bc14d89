"""The command plumbing without services: times, one-line errors, settings, the parser."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from exchange import cli
from exchange.broker.admin import BrokerAdminError
from exchange.commands import (
    TimeExpressionError,
    address_of,
    describe_error,
    parse_time,
    settings_from_args,
)
from exchange.edxml.model import VIETNAM_TIME
from exchange.settings import Settings, SettingsError

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2h", NOW - timedelta(hours=2)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
        (" 12 h ", NOW - timedelta(hours=12)),
        ("2025-01-31", datetime(2025, 1, 31, tzinfo=VIETNAM_TIME)),
        ("2025-01-31T08:00", datetime(2025, 1, 31, 8, 0, tzinfo=VIETNAM_TIME)),
        ("2025-01-31T08:00+00:00", datetime(2025, 1, 31, 8, 0, tzinfo=UTC)),
    ],
)
def test_time_expressions_are_spans_back_from_now_or_vietnam_dates(
    text: str, expected: datetime
) -> None:
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["last month", "2025-13-01", "5y", "5 parsecs", "", "-2h"])
def test_a_time_expression_that_is_not_a_time_is_refused_with_examples(text: str) -> None:
    with pytest.raises(TimeExpressionError, match="30m, 2h, 7d"):
        parse_time(text, now=NOW)


def test_every_since_and_until_goes_through_the_one_parser() -> None:
    from exchange.replay import Filters, ReplayError

    filters = Filters.parse(since="2h", until="30m", now=NOW)
    assert filters.since == NOW - timedelta(hours=2)
    assert filters.until == NOW - timedelta(minutes=30)
    with pytest.raises(ReplayError, match="not a time"):
        Filters.parse(since="yesterday", now=NOW)


def test_an_address_never_shows_the_password() -> None:
    assert (
        address_of("amqp://agency:s3cret@mq.example:5671/lt") == "amqp://agency@mq.example:5671/lt"
    )
    assert "s3cret" not in address_of("http://admin:s3cret@host:15672")


def test_a_wrong_postgresql_password_names_the_server_the_user_and_the_option() -> None:
    # The shared test server trusts every local connection, so a wrong
    # password cannot be produced for real there; the error asyncpg raises is.
    settings = Settings(
        database_url="postgresql://clerk:wrong@db.example:5432/lienthong?sslmode=verify-full"
    )
    line = describe_error(asyncpg.InvalidPasswordError("password authentication failed"), settings)
    assert line == (
        "PostgreSQL at postgresql://clerk@db.example:5432/lienthong: authentication failed "
        "for user clerk; check the user and password in --database-url or LIENTHONG_DATABASE_URL"
    )


def test_a_management_api_refusal_of_the_login_is_authentication() -> None:
    settings = Settings(rabbitmq_api_url="https://admin:wrong@mq.example:15672")
    error = BrokerAdminError("GET", "/overview", 401, "Not_Authorized")
    line = describe_error(error, settings)
    assert line.startswith("the RabbitMQ management API at https://admin@mq.example:15672: ")
    assert "authentication failed for user admin (HTTP 401)" in line
    assert "wrong" not in line


def test_an_unexpected_error_is_one_line_pointing_at_debug() -> None:
    line = describe_error(ZeroDivisionError("division by zero\nsecond line"))
    assert line == (
        "unexpected error: ZeroDivisionError: division by zero (run again with --debug for "
        "the details)"
    )


def test_secret_settings_are_read_from_their_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AMQP_URL", "DATABASE_URL", "RABBITMQ_API_URL"):
        monkeypatch.delenv(f"LIENTHONG_{name}", raising=False)
        secret = tmp_path / name
        secret.write_text(f"scheme://user:pw-{name}@localhost/\n")
        monkeypatch.setenv(f"LIENTHONG_{name}_FILE", str(secret))
    settings = Settings()
    assert settings.amqp_url == "scheme://user:pw-AMQP_URL@localhost/"
    assert settings.database_url == "scheme://user:pw-DATABASE_URL@localhost/"
    assert settings.rabbitmq_api_url == "scheme://user:pw-RABBITMQ_API_URL@localhost/"
    # The command's own option still wins.
    args = argparse.Namespace(amqp_url="amqp://given@localhost/")
    assert settings_from_args(args).amqp_url == "amqp://given@localhost/"


def test_a_secret_set_twice_or_in_a_missing_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIENTHONG_AMQP_URL", "amqp://a@host/")
    monkeypatch.setenv("LIENTHONG_AMQP_URL_FILE", str(tmp_path / "amqp"))
    with pytest.raises(SettingsError, match="both set; keep one"):
        Settings()
    monkeypatch.delenv("LIENTHONG_AMQP_URL")
    with pytest.raises(SettingsError, match="cannot read"):
        Settings()


def test_settings_are_read_from_a_dot_env_file_below_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIENTHONG_PREFETCH", raising=False)
    monkeypatch.delenv("LIENTHONG_GROUP_COMMITS", raising=False)
    (tmp_path / ".env").write_text("LIENTHONG_PREFETCH=7\nLIENTHONG_GROUP_COMMITS=2\n")
    monkeypatch.setenv("LIENTHONG_GROUP_COMMITS", "5")
    settings = Settings()
    assert (settings.prefetch, settings.group_commits) == (7, 5)


@pytest.mark.parametrize(
    ("variables", "language"),
    [
        ({"LANG": "vi_VN.UTF-8"}, "vi"),
        ({"LC_ALL": "vi_VN.UTF-8", "LANG": "en_US.UTF-8"}, "vi"),
        ({"LC_ALL": "C.UTF-8", "LANG": "vi_VN.UTF-8"}, "en"),
        ({}, "en"),
    ],
)
def test_the_clerks_language_follows_the_locale(
    variables: dict[str, str], language: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert cli.default_language() == language


AGENCY_SIDE = ["--as", "000.00.00.G22", "--key", "k.pem", "--cert", "c.pem"]


@pytest.mark.parametrize(
    "argv",
    [
        [
            "send",
            *AGENCY_SIDE,
            "--to",
            "000.00.00.G09",
            "--number",
            "1",
            "--notation",
            "x",
            "--subject",
            "s",
            "--signer",
            "A",
            "--sender-name",
            "VPCP",
            "--database-url",
            "postgresql://h/d",
        ],
        ["inbox", "--as", "000.00.00.G22", "--out", "d", "--rabbitmq-api-url", "http://h"],
        ["trace", "some-id", "--amqp-url", "amqp://h/"],
        ["agency", "list", "--amqp-url", "amqp://h/"],
        ["validate", "f.edxml", "--database-url", "postgresql://h/d"],
        ["worker", "--rabbitmq-api-url", "http://h"],
        ["agency", "add", "000.00.00.G22", "--name", "n", "--password", "secret"],
    ],
)
def test_commands_offer_only_the_options_of_what_they_use(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_version_and_completion(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("lienthong ")
    assert cli.main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    for word in ("lienthong", "report-status", "--password-stdin", "--follow", "replay"):
        assert word in script
    assert cli.main(["completion", "zsh"]) == 0
    assert "#compdef lienthong" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("language", "sentence"),
    [("vi", "Gói tin không phải XML hợp lệ"), ("en", "the package is not well-formed XML")],
)
def test_the_reasons_for_the_clerk_are_in_the_language_asked(
    language: str, sentence: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.edxml"
    broken.write_text("<edXML><unclosed></edXML>")
    assert cli.main(["validate", str(broken), "--lang", language]) == cli.EXIT_REFUSED
    out = capsys.readouterr().out
    assert f"REJECTED_NOT_WELL_FORMED: {sentence}" in out
