"""The workload: agencies on four levels, and signed packages built before any clock starts."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exchange.edxml.model import DocumentPackage


def agency_codes(count: int) -> list[str]:
    """``count`` agency codes spread over the four levels, parents before children.

    Level 1: ministries and provinces (``000.00.00.Xnn``); level 2 their
    departments; level 3 and 4 below those, round robin over the levels.
    """
    letters = ("G", "H")
    codes: list[str] = []
    level1: list[str] = []
    level2: list[str] = []
    level3: list[str] = []
    n = 0
    while len(codes) < count:
        n += 1
        level = (n - 1) % 4 + 1
        if level == 1 or not level1:
            code = f"000.00.00.{letters[n % 2]}{10 + n % 90:02d}"
            if code in level1:
                code = f"000.00.00.K{n % 100:02d}"
            level1.append(code)
        elif level == 2 or not level2:
            parent = level1[n % len(level1)]
            code = f"000.00.{n % 100:02d}.{parent[-3:]}"
            level2.append(code)
        elif level == 3 or not level3:
            parent = level2[n % len(level2)]
            code = f"000.{n % 100:02d}.{parent[7:9]}.{parent[-3:]}"
            level3.append(code)
        else:
            parent = level3[n % len(level3)]
            code = f"{n % 1000:03d}.{parent[4:]}"
        if code not in codes:
            codes.append(code)
    return codes


@dataclass(frozen=True)
class SignJob:
    """Everything a pool process needs to build and sign one package."""

    number: int
    notation: str
    sender: tuple[str, str]  # code, name
    recipients: tuple[tuple[str, str], ...]
    attachment_bytes: int
    key_pem: bytes
    chain_pem: tuple[bytes, ...]


@dataclass(frozen=True)
class Planned:
    """One signed message of the workload: one document to one recipient."""

    sender: str
    recipient: str
    document_id: str
    body: bytes

    @property
    def key(self) -> tuple[str, str]:
        """How both the inbox delivery and the receipt name this message."""
        return (self.document_id, self.recipient)


def document_package(
    sender: tuple[str, str],
    recipients: Sequence[tuple[str, str]],
    *,
    attachment_bytes: int,
    number: int = 7816,
    notation: str = "VPCP-TTĐT",
    promulgation_date: date | None = None,
) -> DocumentPackage:
    """A document package from ``sender`` to ``recipients`` (each ``(code, name)``).

    Its one attachment is ``attachment_bytes`` of bytes drawn from a
    generator seeded with ``number``: incompressible, as a zipped file is,
    and the same on every run. Shared by ``lienthong bench`` and
    ``bench/cost.py``.
    """
    from exchange.edxml.model import (
        Attachment,
        Code,
        DocumentType,
        Organization,
        SignerInfo,
    )
    from exchange.edxml.writer import new_document

    content = random.Random(number).randbytes(max(1, attachment_bytes))  # noqa: S311
    return new_document(
        sender=Organization(organ_id=sender[0], organ_name=sender[1]),
        recipients=[Organization(organ_id=code, organ_name=name) for code, name in recipients],
        code=Code(code_number=str(number), code_notation=notation),
        subject=f"Thử nghiệm hiệu năng số {number}",
        promulgation_date=promulgation_date or date.today(),
        place="Hà Nội",
        document_type=DocumentType(type="1", type_detail="0", type_name="Công văn"),
        signer=SignerInfo(competence="TM.", position="Chánh Văn phòng", full_name="Nguyễn Văn A"),
        attachments=[
            Attachment.from_bytes(
                content, "tai-lieu.zip", content_type="application/zip", content_id="cid:1"
            )
        ],
    )


def sign_job(job: SignJob) -> tuple[str, bytes]:
    """Build and sign one document package; returns its DocumentId and bytes (pool function)."""
    from exchange.checks.authorise import document_id_of
    from exchange.checks.signature import sign
    from exchange.edxml.writer import write_package

    package = document_package(
        job.sender,
        job.recipients,
        attachment_bytes=job.attachment_bytes,
        number=job.number,
        notation=job.notation,
    )
    signed = sign(write_package(package), job.key_pem, list(job.chain_pem))
    return document_id_of(package), signed


def party(agency: Any) -> tuple[str, str]:
    return (str(agency.code), agency.name)


def verify_chunk(items: list[tuple[bytes, str, str]]) -> int:
    """Bare signxml verification of ``(package, certificate PEM, key type)``s (pool function)."""
    from signxml.algorithms import DigestAlgorithm, SignatureMethod
    from signxml.verifier import SignatureConfiguration, XMLVerifier

    methods = {"rsa": SignatureMethod.RSA_SHA256, "ecdsa": SignatureMethod.ECDSA_SHA256}
    for data, cert_pem, key_type in items:
        config = SignatureConfiguration(
            signature_methods=frozenset({methods[key_type.split("-")[0]]}),
            digest_algorithms=frozenset({DigestAlgorithm.SHA256}),
        )
        XMLVerifier().verify(data, x509_cert=cert_pem, expect_config=config)
    return len(items)


def warm(_: int) -> int:
    """Import what the pool functions need, before a clock starts (pool function)."""
    import signxml.verifier  # noqa: F401

    import exchange.checks.signature  # noqa: F401

    return os.getpid()
