"""Run real worker processes against a test ledger and wait on what they do."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.git.ledger import Ledger
from reconciler.protocol.schema import JobState

CPU_CAPABILITY = {
    "hostname": "test-cpu", "cpu_cores": 2, "ram_total_gib": 16.0, "ram_available_gib": 12.0,
    "cuda_available": False, "cuda_devices": [], "os": "Linux", "arch": "x86_64",
    "trainledger_version": "test",
}
CUDA_CAPABILITY = {
    **CPU_CAPABILITY, "hostname": "test-gpu", "cuda_available": True,
    "cuda_devices": [{"index": 0, "name": "Fake GPU", "vram_total_gib": 24.0,
                      "vram_free_gib": 22.0}],
}


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, every: float = 0.1,
             what: str = "condition") -> object:
    """Poll until `predicate()` is truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    state_dir: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def trainer_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"event=start .*?pid=(\d+)", self.text())]

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Fleet:
    url: str
    root: Path
    store: Path
    workers: list[WorkerProc] = field(default_factory=list)

    def start_worker(self, name: str, *extra: str, capability: dict | None = None,
                     env: dict[str, str] | None = None, prefix: list[str] | None = None,
                     ) -> WorkerProc:
        state = self.root / f"w-{name}"
        state.mkdir(parents=True, exist_ok=True)
        cap = state / "capability.json"
        cap.write_text(json.dumps({**(capability or CPU_CAPABILITY), "hostname": name}))
        log = state / "worker.log"
        argv = [*(prefix or []), sys.executable, "-m", "worker.cli", "run", "--ledger", self.url,
                "--name", name, "--store", str(self.store), "--state-dir", str(state),
                "--capability", str(cap), "--poll-s", "0.2", *extra]
        proc = subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
        w = WorkerProc(name, proc, log, state)
        self.workers.append(w)
        return w

    def stop_all(self) -> None:
        for w in self.workers:
            w.stop()

    def states(self, cache: Path | None = None) -> dict[str, JobState]:
        ledger = Ledger(self.url, cache or self.root / "reader.git", "reader")
        try:
            return ledger.snapshot(ledger.fetch()).states
        finally:
            ledger.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is as good as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
