"""The fleet over real ssh: identity comes from the key, the forced command
allows only the ledger and the store, and the hook judges every push.

The hook's full rule matrix is tested over local paths in
tests/integration/test_hook.py; here each rule is crossed once over ssh, with
the pusher's identity coming from `authorized_keys` and nowhere else.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import closing, contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

import pytest
import zstandard

from ledgerkit import LedgerDir, make_ledger
from reconciler.cli import main as cli
from reconciler.git.ledger import Ledger
from reconciler.git.push import Proposal, PushStatus
from reconciler.protocol import trailers
from reconciler.protocol.errors import PushRejected
from reconciler.protocol.schema import Artifact, JobState, Status
from reconciler.store.backends import open_store
from reconciler.store.bundle import pack
from workerkit import Fleet as WorkerFleet

if TYPE_CHECKING:  # the fixtures' types; tests/conftest.py is also a `conftest`
    from conftest import SshClient, SshServer

pytestmark = pytest.mark.ssh

SHA_ZERO = "0" * 64


@contextmanager
def ssh_env(client: SshClient, **extra: str) -> Iterator[None]:
    """Git started in here talks ssh with `client`'s key (and whatever `extra` adds)."""
    with mock.patch.dict(os.environ, {**client.env, **extra}):
        yield


def open_ledger(client: SshClient, ledger: LedgerDir, root: Path, identity: str | None = None,
                **extra: str) -> Ledger:
    """A Ledger over ssh with `client`'s key; `identity` is only what the client
    claims (author, TRAINLEDGER_IDENTITY in its own environment)."""
    with ssh_env(client, **extra):
        return Ledger(client.server.url(ledger.path),
                      root / f"host-{client.key.name}" / f"{identity or client.name}.git",
                      identity or client.name)


def change(state: JobState, transition: str, meaning: str) -> trailers.Change:
    return trailers.Change(state.job_id, state.name, state.attempt, transition, meaning)


def propose(*states: tuple[JobState, str, str]) -> Proposal:
    return Proposal.of_states([s for s, _, _ in states],
                              [change(s, t, m) for s, t, m in states])


def main_of(ledger: LedgerDir) -> str:
    return ledger.git("rev-parse", "main").strip()


@dataclass
class Fleet:
    """One ledger on the 'Pi', reached over ssh by two workers and an operator."""

    ledger: LedgerDir
    alpha: SshClient
    beta: SshClient
    operator: SshClient
    root: Path

    def open(self, client: SshClient, identity: str | None = None,
             **extra: str) -> closing[Ledger]:
        return closing(open_ledger(client, self.ledger, self.root, identity, **extra))

    def jobs(self) -> list[JobState]:
        with self.open(self.operator) as ledger:
            return sorted(ledger.snapshot(ledger.fetch()).states.values(), key=lambda s: s.name)


@pytest.fixture
def fleet(sshd: SshServer, tmp_path: Path) -> Fleet:
    ledger = make_ledger(tmp_path, jobs=3)
    enroll = lambda name, role="worker": sshd.enroll(name, ledger.path, ledger.store, role)  # noqa: E731
    return Fleet(ledger, enroll("alpha"), enroll("beta"), enroll("operator", "operator"),
                 tmp_path)


def write(ledger: Ledger, build) -> str:
    outcome = ledger.write(build)
    assert outcome.commit, "the builder had nothing to write"
    return outcome.commit


def claim(ledger: Ledger, job: JobState) -> JobState:
    def build(snap):
        old = snap.states[job.job_id]
        new = old.model_copy(update={"status": Status.CLAIMED, "attempt": old.attempt + 1,
                                     "holder": ledger.identity})
        return propose((new, "pending->claimed", "claim"))

    write(ledger, build)
    return ledger.snapshot().states[job.job_id]


def transition(ledger: Ledger, job_id: str, label: str, meaning: str, **update) -> JobState:
    def build(snap):
        new = snap.states[job_id].model_copy(update=update)
        return propose((new, label, meaning))

    write(ledger, build)
    return ledger.snapshot().states[job_id]


