"""Choosing and claiming jobs, kept out of worker/daemon.py's loop: the jobs
this worker may claim now (kept across polls, judged again only where the
ledger changed), each placed on a device or the CPU so the next one of the
same claim sees what is left, all of them claimed in one compare-and-swap
push, unless a waiting rival has the turn (worker/fairness.py) or failing
heartbeats pause claims.

`ClaimSteps` is mixed into `Worker` and runs on its main thread, which alone
claims and starts trainers; it uses the Worker's state (ledger, beater, turns,
capability, fenced writes) and hands each claimed job to `Worker._start`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from reconciler.git.push import Proposal
from reconciler.git.snapshot import Snapshot
from reconciler.protocol import transitions
from reconciler.protocol.eligibility import EligibleJobs, reasons
from reconciler.protocol.errors import LedgerError
from reconciler.protocol.identity import JobSpec
from reconciler.protocol.manifest import LoadedManifest
from reconciler.protocol.schema import JobState
from reconciler.protocol.upstream import inputs_of
from worker.events import event, log
from worker.fairness import rival_could_take, waiting_rivals
from worker.resources import place


class ClaimSteps:
    """A Worker's claims: which eligible jobs, into which free slots, when."""

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
