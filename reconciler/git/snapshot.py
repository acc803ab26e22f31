"""What a read of the ledger gives: main at one revision, parsed, and the heartbeats.

`Snapshot` and `HeartbeatRecord` are the values every reader and the ledger
port hand around; `TreeIndex` is the classified tree of main that `Ledger`
keeps between reads (and pickles in its saved parse), so that a snapshot lists
and parses only what changed since the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

from reconciler.git.plumbing import parse_commit
from reconciler.protocol.access import Access
from reconciler.protocol.layout import STATE_RE, TOP_LEVEL_FILES
from reconciler.protocol.manifest import LoadedManifest
from reconciler.protocol.schema import Heartbeat, JobState


@dataclass(frozen=True)
class Snapshot:
    """Everything at one revision of main, parsed."""

    revision: str
    manifest: LoadedManifest | None
    manifest_error: str | None
    access: Access
    states: dict[str, JobState]
    state_errors: dict[str, str] = field(default_factory=dict)
    stray_paths: tuple[str, ...] = ()
    # the job ids whose state file differs from the snapshot at `base`, which this
    # Ledger read last; base None when it listed the tree whole (no delta known)
    base: str | None = None
    changed: frozenset[str] = frozenset()

    def state(self, job_id: str) -> JobState | None:
        return self.states.get(job_id)


@dataclass(frozen=True)
class HeartbeatRecord:
    worker: str
    sha: str
    beat: Heartbeat | None
    error: str | None
    commit_time: float

    @classmethod
    def read(cls, worker: str, sha: str, found: tuple[str, bytes] | None) -> HeartbeatRecord:
        """A heartbeat ref's object, parsed: a commit whose message body is the beat."""
        beat, error, when = None, None, 0.0
        if found and found[0] == "commit":
            commit = parse_commit(found[1])
            when = commit.committer_time
            try:
                payload = commit.message.split("\n\n", 1)[-1]
                beat = Heartbeat.model_validate_json(payload)
            except (ValidationError, UnicodeDecodeError) as exc:
                error = f"unreadable heartbeat: {str(exc).splitlines()[0]}"
        else:
            error = "heartbeat ref is not a commit"
        return cls(worker, sha, beat, error, when)


class TreeIndex:
    """The tree of main at `rev`, classified and kept up to date change by
    change: state files by job id (parsed), the two operator files, strays."""

    def __init__(self, rev: str) -> None:
        self.rev = rev
        self.paths: dict[str, tuple[str, str]] = {}  # path -> (mode, blob)
        self.states: dict[str, JobState] = {}
        self.errors: dict[str, str] = {}  # path -> why its state file is unreadable
        self.stray: set[str] = set()
        self.manifest: str | None = None
        self.access: str | None = None
        self.pending: list[str] = []  # state paths to (re)parse

    def apply(self, path: str, mode: str, kind: str, sha: str) -> bool:
        """Record one entry (mode "000000": deleted); True if it is a state blob
        that must be parsed."""
        if path in self.paths:
            self._forget(path)
        if mode == "000000":
            return False
        self.paths[path] = (mode, sha)
        m = STATE_RE.match(path)
        if mode != "100644" or kind != "blob":
            self.stray.add(path)
        elif m and m.group(1) == m.group(2)[:2]:
            self.pending.append(path)
            return True
        elif path == "manifest.toml":
            self.manifest = sha
        elif path == "access.toml":
            self.access = sha
        elif path not in TOP_LEVEL_FILES:
            self.stray.add(path)
        return False

    def _forget(self, path: str) -> None:
        del self.paths[path]
        self.stray.discard(path)
        self.errors.pop(path, None)
        m = STATE_RE.match(path)
        if m and m.group(1) == m.group(2)[:2]:  # the one path a job's state may have
            self.states.pop(m.group(2), None)
            if path in self.pending:
                self.pending.remove(path)
        elif path == "manifest.toml":
            self.manifest = None
        elif path == "access.toml":
            self.access = None
