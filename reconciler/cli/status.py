"""`reconciler status`: jobs by status, workers, the last reconcile and errors.

It reads only the ledger (main and the heartbeat refs), so it answers from any
clone with no daemon running; the reconciler's own heartbeat adds what the
daemon saw. The `--json` shape is a contract (docs/reconciler.md). A fresh process
starts from the parse it saved last time, so it parses only what changed
(under a second on 10,000 jobs).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconciler.cli.main import add_ledger_arg, state_dir_default
from reconciler.cli.timeline import Timeline, read_timeline
from reconciler.cli.util import json_text
from reconciler.git.ledger import Ledger
from reconciler.git.snapshot import HeartbeatRecord, Snapshot
from reconciler.protocol.eligibility import fleet_reasons
from reconciler.protocol.errors import LedgerError
from reconciler.protocol.manifest import LoadedManifest
from reconciler.protocol.state import Status
from reconciler.protocol.upstream import upstream_reasons

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
                stale_s: float, now: float, loaded: LoadedManifest | None = None
                ) -> list[dict[str, Any]]:
    """One row per worker heartbeat ref, leaving out hosts the manifest retires.
    Liveness on one clock: the reconciler's, as of its last pass (plus the time
    since that pass), when one reports; the heartbeat's own commit time (the
    worker's clock) only without it. `drain` is "draining" while a host with
    `drain = true` still runs jobs, "drained" once it runs none."""
    judged = (report or {}).get("workers") or {}
    hosts = loaded.manifest.hosts if loaded else {}
    since_pass = max(0.0, now - float((report or {}).get("last_pass_at") or now))
    rows = []
    for name, rec in sorted(beats.items()):
        host = hosts.get(name)
        if name == "reconciler" or (host is not None and host.retired):
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
            "drain": None if host is None or not host.drain
            else ("draining" if beat and beat.jobs else "drained"),
        })
    return rows


def job_rows(snap: Snapshot, workers: list[dict[str, Any]], timeline: Timeline | None = None,
             now: float | None = None) -> list[dict[str, Any]]:
    """One row per state file, in manifest order (orphans last). Times (epoch
    seconds) are of the job's current attempt, from history: commit times, so
    each is the clock of whoever wrote that commit (reconciler/cli/timeline.py)."""
    last = timeline.last_by_job() if timeline is not None else {}
    now = time.time() if now is None else now
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
            "sweep": spec.sweep if spec else None,
            "status": state.status.value, "attempt": state.attempt, "holder": state.holder,
            "artifact": ({"sha256": state.artifact.sha256, "size": state.artifact.size}
                         if state.artifact else None),
            "last_error": state.last_error, "lost": state.lost, "cpu_ok": state.cpu_ok,
            "progress": beat["progress"] if beat else None,
            "last_line": beat["last_line"] if beat else None,
            "last_seen_s": seen, "orphan": spec is None,
            **_times(last.get(job_id), state.attempt, now),
            "failures": state.failures,
            "retries": spec.retries if spec else None,
            "checkpoint": ({"sha256": state.checkpoint.sha256, "size": state.checkpoint.size,
                            "attempt": state.checkpoint.attempt} if state.checkpoint else None),
            "after": list(spec.after_names) if spec else [],
            "upstream": upstream_reasons(spec, snap.states) if spec and spec.after else [],
        })
    return rows


def _times(att: Any, attempt: int, now: float) -> dict[str, Any]:
    """claimed/started/ended/elapsed of the job's current attempt (none before
    its first claim); last_host: who ran it last."""
    if att is None or att.attempt != attempt:
        return {"claimed_at": None, "started_at": None, "ended_at": None, "elapsed_s": None,
                "last_host": att.host if att is not None else None}
    elapsed = att.elapsed_s(now)
    return {"claimed_at": att.claimed_at, "started_at": att.started_at,
            "ended_at": att.ended_at,
            "elapsed_s": None if elapsed is None else round(elapsed, 1),
            "last_host": att.host}


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
            why = fleet_reasons(spec, state, live, snap.states)
            if why:
                out.append({"job_id": job_id, "name": state.name, "reasons": why})
    return out


def collect(snap: Snapshot, beats: Mapping[str, HeartbeatRecord], now: float,
            timeline: Timeline | None = None) -> dict[str, Any]:
    """The status document, from one snapshot, the heartbeat refs and (for the
    times) the timeline of main's history."""
    loaded = snap.manifest
    stale = loaded.fleet.stale_after_s if loaded else DEFAULT_STALE_S
    report = reconciler_report(beats)
    workers = worker_rows(beats, report, stale, now, loaded)
    jobs = job_rows(snap, workers, timeline, now)
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
        "retired_workers": sorted(n for n, h in (loaded.manifest.hosts.items() if loaded else [])
                                  if h.retired and n in beats),
        "stale_after_s": stale,
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
    lines += [f"  refused by the ledger: {r.get('action')} {r.get('job')} "
              f"({r.get('transition')}): {r.get('rule')}" for r in report.get("refused") or []]
    if report.get("orphans"):
        count = report.get("orphans_count", len(report["orphans"]))
        lines.append(f"  {count} job(s) no longer in the manifest (orphans)")
    return lines


