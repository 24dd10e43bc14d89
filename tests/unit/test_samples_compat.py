"""Real-world packages through every check: read, validate, verify, and after signing.

The packages in ../shared/samples/edxml were written by others for the real
national axis; each one's expected outcome at each stage is written next to
it, so a change that breaks compatibility (or starts accepting what it must
not) fails here. A package counts as compatible when the exchange can read
every field of it: every sample but the broken ones must also pass the whole
check once signed for real by the agency it says sent it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exchange.checks.schema import check_schema
from exchange.checks.signature import sign, verify
from exchange.edxml.model import DocumentPackage
from exchange.edxml.reader import read_package
from exchange.edxml.safexml import parse
from exchange.pipeline import CheckContext, Envelope, check_message
from exchange.reasons import Reason, Rejection
from tests.keys import TestPKI

R = Reason
OK = None

# file: (read, validate, verify) - None means accepted, else the reason.
EXPECTED: dict[str, tuple[Reason | None, Reason | None, Reason | None]] = {
    # A From element is never closed: refused before anything else.
    "edoc.edxml": (R.NOT_WELL_FORMED, R.NOT_WELL_FORMED, R.NOT_WELL_FORMED),
    # To is "28.22.H17": the reader and the schema refuse the malformed code
    # its signature is the public samples' placeholder.
    "edoc_new.edxml": (R.BAD_AGENCY_CODE, R.BAD_AGENCY_CODE, R.SIGNATURE_MISSING),
    "edoc_replacement.edxml": (OK, OK, R.SIGNATURE_MISSING),
    "edoc_revocation.edxml": (OK, OK, R.SIGNATURE_MISSING),
    "edoc_update.edxml": (OK, OK, R.SIGNATURE_MISSING),
    # Status packages carry no signature at all.
    "status.edxml": (OK, OK, R.SIGNATURE_MISSING),
    "status_acceptance_03.edxml": (OK, OK, R.SIGNATURE_MISSING),
    "status_assignment_04.edxml": (OK, OK, R.SIGNATURE_MISSING),
    "status_cancellation_13.edxml": (OK, OK, R.SIGNATURE_MISSING),
    "status_change-acceptance_15.edxml": (OK, OK, R.SIGNATURE_MISSING),
    "status_change-rejection_16.edxml": (OK, OK, R.SIGNATURE_MISSING),
    "status_finish_06.edxml": (OK, OK, R.SIGNATURE_MISSING),
    "status_inbox_01.edxml": (OK, OK, R.SIGNATURE_MISSING),
    "status_processing_05.edxml": (OK, OK, R.SIGNATURE_MISSING),
    "status_rejection_02.edxml": (OK, OK, R.SIGNATURE_MISSING),
}


def _outcome(step: object) -> Reason | None:
    try:
        step()  # type: ignore[operator]
    except Rejection as rejection:
        return rejection.reason
    return None


def test_the_table_covers_every_sample(samples_dir: Path) -> None:
    assert sorted(p.name for p in samples_dir.glob("*.edxml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_meets_its_expected_outcome_at_each_stage(
    name: str, samples_dir: Path, tmp_path: Path
) -> None:
    data = (samples_dir / name).read_bytes()
    trust = TestPKI.create(tmp_path).trust
    expected_read, expected_validate, expected_verify = EXPECTED[name]
    assert _outcome(lambda: read_package(data)) is expected_read
    assert _outcome(lambda: check_schema(parse(data))) is expected_validate
    assert _outcome(lambda: verify(data, trust)) is expected_verify


@pytest.mark.parametrize(
    "name", sorted(n for n, (read, validate, _) in EXPECTED.items() if read is validate is None)
)
def test_sample_signed_for_real_passes_the_whole_check(
    name: str, samples_dir: Path, tmp_path: Path
) -> None:
    """Signed by the agency in its From and published by it, every readable sample is accepted."""
    data = (samples_dir / name).read_bytes()
    package = read_package(data)
    pki = TestPKI.create(tmp_path)
    sender = package.sender.organ_id
    agency = pki.agency(str(sender))
    signed = sign(data, agency.key_pem, agency.cert_pem)
    if isinstance(package, DocumentPackage):
        recipient = package.recipients[0].organ_id
    else:
        recipient = package.response_for.organ_id
    inspected = check_message(
        Envelope(signed, str(recipient), sender), CheckContext(trust=pki.trust)
    )
    assert inspected.sender == sender
    assert inspected.package == package, "signing must not change what the package says"
