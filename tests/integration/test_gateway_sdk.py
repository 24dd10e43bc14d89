"""The gateway driven by the real SDK that QLVB systems run (SDKVXP-2.0.0.jar).

A small Java driver (``tests/java/VxpDriver.java``), compiled by the test
against the jar in ``../shared/clients/vxp/`` and the Debian jars named in
its README, reads one command a line and keeps one SDK service object per
system, as a QLVB does. Skipped, saying why, without Java, the jar or the
Debian jars (``scripts/setup.sh`` installs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from exchange.demo import LocalAgency, demo_document
from exchange.edxml.model import DocumentPackage, ResponseFor
from exchange.edxml.reader import read_package
from exchange.edxml.safexml import parse
from exchange.edxml.writer import new_status, write_package
from exchange.gateway.protocol import REASON_CODES
from exchange.reasons import Reason
from exchange.status import StatusCode
from tests.conftest import REPO
from tests.exchange_fixtures import SETTLE_TIMEOUT_S, ExchangeUnderTest
from tests.gateway_support import GatewayUnderTest, running_gateway, serving, trust_gateway

pytestmark = [pytest.mark.services, pytest.mark.java]

SDK_JAR = (REPO / ".." / "shared" / "clients" / "vxp" / "SDKVXP-2.0.0.jar").resolve()
DRIVER = REPO / "tests" / "java" / "VxpDriver.java"
# The SDK's dependencies, from Debian's packages (../shared/clients/README.md).
DEBIAN_JARS = ("httpclient", "httpcore", "httpmime", "gson", "commons-codec", "guava")
COMMONS_LOGGING = ("commons-logging", "jcl-over-slf4j")
RESULT = "@@RESULT "

G22, H26, H49 = "000.00.00.G22", "000.00.00.H26", "000.00.00.H49"


def _classpath() -> str:
    if shutil.which("java") is None or shutil.which("javac") is None:
        pytest.skip("Java (javac and java) is not installed: `bash scripts/setup.sh` installs it")
    if not SDK_JAR.is_file():
        pytest.skip(f"the SDK jar is not at {SDK_JAR}")
    jars = [Path(f"/usr/share/java/{name}.jar") for name in DEBIAN_JARS]
    missing = [str(jar) for jar in jars if not jar.is_file()]
    if missing:
        pytest.skip(f"the SDK's Debian jars are missing: {', '.join(missing)}")
    logging = [Path(f"/usr/share/java/{name}.jar") for name in COMMONS_LOGGING]
    found = [jar for jar in logging if jar.is_file()][:1]
    if not found:
        pytest.skip("no commons-logging implementation in /usr/share/java")
    if found[0].name.startswith("jcl-over-slf4j"):
        found += [Path("/usr/share/java/slf4j-api.jar"), Path("/usr/share/java/slf4j-nop.jar")]
    return ":".join(str(jar) for jar in [SDK_JAR, *jars, *found])


@pytest.fixture(scope="session")
def driver_classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The classpath with the compiled driver, or a skip saying what is missing."""
    classpath = _classpath()
    out = tmp_path_factory.mktemp("vxp-driver")
    compiled = subprocess.run(
        ["javac", "-d", str(out), "-cp", classpath, str(DRIVER)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stderr
    return f"{out}:{classpath}"


class Sdk:
    """The driver process: one SDK call per line, results read back."""

    def __init__(self, process: asyncio.subprocess.Process, endpoint: str, store: Path) -> None:
        self._process = process
        self.endpoint = endpoint
        self.store = store

    async def call(
        self, system: str, secret: str, op: str, headers: dict[str, str], **extra: Any
    ) -> dict[str, Any]:
        """Run ``op`` through the SDK as ``system``; the result the SDK handed back."""
        command = {
            "system": system,
            "secret": secret,
            "endpoint": self.endpoint,
            "store": str(self.store),
            "op": op,
            "headers": headers,
            **extra,
        }
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(command).encode() + b"\n")
        await self._process.stdin.drain()
        async with asyncio.timeout(SETTLE_TIMEOUT_S):
            while True:
                line = (await self._process.stdout.readline()).decode("utf-8", "replace")
                assert line, "the driver stopped"
                if line.startswith(RESULT):
                    result: dict[str, Any] = json.loads(line[len(RESULT) :])
                    assert "exception" not in result, result
                    return result


@contextlib.asynccontextmanager
async def sdk(classpath: str, endpoint: str, store: Path) -> AsyncIterator[Sdk]:
    """The driver running against ``endpoint``."""
    process = await asyncio.create_subprocess_exec(
        "java",
        "-cp",
        classpath,
        "VxpDriver",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        limit=2**24,  # the SDK prints each reply, packages included, on one line
    )
    try:
        yield Sdk(process, endpoint, store)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        await process.wait()


@contextlib.asynccontextmanager
async def altering_proxy(endpoint: str, old: bytes, new: bytes) -> AsyncIterator[str]:
    """A TCP proxy to ``endpoint`` that changes ``old`` into ``new`` in requests (same length)."""
    assert len(old) == len(new)
    target = urlsplit(endpoint)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, alter: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data.replace(old, new) if alter else data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            target.hostname, target.port
        )
        await asyncio.gather(
            pipe(reader, upstream_writer, True), pipe(upstream_reader, writer, False)
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}{target.path}"
    finally:
        server.close()


