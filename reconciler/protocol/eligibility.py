"""May this worker take this job now, and if not, why: pure, no I/O, no clock.

Workers call `reasons` and `pick` to choose what to claim, `worker explain`
shows every verdict, and `reconciler status` asks `fleet_reasons` why no live
worker can take a pending job (the question HTCondor answers with
`condor_q -analyze`). Every rule yields its own human sentence and all of them
are collected, so an operator fixes everything in one edit, not one per poll.

Decisions where the manifest is silent:

- `allow_jobs` / `deny_jobs` are globs matched case-sensitively (`fnmatchcase`)
  against the job's name or its model, the same on every OS. `allow_jobs = []`
  is no whitelist (all jobs allowed), as the seed fleet read it; to take no
  jobs, use `deny_jobs = ["*"]`.
- `min_vram_gib` on a job without `require_cuda`/`prefer_cuda` still needs a
  CUDA device with that much free VRAM: asking for VRAM means asking for a GPU.
- `prefer_cuda`: a CUDA worker whose best device has enough free VRAM may take
  it at once; anyone else waits until the reconciler sets `cpu_ok`, after which
  it runs on the CPU (where VRAM does not matter).
- A job that asks nothing of CUDA runs with no device (`choose_device` is
  None), so jobs that did not ask for a GPU never share one by accident.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from reconciler.protocol.identity import JobSpec
from reconciler.protocol.manifest import LoadedManifest
from reconciler.protocol.schema import Capability, Host, JobState, Status
from reconciler.protocol.upstream import upstream_reasons

NO_STATE = "no state yet (the reconciler has not created it)"
CANCELLED = "cancelled in the manifest"
NO_CUDA = "require_cuda but no CUDA device"
PREFER_CUDA_WAIT = ("prefer_cuda: waiting for a CUDA worker until the reconciler opens it "
                    "to CPU workers")
NO_LIVE_WORKER = "no live worker"
NO_CUDA_WORKER = "no worker with CUDA"


def gib(value: float) -> str:
    """4 -> '4.0', 1.5 -> '1.5', 0.25 -> '0.25': one decimal at least, two at most."""
    text = f"{value:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _matches(spec: JobSpec, patterns: list[str]) -> list[str]:
    return [p for p in patterns if fnmatchcase(spec.name, p) or fnmatchcase(spec.model, p)]


def reasons(spec: JobSpec, state: JobState | None, worker: str, host: Host | None,
            cap: Capability, states: Mapping[str, JobState] | None = None) -> list[str]:
    """Every reason this worker may not take the job now; empty means it may.
    `states` (every job's state) is needed for a job with `after`: without it,
    such a job is never eligible."""
    return (job_reasons(spec, state, states) + host_reasons(spec, worker, host)
            + capability_reasons(spec, cap, cpu_ok=state is not None and state.cpu_ok))


def job_reasons(spec: JobSpec, state: JobState | None,
                states: Mapping[str, JobState] | None = None) -> list[str]:
    """Reasons that hold for every worker alike (state, manifest, upstream jobs)."""
    out = upstream_reasons(spec, states or {}) if spec.after else []
    if state is None:
        out.append(NO_STATE)
    elif state.status != Status.PENDING:
        out.append(f"status is {Status(state.status).value}")
    if spec.cancel:
        out.append(CANCELLED)
    return out


def host_reasons(spec: JobSpec, worker: str, host: Host | None) -> list[str]:
    """The host's [hosts.<worker>] policy and the job's allowed/denied hosts."""
    out = []
    if host is not None and (host.drain or host.retired):
        out.append(f"[hosts.{worker}] {'retired' if host.retired else 'drain'} = true: "
                   "it claims nothing more")
    if host is not None and host.allow_jobs and not _matches(spec, host.allow_jobs):
        out.append(f"[hosts.{worker}] allow_jobs {host.allow_jobs} matches neither name "
                   f"{spec.name!r} nor model {spec.model!r}")
    if host is not None and (denied := _matches(spec, host.deny_jobs)):
        out.append(f"[hosts.{worker}] deny_jobs {denied} matches {spec.name!r} "
                   f"or model {spec.model!r}")
    if spec.allowed_hosts is not None and worker not in spec.allowed_hosts:
        out.append(f"allowed_hosts {list(spec.allowed_hosts)} does not include {worker}")
    if worker in spec.denied_hosts:
        out.append(f"denied_hosts includes {worker}")
    return out


def _cuda_devices(cap: Capability) -> list[Any]:
    """Devices count only when the capability also says CUDA works."""
    return list(cap.cuda_devices) if cap.cuda_available else []


def capability_reasons(spec: JobSpec, cap: Capability, cpu_ok: bool) -> list[str]:
    """CUDA, VRAM, RAM and cores against what the job asks."""
    out = []
    devices = _cuda_devices(cap)
    best = max((d.vram_free_gib for d in devices), default=0.0)
    vram_ok = best >= spec.min_vram_gib
    need_vram = f"needs {gib(spec.min_vram_gib)} GiB free VRAM, " + (
        f"best device has {gib(best)}" if devices else "no CUDA device")
    if spec.require_cuda:
        if not devices:
            out.append(NO_CUDA)
        elif not vram_ok:
            out.append(need_vram)
    elif spec.prefer_cuda:
        if not cpu_ok and not (devices and vram_ok):
            out.append(need_vram if devices else PREFER_CUDA_WAIT)
    elif spec.min_vram_gib > 0 and not (devices and vram_ok):
        out.append(need_vram)
    if spec.min_ram_gib > cap.ram_available_gib:
        out.append(f"needs {gib(spec.min_ram_gib)} GiB available RAM, host has "
                   f"{gib(cap.ram_available_gib)}")
    if spec.min_cores > cap.cpu_cores:
        out.append(f"needs {spec.min_cores} cores, host has {cap.cpu_cores}")
    return out


def choose_device(spec: JobSpec, cap: Capability) -> int | None:
    """The CUDA device with the most free VRAM that meets `min_vram_gib` (lowest
    index on a tie), or None: run on the CPU. Only jobs that ask for CUDA
    (require, prefer or a VRAM minimum) get a device."""
    if not (spec.require_cuda or spec.prefer_cuda or spec.min_vram_gib > 0):
        return None
    fit = [d for d in _cuda_devices(cap) if d.vram_free_gib >= spec.min_vram_gib]
    if not fit:
        return None
    return max(fit, key=lambda d: (d.vram_free_gib, -d.index)).index


def pick(candidates: list[JobSpec], slots: int, rng: random.Random) -> list[JobSpec]:
    """Up to `slots` jobs to claim in one push: highest priority first; within
    one priority, a random choice rather than the oldest.

    Trade-off (docs/architecture.md): workers racing from the same tip that
    all want the oldest job lose a push each, and lost races are what collapse
    claim throughput and load the Pi. A random pick among equals makes racers
    rarely collide. The price is that age order inside a priority is only
    statistical: an old job is no more likely to be picked than a new one of
    the same priority, and waits longer only by chance. Priority is strict:
    no lower-priority job is picked while a higher one is left over.
    The order returned is the claim order (priority desc, then manifest order).
    """
    return EligibleJobs(candidates).pick(slots, rng)


class EligibleJobs:
    """The jobs a worker may claim, kept across polls and changed job by job, so
    that choosing costs O(slots + priorities), not O(jobs): a worker on a
    100,000-job ledger must not sort them all to claim one (bench P4)."""

    def __init__(self, specs: Iterable[JobSpec] = ()) -> None:
        self._tiers: dict[int, _Bag] = {}
        self._priority: dict[str, int] = {}
        for spec in specs:
            self.add(spec)

    def __len__(self) -> int:
        return len(self._priority)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._priority

    def add(self, spec: JobSpec) -> None:
        self.discard(spec.job_id)
        self._priority[spec.job_id] = spec.priority
        self._tiers.setdefault(spec.priority, _Bag()).add(spec)

    def discard(self, job_id: str) -> None:
        priority = self._priority.pop(job_id, None)
        if priority is not None:
            tier = self._tiers[priority]
            tier.discard(job_id)
            if not tier.items:
                del self._tiers[priority]

    def pick(self, slots: int, rng: random.Random,
             skip: Collection[str] = frozenset()) -> list[JobSpec]:
        """pick()'s choice over this set, leaving out the ids in `skip` (what this
        worker already runs)."""
        chosen: list[JobSpec] = []
        for priority in sorted(self._tiers, reverse=True):
            need = slots - len(chosen)
            if need <= 0:
                break
            items = self._tiers[priority].items
            # at most len(skip) of the sample are dropped, so `need` survive if they exist
            k = min(len(items), need + len(skip))
            taken = [items[i] for i in rng.sample(range(len(items)), k)]
            taken = [s for s in taken if s.job_id not in skip][:need]
            chosen += sorted(taken, key=lambda s: s.index)
        return chosen


class _Bag:
    """A set with O(1) add, remove and random access (swap-remove)."""

    def __init__(self) -> None:
        self.items: list[JobSpec] = []
        self._at: dict[str, int] = {}

    def add(self, spec: JobSpec) -> None:
        self._at[spec.job_id] = len(self.items)
        self.items.append(spec)

    def discard(self, job_id: str) -> None:
        i = self._at.pop(job_id, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self._at[last.job_id] = i


def fleet_reasons(spec: JobSpec, state: JobState | None,
                  workers: Mapping[str, tuple[Host | None, Capability]],
                  states: Mapping[str, JobState] | None = None) -> list[str]:
    """Why no live worker can take a pending job; empty when one can.

    Reasons common to the whole fleet are said once (the job's own, "no live
    worker", "no worker with CUDA", the prefer_cuda wait); otherwise one line
    per worker, `<worker>: <reason>; <reason>`, sorted by worker name.
    """
    common = job_reasons(spec, state, states)
    if common:
        return common
    if not workers:
        return [NO_LIVE_WORKER]
    per_worker = {name: reasons(spec, state, name, host, cap)
                  for name, (host, cap) in workers.items()}
    if any(not r for r in per_worker.values()):
        return []
    if spec.require_cuda and not any(_cuda_devices(cap) for _, cap in workers.values()):
        return [NO_CUDA_WORKER]
    if all(r == [PREFER_CUDA_WAIT] for r in per_worker.values()):
        return [PREFER_CUDA_WAIT]
    return [f"{name}: {'; '.join(r)}" for name, r in sorted(per_worker.items())]


def explain(loaded: LoadedManifest, states: Mapping[str, JobState], worker: str,
            cap: Capability) -> list[dict[str, Any]]:
    """`worker explain --json` rows, in manifest order, for every pending job and
    every job with no state yet: `{job_id, name, eligible, reasons}`."""
    host = loaded.manifest.hosts.get(worker)
    rows = []
    for spec in loaded.specs.values():
        state = states.get(spec.job_id)
        if state is not None and state.status != Status.PENDING:
            continue
        why = reasons(spec, state, worker, host, cap, states)
        rows.append({"job_id": spec.job_id, "name": spec.name, "eligible": not why,
                     "reasons": why})
    return rows
