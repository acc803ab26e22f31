"""Recording a trainer's end: the bundle and its log into the store, then the
result (complete, retry, fail, give back or release) by a fenced write.
`ResultSteps` is mixed into `Worker`, whose state it uses.
"""

from __future__ import annotations

import shutil

from reconciler.git.push import compute_backoff
from reconciler.protocol import transitions
from reconciler.protocol.errors import BundleError, LedgerError, StoreError
from reconciler.protocol.schema import Artifact, JobState, Status
from reconciler.store.backends import pack_into
from worker.events import event
from worker.metrics import read_metrics, store_log
from worker.runner import Outcome, TrainerRun

MAX_ERROR = 8000


class ResultSteps:
    """A finished attempt of a Worker, stored and recorded."""

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
