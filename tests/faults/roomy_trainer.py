"""The disk-full row's trainer: tests/trainers/quick.py plus 1 MiB of incompressible bytes.

Its worker runs under RLIMIT_FSIZE, which a trainer inherits. The limit is set
as a soft limit only, so this lifts its own back to the (unlimited) hard one and
only the worker's store write hits the limit. The extra bytes depend on the job
name only, so a rerun gives the same bundle.
"""

from __future__ import annotations

import os
import random
import resource
import sys
from pathlib import Path

QUICK = Path(__file__).resolve().parent.parent / "trainers" / "quick.py"
NOISE_BYTES = 1 << 20

if __name__ == "__main__":
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    out = Path(os.environ["TRAINLEDGER_OUTPUT_DIR"])
    noise = random.Random(os.environ["TRAINLEDGER_JOB_NAME"]).randbytes(NOISE_BYTES)
    (out / "noise.bin").write_bytes(noise)
    os.execv(sys.executable, [sys.executable, str(QUICK), *sys.argv[1:]])