def push_refused(ledger: Ledger, sha: str, ref: str = "refs/heads/main") -> str:
    result = ledger.push(sha, ref)
    assert result.status is PushStatus.REJECTED, result
    return result.message


# ------------------------------------------------------------- forced command


def test_forced_command_refuses_everything_but_git_and_store(fleet: Fleet, sshd: SshServer,
                                                            tmp_path: Path) -> None:
    alpha = fleet.alpha
    cases = {
        "id": "command not allowed",
        "sh -c 'cat /etc/passwd'": "command not allowed",
        "git-upload-pack '--help'": "may not start with '-'",
        "git-receive-pack '-u' 'x'": "expected one quoted path",
        "git-receive-pack -u": "may not start with '-'",
        f"git-upload-pack '{fleet.ledger.path}'; id": "expected one quoted path",
        "git-upload-pack '/etc'": "is not the ledger",
        f"store-put ../../{SHA_ZERO}": "expected `store-put <sha256>`",
    }
    for command, reason in cases.items():
        proc = alpha.run(command)
        err = proc.stderr.decode()
        assert proc.returncode == 1, (command, err)
        assert "trainledger-shell: refused: " in err and reason in err, (command, err)
        assert proc.stdout == b""
    login = alpha.run(None)
    assert login.returncode == 1
    assert "interactive login is not allowed" in login.stderr.decode()
    assert not (Path.home() / "git-shell-commands").exists()


def test_another_repository_is_refused(fleet: Fleet, sshd: SshServer, tmp_path: Path) -> None:
    other = tmp_path / "other.git"
    subprocess.run(["git", "init", "-q", "--bare", str(other)], check=True)
    with ssh_env(fleet.alpha):
        proc = subprocess.run(["git", "ls-remote", sshd.url(other)], capture_output=True,
                              text=True, timeout=20)
    assert proc.returncode != 0
    assert f"'{other}' is not the ledger" in proc.stderr


def test_an_unenrolled_key_gets_nothing(fleet: Fleet, sshd: SshServer, tmp_path: Path) -> None:
    proc = sshd.unenrolled("stranger").run(f"git-upload-pack '{fleet.ledger.path}'")
    assert proc.returncode == 255 and b"Permission denied" in proc.stderr


# ----------------------------------------------------- the hook, over ssh


