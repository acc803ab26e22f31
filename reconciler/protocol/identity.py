"""A job's identity and its fully resolved spec.

The id is 16 hex chars of sha256 over what defines the trained artifact
(`model`, `mode`, `hyper`, `split_recipe`, `train_hosts`, `seed`), after
[defaults] are applied. Scheduling fields and the trainer's command are left
out on purpose: moving a script or raising a priority must not retrain the fleet.
A job with `after` adds the sorted ids of its upstream jobs under "after" (a job
without upstreams hashes exactly as before), so retraining an upstream with new
hyper makes a new downstream job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from reconciler.protocol.schema import Defaults, Job, Trainer

IDENTITY_FIELDS = ("model", "mode", "hyper", "split_recipe", "train_hosts", "seed")


@dataclass(frozen=True)
class JobSpec:
    """A job with defaults applied: what eligibility, workers and status use."""

    job_id: str
    index: int
    name: str
    model: str
    mode: str | None
    priority: int
    require_cuda: bool
    prefer_cuda: bool
    min_vram_gib: float
    min_ram_gib: float
    min_cores: int
    allowed_hosts: tuple[str, ...] | None
    denied_hosts: tuple[str, ...]
    hyper: dict[str, Any] = field(hash=False)
    split_recipe: str | None
    train_hosts: tuple[str, ...] | None
    seed: int
    n_resamples: int | None
    cancel: bool
    command: tuple[str, ...]
    workdir: str | None
    timeout_s: float | None
    retries: int = 0
    after: tuple[str, ...] = ()  # upstream job ids, sorted
    after_names: tuple[str, ...] = ()  # upstream job names, in the same order
    sweep: str | None = None  # the [[sweeps]] it came from
    env: dict[str, str] = field(default_factory=dict, hash=False)  # [trainers.X] env

    def identity(self) -> dict[str, Any]:
        out = {
            "model": self.model,
            "mode": self.mode,
            "hyper": self.hyper,
            "split_recipe": self.split_recipe,
            "train_hosts": list(self.train_hosts) if self.train_hosts is not None else None,
            "seed": self.seed,
        }
        if self.after:
            out["after"] = list(self.after)
        return out

    def to_json(self) -> dict[str, Any]:
        """The spec a trainer reads from $TRAINLEDGER_SPEC."""
        return {
            "job_id": self.job_id,
            "name": self.name,
            **self.identity(),
            "n_resamples": self.n_resamples,
            "priority": self.priority,
            "after": list(self.after_names),
        }


def job_id_of(spec_or_identity: JobSpec | dict[str, Any]) -> str:
    identity = (
        spec_or_identity.identity() if isinstance(spec_or_identity, JobSpec) else spec_or_identity
    )
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def resolve(job: Job, defaults: Defaults, trainer: Trainer, index: int = 0,
            upstream: dict[str, str] | None = None, sweep: str | None = None) -> JobSpec:
    """Apply [defaults]; the id is computed before the spec is built, so a
    100,000-job manifest builds each (frozen, slow to copy) spec once.
    `upstream` maps the names of the jobs this one runs after to their ids."""
    def pick(name: str, fallback: Any) -> Any:
        value = getattr(job, name)
        if value is None:
            value = getattr(defaults, name)
        return fallback if value is None else value

    allowed = pick("allowed_hosts", None)
    train_hosts = pick("train_hosts", None)
    mode, split_recipe, seed = pick("mode", None), pick("split_recipe", None), pick("seed", 0)
    hyper = dict(job.hyper)
    ups = sorted((upstream or {}).items(), key=lambda item: item[1])
    identity = {
        "model": job.model, "mode": mode, "hyper": hyper, "split_recipe": split_recipe,
        "train_hosts": list(train_hosts) if train_hosts is not None else None, "seed": seed,
    }
    if ups:
        identity["after"] = [job_id for _, job_id in ups]
    job_id = job_id_of(identity)
    timeout = job.timeout_s if job.timeout_s is not None else defaults.timeout_s

    return JobSpec(
        job_id=job_id,
        index=index,
        name=job.name,
        model=job.model,
        mode=mode,
        priority=pick("priority", 0),
        require_cuda=pick("require_cuda", False),
        prefer_cuda=pick("prefer_cuda", False),
        min_vram_gib=pick("min_vram_gib", 0.0),
        min_ram_gib=pick("min_ram_gib", 0.0),
        min_cores=pick("min_cores", 0),
        allowed_hosts=tuple(allowed) if allowed is not None else None,
        denied_hosts=tuple(pick("denied_hosts", ())),
        hyper=hyper,
        split_recipe=split_recipe,
        train_hosts=tuple(train_hosts) if train_hosts is not None else None,
        seed=seed,
        n_resamples=pick("n_resamples", None),
        cancel=job.cancel,
        command=tuple(trainer.command),
        workdir=trainer.workdir,
        timeout_s=timeout if timeout is not None else trainer.timeout_s,
        retries=pick("retries", 0),
        after=tuple(job_id for _, job_id in ups),
        after_names=tuple(name for name, _ in ups),
        sweep=sweep,
        env=trainer.env,  # one dict per trainer, shared by its jobs
    )
