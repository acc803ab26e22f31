"""What a finished attempt leaves for the ledger besides its bundle: the
trainer's `metrics.json` and its whole log.

Metrics go into the completed state, so `git log -p` shows the result beside
the spec and the artifact's hash, and `reconciler results` ranks jobs without
fetching a bundle. A malformed file never fails a job that trained: the state
records why it was ignored (`metrics_error`).

The log goes to the store as a bundle of its own holding `log.txt` (the same
format, checks and `fsck` as artifacts), capped at LOG_CAP_BYTES with the tail
kept, since the end of a log is where the error is.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from reconciler.errors import StateError
from reconciler.schema import Artifact
from reconciler.state import METRICS_MAX_BYTES, METRICS_SCHEMA, LogRef, check
from reconciler.store import Store, pack_into

METRICS_FILE = "metrics.json"
LOG_CAP_BYTES = 8 * 1024 * 1024
LOG_MEMBER = "log.txt"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def read_metrics(output_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(metrics, None), (None, why it was ignored), or (None, None) with no file."""
    path = output_dir / METRICS_FILE
    if path.is_symlink():
        return None, f"{METRICS_FILE} ignored: it is a symlink"
    if not path.exists():
        return None, None
    try:
        size = path.stat().st_size
        if size > METRICS_MAX_BYTES:
            return None, (f"{METRICS_FILE} ignored: {size} bytes, over the "
                          f"{METRICS_MAX_BYTES}-byte cap")
        data = json.loads(path.read_bytes(), parse_constant=_no_constants)
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"{METRICS_FILE} ignored: not JSON ({str(exc)[:200]})"
    if not isinstance(data, dict):
        return None, f"{METRICS_FILE} ignored: expected a flat object, got {type(data).__name__}"
    for key, value in data.items():
        if isinstance(value, float) and not math.isfinite(value):
            return None, f"{METRICS_FILE} ignored: {key!r} is not finite"
    try:
        check(data, METRICS_SCHEMA, "metrics")
    except StateError as exc:
        return None, f"{METRICS_FILE} ignored: {str(exc)[:300]}"
    return data, None


def capped_log(log_path: Path, dest: Path, cap: int = LOG_CAP_BYTES) -> Path:
    """Write the log into dest/log.txt, keeping the last `cap` bytes (with a
    first line saying how much was dropped) when it is longer."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / LOG_MEMBER
    size = log_path.stat().st_size if log_path.exists() else 0
    with out.open("wb") as w:
        if size > cap:
            w.write(f"[trainledger: log was {size} bytes; the first {size - cap} were dropped, "
                    f"the last {cap} are kept]\n".encode())
        if size:
            with log_path.open("rb") as r:
                r.seek(max(0, size - cap))
                shutil.copyfileobj(r, w)
    return out


def store_log(store: Store, log_path: Path, work_dir: Path, attempt: int) -> LogRef:
    """The attempt's log as its own bundle in the store."""
    src = work_dir / "log-bundle"
    if src.exists():
        shutil.rmtree(src)
    capped_log(log_path, src)
    art: Artifact = pack_into(store, src, work_dir)
    shutil.rmtree(src, ignore_errors=True)
    return LogRef(sha256=art.sha256, size=art.size, attempt=attempt)