def test_wrong_writes_are_refused_each_with_its_own_message(fleet: Fleet) -> None:
    jobs = fleet.jobs()
    with fleet.open(fleet.alpha) as alpha, fleet.open(fleet.beta) as beta:
        # Given: beta holds job 0 and runs it; alpha has claimed job 1 twice
        b_job = claim(beta, jobs[0])
        b_job = transition(beta, b_job.job_id, "claimed->running", "start",
                           status=Status.RUNNING)
        a_job = claim(alpha, jobs[1])
        a_job = transition(alpha, a_job.job_id, "claimed->pending", "release",
                           status=Status.PENDING, holder=None)
        a_job = claim(alpha, a_job)
        assert a_job.attempt == 2
        tip = alpha.fetch()
        snap = alpha.snapshot(tip)
        refused: dict[str, str] = {}

        # When: alpha completes beta's job
        done = b_job.model_copy(update={
            "status": Status.COMPLETED, "holder": None,
            "artifact": Artifact(sha256="ab" * 32, size=1)})
        sha = alpha.commit(tip, propose((done, "running->completed", "complete")))
        refused["other's job"] = push_refused(alpha, sha)

        # a stale attempt of its own job
        stale = a_job.model_copy(update={"status": Status.RUNNING, "attempt": 1})
        sha = alpha.commit(tip, propose((stale, "claimed->running", "start")))
        refused["stale"] = push_refused(alpha, sha)

        # a manifest edit
        manifest = alpha.repo.read_blob(
            alpha.repo.ls_tree(tip, "manifest.toml")[0].sha) or b""
        edited = Proposal({"manifest.toml": manifest.replace(b"seed = 0", b"seed = 100")}, [],
                          "edit manifest")
        refused["manifest"] = push_refused(alpha, alpha.commit(tip, edited))

        # a symlink in the tree
        tree = alpha.repo.commit_tree(tip)
        link_blob = alpha.repo.write_object("blob", b"../../manifest.toml")
        link_tree = _tree_with_symlink(alpha, tree, "link", link_blob)
        sha = alpha.repo.write_commit(link_tree, [tip], alpha.signature(), "add a link\n")
        refused["symlink"] = push_refused(alpha, sha)

        # an illegal middle commit hidden by a legal tip
        start = a_job.model_copy(update={"status": Status.RUNNING})
        first = alpha.commit(tip, propose((start, "claimed->running", "start")))
        stolen = b_job.model_copy(update={"holder": "alpha"})
        middle = alpha.commit(first, propose((stolen, "running->running", "steal")))
        last = alpha.commit(middle, propose((b_job, "running->running", "give back")))
        assert alpha.repo.git("diff", "--quiet", first, last, check=False).returncode == 0
        refused["middle"] = push_refused(alpha, last)

        # a write to beta's heartbeat ref
        alpha.repo.write_object("tree", b"")
        beat = alpha.repo.write_commit("4b825dc642cb6eb9a060e54bf8d69288fbee4904", [],
                                       alpha.signature(), "heartbeat beta\n\n{}")
        refused["heartbeat"] = push_refused(alpha, beat, "refs/heartbeats/beta")

        # a deletion and a force-push of main
        refused["delete"] = _git_push_refused(alpha, ":refs/heads/main")
        rewound = alpha.repo.write_commit(alpha.repo.commit_tree(tip), [],
                                          alpha.signature(), "rewrite history\n")
        refused["force"] = _git_push_refused(alpha, f"+{rewound}:refs/heads/main")

    # Then: main never moved, and each refusal says why
    assert main_of(fleet.ledger) == tip == snap.revision
    expected = {
        "other's job": f"job {b_job.name} ({b_job.job_id}) attempt 1, held by beta",
        "stale": "stale attempt 1: the ledger holds attempt 2",
        "manifest": "manifest.toml may be changed by operators only, not alpha",
        "symlink": "link: a symlink may not enter the ledger",
        "middle": f"commit {middle[:12]}: job {b_job.name}",
        "heartbeat": "alpha may write only refs/heartbeats/alpha",
        "delete": "delet",
        "force": "forward",
    }
    for case, words in expected.items():
        assert words in refused[case], (case, refused[case])
    assert len(set(refused.values())) == len(refused)
    assert "held by beta (attempt 1), not alpha" in refused["other's job"]


def _tree_with_symlink(ledger: Ledger, tree: str, name: str, blob: str) -> str:
    return ledger.repo.write_tree([*ledger.repo.read_tree(tree), ("120000", name, blob)])


def _git_push_refused(ledger: Ledger, refspec: str) -> str:
    proc = ledger.repo.git("push", "--porcelain", ledger.url, refspec, check=False, timeout=30)
    assert proc.returncode != 0, proc
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def test_identity_comes_from_the_key_not_the_environment(fleet: Fleet) -> None:
    jobs = fleet.jobs()
    # alpha's key, claiming to be the operator in every way a client can
    spoof = {"TRAINLEDGER_IDENTITY": "operator"}
    send = shlex.join([*fleet.alpha.ssh_argv, "-o", "SendEnv=TRAINLEDGER_IDENTITY"])
    with fleet.open(fleet.alpha, "operator", GIT_SSH_COMMAND=send, **spoof) as fake:
        tip = fake.fetch()
        cancel = jobs[0].model_copy(update={"status": Status.CANCELLED})
        message = push_refused(fake, fake.commit(tip, propose(
            (cancel, "pending->cancelled", "cancel"))))
        assert "author 'operator' is not the pusher 'alpha'" in message
    # ... and with its own name as author, the role is still a worker's
    with fleet.open(fleet.alpha, **spoof) as alpha:
        tip = alpha.fetch()
        message = push_refused(alpha, alpha.commit(tip, propose(
            (cancel, "pending->cancelled", "cancel"))))
        assert ("pending->cancelled by alpha (worker) refused: only operator or reconciler"
                in message)
        # nor a reconciler's: creating a state file
        ghost = JobState(job_id="ff" + "0" * 14, name="ghost", status=Status.PENDING)
        message = push_refused(alpha, alpha.commit(tip, propose(
            (ghost, "new->pending", "create"))))
        assert "only the reconciler creates state files (pusher alpha (worker))" in message
    assert main_of(fleet.ledger) == tip


