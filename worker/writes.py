"""The worker's writes to main, fenced: each lands only while the ledger still
names this worker and this attempt, is retried through lost races and outages
for as long as the lease lives, and is given up (and said why) when the hook
refuses it or writes keep failing while beats land. A damaged ledger cache is
re-cloned. `FencedWrites` is mixed into `Worker`, whose state it uses.
"""

from __future__ import annotations

from collections.abc import Callable

from reconciler.git.push import Proposal, compute_backoff
from reconciler.git.snapshot import Snapshot
from reconciler.protocol import transitions
from reconciler.protocol.errors import LedgerError, LostRace
from reconciler.protocol.schema import HELD, JobState, Status
from worker.beat import hook_refusal
from worker.events import event, log

MakeStep = Callable[[JobState], transitions.Step]  # a fenced write: the move, given the state


class FencedWrites:
    """Compare-and-swap writes of a Worker, fenced by holder and attempt."""

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
            self._write_error = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            if self._unreachable_since is None:
                self._unreachable_since = self.clock()
                log.warning("event=ledger-unreachable worker=%s during=%s error=%s", self.name,
                            what, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None
        self._recloned_at = self._cache_hopeless = None  # a write landed: the cache works
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
        damage = self.ledger.repair_cache()
        if damage is None:
            return False
        # damaged again after a re-clone with no write landed in between: a disk
        # that corrupts what is written to it; waiting helps no more than retrying
        hopeless = (self._recloned_at is not None
                    and self.clock() - self._recloned_at < self._lease().renew_deadline_s)
        log.warning("event=cache-broken worker=%s during=%s error=%r damage=%r action=%s",
                    self.name, what, (str(exc).splitlines() or [""])[0][:300], damage,
                    "give-up" if hopeless else "re-clone")
        if hopeless:
            self._cache_hopeless = f"the ledger cache stays damaged after a re-clone: {damage}"
            return False
        self._recloned_at = self.clock()
        self._eligible_at = None
        return True

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
                   else self._cache_hopeless if self._cache_hopeless
                   else "writes failing for over 2/3 of stale_after_s while heartbeats "
                   f"land: {self._write_error}" if stuck else None)
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
