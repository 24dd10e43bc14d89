"""The CheckCache: the same package's bytes examined once, the envelope checked every time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exchange.agency import AgencyCode
from exchange.checks.signature import sign
from exchange.pipeline import CheckCache, CheckContext, Envelope
from exchange.reasons import Reason, Rejection
from tests.keys import TestPKI
from tests.packages import document_package

SENDER = AgencyCode.parse("000.00.00.G22")
# The package's two recipients (tests/packages.py).
NGHE_AN = "000.00.00.H41"
CAO_BANG = "000.00.00.H14"


class Counted:
    """Counts the examinations an CheckCache really runs (the expensive part)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import exchange.pipeline as pipeline

        self.count = 0
        real = pipeline.check_bytes

        def counting(*args: object, **kwargs: object) -> pipeline.CheckedBytes:
            self.count += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(pipeline, "check_bytes", counting)


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return TestPKI.create(tmp_path)


@pytest.fixture
def signed(pki: TestPKI) -> bytes:
    agency = pki.agency(str(SENDER))
    return sign(document_package().encode("utf-8"), agency.key_pem, agency.cert_pem)


def _inspect(inspector: CheckCache, envelope: Envelope) -> object:
    """What the worker does: recall, else examine."""
    recalled = inspector.recall(envelope)
    return recalled if recalled is not None else inspector.check(envelope)


