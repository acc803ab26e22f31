"""Bundles a trainer starts from: the artifacts of its upstream jobs
($TRAINLEDGER_INPUTS) and its job's last checkpoint. Each is read from the
store with its sha256 checked against the ledger while it streams, and only
then unpacked by `unpack.unpack` (which refuses unsafe members), so a trainer
never sees bytes the ledger did not record."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from reconciler.protocol.errors import BundleError, StoreError
from reconciler.protocol.state import JobState
from reconciler.store.backends import Store
from reconciler.store.download import download
from reconciler.store.unpack import unpack


def unpack_verified(store: Store, sha256: str, size: int, dest: Path, tmp: Path) -> int:
    """Download, verify and unpack one bundle into `dest` (absent or empty);
    returns the member count. StoreError or BundleError leave `dest` absent."""
    tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="in-", dir=tmp) as work:
        bundle = download(store, sha256, size, Path(work))
        try:
            return len(unpack(bundle, dest))
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise


def prepare_inputs(store: Store, upstream: Mapping[str, JobState], dest: Path,
                   tmp: Path) -> list[str]:
    """One sub-directory of `dest` per upstream job, named by job name, holding
    its unpacked artifact; returns the names."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name, state in sorted(upstream.items()):
        assert state.artifact is not None
        art = state.artifact
        try:
            unpack_verified(store, art.sha256, art.size, dest / name, tmp)
        except (StoreError, BundleError, OSError) as exc:
            raise StoreError(f"upstream job {name!r} ({state.job_id}), artifact "
                             f"{art.sha256[:12]}: {exc}", job=name) from None
    return sorted(upstream)