def run_cli(client: SshClient, *argv: str) -> tuple[int, str]:
    """`reconciler ...` in-process with `client`'s key; (exit code, stderr)."""
    err = io.StringIO()
    with ssh_env(client), redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, err.getvalue()


def test_operator_cancels_and_requeues_and_a_worker_cannot(fleet: Fleet) -> None:
    job = fleet.jobs()[2]
    url = fleet.operator.server.url(fleet.ledger.path)
    tip = main_of(fleet.ledger)
    # a worker's `reconciler cancel`, under its own name or the operator's, is refused
    code, err = run_cli(fleet.alpha, "cancel", job.name, "--ledger", url, "--as", "alpha")
    assert code == 1 and "pending->cancelled by alpha (worker) refused" in err, err
    code, err = run_cli(fleet.alpha, "cancel", job.name, "--ledger", url, "--as", "operator")
    assert code == 1 and "author 'operator' is not the pusher 'alpha'" in err, err
    assert main_of(fleet.ledger) == tip
    # the operator's cancel, by command, lands
    code, err = run_cli(fleet.operator, "cancel", job.name, "--ledger", url, "--as", "operator")
    assert code == 0, err
    with fleet.open(fleet.alpha) as alpha, fleet.open(fleet.operator) as operator:
        # a worker's requeue by commit is refused; the operator's goes through
        with pytest.raises(PushRejected, match="only operator may make it"):
            transition(alpha, job.job_id, "cancelled->pending", "requeue",
                       status=Status.PENDING, last_error=None)
        requeued = transition(operator, job.job_id, "cancelled->pending", "requeue",
                              status=Status.PENDING, lost=0, last_error=None)
        assert requeued.status is Status.PENDING
    actors = [(t[3], t[4]) for t in fleet.ledger.transitions() if t[1] == job.job_id]
    assert actors[-2:] == [("pending->cancelled", "operator"), ("cancelled->pending", "operator")]


# ------------------------------------------------------ workers and the store


def test_two_workers_claim_and_complete_over_ssh(sshd: SshServer, tmp_path: Path) -> None:
    # Given a ledger and store on the "Pi", and two hosts each with its own key
    ledger = make_ledger(tmp_path, jobs=[{"name": f"job-{i}", "seed": i,
                                          "hyper": {"seconds": 0.2}} for i in range(4)])
    hosts = {name: sshd.enroll(name, ledger.path, ledger.store) for name in ("alpha", "beta")}
    fleet = WorkerFleet(sshd.url(ledger.path), tmp_path, ledger.store)
    # When both run until idle, over ssh:// to the ledger and to the store
    workers = [fleet.start_worker(name, "--store", sshd.url(ledger.store), "--exit-when-idle",
                                  env=client.env) for name, client in hosts.items()]
    try:
        for w in workers:
            assert w.wait(90) == 0, w.text()
    finally:
        fleet.stop_all()
    # Then every job completed once, by the worker that claimed it, bundles in the store
    history = ledger.transitions()
    claims = {job: actor for _, job, _, t, actor in history if t == "pending->claimed"}
    done = [(job, actor) for _, job, _, t, actor in history if t == "running->completed"]
    assert len(done) == 4 and len({job for job, _ in done}) == 4
    assert all(claims[job] == actor for job, actor in done)
    assert set(claims.values()) == {"alpha", "beta"}, claims
    with ssh_env(hosts["alpha"]):
        states = fleet.states(tmp_path / "reader" / "ledger.git")
    assert len(states) == 4
    for state in states.values():
        assert state.status is Status.COMPLETED
        bundle = ledger.store / "sha256" / state.artifact.sha256[:2] / \
            f"{state.artifact.sha256}.tar.zst"
        assert hashlib.sha256(bundle.read_bytes()).hexdigest() == state.artifact.sha256
        # the attempt's log went over ssh to the store too
        log = ledger.store / "sha256" / state.log.sha256[:2] / f"{state.log.sha256}.tar.zst"
        assert state.log.attempt == state.attempt and log.stat().st_size == state.log.size
    # `reconciler logs` prints one from another host, over ssh to the ledger and the store
    job = next(iter(states.values()))
    with ssh_env(hosts["alpha"]), redirect_stdout(io.StringIO()) as out:
        code = cli.main(["logs", job.job_id, "--ledger", sshd.url(ledger.path),
                         "--store", sshd.url(ledger.store),
                         "--state-dir", str(tmp_path / "logs-host")])
    assert code == 0 and "quick: done" in out.getvalue()
    # and each host's heartbeat ref was written under its own name only
    refs = ledger.git("for-each-ref", "--format=%(refname)", "refs/heartbeats/").split()
    assert sorted(refs) == ["refs/heartbeats/alpha", "refs/heartbeats/beta"]


