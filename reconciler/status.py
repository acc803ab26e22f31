"""`reconciler status`: jobs by status, workers, the last reconcile and errors.

It reads only the ledger (main and the heartbeat refs), so it answers from any
clone with no daemon running; the reconciler's own heartbeat adds what the
daemon saw. The `--json` shape is a contract (DESIGN.md). A fresh process
starts from the parse it saved last time, so it parses only what changed
(under a second on 10,000 jobs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconciler.cli import add_ledger_arg, state_dir_default
from reconciler.eligibility import fleet_reasons
from reconciler.errors import LedgerError
from reconciler.ledger import HeartbeatRecord, Ledger, Snapshot
from reconciler.manifest import LoadedManifest
from reconciler.state import Status

ORDER = [s.value for s in Status]
DEFAULT_STALE_S = 600.0


def cache_for(url: str, role: str) -> Path:
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return state_dir_default(role) / f"cache-{digest}.git"


@contextmanager
def cached_ledger(url: str, role: str, identity: str | None = None) -> Iterator[Ledger]:
    """A Ledger on this role's cache that starts from the parse saved by the last
    command (bench P4: re-parsing 10,000 state files took seconds) and saves its
    own when it has read a newer revision."""
    cache = cache_for(url, role)
    parsed = cache.with_name(cache.name + ".parsed")
    ledger = Ledger(url, cache, identity or role)
    try:
        saved_at = ledger.load_parsed(parsed)
        yield ledger
        if ledger.parsed_revision not in (None, saved_at):
            ledger.save_parsed(parsed)
    finally:
        ledger.close()


def reconciler_report(beats: Mapping[str, HeartbeatRecord]) -> dict[str, Any] | None:
    rec = beats.get("reconciler")
    return rec.beat.report if rec and rec.beat else None


def worker_rows(beats: Mapping[str, HeartbeatRecord], report: dict[str, Any] | None,
                stale_s: float, now: float) -> list[dict[str, Any]]:
    """One row per worker heartbeat ref. Liveness on one clock: the reconciler's,
    as of its last pass (plus the time since that pass), when one reports; the
    heartbeat's own commit time (the worker's clock) only without it."""
    judged = (report or {}).get("workers") or {}
    since_pass = max(0.0, now - float((report or {}).get("last_pass_at") or now))
    rows = []
    for name, rec in sorted(beats.items()):
        if name == "reconciler":
            continue
        seen = float(judged[name]) + since_pass if name in judged \
            else max(0.0, now - rec.commit_time)
        beat = rec.beat
        cap = beat.capability if beat else None
        rows.append({
            "name": name, "last_seen_s": round(seen, 1), "live": seen < stale_s,
            "jobs": [j.job_id for j in beat.jobs] if beat else [],
            "held": [{"job_id": j.job_id, "attempt": j.attempt, "progress": j.progress,
                      "last_line": j.last_line} for j in beat.jobs] if beat else [],
            "cpu_cores": cap.cpu_cores if cap else None,
            "ram_total_gib": cap.ram_total_gib if cap else None,
            "ram_available_gib": cap.ram_available_gib if cap else None,
            "gpus": [{"name": d.name, "vram_total_gib": d.vram_total_gib,
                      "vram_free_gib": d.vram_free_gib} for d in cap.cuda_devices] if cap else [],
            "error": rec.error,
        })
    return rows


def job_rows(snap: Snapshot, workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per state file, in manifest order (orphans last)."""
    specs = snap.manifest.specs if snap.manifest else {}
    held = {(h["job_id"], h["attempt"], w["name"]): (h, w["last_seen_s"])
            for w in workers for h in w["held"]}
    far = 1 << 30
    order = {job_id: i for i, job_id in enumerate(specs)}
    rows = []
    for job_id, state in sorted(snap.states.items(), key=lambda kv: (order.get(kv[0], far),
                                                                      kv[0])):
        spec = specs.get(job_id)
        beat, seen = held.get((job_id, state.attempt, state.holder or ""), (None, None))
        rows.append({
            "job_id": job_id, "name": state.name, "model": spec.model if spec else None,
            "status": state.status.value, "attempt": state.attempt, "holder": state.holder,
            "artifact": ({"sha256": state.artifact.sha256, "size": state.artifact.size}
                         if state.artifact else None),
            "last_error": state.last_error, "lost": state.lost, "cpu_ok": state.cpu_ok,
            "progress": beat["progress"] if beat else None,
            "last_line": beat["last_line"] if beat else None,
            "last_seen_s": seen, "orphan": spec is None,
        })
    return rows


def unschedulable(snap: Snapshot, loaded: LoadedManifest | None,
                  workers: list[dict[str, Any]], beats: Mapping[str, HeartbeatRecord]
                  ) -> list[dict[str, Any]]:
    """Pending jobs no live worker can take, with the reasons (eligibility.py)."""
    if loaded is None:
        return []
    live = {}
    for w in workers:
        beat = beats[w["name"]].beat
        if w["live"] and beat is not None and beat.capability is not None:
            live[w["name"]] = (loaded.manifest.hosts.get(w["name"]), beat.capability)
    out = []
    for job_id, spec in loaded.specs.items():
        state = snap.states.get(job_id)
        if state is not None and state.status is Status.PENDING:
            why = fleet_reasons(spec, state, live)
            if why:
                out.append({"job_id": job_id, "name": state.name, "reasons": why})
    return out


