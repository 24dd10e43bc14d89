"""signxml against python-xmlsec: verifications per second of the same signed packages.

Usage::

    nice -n 19 .venv/bin/python bench/verifiers.py [--json] [--repeat N] [--warmup N]

Needs python-xmlsec (``.venv/bin/pip install xmlsec``; the PyPI wheel
bundles libxmlsec1 and the same libxml2 as the lxml wheel, see
docs/bench.md). The product does not use it: this only measures whether a
second XML-DSig implementation would be worth its review.

Packages of about 5 KB, 100 KB and 1 MB (a document from
:func:`cost.small_document` whose one attachment is sized to get there;
5 KB is :func:`cost.small_case` itself), each signed with an RSA-2048 and
an ECDSA P-256 key from a development CA (:func:`cost.make_signer`), and
for each, one call per round, interleaved as in ``bench/cost.py``:

* ``signxml``: ``XMLVerifier().verify`` of the bytes with the signer's
  certificate given (``cost.operations``'s ``bare``: signature method and
  digest restricted to the ones used);
* ``xmlsec``: python-xmlsec alone: parse the bytes, find the Signature,
  verify with a key loaded from the same certificate, signature and
  reference transforms restricted to the ones used (exclusive c14n,
  enveloped, SHA-256, RSA- or ECDSA-SHA256);
* ``xmlsec+``: ``xmlsec`` plus what signxml checks or gives and python-xmlsec
  does not: the Signature element valid against the XML-DSig schema (with
  signxml's own schema), exactly one Reference and its URI empty (the whole
  document), the certificate within its validity dates, and the signed
  content as a tree (a copy without the signature and the comments, which
  URI="" leaves unsigned): the like-for-like figure;
* ``verify``: the product's :func:`exchange.checks.signature.verify`
  (trust store, edXML placement, algorithms, then signxml);
* ``whole``: :func:`exchange.pipeline.check_message`, every check the worker runs
  before the database (``cost.operations``'s ``whole``).

Before timing, every verifier must accept each package and refuse four
forgeries of it: one byte of the attachment's content changed, one byte of
the SignatureValue changed, signed by another agency's key (under another
CA), and a SHA-1 signature. The run stops if any verifier accepts one.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import xmlsec
from cost import (
    SMALL_BYTES,
    Case,
    Signer,
    check_once,
    machine,
    make_signer,
    operations,
    p95,
    small_case,
    small_document,
)
from cryptography import x509
from lxml import etree
from signxml.verifier import XMLVerifier

from exchange.checks.signature import sign
from exchange.edxml.names import DSIG_NS, DSIG_SIGNATURE
from exchange.pki import KeyType

SIZES = (("5 KB", SMALL_BYTES), ("100 KB", 100 * 1024), ("1 MB", 1024 * 1024))
VERIFIERS = ("signxml", "xmlsec", "xmlsec+", "verify", "whole")
FORGERIES = ("content byte", "SignatureValue byte", "another key", "SHA-1")

_C = xmlsec.constants
SIGNATURE_TRANSFORMS = {
    KeyType.RSA_2048: (_C.TransformExclC14N, _C.TransformRsaSha256),
    KeyType.ECDSA_P256: (_C.TransformExclC14N, _C.TransformEcdsaSha256),
}
REFERENCE_TRANSFORMS = (_C.TransformEnveloped, _C.TransformExclC14N, _C.TransformSha256)

# signxml's default parser: entities not resolved. The xmlsec verifiers parse
# with the same, so that both start from the bytes alike.
PARSER = etree.XMLParser(resolve_entities=False)
REFERENCE = f"{{{DSIG_NS}}}SignedInfo/{{{DSIG_NS}}}Reference"


def sized_case(signer: Signer, name: str, target: int) -> Case:
    """A signed document of about ``target`` bytes, as :func:`cost.small_case` makes 5 KB."""
    if target == SMALL_BYTES:
        return replace(small_case(signer), package=name)
    base = len(sign(small_document(1), signer.key_pem, signer.cert_pem))
    attachment_bytes = max(256, (target - base) * 3 // 4)
    return Case(
        name, signer, sign(small_document(attachment_bytes), signer.key_pem, signer.cert_pem)
    )


def xmlsec_verify(data: bytes, signer: Signer) -> etree._Element:
    """python-xmlsec alone: the reference digest and the signature value, with the given key."""
    root = etree.fromstring(data, PARSER)
    signature = xmlsec.tree.find_node(root, _C.NodeSignature)
    if signature is None:
        raise xmlsec.VerificationError("no Signature")
    _xmlsec_check(signature, signer)
    return root


def _xmlsec_check(signature: etree._Element, signer: Signer) -> None:
    """python-xmlsec's verification of one Signature, only the algorithms used allowed."""
    context = xmlsec.SignatureContext()
    for transform in SIGNATURE_TRANSFORMS[signer.key_type]:
        context.enable_signature_transform(transform)
    for transform in REFERENCE_TRANSFORMS:
        context.enable_reference_transform(transform)
    # A key set on the context is used as it is; KeyInfo is not read.
    context.key = xmlsec.Key.from_memory(signer.cert_pem, _C.KeyDataFormatCertPem)
    context.verify(signature)


