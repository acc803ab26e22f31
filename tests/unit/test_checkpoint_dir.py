"""A job's checkpoint dir against a real local store: saved only when it
changed, restored only from the recorded (sha256-verified) bundle, emptied for
a fresh start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.protocol.errors import StoreError
from reconciler.protocol.schema import Checkpoint
from reconciler.store.local import LocalStore
from worker.checkpoint import CheckpointDir


def test_save_only_what_changed_and_restore_it_elsewhere(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    here = CheckpointDir(tmp_path / "a", "0123456789abcdef")
    assert here.restore(store, None, tmp_path / "tmp") is None
    assert here.path.is_dir() and here.fingerprint() is None
    assert here.save(store, tmp_path / "tmp", now=1.0) is None  # nothing to save yet
    (here.path / "state.txt").write_text("epoch 1")
    first = here.save(store, tmp_path / "tmp", now=2.0)
    assert first is not None and here.last_save_at == 2.0
    assert here.save(store, tmp_path / "tmp", now=3.0) is None  # unchanged
    (here.path / "state.txt").write_text("epoch 2")
    os.utime(here.path / "state.txt", ns=(1, 1))
    second = here.save(store, tmp_path / "tmp", now=4.0)
    assert second is not None and second.sha256 != first.sha256
    # another host restores the recorded one, and reports which attempt saved it
    there = CheckpointDir(tmp_path / "b", "0123456789abcdef")
    (there.path).mkdir(parents=True)
    (there.path / "stale.txt").write_text("from an attempt the ledger never recorded")
    assert there.restore(store, Checkpoint(second.sha256, second.size, 7), tmp_path / "t") == 7
    assert sorted(p.name for p in there.path.iterdir()) == ["state.txt"]
    assert (there.path / "state.txt").read_text() == "epoch 2"
    assert not there.changed()  # a restored dir is not saved again until it changes


def test_a_recorded_checkpoint_that_does_not_match_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    src = CheckpointDir(tmp_path / "a", "0123456789abcdef")
    src.restore(store, None, tmp_path / "tmp")
    (src.path / "w.bin").write_bytes(b"weights")
    saved = src.save(store, tmp_path / "tmp", now=1.0)
    assert saved is not None
    path = store.path(saved.sha256)
    os.chmod(path, 0o644)
    path.write_bytes(b"x" * saved.size)
    dest = CheckpointDir(tmp_path / "b", "0123456789abcdef")
    with pytest.raises(StoreError, match="re-hash"):
        dest.restore(store, Checkpoint(saved.sha256, saved.size, 1), tmp_path / "tmp")
    assert not dest.path.exists() or not any(dest.path.iterdir())
