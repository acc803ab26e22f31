"""The manifest a worker works from when the tip's is broken.

On a ledger without hooks (or before one was installed) a broken manifest can
reach main. The reconciler goes on with the last valid one; a worker that
started on such a tip used to idle silently. It now looks back the same way.
"""

from __future__ import annotations

from reconciler.git.ledger import Ledger
from reconciler.protocol.errors import LedgerError, ManifestError
from reconciler.protocol.manifest import LoadedManifest, load_manifest

LOOK_BACK = 50  # commits touching manifest.toml


def last_valid_manifest(ledger: Ledger, rev: str | None) -> tuple[LoadedManifest, str] | None:
    """The newest manifest in `rev`'s history that validates, and its commit."""
    if rev is None:
        return None
    try:
        proc = ledger.repo.git("log", "--format=%H", "-n", str(LOOK_BACK), rev, "--",
                               "manifest.toml", check=False)
        for commit in proc.stdout.decode().split():
            data = ledger.repo.git("show", f"{commit}:manifest.toml", check=False).stdout
            try:
                return load_manifest(data), commit
            except ManifestError:
                continue
    except LedgerError:
        return None
    return None