def _status(document: bytes, reporter: LocalAgency, code: StatusCode) -> bytes:
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


async def _poll(
    driver: Sdk, system: str, secret: str, message_type: str, count: int
) -> list[dict[str, Any]]:
    """getReceivedEdocList until ``count`` items were listed (a poll lists what is not leased)."""
    seen: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(SETTLE_TIMEOUT_S):
        while True:
            result = await driver.call(
                system,
                secret,
                "getReceivedEdocList",
                {"servicetype": "eDoc", "messagetype": message_type},
            )
            assert result["errorCode"] == "0", result
            seen.update((item["id"], item) for item in result["items"])
            if len(seen) >= count:
                return list(seen.values())
            await asyncio.sleep(0.2)


@pytest.fixture
async def gateway(exchange: ExchangeUnderTest) -> AsyncIterator[GatewayUnderTest]:
    """G22 behind SYS-A, H26 behind SYS-B, workers running; a short lease so polls see retries."""
    trust_gateway(exchange)
    exchange.local.settings = exchange.local.settings.model_copy(update={"gateway_lease_s": 0.5})
    for code in (G22, H26):
        await exchange.register(code)
    async with exchange.workers(1), running_gateway(exchange) as under_test:
        await under_test.add_system("SYS-A", [G22])
        await under_test.add_system("SYS-B", [H26])
        yield under_test


async def test_two_systems_exchange_a_document_and_its_statuses_through_the_sdk(
    gateway: GatewayUnderTest, exchange: ExchangeUnderTest, driver_classpath: str, tmp_path: Path
) -> None:
    a, b = gateway.secrets["SYS-A"], gateway.secrets["SYS-B"]
    agencies = {str(code): agency for code, agency in exchange.agencies.items()}
    document = write_package(
        demo_document(agencies[G22], [agencies[H26]], 12, "VPCP-TH", "Thử trục qua SDK")
    )
    (tmp_path / "out.edxml").write_bytes(document)
    async with serving(gateway) as endpoint, sdk(driver_classpath, endpoint, tmp_path) as driver:
        sent = await driver.call(
            "SYS-A",
            a,
            "sendEdoc",
            {"from": G22, "servicetype": "eDoc", "messagetype": "edoc"},
            file=str(tmp_path / "out.edxml"),
        )
        assert (sent["status"], sent["errorCode"]) == ("OK", "0"), sent
        doc_id = sent["docId"]

        (item,) = await _poll(driver, "SYS-B", b, "edoc", 1)
        assert (item["from"], item["to"]) == (G22, H26)
        got = await driver.call(
            "SYS-B", b, "getEdoc", {"docId": item["id"], "filePath": str(tmp_path / "inbox")}
        )
        assert got["errorCode"] == "0", got
        received = Path(got["filePath"]).read_bytes()
        assert read_package(parse(received)).subject == "Thử trục qua SDK"
        done = await driver.call(
            "SYS-B", b, "updateStatus", {"docid": item["id"], "status": "done"}
        )
        assert done["errorCode"] == "0", done

        for code in (StatusCode.ACCEPTED, StatusCode.DONE):
            path = tmp_path / f"status-{code.value}.edxml"
            path.write_bytes(_status(received, agencies[H26], code))
            reported = await driver.call(
                "SYS-B",
                b,
                "sendEdoc",
                {"from": H26, "servicetype": "eDoc", "messagetype": "status"},
                file=str(path),
            )
            assert reported["errorCode"] == "0", reported

        # The receipt of its document and the two statuses.
        statuses = await _poll(driver, "SYS-A", a, "status", 3)
        for status in statuses:
            fetched = await driver.call(
                "SYS-A", a, "getEdoc", {"docId": status["id"], "filePath": str(tmp_path / "st")}
            )
            assert fetched["errorCode"] == "0", fetched
            confirmed = await driver.call(
                "SYS-A", a, "updateStatus", {"docId": status["id"], "status": "done"}
            )
            assert confirmed["errorCode"] == "0"
        codes = sorted(
            read_package(parse(Path(fetched_path).read_bytes())).status_code  # type: ignore[union-attr]
            for fetched_path in (tmp_path / "st").rglob("*.edxml")
            if b"edXML" in Path(fetched_path).read_bytes()
        )
        assert codes == [StatusCode.ACCEPTED, StatusCode.DONE]

        sent_list = await driver.call(
            "SYS-A",
            a,
            "getSentEdocList",
            {"servicetype": "eDoc", "messagetype": "edoc", "docId": doc_id},
        )
        assert sent_list["errorCode"] == "0", sent_list
        (line,) = sent_list["lines"]
        assert line["senderDocId"] == doc_id and line["toCode"] == H26
        assert (line["sendStatus"], line["receiveStatus"]) == ("delivered", "06")
        assert line["receiverDocId"] == item["id"]

        agencies_list = await driver.call("SYS-A", a, "getAgenciesList", {})
        assert sorted(agencies_list["codes"]) == [G22, H26]


