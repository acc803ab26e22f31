"""Record what the reconciler sees, on its own monotonic clock (docs/architecture.md: liveness
is judged on one clock). A worker's timestamps are never read here."""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.daemon.plan import Observations
from reconciler.git.snapshot import HeartbeatRecord
from reconciler.protocol.state import HELD, JobState, Status


def observe(obs: Observations, states: Mapping[str, JobState],
            beats: Mapping[str, HeartbeatRecord], now: float) -> None:
    """Note first sightings: each held (job, attempt, status), each new heartbeat
    value and the jobs it lists, and when each job became pending."""
    held = {(s.job_id, s.attempt, s.status.value) for s in states.values() if s.status in HELD}
    for key in held:
        obs.held_seen.setdefault(key, now)
    for key in list(obs.held_seen):
        if key not in held:
            del obs.held_seen[key]
    for job_id, state in states.items():
        if state.status is Status.PENDING:
            obs.pending_seen.setdefault(job_id, now)
        else:
            obs.pending_seen.pop(job_id, None)
    for worker, record in beats.items():
        seen = obs.beat_seen.get(worker)
        if seen is None or seen[0] != record.sha:
            obs.beat_seen[worker] = (record.sha, now)
            jobs = record.beat.jobs if record.beat else []
            obs.beat_jobs[worker] = frozenset((j.job_id, j.attempt) for j in jobs)
    for worker in list(obs.beat_seen):
        if worker not in beats:
            del obs.beat_seen[worker]
            obs.beat_jobs.pop(worker, None)


def live_workers(obs: Observations, now: float, stale_after_s: float) -> dict[str, float]:
    """Workers whose heartbeat changed within stale_after_s: name -> seconds since."""
    return {w: now - t for w, (_, t) in obs.beat_seen.items()
            if w != "reconciler" and now - t < stale_after_s}
