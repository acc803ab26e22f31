"""An in-memory ledger: the git Ledger's port, for deterministic loop tests.

Modelled on procrastinate's InMemoryConnector: the same calls as
`reconciler.git.ledger.Ledger` (fetch, snapshot, a compare-and-swap `write`,
heartbeats, manifest history), on a list of commits in memory. It judges every
write with the hook's table (`transitions.check_transition`), can lose races
and fail pushes on demand, and records what was written, so the worker and
reconciler loops run in microseconds on a clock the test owns.

    mem = MemoryLedger(manifest_bytes, clock=fake.now)
    worker_port = mem.port("w1")          # one port per identity
    mem.lose_races(1, rival=lambda: ...)  # the next push loses; a rival lands first
    mem.down = True                       # every call fails like an unreachable server
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NoReturn

from reconciler.git.push import Proposal, WriteOutcome
from reconciler.git.snapshot import HeartbeatRecord, Snapshot
from reconciler.protocol import trailers
from reconciler.protocol.access import Access
from reconciler.protocol.audit import Finding, is_restore, trail_mismatches
from reconciler.protocol.errors import GitError, LostRace, ManifestError, PushRejected
from reconciler.protocol.lease import Lease
from reconciler.protocol.manifest import LoadedManifest, load_manifest
from reconciler.protocol.schema import Heartbeat
from reconciler.protocol.state import JobState, parse_state
from reconciler.protocol.transitions import Actor, Role, check_transition, create, label_of

Changes = dict[str, tuple[JobState | None, JobState]]


@dataclass(frozen=True)
class MemoryCommit:
    sha: str
    parent: str | None
    author: str
    message: str
    states: dict[str, JobState]  # every job's state at this commit
    manifest: bytes
    changes: Changes  # job id -> (before, after) made by this commit
    meanings: dict[str, str]  # job id -> the move its trailer group names
    at: float  # the ledger clock when it landed


@dataclass
class MemoryLedger:
    """The shared ledger; each actor writes through its own `port(identity)`."""

    manifest: bytes
    clock: Callable[[], float]
    access: Access = field(default_factory=Access)
    hook: bool = True  # judge every write with the table, as the pre-receive hook does
    down: bool = False  # every fetch, write and beat fails (an unreachable server)
    commits: list[MemoryCommit] = field(default_factory=list)
    beats: dict[str, HeartbeatRecord] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)  # why each refused write was refused
    _races: list[Callable[[], None] | None] = field(default_factory=list)
    # identity -> what runs just before each of its pushes (a faster rival's turn)
    before_push: dict[str, Callable[[], None]] = field(default_factory=dict)
    _failures: int = 0
    _shas: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        """The first commit, as `reconciler init` writes it: every job pending."""
        if not self.commits:
            steps = [create(spec.job_id, spec.name)
                     for spec in load_manifest(self.manifest).specs.values()]
            message = trailers.render("init ledger", [s.change for s in steps], "reconciler",
                                      kind=trailers.INIT)
            self._append("reconciler", message, {s.new.job_id: (None, s.new) for s in steps},
                         {s.new.job_id: s.move.value for s in steps}, self.manifest)

    # ------------------------------------------------------------ test knobs

    def port(self, identity: str) -> MemoryPort:
        return MemoryPort(self, identity)

    def lose_races(self, n: int, rival: Callable[[], None] | None = None) -> None:
        """The next `n` pushes to main lose their race; before each loss `rival`
        (if given) runs, typically another port's write landing first."""
        self._races += [rival] * n

    def fail_pushes(self, n: int) -> None:
        """The next `n` pushes to main fail like a network error (nothing lands)."""
        self._failures += n

    @property
    def tip(self) -> MemoryCommit:
        return self.commits[-1]

    def states(self) -> dict[str, JobState]:
        return dict(self.tip.states)

    def moves(self) -> list[tuple[str, str, int, str, str]]:
        """(author, job name, attempt, label, meaning) of every change written."""
        return [(c.author, new.name, new.attempt, label_of(old, new), c.meanings.get(job, ""))
                for c in self.commits for job, (old, new) in c.changes.items()]

    def force(self, author: str, states: list[JobState], subject: str = "by hand") -> str:
        """A commit that bypasses the hook (a ledger hosted where hooks cannot run)."""
        changes = {s.job_id: (self.tip.states.get(s.job_id), s) for s in states}
        return self._append(author, f"{subject}\n", changes, {}, self.tip.manifest).sha

    def set_manifest(self, data: bytes, author: str = "operator") -> str:
        """An operator's commit of manifest.toml (valid or not)."""
        return self._append(author, "edit manifest.toml\n", {}, {}, data).sha

    # ------------------------------------------------------------- internals

    def _append(self, author: str, message: str, changes: Changes,
                meanings: dict[str, str], manifest: bytes) -> MemoryCommit:
        states = dict(self.commits[-1].states) if self.commits else {}
        states.update({job: new for job, (_old, new) in changes.items()})
        sha = hashlib.sha1(f"{next(self._shas)}".encode()).hexdigest()
        commit = MemoryCommit(sha, self.commits[-1].sha if self.commits else None, author,
                              message, states, manifest, changes, meanings, self.clock())
        self.commits.append(commit)
        return commit

    def _by_sha(self, sha: str) -> MemoryCommit:
        return next(c for c in self.commits if c.sha == sha)


