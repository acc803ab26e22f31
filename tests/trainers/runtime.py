"""A trainer for the runtime tests (issue: metrics, logs, env, progress bars).

--mode metrics      writes metrics.json {loss: lr, acc: 1 - lr, seed} and exits 0
--mode bad-metrics  writes a metrics.json that is not JSON and exits 0
--mode env          writes metrics.json with the variables the tests pass or withhold
--mode tqdm         draws a tqdm-style bar with \\r up to 45%, then waits --seconds
--mode traceback    prints a few lines, then dies of a Python exception (exit 1)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

WATCHED = ("PASSED_ONE", "OTHER_FROM_FILE", "FROM_MANIFEST", "UNLISTED_SECRET")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="metrics")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seconds", type=float, default=0.1)
    args = parser.parse_args()
    out = Path(os.environ["TRAINLEDGER_OUTPUT_DIR"])
    spec = json.loads(Path(os.environ["TRAINLEDGER_SPEC"]).read_text())
    (out / "weights.bin").write_bytes(f"{spec['seed']}/{args.lr}".encode())
    if args.mode == "metrics":
        time.sleep(args.seconds)
        metrics = {"loss": args.lr, "acc": round(1 - args.lr, 6), "seed": spec["seed"]}
        (out / "metrics.json").write_text(json.dumps(metrics))
    elif args.mode == "bad-metrics":
        (out / "metrics.json").write_text("{loss: not json")
    elif args.mode == "env":
        metrics = {k: os.environ.get(k, "<unset>") for k in WATCHED}
        (out / "metrics.json").write_text(json.dumps(metrics))
    elif args.mode == "tqdm":
        for pct in (10, 25, 45):
            sys.stdout.write(f"\r{pct:3d}%|{'#' * (pct // 10):<10}| {pct}/100 [00:01<00:02]")
            sys.stdout.flush()
        time.sleep(args.seconds)
    elif args.mode == "traceback":
        print("runtime: loading data", flush=True)
        print("runtime: epoch 1 of 3", flush=True)
        raise ValueError(f"the real error: lr {args.lr} too high")
    print("runtime: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
