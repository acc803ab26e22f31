"""The reconciler daemon's report: what `reconciler status` shows about it.

The daemon carries its `Report` in its own heartbeat, which the hook refuses
over 64 KiB; a refused beat loses the whole report. So the report is kept
bounded whatever the ledger's size: lists become a count plus a capped sample,
strings a prefix whose JSON encoding fits a byte budget.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

REPORT_SAMPLE = 20  # ids listed per list in the report; the rest are counted
REPORT_WORKERS = 200  # freshest first: ~40 bytes each
REPORT_TEXT = 1024  # JSON bytes per finding; errors get four times that


@dataclass
class Report:
    """What `reconciler status` shows about the daemon (its heartbeat's report)."""

    started_at: float = field(default_factory=time.time)  # wall clock, informational
    last_pass_at: float = 0.0  # wall clock, informational
    passes: int = 0
    applied_revision: str | None = None  # the revision whose manifest is acted on
    attempted_revision: str | None = None  # the tip, whose manifest was tried
    manifest_error: str | None = None
    manifest_error_commit: str | None = None  # the last commit that touched it
    last_error: str | None = None
    actions: int = 0
    lost_races: int = 0
    workers: dict[str, float] = field(default_factory=dict)  # name -> s since a new beat
    orphans: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # illegal commits seen (hook-less)
    refused: list[dict[str, Any]] = field(default_factory=list)  # actions the hook refused

    def as_dict(self) -> dict[str, Any]:
        """Bounded by construction, whatever the ledger's size: the hook refuses a
        beat over 64 KiB, and a refused beat loses the whole report."""
        return bounded_report(dict(self.__dict__))


def bounded_report(report: dict[str, Any]) -> dict[str, Any]:
    """Lists become a count plus a capped sample, strings a capped prefix."""
    out = dict(report)
    out["orphans_count"] = len(report["orphans"])
    out["orphans"] = list(report["orphans"][:REPORT_SAMPLE])
    workers = report["workers"]
    out["workers_count"] = len(workers)
    if len(workers) > REPORT_WORKERS:
        out["workers"] = dict(sorted(workers.items(), key=lambda kv: kv[1])[:REPORT_WORKERS])
    out["findings"] = [clip_json(f, REPORT_TEXT) for f in report["findings"][-REPORT_SAMPLE:]]
    for key in ("manifest_error", "last_error"):
        if isinstance(report.get(key), str):
            out[key] = clip_json(report[key], REPORT_TEXT * 4)
    return out


def clip_json(text: str, limit: int) -> str:
    """`text` cut so that its JSON encoding (escapes included) fits `limit` bytes."""
    if len(json.dumps(text)) <= limit:
        return text
    lo, hi = 0, min(len(text), limit)
    while lo < hi:  # the longest prefix that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(json.dumps(text[:mid] + " [cut]")) <= limit else (lo, mid - 1)
    return text[:lo] + " [cut]"