def _stamp(epoch: float | None) -> str:
    return time.strftime("%m-%d %H:%M:%S", time.gmtime(epoch)) if epoch else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def job_table(jobs: list[dict[str, Any]], wide: bool = False) -> list[str]:
    """The jobs as columns sized to their content; -o wide adds the model, the
    three times (UTC) and the artifact."""
    from reconciler.cli.util import error_line, table

    head = ["JOB", "ID", "STATUS", "ATT", "HOST", "ELAPSED", "PROGRESS"]
    if wide:
        head += ["MODEL", "CLAIMED", "STARTED", "ENDED", "SEEN", "ARTIFACT"]
    head.append("ERROR")
    rows = []
    for j in jobs:
        row = [j["name"] + (" (orphan)" if j["orphan"] else ""), j["job_id"][:8], j["status"],
               str(j["attempt"]), j["holder"] or j.get("last_host") or "",
               _duration(j.get("elapsed_s")),
               f"{j['progress']:.0%}" if j["progress"] is not None else ""]
        if wide:
            row += [j["model"] or "", _stamp(j.get("claimed_at")), _stamp(j.get("started_at")),
                    _stamp(j.get("ended_at")),
                    f"{j['last_seen_s']:.0f}s" if j["last_seen_s"] is not None else "",
                    j["artifact"]["sha256"][:12] if j["artifact"] else ""]
        error = error_line(j["last_error"], 1000 if wide else 60)
        if j.get("failures"):
            error = f"[{j['failures']} failure(s)] {error}"
        if j.get("upstream") and j["status"] == "pending":
            error = "; ".join(j["upstream"])[:1000 if wide else 80]
        row.append(error)
        rows.append(row)
    return table(head, rows, right={"ATT", "ELAPSED", "PROGRESS", "SEEN"})


def worker_state(w: dict[str, Any]) -> str:
    state = "live" if w["live"] else "not live"
    return f"{state}, {w['drain']}" if w.get("drain") else state


def worker_table(workers: list[dict[str, Any]]) -> list[str]:
    from reconciler.cli.util import table

    rows = []
    for w in workers:
        gpus = ", ".join(f"{g['name']} {g['vram_free_gib']:.0f}/{g['vram_total_gib']:.0f}G"
                         for g in w["gpus"]) or "no GPU"
        ram = (f"{w['ram_available_gib']:.0f}/{w['ram_total_gib']:.0f}G"
               if w["ram_total_gib"] else "?")
        rows.append([w["name"], worker_state(w), f"{w['last_seen_s']:.0f}s",
                     str(w["cpu_cores"] or "?"), ram, str(len(w["jobs"])), gpus])
    return table(["WORKER", "STATE", "SEEN", "CORES", "RAM", "JOBS", "GPUS"], rows,
                 right={"SEEN", "CORES", "RAM", "JOBS"})


