"""Commit messages of the audit trail: subject, trailers, and the n-th values of
Ledger-Job / Ledger-Attempt / Ledger-Transition belonging together; and git's
own trailer parser reading what we write."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reconciler.git.repo import EMPTY_TREE, GitRepo, Signature
from reconciler.protocol import trailers
from reconciler.protocol.trailers import Change

A = Change("aaaaaaaaaaaaaaaa", "gbt-small", 2, "pending->claimed", "claim")
B = Change("bbbbbbbbbbbbbbbb", "mlp-big", 1, "running->pending", "sweep")
C = Change("cccccccccccccccc", "cnn", 3, "claimed->failed", "sweep")


def test_one_change_renders_the_design_subject_and_trailers() -> None:
    message = trailers.render(trailers.subject_for([A], "desktop"), [A], "desktop")
    assert message == (
        "claim gbt-small by desktop (attempt 2)\n"
        "\n"
        "Ledger-Job: aaaaaaaaaaaaaaaa\n"
        "Ledger-Attempt: 2\n"
        "Ledger-Transition: pending->claimed\n"
        "Ledger-Actor: desktop\n"
    )
    assert trailers.changes_of(message) == [("aaaaaaaaaaaaaaaa", 2, "pending->claimed")]
    assert trailers.parse(message)[trailers.ACTOR] == ["desktop"]


def test_several_changes_repeat_the_group_in_order() -> None:
    message = trailers.render(trailers.subject_for([B, C, A], "reconciler"), [B, C, A],
                              "reconciler")
    assert message.splitlines()[0] == "claim, sweep 3 jobs by reconciler"
    assert trailers.changes_of(message) == [
        ("bbbbbbbbbbbbbbbb", 1, "running->pending"),
        ("cccccccccccccccc", 3, "claimed->failed"),
        ("aaaaaaaaaaaaaaaa", 2, "pending->claimed"),
    ]
    parsed = trailers.parse(message)
    assert parsed[trailers.JOB] == [B.job_id, C.job_id, A.job_id]
    assert parsed[trailers.ACTOR] == ["reconciler"]


def test_the_body_sits_between_subject_and_trailers_and_is_not_parsed() -> None:
    body = "trainer exited 1\n\nLedger-Job: ffffffffffffffff\nLedger-Attempt: 9"
    message = trailers.render("fail gbt-small", [A], "desktop", body)
    assert message.startswith("fail gbt-small\n\ntrainer exited 1\n\n")
    assert trailers.changes_of(message) == [(A.job_id, 2, "pending->claimed")]


def test_the_subject_is_one_line_of_at_most_200_chars() -> None:
    message = trailers.render("a\nsubject " + "x" * 300, [A], "desktop")
    subject = message.split("\n", 1)[0]
    assert subject.startswith("a subject ") and len(subject) == 200


def test_an_operator_edit_without_changes_still_names_the_actor() -> None:
    message = trailers.render("edit manifest", [], "operator")
    assert trailers.changes_of(message) == []
    assert trailers.parse(message) == {trailers.ACTOR: ["operator"]}


@pytest.mark.parametrize("message", [
    "",
    "just a subject",
    "Ledger-Job: aaaaaaaaaaaaaaaa\nLedger-Attempt: 1\nLedger-Transition: x",  # subject only
    "subject\n\nLedger-Job: aaaaaaaaaaaaaaaa\n\nplain last paragraph\n",
])
def test_no_trailers_outside_a_last_paragraph(message: str) -> None:
    assert trailers.changes_of(message) == []


def test_foreign_trailers_and_a_bad_attempt_are_skipped() -> None:
    message = ("subject\n\nSigned-off-by: someone <s@x>\nLedger-Job: aaaaaaaaaaaaaaaa\n"
               "Ledger-Attempt: two\nLedger-Transition: pending->claimed\n"
               "Ledger-Job: bbbbbbbbbbbbbbbb\nLedger-Attempt: 4\n"
               "Ledger-Transition: running->completed\n")
    assert "Signed-off-by" not in trailers.parse(message)
    assert trailers.changes_of(message) == [("bbbbbbbbbbbbbbbb", 4, "running->completed")]


def test_git_reads_the_same_trailers(tmp_path: Path) -> None:
    """`git log --format=%(trailers)` and `--grep` answer who did what (docs/operators.md)."""
    repo = GitRepo.init_bare(tmp_path / "r.git")
    message = trailers.render(trailers.subject_for([B, A], "reconciler"), [B, A], "reconciler",
                              "a body line")
    repo.write_object("tree", b"")
    sha = repo.write_commit(EMPTY_TREE, [], Signature("reconciler", "r@x", 1_700_000_000),
                            message)
    repo.update_ref("refs/heads/main", sha)

    def log(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo.path), "log", *args, "main"],
                              capture_output=True, text=True, check=True).stdout

    assert log("--format=%(trailers:key=Ledger-Job,valueonly,separator=%x2C)") \
        == f"{B.job_id},{A.job_id}\n"
    assert log("--format=%(trailers:key=Ledger-Transition,valueonly,separator=%x2C)") \
        == "running->pending,pending->claimed\n"
    assert log("--format=%an %(trailers:key=Ledger-Actor,valueonly,separator=)") \
        == "reconciler reconciler\n"
    assert log("--format=%H", f"--grep=Ledger-Job: {A.job_id}").strip() == sha
    assert trailers.changes_of(repo.commit_message(sha)) == trailers.changes_of(message)
    repo.close()


HAND_TYPED = [
    "claim x\n\nledger-job:aaaaaaaaaaaaaaaa\nLEDGER-ATTEMPT: 1\nLedger-Transition :  a->b\n",
    "claim x\n\nbody\n\nLedger-Job: aaaaaaaaaaaaaaaa\nLedger-Attempt:\t2\n",
    "claim x\n\nLedger-Job: aaaaaaaaaaaaaaaa\n  continued value\nLedger-Attempt: 3\n",
    "claim x\n\nLedger-Job: aaaaaaaaaaaaaaaa\nnot a trailer line\n",
    "claim x\n\nSigned-off-by: a <a@x>\nLedger-Job: aaaaaaaaaaaaaaaa\nfree text\n",
    "Ledger-Job: aaaaaaaaaaaaaaaa\n",
    "claim x\n\nLedger-Job: aaaaaaaaaaaaaaaa\n\n\n",
    "claim x\r\n\r\nLedger-Job: aaaaaaaaaaaaaaaa\r\nLedger-Attempt: 4\r\n",
]


@pytest.mark.parametrize("message", HAND_TYPED)
def test_hand_typed_trailers_read_as_git_reads_them(message: str) -> None:
    """One reader, git's rules: `git interpret-trailers --parse` is the oracle."""
    out = subprocess.run(["git", "interpret-trailers", "--parse"], input=message.encode(),
                         capture_output=True, check=True).stdout.decode()
    expected = []
    for line in out.splitlines():
        key, _, value = line.partition(":")
        expected.append((key.strip().lower(), value.strip()))
    assert [(k.lower(), v) for k, v in trailers.parse_all(message)] == expected


def test_keys_are_case_insensitive_and_the_kind_is_read() -> None:
    message = "restore x\n\nledger-job: aaaaaaaaaaaaaaaa\nledger-attempt:2\n" \
              "LEDGER-TRANSITION: running->claimed\nledger-kind: Restore\n"
    assert trailers.changes_of(message) == [("aaaaaaaaaaaaaaaa", 2, "running->claimed")]
    assert trailers.kind_of(message) == trailers.RESTORE
    rendered = trailers.render("restore x", [A], "reconciler", kind=trailers.RESTORE)
    assert trailers.kind_of(rendered) == "restore"
    assert trailers.kind_of(trailers.render("claim", [A], "w1")) is None