async def test_what_the_gateway_refuses_reaches_the_sdks_caller_as_a_fail(
    gateway: GatewayUnderTest, exchange: ExchangeUnderTest, driver_classpath: str, tmp_path: Path
) -> None:
    a = gateway.secrets["SYS-A"]
    agencies = {str(code): agency for code, agency in exchange.agencies.items()}
    marked = write_package(demo_document(agencies[G22], [agencies[H26]], 13, "VPCP-TH", "ALTERME1"))
    (tmp_path / "marked.edxml").write_bytes(marked)
    outsider = LocalAgency(
        agencies[G22].code.parse(H49), "UBND tỉnh Quảng Ninh", agencies[G22].credential, ""
    )
    (tmp_path / "unregistered.edxml").write_bytes(
        write_package(demo_document(agencies[G22], [outsider], 14, "VPCP-TH", "Chưa đăng ký"))
    )
    # From names H26, but SYS-A sends it for G22 (and the gateway signs as G22).
    (tmp_path / "forged.edxml").write_bytes(
        write_package(demo_document(agencies[H26], [agencies[G22]], 15, "UBND", "Mạo danh"))
    )
    send = {"from": G22, "servicetype": "eDoc", "messagetype": "edoc"}

    async with serving(gateway) as endpoint, sdk(driver_classpath, endpoint, tmp_path) as driver:

        async def refused(result: dict[str, Any], code: str) -> None:
            assert (result.get("status"), result.get("errorCode")) == ("FAIL", code), result
            assert result["errorDesc"]

        await refused(
            await driver.call(
                "SYS-A",
                "a-wrong-secret-of-some-length",
                "getReceivedEdocList",
                {"servicetype": "eDoc", "messagetype": "edoc"},
            ),
            "103",
        )
        await refused(
            await driver.call(
                "SYS-A", a, "sendEdoc", {**send, "from": H26}, file=str(tmp_path / "marked.edxml")
            ),
            "105",
        )
        await refused(
            await driver.call(
                "SYS-A", a, "sendEdoc", send, file=str(tmp_path / "unregistered.edxml")
            ),
            REASON_CODES[Reason.UNKNOWN_RECIPIENT],
        )
        await refused(
            await driver.call("SYS-A", a, "sendEdoc", send, file=str(tmp_path / "forged.edxml")),
            REASON_CODES[Reason.SENDER_MISMATCH],
        )
        await refused(
            await driver.call("SYS-A", a, "registerAgency", {}, body={"code": H49}), "501"
        )
        async with (
            altering_proxy(endpoint, b"ALTERME1", b"ALTERME2") as altered,
            sdk(driver_classpath, altered, tmp_path) as through_proxy,
        ):
            await refused(
                await through_proxy.call(
                    "SYS-A", a, "sendEdoc", send, file=str(tmp_path / "marked.edxml")
                ),
                "204",
            )
