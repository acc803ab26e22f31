"""What a finished attempt leaves for the ledger besides its bundle: the
trainer's `metrics.json` and its whole log.

Metrics go into the completed state, so `git log -p` shows the result beside
the spec and the artifact's hash, and `reconciler results` ranks jobs without
fetching a bundle. A malformed file never fails a job that trained: the state
records why it (or a part of it) was ignored (`metrics_error`).

The log goes to the store as a bundle of its own holding `log.txt` (the same
format, checks and `fsck` as artifacts), capped at LOG_CAP_BYTES with the tail
kept, since the end of a log is where the error is.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from reconciler.protocol.schema import Artifact
from reconciler.protocol.state import METRIC_KEY, METRICS_MAX_BYTES, METRICS_SCHEMA, LogRef
from reconciler.store.backends import Store, pack_into

METRICS_FILE = "metrics.json"
LOG_CAP_BYTES = 8 * 1024 * 1024
LOG_MEMBER = "log.txt"
MAX_KEYS = METRICS_SCHEMA["maxProperties"]


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def read_metrics(output_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(metrics, note). The file is ignored whole when it is not a JSON object
    or over the cap; otherwise every number and short string is kept, one level
    of nesting is flattened to `parent.child` (the example trainers write
    `accuracy_bootstrap: {p05, p50, p95}`), and what does not fit (a list, a
    boolean, deeper nesting, a bad key, past 64 keys) is left out and named in
    the note. (None, None) when there is no file."""
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
    kept: dict[str, Any] = {}
    left: list[str] = []
    for key, value in data.items():
        items = ([(f"{key}.{k}", v) for k, v in value.items()] if isinstance(value, dict)
                 else [(key, value)])
        for name, item in items:
            why = _unfit(name, item) or (f"over {MAX_KEYS} keys" if len(kept) >= MAX_KEYS
                                         else None)
            if why:
                left.append(f"{name[:64]!r} ({why})")
            else:
                kept[name] = item
    note = None
    if left:
        shown = ", ".join(left[:8]) + (f" and {len(left) - 8} more" if len(left) > 8 else "")
        note = f"{METRICS_FILE}: left out {shown}"[:1024]
    return kept or None, note


def _unfit(key: str, value: Any) -> str | None:
    """Why one entry cannot go into the state (its schema: METRICS_SCHEMA)."""
    if not re.match(METRIC_KEY, key):
        return f"key does not match {METRIC_KEY}"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "nested more than one level"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string over 256 characters" if len(value) > 256 else None
    if isinstance(value, int | float):
        return None if math.isfinite(value) else "not finite"
    return f"a {type(value).__name__}"


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
