"""`python -m bench [--quick] [--only P1,P4] [--keep]`: run the rows, print the
table, write results.json and (full runs) docs/performance.md."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.common import REPO_ROOT, Scratch, isolate_git, machine, scratch_root
from bench.report import DOCS, RESULTS, render_docs, table
from bench.rows import Config, RowResult


def _rows() -> dict[str, Callable[[Config], RowResult]]:
    from bench.bundle import run_p6
    from bench.claims import run_p1, run_p2
    from bench.cycle import run_p8, run_p9
    from bench.growth import run_p5
    from bench.idle import run_p7
    from bench.latency import run_p3
    from bench.scale import run_p4

    return {"P1": run_p1, "P2": run_p2, "P3": run_p3, "P4": run_p4, "P5": run_p5,
            "P6": run_p6, "P7": run_p7, "P8": run_p8, "P9": run_p9}


def run(cfg: Config, only: list[str]) -> list[RowResult]:
    results = []
    for rid, fn in _rows().items():
        if only and rid not in only:
            continue
        print(f"[bench] {rid} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            row = fn(cfg)
        except Exception as exc:  # a failed row is reported; the rest run
            row = RowResult(rid, f"{rid} (failed)", error=f"{type(exc).__name__}: {exc}\n"
                            + traceback.format_exc(limit=6))
        row.seconds = time.perf_counter() - start
        print(f"[bench] {rid} done in {row.seconds:.0f} s"
              + (f" (ERROR {row.error.splitlines()[0]})" if row.error else ""),
              file=sys.stderr, flush=True)
        results.append(row)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 2 minutes")
    parser.add_argument("--only", default="", help="comma-separated rows, e.g. P1,P4")
    parser.add_argument("--keep", action="store_true", help="keep the scratch ledgers")
    parser.add_argument("--scratch", type=Path, help="scratch dir (default bench/out/run-*)")
    parser.add_argument("--results", type=Path, help="where to write results.json")
    parser.add_argument("--docs", action="store_true",
                        help="write docs/performance.md even for --quick or --only runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root = scratch_root(args.scratch)
    isolate_git(root / "home")
    cfg = Config.for_mode(args.quick, Scratch(root, keep=args.keep))
    only = [s.strip().upper() for s in args.only.split(",") if s.strip()]
    start = time.perf_counter()
    rows = run(cfg, only)
    command = "python -m bench" + (" --quick" if args.quick else "") + (
        f" --only {','.join(only)}" if only else "")
    results = {
        "command": command, "quick": args.quick, "machine": machine(),
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": time.perf_counter() - start, "rows": [r.to_json() for r in rows],
    }
    full = not args.quick and not only
    out = args.results or (RESULTS if full else root / "results.json")
    out.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    print(table(results))
    print(f"\nwrote {out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out} "
          f"({results['seconds']:.0f} s)")
    if full or args.docs:
        DOCS.write_text(render_docs(results))
        print(f"wrote {DOCS.relative_to(REPO_ROOT)}")
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 1 if any(r.error for r in rows) else 0  # a miss is a finding, not a failure


if __name__ == "__main__":
    sys.exit(main())
