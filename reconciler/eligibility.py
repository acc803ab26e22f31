"""May this worker take this job now, and if not, why: pure, no I/O, no clock.

Workers call `reasons` to pick, `worker explain` shows them, and `reconciler
status` asks `fleet_reasons` why no live worker can take a pending job (the
question HTCondor answers with `condor_q -analyze`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from reconciler.identity import JobSpec
from reconciler.manifest import LoadedManifest
from reconciler.schema import Capability, Host, JobState, Status

PREFER_CUDA_WAIT = ("prefer_cuda: waiting for a CUDA worker until the reconciler opens it "
                    "to CPU workers")


def _matches(spec: JobSpec, patterns: list[str]) -> bool:
    return any(fnmatchcase(spec.name, p) or fnmatchcase(spec.model, p) for p in patterns)


def reasons(spec: JobSpec, state: JobState | None, worker: str, host: Host | None,
            cap: Capability) -> list[str]:
    """Every reason this worker may not take the job now; empty means it may."""
    out = []
    if state is None:
        out.append("no state yet (the reconciler has not created it)")
    elif state.status is not Status.PENDING:
        out.append(f"status is {state.status.value}")
    if spec.cancel:
        out.append("cancelled in the manifest")
    out += host_reasons(spec, worker, host)
    out += capability_reasons(spec, cap, cpu_ok=bool(state and state.cpu_ok))
    return out


def host_reasons(spec: JobSpec, worker: str, host: Host | None) -> list[str]:
    out = []
    if host is not None and host.allow_jobs is not None and not _matches(spec, host.allow_jobs):
        out.append(f"host {worker}: allow_jobs {host.allow_jobs} does not match "
                   f"{spec.name} or model {spec.model}")
    if host is not None and _matches(spec, host.deny_jobs):
        out.append(f"host {worker}: deny_jobs matches {spec.name}")
    if spec.allowed_hosts is not None and worker not in spec.allowed_hosts:
        out.append(f"allowed_hosts {list(spec.allowed_hosts)} excludes {worker}")
    if worker in spec.denied_hosts:
        out.append(f"denied_hosts includes {worker}")
    return out


def capability_reasons(spec: JobSpec, cap: Capability, cpu_ok: bool) -> list[str]:
    """A prefer_cuda job runs on a CUDA device with enough free VRAM, or, once the
    reconciler has opened it (`cpu_ok`), on the CPU, where VRAM does not matter."""
    out = []
    has_cuda = cap.cuda_available and bool(cap.cuda_devices)
    vram_ok = cap.best_free_vram_gib >= spec.min_vram_gib
    need_vram = (f"needs {spec.min_vram_gib:g} GiB free VRAM, best device has "
                 f"{cap.best_free_vram_gib:.1f}")
    if spec.require_cuda:
        if not has_cuda:
            out.append("require_cuda but no CUDA device")
        elif not vram_ok:
            out.append(need_vram)
    elif spec.prefer_cuda:
        if not (has_cuda and vram_ok) and not cpu_ok:
            out.append(need_vram if has_cuda else PREFER_CUDA_WAIT)
    elif spec.min_vram_gib > 0 and not vram_ok:
        out.append(need_vram)
    if spec.min_ram_gib > cap.ram_available_gib:
        out.append(f"needs {spec.min_ram_gib:g} GiB available RAM, host has "
                   f"{cap.ram_available_gib:.1f}")
    if spec.min_cores > cap.cpu_cores:
        out.append(f"needs {spec.min_cores} cores, host has {cap.cpu_cores}")
    return out


def choose_device(spec: JobSpec, cap: Capability) -> int | None:
    """The CUDA device with the most free VRAM that meets the job, None for CPU."""
    if not cap.cuda_available or not (spec.require_cuda or spec.prefer_cuda
                                      or spec.min_vram_gib > 0):
        return None
    fit = [d for d in cap.cuda_devices if d.vram_free_gib >= spec.min_vram_gib]
    if not fit:
        return None
    return max(fit, key=lambda d: (d.vram_free_gib, -d.index)).index


def pick(candidates: list[JobSpec], slots: int, rng: random.Random) -> list[JobSpec]:
    """Highest priority first, then oldest (manifest order); but among jobs of the
    same priority the pick is random, so workers racing for the same tip rarely
    want the same job (DESIGN.md "Contention"). Strict age order within a
    priority is traded for fewer lost races."""
    if slots <= 0 or not candidates:
        return []
    ranked = sorted(candidates, key=lambda s: (-s.priority, s.index))
    chosen: list[JobSpec] = []
    i = 0
    while i < len(ranked) and len(chosen) < slots:
        j = i
        while j < len(ranked) and ranked[j].priority == ranked[i].priority:
            j += 1
        tier = ranked[i:j]
        chosen += rng.sample(tier, min(slots - len(chosen), len(tier)))
        i = j
    return chosen


def fleet_reasons(spec: JobSpec, state: JobState | None,
                  workers: Mapping[str, tuple[Host | None, Capability]]) -> list[str]:
    """Why no live worker can take a pending job; empty when one can."""
    if not workers:
        return ["no live worker"]
    per_worker = {name: reasons(spec, state, name, host, cap)
                  for name, (host, cap) in workers.items()}
    if any(not r for r in per_worker.values()):
        return []
    if spec.require_cuda and not any(c.cuda_available for _, c in workers.values()):
        return ["no worker with CUDA"]
    if all(PREFER_CUDA_WAIT in r for r in per_worker.values()):
        return [PREFER_CUDA_WAIT]
    return [f"{name}: {'; '.join(r)}" for name, r in sorted(per_worker.items())]


def explain(loaded: LoadedManifest, states: Mapping[str, JobState], worker: str,
            cap: Capability) -> list[dict[str, Any]]:
    """`worker explain`: every pending job (or one with no state yet) and why not."""
    host = loaded.manifest.hosts.get(worker)
    rows = []
    for spec in loaded.specs.values():
        state = states.get(spec.job_id)
        if state is not None and state.status is not Status.PENDING:
            continue
        why = reasons(spec, state, worker, host, cap)
        rows.append({"job_id": spec.job_id, "name": spec.name, "eligible": not why,
                     "reasons": why})
    return rows
