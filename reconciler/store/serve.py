"""The forced command's side of the store: what `trainledger-shell NAME`
(reconciler/shell.py) runs for store-put, store-get and store-has on the Pi's
LocalStore. An exit code and at most one stderr line are the whole answer
SshStore (reconciler/store/ssh.py) reads back.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

from reconciler.protocol.errors import StoreError
from reconciler.store.backends import CHUNK, GET_MISMATCH
from reconciler.store.local import LocalStore


def _fail(command: str, exc: Exception, code: int) -> int:
    text = str(exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)
    print(f"{command}: {' '.join(text.split())}", file=sys.stderr)
    return code


def serve_put(root: Path, sha256: str, stdin: BinaryIO) -> int:
    """store-put: 0 and the size on stdout, or 1 and one line on stderr."""
    try:
        artifact = LocalStore(root).put(sha256, stdin)
    except (StoreError, OSError) as exc:
        return _fail("store-put", exc, 1)
    print(artifact.size, flush=True)
    return 0


def serve_get(root: Path, sha256: str, stdout: BinaryIO) -> int:
    """store-get: 0 and the bytes; 1 absent, 3 bytes that do not re-hash (after
    sending them), 2 any other error."""
    try:
        store = LocalStore(root)
        if not store.has(sha256):
            return _fail("store-get", StoreError(f"no bundle {sha256}"), 1)
        with store.open(sha256) as f:
            while chunk := f.read(CHUNK):
                stdout.write(chunk)
        stdout.flush()
    except (StoreError, OSError) as exc:
        return _fail("store-get", exc, GET_MISMATCH if getattr(exc, "mismatch", False) else 2)
    return 0


def serve_has(root: Path, sha256: str) -> int:
    """store-has: 0 present, 1 absent, 2 refused (bad sha, planted link...)."""
    try:
        return 0 if LocalStore(root).has(sha256) else 1
    except (StoreError, OSError) as exc:
        return _fail("store-has", exc, 2)
