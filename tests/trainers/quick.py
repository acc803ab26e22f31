"""A tiny deterministic trainer for tests: real subprocess, real outputs, 0-3 s.

Flags: --seconds S (how long to "train"), --steps N (progress lines, one per step),
--exit-code N, --size BYTES, --lr X. Writes weights.bin (seeded bytes) and metrics.json.
--fail-attempts N fails attempts 1..N (retries); --term-exit N exits N on SIGTERM
(timeouts). With $TRAINLEDGER_INPUTS it writes inputs.json: each upstream job's
name -> sha256 of the weights.bin it found there. With $TRAINLEDGER_CHECKPOINT_DIR
it writes step.txt there after each step (atomically) and resumes after that step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=0.2)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--fail-attempts", type=int, default=0)
    parser.add_argument("--term-exit", type=int, default=None)
    args = parser.parse_args()
    if args.term_exit is not None:
        def on_term(_sig: int, _frame: object) -> None:
            print(f"quick: SIGTERM, exiting {args.term_exit}", flush=True)
            os._exit(args.term_exit)
        signal.signal(signal.SIGTERM, on_term)
    attempt = int(os.environ.get("TRAINLEDGER_ATTEMPT", "0"))
    print(f"quick: attempt {attempt}", flush=True)
    out = Path(os.environ["TRAINLEDGER_OUTPUT_DIR"])
    spec = json.loads(Path(os.environ["TRAINLEDGER_SPEC"]).read_text())
    steps = max(1, args.steps)
    ckpt = Path(os.environ.get("TRAINLEDGER_CHECKPOINT_DIR") or out / ".no-checkpoint")
    first = 0
    if (ckpt / "step.txt").is_file():
        first = int((ckpt / "step.txt").read_text())
        print(f"quick: resumed at step {first} (checkpoint of attempt "
              f"{os.environ.get('TRAINLEDGER_RESUMED_FROM')})", flush=True)
    for i in range(first, steps):
        time.sleep(args.seconds / steps)
        print(f"progress: {(i + 1) / steps:.2f}", flush=True)
        if ckpt.is_dir():
            (ckpt / "step.tmp").write_text(str(i + 1))
            os.replace(ckpt / "step.tmp", ckpt / "step.txt")
    if args.exit_code:
        print(f"quick: failing on purpose with {args.exit_code}", file=sys.stderr, flush=True)
        return args.exit_code
    if attempt <= args.fail_attempts:
        print(f"quick: failing attempt {attempt} on purpose", file=sys.stderr, flush=True)
        return 4
    if os.environ.get("TRAINLEDGER_INPUTS"):
        inputs = Path(os.environ["TRAINLEDGER_INPUTS"])
        found = {d.name: hashlib.sha256((d / "weights.bin").read_bytes()).hexdigest()
                 for d in sorted(inputs.iterdir())}
        (out / "inputs.json").write_text(json.dumps(found, sort_keys=True) + "\n")
        print(f"quick: read inputs {sorted(found)}", flush=True)
    # Outputs depend on seed, size and lr only: jobs that differ in --seconds
    # produce identical bundles (the store keeps one).
    seed = hashlib.sha256(f"{spec['seed']}/{args.size}/{args.lr}".encode()).digest()
    blob = (seed * (args.size // len(seed) + 1))[: args.size]
    (out / "weights.bin").write_bytes(blob)
    (out / "metrics.json").write_text(json.dumps({"loss": args.lr, "seed": spec["seed"]},
                                                 sort_keys=True) + "\n")
    print("quick: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
