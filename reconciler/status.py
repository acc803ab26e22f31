"""`reconciler status`: jobs by status, workers, the last reconcile and errors.

It reads only the ledger (main and the heartbeat refs), so it answers from any
clone with no daemon running; the reconciler's own heartbeat adds what the
daemon saw. The `--json` shape is a contract (DESIGN.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from reconciler.cli import add_ledger_arg, state_dir_default
from reconciler.eligibility import fleet_reasons
from reconciler.ledger import HeartbeatRecord, Ledger, Snapshot
from reconciler.state import Status

ORDER = [s.value for s in Status]


def cache_for(url: str, role: str) -> Path:
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return state_dir_default(role) / f"cache-{digest}.git"


def collect(snap: Snapshot, beats: dict[str, HeartbeatRecord], now: float) -> dict[str, Any]:
    """The status document, from one snapshot and the heartbeat refs."""
    loaded = snap.manifest
    specs = loaded.specs if loaded else {}
    fleet = loaded.fleet if loaded else None
    stale = fleet.stale_after_s if fleet else 600.0
    progress: dict[str, tuple[float | None, str | None, float]] = {}
    workers, live = [], {}
    reconciler = beats.get("reconciler")
    report = reconciler.beat.report if reconciler and reconciler.beat else None
    # Liveness on one clock: the reconciler's, as of its last pass, when it runs;
    # a heartbeat's own commit time (the worker's clock) only without it.
    judged = (report or {}).get("workers") or {}
    for name, rec in sorted(beats.items()):
        if name == "reconciler":
            continue
        seen = float(judged[name]) if name in judged else max(0.0, now - rec.commit_time)
        beat = rec.beat
        cap = beat.capability if beat else None
        held = [j.job_id for j in beat.jobs] if beat else []
        for j in beat.jobs if beat else []:
            progress[j.job_id] = (j.progress, j.last_line, seen)
        workers.append({
            "name": name, "last_seen_s": round(seen, 1), "live": seen < stale, "jobs": held,
            "cpu_cores": cap.cpu_cores if cap else None,
            "ram_total_gib": cap.ram_total_gib if cap else None,
            "gpus": [{"name": d.name, "vram_total_gib": d.vram_total_gib,
                      "vram_free_gib": d.vram_free_gib} for d in cap.cuda_devices] if cap else [],
            "error": rec.error,
        })
        if cap is not None and seen < stale and loaded is not None:
            live[name] = (loaded.manifest.hosts.get(name), cap)
    jobs, unschedulable = [], []
    for job_id, state in sorted(snap.states.items(), key=lambda kv: _order(specs, kv[0])):
        spec = specs.get(job_id)
        prog = progress.get(job_id) if state.holder else None
        jobs.append({
            "job_id": job_id, "name": state.name, "model": spec.model if spec else None,
            "status": state.status.value, "attempt": state.attempt, "holder": state.holder,
            "artifact": ({"sha256": state.artifact.sha256, "size": state.artifact.size}
                         if state.artifact else None),
            "last_error": state.last_error, "lost": state.lost, "cpu_ok": state.cpu_ok,
            "progress": prog[0] if prog else None, "last_line": prog[1] if prog else None,
            "last_seen_s": round(prog[2], 1) if prog else None, "orphan": spec is None,
        })
        if spec is not None and state.status is Status.PENDING:
            why = fleet_reasons(spec, state, live)
            if why:
                unschedulable.append({"job_id": job_id, "name": state.name, "reasons": why})
    counts = {s: 0 for s in ORDER}
    for job in jobs:
        counts[job["status"]] += 1
    return {
        "revision": snap.revision,
        "manifest_error": snap.manifest_error,
        "counts": counts,
        "jobs": jobs,
        "workers": workers,
        "unschedulable": unschedulable,
        "state_errors": snap.state_errors,
        "stray_paths": list(snap.stray_paths),
        "reconciler": None if reconciler is None else {
            "last_seen_s": round(max(0.0, now - reconciler.commit_time), 1), "report": report},
    }


def _order(specs: dict, job_id: str) -> tuple[int, str]:
    spec = specs.get(job_id)
    return (spec.index if spec else 1 << 30, job_id)


def render(doc: dict[str, Any]) -> str:
    lines = [f"ledger at {doc['revision'][:12]}: " + ", ".join(
        f"{n} {s}" for s, n in doc["counts"].items() if n)]
    if doc["manifest_error"]:
        lines.append(f"MANIFEST ERROR: {doc['manifest_error']}")
    rec = doc["reconciler"]
    if rec is None:
        lines.append("reconciler: never seen (is `reconciler run` going?)")
    else:
        report = rec["report"] or {}
        lines.append(f"reconciler: last beat {rec['last_seen_s']:.0f}s ago, "
                     f"{report.get('passes', 0)} passes, applied manifest "
                     f"{(report.get('applied_revision') or '-')[:12]}")
        if report.get("manifest_error"):
            lines.append(f"  acting on the last valid manifest; error in commit "
                         f"{(report.get('manifest_error_commit') or '?')[:12]}: "
                         f"{report['manifest_error'].splitlines()[0]}")
        if report.get("last_error"):
            lines.append(f"  last error: {report['last_error']}")
    lines += ["", f"{'JOB':<26} {'ID':<9} {'STATUS':<10} {'ATT':>3} {'HOLDER':<14} "
                  f"{'PROGRESS':>8} {'ARTIFACT':<12} ERROR"]
    for j in doc["jobs"]:
        prog = f"{j['progress']:.0%}" if j["progress"] is not None else ""
        art = j["artifact"]["sha256"][:12] if j["artifact"] else ""
        err = (j["last_error"] or "").splitlines()[0][:60] if j["last_error"] else ""
        name = j["name"] + (" (orphan)" if j["orphan"] else "")
        lines.append(f"{name:<26} {j['job_id'][:8]:<9} {j['status']:<10} {j['attempt']:>3} "
                     f"{j['holder'] or '':<14} {prog:>8} {art:<12} {err}")
    lines += ["", f"{'WORKER':<16} {'SEEN':>6} {'CORES':>5} {'RAM':>7}  GPUS / JOBS"]
    for w in doc["workers"]:
        gpus = ", ".join(f"{g['name']} {g['vram_free_gib']:.0f}/{g['vram_total_gib']:.0f}G"
                         for g in w["gpus"]) or "no GPU"
        ram = f"{w['ram_total_gib']:.0f}G" if w["ram_total_gib"] else "?"
        lines.append(f"{w['name']:<16} {w['last_seen_s']:>5.0f}s {w['cpu_cores'] or '?':>5} "
                     f"{ram:>7}  {gpus}; {len(w['jobs'])} job(s)"
                     + ("" if w["live"] else "  [not live]"))
    if doc["unschedulable"]:
        lines += ["", "pending jobs no live worker can take:"]
        lines += [f"  {u['name']}: {'; '.join(u['reasons'])}" for u in doc["unschedulable"]]
    return "\n".join(lines)


def read_status(url: str, cache: Path | None = None) -> dict[str, Any]:
    ledger = Ledger(url, cache or cache_for(url, "status"), "status")
    try:
        tip = ledger.fetch(heartbeats=True)
        snap = ledger.snapshot(tip)
        return collect(snap, ledger.heartbeats(), time.time())
    finally:
        ledger.close()


def cmd_status(args: argparse.Namespace) -> int:
    while True:
        doc = read_status(args.ledger)
        text = json.dumps(doc, indent=2, sort_keys=True) if args.json else render(doc)
        if args.watch:
            sys.stdout.write("\x1b[2J\x1b[H" if sys.stdout.isatty() else "\n")
        print(text, flush=True)
        if not args.watch:
            return 0
        time.sleep(args.watch)


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    add_ledger_arg(parser)
    parser.add_argument("--json", action="store_true", help="the stable JSON document")
    parser.add_argument("--watch", type=float, metavar="S", help="refresh every S seconds")
    parser.set_defaults(func=cmd_status)
