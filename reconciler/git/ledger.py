"""The ledger port: read a revision, write "a new commit on the tip I just read".

Every actor keeps a local bare cache of the ledger. A write fetches `main`,
builds a commit on that tip and pushes it: a compare-and-swap on the ref. A lost
race is retried from the new tip with exponential backoff and full jitter; an
ambiguous push (error, timeout) is resolved by fetching and checking whether
our commit landed before anything is retried. The values read and written
(snapshots, proposals, push results) live in reconciler/git/snapshot.py and
reconciler/git/push.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from reconciler.git.cacherepair import cache_damage, reclone
from reconciler.git.plumbing import DIFF_TREE_ARGS, parse_diff_tree
from reconciler.git.push import (
    Proposal,
    PushResult,
    PushStatus,
    WriteOutcome,
    compute_backoff,
    read_push,
)
from reconciler.git.repo import EMPTY_TREE, GitRepo, Signature
from reconciler.git.snapshot import HeartbeatRecord, Snapshot, TreeIndex
from reconciler.git.sshconn import is_ssh, ssh_env
from reconciler.protocol import trailers
from reconciler.protocol.access import Access, load_access
from reconciler.protocol.errors import (
    GitError,
    LedgerError,
    LostRace,
    ManifestError,
    PushAmbiguous,
    PushRejected,
)
from reconciler.protocol.layout import (
    CACHED_HEARTBEATS,
    CACHED_MAIN,
    HEARTBEATS,
    MAIN,
    STATE_RE,
)
from reconciler.protocol.manifest import LoadedManifest, load_manifest
from reconciler.protocol.schema import Heartbeat, JobState, parse_state

log = logging.getLogger("trainledger.ledger")


class Ledger:
    """A ledger at `url`, read and written through the local bare cache `cache`."""

    def __init__(
        self,
        url: str,
        cache: Path,
        identity: str,
        *,
        email_domain: str = "trainledger",
        push_timeout_s: float = 60.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        backoff_cap_s: float = 10.0,
    ) -> None:
        if "://" not in url and not is_ssh(url):
            url = str(Path(url).absolute())  # git runs in the cache dir: relative paths break
        self.url = url
        self.identity = identity
        self.email = f"{identity}@{email_domain}"
        self.push_timeout_s = push_timeout_s
        self.rng = rng or random.Random()
        self.clock = clock
        cache = Path(cache)
        env = {"TRAINLEDGER_IDENTITY": identity, **ssh_env(url, cache.parent)}
        if (cache / "HEAD").exists():
            self.repo = GitRepo(cache, env)
        else:
            self.repo = GitRepo.init_bare(cache, env)
            self.repo.git("config", "gc.auto", "256")
            self.repo.git("config", "gc.pruneExpire", "1.hour.ago")
        self._states: dict[str, JobState | str] = {}  # blob sha -> parsed state or error
        self._index: TreeIndex | None = None  # main's tree as of the last snapshot
        self._manifest: tuple[str, LoadedManifest | None, str | None] | None = None
        self._access: tuple[str | None, Access] | None = None
        self._heartbeat_lease: str | None = None
        # What one push to this ledger costs now (EWMA of wall time): the unit of
        # the lost-race backoff, so backoff stretches when the server is loaded.
        self.push_cost_s = 0.05
        self.backoff_cap_s = backoff_cap_s

    def close(self) -> None:
        self.repo.close()

    # ------------------------------------------------------------------- reads

    def fetch(self, *, heartbeats: bool = False, timeout: float | None = None) -> str | None:
        """Fetch main (and every heartbeat ref); return the tip, None if main is absent."""
        specs = [f"+{MAIN}:{CACHED_MAIN}"]
        if heartbeats:
            specs.append(f"+{HEARTBEATS}*:{CACHED_HEARTBEATS}*")
        proc = self.repo.git(
            "fetch", "--quiet", "--no-tags", "--prune", "--no-write-fetch-head", self.url, *specs,
            check=False, timeout=timeout or self.push_timeout_s,
        )
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            if "couldn't find remote ref" in err:
                return None
            raise GitError(f"fetch from {self.url} failed: {err}", stderr=err)
        return self.repo.rev_parse(CACHED_MAIN)

    def tip(self) -> str | None:
        return self.repo.rev_parse(CACHED_MAIN)

    def snapshot(self, revision: str | None = None) -> Snapshot:
        """Everything at `revision` (default: the cached tip), parsed. After the
        first call only what changed since the last revision read is listed
        (`git diff-tree`) and parsed, so a poll or a claim costs the same on a
        100,000-job ledger as on a small one (bench P4)."""
        rev = revision or self.tip()
        if rev is None:
            raise LedgerError(f"{self.url}: the ledger has no main branch (run `reconciler init`)")
        base = self._index.rev if self._index is not None else None
        index, fresh, delta = self._index_at(rev)
        wanted = [b for b in dict.fromkeys(fresh) if b not in self._states]
        if index.manifest and (self._manifest is None or self._manifest[0] != index.manifest):
            wanted.append(index.manifest)
        if index.access and (self._access is None or self._access[0] != index.access):
            wanted.append(index.access)
        blobs = self.repo.read_objects(wanted) if wanted else {}
        for path in index.pending:
            job_id, blob = path.rsplit("/", 1)[1].removesuffix(".json"), index.paths[path][1]
            if blob not in self._states:
                found = blobs.get(blob)
                self._states[blob] = parse_state(found[1] if found else b"", job_id)
            parsed = self._states[blob]
            if isinstance(parsed, JobState):
                index.states[job_id] = parsed
            else:
                index.errors[path] = parsed
        index.pending.clear()
        loaded, error = self._load_manifest(index.manifest, blobs)
        access = self._load_access(index.access, blobs)
        if len(self._states) > 2 * len(index.paths) + 1024:  # forget superseded versions
            live = {sha for _mode, sha in index.paths.values()}
            self._states = {b: v for b, v in self._states.items() if b in live}
        return Snapshot(rev, loaded, error, access, dict(index.states), dict(index.errors),
                        tuple(sorted(index.stray)), base if delta is not None else None,
                        delta or frozenset())

    def _index_at(self, rev: str) -> tuple[TreeIndex, list[str], frozenset[str] | None]:
        """The classified tree at `rev`, the blobs that are new to it, and the job
        ids whose state changed since the last revision read (None: listed whole)."""
        index = self._index
        if index is not None and index.rev == rev:
            return index, [], frozenset()
        changes = self._tree_changes(index.rev, rev) if index is not None else None
        delta: frozenset[str] | None = None
        if index is None or changes is None:
            index = TreeIndex(rev)
            changes = [(e.path, e.mode, e.type, e.sha) for e in self.repo.ls_tree(rev)]
        else:
            index.rev = rev
            delta = frozenset(m.group(2) for path, *_ in changes if (m := STATE_RE.match(path)))
        fresh = [sha for path, mode, kind, sha in changes if index.apply(path, mode, kind, sha)]
        self._index = index
        return index, fresh, delta

    def _tree_changes(self, old: str, new: str) -> list[tuple[str, str, str, str]] | None:
        """(path, mode, type, sha) of what differs between two revisions; mode
        "000000" for a deletion. None when git cannot tell (then list in full)."""
        proc = self.repo.git(*DIFF_TREE_ARGS, "--no-commit-id", old, new, check=False)
        diffs = parse_diff_tree(proc.stdout) if proc.returncode == 0 else None
        if diffs is None:
            return None
        return [(d.path, d.new_mode, "commit" if d.new_mode == "160000" else "blob", d.new_sha)
                for d in diffs]

    def _load_manifest(
        self, blob: str | None, blobs: dict[str, tuple[str, bytes] | None]
    ) -> tuple[LoadedManifest | None, str | None]:
        if blob is None:
            return None, "manifest.toml is missing"
        if self._manifest is None or self._manifest[0] != blob:
            data = blobs.get(blob)
            try:
                loaded, error = load_manifest(data[1] if data else b""), None
            except ManifestError as exc:
                loaded, error = None, str(exc)
            self._manifest = (blob, loaded, error)
        return self._manifest[1], self._manifest[2]

    def _load_access(self, blob: str | None, blobs: dict[str, tuple[str, bytes] | None]) -> Access:
        if self._access is None or self._access[0] != blob:
            data = blobs.get(blob) if blob else None
            self._access = (blob, load_access(data[1] if data else None))
        return self._access[1]

    # ------------------------------------------------------------------ writes

    def signature(self) -> Signature:
        return Signature(self.identity, self.email, self.clock())

    def commit(self, base: str | None, proposal: Proposal) -> str:
        base_tree = self.repo.commit_tree(base) if base else None
        tree = self.repo.edit_tree(base_tree, proposal.files)
        subject = proposal.subject or trailers.subject_for(proposal.changes, self.identity)
        message = trailers.render(subject, proposal.changes, self.identity, proposal.body,
                                  proposal.kind or trailers.MOVES)
        return self.repo.write_commit(tree, [base] if base else [], self.signature(), message)

    def push(self, sha: str, ref: str = MAIN, *, lease: str | None = None) -> PushResult:
        args = ["push", "--porcelain", self.url]
        if lease is not None:
            # No "+": a forcing refspec overrides the lease (git 2.39 overwrote a
            # ref whose value no longer matched); the lease alone allows the amend.
            args.insert(1, f"--force-with-lease={ref}:{lease}")
            args.append(f"{sha}:{ref}")
        else:
            args.append(f"{sha}:{ref}")
        try:
            proc = self.repo.git(*args, check=False, timeout=self.push_timeout_s)
        except GitError as exc:
            return PushResult(PushStatus.AMBIGUOUS, str(exc))
        return read_push(proc.returncode, proc.stdout.decode(errors="replace"),
                         proc.stderr.decode(errors="replace"))

    def landed(self, sha: str) -> bool:
        tip = self.fetch()
        return tip is not None and self.repo.is_ancestor(sha, tip)

    def write(
        self,
        build: Callable[[Snapshot], Proposal | None],
        *,
        max_tries: int = 50,
        deadline_s: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> WriteOutcome:
        """Fetch, build on the tip, push; on a lost race, rebuild from the new tip.

        `build` is called again after every lost race, so it must re-check
        everything it relies on (the job is still pending, still ours, ...)."""
        start = time.monotonic()
        lost = 0
        for attempt in range(max_tries):
            tip = self.fetch()
            snap = self.snapshot(tip)
            proposal = build(snap)
            if proposal is None:
                return WriteOutcome(None, snap, lost)
            sha = self.commit(tip, proposal)
            pushed_at = time.monotonic()
            result = self.push(sha)
            self.push_cost_s += 0.3 * (time.monotonic() - pushed_at - self.push_cost_s)
            if result.status is PushStatus.AMBIGUOUS:
                log.warning("push result unknown (%s); checking whether it landed", result.message)
                try:
                    if self.landed(sha):
                        result = PushResult(PushStatus.WON)
                except GitError as exc:
                    raise PushAmbiguous(
                        f"push of {sha[:12]} to {self.url}: result unknown and the ledger is "
                        f"unreachable ({exc})", commit=sha,
                    ) from exc
            if result.status is PushStatus.WON:
                self.repo.update_ref(CACHED_MAIN, sha)
                return WriteOutcome(sha, snap, lost)
            if result.status is PushStatus.REJECTED:
                raise PushRejected(f"{self.url} refused the push: {result.message}",
                                   commit=sha, reason=result.message)
            lost += 1
            if time.monotonic() - start > deadline_s:
                break
            # A lost race means the server was busy with someone else's push: wait
            # in units of what a push costs now, up to a cap that spreads 32
            # racers (a 2 s cap with 0.05 s units collapsed them, bench P2).
            sleep(compute_backoff(attempt, base=min(max(0.05, self.push_cost_s), 0.5),
                                  cap=self.backoff_cap_s, rng=self.rng))
        raise LostRace(f"gave up after {lost} lost races on {self.url}", lost_races=lost)

    # ------------------------------------------------------- parse cache (P4)

    @property
    def parsed_revision(self) -> str | None:
        """The revision of the last snapshot (what save_parsed would save)."""
        return self._index.rev if self._index is not None else None

    def save_parsed(self, path: Path) -> None:
        """Persist what snapshot() has parsed, so a short-lived reader in a new
        process (`reconciler status`) parses only what changed since (bench P4)."""
        manifest = self._manifest
        if manifest is not None and manifest[1] is not None:
            # the parsed jobs live on as specs; the schema's own job models are only
            # read while loading, and unpickling 100,000 of them cost ~0.9 s (P4)
            blob, loaded, error = manifest
            slim = loaded.manifest.model_copy(update={"jobs": []})
            manifest = (blob, dataclasses.replace(loaded, manifest=slim), error)
        data = (_parsed_key(), self.url, self._index, self._states, manifest, self._access)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, path)

    def load_parsed(self, path: Path) -> str | None:
        """Restore save_parsed()'s work and return the revision it was at; None
        (nothing restored) when the file is absent, not the user's own, or
        written by other code or for another ledger."""
        try:
            st = path.stat()
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                return None  # unpickle only what this user alone could have written
            key, url, index, states, manifest, access = pickle.loads(path.read_bytes())
        except Exception:  # a cache is never worth an error: parse afresh
            return None
        if key != _parsed_key() or url != self.url or not isinstance(index, TreeIndex):
            return None
        self._index, self._states, self._manifest, self._access = index, states, manifest, access
        return index.rev

    # -------------------------------------------------------------- heartbeats

    def push_heartbeat(self, beat: Heartbeat) -> str:
        """Replace refs/heartbeats/<identity> with a parentless, tree-less commit:
        old beats become unreachable and housekeeping drops them."""
        ref = f"{HEARTBEATS}{self.identity}"
        message = json.dumps(beat.model_dump(mode="json", exclude_none=True), sort_keys=True)
        sig = self.signature()
        self.repo.write_object("tree", b"")
        sha = self.repo.write_commit(EMPTY_TREE, [], sig, f"heartbeat {self.identity}\n\n{message}")
        if self._heartbeat_lease is None:
            self._heartbeat_lease = self._remote_ref(ref) or ""
        result = self.push(sha, ref, lease=self._heartbeat_lease)
        if result.status is PushStatus.WON:
            self._heartbeat_lease = sha
            return sha
        self._heartbeat_lease = None  # re-read the remote value before the next beat
        if result.status is PushStatus.REJECTED:
            raise PushRejected(f"heartbeat refused: {result.message}", reason=result.message)
        raise GitError(f"heartbeat push failed ({result.status.value}): {result.message}")

    # ------------------------------------------------- manifest history, upkeep

    def last_commit_touching(self, path: str, rev: str) -> str | None:
        proc = self.repo.git("log", "-1", "--format=%H", rev, "--", path, check=False)
        return proc.stdout.decode().strip() or None

    def manifest_history(self, rev: str, limit: int = 50) -> Iterator[tuple[str, bytes]]:
        """(commit, manifest.toml) of the commits that changed it, newest first."""
        proc = self.repo.git("log", "--format=%H", "-n", str(limit), rev, "--",
                             "manifest.toml", check=False)
        for commit in proc.stdout.decode().split():
            yield commit, self.repo.git("show", f"{commit}:manifest.toml", check=False).stdout

    def repair_cache(self) -> str | None:
        damage = cache_damage(self)
        if damage is not None:
            reclone(self)
        return damage

    def gc(self) -> None:
        self.repo.git("gc", "--auto", "--quiet", check=False, timeout=600)

    def _remote_ref(self, ref: str) -> str | None:
        proc = self.repo.git("ls-remote", self.url, ref, timeout=self.push_timeout_s)
        line = proc.stdout.decode().strip()
        return line.split()[0] if line else None

    def heartbeats(self) -> dict[str, HeartbeatRecord]:
        """Heartbeat refs as of the last `fetch(heartbeats=True)`."""
        refs = self.repo.refs(CACHED_HEARTBEATS)
        objs = self.repo.read_objects(refs.values())
        out = {}
        for ref, sha in refs.items():
            worker = ref.removeprefix(CACHED_HEARTBEATS)
            out[worker] = HeartbeatRecord.read(worker, sha, objs.get(sha))
        return out


def _parsed_key() -> str:
    """What a saved parse depends on: the code of the classes it pickles (and of
    this module, which lays out the saved tuple)."""
    from reconciler.git import snapshot
    from reconciler.protocol import access, identity, manifest, schema, state
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for module in (snapshot, state, schema, manifest, identity, access):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()