def render(doc: dict[str, Any], wide: bool = False) -> str:
    lines = [f"ledger at {doc['revision'][:12]}: " + ", ".join(
        f"{n} {s}" for s, n in doc["counts"].items() if n)]
    if doc["manifest_error"]:
        lines.append(f"MANIFEST ERROR: {doc['manifest_error']}")
    lines += render_reconciler(doc["reconciler"])
    lines += ["", *job_table(doc["jobs"], wide)]
    lines += ["", *worker_table(doc["workers"])]
    if doc.get("retired_workers"):
        lines.append(f"retired (hidden): {', '.join(doc['retired_workers'])}")
    if doc["unschedulable"]:
        lines += ["", "pending jobs no live worker can take:"]
        lines += [f"  {u['name']}: {'; '.join(u['reasons'])}" for u in doc["unschedulable"]]
    for path, error in doc["state_errors"].items():
        lines.append(f"unreadable state file {path}: {error}")
    return "\n".join(lines)


def read_status(url: str, role: str = "status") -> dict[str, Any]:
    """Fetch, snapshot (from the parse saved last time) and collect, with the
    times from the timeline (read incrementally, cached beside the clone).
    Each `role` has its own cache, so a monitor's `health` never waits on a
    person's `status --watch`."""
    with cached_ledger(url, role) as ledger:
        tip = ledger.fetch(heartbeats=True)
        if tip is None:
            raise LedgerError(f"{url}: the ledger has no main branch (run `reconciler init`)")
        snap = ledger.snapshot(tip)
        cache = cache_for(url, role)
        timeline = read_timeline(ledger.repo, snap.revision,
                                 cache.with_name(cache.name + ".timeline.json"))
        return collect(snap, ledger.heartbeats(), time.time(), timeline)


def select(doc: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The document with only the jobs (and workers) the selectors match;
    `counts` stays the whole ledger's, `selected` counts what is shown."""
    from reconciler.cli.selectors import has_selector, row_matches

    if not (has_selector(args) or args.names):
        return doc
    jobs = [j for j in doc["jobs"] if row_matches(j, args, args.names)]
    workers = doc["workers"]
    if args.worker:
        from fnmatch import fnmatchcase

        workers = [w for w in workers if any(fnmatchcase(w["name"], p) for p in args.worker)]
    return {**doc, "jobs": jobs, "workers": workers, "selected": len(jobs)}


def cmd_status(args: argparse.Namespace) -> int:
    first = True
    while True:
        doc = select(read_status(args.ledger), args)
        text = json_text(doc) if args.json else render(doc, wide=args.output == "wide")
        if args.watch and sys.stdout.isatty():
            sys.stdout.write("\x1b[2J\x1b[H")
        elif args.watch and not first:
            sys.stdout.write("\n")  # piped: frames apart, the first line is the first frame's
        first = False
        print(text, flush=True)  # a closed pipe (`| head`) ends quietly in cli.dispatch
        if not args.watch:
            return 0
        time.sleep(args.watch)


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    from reconciler.cli.selectors import add_selector_args
    from reconciler.cli.util import positive_float

    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="only jobs whose name matches (a glob) or whose id starts so")
    add_ledger_arg(parser)
    parser.add_argument("--json", action="store_true", help="the stable JSON document")
    parser.add_argument("--watch", type=positive_float, metavar="S",
                        help="refresh every S seconds")
    parser.add_argument("-o", "--output", choices=["wide"],
                        help="wide: also the model, claim/start/end times (UTC) and artifact")
    add_selector_args(parser)
    parser.set_defaults(func=cmd_status)