_SCHEMA_CHECKER = XMLVerifier()


def xmlsec_like_signxml(data: bytes, signer: Signer) -> etree._Element:
    """:func:`xmlsec_verify` plus what signxml checks or returns that python-xmlsec does not."""
    root = etree.fromstring(data, PARSER)
    signatures = list(root.iter(DSIG_SIGNATURE))
    if len(signatures) != 1:
        raise ValueError(f"{len(signatures)} Signature elements")
    signature = signatures[0]
    # signxml validates the Signature element against the XML-DSig schema ...
    _SCHEMA_CHECKER.validate_schema(signature)
    # ... expects one reference, and resolves only "" or "#id" without a
    # uri_resolver; python-xmlsec would follow any URI its IO callbacks allow
    # and does not say what a reference covered, so the caller must.
    references = signature.findall(REFERENCE)
    if len(references) != 1 or references[0].get("URI") != "":
        raise ValueError('not one Reference with URI=""')
    # signxml checks the given certificate's validity dates; a key loaded
    # from a certificate into python-xmlsec is only a key.
    certificate = x509.load_pem_x509_certificate(signer.cert_pem)
    now = datetime.now(UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise ValueError("certificate not valid now")
    _xmlsec_check(signature, signer)
    # signxml returns what was signed; with URI="" and the enveloped
    # transform, that is the document without the signature and the comments.
    signed = copy.deepcopy(root)
    for element in signed.iter(DSIG_SIGNATURE):
        element.getparent().remove(element)
        break
    etree.strip_tags(signed, etree.Comment)
    return signed


def verifiers(case: Case) -> dict[str, Callable[[], object]]:
    """The timed verifications of ``case``, each a call without arguments."""
    run = operations(case)
    data, signer = case.data, case.signer
    return {
        "signxml": run["bare"],
        "xmlsec": lambda: xmlsec_verify(data, signer),
        "xmlsec+": lambda: xmlsec_like_signxml(data, signer),
        "verify": run["verify"],
        "whole": run["whole"],
    }


def with_byte_changed(data: bytes, after: bytes) -> bytes:
    """``data`` with one base64 character changed, 40 bytes into the text after ``after``."""
    at = data.index(after) + len(after) + 40
    old = data[at : at + 1]
    assert old.isalnum(), old
    return data[:at] + (b"B" if old == b"A" else b"A") + data[at + 1 :]


def forgeries(case: Case, stranger: Signer) -> dict[str, bytes]:
    """Packages each verifier must refuse, as the signer's packages would be checked."""
    unsigned = small_document(1000)
    signed_value = next(
        tag for tag in (b"<ds:SignatureValue>", b"<SignatureValue>") if tag in case.data
    )
    return {
        "content byte": with_byte_changed(case.data, b"<ContentTransferEncoded>"),
        "SignatureValue byte": with_byte_changed(case.data, signed_value),
        "another key": sign(unsigned, stranger.key_pem, stranger.cert_pem),
        "SHA-1": sign(unsigned, case.signer.key_pem, case.signer.cert_pem, digest="sha1"),
    }


def refusals(case: Case, stranger: Signer) -> dict[str, dict[str, str]]:
    """For each forgery and verifier, the refusal (exception type and message)."""
    results: dict[str, dict[str, str]] = {}
    for forgery, data in forgeries(case, stranger).items():
        forged = Case(case.package, case.signer, data)
        results[forgery] = {}
        for name, call in verifiers(forged).items():
            try:
                call()
            except Exception as error:  # any refusal counts; what it was is recorded
                results[forgery][name] = f"{type(error).__name__}: {error}"[:160]
            else:
                raise SystemExit(f"{name} ACCEPTED a forgery ({forgery}) of {case.package}")
    return results


def measure(
    run: dict[str, Callable[[], object]], repeat: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    """CPU and wall seconds per call of each verifier, ``repeat`` rounds after ``warmup``.

    The CPU time of this thread is what a verification costs; the wall time
    also holds the time other processes had the CPU (this one runs niced on
    a shared machine), so it is recorded but not what the table shows.
    """
    samples: dict[str, dict[str, list[float]]] = {
        name: {"cpu": [], "wall": []} for name in VERIFIERS
    }
    cpu, wall = time.thread_time, time.perf_counter
    for round_number in range(warmup + repeat):
        for name in VERIFIERS:
            call = run[name]
            cpu_start, wall_start = cpu(), wall()
            call()
            cpu_elapsed, wall_elapsed = cpu() - cpu_start, wall() - wall_start
            if round_number >= warmup:
                samples[name]["cpu"].append(cpu_elapsed)
                samples[name]["wall"].append(wall_elapsed)
    return samples


def summary(case: Case, samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Verifications per second of one thread (of the median CPU time), and milliseconds."""
    cpu = {name: statistics.median(times["cpu"]) for name, times in samples.items()}
    return {
        "package": case.package,
        "key": case.signer.key_type.value,
        "bytes": len(case.data),
        "per_second": {name: 1 / seconds for name, seconds in cpu.items()},
        "ms": {
            name: {
                clock: {"median": statistics.median(values) * 1000, "p95": p95(values) * 1000}
                for clock, values in times.items()
            }
            for name, times in samples.items()
        },
        "xmlsec_plus_speedup": cpu["signxml"] / cpu["xmlsec+"],
        "xmlsec_plus_to_verify": cpu["verify"] / cpu["xmlsec+"],
    }


def machine_with_xmlsec() -> dict[str, Any]:
    """cost.py's machine description and the versions of python-xmlsec and its libraries."""
    return {
        **machine(),
        "python_xmlsec": metadata.version("xmlsec"),
        "libxmlsec1": ".".join(map(str, xmlsec.get_libxmlsec_version())),
        "xmlsec_libxml2": ".".join(map(str, xmlsec.get_libxml_version())),
    }


def table(result: dict[str, Any]) -> str:
    """The figures as a text table."""
    m = result["machine"]
    lines = [
        f"machine: {m['nproc']} CPUs ({m['processor']}), {m['platform']}, "
        f"load average {' '.join(f'{x:.2f}' for x in m['load_average'] or ())}",
        f"python {m['python']}, lxml {m['lxml']} / libxml2 {m['libxml2']}, "
        f"signxml {m['signxml']}, cryptography {m['cryptography']}, "
        f"python-xmlsec {m['python_xmlsec']} / libxmlsec1 {m['libxmlsec1']} "
        f"/ libxml2 {m['xmlsec_libxml2']}",
        f"{result['repeat']} interleaved rounds after {result['warmup']} warm-up rounds; "
        "verifications per second of one thread (1 / median CPU time of the call)",
        "",
    ]
    header = f"{'package':<20}{'key':<12}" + "".join(f"{name:>10}" for name in VERIFIERS)
    lines += [header + f"{'signxml ms':>12}{'xmlsec+ ms':>12}{'speedup':>9}{'vs verify':>11}"]
    lines.append("-" * len(lines[-1]))
    for row in result["rows"]:
        size = f"{row['package']} ({row['bytes']:,} B)"
        cells = "".join(f"{row['per_second'][name]:>10.0f}" for name in VERIFIERS)
        lines.append(
            f"{size:<20}{row['key']:<12}{cells}"
            f"{row['ms']['signxml']['cpu']['median']:>12.2f}"
            f"{row['ms']['xmlsec+']['cpu']['median']:>12.2f}"
            f"{row['xmlsec_plus_speedup']:>8.2f}x"
            f"{row['xmlsec_plus_to_verify']:>10.2f}x"
        )
    lines += [
        "",
        "speedup: CPU time of signxml / xmlsec+ (like for like); vs verify: CPU time of the "
        "product's verify / xmlsec+",
        "forgeries refused by every verifier: " + ", ".join(FORGERIES),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Check that every verifier accepts and refuses alike, then time them; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--repeat", type=int, default=100, help="timed rounds (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed rounds first (default 10)")
    args = parser.parse_args(argv)
    if args.repeat < 2:
        parser.error("--repeat needs at least 2 rounds for a percentile")

    rows = []
    refused: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lienthong-bench-") as tmp:
        for key_type in (KeyType.RSA_2048, KeyType.ECDSA_P256):
            signer = make_signer(key_type, Path(tmp))
            stranger = make_signer(key_type, Path(tmp) / "stranger")
            for name, target in SIZES:
                case = sized_case(signer, name, target)
                run = verifiers(case)
                check_once(case, operations(case))
                for call in run.values():
                    call()
                refused[f"{name} {key_type.value}"] = refusals(case, stranger)
                gc.collect()
                rows.append(summary(case, measure(run, args.repeat, args.warmup)))
    result = {
        "machine": machine_with_xmlsec(),
        "repeat": args.repeat,
        "warmup": args.warmup,
        "rows": rows,
        "refusals": refused,
    }
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
