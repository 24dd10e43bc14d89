"""The package's own files, found as package data; a broken installation is no message's fault."""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import exchange
from exchange import cli, event_loop, metrics
from exchange.checks.schema import (
    SCHEMA_DIR_VARIABLE,
    PackageKind,
    check_schema_files,
    load_schema,
    schema_dir,
    use_schema_dir,
)
from exchange.failures import classify, is_fatal
from exchange.installation import BrokenInstallation, data_dir
from exchange.receipts import receipt_json_schema, schema_path
from exchange.settings import Settings
from exchange.store.migrate import load_migrations
from tests.packages import document_package

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_schemas_are_found_inside_the_package_not_beside_it() -> None:
    package = Path(exchange.__file__).parent
    assert schema_dir() == package / "schemas"
    assert schema_path() == package / "schemas" / "receipt.schema.json"
    assert schema_path().read_text(encoding="utf-8") == receipt_json_schema()


def test_every_shipped_data_file_is_named_by_the_package_data_globs() -> None:
    """What importlib.resources finds here is what the wheel carries (pyproject's globs)."""
    package = Path(exchange.__file__).parent
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["exchange"]
    shipped = {path for pattern in globs for path in package.glob(pattern)}
    for folder in (data_dir("schemas"), package / "store" / "migrations"):
        files = {path for path in folder.iterdir() if path.is_file()}
        assert files, folder
        assert files <= shipped, sorted(str(path) for path in files - shipped)
    assert len(load_migrations()) == len(list((package / "store" / "migrations").glob("*.sql")))


def test_the_repository_schemas_folder_is_the_package_data_itself() -> None:
    assert (REPO / "schemas").resolve() == data_dir("schemas").resolve()


def test_the_version_has_one_source() -> None:
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert "version" not in PYPROJECT["project"]
    version = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert version == {"attr": "exchange.__version__"}
    assert metrics.version() == exchange.__version__


def test_the_build_floor_is_the_setuptools_that_reads_the_license_expression() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=77"]
    assert (REPO / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")


def test_the_shipped_schemas_load_and_compile() -> None:
    check_schema_files()


def test_an_empty_schema_folder_is_a_broken_installation_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(BrokenInstallation) as raised:
        check_schema_files(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / "edxml-document.xsd") in message
    assert "no such file" in message
    assert "\n" not in message


def test_a_missing_included_file_is_a_broken_installation(tmp_path: Path) -> None:
    document = schema_dir() / "edxml-document.xsd"
    (tmp_path / document.name).write_bytes(document.read_bytes())
    with pytest.raises(BrokenInstallation, match=re.escape("edxml-common.xsd")):
        load_schema(PackageKind.DOCUMENT, tmp_path)


def test_a_malformed_xsd_is_a_broken_installation(tmp_path: Path) -> None:
    for source in schema_dir().glob("*.xsd"):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    (tmp_path / "edxml-status.xsd").write_text("<xs:schema", encoding="utf-8")
    with pytest.raises(BrokenInstallation, match=re.escape("edxml-status.xsd")):
        check_schema_files(tmp_path)


def test_the_environment_moves_the_schema_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(SCHEMA_DIR_VARIABLE, str(tmp_path))
    use_schema_dir(Settings().schema_dir)
    try:
        with pytest.raises(BrokenInstallation, match=re.escape(str(tmp_path))):
            check_schema_files()
    finally:
        use_schema_dir(None)


def test_a_broken_installation_is_fatal_never_a_transient_failure() -> None:
    error = BrokenInstallation("cannot load the edXML schema")
    assert is_fatal(error)
    # classify() decides retry tiers and parking: it refuses to place it.
    with pytest.raises(ValueError, match="fatal"):
        classify(error)
    assert not is_fatal(OSError("connection refused"))


def test_without_uvloop_the_standard_asyncio_loop_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    async def loop_class() -> str:
        return type(asyncio.get_running_loop()).__module__

    # As on Windows, where uvloop is not installed: importing it fails.
    monkeypatch.setitem(sys.modules, "uvloop", None)
    try:
        fallback = importlib.reload(event_loop)
        assert fallback.LOOP == "asyncio"
        assert fallback.run(loop_class()).startswith("asyncio")
    finally:
        monkeypatch.undo()
        importlib.reload(event_loop)
    assert event_loop.LOOP == "uvloop"
    assert event_loop.run(loop_class()).startswith("uvloop")


def test_a_command_without_its_schemas_says_so_in_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "document.edxml"
    package.write_text(document_package(), encoding="utf-8")
    monkeypatch.setenv(SCHEMA_DIR_VARIABLE, str(tmp_path / "missing"))

    # In a thread of its own, as in a new process: each thread compiles the
    # XSDs once, and this one must not have them yet.
    try:
        with ThreadPoolExecutor(max_workers=1) as thread:
            status = thread.submit(cli.main, ["validate", str(package)]).result()
    finally:
        use_schema_dir(None)  # main() took the folder from the settings

    captured = capsys.readouterr()
    assert status == cli.EXIT_ERROR
    assert captured.out == ""
    assert captured.err == (
        f"lienthong: cannot load the edXML schema {tmp_path / 'missing' / 'edxml-document.xsd'} "
        "(no such file); reinstall lienthong, or point LIENTHONG_SCHEMA_DIR at a folder "
        "holding every XSD\n"
    )