def collect(snap: Snapshot, beats: Mapping[str, HeartbeatRecord], now: float) -> dict[str, Any]:
    """The status document, from one snapshot and the heartbeat refs."""
    loaded = snap.manifest
    stale = loaded.fleet.stale_after_s if loaded else DEFAULT_STALE_S
    report = reconciler_report(beats)
    workers = worker_rows(beats, report, stale, now)
    jobs = job_rows(snap, workers)
    counts = dict.fromkeys(ORDER, 0)
    for job in jobs:
        counts[job["status"]] += 1
    rec = beats.get("reconciler")
    return {
        "revision": snap.revision,
        "manifest_error": snap.manifest_error,
        "counts": counts,
        "jobs": jobs,
        "workers": workers,
        "unschedulable": unschedulable(snap, loaded, workers, beats),
        "state_errors": snap.state_errors,
        "stray_paths": list(snap.stray_paths),
        "reconciler": None if rec is None else {
            "last_seen_s": round(max(0.0, now - rec.commit_time), 1), "report": report},
    }


def _short(rev: str | None) -> str:
    return (rev or "-")[:12]


def render_reconciler(rec: dict[str, Any] | None) -> list[str]:
    if rec is None:
        return ["reconciler: never seen (is `reconciler run` going?)"]
    report = rec["report"] or {}
    lines = [f"reconciler: last beat {rec['last_seen_s']:.0f}s ago, "
             f"{report.get('passes', 0)} passes, manifest applied at "
             f"{_short(report.get('applied_revision'))}, attempted at "
             f"{_short(report.get('attempted_revision'))}"]
    if report.get("manifest_error"):
        lines.append(f"  acting on the last valid manifest; the error came with commit "
                     f"{_short(report.get('manifest_error_commit'))}: "
                     f"{report['manifest_error'].splitlines()[0]}")
    if report.get("last_error"):
        lines.append(f"  last error: {report['last_error']}")
    lines += [f"  illegal commit: {f}" for f in report.get("findings") or []]
    if report.get("orphans"):
        count = report.get("orphans_count", len(report["orphans"]))
        lines.append(f"  {count} job(s) no longer in the manifest (orphans)")
    return lines


def render(doc: dict[str, Any]) -> str:
    lines = [f"ledger at {doc['revision'][:12]}: " + ", ".join(
        f"{n} {s}" for s, n in doc["counts"].items() if n)]
    if doc["manifest_error"]:
        lines.append(f"MANIFEST ERROR: {doc['manifest_error']}")
    lines += render_reconciler(doc["reconciler"])
    lines += ["", f"{'JOB':<26} {'ID':<9} {'STATUS':<10} {'ATT':>3} {'HOLDER':<14} "
                  f"{'SEEN':>5} {'PROGRESS':>8} {'ARTIFACT':<12} ERROR"]
    for j in doc["jobs"]:
        prog = f"{j['progress']:.0%}" if j["progress"] is not None else ""
        seen = f"{j['last_seen_s']:.0f}s" if j["last_seen_s"] is not None else ""
        art = j["artifact"]["sha256"][:12] if j["artifact"] else ""
        err = (j["last_error"] or "").splitlines()[0][:60] if j["last_error"] else ""
        name = j["name"] + (" (orphan)" if j["orphan"] else "")
        lines.append(f"{name:<26} {j['job_id'][:8]:<9} {j['status']:<10} {j['attempt']:>3} "
                     f"{j['holder'] or '':<14} {seen:>5} {prog:>8} {art:<12} {err}")
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
    for path, error in doc["state_errors"].items():
        lines.append(f"unreadable state file {path}: {error}")
    return "\n".join(lines)


def read_status(url: str) -> dict[str, Any]:
    """Fetch, snapshot (from the parse saved last time) and collect."""
    with cached_ledger(url, "status") as ledger:
        tip = ledger.fetch(heartbeats=True)
        if tip is None:
            raise LedgerError(f"{url}: the ledger has no main branch (run `reconciler init`)")
        snap = ledger.snapshot(tip)
        return collect(snap, ledger.heartbeats(), time.time())


def cmd_status(args: argparse.Namespace) -> int:
    while True:
        doc = read_status(args.ledger)
        if args.json:  # indented for a person, compact (and ~10x faster) for a script
            text = json.dumps(doc, sort_keys=True, indent=2 if sys.stdout.isatty() else None)
        else:
            text = render(doc)
        if args.watch:
            sys.stdout.write("\x1b[2J\x1b[H" if sys.stdout.isatty() else "\n")
        try:
            print(text, flush=True)
        except BrokenPipeError:  # `reconciler status | head`
            sys.stderr.close()
            return 0
        if not args.watch:
            return 0
        time.sleep(args.watch)


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    add_ledger_arg(parser)
    parser.add_argument("--json", action="store_true", help="the stable JSON document")
    parser.add_argument("--watch", type=float, metavar="S", help="refresh every S seconds")
    parser.set_defaults(func=cmd_status)
