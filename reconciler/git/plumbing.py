"""Readers of git's plumbing output: `diff-tree -z` records and commit objects.

Standard library only: the hook reads commit headers with it too. Every
module that lists what a commit changed or who wrote it parses here, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

DIFF_TREE_ARGS = ("diff-tree", "-r", "-z", "--no-renames")


@dataclass(frozen=True)
class Diff:
    """One changed path; mode "000000" and sha ZERO on the side it is absent."""

    old_mode: str
    new_mode: str
    old_sha: str
    new_sha: str
    path: str


@dataclass(frozen=True)
class Commit:
    tree: str
    parents: list[str]
    author: str  # the name, without the email
    committer_time: float
    message: str


def _diff(meta: bytes, path: bytes) -> Diff:
    old_mode, new_mode, old_sha, new_sha, _status = meta[1:].decode().split(" ")
    return Diff(old_mode, new_mode, old_sha, new_sha, path.decode("utf-8", "surrogateescape"))


def parse_diff_tree(raw: bytes) -> list[Diff] | None:
    """The records of one `git diff-tree -r -z --no-commit-id` run; None when the
    output is not that (a caller then lists the tree whole)."""
    fields = raw.split(b"\0")
    out = []
    for meta, path in zip(fields[0::2], fields[1::2], strict=False):
        if not meta.startswith(b":"):
            return None
        out.append(_diff(meta, path))
    return out


def parse_diff_stream(raw: bytes) -> Iterator[tuple[str, list[Diff]]]:
    """(commit, its diffs) from `git diff-tree --stdin --always -r -z`: a commit
    id line, then its records (none for an empty commit)."""
    fields = raw.split(b"\0")
    current: str | None = None
    diffs: list[Diff] = []
    i = 0
    while i < len(fields):
        token = fields[i]
        if token.startswith(b":"):
            diffs.append(_diff(token, fields[i + 1]))
            i += 2
            continue
        if token.strip():
            if current is not None:
                yield current, diffs
            current, diffs = token.decode().strip(), []
        i += 1
    if current is not None:
        yield current, diffs


def parse_commit(raw: bytes) -> Commit:
    """A commit object's header fields and message (`git cat-file commit`)."""
    header, _, message = raw.partition(b"\n\n")
    tree, author, when = "", "", 0.0
    parents = []
    for line in header.decode("utf-8", "replace").split("\n"):
        key, _, value = line.partition(" ")
        if key == "tree":
            tree = value
        elif key == "parent":
            parents.append(value)
        elif key == "author":
            author = value.split(" <", 1)[0]
        elif key == "committer":
            try:
                when = float(value.rsplit(" ", 2)[1])
            except (IndexError, ValueError):
                when = 0.0
    return Commit(tree, parents, author, when, message.decode("utf-8", "replace"))
