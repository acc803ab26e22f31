"""The pre-receive hook through real `git push` from real clones into a ledger
made by `reconciler init`: each bad push is refused with its own message naming
the job, attempt, holder and rule, and leaves main where it was; the operator's
cancel and requeue made with plain `git commit` go through.

The pusher's identity is TRAINLEDGER_IDENTITY in the pushing process's
environment (a local path push hands it to the hook)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ledgerkit import LedgerDir, make_ledger
from reconciler.protocol.state import JobState, Status
from reconciler.rules.init import install_hooks

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


class Clone:
    """A work-tree clone of the ledger used by one identity, with plain git."""

    def __init__(self, ledger: LedgerDir, identity: str, author: str | None = None) -> None:
        self.ledger = ledger
        self.identity = identity
        self.path = ledger.root / f"clone-{identity}"
        self.env = {**os.environ, "TRAINLEDGER_IDENTITY": identity,
                    "GIT_AUTHOR_NAME": author or identity,
                    "GIT_COMMITTER_NAME": author or identity}
        if not self.path.exists():
            subprocess.run(["git", "clone", "-q", ledger.url, str(self.path)], check=True,
                           env=self.env, capture_output=True)

    def git(self, *args: str, check: bool = True, env: dict | None = None
            ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["git", "-C", str(self.path), *args], capture_output=True,
                              text=True, env={**self.env, **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"git {args} failed: {proc.stderr}")
        return proc

    def sync(self) -> None:
        self.git("fetch", "-q", "origin")
        self.git("reset", "-q", "--hard", "origin/main")

    def state(self, name: str) -> JobState:
        for path in (self.path / "state").glob("*/*.json"):
            state = JobState.model_validate_json(path.read_bytes())
            if state.name == name:
                return state
        raise KeyError(name)

    def put(self, state: JobState, path: str | None = None) -> None:
        target = self.path / (path or state.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(state.to_json())
        self.git("add", "-A")

    def commit(self, message: str, env: dict | None = None) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message, env=env)
        return self.git("rev-parse", "HEAD").stdout.strip()

    def change(self, name: str, message: str | None = None, **update) -> str:
        old = self.state(name)
        self.put(old.model_copy(update=update))
        return self.commit(message or f"{name}: {update}")

    def push(self, refspec: str = "HEAD:refs/heads/main", *flags: str
             ) -> subprocess.CompletedProcess[str]:
        return self.git("push", *flags, "origin", refspec, check=False)


def main_of(ledger: LedgerDir) -> str:
    return ledger.git("rev-parse", "refs/heads/main").strip()


def refused(clone: Clone, *expected: str, refspec: str = "HEAD:refs/heads/main",
            flags: tuple[str, ...] = ()) -> str:
    """Push, expect a refusal whose hook line says all of `expected`, main unchanged."""
    before = main_of(clone.ledger)
    proc = clone.push(refspec, *flags)
    assert proc.returncode != 0, f"push went through: {proc.stderr}"
    lines = [ln.removeprefix("remote: ").strip() for ln in proc.stderr.splitlines()
             if "trainledger: refused:" in ln]
    assert len(lines) == 1, proc.stderr
    for word in expected:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert "Traceback" not in proc.stderr
    assert main_of(clone.ledger) == before
    return lines[0]


def accepted(clone: Clone, refspec: str = "HEAD:refs/heads/main") -> None:
    proc = clone.push(refspec)
    assert proc.returncode == 0, proc.stderr
    assert main_of(clone.ledger) == clone.git("rev-parse", "HEAD").stdout.strip()


@pytest.fixture
def ledger(tmp_path: Path) -> LedgerDir:
    return make_ledger(tmp_path, jobs=3, fleet={"max_attempts": 2})


def claim(clone: Clone, name: str) -> JobState:
    old = clone.state(name)
    clone.change(name, f"claim {name}", status=Status.CLAIMED, attempt=old.attempt + 1,
                 holder=clone.identity)
    accepted(clone)
    return clone.state(name)


# ------------------------------------------------------------------ who may write


def test_a_worker_completing_another_workers_job(ledger: LedgerDir) -> None:
    a, b = Clone(ledger, "alpha"), Clone(ledger, "beta")
    job = claim(a, "job-000")
    a.change("job-000", status=Status.RUNNING)
    accepted(a)
    b.sync()
    b.change("job-000", status=Status.COMPLETED, holder=None,
             artifact={"sha256": "0" * 64, "size": 1})
    refused(b, f"job job-000 ({job.job_id}) attempt 1, held by alpha",
            "running->completed by beta (worker) refused", "held by alpha (attempt 1), not beta")


def test_a_stale_attempt(ledger: LedgerDir) -> None:
    a, rec = Clone(ledger, "alpha"), Clone(ledger, "reconciler")
    first = claim(a, "job-000")
    stale = a.git("rev-parse", "HEAD").stdout.strip()
    rec.sync()
    rec.change("job-000", "sweep", status=Status.PENDING, holder=None, lost=1)
    accepted(rec)
    a.sync()
    second = claim(a, "job-000")
    assert (first.attempt, second.attempt) == (1, 2)
    # alpha's old run (attempt 1) comes back and reports, on today's tip
    a.put(second.model_copy(update={"status": Status.FAILED, "holder": None, "attempt": 1}))
    a.commit("fail job-000 (attempt 1)")
    refused(a, f"({first.job_id}) attempt 2, held by alpha", "claimed->failed by alpha",
            "stale attempt 1: the ledger holds attempt 2")
    assert stale in a.git("rev-list", "origin/main").stdout


def test_a_skipped_attempt_in_a_claim(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    a.change("job-001", status=Status.CLAIMED, attempt=2, holder="alpha")
    refused(a, "job job-001", "attempt 0", "pending->claimed by alpha",
            "a claim must raise the attempt by one (0 -> 1)")


def test_a_manifest_edit_by_a_worker(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    manifest = a.path / "manifest.toml"
    manifest.write_text(manifest.read_text().replace("max_attempts = 2", "max_attempts = 9"))
    a.commit("give myself more attempts")
    refused(a, "manifest.toml may be changed by operators only, not alpha (worker)")


def test_access_toml_by_a_worker(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    (a.path / "access.toml").write_text('operators = ["operator", "alpha"]\n')
    a.commit("promote myself")
    refused(a, "access.toml may be changed by operators only, not alpha (worker)")


def test_a_write_to_another_workers_heartbeat_ref(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    beat = a.git("commit-tree", EMPTY_TREE, "-m", "heartbeat beta").stdout.strip()
    refused(a, "refs/heartbeats/beta: alpha may write only refs/heartbeats/alpha",
            refspec=f"{beat}:refs/heartbeats/beta")
    assert ledger.git("for-each-ref", "refs/heartbeats").strip() == ""
    # its own ref goes through, and may be amended (forced) later
    accepted_beat = a.push(f"{beat}:refs/heartbeats/alpha")
    assert accepted_beat.returncode == 0, accepted_beat.stderr
    again = a.git("commit-tree", EMPTY_TREE, "-m", "heartbeat alpha 2").stdout.strip()
    assert a.push(f"+{again}:refs/heartbeats/alpha").returncode == 0
    assert ledger.git("rev-parse", "refs/heartbeats/alpha").strip() == again


def test_a_heartbeat_with_a_tree_or_a_parent(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    tree = a.git("rev-parse", "HEAD^{tree}").stdout.strip()
    with_tree = a.git("commit-tree", tree, "-m", "beat").stdout.strip()
    refused(a, "a heartbeat is a parentless commit with the empty tree",
            refspec=f"{with_tree}:refs/heartbeats/alpha")


def test_deleting_main(ledger: LedgerDir) -> None:
    op = Clone(ledger, "operator")
    refused(op, "refs/heads/main may not be deleted", refspec=":refs/heads/main")


def test_force_pushing_main(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    claim(a, "job-000")
    a.git("reset", "-q", "--hard", "HEAD~1")
    a.change("job-001", status=Status.CLAIMED, attempt=1, holder="alpha")
    refused(a, "main may only move forward", flags=("--force",))


def test_a_symlink_in_the_tree(ledger: LedgerDir) -> None:
    op = Clone(ledger, "operator")
    os.symlink("/etc/passwd", op.path / "passwd")
    op.commit("a link")
    refused(op, "passwd: a symlink may not enter the ledger")


def test_a_symlinked_state_file(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    relative = a.state("job-000").path
    (a.path / relative).unlink()
    os.symlink("../../manifest.toml", a.path / relative)
    a.commit("link")
    refused(a, f"{relative}: a symlink may not enter the ledger")


def test_an_executable_state_file(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    relative = a.state("job-000").path
    a.git("update-index", "--chmod=+x", relative)
    a.git("commit", "-q", "-m", "chmod")
    refused(a, f"{relative}: a mode 100755 may not enter the ledger")


def test_a_submodule_entry(ledger: LedgerDir) -> None:
    op = Clone(ledger, "operator")
    head = op.git("rev-parse", "HEAD").stdout.strip()
    op.git("update-index", "--add", "--cacheinfo", f"160000,{head},vendored")
    op.git("commit", "-q", "-m", "a submodule")
    refused(op, "vendored: a submodule may not enter the ledger")


@pytest.mark.parametrize("path", ["notes.txt", "state/README", "hooks/pre-receive",
                                  "state/ab/cd/x.json", ".gitattributes"])
def test_a_path_outside_manifest_and_state(ledger: LedgerDir, path: str) -> None:
    op = Clone(ledger, "operator")
    (op.path / path).parent.mkdir(parents=True, exist_ok=True)
    (op.path / path).write_text("hello\n")
    op.commit(f"add {path}")
    refused(op, f"{path}: only manifest.toml, access.toml, README.md and "
                "state/<aa>/<job_id>.json may exist")


def test_a_stray_path_from_a_hookless_past_may_be_removed_by_an_operator(tmp_path: Path
                                                                         ) -> None:
    led = make_ledger(tmp_path, jobs=1, hooks=False)
    op = Clone(led, "operator")
    (op.path / "junk.txt").write_text("got in while the hook was off\n")
    os.symlink("manifest.toml", op.path / "link")
    op.commit("junk")
    accepted(op)
    install_hooks(led.path)
    a = Clone(led, "alpha")
    a.git("rm", "-q", "junk.txt")
    a.commit("tidy")
    refused(a, "junk.txt: only manifest.toml")
    op.git("rm", "-q", "junk.txt", "link")
    op.commit("remove what the hook would have refused")
    accepted(op)
    assert led.git("ls-tree", "--name-only", "main").split() == [
        "access.toml", "manifest.toml", "state"]


def test_an_id_and_path_mismatch(ledger: LedgerDir) -> None:
    rec = Clone(ledger, "reconciler")
    job = rec.state("job-000")
    # the right fan-out, but the file says another id
    other = "ff" + job.job_id[2:]
    rec.put(JobState(job_id=job.job_id, name="x", status=Status.PENDING),
            f"state/ff/{other}.json")
    rec.commit("misfiled")
    refused(rec, f"state/ff/{other}.json", f"job_id {job.job_id} does not match its path")
    # the wrong fan-out directory
    rec.sync()
    rec.put(JobState(job_id=other, name="x", status=Status.PENDING),
            f"state/00/{other}.json")
    rec.commit("wrong fan-out")
    refused(rec, f"state/00/{other}.json", "only manifest.toml")


def test_a_state_file_that_is_not_a_state(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    path = a.path / a.state("job-000").path
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "done"}))
    a.commit("bad status")
    refused(a, "field 'status'", "'done' is not one of")


def test_a_worker_creating_or_bloating_a_state_file(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    new = JobState(job_id="abcdef0123456789", name="my-own-job", status=Status.PENDING)
    a.put(new)
    a.commit("a job of my own")
    refused(a, "job my-own-job (abcdef0123456789): only the reconciler creates state files",
            "pusher alpha (worker)")
    a.sync()
    job = a.state("job-000")
    a.put(job.model_copy(update={"last_error": "x" * 8000}))
    (a.path / job.path).write_text(job.to_json().replace("{", "{" + " " * 70_000, 1))
    a.commit("bloat")
    refused(a, f"{job.path}: state file", "over 65536 bytes")


def test_an_illegal_middle_commit_with_a_legal_tip(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    pending = a.state("job-001")
    a.change("job-000", "claim", status=Status.CLAIMED, attempt=1, holder="alpha")
    middle = a.change("job-001", "complete what I never claimed", status=Status.COMPLETED,
                      artifact={"sha256": "1" * 64, "size": 1})
    a.put(pending)
    a.commit("put it back")
    assert a.git("diff", "--name-only", "origin/main", "HEAD").stdout.count("\n") == 1
    refused(a, f"commit {middle[:12]}", "job job-001", "pending->completed by alpha",
            "only operator may make it")  # an import-seed is an operator's, never a worker's


def test_a_merge_commit(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    base = a.git("rev-parse", "HEAD").stdout.strip()
    a.change("job-000", status=Status.CLAIMED, attempt=1, holder="alpha")
    a.git("checkout", "-q", "-b", "side", base)
    a.change("job-001", status=Status.CLAIMED, attempt=1, holder="alpha")
    a.git("checkout", "-q", "main")
    a.git("merge", "-q", "--no-edit", "side")
    merge = a.git("rev-parse", "HEAD").stdout.strip()
    refused(a, f"commit {merge[:12]}: merge commits are refused")


def test_author_reconciler_pushed_by_a_worker(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha", author="reconciler")
    a.change("job-000", status=Status.CLAIMED, attempt=1, holder="alpha")
    refused(a, "author 'reconciler' is not the pusher 'alpha'")


def test_an_operator_signing_as_the_reconciler(ledger: LedgerDir) -> None:
    op = Clone(ledger, "operator", author="reconciler")
    op.change("job-000", status=Status.CANCELLED)
    refused(op, "author 'reconciler' is not the pusher 'operator'")


@pytest.mark.parametrize("ref", ["refs/heads/other", "refs/tags/v1", "refs/notes/commits",
                                 "refs/remotes/ledger/main"])
def test_a_foreign_ref(ledger: LedgerDir, ref: str) -> None:
    op = Clone(ledger, "operator")
    refused(op, f"{ref}: only refs/heads/main and refs/heartbeats/<your name> may be pushed",
            refspec=f"HEAD:{ref}")
    assert ledger.git("for-each-ref", ref).strip() == ""


def test_a_pusher_without_identity_or_role(ledger: LedgerDir) -> None:
    nobody = Clone(ledger, "alpha")
    nobody.change("job-000", status=Status.CLAIMED, attempt=1, holder="alpha")
    before = main_of(ledger)
    proc = nobody.git("push", "origin", "HEAD:main", check=False,
                      env={"TRAINLEDGER_IDENTITY": ""})
    assert proc.returncode != 0 and "no pusher identity" in proc.stderr
    assert main_of(ledger) == before
    # `git config trainledger.identity` of the pushing user is the fallback
    nobody.git("config", "--global", "trainledger.identity", "alpha")
    proc = nobody.git("push", "origin", "HEAD:main", check=False,
                      env={"TRAINLEDGER_IDENTITY": ""})
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("text", "expected"), [
    ('operators = "alice"\n', "field 'operators': expected a list of names"),
    ('operators = ["al ice"]\n', "field 'operators': 'al ice' is not a valid name"),
    ("operators = []\n", "field 'operators': name at least one"),
    ('admins = ["alice"]\n', "field 'admins': unknown field"),
    ("operators = [\n", "access.toml: "),
])
def test_an_invalid_access_toml_from_the_operator(ledger: LedgerDir, text: str,
                                                  expected: str) -> None:
    op = Clone(ledger, "operator")
    (op.path / "access.toml").write_text(text)
    op.commit("access")
    refused(op, "access.toml", expected)


def test_an_identity_that_access_toml_does_not_know(ledger: LedgerDir) -> None:
    op = Clone(ledger, "operator")
    (op.path / "access.toml").write_text('operators = ["operator"]\nworkers = ["alpha"]\n')
    op.commit("only alpha works here")
    accepted(op)
    stranger = Clone(ledger, "mallory")
    stranger.change("job-000", status=Status.CLAIMED, attempt=1, holder="mallory")
    refused(stranger, "identity 'mallory' has no role in access.toml")


# ---------------------------------------------------------------- what goes through


def test_a_workers_whole_life_of_a_job(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    claim(a, "job-000")
    a.change("job-000", status=Status.RUNNING)
    accepted(a)
    a.change("job-000", status=Status.COMPLETED, holder=None,
             artifact={"sha256": "2" * 64, "size": 5})
    accepted(a)
    assert a.state("job-000").status is Status.COMPLETED


def test_the_operator_cancels_and_requeues_with_plain_git(ledger: LedgerDir) -> None:
    a, op = Clone(ledger, "alpha"), Clone(ledger, "operator")
    claim(a, "job-000")
    a.change("job-000", status=Status.RUNNING)
    accepted(a)
    op.sync()
    op.change("job-000", "cancel job-000", status=Status.CANCELLED, holder=None)
    accepted(op)
    op.change("job-000", "requeue job-000", status=Status.PENDING)
    accepted(op)
    op.change("job-002", "cancel a pending job", status=Status.CANCELLED)
    accepted(op)
    assert op.state("job-000").attempt == 1
    log = ledger.git("log", "--format=%an %s", "main").splitlines()
    assert log[:3] == ["operator cancel a pending job", "operator requeue job-000",
                       "operator cancel job-000"]


def test_a_worker_may_not_cancel_or_requeue(ledger: LedgerDir) -> None:
    a, op = Clone(ledger, "alpha"), Clone(ledger, "operator")
    claim(a, "job-000")
    a.change("job-000", status=Status.CANCELLED, holder=None)
    refused(a, "claimed->cancelled by alpha (worker) refused",
            "only operator or reconciler may make it")
    a.sync()
    op.sync()
    op.change("job-001", "cancel", status=Status.CANCELLED)
    accepted(op)
    a.sync()
    a.change("job-001", status=Status.PENDING)
    refused(a, "cancelled->pending by alpha (worker) refused", "only operator may make it")


def test_the_operator_may_not_play_worker(ledger: LedgerDir) -> None:
    op = Clone(ledger, "operator")
    op.change("job-000", status=Status.CLAIMED, attempt=1, holder="operator")
    refused(op, "pending->claimed by operator refused", "only worker may make it")


def test_an_invalid_manifest_from_the_operator(ledger: LedgerDir) -> None:
    op = Clone(ledger, "operator")
    manifest = op.path / "manifest.toml"
    manifest.write_text(manifest.read_text().replace('name = "job-001"',
                                                     'name = "job-001"\nprioritty = 3'))
    op.commit("typo")
    refused(op, "manifest.toml: job 'job-001' (jobs[1]): field 'prioritty': unknown key")
    op.sync()
    manifest.write_text(manifest.read_text().replace('name = "job-001"',
                                                     'name = "job-001"\npriority = 3'))
    op.commit("raise job-001")
    accepted(op)


def test_the_sweep_budget_comes_from_the_manifest(ledger: LedgerDir) -> None:
    """max_attempts = 2: the second lost claim fails the job; a sweep to pending
    then is refused, naming the budget."""
    a, rec = Clone(ledger, "alpha"), Clone(ledger, "reconciler")
    for lost in (1, 2):
        a.sync()
        claim(a, "job-000")
        rec.sync()
        if lost == 2:
            rec.change("job-000", "sweep", status=Status.PENDING, holder=None, lost=lost)
            refused(rec, "claimed->pending by reconciler refused",
                    "budget spent (2 of 2 claims lost): sweep to failed")
            rec.sync()
            rec.change("job-000", "sweep", status=Status.FAILED, holder=None, lost=lost)
        else:
            rec.change("job-000", "sweep", status=Status.PENDING, holder=None, lost=lost)
        accepted(rec)
    assert rec.state("job-000").status is Status.FAILED
