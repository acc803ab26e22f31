"""Fake time and fake trainers for driving the worker and reconciler loops
against the in-memory ledger (reconciler/git/memory.py)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from ledgerkit import manifest_text
from reconciler.git.memory import MemoryLedger
from reconciler.protocol.schema import Capability
from reconciler.store.local import LocalStore
from worker.daemon import Worker, WorkerConfig
from worker.runner import Outcome
from workerkit import CPU_CAPABILITY


@dataclass
class FakeClock:
    """One clock for everyone: the ledger's commits, the worker's lease and the
    reconciler's observations all read it; only the test moves it."""

    t: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += max(0.0, seconds)


class FakeRun:
    """TrainerRun's shape without a process: the test says when it exits."""

    runs: list[FakeRun] = []

    def __init__(self, spec, attempt: int, attempt_dir: Path, log_path: Path,
                 device: int | None = None, exited: threading.Event | None = None,
                 env: dict[str, str] | None = None, **_runtime: object) -> None:
        self.spec, self.attempt, self.dir, self.device = spec, attempt, attempt_dir, device
        self.output_dir = attempt_dir / "out"
        self.log_path = log_path
        self.progress: float | None = None
        self.last_line: str | None = None
        self.pid = 4242
        self.code: int | None = None
        self.stopped: str | None = None
        FakeRun.runs.append(self)

    def start(self, now: float) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "model.txt").write_text(f"{self.spec.name} {self.attempt}\n")

    def finish(self, code: int = 0) -> None:
        self.code = code

    def poll(self, now: float) -> Outcome:
        if self.stopped is not None:
            return Outcome(-15, f"stopped: {self.stopped}", stopped=True)
        if self.code is None:
            return Outcome(None, "running")
        return Outcome(self.code, f"exit {self.code}")

    def stop(self, reason: str, grace_s: float = 10.0, counts_as_failure: bool = False) -> None:
        self.stopped = reason

    def kill(self) -> None:
        self.stopped = "killed"

    def log_tail(self, limit: int = 2048) -> str:
        return "fake trainer log\n"

    def tail_lines(self, n: int = 20, max_bytes: int = 4096) -> list[str]:
        return ["fake trainer log"]

    def error_line(self) -> str:
        return "fake trainer log"


def memory_ledger(clock: FakeClock, jobs: list[dict], **fleet: object) -> MemoryLedger:
    text = manifest_text(jobs, {"heartbeat_s": 5, "stale_after_s": 60, "max_attempts": 3,
                                "prefer_cuda_grace_s": 30, **fleet})
    return MemoryLedger(text.encode(), clock)


def fake_worker(mem: MemoryLedger, clock: FakeClock, tmp: Path, name: str = "w1",
                capability: dict | None = None) -> Worker:
    FakeRun.runs = []
    (tmp / "store" / "sha256").mkdir(parents=True, exist_ok=True)
    cap = Capability.model_validate({**(capability or CPU_CAPABILITY), "hostname": name})
    config = WorkerConfig(name=name, state_dir=tmp / name, poll_s=1.0)
    return Worker(config, mem.port(name), mem.port(name),
                  lambda _loaded: LocalStore(tmp / "store"), cap, clock=clock,
                  sleep=clock.sleep, runner=FakeRun)