class MemoryPort:
    """One identity's view of a MemoryLedger: the calls the loops make on Ledger."""

    def __init__(self, mem: MemoryLedger, identity: str) -> None:
        self.mem = mem
        self.identity = identity
        self.url = f"memory://{identity}"
        self.push_timeout_s = 60.0
        self.clock = mem.clock
        self._manifests: dict[bytes, tuple[LoadedManifest | None, str | None]] = {}
        self._fetched: str | None = None
        self.damage: str | None = None  # see break_cache
        self._repairable = True

    def _reachable(self, what: str) -> None:
        if self.mem.down:
            raise GitError(f"{what} {self.url} failed: the ledger is unreachable")
        if self.damage is not None:
            raise GitError(f"{what} {self.url} failed: {self.damage}")

    def break_cache(self, damage: str, *, repairable: bool = True) -> None:
        """This port's local cache is damaged: every fetch and write fails with
        `damage` until repair_cache replaces it (never, if not `repairable`: a
        disk that keeps corrupting what is written to it)."""
        self.damage, self._repairable = damage, repairable

    def repair_cache(self) -> str | None:
        damage = self.damage
        if damage is not None and self._repairable:
            self.damage = None
        return damage

    def close(self) -> None:
        pass

    def fetch(self, *, heartbeats: bool = False, timeout: float | None = None) -> str | None:
        self._reachable("fetch from")
        self._fetched = self.mem.tip.sha
        return self._fetched

    def tip(self) -> str | None:
        return self._fetched

    def snapshot(self, revision: str | None = None) -> Snapshot:
        commit = self.mem._by_sha(revision or self._fetched or self.mem.tip.sha)
        loaded, error = self._manifest(commit.manifest)
        return Snapshot(commit.sha, loaded, error, self.mem.access, dict(commit.states))

    def _manifest(self, data: bytes) -> tuple[LoadedManifest | None, str | None]:
        if data not in self._manifests:
            try:
                self._manifests[data] = (load_manifest(data), None)
            except ManifestError as exc:
                self._manifests[data] = (None, str(exc))
        return self._manifests[data]

    def write(self, build: Callable[[Snapshot], Proposal | None], *, max_tries: int = 50,
              deadline_s: float = 120.0, sleep: Callable[[float], None] | None = None,
              ) -> WriteOutcome:
        """Build on the tip, "push"; a lost race rebuilds on the new tip at once
        (no backoff: the test decides what lands in between)."""
        lost = 0
        for _ in range(max_tries):
            snap = self.snapshot(self.fetch())
            proposal = build(snap)
            if proposal is None:
                return WriteOutcome(None, snap, lost)
            if (rival := self.mem.before_push.get(self.identity)) is not None:
                rival()  # lands first only if it writes: the tip check below decides
            if self.mem._failures:
                self.mem._failures -= 1
                raise GitError(f"push to {self.url} failed: connection reset")
            if self.mem._races:
                rival = self.mem._races.pop(0)
                if rival is not None:
                    rival()
                lost += 1
                continue
            if self.mem.tip.sha != snap.revision:
                lost += 1
                continue
            return WriteOutcome(self._land(snap, proposal), snap, lost)
        raise LostRace(f"gave up after {lost} lost races on {self.url}", lost_races=lost)

    def _land(self, snap: Snapshot, proposal: Proposal) -> str:
        changes: Changes = {}
        for path, data in proposal.files.items():
            job_id = path.rsplit("/", 1)[-1].removesuffix(".json")
            new = parse_state(data, job_id)
            if isinstance(new, str):
                raise PushRejected(f"{self.url} refused the push: {new}", reason=new)
            changes[job_id] = (snap.states.get(job_id), new)
        subject = proposal.subject or trailers.subject_for(proposal.changes, self.identity)
        message = trailers.render(subject, proposal.changes, self.identity, proposal.body,
                                  proposal.kind or trailers.MOVES)
        if self.mem.hook and not is_restore(message):
            budget = Lease.of(snap.manifest.fleet if snap.manifest else None).max_attempts
            for old, new in changes.values():
                try:
                    check_transition(old, new, self.mem.access.actor(self.identity),
                                     max_attempts=budget)
                except Exception as exc:
                    self._refuse(str(exc))
        meanings = {c.job_id: c.meaning for c in proposal.changes}
        return self.mem._append(self.identity, message, changes, meanings,
                                self.mem.tip.manifest).sha

    # ------------------------------------------------------------ heartbeats

    def _refuse(self, why: str) -> NoReturn:
        """What the pre-receive hook's refusal reads like to the pusher."""
        self.mem.rejected.append(why)
        reason = f"trainledger: refused: {why}"
        raise PushRejected(f"{self.url} refused the push: {reason}", reason=reason) from None

    def push_heartbeat(self, beat: Heartbeat) -> str:
        self._reachable("heartbeat push to")
        if self.mem.hook and self.mem.access.role_of(self.identity) is None:
            self._refuse(f"refs/heartbeats/{self.identity}: identity {self.identity!r} has no "
                         "role in access.toml; it may not heartbeat")
        sha = hashlib.sha1(f"beat {self.identity} {beat.seq} {id(beat)}".encode()).hexdigest()
        self.mem.beats[self.identity] = HeartbeatRecord(self.identity, sha, beat, None,
                                                        self.clock())
        return sha

    def heartbeats(self) -> dict[str, HeartbeatRecord]:
        return dict(self.mem.beats)

    # ------------------------------------------------------ manifest history

    def last_commit_touching(self, path: str, rev: str) -> str | None:
        if path != "manifest.toml":
            return None
        commits = self.mem.commits[: self.mem.commits.index(self.mem._by_sha(rev)) + 1]
        last = None
        for prev, c in zip([None, *commits], commits, strict=False):
            if prev is None or prev.manifest != c.manifest:
                last = c.sha
        return last

    def manifest_history(self, rev: str, limit: int = 50) -> Iterator[tuple[str, bytes]]:
        """(commit, manifest.toml) of the commits that changed it, newest first."""
        commits = self.mem.commits[: self.mem.commits.index(self.mem._by_sha(rev)) + 1]
        changed = [c for prev, c in zip([None, *commits], commits, strict=False)
                   if prev is None or prev.manifest != c.manifest]
        for c in list(reversed(changed))[:limit]:
            yield c.sha, c.manifest

    def gc(self) -> None:
        pass


