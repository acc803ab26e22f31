"""Two of issue 19's open questions, answered "refuse" (docs/failure-model.md):
a bundle fetch-artifact would refuse is never packed, and one job written twice
(60 / 60.0 / "60") is a manifest error."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ledgerkit import manifest_text
from reconciler.protocol.errors import BundleError, ManifestError
from reconciler.protocol.manifest import load_manifest
from reconciler.store.bundle import DEFAULT_MAX_MEMBERS, pack


def test_outputs_fetch_artifact_would_refuse_are_not_packed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for i in range(DEFAULT_MAX_MEMBERS + 1):
        (out / f"f{i}").write_bytes(b"")
    with pytest.raises(BundleError, match="over the 10000 that fetch-artifact unpacks"):
        pack(out, io.BytesIO())


@pytest.mark.parametrize("other", [60.0, "60"])
def test_hyper_values_written_two_ways(other: object) -> None:
    text = manifest_text([{"name": "a", "seed": 1, "hyper": {"seconds": 60}},
                          {"name": "b", "seed": 1, "hyper": {"seconds": other}}])
    with pytest.raises(ManifestError, match=r"job 'b' \(jobs\[1\]\): field 'hyper': the same "
                                            r"values as job 'a'"):
        load_manifest(text.encode())


def test_hyper_values_that_differ_are_two_jobs() -> None:
    text = manifest_text([{"name": "a", "seed": 1, "hyper": {"seconds": 60}},
                          {"name": "b", "seed": 1, "hyper": {"seconds": "60s"}},
                          {"name": "c", "seed": 2, "hyper": {"seconds": 60}}])
    assert len(load_manifest(text.encode()).specs) == 3
