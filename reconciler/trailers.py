"""Commit messages of the audit trail: a one-line subject and git trailers.

A commit that changes several jobs repeats the group `Ledger-Job` /
`Ledger-Attempt` / `Ledger-Transition` once per job, in the same order, so the
n-th values of each trailer belong together (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

JOB, ATTEMPT, TRANSITION, ACTOR = (
    "Ledger-Job", "Ledger-Attempt", "Ledger-Transition", "Ledger-Actor",
)


@dataclass(frozen=True)
class Change:
    job_id: str
    name: str
    attempt: int
    transition: str  # "pending->claimed"
    meaning: str  # "claim", "sweep", ...


def render(subject: str, changes: list[Change], actor: str, body: str = "") -> str:
    lines = [subject.replace("\n", " ")[:200], ""]
    if body:
        lines += [body.strip(), ""]
    for change in changes:
        lines += [
            f"{JOB}: {change.job_id}",
            f"{ATTEMPT}: {change.attempt}",
            f"{TRANSITION}: {change.transition}",
        ]
    lines.append(f"{ACTOR}: {actor}")
    return "\n".join(lines) + "\n"


def subject_for(changes: list[Change], actor: str) -> str:
    if len(changes) == 1:
        c = changes[0]
        return f"{c.meaning} {c.name} by {actor} (attempt {c.attempt})"
    kinds = sorted({c.meaning for c in changes})
    return f"{', '.join(kinds)} {len(changes)} jobs by {actor}"


def parse(message: str) -> dict[str, list[str]]:
    """Trailers of the last paragraph, in order, by key."""
    paragraphs = message.strip().split("\n\n")
    out: dict[str, list[str]] = {}
    if len(paragraphs) < 2:
        return out
    for line in paragraphs[-1].splitlines():
        key, sep, value = line.partition(": ")
        if sep and key.startswith("Ledger-"):
            out.setdefault(key, []).append(value.strip())
    return out


def changes_of(message: str) -> list[tuple[str, int, str]]:
    """(job_id, attempt, transition) groups, in order."""
    t = parse(message)
    jobs, attempts, transitions = t.get(JOB, []), t.get(ATTEMPT, []), t.get(TRANSITION, [])
    out = []
    for job, attempt, transition in zip(jobs, attempts, transitions, strict=False):
        try:
            out.append((job, int(attempt), transition))
        except ValueError:
            continue
    return out
