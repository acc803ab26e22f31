"""Commit messages of the audit trail: a one-line subject and git trailers.

A commit that changes several jobs repeats the group `Ledger-Job` /
`Ledger-Attempt` / `Ledger-Transition` once per job, in the same order, so the
n-th values of each trailer belong together. `Ledger-Kind` says what kind of
commit it is when that is not a plain transition (`restore`).

Trailers are read with git's own rules (`git interpret-trailers --parse`):
only the last paragraph after the subject, keys case-insensitive, optional
whitespace around the colon, indented lines continue a value. So a commit an
operator types by hand reads the same to trainledger as to git.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

JOB, ATTEMPT, TRANSITION, ACTOR, KIND = (
    "Ledger-Job", "Ledger-Attempt", "Ledger-Transition", "Ledger-Actor", "Ledger-Kind",
)
# Ledger-Kind values: every commit trainledger writes says which it is
MOVES = "moves"  # moves of the state machine (and operator-file edits)
RESTORE = "restore"  # the reconciler's undo of an illegal commit
INIT = "init"  # `reconciler init`'s first commit
_CANONICAL = {k.lower(): k for k in (JOB, ATTEMPT, TRANSITION, ACTOR, KIND)}
# git's trailer line: a token of alphanumerics and dashes, optional blanks, the separator
_TRAILER = re.compile(r"^([A-Za-z0-9-]+)[ \t]*:[ \t]*(.*)$")
# prefixes that make a mixed last paragraph a trailer block for git (trailer.c)
_GIT_PREFIXES = ("Signed-off-by: ", "(cherry picked from commit ")


@dataclass(frozen=True)
class Change:
    job_id: str
    name: str
    attempt: int
    transition: str  # "pending->claimed"
    meaning: str  # "claim", "sweep", ...


def render(subject: str, changes: list[Change], actor: str, body: str = "",
           kind: str | None = None) -> str:
    lines = [subject.replace("\n", " ")[:200], ""]
    if body:
        lines += [body.strip(), ""]
    for change in changes:
        lines += [
            f"{JOB}: {change.job_id}",
            f"{ATTEMPT}: {change.attempt}",
            f"{TRANSITION}: {change.transition}",
        ]
    if kind:
        lines.append(f"{KIND}: {kind}")
    lines.append(f"{ACTOR}: {actor}")
    return "\n".join(lines) + "\n"


def subject_for(changes: list[Change], actor: str) -> str:
    if len(changes) == 1:
        c = changes[0]
        return f"{c.meaning} {c.name} by {actor} (attempt {c.attempt})"
    kinds = sorted({c.meaning for c in changes})
    return f"{', '.join(kinds)} {len(changes)} jobs by {actor}"


def parse(message: str) -> dict[str, list[str]]:
    """Ledger-* trailers of the trailer block, in order, by canonical key."""
    out: dict[str, list[str]] = {}
    for key, value in parse_all(message):
        canonical = _CANONICAL.get(key.lower())
        if canonical:
            out.setdefault(canonical, []).append(value)
    return out


def parse_all(message: str) -> list[tuple[str, str]]:
    """Every (key, value) trailer as `git interpret-trailers --parse` finds them:
    the last paragraph, if it is not the subject's, when all its lines are
    trailers (or continuations), or a quarter are and one is git's own."""
    lines = [ln for ln in message.replace("\r\n", "\n").split("\n")
             if not ln.startswith("#")]
    while lines and not lines[-1].strip():
        lines.pop()
    start = len(lines)
    while start > 0 and lines[start - 1].strip():
        start -= 1
    if start == 0 or not any(ln.strip() for ln in lines[:start]):
        return []  # the only paragraph is the subject
    block = lines[start:]
    out: list[tuple[str, str]] = []
    trailer_lines = non_trailer = 0
    git_own = False
    for line in block:
        if line[:1] in (" ", "\t") and out:
            key, value = out[-1]
            out[-1] = (key, f"{value} {line.strip()}".strip())
            continue
        m = _TRAILER.match(line)
        if m:
            out.append((m.group(1), m.group(2).strip()))
            trailer_lines += 1
            git_own = git_own or line.startswith(_GIT_PREFIXES)
        else:
            non_trailer += 1
            git_own = git_own or line.startswith(_GIT_PREFIXES)
    if non_trailer and not (git_own and trailer_lines * 3 >= non_trailer):
        return []
    return out


def kind_of(message: str) -> str | None:
    """The commit's Ledger-Kind (the last one given), or None."""
    kinds = parse(message).get(KIND)
    return kinds[-1].lower() if kinds else None


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
