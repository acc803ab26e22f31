"""The worker loop, in rq's shape: claim, run, supervise, record, repeat.

The main thread alone claims, starts and stops trainers and writes results;
the heartbeat thread (worker/beat.py) renews the lease and reports revoked
jobs. Every result is a fenced write: it lands only while the ledger still
names this worker and this attempt, so a worker that was swept while it slept
can never record anything.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from reconciler.git.cacherepair import cache_damage, reclone
from reconciler.git.ledger import Proposal, Snapshot, compute_backoff
from reconciler.git.port import LedgerPort
from reconciler.git.sshconn import ROTATE_S, ssh_env
from reconciler.protocol import transitions
from reconciler.protocol.eligibility import EligibleJobs, reasons
from reconciler.protocol.errors import BundleError, LedgerError, LostRace, StoreError
from reconciler.protocol.identity import JobSpec
from reconciler.protocol.lease import Lease
from reconciler.protocol.manifest import LoadedManifest
from reconciler.protocol.schema import HELD, Artifact, Capability, Checkpoint, JobState, Status
from reconciler.protocol.upstream import inputs_of
from reconciler.sdnotify import notify
from reconciler.store.backends import Store, pack_into
from worker import reaper
from worker.beat import Beater, Held, hook_refusal
from worker.checkpoint import CheckpointDir
from worker.fairness import TurnTaking, rival_could_take, waiting_rivals
from worker.metrics import read_metrics, store_log
from worker.pipeline import PipelineSteps
from worker.resources import Reservation, Resources, place, reservation
from worker.runner import Outcome, TrainerRun
from worker.tipmanifest import last_valid_manifest

log = logging.getLogger("trainledger.worker")
MAX_ERROR = 8000
MakeStep = Callable[[JobState], transitions.Step]  # a fenced write: the move, given the state
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


def event(kind: str, **fields: object) -> None:
    """One log line per event, key=value, with the job name and attempt."""
    log.info("event=%s %s", kind, " ".join(f"{k}={v}" for k, v in fields.items()))


class Worker(PipelineSteps):
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
        self._paused_why: str | None = None
        self._refusal: str | None = None  # the hook's last "no" to a write
        self._refusals_logged: set[str] = set()
        self._last_fsck = float("-inf")
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

    # ------------------------------------------------------------------ claim

    def _maybe_claim(self) -> bool:
        """Claim as many eligible jobs as there are free slots, in one push.
        True when nothing was eligible."""
        free = self.config.slots - len(self.runs)
        if self.config.max_jobs is not None:
            free = min(free, self.config.max_jobs - self.claimed_total)
        if free <= 0 or self.stopping.is_set() or self._claims_paused():
            return False
        chosen: list[tuple[JobSpec, transitions.Step]] = []
        upstream: dict[str, dict[str, JobState]] = {}
        devices: dict[str, int | None] = {}
        self.capability = self._judged()
        beats = self._rival_beats()
        rival_waiting = [False]

        def build(snap: Snapshot) -> Proposal | None:
            chosen.clear()
            loaded = self._observe(snap)
            if loaded is None:
                return None
            host = loaded.manifest.hosts.get(self.name)
            eligible = self._eligible(loaded, snap)
            cap, considered, refused = self.capability, set(self.runs), 0
            # each job placed reserves its VRAM/RAM, so a later one of the same claim may
            # no longer fit; only then is a second, wider pick made (pick's randomness
            # among equals is what keeps racing workers apart: keep it for the rest)
            for want in (free, free * 2):
                for spec in eligible.pick(want, self.rng, skip=considered):
                    if len(chosen) == free:
                        break
                    considered.add(spec.job_id)
                    old = snap.states[spec.job_id]
                    if reasons(spec, old, self.name, host, cap, snap.states):
                        refused += 1
                        continue
                    devices[spec.job_id], cap = place(spec, cap)
                    if spec.after:
                        upstream[spec.job_id] = inputs_of(spec, snap.states)
                    chosen.append((spec, transitions.claim(old, self.name)))
                if len(chosen) == free or not refused:
                    break
            if not chosen:
                return None
            lease = self._lease()
            rivals = waiting_rivals(self.name, beats, snap.states, self._ledger_now(),
                                    lease.stale_after_s) if beats else {}
            rival_waiting[0] = bool(rivals) and rival_could_take(
                rivals, [spec for spec, _ in chosen], snap.states, loaded)
            pauses = self.turns.deferrals
            if self.turns.should_yield(rival_waiting[0], self.clock(),
                                       lease.stale_after_s / 4):
                if self.turns.deferrals > pauses:  # once per pause, not once per poll
                    event("claim-yielded", worker=self.name, to=",".join(sorted(rivals)))
                yielded.append(True)
                chosen.clear()
                return None
            return Proposal.of_steps([step for _, step in chosen])

        yielded: list[bool] = []
        outcome = self._write(build, "claim")
        if yielded:
            return False  # not idle: a rival has the turn
        if outcome is None or outcome.commit is None:
            return outcome is not None
        self.turns.claimed(rival_waiting[0])
        for spec, step in chosen:
            event("claim", job=spec.name, attempt=step.new.attempt, worker=self.name,
                  lost_races=outcome.lost_races)
            self.claimed_total += 1
            self._start(spec, step.new.attempt, step.new.checkpoint,
                        upstream.get(spec.job_id, {}), devices.get(spec.job_id))
        self._commit_start([(s.job_id, step.new.attempt) for s, step in chosen])
        self.beater.poke()
        return False

    def _claims_paused(self) -> bool:
        """No claim while beats fail: a claim this worker cannot renew would only
        be self-fenced and released, again and again. Said once per reason.
        (The first claim does not wait for the first beat: that would cost every
        start a beat's round trip.)"""
        beater = self.beater
        if beater.failing_since is None:
            if self._paused_why is not None:
                event("claims-resumed", worker=self.name)
                self._paused_why = None
            return False
        why = f"heartbeat {'refused' if beater.refused else 'failing'}: {beater.last_error}"
        if why != self._paused_why:
            log.warning("event=claims-paused worker=%s reason=%r", self.name, why)
            self._paused_why = why
        return True

    def _ledger_now(self) -> float:
        """The ledger's clock (heartbeat commit times are on it), not the loop's."""
        clock = getattr(self.ledger, "clock", None)
        return clock() if callable(clock) else time.time()

    def _rival_beats(self) -> dict:
        """The fleet's heartbeats, read at most once a heartbeat period (a beat
        changes no faster): what worker/fairness.py judges waiting rivals by."""
        now = self.clock()
        if self.turns.beats_read_at is not None and \
                now - self.turns.beats_read_at < self._heartbeat_s():
            return self.turns.beats
        self.turns.beats_read_at = now
        try:
            self.ledger.fetch(heartbeats=True)
            self.turns.beats = dict(self.ledger.heartbeats())
        except LedgerError:
            pass  # no view of the rivals this time: claim as before
        return self.turns.beats

    def _eligible(self, loaded: LoadedManifest, snap: Snapshot) -> EligibleJobs:
        """The jobs this worker may claim now. reasons() depends only on the spec,
        the state, the host entry and the capability, so the set is kept across
        polls and only the jobs whose state changed since the last snapshot are
        judged again: a poll or a claim costs O(changes), not O(jobs) (bench P4).
        A new manifest or a snapshot that is not the next one of this ledger
        rebuilds it."""
        host = loaded.manifest.hosts.get(self.name)
        last = self._eligible_at
        if last is not None and last[0] == snap.base and last[1] is loaded \
                and last[2] == self.capability:
            # a job waiting on an upstream is judged again when the upstream changes
            ids: Iterable[str] = set(snap.changed).union(
                *(loaded.downstream.get(j, ()) for j in snap.changed))
        else:
            self._eligible_jobs = EligibleJobs()
            ids = loaded.specs
        for job_id in ids:
            spec = loaded.specs.get(job_id)
            if spec is not None and not reasons(spec, snap.states.get(job_id), self.name, host,
                                                self.capability, snap.states):
                self._eligible_jobs.add(spec)
            else:
                self._eligible_jobs.discard(job_id)
        self._eligible_at = (snap.revision, loaded, self.capability)
        return self._eligible_jobs

    def _write(self, build: Callable[[Snapshot], Proposal | None], what: str):
        self._refusal = None
        try:
            outcome = self.ledger.write(build, deadline_s=self._lease().write_deadline_s)
        except LostRace as exc:
            event(f"{what}-gave-up", worker=self.name, lost_races=exc.lost_races)
            return None
        except LedgerError as exc:
            refusal = hook_refusal(exc)
            if refusal is not None:  # a refusal is an answer, not an outage
                self._refusal = refusal
                if refusal not in self._refusals_logged:
                    self._refusals_logged.add(refusal)
                    log.warning("event=write-refused worker=%s during=%s reason=%r", self.name,
                                what, refusal)
                return None
            if self._repair_cache(what, exc):
                return self._write(build, what)
            if self._unreachable_since is None:
                self._unreachable_since = self.clock()
                log.warning("event=ledger-unreachable worker=%s during=%s error=%s", self.name,
                            what, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None
        if self._unreachable_since is not None:
            event("ledger-reachable", worker=self.name,
                  outage_s=f"{self.clock() - self._unreachable_since:.1f}")
            self._unreachable_since = None
        return outcome

    def _repair_cache(self, what: str, exc: LedgerError) -> bool:
        """A failed write while beats land (through their own cache) is not an
        outage: check our cache and re-clone it when damaged. At most once a
        heartbeat, so a real outage costs no fsck per retry."""
        if self.beater.failing_since is not None or self.beater.ok_beats == 0 \
                or self.clock() - self._last_fsck < self._heartbeat_s():
            return False
        self._last_fsck = self.clock()
        damage = cache_damage(self.ledger)
        if damage is None:
            return False
        log.warning("event=cache-broken worker=%s during=%s error=%r damage=%r action=re-clone",
                    self.name, what, (str(exc).splitlines() or [""])[0][:300], damage)
        reclone(self.ledger)
        self._eligible_at = None
        return True

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

    def _record(self, run: TrainerRun, outcome: Outcome) -> None:
        name, attempt = run.spec.name, run.attempt
        if outcome.stopped:
            event("stopped-run", job=name, attempt=attempt, reason=repr(outcome.reason))
            self._forget(run)
        elif outcome.ok:
            self._finish_completed(run)
        else:
            event("trainer-failed", job=name, attempt=attempt, reason=repr(outcome.reason))
            line = run.error_line()
            self._finish_failed(run, f"trainer {outcome.reason}" + (f": {line}" if line else "")
                                + f"\nlog tail:\n{run.log_tail()}", trainer=True)

    def _store_log(self, run: TrainerRun):
        """The attempt's whole log in the store; None (and an event) if it cannot
        go there: a lost log never costs the job its result."""
        try:
            return store_log(self.store(), run.log_path, run.dir, run.attempt)
        except (StoreError, BundleError, OSError, LedgerError) as exc:
            event("log-store-failed", job=run.spec.name, attempt=run.attempt,
                  error=repr(str(exc)))
            return None

    def _finish_completed(self, run: TrainerRun) -> None:
        try:
            artifact = self._put_with_retries(run)
        except BundleError as exc:  # the trainer's own outputs are unsafe: its failure
            event("bundle-refused", job=run.spec.name, attempt=run.attempt, error=repr(str(exc)))
            self._finish_failed(run, f"outputs cannot be bundled: {exc}", trainer=True)
            return
        except StoreError as exc:
            self._store_failed(run, exc)
            return
        metrics, metrics_error = read_metrics(run.output_dir)
        if metrics_error:
            event("metrics-ignored", job=run.spec.name, attempt=run.attempt,
                  reason=repr(metrics_error))
        log_ref = self._store_log(run)
        written = self._fenced({run.spec.job_id: (
            run.attempt, Status.RUNNING,
            lambda s: transitions.complete(s, artifact, metrics=metrics,
                                           metrics_error=metrics_error, log=log_ref))})
        if run.spec.job_id in written:
            event("complete", job=run.spec.name, attempt=run.attempt, sha256=artifact.sha256,
                  size=artifact.size)
        else:
            event("result-discarded", job=run.spec.name, attempt=run.attempt,
                  reason="the job is no longer ours; the bundle stays in the store")
        self._forget(run)

    def _put_with_retries(self, run: TrainerRun, tries: int = 3) -> Artifact:
        for attempt in range(tries):
            try:
                return pack_into(self.store(), run.output_dir, run.dir)
            except StoreError as exc:
                event("store-failed", job=run.spec.name, attempt=run.attempt, error=repr(str(exc)))
                if attempt == tries - 1:
                    raise
                self.sleep(compute_backoff(attempt + 2, rng=self.rng))
        raise AssertionError("unreachable")

    def _store_failed(self, run: TrainerRun, exc: StoreError) -> None:
        """The outputs could not be stored: give the job back spending one claim,
        failed once the budget is spent (the sweep's rule), so a full store
        cannot loop forever."""
        self._give_back(run.spec.job_id, run.attempt, Status.RUNNING,
                        f"store failed on {self.name}: {exc}")
        self._forget(run)

    def _give_back(self, job_id: str, attempt: int, status: Status | None, why: str) -> None:
        """Not the trainer's failure, but one that must not loop forever: one claim
        of max_attempts spent (pending again, or failed once they are spent)."""
        max_attempts = self._lease().max_attempts
        error = why[:MAX_ERROR]
        self._fenced({job_id: (
            attempt, status, lambda s: transitions.give_back(s, error, max_attempts))})

    def _finish_failed(self, run: TrainerRun, error: str, trainer: bool = False) -> None:
        """A trainer failure (exit != 0, timeout, signal, unbundlable outputs) with
        retries left sends the job back to pending; otherwise it fails."""
        log_ref = self._store_log(run) if run.log_path.exists() else None
        if len(error) > MAX_ERROR:  # keep the first line (the error) and the tail
            head, _, rest = error.partition("\n")
            head = head[:MAX_ERROR // 4]
            error = head + "\n" + rest[-(MAX_ERROR - len(head) - 1):]
        moved: dict[str, str] = {}

        def make(s: JobState) -> transitions.Step:
            if trainer and s.failures < run.spec.retries:
                step = transitions.retry(s, error, log=log_ref)
            elif trainer:
                step = transitions.fail_trainer(s, error, log=log_ref)
            else:
                step = transitions.fail(s, error, log=log_ref)
            moved["meaning"], moved["failures"] = step.move.value, str(step.new.failures)
            return step

        written = self._fenced({run.spec.job_id: (run.attempt, None, make)})
        if run.spec.job_id in written:
            event(moved["meaning"], job=run.spec.name, attempt=run.attempt,
                  failures=f"{moved['failures']}/{run.spec.retries}")
        self._forget(run)

    def _release(self, jobs: dict[str, tuple[int, str]], count: bool,
                 checkpoints: dict[str, Artifact] | None = None) -> None:
        """Give jobs back; a graceful release records the checkpoint it just saved."""
        saved = checkpoints or {}

        self._fenced({
            job_id: (attempt, None,
                     lambda s, why=why: transitions.release(s, why, spend=count,
                                                            checkpoint=saved.get(s.job_id)))
            for job_id, (attempt, why) in jobs.items()})

    def _forget(self, run: TrainerRun) -> None:
        """The local checkpoint dir goes too: a next attempt, here or elsewhere,
        starts from the one the ledger recorded."""
        if self.runs.get(run.spec.job_id) is run:
            del self.runs[run.spec.job_id]
        ckpt = self.checkpoints.pop(run.spec.job_id, None)
        if ckpt is not None:
            ckpt.drop()
        shutil.rmtree(run.dir, ignore_errors=True)

    # ---------------------------------------------------------- fenced writes

    def _fenced(self, updates: dict[str, tuple[int, Status | None, MakeStep]]) -> set[str]:
        """Write the move `make(state)` for each job still held by us at that attempt (and,
        if given, in that status); returns the jobs written. Retried (lost races,
        outages) for as long as our lease lives: once the heartbeat has been
        failing past the renew deadline, or the job was revoked, the reconciler
        owns the job again and the write is dropped."""
        written: set[str] = set()

        def build(snap: Snapshot) -> Proposal | None:
            written.clear()
            steps = []
            for job_id, (attempt, status, make) in updates.items():
                cur = snap.states.get(job_id)
                if (cur is None or cur.holder != self.name or cur.attempt != attempt
                        or cur.status not in HELD or (status and cur.status is not status)):
                    continue
                steps.append(make(cur))
                written.add(job_id)
            return Proposal.of_steps(steps) if steps else None

        tries, first_failure = 0, None
        while True:
            outcome = self._write(build, "record")
            if outcome is not None:
                return written if outcome.commit else set()
            if first_failure is None:
                first_failure = self.clock()
            lease_lost = self._lease().lease_lost(self.clock() - self.beater.last_ok)
            with self._lock:
                revoked = any(j == job_id for j, _ in self._revoked for job_id in updates)
            # Beats landing while writes fail past the renew deadline: the lease
            # would outlive our ability to write, so give the job up instead.
            stuck = (self.clock() - first_failure > self._lease().renew_deadline_s
                     and self._unreachable_since is not None and not lease_lost)
            why = (f"the ledger refused the write: {self._refusal}" if self._refusal
                   else "writes failing for over 2/3 of stale_after_s while heartbeats "
                   "land" if stuck else None)
            if why is not None:
                self._give_up(list(updates), why)
                return set()
            if lease_lost or revoked or self.stopping.is_set():
                return set()
            self.sleep(compute_backoff(tries + 3, rng=self.rng))
            tries += 1

    def _give_up(self, job_ids: list[str], why: str) -> None:
        """Stop beating for these jobs (the reconciler sweeps them once silent) and
        say exactly why, once per job."""
        for job_id in job_ids:
            run = self.runs.get(job_id)
            name = run.spec.name if run else job_id
            log.warning("event=gave-up job=%s attempt=%s worker=%s reason=%r", name,
                        run.attempt if run else "?", self.name, why)
            if run is not None:
                self._on_revoked(job_id, run.attempt, f"gave up: {why}")
