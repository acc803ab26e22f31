"""How `git push --porcelain` output is read: an answer is never retried, a
server failure is checked against the ledger and retried like a lost race."""

from __future__ import annotations

import pytest

from reconciler.git.push import PushStatus, read_push

REF = "refs/heads/main"


def porcelain(flag: str, summary: str) -> str:
    return f"To /pi/ledger.git\n{flag}\tabc:{REF}\t{summary}\nDone\n"


def test_a_pushed_ref_is_won() -> None:
    assert read_push(0, porcelain(" ", "1111..2222"), "").status is PushStatus.WON


@pytest.mark.parametrize("out, err", [
    (porcelain("!", "[rejected] (fetch first)"), "error: failed to push some refs"),
    (porcelain("!", "[rejected] (stale info)"), ""),
    (porcelain("!", "[remote rejected] (failed to update ref)"),
     "remote: error: cannot lock ref 'refs/heads/main': is at 3333 but expected 1111"),
    (porcelain("!", "[remote rejected] (incorrect old value provided)"), ""),
])
def test_someone_else_moved_main_first(out: str, err: str) -> None:
    assert read_push(1, out, err).status is PushStatus.LOST


def test_the_hook_saying_no_is_final_and_keeps_its_reason() -> None:
    err = ("remote: trainledger: refused: job j1 attempt 2: running->completed by w1 refused\n"
           "error: failed to push some refs")
    # a refusal may mention a lost-race word in its reason: it is still a refusal
    out = porcelain("!", "[remote rejected] (pre-receive hook declined)")
    result = read_push(1, out, err.replace("refused\n", "refused: failed to lock\n"))
    assert result.status is PushStatus.REJECTED
    assert result.message.startswith("trainledger: refused: job j1")


@pytest.mark.parametrize("summary", [
    "[remote rejected] (deletion prohibited)",
    "[remote rejected] (shallow update not allowed)",
    "[remote rejected] (deny updating a hidden ref)",
])
def test_git_policy_refusals_are_final(summary: str) -> None:
    assert read_push(1, porcelain("!", summary), "").status is PushStatus.REJECTED


def test_an_oversized_pack_is_final() -> None:
    err = "remote: fatal: pack exceeds maximum allowed size\nerror: remote unpack failed"
    out = porcelain("!", "[remote rejected] (unpacker error)")
    assert read_push(1, out, err).status is PushStatus.REJECTED


@pytest.mark.parametrize("summary, err", [
    ("[remote rejected] (unpacker error)", "error: remote unpack failed: unable to create temp"),
    ("[remote rejected] (n/a (unpacker error))", ""),
    ("[remote rejected] (failed to write)", ""),
    # receive-pack's own `gc --auto` beside the push, and nothing else to say why
    ("[remote rejected] (missing necessary objects)",
     "remote: warning: The last gc run reported the following."),
])
def test_a_server_failure_is_ambiguous_not_a_refusal(summary: str, err: str) -> None:
    assert read_push(1, porcelain("!", summary), err).status is PushStatus.AMBIGUOUS


def test_no_output_at_all_is_ambiguous() -> None:
    assert read_push(128, "", "fatal: the remote end hung up unexpectedly").status \
        is PushStatus.AMBIGUOUS