class MemoryRechecker:
    """The re-check (recheck.py) over a MemoryLedger's commits: each change is
    judged with the table as its author's role, and the trailers against it."""

    def __init__(self, mem: MemoryLedger) -> None:
        self.mem = mem
        self.checked = 0

    def check(self, tip: str) -> list[Finding]:
        findings = []
        for commit in self.mem.commits[self.checked:]:
            finding = self.judge(commit)
            if finding is not None:
                findings.append(finding)
        self.checked = len(self.mem.commits)
        return findings

    def judge(self, c: MemoryCommit) -> Finding | None:
        role = self.mem.access.role_of(c.author)
        if c.parent is not None and not (role is Role.RECONCILER and is_restore(c.message)):
            manifest = self.mem._by_sha(c.parent).manifest
            try:
                max_attempts = load_manifest(manifest).fleet.max_attempts
            except ManifestError:
                max_attempts = Lease.of(None).max_attempts
            for old, new in c.changes.values():
                try:
                    if role is None:
                        raise ValueError(f"author {c.author!r} has no role")
                    check_transition(old, new, Actor(c.author, role), max_attempts=max_attempts)
                except Exception as exc:
                    restore = {j: (n, o) for j, (o, n) in c.changes.items() if o is not None}
                    return Finding(c.sha, c.author, f"commit {c.sha[:12]}: {exc}", restore)
        mismatches = trail_mismatches(c.sha, c.message, c.changes)
        return Finding(c.sha, c.author, "; ".join(mismatches)) if mismatches else None
