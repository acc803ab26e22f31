"""The layout constants and git readers live in one stdlib-only place each, and
the modules that run on every push and fetch load no pydantic."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from reconciler.git import plumbing as gitread
from reconciler.protocol import layout

ROOT = Path(__file__).resolve().parent.parent.parent
SOURCES = [*ROOT.glob("reconciler/**/*.py"), *ROOT.glob("worker/*.py")]


def test_the_hook_and_the_forced_command_import_no_pydantic() -> None:
    code = ("import sys, reconciler.hook, reconciler.shell, reconciler.protocol.layout, "
            "reconciler.git.plumbing; print(sorted(m for m in sys.modules if m.split('.')[0] "
            "in ('pydantic', 'reconciler')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert "pydantic" not in out, out
    assert "reconciler.protocol.state" not in out and "reconciler.protocol.schema" not in out, out


def test_layout_constants_are_defined_once() -> None:
    patterns = {
        "STATE_RE": re.compile(r"^STATE_RE\s*=", re.M),
        "NAME_PATTERN": re.compile(r"^NAME_PATTERN\s*=", re.M),
        "ZERO": re.compile(r"^ZERO\s*=", re.M),
        "MAIN": re.compile(r"^MAIN\s*=", re.M),
        "diff-tree parser": re.compile(r'meta\[1:\]\.decode\(\)\.split\(" "\)'),
        "commit header parser": re.compile(r'startswith\(b?"parent |== "parent"'),
    }
    for name, pattern in patterns.items():
        homes = [p.name for p in SOURCES if pattern.search(p.read_text())]
        assert len(homes) == 1 and homes[0] in ("layout.py", "plumbing.py"), (name, homes)


def test_the_readers_parse_real_git_output(tmp_path: Path) -> None:
    def git(*args: str, **kw) -> bytes:
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True,
                              check=True, **kw).stdout

    git("init", "-q", "-b", "main")
    env = {"GIT_AUTHOR_NAME": "Alice Smith", "GIT_AUTHOR_EMAIL": "a@x",
           "GIT_COMMITTER_NAME": "c", "GIT_COMMITTER_EMAIL": "c@x",
           "GIT_COMMITTER_DATE": "1700000000 +0000", "PATH": "/usr/bin:/bin"}
    (tmp_path / "state" / "ab").mkdir(parents=True)
    (tmp_path / "state" / "ab" / "abcdef0123456789.json").write_text("{}\n")
    git("add", "-A")
    git("commit", "-qm", "first\n\nLedger-Actor: alice", env=env)
    (tmp_path / "manifest.toml").write_text("x\n")
    git("add", "-A")
    git("commit", "-qm", "second", env=env)
    first, second = git("rev-list", "--reverse", "main").decode().split()
    commit = gitread.parse_commit(git("cat-file", "commit", second))
    assert (commit.author, commit.parents, commit.committer_time) == \
        ("Alice Smith", [first], 1700000000.0)
    (d,) = gitread.parse_diff_tree(git(*gitread.DIFF_TREE_ARGS, "--no-commit-id", first,
                                       second))
    assert (d.path, d.old_sha, d.new_mode) == ("manifest.toml", layout.ZERO, layout.BLOB_MODE)
    stream = dict(gitread.parse_diff_stream(git(
        *gitread.DIFF_TREE_ARGS, "--stdin", "--always", "--root",
        input=f"{first}\n{second}\n".encode())))
    assert [x.path for x in stream[first]] == ["state/ab/abcdef0123456789.json"]
    assert layout.state_job(stream[first][0].path) == "abcdef0123456789"
    assert [x.path for x in stream[second]] == ["manifest.toml"]
