"""`reconciler results [--sort KEY] [--model M] [--json]`: the leaderboard.

One row per completed job with its hyper (from the manifest in force) and the
metrics its trainer wrote (recorded in the completed state by the worker), so
comparing runs needs no bundle. Reads only the ledger, like `status`.

Sorting: `--sort KEY` orders by that metric (or, when no row has such a
metric, that hyper key), ascending; `--desc` reverses. Rows without the key
go last in either order; numbers sort before strings. The text output is
tab-separated, ready to paste into a spreadsheet.
"""

from __future__ import annotations

import argparse
from typing import Any

from reconciler.cli.main import add_ledger_arg
from reconciler.cli.util import json_text
from reconciler.git.snapshot import Snapshot
from reconciler.protocol.errors import LedgerError
from reconciler.protocol.state import Status


def rows_of(snap: Snapshot, model: str | None = None) -> list[dict[str, Any]]:
    """Completed jobs, in manifest order (jobs no longer in it last)."""
    specs = snap.manifest.specs if snap.manifest else {}
    far = 1 << 30
    order = {job_id: i for i, job_id in enumerate(specs)}
    rows = []
    for job_id, state in sorted(snap.states.items(),
                                key=lambda kv: (order.get(kv[0], far), kv[0])):
        if state.status is not Status.COMPLETED:
            continue
        spec = specs.get(job_id)
        if model is not None and (spec is None or spec.model != model):
            continue
        rows.append({
            "job_id": job_id, "name": state.name, "model": spec.model if spec else None,
            "attempt": state.attempt, "hyper": dict(spec.hyper) if spec else {},
            "seed": spec.seed if spec else None,
            "metrics": dict(state.metrics or {}), "metrics_error": state.metrics_error,
            "artifact": ({"sha256": state.artifact.sha256, "size": state.artifact.size}
                         if state.artifact else None),
            "orphan": spec is None,
        })
    return rows


def sort_rows(rows: list[dict[str, Any]], key: str | None, desc: bool = False
              ) -> list[dict[str, Any]]:
    if key is None:
        return rows
    where = "metrics" if any(key in r["metrics"] for r in rows) or \
        not any(key in r["hyper"] for r in rows) else "hyper"

    def value(row: dict[str, Any]) -> tuple[int, Any]:
        v = row[where].get(key)
        if isinstance(v, bool):
            v = int(v)
        return (0, v) if isinstance(v, int | float) else (1, str(v))

    present = [r for r in rows if key in r[where]]
    missing = [r for r in rows if key not in r[where]]
    return sorted(present, key=value, reverse=desc) + missing


def render(rows: list[dict[str, Any]]) -> str:
    hyper_keys = sorted({k for r in rows for k in r["hyper"]})
    metric_keys = sorted({k for r in rows for k in r["metrics"]})
    head = ["job", "model", *hyper_keys, *metric_keys, "id"]
    lines = ["\t".join(head)]
    for r in rows:
        cells = [r["name"], r["model"] or "-"]
        cells += [_cell(r["hyper"].get(k)) for k in hyper_keys]
        cells += [_cell(r["metrics"].get(k)) for k in metric_keys]
        cells.append(r["job_id"][:8])
        lines.append("\t".join(cells))
    notes = [f"{r['name']}: {r['metrics_error']}" for r in rows if r["metrics_error"]]
    return "\n".join(lines + [f"# {n}" for n in notes])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("\t", " ")


def cmd_results(args: argparse.Namespace) -> int:
    from reconciler.cli.status import cached_ledger

    with cached_ledger(args.ledger, "status") as ledger:
        tip = ledger.fetch()
        if tip is None:
            raise LedgerError(f"{args.ledger}: the ledger has no main branch")
        snap = ledger.snapshot(tip)
    rows = sort_rows(rows_of(snap, args.model), args.sort, args.desc)
    if args.json:
        print(json_text({"revision": snap.revision, "sort": args.sort, "desc": args.desc,
                         "rows": rows}))
    else:
        print(render(rows))
    return 0


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    add_ledger_arg(parser)
    parser.add_argument("--sort", metavar="KEY", help="a metric (or hyper) key, ascending")
    parser.add_argument("--desc", action="store_true", help="sort descending")
    parser.add_argument("--model", metavar="M", help="only this model's jobs")
    parser.add_argument("--json", action="store_true", help="the stable JSON document")
    parser.set_defaults(func=cmd_results)
