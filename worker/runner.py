"""Run one trainer as a supervised subprocess.

The trainer gets an argv list (never a shell), a clean environment, its own
process group (so a stop reaches its children too) and, on Linux, the
parent-death signal: if the worker is SIGKILLed its trainer dies with it, so a
swept job is never trained twice at once on one host. PR_SET_PDEATHSIG fires
when the *thread* that forked exits, so trainers are started from the worker's
main thread only.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from reconciler.identity import JobSpec
from worker.logcap import BoundedLog, ByteTail, read_lines

PROGRESS_RE = re.compile(r"^\s*progress:\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$")
PR_SET_PDEATHSIG = 1
LOG_TAIL_BYTES = 2048
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER", "LOGNAME")


def trainer_argv(spec: JobSpec, python: str = sys.executable) -> list[str]:
    """The trainer's argv plus `--<key> <value>` per hyper item (underscores
    become dashes); a leading `python` is this worker's interpreter."""
    argv = list(spec.command)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = python
    for key, value in spec.hyper.items():
        flag = "--" + key.replace("_", "-")
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        argv += [flag, text]
    return argv


def trainer_env(spec: JobSpec, attempt: int, output_dir: Path, spec_path: Path,
                device: int | None, base: dict[str, str] | None = None) -> dict[str, str]:
    source = os.environ if base is None else base
    env = {k: source[k] for k in PASSED_ENV if k in source}
    env.update({
        "TRAINLEDGER_JOB_ID": spec.job_id,
        "TRAINLEDGER_JOB_NAME": spec.name,
        "TRAINLEDGER_ATTEMPT": str(attempt),
        "TRAINLEDGER_OUTPUT_DIR": str(output_dir),
        "TRAINLEDGER_SPEC": str(spec_path),
        "CUDA_VISIBLE_DEVICES": visible_device(device, source.get("CUDA_VISIBLE_DEVICES")),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # the order nvidia-smi numbers devices in
        "PYTHONUNBUFFERED": "1",
    })
    return env


def visible_device(device: int | None, parent: str | None) -> str:
    """The trainer's CUDA_VISIBLE_DEVICES: device indices are relative to the
    worker's own list, so a worker started with "2,3" sends device 0 to "2"."""
    if device is None:
        return ""
    if parent:
        ids = [p.strip() for p in parent.split(",") if p.strip()]
        if device < len(ids):
            return ids[device]
    return str(device)


def parse_progress(line: str) -> float | None:
    m = PROGRESS_RE.match(line)
    if not m:
        return None
    value = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
    return min(max(value, 0.0), 1.0)


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass(frozen=True)
class Outcome:
    """How a trainer ended."""

    returncode: int | None  # None: still running
    reason: str  # "exit 0", "exit 3", "signal SIGKILL", "timeout after 5s", "stopped: ..."
    stopped: bool = False  # we stopped it (cancel, lost lease, shutdown): write no result

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.stopped


class TrainerRun:
    """One attempt of one job: the process, its log, its progress."""

    def __init__(self, spec: JobSpec, attempt: int, attempt_dir: Path, log_path: Path,
                 device: int | None = None, exited: threading.Event | None = None) -> None:
        self.spec = spec
        self.attempt = attempt
        self.dir = attempt_dir
        self.output_dir = attempt_dir / "out"
        self.log_path = log_path
        self.device = device
        self.progress: float | None = None
        self.last_line: str | None = None
        self.started_at = 0.0
        self._tail = ByteTail()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stop_reason: str | None = None
        self._exited = exited  # set when the trainer's output closes (it exited)

    @property
    def key(self) -> tuple[str, int]:
        return self.spec.job_id, self.attempt

    def start(self, now: float) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path = self.dir / "spec.json"
        spec_path.write_text(json.dumps(self.spec.to_json(), sort_keys=True, indent=2) + "\n")
        workdir = Path(self.spec.workdir) if self.spec.workdir else self.dir
        self._proc = subprocess.Popen(
            trainer_argv(self.spec),
            cwd=workdir,
            env=trainer_env(self.spec, self.attempt, self.output_dir, spec_path, self.device),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_set_pdeathsig,
            close_fds=True,
        )
        self.started_at = now
        self._reader = threading.Thread(target=self._read, name=f"log-{self.spec.name}",
                                        daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _read(self) -> None:
        assert self._proc and self._proc.stdout
        with BoundedLog(self.log_path) as log:
            for raw in read_lines(self._proc.stdout):  # bounded: worker/logcap.py
                log.write(raw)
                self._tail.append(raw)
                line = raw[:2048].decode("utf-8", "replace").rstrip()
                if line:
                    self.last_line = line[:512]
                    value = parse_progress(line)
                    if value is not None:
                        self.progress = value
        if self._exited is not None:
            self._exited.set()

    def poll(self, now: float) -> Outcome:
        assert self._proc is not None
        code = self._proc.poll()
        if code is None:
            timeout = self.spec.timeout_s
            if timeout is not None and now - self.started_at > timeout:
                self.stop(f"timeout after {timeout:g}s", grace_s=5.0, counts_as_failure=True)
                return self.poll(now)
            return Outcome(None, "running")
        if self._reader:
            self._reader.join(timeout=5)
        if self._stop_reason is not None and not self._stop_reason.startswith("timeout"):
            return Outcome(code, f"stopped: {self._stop_reason}", stopped=True)
        if self._stop_reason is not None:
            return Outcome(code, self._stop_reason)
        if code < 0:
            return Outcome(code, f"signal {signal.Signals(-code).name}")
        return Outcome(code, f"exit {code}")

    def stop(self, reason: str, grace_s: float = 10.0, counts_as_failure: bool = False) -> None:
        """SIGTERM to the whole group, SIGKILL after `grace_s`; waits for the exit."""
        if self._proc is None or self._proc.poll() is not None:
            if self._stop_reason is None and not counts_as_failure:
                self._stop_reason = reason
            return
        self._stop_reason = reason
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self._proc.wait()
        self._signal(signal.SIGKILL)  # stragglers left in the group

    def kill(self) -> None:
        if self._proc is not None:
            self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def log_tail(self, limit: int = LOG_TAIL_BYTES) -> str:
        return self._tail.text(limit)
