"""A job's checkpoint directory ($TRAINLEDGER_CHECKPOINT_DIR): it outlives the
attempt, is saved into the store while it changes, and is where the next
attempt, on any host, finds the last checkpoint the ledger recorded.

The worker never reads what is inside. A trainer should write each checkpoint
file atomically (write a temp file, then rename it over the old one): a save
that meets a file changing under it is skipped and tried again at the next
tick, but only a rename makes every saved bundle a whole checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from reconciler.protocol.schema import Artifact, Checkpoint
from reconciler.store.backends import Store, pack_into
from worker.inputs import unpack_verified


class CheckpointDir:
    """The per-job directory and what of it was last saved or restored."""

    def __init__(self, root: Path, job_id: str) -> None:
        self.path = root / job_id
        self.saved_print: str | None = None  # fingerprint of the last save or restore
        self.last_save_at = 0.0
        self.resumed_from: int | None = None

    def restore(self, store: Store, recorded: Checkpoint | None, tmp: Path) -> int | None:
        """Empty the directory, then unpack the recorded checkpoint (verified) into
        it; returns the attempt that saved it, or None for a fresh start."""
        if self.path.exists():
            shutil.rmtree(self.path)
        self.resumed_from = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if recorded is None:
            self.path.mkdir(parents=True)
        else:
            unpack_verified(store, recorded.sha256, recorded.size, self.path, tmp)
            self.resumed_from = recorded.attempt
        self.saved_print = self.fingerprint()
        return self.resumed_from

    def fingerprint(self) -> str | None:
        """Names, sizes and mtimes of every file: None when there is none."""
        entries = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath) / name
                try:
                    st = full.lstat()
                except OSError:
                    continue
                entries.append(f"{full.relative_to(self.path)}\0{st.st_size}\0{st.st_mtime_ns}")
        if not entries:
            return None
        return hashlib.sha256("\n".join(entries).encode()).hexdigest()

    def changed(self) -> bool:
        now = self.fingerprint()
        return now is not None and now != self.saved_print

    def save(self, store: Store, tmp: Path, now: float) -> Artifact | None:
        """Bundle the directory into the store if it changed since the last save;
        None when there was nothing new. Raises StoreError, BundleError, OSError."""
        before = self.fingerprint()
        if before is None or before == self.saved_print:
            return None
        artifact = pack_into(store, self.path, tmp)
        if self.fingerprint() != before:
            raise OSError(f"{self.path} changed while it was being saved")
        self.saved_print = before
        self.last_save_at = now
        return artifact

    def drop(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
