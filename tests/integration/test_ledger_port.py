"""The ledger port against real bare repositories (hooks installed): snapshots
read with one ls-tree and batched blob reads; a write builds on the tip it
fetched and rebuilds after a lost race; an ambiguous push is settled by
`landed`; heartbeats are amended with --force-with-lease and listed in one call;
a path, an absolute path and a file:// URL all work."""

from __future__ import annotations

import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

from ledgerkit import LedgerDir, make_ledger
from reconciler.git.ledger import Ledger
from reconciler.git.push import Proposal, PushResult, PushStatus
from reconciler.git.repo import CatFile, GitRepo
from reconciler.git.snapshot import Snapshot
from reconciler.protocol import trailers
from reconciler.protocol.errors import GitError, PushAmbiguous, PushRejected
from reconciler.protocol.schema import Heartbeat, HeldJob
from reconciler.protocol.state import Status


@pytest.fixture
def led(tmp_path: Path) -> LedgerDir:
    return make_ledger(tmp_path, jobs=5)


def open_ledger(led: LedgerDir, identity: str, url: str | None = None) -> Ledger:
    return Ledger(url or led.url, led.root / f"cache-{identity}", identity)


def claim_one(name: str, pick: int = 0):
    """A builder: claim the pick-th pending job (by name) for `name`."""
    def build(snap: Snapshot) -> Proposal | None:
        pending = sorted((s for s in snap.states.values() if s.status is Status.PENDING),
                         key=lambda s: s.name)
        if len(pending) <= pick:
            return None
        old = pending[pick]
        new = old.model_copy(update={"status": Status.CLAIMED, "attempt": old.attempt + 1,
                                     "holder": name})
        return Proposal.of_states([new], [trailers.Change(
            old.job_id, old.name, new.attempt, "pending->claimed", "claim")])
    return build


def main_of(led: LedgerDir) -> str:
    return led.git("rev-parse", "main").strip()


# ------------------------------------------------------------------------ reads


