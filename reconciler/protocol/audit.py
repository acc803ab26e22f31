"""The audit trail held against the changes it describes.

A commit's trailers say, per job, the attempt and the transition
(`Ledger-Job` / `Ledger-Attempt` / `Ledger-Transition`); the state files it
changed say what really happened. `trail_mismatches` reports every job where
the two disagree, and every trailer group naming a job the commit did not
change. A commit with no `Ledger-Job` trailer at all (an operator's plain
`git commit`) claims nothing and is not held to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.protocol import trailers
from reconciler.protocol.state import JobState
from reconciler.protocol.transitions import label_of

# job id -> (state before, or None for a new job; state after)
Changes = Mapping[str, tuple[JobState | None, JobState]]


def is_restore(message: str) -> bool:
    """The reconciler's undo of an illegal commit: `Ledger-Kind: restore`. Every
    commit trainledger writes has a Ledger-Kind; only one without any (history
    written before the trailer existed) is still known by its subject."""
    kind = trailers.kind_of(message)
    return kind == trailers.RESTORE if kind else message.startswith("restore ")


def trail_mismatches(commit: str, message: str, changes: Changes) -> list[str]:
    """What the trailers of `commit` get wrong about `changes`, one line each."""
    told = trailers.changes_of(message)
    if not trailers.parse(message).get(trailers.JOB):
        return []
    where = f"commit {commit[:12]}"
    out = []
    by_job: dict[str, tuple[int, str]] = {}
    for job, attempt, label in told:
        if job in by_job:
            out.append(f"{where}: trailers name job {job} twice")
        by_job[job] = (attempt, label)
    groups = trailers.parse(message)
    counts = {k: len(groups.get(k, [])) for k in (trailers.JOB, trailers.ATTEMPT,
                                                   trailers.TRANSITION)}
    if len(set(counts.values())) > 1 or len(told) != counts[trailers.JOB]:
        out.append(f"{where}: incomplete trailer groups ({counts[trailers.JOB]} Ledger-Job, "
                   f"{counts[trailers.ATTEMPT]} Ledger-Attempt, {counts[trailers.TRANSITION]} "
                   "Ledger-Transition, attempts must be numbers)")
    for job_id, (old, new) in changes.items():
        actual = (new.attempt, label_of(old, new))
        said = by_job.pop(job_id, None)
        if said is None:
            out.append(f"{where}: job {new.name} ({job_id}) changed {actual[1]} at attempt "
                       f"{actual[0]} without a Ledger-Job trailer")
        elif said != actual:
            out.append(f"{where}: job {new.name} ({job_id}): trailers say {said[1]} at attempt "
                       f"{said[0]}, the state file {actual[1]} at attempt {actual[0]}")
    for job_id, (attempt, label) in by_job.items():
        out.append(f"{where}: trailers say job {job_id} {label} at attempt {attempt}, "
                   "but the commit does not change its state file")
    return out


@dataclass(frozen=True)
class Finding:
    """An illegal commit the re-check found, and how to undo it."""

    commit: str
    author: str
    message: str
    # job id -> (the state the illegal commit wrote, the last legal state before it)
    restore: dict[str, tuple[JobState, JobState]] = field(default_factory=dict)

