"""The worker's reload of revocation lists: what it hands the checks, and its metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client import REGISTRY

from exchange.pipeline import CheckCache, CheckContext
from exchange.pki import empty_crl, load_revocations
from exchange.settings import Settings
from exchange.worker import TrustKeeper, observe_revocations
from tests.keys import TestPKI


def _settings(pki: TestPKI, **changes: Any) -> Settings:
    return Settings().model_copy(update={"trust": pki.ca_pem_path, **changes})


def _worker(pki: TestPKI) -> Any:
    return SimpleNamespace(check_cache=CheckCache(CheckContext(trust=pki.trust), max_bytes=0))


def test_revocation_lists_are_found_beside_the_trust_anchor(tmp_path: Path) -> None:
    pki = TestPKI.create(tmp_path)
    assert len(load_revocations(_settings(pki))) == 0
    empty_crl(pki.ca, tmp_path)
    assert len(load_revocations(_settings(pki))) == 1
    elsewhere = tmp_path / "crls"
    elsewhere.mkdir()
    assert len(load_revocations(_settings(pki, crl_dir=elsewhere))) == 0


def test_a_stale_list_is_counted_once_past_its_grace(tmp_path: Path) -> None:
    pki = TestPKI.create(tmp_path)
    week_and_a_day = datetime.now(UTC) - timedelta(days=8)
    empty_crl(pki.ca, tmp_path, at=week_and_a_day, valid_for=timedelta(days=7))
    observe_revocations(load_revocations(_settings(pki, crl_grace_s=2 * 86400)))
    assert REGISTRY.get_sample_value("lienthong_crl_stale_issuers") == 0
    observe_revocations(load_revocations(_settings(pki, crl_grace_s=3600)))
    assert REGISTRY.get_sample_value("lienthong_crl_stale_issuers") == 1
    assert REGISTRY.get_sample_value("lienthong_crl_lists") == 1


async def test_a_reload_hands_the_new_lists_to_every_worker_and_a_broken_file_keeps_the_old(
    tmp_path: Path,
) -> None:
    pki = TestPKI.create(tmp_path)
    workers = [_worker(pki), _worker(pki)]
    keeper = TrustKeeper(_settings(pki), workers)
    empty_crl(pki.ca, tmp_path)
    assert await keeper.reload(trust=False)
    held = [w.check_cache.context.revocations for w in workers]
    assert all(r is not None and len(r) == 1 for r in held)

    failed = REGISTRY.get_sample_value("lienthong_trust_reloads_total", {"outcome": "failed"}) or 0
    (tmp_path / "garbage.crl").write_bytes(b"not a CRL")
    assert not await keeper.reload(trust=False)
    assert [w.check_cache.context.revocations for w in workers] == held
    after = REGISTRY.get_sample_value("lienthong_trust_reloads_total", {"outcome": "failed"})
    assert after == failed + 1
