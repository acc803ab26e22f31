"""`reconciler run`: the daemon's command line (reconciler/daemon/loop.py is the loop).

Kept apart from the loop so the daemon imports nothing of the CLI: the loop
takes a ledger port, a clock and a wait, and this module builds the real ones.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from reconciler.cli.main import add_ledger_arg, state_dir_default
from reconciler.daemon.loop import Dirty, Reconciler, run
from reconciler.git.ledger import Ledger

log = logging.getLogger("trainledger.reconciler")


def cmd_run(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir or state_dir_default("reconciler"))
    state_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(args.ledger, state_dir / "ledger.git", args.identity)
    parsed = state_dir / "ledger.parsed"  # a restart (or --once) parses only what changed
    ledger.load_parsed(parsed)
    stop, dirty = threading.Event(), Dirty()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("event=shutdown signal=%s", signal.Signals(signum).name)
        stop.set()
        dirty.mark()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    log.info("event=reconciler-start ledger=%s state_dir=%s pid=%s", args.ledger, state_dir,
             os.getpid())
    reconciler = Reconciler(ledger)
    if args.metrics_file:
        from reconciler.cli.metrics import MetricsFile

        reconciler.after_pass.append(MetricsFile(args.metrics_file,
                                                 state_dir / "metrics-timeline.json"))
    if args.report_dir:
        from reconciler.cli.report import ReportDir

        reconciler.after_pass.append(ReportDir(args.report_dir,
                                               state_dir / "report-timeline.json"))
    try:
        return run(reconciler, once=args.once, tick_s=args.tick_s, stop=stop, dirty=dirty)
    finally:
        try:
            ledger.save_parsed(parsed)
        except OSError as exc:
            log.warning("event=parse-cache-not-saved error=%s", exc)
        ledger.close()


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    add_ledger_arg(parser)
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument("--state-dir", type=Path, help="the reconciler's cache dir")
    from reconciler.cli.util import positive_float

    parser.add_argument("--tick-s", type=positive_float, help="seconds between timed passes")
    parser.add_argument("--metrics-file", type=Path, metavar="PATH",
                        help="Prometheus text file (node_exporter textfile collector), "
                             "rewritten atomically after every pass")
    parser.add_argument("--report-dir", type=Path, metavar="DIR",
                        help="rewrite DIR/index.html (`reconciler report`) after each pass "
                             "that changed the ledger, and at least once a minute")
    parser.add_argument("--identity", default="reconciler", help="the reconciler's identity")
    parser.set_defaults(func=cmd_run)