def test_a_snapshot_is_one_ls_tree_and_one_batched_read(led: LedgerDir,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = open_ledger(led, "reader")
    tip = ledger.fetch()
    assert tip == main_of(led)
    commands: list[str] = []
    batches: list[list[str]] = []
    real_git, real_read = GitRepo.git, CatFile.read

    def git(self, *args, **kw):
        commands.append(args[0])
        return real_git(self, *args, **kw)

    def read(self, names):
        batches.append(list(names))
        return real_read(self, names)

    monkeypatch.setattr(GitRepo, "git", git)
    monkeypatch.setattr(CatFile, "read", read)
    snap = ledger.snapshot(tip)
    assert commands == ["ls-tree"]
    assert len(batches) == 1 and len(batches[0]) == 5 + 2  # states, manifest, access
    assert sorted(s.name for s in snap.states.values()) == [f"job-{i:03d}" for i in range(5)]
    assert {s.status for s in snap.states.values()} == {Status.PENDING}
    assert snap.manifest is not None and snap.manifest_error is None
    assert set(snap.manifest.specs) == set(snap.states)
    assert snap.access.role_of("operator").value == "operator"
    assert snap.revision == tip and snap.stray_paths == () and snap.state_errors == {}
    assert snap.base is None and snap.changed == frozenset()  # listed whole: no delta

    # the next revision: only what changed is listed and read
    monkeypatch.setattr(GitRepo, "git", real_git)
    writer = open_ledger(led, "alpha")
    writer.write(claim_one("alpha"))
    monkeypatch.setattr(GitRepo, "git", git)
    commands.clear()
    batches.clear()
    snap2 = ledger.snapshot(ledger.fetch())
    assert "ls-tree" not in commands and "diff-tree" in commands
    claimed = [s for s in snap2.states.values() if s.status is Status.CLAIMED]
    assert [(s.name, s.holder, s.attempt) for s in claimed] == [("job-000", "alpha", 1)]
    new_blob = led.git("rev-parse", f"main:{claimed[0].path}").strip()
    assert batches == [[new_blob]]  # one changed state file: one blob read
    assert snap2.base == tip and snap2.changed == {claimed[0].job_id}
    again = ledger.snapshot(snap2.revision)
    assert again.base == snap2.revision and again.changed == frozenset()
    ledger.close()
    writer.close()


def test_a_snapshot_reports_bad_state_files_and_stray_paths(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=2, hooks=False)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", led.url, str(clone)], check=True)
    state = next((clone / "state").glob("*/*.json"))
    state.write_text('{"job_id": "nope"}\n')
    (clone / "notes.txt").write_text("hi\n")
    subprocess.run(["git", "-C", str(clone), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(clone), "commit", "-qm", "vandal"], check=True)
    subprocess.run(["git", "-C", str(clone), "push", "-q", "origin", "HEAD:main"], check=True)
    ledger = open_ledger(led, "reader")
    snap = ledger.snapshot(ledger.fetch())
    rel = str(state.relative_to(clone))
    assert list(snap.state_errors) == [rel] and "missing" in snap.state_errors[rel]
    assert snap.stray_paths == ("notes.txt",)
    assert len(snap.states) == 1
    ledger.close()


def test_a_broken_manifest_is_reported_not_raised(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=1, hooks=False)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", led.url, str(clone)], check=True)
    (clone / "manifest.toml").write_text("schema_version = [\n")
    subprocess.run(["git", "-C", str(clone), "commit", "-qam", "break"], check=True)
    subprocess.run(["git", "-C", str(clone), "push", "-q", "origin", "HEAD:main"], check=True)
    ledger = open_ledger(led, "reader")
    snap = ledger.snapshot(ledger.fetch())
    assert snap.manifest is None and "TOML syntax error" in (snap.manifest_error or "")
    assert len(snap.states) == 1
    ledger.close()


# ----------------------------------------------------------------------- writes


def test_a_write_builds_on_the_tip_it_fetched(led: LedgerDir) -> None:
    alpha, beta = open_ledger(led, "alpha"), open_ledger(led, "beta")
    first = alpha.write(claim_one("alpha"))
    second = beta.write(claim_one("beta"))  # beta's cache never saw alpha's commit
    assert second.lost_races == 0
    assert led.git("rev-parse", f"{second.commit}^").strip() == first.commit
    assert main_of(led) == second.commit and beta.tip() == second.commit
    message = led.git("log", "-1", "--format=%an%n%B", "main")
    assert message.startswith("beta\nclaim job-001 by beta (attempt 1)\n")
    assert trailers.changes_of(message)[0][1:] == (1, "pending->claimed")
    assert led.git("diff", "--name-only", f"{first.commit}", f"{second.commit}").count("\n") == 1
    alpha.close()
    beta.close()


def test_a_lost_race_rebuilds_from_the_new_tip(led: LedgerDir) -> None:
    alpha, beta = open_ledger(led, "alpha"), open_ledger(led, "beta")
    seen: list[int] = []
    sleeps: list[float] = []

    def build(snap: Snapshot) -> Proposal | None:
        claimed = sum(s.status is Status.CLAIMED for s in snap.states.values())
        seen.append(claimed)
        if len(seen) == 1:  # beta sneaks in between alpha's fetch and push
            beta.write(claim_one("beta"))
        return claim_one("alpha")(snap)

    outcome = alpha.write(build, sleep=sleeps.append)
    assert outcome.lost_races == 1 and seen == [0, 1] and len(sleeps) == 1
    states = alpha.snapshot(alpha.fetch()).states.values()
    assert sorted((s.name, s.holder) for s in states if s.holder) == [
        ("job-000", "beta"), ("job-001", "alpha")]
    alpha.close()
    beta.close()


def test_a_builder_with_nothing_to_do_writes_nothing(led: LedgerDir) -> None:
    ledger = open_ledger(led, "alpha")
    before = main_of(led)
    outcome = ledger.write(lambda snap: None)
    assert outcome.commit is None and outcome.snapshot.revision == before
    assert main_of(led) == before
    ledger.close()


def test_a_refused_push_raises_with_the_hooks_message(led: LedgerDir) -> None:
    ledger = open_ledger(led, "alpha")

    def steal(snap: Snapshot) -> Proposal:
        old = next(iter(snap.states.values()))
        new = old.model_copy(update={"status": Status.CLAIMED, "attempt": 1, "holder": "beta"})
        return Proposal.of_states([new], [])

    before = main_of(led)
    with pytest.raises(PushRejected) as err:
        ledger.write(steal)
    assert "a worker claims only for itself (holder beta, pusher alpha)" in str(err.value)
    assert main_of(led) == before
    ledger.close()


def test_push_reports_won_lost_and_rejected(led: LedgerDir) -> None:
    ledger = open_ledger(led, "alpha")
    tip = ledger.fetch()
    snap = ledger.snapshot(tip)
    good = ledger.commit(tip, claim_one("alpha")(snap))
    other = ledger.commit(tip, claim_one("alpha", pick=1)(snap))
    assert ledger.push(good).status is PushStatus.WON
    assert ledger.push(other).status is PushStatus.LOST  # built on an old tip
    bad = ledger.commit(good, Proposal({"notes.txt": b"x"}, []))
    result = ledger.push(bad)
    assert result.status is PushStatus.REJECTED and "notes.txt" in result.message
    ledger.close()


def test_an_ambiguous_push_that_landed_is_a_win(led: LedgerDir,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = open_ledger(led, "alpha")
    real_push = Ledger.push

    def push_then_lose_the_answer(self, sha, *a, **kw):
        real_push(self, sha, *a, **kw)
        return PushResult(PushStatus.AMBIGUOUS, "connection reset")

    monkeypatch.setattr(Ledger, "push", push_then_lose_the_answer)
    outcome = ledger.write(claim_one("alpha"))
    assert outcome.lost_races == 0 and main_of(led) == outcome.commit
    assert ledger.landed(outcome.commit)
    ledger.close()


def test_an_ambiguous_push_that_did_not_land_is_retried(led: LedgerDir,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = open_ledger(led, "alpha")
    real_push, real_landed, landed = Ledger.push, Ledger.landed, []

    def first_push_lost_in_transit(self, sha, *a, **kw):
        if not landed:
            return PushResult(PushStatus.AMBIGUOUS, "timed out")
        return real_push(self, sha, *a, **kw)

    def checked(self, sha):
        landed.append(real_landed(self, sha))
        return landed[-1]

    monkeypatch.setattr(Ledger, "push", first_push_lost_in_transit)
    monkeypatch.setattr(Ledger, "landed", checked)
    outcome = ledger.write(claim_one("alpha"), sleep=lambda s: None)
    assert landed == [False] and outcome.lost_races == 1
    assert outcome.commit == main_of(led)
    assert [t for _, _, _, t, _ in led.transitions()].count("pending->claimed") == 1
    ledger.close()


def test_an_ambiguous_push_to_an_unreachable_ledger_raises(led: LedgerDir,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    ledger = open_ledger(led, "alpha")
    monkeypatch.setattr(Ledger, "push", lambda self, sha, *a, **kw: PushResult(
        PushStatus.AMBIGUOUS, "reset"))

    def unreachable(self, sha):
        raise GitError("fetch failed: connection refused")

    monkeypatch.setattr(Ledger, "landed", unreachable)
    with pytest.raises(PushAmbiguous, match="result unknown and the ledger is unreachable") \
            as err:
        ledger.write(claim_one("alpha"))
    assert len(err.value.commit) == 40
    ledger.close()


# ------------------------------------------------------------------- heartbeats


def beat(worker: str, seq: int, jobs: list[HeldJob] | None = None) -> Heartbeat:
    return Heartbeat(worker=worker, seq=seq, sent_at=1000.0 + seq, jobs=jobs or [])


def test_a_heartbeat_is_amended_and_a_stale_lease_loses(led: LedgerDir) -> None:
    one, two = open_ledger(led, "alpha"), Ledger(led.url, led.root / "cache-alpha-2", "alpha")
    first = one.push_heartbeat(beat("alpha", 1))
    second = one.push_heartbeat(beat("alpha", 2))
    assert led.git("rev-parse", "refs/heartbeats/alpha").strip() == second != first
    assert led.git("rev-list", "--count", "refs/heartbeats/alpha").strip() == "1"  # parentless
    assert led.git("rev-parse", "refs/heartbeats/alpha^{tree}").strip() \
        == "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
    # a second writer on the same ref: its first beat reads the remote value...
    third = two.push_heartbeat(beat("alpha", 3))
    # ...so the first writer's lease is stale now, and it loses without overwriting
    with pytest.raises(GitError, match="lost"):
        one.push_heartbeat(beat("alpha", 4))
    assert led.git("rev-parse", "refs/heartbeats/alpha").strip() == third
    # it re-reads the remote value before its next beat, and that one lands
    fifth = one.push_heartbeat(beat("alpha", 5))
    assert led.git("rev-parse", "refs/heartbeats/alpha").strip() == fifth
    assert main_of(led) == led.git("rev-parse", "main").strip()
    one.close()
    two.close()


def test_heartbeats_lists_every_worker_in_one_call(led: LedgerDir,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    job = "0123456789abcdef"
    for i, name in enumerate(("alpha", "beta", "gamma")):
        w = open_ledger(led, name)
        w.push_heartbeat(beat(name, i, [HeldJob(job_id=job, attempt=i + 1, progress=0.5)]))
        w.close()
    # a heartbeat ref holding something that is not a heartbeat
    junk = led.git("commit-tree", "4b825dc642cb6eb9a060e54bf8d69288fbee4904", "-m", "junk\n\n{")
    led.git("update-ref", "refs/heartbeats/delta", junk.strip())
    reader = open_ledger(led, "reconciler")
    reader.fetch(heartbeats=True)
    reads: list[list[str]] = []
    real_read = CatFile.read
    monkeypatch.setattr(CatFile, "read", lambda self, names: reads.append(names)
                        or real_read(self, names))
    beats = reader.heartbeats()
    assert len(reads) == 1 and len(reads[0]) == 4
    assert sorted(beats) == ["alpha", "beta", "delta", "gamma"]
    for i, name in enumerate(("alpha", "beta", "gamma")):
        record = beats[name]
        assert record.error is None and record.beat is not None
        assert (record.beat.worker, record.beat.seq) == (name, i)
        assert [(h.job_id, h.attempt) for h in record.beat.jobs] == [(job, i + 1)]
        assert record.commit_time > 0
    assert beats["delta"].beat is None and "unreadable heartbeat" in beats["delta"].error
    reader.close()


# ------------------------------------------------------------------------- URLs


@pytest.mark.parametrize("form", ["path", "relative", "file-url"])
def test_every_url_form_reads_writes_and_beats(led: LedgerDir, form: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(led.root)
    url = {"path": str(led.path), "relative": "ledger.git",
           "file-url": f"file://{led.path}"}[form]
    ledger = Ledger(url, led.root / "cache", "alpha")
    outcome = ledger.write(claim_one("alpha"))
    assert main_of(led) == outcome.commit
    ledger.push_heartbeat(beat("alpha", 1))
    ledger.fetch(heartbeats=True)
    assert list(ledger.heartbeats()) == ["alpha"]
    held = [(s.name, s.holder) for s in ledger.snapshot().states.values() if s.holder]
    assert held == [("job-000", "alpha")]
    ledger.close()


# ----------------------------------------------------------------- object writes


def test_object_writes_match_git_and_survive_a_concurrent_gc(tmp_path: Path) -> None:
    """A fetch starts `git gc --auto` in the background; its prune-packed removes
    loose objects and their emptied fan-out directories while the ledger writes."""
    repo = GitRepo.init_bare(tmp_path / "r.git")
    for kind, data in (("blob", b"hello\n"), ("blob", b""), ("tree", b"")):
        sha = repo.write_object(kind, data)
        expected = subprocess.run(["git", "hash-object", "-t", kind, "--stdin"], input=data,
                                  capture_output=True, check=True).stdout.decode().strip()
        assert sha == expected
        assert repo.read_objects([sha])[sha] == (kind, data)
    stop = threading.Event()

    def gc() -> None:
        while not stop.is_set():
            for args in (["repack", "-q", "-d"], ["prune-packed"]):
                subprocess.run(["git", "-C", str(repo.path), *args], capture_output=True)

    thread = threading.Thread(target=gc)
    thread.start()
    try:
        for i in range(3000):
            repo.write_object("blob", str(i % 40).encode())
    finally:
        stop.set()
        thread.join()
    fsck = subprocess.run(["git", "-C", str(repo.path), "fsck", "--no-dangling"],
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr
    leftovers = [p for p in (repo.path / "objects").rglob("tmp_obj_*")]
    assert leftovers == []
    repo.close()


def test_a_batch_with_missing_and_ambiguous_names_reads_the_rest(tmp_path: Path) -> None:
    repo = GitRepo.init_bare(tmp_path / "r.git")
    shas = [repo.write_object("blob", f"{i}\n".encode()) for i in range(2000)]
    ambiguous = next(p for p, n in Counter(s[:4] for s in shas).items() if n > 1)
    missing = "0" * 40
    found = repo.read_objects([missing, ambiguous, shas[7], shas[8]])
    assert found == {missing: None, ambiguous: None, shas[7]: ("blob", b"7\n"),
                     shas[8]: ("blob", b"8\n")}
    assert repo.read_blob(shas[9]) == b"9\n"  # the same reader, still in step
    repo.close()


def test_a_saved_parse_restores_in_a_new_reader(led: LedgerDir, tmp_path: Path) -> None:
    """`reconciler status` and `run --once` restore the last parse (bench P4): a new
    process reads only what changed since, and sees what a fresh parse sees."""
    first = open_ledger(led, "status-1")
    first.snapshot(first.fetch())
    saved = tmp_path / "ledger.parsed"
    first.save_parsed(saved)
    first.close()
    writer = open_ledger(led, "alpha")
    writer.write(claim_one("alpha"))
    writer.close()

    again = Ledger(led.url, led.root / "cache-status-1", "status-1")
    assert again.load_parsed(saved) is not None
    restored = again.snapshot(again.fetch())
    fresh_reader = open_ledger(led, "fresh")
    fresh = fresh_reader.snapshot(fresh_reader.fetch())
    assert restored.base is not None and len(restored.changed) == 1  # only the claim re-read
    assert restored.states == fresh.states
    assert restored.manifest is not None and fresh.manifest is not None
    assert restored.manifest.specs == fresh.manifest.specs
    assert restored.manifest.fleet == fresh.manifest.fleet
    assert restored.manifest.manifest.hosts == fresh.manifest.manifest.hosts
    again.close()
    fresh_reader.close()

    saved.chmod(0o664)  # writable by others: never unpickled
    assert Ledger(led.url, led.root / "cache-x", "x").load_parsed(saved) is None
    assert Ledger(led.url, led.root / "cache-y", "y").load_parsed(tmp_path / "none") is None
