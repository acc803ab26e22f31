"""The worker loop, in rq's shape: claim, run, supervise, record, repeat.

The main thread alone claims, starts and stops trainers and writes results;
the heartbeat thread (worker/beat.py) renews the lease and reports revoked
jobs. Every result is a fenced write: it lands only while the ledger still
names this worker and this attempt, so a worker that was swept while it slept
can never record anything.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reconciler.git.port import LedgerPort
from reconciler.git.snapshot import Snapshot
from reconciler.git.sshconn import ROTATE_S, ssh_env
from reconciler.protocol import transitions
from reconciler.protocol.eligibility import EligibleJobs
from reconciler.protocol.identity import JobSpec
from reconciler.protocol.lease import Lease
from reconciler.protocol.manifest import LoadedManifest
from reconciler.protocol.schema import Artifact, Capability, Checkpoint, JobState, Status
from reconciler.sdnotify import notify
from reconciler.store.backends import Store
from worker import reaper
from worker.beat import Beater, Held
from worker.checkpoint import CheckpointDir
from worker.claims import ClaimSteps
from worker.events import event, log
from worker.fairness import TurnTaking
from worker.pipeline import PipelineSteps
from worker.resources import Reservation, Resources, reservation
from worker.results import MAX_ERROR, ResultSteps
from worker.runner import TrainerRun
from worker.tipmanifest import last_valid_manifest
from worker.writes import FencedWrites

BEAT_TAIL_TOTAL = 24 * 1024  # log lines carried by one heartbeat, all jobs together


@dataclass
class WorkerConfig:
    name: str
    state_dir: Path
    poll_s: float = 2.0
    slots: int = 1
    exit_when_idle: bool = False
    max_jobs: int | None = None
    stop_grace_s: float = 10.0
    pass_env: tuple[str, ...] = ()  # --pass-env globs


class Worker(ClaimSteps, ResultSteps, FencedWrites, PipelineSteps):
    """`ledger` and `beat_ledger` are LedgerPorts (the git Ledger, or
    reconciler/git/memory.py's); `clock`, `sleep` and `runner` (TrainerRun's shape)
    let a test drive `step()` on fake time with fake trainers."""

    def __init__(self, config: WorkerConfig, ledger: LedgerPort, beat_ledger: LedgerPort,
                 store: Callable[[LoadedManifest], Store], capability: Capability | Resources,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 runner: Callable[..., TrainerRun] = TrainerRun) -> None:
        self.config = config
        self.name = config.name
        self.ledger = ledger
        self.resources = capability if isinstance(capability, Resources) \
            else Resources(capability)
        self.capability = self.resources.measured()  # what the last claim decision judged by
        self._store_factory = store
        self._store: Store | None = None
        self.rng = rng or random.Random()
        self.clock = clock
        self.sleep = sleep
        self._runner = runner
        self.runs: dict[str, TrainerRun] = {}
        self.checkpoints: dict[str, CheckpointDir] = {}  # by job id, while it runs here
        self.manifest: LoadedManifest | None = None
        self.claimed_total = 0
        self.stopping = threading.Event()
        self.exited = threading.Event()  # a trainer's output closed
        self._lock = threading.Lock()
        self._revoked: dict[tuple[str, int], str] = {}
        self._signals = 0
        self._unreachable_since: float | None = None
        self._write_error = ""  # the last failed write's first line, for the give-up
        self._paused_why: str | None = None
        self._refusal: str | None = None  # the hook's last "no" to a write
        self._refusals_logged: set[str] = set()
        self._last_fsck = float("-inf")
        self._recloned_at: float | None = None  # the cache's last re-clone, until a write lands
        self._cache_hopeless: str | None = None  # why the cache cannot be repaired
        self._eligible_jobs = EligibleJobs()
        self._eligible_at: tuple[object, ...] | None = None  # (revision, manifest, capability)
        self._manifest_error: str | None = None
        self.turns = TurnTaking()  # worker/fairness.py: a rival that keeps losing gets a turn
        self.beater = Beater(beat_ledger, self.name, self._judged, config.slots, self._held,
                             self._on_revoked, self._heartbeat_s, clock)

    # ------------------------------------------------------------ lifecycle

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        if self._signals > 1 and signum == signal.SIGINT:
            for run in list(self.runs.values()):
                run.kill()
            os._exit(130)  # the second Ctrl-C means now: no release, no last beat
        event("shutdown", worker=self.name, signal=signal.Signals(signum).name)
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self.exited.set()

    def run(self) -> int:
        """Until stopped, or idle with --exit-when-idle, or --max-jobs claimed."""
        self._kill_leftovers()
        self.beater.start()
        notify("READY=1")
        try:
            while not self.stopping.is_set():
                notify("WATCHDOG=1")
                if self.step():
                    break
                self.exited.wait(self.config.poll_s if not self.runs else self._tick_s())
                self.exited.clear()
        finally:
            self.teardown()
        return 0

    def step(self) -> bool:
        """One turn of the loop: record finished trainers, stop revoked ones,
        save due checkpoints, claim into free slots. True when the worker should
        exit (idle with --exit-when-idle, or --max-jobs claimed and done)."""
        if self._reap():
            self._yield_to_rivals()
        self._enforce_revocations()
        self._save_checkpoints()
        idle = self._maybe_claim()
        if idle and not self.runs and self.config.exit_when_idle:
            event("idle-exit", worker=self.name)
            return True
        return (self.config.max_jobs is not None and not self.runs
                and self.claimed_total >= self.config.max_jobs)

    def _kill_leftovers(self) -> None:
        """What a SIGKILLed predecessor on this state dir left running (its
        shepherds fence their trees, but a shepherd can be killed too): killed
        before the first claim, so a swept job never trains twice here."""
        killed = reaper.kill_fenced(reaper.state_token(self.config.state_dir))
        if killed:
            log.warning("event=leftovers-killed worker=%s pids=%s", self.name,
                        ",".join(map(str, sorted(set(killed)))))

    def teardown(self) -> None:
        """Stop trainers, release held jobs (not counted against the budget), last beat."""
        notify("STOPPING=1")
        self.beater.stop()
        release = {}
        saved: dict[str, Artifact] = {}
        for run in list(self.runs.values()):
            run.stop("worker shutting down", grace_s=self.config.stop_grace_s)
            release[run.spec.job_id] = (run.attempt, "released: worker shut down")
            if (artifact := self._save_checkpoint(run, final=True)) is not None:
                saved[run.spec.job_id] = artifact
        if release:
            self._release(release, count=False, checkpoints=saved)
        self.runs.clear()
        if self.beater.is_alive():
            self.beater.join(timeout=10)
        self.beater.beat_once(final=True)
        event("stopped", worker=self.name)

    # ------------------------------------------------------------- fleet view

    def _fleet(self):
        return self.manifest.fleet if self.manifest else None

    def _lease(self) -> Lease:
        """Every deadline of this worker, from the manifest in force (lease.py)."""
        return Lease.of(self._fleet())

    def _heartbeat_s(self) -> float:
        return self._lease().heartbeat_s

    def _tick_s(self) -> float:
        return self._lease().worker_tick_s(self.config.poll_s)

    def _observe(self, snap: Snapshot) -> LoadedManifest | None:
        """Keep the last manifest that validated: a bad commit must not stop work.
        A worker that starts on a broken tip looks back in history for it, as the
        reconciler does, and says so once per error."""
        if snap.manifest is None and snap.manifest_error != self._manifest_error:
            self._manifest_error = snap.manifest_error
            if snap.manifest_error:
                found = None if self.manifest else last_valid_manifest(self.ledger, snap.revision)
                if found is not None:
                    self.manifest = found[0]
                log.warning("event=manifest-error worker=%s error=%r acting_on=%s", self.name,
                            snap.manifest_error.splitlines()[0],
                            "the last valid manifest" + (f" (commit {found[1][:12]})"
                                                         if found else "")
                            if self.manifest else "nothing: no valid manifest in history")
        elif snap.manifest is not None:
            self._manifest_error = None
        if snap.manifest is not None:
            if snap.manifest is not self.manifest:  # the ledger caches it per blob id
                lease = Lease.of(snap.manifest.fleet)
                self.beater.ledger.push_timeout_s = lease.beat_push_timeout_s
                self.ledger.push_timeout_s = lease.write_push_timeout_s
                if self.manifest is None or self.manifest.fleet != snap.manifest.fleet:
                    self.beater.poke()  # a beat now, then on the manifest's own cadence
                rotate_s = min(ROTATE_S, lease.heartbeat_s)
                for ledger in (self.ledger, self.beater.ledger):  # revocation: sshconn.py
                    repo = getattr(ledger, "repo", None)  # the in-memory ledger has no ssh
                    if repo is not None:
                        repo.env.update(ssh_env(ledger.url, repo.path.parent, rotate_s))
            self.manifest = snap.manifest
        return self.manifest

    def store(self) -> Store:
        """Opened on first use: the store may come from the manifest's [fleet]."""
        if self._store is None:
            assert self.manifest is not None
            self._store = self._store_factory(self.manifest)
        return self._store

    # -------------------------------------------------------------------- run

    def _judged(self) -> Capability:
        """Fresh figures less what our running jobs reserve (worker/resources.py)."""
        return self.resources.now(self._reservations())

    def _reservations(self) -> list[Reservation]:
        return [reservation(r.spec, r.device) for r in list(self.runs.values())]

    def _start(self, spec: JobSpec, attempt: int, checkpoint: Checkpoint | None = None,
               upstream: dict[str, JobState] | None = None, device: int | None = None) -> None:
        attempt_dir = self.config.state_dir / "jobs" / f"{spec.job_id}-{attempt}"
        if attempt_dir.exists():
            shutil.rmtree(attempt_dir)
        log_path = self.config.state_dir / "logs" / f"{spec.name}-{spec.job_id}-{attempt}.log"
        env = self._prepare(spec, attempt, attempt_dir, checkpoint, upstream or {})
        if env is None:
            return
        run = self._runner(spec, attempt, attempt_dir, log_path, device, self.exited, env,
                           pass_env=self.config.pass_env,
                           fence=reaper.run_token(self.config.state_dir, spec.job_id, attempt))
        try:
            run.start(self.clock())
        except OSError as exc:
            event("start-failed", job=spec.name, attempt=attempt, error=exc)
            self.runs[spec.job_id] = run
            self._finish_failed(run, f"trainer could not start: {exc}", trainer=True)
            return
        self.runs[spec.job_id] = run
        event("start", job=spec.name, attempt=attempt, pid=run.pid, log=log_path,
              device=run.device if run.device is not None else "cpu")

    def _commit_start(self, keys: list[tuple[str, int]]) -> None:
        keys = [(j, a) for j, a in keys if j in self.runs]
        written = self._fenced(
            {j: (a, Status.CLAIMED, transitions.start) for j, a in keys})
        for job_id, attempt in keys:
            if job_id not in written and job_id in self.runs:
                self._on_revoked(job_id, attempt, "lost before it started")

    def _held(self) -> list[Held]:
        runs = list(self.runs.values())
        budget = BEAT_TAIL_TOTAL // max(1, len(runs))  # the hook caps a beat at 64 KiB
        return [Held(r.spec.job_id, r.spec.name, r.attempt, r.progress, r.last_line,
                     r.tail_lines(max_bytes=min(4096, budget)), r.device) for r in runs]

    def _on_revoked(self, job_id: str, attempt: int, why: str) -> None:
        with self._lock:
            self._revoked[(job_id, attempt)] = why
        self.exited.set()

    def _enforce_revocations(self) -> None:
        with self._lock:
            revoked, self._revoked = self._revoked, {}
        for (job_id, attempt), why in revoked.items():
            run = self.runs.get(job_id)
            if run is not None and run.attempt == attempt:
                event("revoked", job=run.spec.name, attempt=attempt, reason=repr(why))
                run.stop(why, grace_s=self.config.stop_grace_s)
                self._forget(run)
        refused = self.beater.refused
        if self.runs and refused:
            # The hook said no to our lease (e.g. our role was removed): it cannot be
            # renewed, so nothing we hold may be finished. Give it all up now.
            for run in list(self.runs.values()):
                log.warning("event=gave-up job=%s attempt=%s worker=%s reason=%r",
                            run.spec.name, run.attempt, self.name,
                            f"heartbeat refused: {refused}")
                run.stop(f"heartbeat refused: {refused}", grace_s=self.config.stop_grace_s)
                self._release({run.spec.job_id: (run.attempt, f"released: heartbeat refused: "
                                                 f"{refused}"[:MAX_ERROR])}, count=True)
                self._forget(run)
        if self.runs and self._lease().lease_lost(self.clock() - self.beater.last_ok):
            silent = self.clock() - self.beater.last_ok
            for run in list(self.runs.values()):
                event("self-fence", job=run.spec.name, attempt=run.attempt,
                      reason=f"no successful heartbeat for {silent:.1f}s")
                run.stop(f"lease probably lost: no heartbeat for {silent:.1f}s",
                         grace_s=self.config.stop_grace_s)
                # spends one claim: a worker that can never beat must not claim,
                # fence and release the same job forever for free
                self._release({run.spec.job_id: (run.attempt, "released: lease lost")},
                              count=True)
                self._forget(run)

    def _reap(self) -> int:
        """Record every trainer that exited; how many."""
        done = 0
        for run in list(self.runs.values()):
            outcome = run.poll(self.clock())
            if outcome.returncode is None:
                continue
            self._record(run, outcome)
            done += 1
        return done

    def _yield_to_rivals(self) -> None:
        """Before claiming again after a result, pause a random fraction of two
        pushes. Every write is a compare-and-swap on main, so a worker that
        claims, starts and completes back to back keeps main moving; a rival
        whose push is slower (a loaded host) then loses every race and backs
        off ever longer while this one takes every job (seen: one of two
        workers claimed all 20). The pause gives it a window; on a quiet
        ledger a push costs ~0.05 s, so the pause is a fraction of that. It
        never exceeds a heartbeat, so supervision (reaping, revocations) is
        never later than a beat would make it anyway."""
        cost = getattr(self.ledger, "push_cost_s", 0.0)
        if cost > 0:
            self.sleep(self.rng.uniform(0, min(2 * cost, self._heartbeat_s())))


