"""`python -m worker.shepherd -- ARGV...`: the trainer's supervisor process.

PR_SET_PDEATHSIG on the trainer alone kills only the trainer: a trainer run
through `sh -c` or any wrapper that forks leaves its children training after
the worker is SIGKILLed. So the worker starts this small process instead; it

- asks for SIGTERM when the worker dies (its own parent-death signal, set by
  the worker between fork and exec),
- makes itself a child subreaper (PR_SET_CHILD_SUBREAPER), so descendants
  whose parents exit are re-parented to it, not to init,
- starts the trainer in its own process group, waits for it, and passes its
  exit status on (a signal death is re-raised on itself),
- kills every process the trainer left behind when the trainer exits, and
  everything at once when the worker dies (process group, then the
  TRAINLEDGER_FENCE scan of worker/reaper.py).

A SIGTERM while the worker lives is the worker's graceful stop: it reached the
trainer's group too, so the shepherd just keeps waiting. Standard library only:
it starts once per attempt.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run by path with -I: the trainer's cwd must not shadow us
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from worker.reaper import FENCE_ENV, kill_fenced

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, arg: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("shepherd: no trainer argv", file=sys.stderr)
        return 2
    parent = os.getppid()
    token = os.environ.get(FENCE_ENV, "")
    child: subprocess.Popen[bytes] | None = None

    def fence_all() -> None:
        """Our process group (the trainer stays in it) and every fenced process."""
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child.pid, signal.SIGKILL)
        if token:
            kill_fenced(token)

    def on_term(signum: int, _frame: object) -> None:
        if os.getppid() != parent:  # the worker died: fence at once
            fence_all()
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the worker, which decides
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != parent or parent == 1:  # the worker died before we could ask
        return 128 + signal.SIGTERM
    try:
        child = subprocess.Popen(argv)  # in our group: the worker's stop reaches it
    except OSError as exc:
        print(f"trainer could not start: {exc}", file=sys.stderr, flush=True)
        return 127
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
    fence_all()  # whatever the trainer left behind
    if code < 0:  # die the way the trainer died, so the worker records the signal
        with contextlib.suppress(OSError, ValueError):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
