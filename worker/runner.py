"""Run one trainer as a supervised subprocess.

The trainer gets an argv list (never a shell), a clean environment (plus what
`--pass-env` and `[trainers.X] env` add), its own process group (so a stop
reaches its children too) and a shepherd (worker/shepherd.py) between it and
the worker: if the worker is SIGKILLed, the shepherd's parent-death signal
makes it kill the trainer's whole process tree, wrappers' children included,
so a swept job is never trained twice at once on one host. PR_SET_PDEATHSIG
fires when the *thread* that forked exits, so trainers are started from the
worker's main thread only.

The output is read in chunks and split at `\n` *and* `\r`: progress bars
(tqdm, Lightning, Hugging Face) redraw one line with `\r`, and each redraw is
a line for `last_line` and progress (a redraw replaces the line before it in
the tail, so the tail is not all progress bars).
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
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from reconciler.protocol.identity import JobSpec
from worker.logcap import BoundedLog, LineReader
from worker.reaper import FENCE_ENV, kill_fenced

PROGRESS_RE = re.compile(r"^\s*progress:\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$")
TQDM_RE = re.compile(r"(\d{1,3}(?:\.\d+)?)%\|")  # tqdm's " 45%|####      | 45/100"
PR_SET_PDEATHSIG = 1
LOG_TAIL_BYTES = 2048
MAX_LINE = 512  # last_line and each heartbeat tail line
TAIL_LINES = 64  # kept in memory for the error's tail
BEAT_LINES = 20  # carried by each heartbeat (`reconciler logs` of a running job)
BEAT_TAIL_BYTES = 4096
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER", "LOGNAME")
SHEPHERD = Path(__file__).with_name("shepherd.py")


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


def passed_env(source: Mapping[str, str], patterns: Sequence[str]) -> dict[str, str]:
    """The worker's variables whose names match a `--pass-env` glob (case-sensitive)."""
    return {k: v for k, v in source.items()
            if any(fnmatchcase(k, p) for p in patterns) and not k.startswith("TRAINLEDGER_")}


def trainer_env(spec: JobSpec, attempt: int, output_dir: Path, spec_path: Path,
                device: int | None, base: Mapping[str, str] | None = None,
                pass_env: Sequence[str] = (), fence: str | None = None) -> dict[str, str]:
    """Eight basic variables, then `[trainers.X] env`, then the worker's variables
    matching `--pass-env` (the host knows its own paths and secrets, so it wins),
    then the TRAINLEDGER_* and CUDA variables, which nothing overrides."""
    source = os.environ if base is None else base
    env = {k: source[k] for k in PASSED_ENV if k in source}
    env.update(getattr(spec, "env", None) or {})
    env.update(passed_env(source, pass_env))
    if fence:
        env[FENCE_ENV] = fence
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
    """`progress: 0.45` / `progress: 45%`, or a tqdm-style bar's last `NN%|`."""
    m = PROGRESS_RE.match(line)
    if m:
        value = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
    else:
        bars = TQDM_RE.findall(line)
        if not bars:
            return None
        value = float(bars[-1]) / 100.0
    return min(max(value, 0.0), 1.0)


