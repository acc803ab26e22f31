"""Where git runs a bare ledger's server hooks, as git itself decides.

The operator's guide moves the pre-receive hook to a root-owned
`core.hooksPath`; the reconciler (is the ledger hooked, so is re-checking
needed?) and `reconciler install-hooks --server` must look where git looks:
`core.hooksPath` from any config level, absolute or relative to the bare
repository, else `hooks/`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

HOOK_MARK = "reconciler.hook"  # what our pre-receive imports


def server_hooks_dir(repo: Path) -> Path:
    """The directory git runs `repo`'s hooks from (`git rev-parse --git-path hooks`
    answers with core.hooksPath applied; relative answers are from the repo)."""
    repo = Path(repo).absolute()
    # root rewriting the hooks of a ledger its user owns: git would stop at the
    # ownership check (CVE-2022-24765); naming this one repository is enough.
    proc = subprocess.run(["git", "-c", f"safe.directory={repo}", "rev-parse", "--git-path",
                           "hooks"], cwd=repo, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise OSError(f"{repo}: git cannot read it: {proc.stderr.strip()}")
    hooks = Path(proc.stdout.strip())
    return hooks if hooks.is_absolute() else Path(repo) / hooks


def has_our_hook(repo: Path) -> bool:
    """True when git would run trainledger's pre-receive hook on a push to `repo`."""
    try:
        hook = server_hooks_dir(repo) / "pre-receive"
        return hook.is_file() and HOOK_MARK in hook.read_text(errors="replace")
    except OSError:
        return False
