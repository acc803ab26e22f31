"""A bundle copied out of the store, hashed as it streams: the one download that
`fetch-artifact`, `reconciler logs` and a worker's upstream inputs share."""

from __future__ import annotations

import hashlib
from pathlib import Path

from reconciler.protocol.errors import StoreError
from reconciler.store.backends import CHUNK


def download(store, sha256: str, size: int, into: Path) -> Path:
    """Copy the bundle into `into`, hashing as it streams; refuse a mismatch."""
    path = into / f"{sha256}.tar.zst"
    digest = hashlib.sha256()
    total = 0
    with store.open(sha256) as src, open(path, "wb") as out:
        while chunk := src.read(CHUNK):
            total += len(chunk)
            if total > size:
                raise StoreError(f"bundle {sha256[:12]}: more than the {size} bytes the "
                                 "ledger records")
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != sha256 or total != size:
        raise StoreError(f"bundle {sha256[:12]}: the store's bytes do not match the ledger "
                         f"(sha256 {digest.hexdigest()[:12]}, {total} of {size} bytes)")
    return path

