"""`after` at run time: is every upstream job completed, and if not, which one
a job waits for or is blocked by. Pure, like eligibility.py, which asks it."""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.protocol.identity import JobSpec
from reconciler.protocol.state import JobState, Status

BLOCKING = frozenset({Status.FAILED, Status.CANCELLED})
SHOWN = 3  # upstream names said in one reason; the rest are counted


def upstream_reasons(spec: JobSpec, states: Mapping[str, JobState]) -> list[str]:
    """Empty when every upstream is completed. Otherwise "blocked: ..." for the
    failed or cancelled ones (the job runs once they are requeued and complete)
    and "waiting for upstream ..." for the others."""
    blocked, waiting = [], []
    for job_id, name in zip(spec.after, spec.after_names, strict=True):
        state = states.get(job_id)
        if state is None:
            waiting.append(f"{name!r} (no state yet)")
        elif state.status in BLOCKING:
            blocked.append(f"{name!r} {state.status.value}")
        elif state.status is not Status.COMPLETED:
            waiting.append(f"{name!r} ({state.status.value})")
    out = []
    if blocked:
        out.append(f"blocked: upstream {_some(blocked)} (requeue it to run this job)")
    if waiting:
        out.append(f"waiting for upstream {_some(waiting)}")
    return out


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown if len(items) <= SHOWN else f"{shown} and {len(items) - SHOWN} more"


def inputs_of(spec: JobSpec, states: Mapping[str, JobState]) -> dict[str, JobState]:
    """Upstream name -> its completed state (the artifact to hand the trainer)."""
    out = {}
    for job_id, name in zip(spec.after, spec.after_names, strict=True):
        state = states.get(job_id)
        if state is not None and state.status is Status.COMPLETED:
            out[name] = state
    return out
