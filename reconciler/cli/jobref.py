"""JOB on the command line: a job id, a unique id prefix (4+ hex chars), or a name."""

from __future__ import annotations

from reconciler.protocol.errors import JobNotFound
from reconciler.protocol.state import JobState


def resolve_job(states: dict[str, JobState], names: dict[str, str], text: str) -> JobState:
    """A job by id, unique id prefix, or name (`names`: job id -> manifest name)."""
    if text in states:
        return states[text]
    by_name = {s.job_id for s in states.values() if s.name == text}
    by_name |= {job_id for job_id, name in names.items() if name == text and job_id in states}
    if len(by_name) == 1:
        return states[by_name.pop()]
    if len(by_name) > 1:
        raise JobNotFound(f"{text!r} names {len(by_name)} jobs: use the job id")
    if len(text) >= 4 and all(c in "0123456789abcdef" for c in text):
        matches = [job_id for job_id in states if job_id.startswith(text)]
        if len(matches) == 1:
            return states[matches[0]]
        if len(matches) > 1:
            raise JobNotFound(f"id prefix {text!r} is ambiguous ({len(matches)} jobs)")
    raise JobNotFound(f"no job matches {text!r} (an id, a unique id prefix of 4+ chars, or a "
                      "name)", job=text)
