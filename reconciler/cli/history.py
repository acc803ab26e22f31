"""`reconciler show JOB` and `reconciler log [JOB]`: the audit trail from trailers."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from reconciler.cli.jobref import resolve_job
from reconciler.cli.main import add_ledger_arg
from reconciler.cli.status import cached_ledger
from reconciler.git.ledger import CACHED_MAIN, Ledger
from reconciler.protocol import trailers


def history(ledger: Ledger, path: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Commits on main (touching `path`), newest first, one row per job change
    (only that job's rows when `path` is a state file)."""
    args = ["log", f"-n{limit}", "--format=%H%x00%an%x00%at%x00%s%x00%B%x01", CACHED_MAIN]
    raw = ledger.repo.git(*args, *(["--", path] if path else [])).stdout.decode("utf-8",
                                                                              "replace")
    rows = []
    for record in raw.split("\x01"):
        if not record.strip():
            continue
        sha, author, when, subject, body = record.strip("\n").split("\x00", 4)
        stamp = datetime.fromtimestamp(int(when), UTC).strftime("%Y-%m-%d %H:%M:%S")
        changes = trailers.changes_of(body)
        actor = trailers.parse(body).get(trailers.ACTOR, [author])[-1]
        if path and path.startswith("state/"):
            job_id = path.rsplit("/", 1)[-1].removesuffix(".json")
            changes = [c for c in changes if c[0] == job_id] or [(job_id, None, None)]
        for job, attempt, transition in changes or [(None, None, None)]:
            rows.append({"commit": sha, "when": stamp, "actor": actor, "author": author,
                         "job_id": job, "attempt": attempt, "transition": transition,
                         "subject": subject})
    return rows


def cmd_log(args: argparse.Namespace) -> int:
    with cached_ledger(args.ledger, "status") as ledger:
        ledger.fetch()
        path = None
        if args.job:
            snap = ledger.snapshot()
            names = {i: s.name for i, s in (snap.manifest.specs.items() if snap.manifest else [])}
            path = resolve_job(snap.states, names, args.job).path
        rows = history(ledger, path, args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        job = (r["job_id"] or "-")[:8]
        print(f"{r['when']}  {r['commit'][:8]}  {r['actor']:<12} {job:<8} "
              f"{r['transition'] or '':<20} {r['subject']}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with cached_ledger(args.ledger, "status") as ledger:
        ledger.fetch()
        snap = ledger.snapshot()
        specs = snap.manifest.specs if snap.manifest else {}
        state = resolve_job(snap.states, {i: s.name for i, s in specs.items()}, args.job)
        spec = specs.get(state.job_id)
        doc = {"state": state.model_dump(),
               "spec": {**spec.to_json(), "command": list(spec.command),
                        "require_cuda": spec.require_cuda, "prefer_cuda": spec.prefer_cuda,
                        "min_vram_gib": spec.min_vram_gib, "min_ram_gib": spec.min_ram_gib}
               if spec else None,
               "history": history(ledger, state.path)}
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print(json.dumps({"spec": doc["spec"], "state": doc["state"]}, indent=2, sort_keys=True))
    print("\nhistory (newest first):")
    for r in doc["history"]:
        print(f"  {r['when']}  {r['commit'][:8]}  {r['actor']:<12} "
              f"{r['transition'] or '':<20} {r['subject']}")
    return 0


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "show":
        parser.add_argument("job", help="job id, unique id prefix, or name")
        parser.set_defaults(func=cmd_show)
    else:
        parser.add_argument("job", nargs="?", help="only this job")
        from reconciler.cli.util import positive_int

        parser.add_argument("--limit", type=positive_int, default=200,
                            help="at most this many commits (default 200)")
        parser.set_defaults(func=cmd_log)
    add_ledger_arg(parser)
    parser.add_argument("--json", action="store_true")