def test_store_put_of_mismatched_bytes_never_appears(fleet: Fleet) -> None:
    store = fleet.ledger.store
    good = b"a real bundle would be zstd, the store only cares about the hash\n"
    sha = hashlib.sha256(good).hexdigest()
    # bytes that do not hash to the name they are put under
    proc = fleet.alpha.run(f"store-put {sha}", input=good + b"tampered")
    assert proc.returncode == 1 and b"refused" in proc.stderr, proc
    assert fleet.alpha.run(f"store-has {sha}").returncode == 1
    assert not list(store.rglob("*.tar.zst")) and not list(store.rglob(".put-*"))
    # the right bytes go in, once, and come back as they went
    assert fleet.alpha.run(f"store-put {sha}", input=good).returncode == 0
    assert fleet.beta.run(f"store-put {sha}", input=good).returncode == 0
    assert fleet.beta.run(f"store-has {sha}").returncode == 0
    assert fleet.beta.run(f"store-get {sha}").stdout == good
    assert [p.name for p in store.rglob("*") if p.is_file()] == [f"{sha}.tar.zst"]


# ------------------------------------------------------------ fetch-artifact


def tar_zst(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A bundle crafted by hand, as an attacker with a worker key could."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return zstandard.ZstdCompressor().compress(raw.getvalue())


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def zstd_bomb(size: int) -> bytes:
    """A few KiB that inflate to `size` bytes inside a pax extended header, which
    no member's size accounts for: only a running output cap stops it."""
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as z:
        z.write(member("././@PaxHeader", tarfile.XHDTYPE, size=size).tobuf(tarfile.USTAR_FORMAT))
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            z.write(zeros)
        z.write(member("weights.bin", size=0).tobuf(tarfile.USTAR_FORMAT) + bytes(1024))
    return out.getvalue()


def complete_with(alpha: Ledger, artifacts: dict[str, tuple[str, int]]) -> None:
    """alpha claims, starts and completes each job with the given bundle: legal
    worker transitions, so the ledger names exactly the bundles crafted here."""
    snap = alpha.snapshot(alpha.fetch())
    held = {}
    for label, meaning, update in [
        ("pending->claimed", "claim", lambda s: {"status": Status.CLAIMED, "attempt": 1,
                                                 "holder": "alpha"}),
        ("claimed->running", "start", lambda s: {"status": Status.RUNNING}),
        ("running->completed", "complete", lambda s: {
            "status": Status.COMPLETED, "holder": None,
            "artifact": Artifact(sha256=artifacts[s.name][0], size=artifacts[s.name][1])}),
    ]:
        for state in snap.states.values():
            if state.name in artifacts:
                base = held.get(state.job_id, state)
                held[state.job_id] = base.model_copy(update=update(base))
        proposal = propose(*[(s, label, meaning) for s in held.values()])
        sha = alpha.commit(alpha.tip(), proposal)
        assert alpha.push(sha).status is PushStatus.WON
        alpha.repo.update_ref("refs/remotes/ledger/main", sha)


def test_fetch_artifact_over_ssh_unpacks_good_bundles_and_refuses_evil_ones(
        sshd: SshServer, tmp_path: Path) -> None:
    # Given: a good bundle and five evil ones, put in the store under their real sha
    pi = tmp_path / "pi"
    names = ["good", "dotdot", "absolute", "symlink", "device", "bomb"]
    ledger = make_ledger(pi, jobs=[{"name": n, "seed": i} for i, n in enumerate(names)])
    alpha = sshd.enroll("alpha", ledger.path, ledger.store)
    operator = sshd.enroll("operator", ledger.path, ledger.store, "operator")
    outputs = tmp_path / "outputs"
    (outputs / "sub").mkdir(parents=True)
    (outputs / "metrics.json").write_text('{"loss": 0.1}\n')
    (outputs / "sub" / "weights.bin").write_bytes(os.urandom(4096))
    good = io.BytesIO()
    pack(outputs, good)
    victim = tmp_path / "victim"
    bundles = {
        "good": good.getvalue(),
        "dotdot": tar_zst([(member("ok.txt"), b"ok"), (member("../escape.txt"), b"x")]),
        "absolute": tar_zst([(member(str(victim / "abs.txt")), b"x")]),
        "symlink": tar_zst([(member("link", tarfile.SYMTYPE, linkname=str(tmp_path)), None),
                            (member("link/through.txt"), b"x")]),
        "device": tar_zst([(member("null", tarfile.CHRTYPE, devmajor=1, devminor=3), None)]),
        "bomb": zstd_bomb(64 << 20),
    }
    artifacts = {}
    with ssh_env(alpha):  # through SshStore, one reused connection, as a worker puts
        store = open_store(sshd.url(ledger.store), tmp_path / "alpha-state")
        for name, data in bundles.items():
            sha = hashlib.sha256(data).hexdigest()
            (tmp_path / f"{name}.tar.zst").write_bytes(data)
            stored = store.put_file(tmp_path / f"{name}.tar.zst")
            assert stored == Artifact(sha256=sha, size=len(data))
            artifacts[name] = (sha, len(data))
    with closing(open_ledger(alpha, ledger, tmp_path)) as writer:
        complete_with(writer, artifacts)

    def fetch(job: str, dest: Path) -> subprocess.CompletedProcess[str]:
        """`reconciler fetch-artifact` in-process (a subprocess per bundle costs ~2 s
        of imports on a loaded 2-core machine), with the operator's key."""
        argv = ["fetch-artifact", job, str(dest), "--ledger", sshd.url(ledger.path),
                "--store", sshd.url(ledger.store), "--state-dir", str(tmp_path / "op-state"),
                "--max-bytes", str(16 << 20), "--max-members", "1000"]
        out, err = io.StringIO(), io.StringIO()
        with ssh_env(operator), redirect_stdout(out), redirect_stderr(err):
            code = cli.main(argv)
        return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())

    # When / Then: the good bundle unpacks, byte for byte
    (tmp_path / "fetched").mkdir()
    dest = tmp_path / "fetched" / "good"
    proc = fetch("good", dest)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == \
        ["metrics.json", "sub", "sub/weights.bin"]
    assert (dest / "sub" / "weights.bin").read_bytes() == \
        (outputs / "sub" / "weights.bin").read_bytes()
    # a DEST that is not empty is refused
    proc = fetch("good", dest)
    assert proc.returncode == 1 and "not an empty directory" in proc.stderr

    # every evil bundle is refused, DEST stays empty and nothing appears outside it
    victim.mkdir()
    before = sorted(str(p) for p in tmp_path.rglob("*") if "op-state" not in str(p))
    reasons = {"dotdot": "'../escape.txt': path with '..'",
               "absolute": "abs.txt': absolute path",
               "symlink": "'link': only regular files and directories",
               "device": "'null': only regular files and directories",
               "bomb": "decompresses to more than"}
    for name, reason in reasons.items():
        dest = tmp_path / "fetched" / name
        dest.mkdir()
        proc = fetch(name, dest)
        assert proc.returncode == 1, (name, proc.stdout, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "refused the bundle" in proc.stderr and reason in proc.stderr, proc.stderr
        assert list(dest.iterdir()) == [], name
        before.append(str(dest))
    after = sorted(str(p) for p in tmp_path.rglob("*") if "op-state" not in str(p))
    assert after == sorted(before)
    assert not (tmp_path / "fetched" / "escape.txt").exists()
    assert list(victim.iterdir()) == []
