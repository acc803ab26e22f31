"""`reconciler run --metrics-file PATH`: a Prometheus text file for
node_exporter's textfile collector, rewritten atomically after every pass.

Gauges come from the pass's snapshot (jobs by status, counted exactly as
`reconciler status` counts them) and the reconciler's report (live workers,
manifest applied). Claims, completions, failures and sweeps are counters read
from main's history (reconciler/cli/timeline.py): the totals since the ledger was
created, so they never go down, not even across a restart of the daemon.
Lost races and passes count from the daemon's start, as Prometheus counters
may.

Written by hand (a dozen lines of a simple format) rather than with
prometheus_client, which the Pi would then need; the tests read the file with
prometheus_client's own parser.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.cli.timeline import Timeline
from reconciler.protocol.state import Status

if TYPE_CHECKING:
    from reconciler.daemon.loop import Reconciler
    from reconciler.git.snapshot import Snapshot


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(name: str, kind: str, help_text: str,
            samples: Iterable[tuple[dict[str, str], float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        label = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        text = str(int(value)) if float(value).is_integer() else repr(float(value))
        lines.append(f"{name}{{{label}}} {text}" if label else f"{name} {text}")
    return lines


def render(reconciler: Reconciler, snap: Snapshot, timeline: Timeline,
           now: float | None = None) -> str:
    """The text exposition format for one pass."""
    now = time.time() if now is None else now
    report = reconciler.report
    manifest = reconciler.manifest
    counts = Counter(s.status.value for s in snap.states.values())
    stale = manifest.fleet.stale_after_s if manifest else 600.0
    retired = {n for n, h in manifest.manifest.hosts.items() if h.retired} if manifest else set()
    live = [w for w, age in report.workers.items() if age < stale and w not in retired]
    outcomes = Counter(a.outcome for a in timeline.attempts.values())
    applied = int(report.manifest_error is None and manifest is not None)
    out: list[str] = []
    out += _family("trainledger_ledger_info", "gauge",
                   "The revision this file describes (always 1).",
                   [({"revision": snap.revision,
                      "fleet": manifest.manifest.name if manifest else ""}, 1)])
    out += _family("trainledger_jobs", "gauge", "Jobs by status (as `reconciler status`).",
                   [({"status": s.value}, counts.get(s.value, 0)) for s in Status])
    out += _family("trainledger_workers_live", "gauge",
                   "Workers whose heartbeat changed within stale_after_s.", [({}, len(live))])
    out += _family("trainledger_workers_seen", "gauge",
                   "Workers the reconciler has seen a heartbeat of (retired left out).",
                   [({}, len([w for w in report.workers if w not in retired]))])
    out += _family("trainledger_last_pass_timestamp_seconds", "gauge",
                   "Wall-clock time of the last pass.", [({}, report.last_pass_at)])
    out += _family("trainledger_seconds_since_last_pass", "gauge",
                   "Seconds from the last pass to this file's writing (alert on "
                   "time() - trainledger_last_pass_timestamp_seconds).",
                   [({}, round(max(0.0, now - report.last_pass_at), 3))])
    out += _family("trainledger_manifest_applied", "gauge",
                   "1 when the tip's manifest is valid and applied, else 0.", [({}, applied)])
    out += _family("trainledger_passes_total", "counter", "Passes since the daemon started.",
                   [({}, report.passes)])
    out += _family("trainledger_lost_races_total", "counter",
                   "Pushes the reconciler lost to a concurrent writer since it started.",
                   [({}, report.lost_races)])
    out += _family("trainledger_claims_total", "counter", "Claims in main's history.",
                   [({}, len(timeline.attempts))])
    out += _family("trainledger_completions_total", "counter",
                   "Attempts that completed, in main's history.",
                   [({}, outcomes.get("completed", 0))])
    out += _family("trainledger_failures_total", "counter",
                   "Attempts that failed, in main's history.", [({}, outcomes.get("failed", 0))])
    out += _family("trainledger_sweeps_total", "counter",
                   "Claims the reconciler took back from a lost worker (lease sweeps).",
                   [({}, outcomes.get("swept", 0))])
    return "\n".join(out) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write beside the target, fsync, rename: the collector never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsFile:
    """The after-pass hook: keeps the timeline read so far (cached in the
    state dir) and rewrites the file."""

    def __init__(self, path: Path, cache: Path | None = None) -> None:
        self.path = path
        self.cache = cache
        self.timeline = Timeline.load(cache) if cache is not None else Timeline()

    def __call__(self, reconciler: Reconciler, snap: Snapshot) -> None:
        before = self.timeline.revision
        self.timeline.update(reconciler.ledger.repo, snap.revision)
        if self.cache is not None and self.timeline.revision != before:
            self.timeline.save(self.cache)
        write_atomic(self.path, render(reconciler, snap, self.timeline))
