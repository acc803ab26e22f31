"""Choosing jobs the way squeue and scancel do: by status, worker, model, sweep
and a name glob. `status` shows what the selectors match; `cancel` and `requeue` act
on exactly the same set, so `status ... ` previews `cancel ... --dry-run`.

A job's worker is its holder while it is held, else the host of its last
attempt (read from history, reconciler/cli/timeline.py): `requeue --status failed
--worker gpu2` finds the jobs that failed on gpu2.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from reconciler.protocol.state import Status

STATUSES = [s.value for s in Status]
GLOB_CHARS = set("*?[")


def status_list(text: str) -> list[str]:
    """`failed` or `failed,cancelled`: every item a known status."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in STATUSES]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected one or more of {', '.join(STATUSES)} (comma-separated)")
    return items


status_list.completions = STATUSES  # type: ignore[attr-defined]  # for completion.py


def add_selector_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", type=status_list, action="append", metavar="STATUS[,..]",
                        help="only jobs in this status (repeatable, or comma-separated)")
    parser.add_argument("--worker", action="append", metavar="NAME",
                        help="only jobs held by (or last run on) this worker; a glob works")
    parser.add_argument("--model", action="append", metavar="MODEL",
                        help="only jobs of this model; a glob works")
    parser.add_argument("--sweep", action="append", metavar="SWEEP",
                        help="only the points of this [[sweeps]] entry; a glob works")


def is_glob(text: str) -> bool:
    return bool(GLOB_CHARS & set(text))


def has_selector(args: argparse.Namespace) -> bool:
    return bool(args.status or args.worker or args.model or getattr(args, "sweep", None))


def _any(value: str | None, patterns: Iterable[str]) -> bool:
    return value is not None and any(fnmatchcase(value, p) for p in patterns)


def row_matches(row: Mapping[str, Any], args: argparse.Namespace,
                names: Iterable[str] = ()) -> bool:
    """A status job row against --status/--worker/--model and name patterns
    (each a glob, an exact name, or a job id prefix)."""
    if args.status and row["status"] not in {s for group in args.status for s in group}:
        return False
    if args.worker and not _any(row.get("holder") or row.get("last_host"), args.worker):
        return False
    if args.model and not _any(row.get("model"), args.model):
        return False
    if getattr(args, "sweep", None) and not _any(row.get("sweep"), args.sweep):
        return False
    names = list(names)
    return not names or any(fnmatchcase(row["name"], n) or row["job_id"].startswith(n)
                            for n in names)
