"""The worker's pipeline steps, kept out of the claim/run/record loop of
worker/daemon.py: before a trainer starts, its upstream artifacts
($TRAINLEDGER_INPUTS) and its job's recorded checkpoint are fetched, verified
and unpacked; while it runs, its checkpoint dir is saved into the store and
recorded by a fenced commit every `checkpoint_every_s`.

`PipelineSteps` is mixed into `Worker`, whose state (config, store, fenced
writes, clock) it uses.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.protocol import transitions
from reconciler.protocol.errors import BundleError, StoreError
from reconciler.protocol.identity import JobSpec
from reconciler.protocol.schema import Artifact, Checkpoint, JobState, Status
from worker.checkpoint import CheckpointDir
from worker.events import event
from worker.inputs import prepare_inputs

if TYPE_CHECKING:
    from worker.runner import TrainerRun



class PipelineSteps:
    """Inputs, checkpoint restore and checkpoint saves of a Worker."""

    def _prepare(self, spec: JobSpec, attempt: int, attempt_dir: Path,
                 checkpoint: Checkpoint | None, upstream: dict[str, JobState]
                 ) -> dict[str, str] | None:
        """Unpack the upstream artifacts and the recorded checkpoint (both
        verified); the trainer's extra environment, or None when a bundle could
        not be had (the job is given back, spending one claim: not the
        trainer's failure, and a store that stays broken cannot loop forever)."""
        tmp = self.config.state_dir / "tmp"
        ckpt = CheckpointDir(self.config.state_dir / "checkpoints", spec.job_id)
        env = {"TRAINLEDGER_CHECKPOINT_DIR": str(ckpt.path)}
        what = "inputs"
        try:
            if spec.after:
                names = prepare_inputs(self.store(), upstream, attempt_dir / "inputs", tmp)
                env["TRAINLEDGER_INPUTS"] = str(attempt_dir / "inputs")
                event("inputs", job=spec.name, attempt=attempt, upstream=",".join(names))
            what = f"checkpoint of attempt {checkpoint.attempt}" if checkpoint else "checkpoint"
            resumed = ckpt.restore(self.store(), checkpoint, tmp)
        except (StoreError, BundleError, OSError) as exc:
            event("prepare-failed", job=spec.name, attempt=attempt, error=repr(str(exc)))
            shutil.rmtree(attempt_dir, ignore_errors=True)
            self._give_back(spec.job_id, attempt, None,
                            f"{what} could not be unpacked on {self.name}: {exc}")
            return None
        if resumed is not None:
            env["TRAINLEDGER_RESUMED_FROM"] = str(resumed)
            event("resume", job=spec.name, attempt=attempt, checkpoint_attempt=resumed,
                  sha256=checkpoint.sha256 if checkpoint else "")
        ckpt.last_save_at = self.clock()
        self.checkpoints[spec.job_id] = ckpt
        return env

    def _save_checkpoint(self, run: TrainerRun, final: bool = False) -> Artifact | None:
        """Bundle the run's checkpoint dir into the store if it is due (or `final`)
        and changed; None when nothing was saved. A failed save is tried again at
        the next tick."""
        ckpt = self.checkpoints.get(run.spec.job_id)
        fleet = self._fleet()
        every = fleet.checkpoint_every_s if fleet else 600.0
        if ckpt is None or (not final and (every <= 0
                                           or self.clock() - ckpt.last_save_at < every)):
            return None
        try:
            artifact = ckpt.save(self.store(), self.config.state_dir / "tmp", self.clock())
        except (StoreError, BundleError, OSError) as exc:
            event("checkpoint-skipped", job=run.spec.name, attempt=run.attempt,
                  error=repr(str(exc)))
            return None
        if artifact is not None:
            event("checkpoint-saved", job=run.spec.name, attempt=run.attempt,
                  sha256=artifact.sha256, size=artifact.size)
        return artifact

    def _save_checkpoints(self) -> None:
        """Every checkpoint_every_s, record each changed checkpoint dir in the
        job's state by a fenced commit (running -> running, "checkpoint")."""
        updates = {}
        for run in list(self.runs.values()):
            artifact = self._save_checkpoint(run)
            if artifact is not None:
                updates[run.spec.job_id] = (
                    run.attempt, Status.RUNNING,
                    lambda s, a=artifact: transitions.record_checkpoint(s, a.sha256, a.size))
        if updates:
            for job_id in self._fenced(updates):
                event("checkpoint", job=self.runs[job_id].spec.name if job_id in self.runs
                      else job_id, attempt=updates[job_id][0])
