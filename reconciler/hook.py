"""The server-side pre-receive hook: who may write what, on every pushed commit.

It runs on every push, heartbeats included, so the heartbeat path imports
nothing heavy; only an update of main loads the validator (and pydantic).
The hook never updates refs: git moves each ref afterwards only if it still
holds the old value, so check and write are one compare-and-swap.
"""

from __future__ import annotations

import os
import subprocess
import sys

from reconciler.git.plumbing import parse_commit
from reconciler.protocol.layout import EMPTY_TREE, HEARTBEATS, MAIN, ZERO

MAX_HEARTBEAT_BYTES = 64 * 1024


class Refusal(Exception):
    pass


def pusher_identity(env: dict[str, str]) -> str:
    """Over ssh the forced command sets TRAINLEDGER_IDENTITY; on a local path push
    it is the pushing process's (as good as the local user), else the pushing
    user's `git config trainledger.identity`."""
    identity = env.get("TRAINLEDGER_IDENTITY")
    if not identity:
        proc = subprocess.run(["git", "config", "--get", "trainledger.identity"],
                              capture_output=True, text=True)
        identity = proc.stdout.strip()
    if not identity:
        raise Refusal("no pusher identity: push over ssh with an enrolled key, or set "
                      "TRAINLEDGER_IDENTITY / `git config --global trainledger.identity NAME`")
    from reconciler.protocol.names import name_problem

    if (problem := name_problem(identity)) is not None:
        raise Refusal(f"pusher identity {identity[:80]!r}: {problem}")
    return identity


def check_heartbeat(ref: str, old: str, new: str, pusher: str) -> None:
    worker = ref.removeprefix(HEARTBEATS)
    if worker != pusher:
        raise Refusal(f"{ref}: {pusher} may write only {HEARTBEATS}{pusher}")
    if new == ZERO:
        raise Refusal(f"{ref}: heartbeat refs are not deleted")
    # One git process reads the pushed object itself (not peeled: `cat-file
    # commit` of an annotated tag would check the commit it points to and let a
    # tag of any size through) and main's access.toml (who may beat).
    (kind, size, body), access = read_two(new, f"{MAIN}:access.toml", MAX_HEARTBEAT_BYTES)
    check_beat_role(ref, pusher, access)
    if kind != "commit":
        raise Refusal(f"{ref}: {new[:12]} is a {kind or 'missing object'}, not a commit")
    if size > MAX_HEARTBEAT_BYTES or body is None:
        raise Refusal(f"{ref}: heartbeat commit over {MAX_HEARTBEAT_BYTES} bytes")
    commit = parse_commit(body)
    if commit.tree != EMPTY_TREE or commit.parents:
        raise Refusal(f"{ref}: a heartbeat is a parentless commit with the empty tree")


Found = tuple[str | None, int, bytes | None]  # (type, size, content if within the limit)


def read_two(first: str, second: str, limit: int) -> tuple[Found, bytes | None]:
    """`first` (its content only when within `limit` bytes) and the blob `second`
    (None when missing), through one `git cat-file --batch`."""
    proc = subprocess.Popen(["git", "cat-file", "--batch"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    out = proc.stdout
    try:
        proc.stdin.write(f"{first}\n{second}\n".encode())
        proc.stdin.close()

        def one(keep: int) -> Found:
            parts = out.readline().decode(errors="replace").split()
            if len(parts) != 3:
                return None, 0, None  # "<name> missing"
            size = int(parts[2])
            if size > keep:
                return parts[1], size, None
            data = out.read(size)
            out.read(1)  # the newline after each object
            return parts[1], size, data

        found = one(limit)
        if found[0] is not None and found[2] is None:
            return found, None  # too big: not worth reading what follows
        kind, _, blob = one(64 * 1024 + 1)
        return found, blob if kind == "blob" else None
    finally:
        proc.kill()
        proc.wait()


def check_beat_role(ref: str, pusher: str, access_toml: bytes | None) -> None:
    """Only an identity with a role in access.toml (as of main) may beat: a lease
    must not outlive its holder's right to write, so once an operator removes a
    worker from access.toml its beats stop and the reconciler sweeps its jobs."""
    if access_toml is None or b"workers" not in access_toml:
        return  # `workers` unset: every identity has a role; skip the parse (~20 ms)
    from reconciler.protocol.access import load_access
    from reconciler.protocol.errors import AccessDenied

    try:
        access = load_access(access_toml)
    except AccessDenied as exc:
        raise Refusal(f"{ref}: {exc}") from None
    if access.role_of(pusher) is None:
        raise Refusal(f"{ref}: identity {pusher!r} has no role in access.toml; "
                      "it may not heartbeat")


def main_moved(old: str) -> bool:
    """True when main no longer holds `old`. Git moves the ref only if it still
    holds `old` (a compare-and-swap) and main only moves forward (no deletes, no
    forced pushes), so it can never hold `old` again: this push loses whatever
    the hook says, and judging it would only burn the Pi's CPU. A lost race then
    costs a Python start instead of ~0.2 s of imports and validation, which is
    what kept 32 racing claimers from collapsing (bench P2)."""
    if old == ZERO:
        return False
    proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", MAIN],
                          capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.strip() != old


def check_main(old: str, new: str, pusher: str) -> None:
    from pathlib import Path

    from reconciler.git.repo import GitRepo
    from reconciler.protocol.errors import LedgerError
    from reconciler.rules.validate import validate_main

    if new == ZERO:
        raise Refusal(f"{MAIN} may not be deleted")
    repo = GitRepo(Path.cwd(), quarantine=True)
    try:
        validate_main(repo, None if old == ZERO else old, new, pusher)
    except LedgerError as exc:
        raise Refusal(str(exc)) from None
    finally:
        repo.close()


def judge(lines: list[str], env: dict[str, str]) -> None:
    updates = [ln.split() for ln in lines if ln.strip()]
    pusher = pusher_identity(env)
    for old, new, ref in updates:
        if ref == MAIN:
            if not main_moved(old):  # a lost race fails at the ref update anyway
                check_main(old, new, pusher)
        elif ref.startswith(HEARTBEATS):
            check_heartbeat(ref, old, new, pusher)
        else:
            raise Refusal(f"{ref}: only {MAIN} and {HEARTBEATS}<your name> may be pushed")


def main() -> int:
    try:
        judge(sys.stdin.read().splitlines(), dict(os.environ))
    except Refusal as exc:
        print(f"trainledger: refused: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
