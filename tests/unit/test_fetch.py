"""fetch-artifact's pure parts: which job a JOB argument names (reconciler/cli/jobref.py,
shared with show, cancel and requeue), and which DEST is fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli.fetch import check_dest
from reconciler.cli.jobref import resolve_job
from reconciler.protocol.errors import JobNotFound, LedgerError
from reconciler.protocol.schema import JobState, Status


def _states(*pairs: tuple[str, str]) -> dict[str, JobState]:
    return {job_id: JobState(job_id=job_id, name=name, status=Status.PENDING)
            for job_id, name in pairs}


STATES = _states(("abcd000000000001", "gbt"), ("abcd000000000002", "mlp"),
                 ("ef00000000000003", "gbt-deep"))


@pytest.mark.parametrize(("text", "job_id"), [
    ("abcd000000000002", "abcd000000000002"),  # full id
    ("gbt", "abcd000000000001"),  # name
    ("ef00", "ef00000000000003"),  # unique prefix
])
def test_resolve(text: str, job_id: str) -> None:
    assert resolve_job(STATES, {}, text).job_id == job_id


def test_manifest_name_resolves_a_renamed_job() -> None:
    # the state file still carries the old name until the reconciler rewrites it
    assert resolve_job(STATES, {"abcd000000000002": "mlp-v2"}, "mlp-v2").name == "mlp"


@pytest.mark.parametrize(("text", "words"), [
    ("abcd", "ambiguous"),
    ("abc", "no job matches"),  # a prefix needs 4+ chars
    ("nope", "no job matches"),
    ("ffff", "no job matches"),
])
def test_resolve_refuses(text: str, words: str) -> None:
    with pytest.raises(JobNotFound, match=words):
        resolve_job(STATES, {}, text)


def test_two_jobs_with_one_name_need_the_id() -> None:
    states = _states(("abcd000000000001", "twin"), ("ef00000000000003", "twin"))
    with pytest.raises(JobNotFound, match="names 2 jobs"):
        resolve_job(states, {}, "twin")


def test_dest_must_be_new_or_empty(tmp_path: Path) -> None:
    assert check_dest(tmp_path / "new") is False
    (tmp_path / "empty").mkdir()
    assert check_dest(tmp_path / "empty") is True
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    for bad, words in [("full", "not an empty directory"), ("file", "not an empty directory"),
                       ("link", "symlink"), ("missing/dest", "no such directory")]:
        with pytest.raises(LedgerError, match=words):
            check_dest(tmp_path / bad)
