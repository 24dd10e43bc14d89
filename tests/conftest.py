"""Fixtures shared by every test."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.broker_fixtures", "tests.db_fixtures", "tests.exchange_fixtures"]

REPO = Path(__file__).resolve().parents[1]
SAMPLES = (REPO / ".." / "shared" / "samples" / "edxml").resolve()


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The real-world packages of ../shared/samples/edxml; the test skips without them."""
    if not SAMPLES.is_dir():
        pytest.skip(f"the real-world samples are not at {SAMPLES}")
    return SAMPLES
