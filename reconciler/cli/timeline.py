"""Every attempt of every job, read from main's history: who claimed it, when it
was claimed, started and ended, and how it ended.

`git log` already holds each claim, start and end with its host in the commit
trailers (reconciler/protocol/trailers.py), so the fleet's timeline needs no other
record. Times are commit times, which is the clock of whoever wrote the commit:
a claim, start, completion, failure or release is stamped by the worker's
clock; a sweep, a cancel or a requeue by the reconciler's or the operator's.
Hosts with skewed clocks therefore show skewed bars; NTP on every host keeps
them honest.

Reading is incremental: the attempts are saved with the revision they were
read at, and the next read parses only the commits since (status and report
on a long history stay fast).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

from reconciler.git.repo import GitRepo
from reconciler.protocol import trailers

CACHE_VERSION = 2
ENDS = {"completed": "completed", "failed": "failed", "cancelled": "cancelled",
        "pending": "released"}


@dataclass(slots=True)
class Attempt:
    job_id: str
    attempt: int
    host: str | None
    claimed_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    outcome: str = "claimed"  # claimed, running, completed, failed, cancelled, released, swept
    ended_by: str | None = None

    def elapsed_s(self, now: float) -> float | None:
        """Run time: from start (or claim) to end, or to `now` while it runs."""
        begin = self.started_at if self.started_at is not None else self.claimed_at
        if begin is None:
            return None
        end = self.ended_at if self.ended_at is not None else now
        return max(0.0, end - begin)


FIELDS = [f.name for f in fields(Attempt)]


class Timeline:
    """Attempts by (job_id, attempt), in the order they were claimed."""

    def __init__(self) -> None:
        self.revision: str | None = None
        self.attempts: dict[tuple[str, int], Attempt] = {}

    # -------------------------------------------------------------- reading

    def update(self, repo: GitRepo, rev: str) -> Timeline:
        """Read the commits between the last revision read and `rev` (all of
        them when `rev` does not descend from it)."""
        if rev == self.revision:
            return self
        base = self.revision
        if base is not None and repo.git("merge-base", "--is-ancestor", base, rev,
                                         check=False).returncode != 0:
            self.attempts.clear()
            base = None
        span = f"{base}..{rev}" if base else rev
        raw = repo.git("log", "--reverse", "--format=%H%x00%ct%x00%B%x01", span)
        for record in raw.stdout.decode("utf-8", "replace").split("\x01"):
            record = record.strip("\n")
            if record:
                _sha, when, body = record.split("\x00", 2)
                self._apply(float(when), body)
        self.revision = rev
        return self

    def _apply(self, when: float, body: str) -> None:
        actor = trailers.parse(body).get(trailers.ACTOR, [None])[-1]
        for job_id, attempt, transition in trailers.changes_of(body):
            old, _, new = transition.partition("->")
            key = (job_id, attempt)
            if new == "claimed" and old == "pending":
                self.attempts[key] = Attempt(job_id, attempt, actor, claimed_at=when)
                continue
            found = self.attempts.get(key)
            if found is None or found.ended_at is not None:
                continue  # history before a requeue's attempt, or a restore
            if new == "running":
                found.started_at, found.outcome = when, "running"
            elif new in ENDS and old in ("claimed", "running"):
                found.ended_at, found.ended_by = when, actor
                found.outcome = ENDS[new]
                if new == "pending" and actor != found.host:
                    found.outcome = "swept"

    # ------------------------------------------------------------ querying

    def last_by_job(self) -> dict[str, Attempt]:
        """Each job's highest attempt."""
        out: dict[str, Attempt] = {}
        for (job_id, number), att in self.attempts.items():
            if job_id not in out or out[job_id].attempt < number:
                out[job_id] = att
        return out

    def hosts(self) -> list[str]:
        return sorted({a.host for a in self.attempts.values() if a.host})

    # -------------------------------------------------------------- caching

    def save(self, path: Path) -> None:
        # rows, not objects: loading 100,000 attempts costs a tenth of a second
        doc = {"version": CACHE_VERSION, "revision": self.revision, "fields": FIELDS,
               "attempts": [list(astuple(a)) for a in self.attempts.values()]}
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Timeline:
        """The saved timeline, or an empty one when there is none or it is unreadable."""
        out = cls()
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
            if doc.get("version") != CACHE_VERSION or doc.get("fields") != FIELDS:
                return out
            attempts = [Attempt(*row) for row in doc["attempts"]]
        except (OSError, ValueError, TypeError, KeyError):
            return out
        out.revision = doc.get("revision")
        out.attempts = {(a.job_id, a.attempt): a for a in attempts}
        return out


def read_timeline(repo: GitRepo, rev: str, cache: Path | None = None) -> Timeline:
    """The timeline at `rev`, starting from (and refreshing) the saved one."""
    timeline = Timeline.load(cache) if cache is not None else Timeline()
    before = timeline.revision
    timeline.update(repo, rev)
    if cache is not None and timeline.revision != before:
        with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
            timeline.save(cache)
    return timeline
