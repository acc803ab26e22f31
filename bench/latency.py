"""P3: an operator pushes a new job; the reconciler creates its state; an idle
worker (`--poll-s 1`) claims it. Real daemons, real processes.

A watcher thread reads the bare ledger's `refs/heads/main` every 2 ms and
stamps each new tip on the bench's clock; each tip's trailers say what it was
(the reconciler's create, the worker's claim), so nothing relies on a
daemon's own clock or logs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import REPO_ROOT, git, make_ledger, write_capability
from bench.rows import Config, RowResult
from bench.stats import Target, summarize

FLUX_MIN_INTERVAL_S = 60.0  # Flux: `interval` of a GitRepository, documented minimum 60 s
ARGO_POLL_S = (120.0, 180.0)  # Argo CD: default repo poll 120 s plus up to 60 s jitter


class RefWatcher(threading.Thread):
    """Stamps every change of main on the bench's monotonic clock."""

    def __init__(self, repo: Path) -> None:
        super().__init__(daemon=True, name="ref-watcher")
        self.repo = repo
        self.seen: list[tuple[float, str]] = []
        self._stop = threading.Event()

    def _tip(self) -> str:
        loose = self.repo / "refs" / "heads" / "main"
        try:
            return loose.read_text().strip()
        except OSError:
            return ""

    def run(self) -> None:
        last = self._tip()
        while not self._stop.is_set():
            tip = self._tip()
            if tip and tip != last:
                self.seen.append((time.monotonic(), tip))
                last = tip
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()

    def first_after(self, t0: float, transition: str, job: str) -> float | None:
        from reconciler.protocol import trailers
        for when, sha in list(self.seen):
            if when < t0:
                continue
            message = git(self.repo, "log", "-1", "--format=%B", sha).stdout.decode()
            if any(j == job and tr == transition for j, _a, tr in trailers.changes_of(message)):
                return when
        return None


def _job_id(seed: int, hyper: dict[str, float]) -> str:
    from reconciler.protocol.identity import job_id_of

    return job_id_of({"model": "quick", "mode": None, "hyper": hyper,
                      "split_recipe": None, "train_hosts": None, "seed": seed})


def _add_job(clone: Path, name: str, seed: int) -> None:
    manifest = clone / "manifest.toml"
    text = manifest.read_text()
    text += (f'\n[[jobs]]\nname = "{name}"\nmodel = "quick"\nseed = {seed}\n'
             "hyper = { seconds = 0.0 }\n")
    manifest.write_text(text)
    git(clone, "commit", "-q", "-am", f"add job {name}")


def _start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO_ROOT, env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_p3(cfg: Config) -> RowResult:
    row = RowResult("P3", "operator push -> reconciler creates state -> idle worker "
                          "(--poll-s 1) claims")
    with cfg.scratch.dir("p3") as root:
        led = make_ledger(root, jobs=1, fleet={"heartbeat_s": 1, "stale_after_s": 30,
                                               "prefer_cuda_grace_s": 5})
        env = {**os.environ, "XDG_STATE_HOME": str(root / "state")}
        rec = _start(["reconciler.cli", "run", "--ledger", led.url], root / "reconciler.log", env)
        cap = write_capability(root / "cap.json", "p3worker")
        wrk = _start(["worker.cli", "run", "--ledger", led.url, "--name", "p3worker",
                      "--store", str(led.store), "--state-dir", str(root / "w"),
                      "--capability", str(cap), "--poll-s", "1"], root / "worker.log", env)
        clone = root / "operator"
        git(root, "clone", "-q", led.url, str(clone))
        op_env = {"TRAINLEDGER_IDENTITY": "operator"}
        watcher = RefWatcher(led.path)
        watcher.start()
        claims, creates, pushes = [], [], []
        try:
            _wait_idle(watcher, led.path, _job_id(0, {}), timeout=60)
            for trial in range(cfg.p3_trials):
                name, seed = f"p3-{trial:02d}", 1000 + trial
                job = _job_id(seed, {"seconds": 0.0})
                git(clone, "pull", "-q", "--rebase", "origin", "main")
                _add_job(clone, name, seed)
                t_push = time.monotonic()
                git(clone, "push", "-q", "origin", "HEAD:main", env=op_env)
                t0 = time.monotonic()
                pushes.append(t0 - t_push)
                created = _wait(lambda job=job, t0=t_push: watcher.first_after(
                    t0, "new->pending", job), 30)
                claimed = _wait(lambda job=job, t0=t_push: watcher.first_after(
                    t0, "pending->claimed", job), 30)
                creates.append(created - t0)
                claims.append(claimed - t0)
                _wait_idle(watcher, led.path, job, timeout=60)
        finally:
            watcher.stop()
            _stop(wrk)
            _stop(rec)
    row.measured = {"commit_to_claim_s": summarize(claims),
                    "reconciler_reaction_s": summarize(creates),
                    "operator_push_s": summarize(pushes)}
    row.reference = {"flux_min_interval_s": FLUX_MIN_INTERVAL_S, "argo_poll_s": ARGO_POLL_S,
                     "ratio_flux_over_ledger": FLUX_MIN_INTERVAL_S / max(
                         row.measured["commit_to_claim_s"]["median"], 1e-9)}
    row.targets = [
        Target("median commit-to-claim", 1.5, "<=", " s").verdict(
            row.measured["commit_to_claim_s"]["median"]),
        Target("median reconciler reaction to a push", 1.0, "<=", " s").verdict(
            row.measured["reconciler_reaction_s"]["median"]),
    ]
    row.notes.append("t0 is when the operator's push returned (the commit is on main); the "
                     "push itself (hook included) is reported apart")
    return row


def _wait(probe, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(0.02)
    raise RuntimeError(f"P3: nothing after {timeout}s")


def _wait_idle(watcher: RefWatcher, repo: Path, job: str, timeout: float) -> None:
    """Until the job is finished, so the worker is idle again before the next push."""
    from reconciler.protocol.schema import state_path

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = git(repo, "show", f"main:{state_path(job)}", check=False)
        text = proc.stdout.decode()
        if proc.returncode == 0 and any(f'"status": "{s}"' in text
                                        for s in ("completed", "failed")):
            time.sleep(0.3)
            return
        time.sleep(0.05)
    raise RuntimeError(f"P3: job {job} did not finish within {timeout}s")