def meaningful_line(lines: Sequence[str]) -> str | None:
    """The error's real line: the last line that is not blank, a progress line or
    a traceback's framing (for a Python traceback, the exception itself)."""
    for line in reversed(lines):
        text = line.strip()
        if (not text or parse_progress(text) is not None or set(text) <= set("-=~^*#. ")
                or text.startswith("Traceback (most recent call last)")):
            continue
        return text[:MAX_LINE]
    return None


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    """The shepherd asks for SIGTERM (which it catches, to kill the whole tree)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass(frozen=True)
class Outcome:
    """How a trainer ended."""

    returncode: int | None  # None: still running
    reason: str  # "exit 0", "exit 3", "signal SIGKILL", "timeout after 5s", "stopped: ..."
    stopped: bool = False  # we stopped it (cancel, lost lease, shutdown): write no result
    timed_out: bool = False  # the job's timeout_s stopped it: a failure whatever the exit code

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.stopped and not self.timed_out


def _how(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"


class TrainerRun:
    """One attempt of one job: the process, its log, its progress."""

    def __init__(self, spec: JobSpec, attempt: int, attempt_dir: Path, log_path: Path,
                 device: int | None = None, exited: threading.Event | None = None,
                 extra_env: dict[str, str] | None = None,
                 pass_env: Sequence[str] = (), fence: str | None = None) -> None:
        self.spec = spec
        self.extra_env = dict(extra_env or {})  # TRAINLEDGER_INPUTS, _CHECKPOINT_DIR, ...
        self.attempt = attempt
        self.dir = attempt_dir
        self.output_dir = attempt_dir / "out"
        self.log_path = log_path
        self.device = device
        self.progress: float | None = None
        self.last_line: str | None = None
        self.started_at = 0.0
        self.pass_env = tuple(pass_env)
        self.fence = fence
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._redraw = False  # the tail's last line ended with \r: the next replaces it
        self._tail_lock = threading.Lock()  # the reader writes, the heartbeat thread reads
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
            [sys.executable, "-I", str(SHEPHERD), "--", *trainer_argv(self.spec)],
            cwd=workdir,
            env={**trainer_env(self.spec, self.attempt, self.output_dir, spec_path, self.device,
                               pass_env=self.pass_env, fence=self.fence),
                 **self.extra_env},
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
        fd = self._proc.stdout.fileno()
        lines = LineReader()  # bounded per line: worker/logcap.py
        with BoundedLog(self.log_path) as log:
            while chunk := os.read(fd, 65536):
                for line, end in lines.feed(chunk):
                    log.write(line + end)
                    self._line(line, end == b"\r")
                if lines.pending:  # a bar drawn as `\r 45%|...` stays unterminated until the
                    self._line(lines.pending, True)  # next redraw: show it now, replace it then
            for line, end in lines.close():
                log.write(line + end)
                self._line(line, False)
        if self._exited is not None:
            self._exited.set()

    def _line(self, raw: bytes, redraw: bool) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        if not line:
            if not redraw:  # a bare \n (a \r\n split across reads) ends the drawn line
                self._redraw = False
            return
        with self._tail_lock:
            if self._redraw and self._tail:
                self._tail.pop()
            self._tail.append(line[:MAX_LINE * 4])
        self._redraw = redraw
        self.last_line = line[:MAX_LINE]
        value = parse_progress(line)
        if value is not None:
            self.progress = value

    def tail_lines(self, n: int = BEAT_LINES, max_bytes: int = BEAT_TAIL_BYTES) -> list[str]:
        """The latest lines for the heartbeat, each cut to MAX_LINE, at most max_bytes."""
        out: list[str] = []
        size = 0
        for line in reversed(self._lines()[-n:]):
            line = line[:MAX_LINE]
            size += len(line.encode()) + 1
            if size > max_bytes:
                break
            out.append(line)
        return out[::-1]

    def _lines(self) -> list[str]:
        with self._tail_lock:
            return list(self._tail)

    def error_line(self) -> str | None:
        return meaningful_line(self._lines())

    def poll(self, now: float) -> Outcome:
        assert self._proc is not None
        code = self._proc.poll()
        if code is None:
            timeout = self.spec.timeout_s
            if timeout is not None and now - self.started_at > timeout:
                self.stop(f"timeout after {timeout:g}s", grace_s=5.0, counts_as_failure=True)
                return self.poll(now)
            return Outcome(None, "running")
        self._kill_fenced()  # a shepherd killed outright could not fence its tree itself
        if self._reader:
            self._reader.join(timeout=5)
        if self._stop_reason is not None and not self._stop_reason.startswith("timeout"):
            return Outcome(code, f"stopped: {self._stop_reason}", stopped=True)
        if self._stop_reason is not None:
            return Outcome(code, f"{self._stop_reason} ({_how(code)})", timed_out=True)
        return Outcome(code, _how(code))

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
        self._kill_fenced()  # and those that left it

    def kill(self) -> None:
        if self._proc is not None:
            self._signal(signal.SIGKILL)
            self._kill_fenced()

    def _kill_fenced(self) -> None:
        if self.fence:
            kill_fenced(self.fence, timeout_s=5.0)

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def log_tail(self, limit: int = LOG_TAIL_BYTES) -> str:
        return "\n".join(self._lines())[-limit:]
