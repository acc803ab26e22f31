"""A tiny deterministic trainer for tests: real subprocess, real outputs, 0-3 s.

Flags: --seconds S (how long to "train"), --steps N (progress lines, one per step),
--exit-code N, --size BYTES, --lr X. Writes weights.bin (seeded bytes) and metrics.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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
    args = parser.parse_args()
    out = Path(os.environ["TRAINLEDGER_OUTPUT_DIR"])
    spec = json.loads(Path(os.environ["TRAINLEDGER_SPEC"]).read_text())
    steps = max(1, args.steps)
    for i in range(steps):
        time.sleep(args.seconds / steps)
        print(f"progress: {(i + 1) / steps:.2f}", flush=True)
    if args.exit_code:
        print(f"quick: failing on purpose with {args.exit_code}", file=sys.stderr, flush=True)
        return args.exit_code
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
