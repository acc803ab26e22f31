"""One helper per git plumbing need, over a bare repository with no work tree.

Reads go through one persistent, pipelined `git cat-file --batch` process
(thousands of blobs for the cost of one process); objects are written in-process
as loose objects, the way git writes them, so building a commit costs about a
millisecond instead of a `git` process per object. Nothing here uses an
index file: GitPython's `IndexFile.from_tree` leaves a 0-byte index in a bare
repository that breaks `git diff-tree` (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.protocol.errors import GitError

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
TREE_MODE = "40000"
BLOB_MODE = "100644"


@dataclass(frozen=True)
class TreeEntry:
    mode: str
    type: str
    sha: str
    path: str


@dataclass(frozen=True)
class Signature:
    name: str
    email: str
    when: float  # seconds since the epoch; informational (liveness uses the reconciler's clock)

    def render(self) -> str:
        return f"{self.name} <{self.email}> {int(self.when)} +0000"


def git_env(
    extra: Mapping[str, str] | None = None, *, quarantine: bool = False
) -> dict[str, str]:
    """A git environment free of a caller's GIT_DIR and friends. Inside a hook,
    `quarantine=True` keeps the object directories receive-pack set, or the
    pushed objects are invisible."""
    env = dict(os.environ)
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    env["LC_ALL"] = "C"
    strip = ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"]
    if not quarantine:
        strip += ["GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_QUARANTINE_PATH"]
    for key in strip:
        env.pop(key, None)
    if extra:
        env.update(extra)
    return env


class CatFile:
    """A persistent `git cat-file --batch`, pipelined: requests are written by a
    thread while responses are read, so a batch of N costs one round trip."""

    def __init__(self, repo: Path, env: Mapping[str, str] | None = None) -> None:
        self._repo = repo
        self._env = dict(env) if env is not None else git_env()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                ["git", "-C", str(self._repo), "cat-file", "--batch"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=self._env,
            )
        return self._proc

    def read(self, names: list[str]) -> list[tuple[str, str, bytes] | None]:
        """(sha, type, content) per name, or None when the object is missing."""
        if not names:
            return []
        with self._lock:
            proc = self._ensure()
            assert proc.stdin and proc.stdout
            payload = "".join(f"{n}\n" for n in names).encode()

            def feed() -> None:
                try:
                    proc.stdin.write(payload)  # type: ignore[union-attr]
                    proc.stdin.flush()  # type: ignore[union-attr]
                except BrokenPipeError:
                    pass

            writer = threading.Thread(target=feed, daemon=True)
            writer.start()
            out: list[tuple[str, str, bytes] | None] = []
            try:
                for _ in names:
                    header = proc.stdout.readline()
                    if not header:
                        raise GitError(f"git cat-file died reading {self._repo}")
                    parts = header.split()
                    if len(parts) != 3:  # "<name> missing", "<name> ambiguous": no content
                        out.append(None)
                        continue
                    sha, kind, size = parts[0].decode(), parts[1].decode(), int(parts[2])
                    data = proc.stdout.read(size)
                    proc.stdout.read(1)  # the newline after the content
                    out.append((sha, kind, data))
            except Exception:
                self.close()
                raise
            finally:
                writer.join()
            return out

    def close(self) -> None:
        if self._proc is not None:
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream:
                    stream.close()
            self._proc.kill()
            self._proc.wait()
            self._proc = None


class GitRepo:
    """A bare repository: plumbing commands, batched reads, in-process writes."""

    def __init__(
        self, path: Path | str, env: Mapping[str, str] | None = None, *, quarantine: bool = False
    ) -> None:
        self.path = Path(path)
        self.env = git_env(env, quarantine=quarantine)
        self._cat = CatFile(self.path, self.env)

    @classmethod
    def init_bare(cls, path: Path | str, env: Mapping[str, str] | None = None) -> GitRepo:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "init", "--quiet", "--bare", "--initial-branch=main", str(path)],
            check=True, env=git_env(env), capture_output=True,
        )
        return cls(path, env)

    def close(self) -> None:
        self._cat.close()

    # ----------------------------------------------------------------- commands

    def git(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        timeout: float | None = 120,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        full_env = {**self.env, **(env or {})}
        try:
            proc = subprocess.run(
                ["git", "-C", str(self.path), *args],
                input=input, capture_output=True, timeout=timeout, env=full_env,
            )
        except subprocess.TimeoutExpired as exc:
            raise GitError(f"git {args[0]} timed out after {timeout}s", args=args) from exc
        if check and proc.returncode != 0:
            raise GitError(
                f"git {' '.join(args[:3])} failed: {proc.stderr.decode(errors='replace').strip()}",
                args=args, returncode=proc.returncode, stderr=proc.stderr,
            )
        return proc

    def rev_parse(self, ref: str) -> str | None:
        proc = self.git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        proc = self.git("merge-base", "--is-ancestor", ancestor, descendant, check=False)
        return proc.returncode == 0

    def refs(self, prefix: str) -> dict[str, str]:
        proc = self.git("for-each-ref", "--format=%(objectname) %(refname)", prefix)
        out = {}
        for line in proc.stdout.decode().splitlines():
            sha, ref = line.split(" ", 1)
            out[ref] = sha
        return out

    def update_ref(self, ref: str, new: str, old: str | None = None) -> None:
        args = ["update-ref", ref, new] + ([old] if old is not None else [])
        self.git(*args)

    # -------------------------------------------------------------------- reads

    def ls_tree(self, rev: str, *paths: str) -> list[TreeEntry]:
        proc = self.git("ls-tree", "-r", "-z", "--full-tree", rev, "--", *paths)
        entries = []
        for record in proc.stdout.split(b"\0"):
            if not record:
                continue
            meta, path = record.split(b"\t", 1)
            mode, kind, sha = meta.decode().split(" ")
            entries.append(TreeEntry(mode, kind, sha, path.decode("utf-8", "surrogateescape")))
        return entries

    def read_objects(self, names: Iterable[str]) -> dict[str, tuple[str, bytes] | None]:
        names = list(dict.fromkeys(names))
        return {
            n: (r[1], r[2]) if r else None
            for n, r in zip(names, self._cat.read(names), strict=True)
        }

    def read_blob(self, name: str) -> bytes | None:
        found = self.read_objects([name])[name]
        return found[1] if found and found[0] == "blob" else None

    def commit_message(self, sha: str) -> str:
        found = self.read_objects([sha])[sha]
        if not found or found[0] != "commit":
            raise GitError(f"{sha} is not a commit")
        _, _, message = found[1].partition(b"\n\n")
        return message.decode("utf-8", "replace")

    def commit_tree(self, sha: str) -> str:
        found = self.read_objects([sha])[sha]
        if not found or found[0] != "commit":
            raise GitError(f"{sha} is not a commit")
        first = found[1].split(b"\n", 1)[0]
        return first.removeprefix(b"tree ").decode()

    def read_tree(self, sha: str) -> list[tuple[str, str, str]]:
        """(mode, name, sha) of one tree object, in stored order."""
        found = self.read_objects([sha])[sha]
        if not found or found[0] != "tree":
            raise GitError(f"{sha} is not a tree")
        data, entries, i = found[1], [], 0
        while i < len(data):
            space = data.index(b" ", i)
            nul = data.index(b"\0", space)
            mode = data[i:space].decode()
            name = data[space + 1 : nul].decode("utf-8", "surrogateescape")
            entries.append((mode, name, data[nul + 1 : nul + 21].hex()))
            i = nul + 21
        return entries

    # ------------------------------------------------------------------- writes

    def write_object(self, kind: str, data: bytes) -> str:
        """Write a loose object as git does: temp file in its fan-out directory,
        then rename; an object already present is freshened, not rewritten.

        A `git gc --auto` that a fetch started in the background may pack and
        prune loose objects, and remove their emptied directories, at any moment
        (gitdb's writer failed on that with FileNotFoundError in the 16-racer
        test), so a vanished directory or file is retried."""
        raw = f"{kind} {len(data)}".encode() + b"\0" + data
        sha = hashlib.sha1(raw).hexdigest()
        fanout = self.path / "objects" / sha[:2]
        target = fanout / sha[2:]
        compressed = None
        for _ in range(10):
            try:
                os.utime(target)  # present: keep it young so a prune cannot take it
                return sha
            except PermissionError:
                return sha  # present, someone else's file
            except FileNotFoundError:
                pass
            if compressed is None:
                compressed = zlib.compress(raw)
            try:
                fanout.mkdir(exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix="tmp_obj_", dir=fanout)
            except FileNotFoundError:
                continue  # objects/<aa> was removed between mkdir and mkstemp
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(compressed)
                os.chmod(tmp, 0o444)
                os.replace(tmp, target)
                return sha
            except FileNotFoundError:
                continue
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        raise GitError(f"could not write object {sha} into {self.path}")

    def write_tree(self, entries: Iterable[tuple[str, str, str]]) -> str:
        def key(entry: tuple[str, str, str]) -> bytes:
            mode, name, _ = entry
            raw = name.encode("utf-8", "surrogateescape")
            return raw + b"/" if mode == TREE_MODE else raw

        body = b"".join(
            f"{mode} ".encode() + name.encode("utf-8", "surrogateescape") + b"\0"
            + bytes.fromhex(sha)
            for mode, name, sha in sorted(entries, key=key)
        )
        return self.write_object("tree", body)

    def edit_tree(self, base: str | None, changes: Mapping[str, bytes | None]) -> str:
        """A new tree: `base` with `changes` applied (bytes = write, None = delete).
        Only the trees on the changed paths are read and rewritten."""
        nested: dict[str, dict[str, bytes | None] | bytes | None] = {}
        for path, data in changes.items():
            head, _, rest = path.partition("/")
            if rest:
                sub = nested.setdefault(head, {})
                assert isinstance(sub, dict), f"{head} is both a file and a directory"
                sub[rest] = data
            else:
                nested[head] = data
        entries = {name: (mode, sha) for mode, name, sha in (self.read_tree(base) if base else [])}
        for name, change in nested.items():
            if isinstance(change, dict):
                old = entries.get(name)
                sub_base = old[1] if old and old[0] == TREE_MODE else None
                sub_sha = self.edit_tree(sub_base, change)
                if sub_sha == EMPTY_TREE:
                    entries.pop(name, None)
                else:
                    entries[name] = (TREE_MODE, sub_sha)
            elif change is None:
                entries.pop(name, None)
            else:
                entries[name] = (BLOB_MODE, self.write_object("blob", change))
        return self.write_tree((mode, name, sha) for name, (mode, sha) in entries.items())

    def write_commit(
        self, tree: str, parents: Iterable[str], author: Signature, message: str
    ) -> str:
        lines = [f"tree {tree}"] + [f"parent {p}" for p in parents]
        lines += [f"author {author.render()}", f"committer {author.render()}", "", message]
        body = "\n".join(lines)
        if not body.endswith("\n"):
            body += "\n"
        return self.write_object("commit", body.encode())
