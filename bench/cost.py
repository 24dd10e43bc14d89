"""What checking one message costs: read, validate, verify, the whole check, and bare signxml.

Usage::

    .venv/bin/python bench/cost.py [--json] [--repeat N] [--sample PATH]

For two packages, a small document (about 5 KB, built with
:func:`exchange.edxml.writer.new_document` and a small attachment) and a
large one (about 360 KB, the real sample ``edoc_update.edxml``), each signed
with an RSA-2048 key and again with an ECDSA P-256 key from a development CA
made with :mod:`exchange.pki` in a temporary directory, it times:

* ``read``: :func:`~exchange.edxml.reader.read_package` from the bytes;
* ``validate``: :func:`~exchange.edxml.safexml.parse` then
  :func:`~exchange.checks.schema.check_schema`;
* ``verify``: :func:`~exchange.checks.signature.verify` from the bytes;
* ``whole``: :func:`exchange.pipeline.check_message`, everything the worker runs
  on a message before it asks the database (parse, schema, signature,
  reading the signed package, authorisation);
* ``bare``: ``signxml.XMLVerifier().verify`` of the same bytes with the
  signer's certificate, the least any verifying exchange must spend.

The operations run interleaved, one of each per round, so that a change in
the machine's load during the run weighs on all of them alike; the ratio
``whole / bare`` compares medians measured in the same rounds. The issue's
target is a ratio of at most 1.3.

Trust store, parser limits and check context are made once, as the worker
makes them once; the trust store's cache of validated chains is therefore
warm, as it is in a running worker.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any

from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.verifier import SignatureConfiguration, XMLVerifier

from exchange.agency import AgencyCode
from exchange.benchmark.workload import document_package
from exchange.checks.schema import check_schema
from exchange.checks.signature import sign, verify
from exchange.edxml.reader import read_package
from exchange.edxml.safexml import parse
from exchange.edxml.writer import write_package
from exchange.pipeline import CheckContext, Envelope, check_message
from exchange.pki import KeyType, TrustStore, create_ca, issue_agency_certificate

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLE = REPO / ".." / "shared" / "samples" / "edxml" / "edoc_update.edxml"

TARGET_RATIO = 1.3
SMALL_BYTES = 5 * 1024

SENDER = AgencyCode.parse("000.00.00.G22")
RECIPIENT = AgencyCode.parse("000.00.00.H41")

OPERATIONS = ("read", "validate", "verify", "whole", "bare")

# The bare verifier accepts exactly what was used to sign, and nothing else.
BARE_METHODS = {
    KeyType.RSA_2048: SignatureMethod.RSA_SHA256,
    KeyType.ECDSA_P256: SignatureMethod.ECDSA_SHA256,
}


@dataclass(frozen=True)
class Signer:
    """A development CA and one agency's credential under it."""

    key_type: KeyType
    trust: TrustStore
    key_pem: bytes
    cert_pem: bytes


@dataclass(frozen=True)
class Case:
    """One signed package and everything needed to check it."""

    package: str
    signer: Signer
    data: bytes


def make_signer(key_type: KeyType, directory: Path) -> Signer:
    """A CA of ``key_type`` written into ``directory`` and the sender's credential from it."""
    ca = create_ca(directory / key_type.value, key_type=key_type)
    agency = issue_agency_certificate(
        ca,
        SENDER,
        common_name="Văn phòng Chính phủ",
        key_type=key_type,
        directory=directory / key_type.value,
    )
    return Signer(key_type, TrustStore.from_pem(ca.cert_pem), agency.key_pem, agency.cert_pem)


def small_document(attachment_bytes: int) -> bytes:
    """An unsigned document package with one attachment of ``attachment_bytes`` bytes."""
    package = document_package(
        (str(SENDER), "Văn phòng Chính phủ"),
        [(str(RECIPIENT), "UBND Tỉnh Nghệ An")],
        attachment_bytes=attachment_bytes,
        number=102,
        promulgation_date=date(2018, 9, 28),
    )
    return write_package(package)


def small_case(signer: Signer) -> Case:
    """A signed document of about :data:`SMALL_BYTES`, its attachment sized to get there."""
    base = len(sign(small_document(1), signer.key_pem, signer.cert_pem))
    attachment_bytes = max(256, (SMALL_BYTES - base) * 3 // 4)
    data = sign(small_document(attachment_bytes), signer.key_pem, signer.cert_pem)
    return Case("small", signer, data)


def large_case(signer: Signer, sample: Path) -> Case:
    """The real sample, signed by the sender its From names."""
    return Case("large", signer, sign(sample.read_bytes(), signer.key_pem, signer.cert_pem))


def operations(case: Case) -> dict[str, Callable[[], object]]:
    """The timed operations on ``case``, each a call without arguments."""
    data = case.data
    trust = case.signer.trust
    context = CheckContext(trust=trust)
    limits = context.limits
    cert_pem = case.signer.cert_pem.decode("ascii")
    bare_config = SignatureConfiguration(
        signature_methods=frozenset({BARE_METHODS[case.signer.key_type]}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA256}),
    )
    return {
        "read": lambda: read_package(data, limits),
        "validate": lambda: check_schema(parse(data, limits)),
        "verify": lambda: verify(data, trust, limits=limits),
        "whole": lambda: check_message(Envelope(data, str(RECIPIENT), SENDER), context),
        "bare": lambda: XMLVerifier().verify(data, x509_cert=cert_pem, expect_config=bare_config),
    }


