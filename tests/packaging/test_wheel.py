"""The package as users get it: the wheel, built with the oldest setuptools allowed, installed.

The source is copied out of the repository and built with the build
system's floor (``[build-system] requires``) installed alone in a build
virtualenv, so the floor pyproject.toml states is one that works. The wheel
is installed with its dependencies in another fresh virtualenv, and every
command runs from a temporary folder with no path back to the repository:
``validate``, ``verify`` and ``sign`` need the XSDs, ``schema receipt`` the
receipt model, ``init`` the migrations, all from the installed package.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
import venv
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg
import pytest

import exchange
from exchange.broker.topology import WORK_QUEUE
from exchange.receipts import schema_path
from exchange.store.migrate import load_migrations
from tests.broker_fixtures import BrokerVhost
from tests.db_fixtures import run_sync
from tests.packages import document_package

pytestmark = [pytest.mark.packaging, pytest.mark.services]

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
# Not part of a source tree: never copied into the build.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*cache", ".hypothesis", "var"
)
# pip resolving and downloading (or taking from its cache) the dependencies.
PIP_TIMEOUT_S = 900
COMMAND_TIMEOUT_S = 120
AGENCY = "000.00.00.G22"


def setuptools_floor() -> str:
    """The oldest setuptools release line the build system allows, as a pip requirement."""
    (requirement,) = [r for r in PYPROJECT["build-system"]["requires"] if "setuptools" in r]
    match = re.fullmatch(r"setuptools>=(\d+)", requirement)
    assert match, f"unexpected build requirement {requirement!r}"
    return f"setuptools=={match[1]}.*"


def run(command: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run ``command``; fail the test with its output unless it exits 0. Returns stdout."""
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (
        f"{' '.join(command)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


def clean_env(bin_dir: Path | None = None) -> dict[str, str]:
    """This environment without anything that leads back to the repository or the test venv."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP"}
        and not key.startswith("LIENTHONG_")
    }
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass(frozen=True)
class Installed:
    """The built wheel, and the virtualenv it is installed in."""

    wheel: Path
    bin: Path
    home: Path  # an empty folder outside the repository, the commands' working directory

    def lienthong(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the installed ``lienthong`` from :attr:`home`."""
        done = subprocess.run(
            [str(self.bin / "lienthong"), *args],
            cwd=self.home,
            env=clean_env(self.bin),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        if check:
            assert done.returncode == 0, f"lienthong {' '.join(args)}: {done.stdout}{done.stderr}"
        return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The wheel built from a copy of the source with the setuptools floor, then installed."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_SOURCE)

    builder = root / "build-venv"
    venv.create(builder, with_pip=True)
    python = str(builder / "bin" / "python")
    env = clean_env()
    run(
        [python, "-m", "pip", "install", "-q", setuptools_floor()],
        cwd=root,
        env=env,
        timeout=PIP_TIMEOUT_S,
    )
    run(
        [
            python,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(root / "dist"),
            str(source),
        ],
        cwd=root,
        env=env,
        timeout=PIP_TIMEOUT_S,
    )
    (wheel,) = (root / "dist").glob("lienthong-*.whl")

    target = root / "venv"
    venv.create(target, with_pip=True)
    run(
        [str(target / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        cwd=root,
        env=env,
        timeout=PIP_TIMEOUT_S,
    )
    home = root / "home"
    home.mkdir()
    yield Installed(wheel, target / "bin", home)


def test_the_wheel_carries_the_schemas_the_migrations_and_the_license(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"lienthong-{exchange.__version__}.dist-info/METADATA").decode()
    package = Path(exchange.__file__).parent
    for shipped in (*package.glob("schemas/*"), *package.glob("store/migrations/*.sql")):
        assert shipped.relative_to(package.parent).as_posix() in names
    assert f"lienthong-{exchange.__version__}.dist-info/licenses/LICENSE" in names
    assert f"Version: {exchange.__version__}\n" in metadata
    assert "License-Expression: Apache-2.0\n" in metadata
    assert 'Requires-Dist: uvloop>=0.19; sys_platform != "win32"\n' in metadata


def test_the_installed_package_is_the_one_that_runs(installed: Installed) -> None:
    done = subprocess.run(
        [
            str(installed.bin / "python"),
            "-c",
            "import exchange, exchange.checks.schema as s; "
            "print(exchange.__file__); print(s.schema_dir())",
        ],
        cwd=installed.home,
        env=clean_env(installed.bin),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=True,
    )
    module, schemas = done.stdout.splitlines()
    venv_dir = installed.bin.parent
    assert Path(module).is_relative_to(venv_dir), module
    assert Path(schemas).is_relative_to(venv_dir), schemas
    assert not Path(module).is_relative_to(REPO)


def test_sign_validate_and_verify_run_from_the_installed_package(installed: Installed) -> None:
    home = installed.home
    installed.lienthong("keys", "init", "--dir", "keys")
    installed.lienthong("keys", "issue", AGENCY, "--dir", "keys")
    (home / "document.edxml").write_text(document_package(), encoding="utf-8")
    # The Code element taken out: the schema names what is missing.
    broken = re.sub(r"<edXML:Code>.*?</edXML:Code>", "", document_package(), flags=re.DOTALL)
    (home / "broken.edxml").write_text(broken, encoding="utf-8")

    installed.lienthong(
        "sign",
        "document.edxml",
        "--key",
        f"keys/{AGENCY}.key.pem",
        "--cert",
        f"keys/{AGENCY}.cert.pem",
        "-o",
        "signed.edxml",
    )
    validated = installed.lienthong("validate", "signed.edxml", "broken.edxml", check=False)
    verified = installed.lienthong("verify", "signed.edxml", "--trust", "keys/ca.cert.pem")

    assert validated.returncode == 1, validated.stderr
    assert validated.stdout.splitlines()[0] == "signed.edxml: OK (document)"
    assert validated.stdout.splitlines()[1].startswith("broken.edxml: REJECTED_MISSING_FIELD: ")
    assert "Code" in validated.stdout.splitlines()[1]
    assert verified.stdout.strip() == f"signed.edxml: OK (document, signed by {AGENCY})"


def test_schema_receipt_prints_the_published_schema(installed: Installed) -> None:
    printed = installed.lienthong("schema", "receipt").stdout
    assert printed == schema_path().read_text(encoding="utf-8")
    assert json.loads(printed)["title"] == "lienthong receipt"


def test_init_migrates_a_fresh_database_and_declares_the_topology(
    installed: Installed,
    empty_database_url: str,
    make_vhost: Callable[[], BrokerVhost],
) -> None:
    vhost = make_vhost()
    done = installed.lienthong(
        "init", "--database-url", empty_database_url, "--amqp-url", vhost.amqp_url
    )
    assert "database migrated, core topology declared" in done.stdout

    async def applied() -> list[str]:
        connection = await asyncpg.connect(empty_database_url)
        try:
            rows = await connection.fetch("SELECT version, name FROM schema_migrations ORDER BY 1")
        finally:
            await connection.close()
        return [f"{row['version']:04d}_{row['name']}" for row in rows]

    assert run_sync(applied()) == [migration.label for migration in load_migrations()]
    topology = installed.lienthong("topology").stdout
    assert f"queue    {WORK_QUEUE}" in topology

    async def declare_passively() -> None:
        connection = await aio_pika.connect(vhost.amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(WORK_QUEUE, passive=True)  # fails if it is not there

    run_sync(declare_passively())
