"""`reconciler health [--json]`: one verdict a monitor can call (Nagios-style
exit codes) with the reasons it shows.

- 0 healthy: the reconciler beat within `stale_after_s` and its manifest applies.
- 1 degraded: the tip's manifest is invalid (the fleet runs on the last valid
  one), the reconciler's last pass failed, a worker is lost (not live, not
  drained, not retired), or a state file is unreadable.
- 2 down: the reconciler has not beaten for `stale_after_s` (or never has), or
  the ledger cannot be read at all.

The reconciler's age is its heartbeat commit's time (the Pi's clock) against
this host's clock; run it on the Pi, or keep the clocks in NTP.
"""

from __future__ import annotations

import argparse
from typing import Any

from reconciler.cli.main import add_ledger_arg
from reconciler.cli.util import json_text
from reconciler.protocol.errors import LedgerError

HEALTHY, DEGRADED, DOWN = 0, 1, 2
VERDICTS = {HEALTHY: "healthy", DEGRADED: "degraded", DOWN: "down"}


def judge(doc: dict[str, Any]) -> dict[str, Any]:
    """The verdict on one status document: {status, exit, reasons, ...}."""
    stale = float(doc.get("stale_after_s") or 600.0)
    down: list[str] = []
    degraded: list[str] = []
    rec = doc.get("reconciler")
    report = (rec or {}).get("report") or {}
    if rec is None:
        down.append("the reconciler has never sent a heartbeat (is `reconciler run` going?)")
    elif rec["last_seen_s"] >= stale:
        down.append(f"the reconciler's last heartbeat was {rec['last_seen_s']:.0f}s ago "
                    f"(stale_after_s is {stale:g})")
    if doc.get("manifest_error"):
        degraded.append("manifest error at the tip (acting on the last valid one): "
                        + doc["manifest_error"].splitlines()[0])
    elif report.get("manifest_error"):
        degraded.append("the reconciler has not applied the manifest: "
                        + report["manifest_error"].splitlines()[0])
    if report.get("last_error"):
        degraded.append(f"the reconciler's last pass failed: {report['last_error']}")
    lost = [w["name"] for w in doc["workers"] if not w["live"] and w.get("drain") != "drained"]
    for w in doc["workers"]:
        if w["name"] in lost:
            degraded.append(f"worker {w['name']} lost: last heartbeat {w['last_seen_s']:.0f}s "
                            f"ago (retire it with `retired = true` under [hosts.{w['name']}])")
    for path, error in (doc.get("state_errors") or {}).items():
        degraded.append(f"unreadable state file {path}: {error}")
    code = DOWN if down else DEGRADED if degraded else HEALTHY
    return {"status": VERDICTS[code], "exit": code, "reasons": down + degraded,
            "revision": doc.get("revision"),
            "reconciler_last_seen_s": rec["last_seen_s"] if rec else None,
            "stale_after_s": stale,
            "workers_live": sum(1 for w in doc["workers"] if w["live"]),
            "workers_lost": lost, "counts": doc.get("counts")}


def cmd_health(args: argparse.Namespace) -> int:
    from reconciler.cli.status import read_status

    try:
        verdict = judge(read_status(args.ledger, role="health"))
    except LedgerError as exc:
        verdict = {"status": "down", "exit": DOWN, "revision": None,
                   "reasons": [f"the ledger cannot be read: {str(exc).splitlines()[0]}"]}
    if args.json:
        print(json_text(verdict))
    else:
        live = verdict.get("workers_live")
        tail = f" ({live} worker(s) live)" if live is not None else ""
        print(f"{verdict['status'].upper()}{tail}")
        for reason in verdict["reasons"]:
            print(f"  {reason}")
    return int(verdict["exit"])


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    add_ledger_arg(parser)
    parser.add_argument("--json", action="store_true",
                        help="{status, exit, reasons, ...} for a monitor")
    parser.set_defaults(func=cmd_health)
    parser.description = ("exit 0 healthy, 1 degraded, 2 reconciler down; the text says why")