def check_once(case: Case, run: dict[str, Callable[[], object]]) -> None:
    """Make sure every operation succeeds before timing it (a refusal is cheaper)."""
    inspected = run["whole"]()
    assert getattr(inspected, "sender", None) == SENDER, inspected
    for name in OPERATIONS:
        run[name]()


def measure(
    run: dict[str, Callable[[], object]], repeat: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each operation, ``repeat`` interleaved rounds after ``warmup``."""
    samples: dict[str, list[float]] = {name: [] for name in OPERATIONS}
    clock = time.perf_counter
    for round_number in range(warmup + repeat):
        for name in OPERATIONS:
            call = run[name]
            start = clock()
            call()
            elapsed = clock() - start
            if round_number >= warmup:
                samples[name].append(elapsed)
    return samples


def p95(values: list[float]) -> float:
    """The 95th percentile (inclusive method)."""
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def summary(case: Case, samples: dict[str, list[float]]) -> dict[str, Any]:
    """Median and p95 per operation in milliseconds, and the whole/bare ratio."""
    ms = {
        name: {
            "median": statistics.median(values) * 1000,
            "p95": p95(values) * 1000,
        }
        for name, values in samples.items()
    }
    return {
        "package": case.package,
        "key": case.signer.key_type.value,
        "bytes": len(case.data),
        "ms": ms,
        "ratio_whole_to_bare": ms["whole"]["median"] / ms["bare"]["median"],
        "ratio_whole_to_bare_p95": ms["whole"]["p95"] / ms["bare"]["p95"],
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "lxml": ".".join(map(str, etree.LXML_VERSION)),
        "libxml2": ".".join(map(str, etree.LIBXML_VERSION)),
        "libxml2_compiled": ".".join(map(str, etree.LIBXML_COMPILED_VERSION)),
        "signxml": metadata.version("signxml"),
        "cryptography": metadata.version("cryptography"),
        "pydantic": metadata.version("pydantic"),
        # Other work on the machine skews the figures; say how busy it was.
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def table(result: dict[str, Any]) -> str:
    """The figures as a text table."""
    m = result["machine"]
    lines = [
        f"machine: {m['nproc']} CPUs ({m['processor']}), {m['platform']}, "
        f"load average {' '.join(f'{x:.2f}' for x in m['load_average'] or ())}",
        f"python {m['python']}, lxml {m['lxml']} / libxml2 {m['libxml2']}, "
        f"signxml {m['signxml']}, cryptography {m['cryptography']}, pydantic {m['pydantic']}",
        f"{result['repeat']} interleaved rounds after {result['warmup']} warm-up rounds; "
        "milliseconds per package, median / p95",
        "",
    ]
    header = f"{'package':<16}{'key':<12}" + "".join(f"{name:>16}" for name in OPERATIONS)
    lines += [header + f"{'whole/bare':>12}", "-" * (len(header) + 12)]
    for row in result["rows"]:
        size = f"{row['package']} {row['bytes'] / 1024:.0f} KB"
        cells = "".join(
            f"{row['ms'][name]['median']:>8.2f} /{row['ms'][name]['p95']:>6.2f}"
            for name in OPERATIONS
        )
        lines.append(f"{size:<16}{row['key']:<12}{cells}{row['ratio_whole_to_bare']:>12.2f}")
    verdict = "met" if result["target_met"] else "NOT met"
    worst = result["worst_ratio"]
    lines += ["", f"target whole/bare <= {TARGET_RATIO}: {verdict} (worst {worst:.2f})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--repeat", type=int, default=200, help="timed rounds (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed rounds first (default 20)")
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE, help="the ~360 KB package")
    args = parser.parse_args(argv)
    if args.repeat < 2:
        parser.error("--repeat needs at least 2 rounds for a percentile")
    if not args.sample.is_file():
        print(f"the sample {args.sample} is not there; pass --sample PATH", file=sys.stderr)
        return 2

    rows = []
    with tempfile.TemporaryDirectory(prefix="lienthong-bench-") as tmp:
        for key_type in (KeyType.RSA_2048, KeyType.ECDSA_P256):
            signer = make_signer(key_type, Path(tmp))
            for case in (small_case(signer), large_case(signer, args.sample)):
                run = operations(case)
                check_once(case, run)
                gc.collect()
                rows.append(summary(case, measure(run, args.repeat, args.warmup)))
    worst = max(row["ratio_whole_to_bare"] for row in rows)
    result = {
        "machine": machine(),
        "repeat": args.repeat,
        "warmup": args.warmup,
        "target_ratio": TARGET_RATIO,
        "worst_ratio": worst,
        "target_met": worst <= TARGET_RATIO,
        "rows": rows,
    }
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
