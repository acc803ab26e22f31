"""`reconciler workers [--json]`: the fleet as `kubectl get nodes` shows it: each
worker's last beat, whether it is live, draining or drained, the jobs it runs,
what it has and what is free. Read from the heartbeat refs, like `status`."""

from __future__ import annotations

import argparse
from typing import Any

from reconciler.cli.main import add_ledger_arg
from reconciler.cli.util import json_text


def worker_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """`--json`: {"workers": [...], "retired": [...], "stale_after_s": S}; each
    worker row is status's (same keys) plus the names of the jobs it holds."""
    names = {j["job_id"]: j["name"] for j in doc["jobs"]}
    rows = [{**w, "job_names": [names.get(j, j) for j in w["jobs"]]} for w in doc["workers"]]
    return {"workers": rows, "retired": doc.get("retired_workers", []),
            "stale_after_s": doc.get("stale_after_s")}


def render(out: dict[str, Any]) -> str:
    from reconciler.cli.status import worker_table

    lines = worker_table(out["workers"])
    for w in out["workers"]:
        if w["job_names"]:
            lines.append(f"  {w['name']} runs: {', '.join(w['job_names'])}")
        if w["error"]:
            lines.append(f"  {w['name']}: {w['error']}")
    if out["retired"]:
        lines.append(f"retired (hidden): {', '.join(out['retired'])}")
    if not out["workers"]:
        lines.append("no worker has sent a heartbeat yet")
    return "\n".join(lines)


def cmd_workers(args: argparse.Namespace) -> int:
    from reconciler.cli.status import read_status

    out = worker_doc(read_status(args.ledger))
    if args.json:
        print(json_text(out))
    else:
        print(render(out))
    return 0


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    add_ledger_arg(parser)
    parser.add_argument("--json", action="store_true", help="the stable JSON document")
    parser.set_defaults(func=cmd_workers)