def test_copies_to_other_recipients_are_examined_once(
    pki: TestPKI, signed: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    inspector = CheckCache(CheckContext(trust=pki.trust), max_bytes=2**20)
    first = inspector.check(Envelope(signed, NGHE_AN, SENDER))
    second = inspector.recall(Envelope(signed, CAO_BANG, SENDER))
    assert counted.count == 1
    assert second is not None
    assert (first.recipient, second.recipient) == (
        AgencyCode.parse(NGHE_AN),
        AgencyCode.parse(CAO_BANG),
    )
    assert second.package is first.package and second.sender == SENDER


def test_other_bytes_are_examined_again(
    pki: TestPKI, signed: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only byte-identical packages share an examination: one byte more is another package."""
    counted = Counted(monkeypatch)
    inspector = CheckCache(CheckContext(trust=pki.trust), max_bytes=2**20)
    inspector.check(Envelope(signed, NGHE_AN, SENDER))
    assert inspector.recall(Envelope(signed + b"\n", NGHE_AN, SENDER)) is None
    _inspect(inspector, Envelope(signed + b"\n", NGHE_AN, SENDER))
    assert counted.count == 2


def test_the_envelope_is_checked_on_every_recall(pki: TestPKI, signed: bytes) -> None:
    """A remembered package published by another agency, or to a stranger, is still refused."""
    inspector = CheckCache(CheckContext(trust=pki.trust), max_bytes=2**20)
    inspector.check(Envelope(signed, NGHE_AN, SENDER))
    other = AgencyCode.parse("000.00.00.G09")
    with pytest.raises(Rejection) as impostor:
        inspector.recall(Envelope(signed, NGHE_AN, other))
    assert impostor.value.reason is Reason.SENDER_MISMATCH
    with pytest.raises(Rejection) as stranger:
        inspector.recall(Envelope(signed, "000.00.00.H49", SENDER))
    assert stranger.value.reason is Reason.NOT_ADDRESSED
    with pytest.raises(Rejection) as bad_key:
        inspector.recall(Envelope(signed, "not-a-code", SENDER))
    assert bad_key.value.reason is Reason.BAD_AGENCY_CODE


def test_refusals_are_not_remembered(pki: TestPKI, signed: bytes) -> None:
    inspector = CheckCache(CheckContext(trust=pki.trust), max_bytes=2**20)
    tampered = signed.replace(b"Cac bo va co quan ngang bo", b"Cac bo va co quan ngang bx")
    with pytest.raises(Rejection):
        inspector.check(Envelope(tampered, NGHE_AN, SENDER))
    assert inspector.recall(Envelope(tampered, NGHE_AN, SENDER)) is None
    assert inspector.remembered_bytes == 0


def test_an_examination_is_forgotten_after_its_time(pki: TestPKI, signed: bytes) -> None:
    start = datetime.now(UTC)
    context = CheckContext(trust=pki.trust, now=start)
    inspector = CheckCache(context, max_bytes=2**20, remember_s=60)
    inspector.check(Envelope(signed, NGHE_AN, SENDER))
    inspector.context = CheckContext(trust=pki.trust, now=start + timedelta(seconds=59))
    assert inspector.recall(Envelope(signed, CAO_BANG, SENDER)) is not None
    inspector.context = CheckContext(trust=pki.trust, now=start + timedelta(seconds=60))
    assert inspector.recall(Envelope(signed, CAO_BANG, SENDER)) is None
    assert inspector.remembered_bytes == 0


def test_nothing_is_reused_past_the_signing_certificate(pki: TestPKI, signed: bytes) -> None:
    """A certificate that expires within the memory's time ends the reuse with it."""
    not_after = pki.agency(str(SENDER)).certificate.not_valid_after_utc
    context = CheckContext(trust=pki.trust, now=not_after - timedelta(seconds=10))
    inspector = CheckCache(context, max_bytes=2**20, remember_s=3600)
    inspector.check(Envelope(signed, NGHE_AN, SENDER))
    assert inspector.recall(Envelope(signed, CAO_BANG, SENDER)) is not None
    inspector.context = CheckContext(trust=pki.trust, now=not_after)
    assert inspector.recall(Envelope(signed, CAO_BANG, SENDER)) is None


def test_memory_is_bounded_in_bytes(pki: TestPKI) -> None:
    """The least recently used packages go first; a package larger than the memory never enters."""
    agency = pki.agency(str(SENDER))
    packages = [
        sign(
            document_package(attachment=f"UEsDBB{n:02d}").encode(), agency.key_pem, agency.cert_pem
        )
        for n in range(4)
    ]
    size = max(len(p) for p in packages)
    inspector = CheckCache(CheckContext(trust=pki.trust), max_bytes=2 * size + size // 2)
    for package in packages[:2]:
        inspector.check(Envelope(package, NGHE_AN, SENDER))
    assert inspector.recall(Envelope(packages[0], CAO_BANG, SENDER)) is not None  # now most recent
    inspector.check(Envelope(packages[2], NGHE_AN, SENDER))
    assert inspector.remembered_bytes <= 2 * size + size // 2
    assert inspector.recall(Envelope(packages[1], CAO_BANG, SENDER)) is None  # the oldest went
    assert inspector.recall(Envelope(packages[0], CAO_BANG, SENDER)) is not None
    tiny = CheckCache(CheckContext(trust=pki.trust), max_bytes=size // 2)
    tiny.check(Envelope(packages[3], NGHE_AN, SENDER))
    assert tiny.remembered_bytes == 0
    off = CheckCache(CheckContext(trust=pki.trust), max_bytes=0)
    off.check(Envelope(packages[3], NGHE_AN, SENDER))
    assert off.recall(Envelope(packages[3], CAO_BANG, SENDER)) is None


def test_a_bad_attachment_is_refused_after_the_envelope_checks(pki: TestPKI) -> None:
    """The order of reasons is as without the memory: sender and route first, then attachments."""
    agency = pki.agency(str(SENDER))
    signed = sign(
        document_package(attachment="not base64!").encode(), agency.key_pem, agency.cert_pem
    )
    inspector = CheckCache(CheckContext(trust=pki.trust), max_bytes=2**20)
    with pytest.raises(Rejection) as first:
        inspector.check(Envelope(signed, NGHE_AN, SENDER))
    assert first.value.reason is Reason.BAD_ATTACHMENT
    with pytest.raises(Rejection) as impostor:
        inspector.recall(Envelope(signed, NGHE_AN, AgencyCode.parse("000.00.00.G09")))
    assert impostor.value.reason is Reason.SENDER_MISMATCH


def test_a_lane_that_names_another_agency_is_refused_before_the_signature(
    pki: TestPKI, signed: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own code, or no lane at all, goes through; another agency's is refused, unexamined."""
    counted = Counted(monkeypatch)
    inspector = CheckCache(CheckContext(trust=pki.trust), max_bytes=2**20)

    inspector.check(Envelope(signed, NGHE_AN, SENDER, lane=str(SENDER)))
    inspector.check(Envelope(signed, CAO_BANG, SENDER, lane=None))
    examined = counted.count
    with pytest.raises(Rejection) as spread:
        inspector.check(Envelope(signed + b"\n", NGHE_AN, SENDER, lane="000.00.00.G09"))

    assert spread.value.reason is Reason.SENDER_MISMATCH
    assert spread.value.problems[0].where == "x-lienthong-lane"
    assert "000.00.00.G09" in spread.value.explain()
    assert counted.count == examined, "refused before its bytes were examined"
    assert spread.value.before_signature
