"""`trainledger-shell`: the forced command of every enrolled ssh key.

`authorized_keys` pins each host's key to
`restrict,command="trainledger-shell --ledger PATH --store ROOT NAME"`, so the
pusher's identity is the NAME argument, never a commit author or anything the
client sends (docs/failure-model.md, security rules 1-2). sshd puts what the client asked for in
`SSH_ORIGINAL_COMMAND`; this program allows only git's two pack services on
exactly the configured ledger path and the three store commands, and execs an
argv list (never a shell) with `TRAINLEDGER_IDENTITY=NAME` for the hook.

It runs on every fetch, push and heartbeat, so it imports nothing heavy: the
store module is loaded only for store commands.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.protocol.layout import (
    NAME_PATTERN,  # stdlib only: no pydantic on every git operation
)
from reconciler.protocol.names import name_problem

NAME_RE = re.compile(NAME_PATTERN)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Characters a ledger path may hold. Everything else (quotes, `;`, `$`, `` ` ``,
# `|`, `&`, `<`, `>`, `*`, `?`, `!`, `\`, whitespace, ...) is refused outright.
SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9._/+@~:,=-]+$")
MAX_COMMAND = 4096

GIT_SERVICES = {
    "git-receive-pack": "receive-pack",
    "git-upload-pack": "upload-pack",
    "git receive-pack": "receive-pack",
    "git upload-pack": "upload-pack",
}
STORE_COMMANDS = ("store-put", "store-get", "store-has")
GIT_PROTOCOL_RE = re.compile(r"^version=[0-9]$")


class Refusal(Exception):
    """The requested command is not one this key may run."""


@dataclass(frozen=True)
class Command:
    """An allowed request: `kind` is a git service or a store command."""

    kind: str  # "receive-pack" | "upload-pack" | "store-put" | "store-get" | "store-has"
    arg: str  # the ledger path, or the sha256


def _shown(text: str) -> str:
    """The client's words, safe for one log line."""
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


def _git_path(rest: str) -> str:
    """The single path argument of a git service: `'path'` (as git sends it) or bare."""
    if rest.startswith("'"):
        if len(rest) < 2 or not rest.endswith("'") or "'" in rest[1:-1]:
            raise Refusal(f"expected one quoted path, got {_shown(rest)}")
        path = rest[1:-1]
    elif " " in rest:
        raise Refusal(f"extra arguments: {_shown(rest)}")
    else:
        path = rest
    if path.startswith("-"):
        raise Refusal(f"a path may not start with '-': {_shown(path)}")
    if not path or not SAFE_PATH_RE.match(path):
        raise Refusal(f"unsafe characters in path {_shown(path)}")
    return path


def parse_command(original: str | None, ledger: str | None, store: str | None) -> Command:
    """Judge `SSH_ORIGINAL_COMMAND`; raise Refusal with one clear reason."""
    if original is None or not original.strip():
        raise Refusal("interactive login is not allowed: this key runs only git and store "
                      "commands")
    if len(original) > MAX_COMMAND:
        raise Refusal(f"command over {MAX_COMMAND} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in original):
        raise Refusal("control characters in the command")
    for prefix, service in GIT_SERVICES.items():
        if original.startswith(prefix + " "):
            path = _git_path(original[len(prefix) + 1:])
            if ledger is None:
                raise Refusal("this key has no ledger access")
            if path != ledger:
                raise Refusal(f"{_shown(path)} is not the ledger; use {ledger}")
            return Command(service, path)
    words = original.split(" ")
    if words[0] in STORE_COMMANDS:
        if len(words) != 2 or not SHA256_RE.match(words[1]):
            raise Refusal(f"expected `{words[0]} <sha256>` (64 lowercase hex), got "
                          f"{_shown(original)}")
        if store is None:
            raise Refusal("this key has no store access")
        return Command(words[0], words[1])
    raise Refusal(f"command not allowed: {_shown(original)}; this key runs only "
                  "git-upload-pack/git-receive-pack on the ledger and store-put/get/has")


def exec_env(environ: Mapping[str, str], name: str) -> dict[str, str]:
    """sshd's environment without any GIT_* or TRAINLEDGER_* a client could have
    slipped in (AcceptEnv), plus the identity the key is enrolled as."""
    env = {k: v for k, v in environ.items()
           if not k.startswith(("GIT_", "TRAINLEDGER_"))}
    protocol = environ.get("GIT_PROTOCOL", "")
    if GIT_PROTOCOL_RE.match(protocol):
        env["GIT_PROTOCOL"] = protocol  # protocol v2 when sshd has `AcceptEnv GIT_PROTOCOL`
    env["TRAINLEDGER_IDENTITY"] = name
    return env


def git_argv(command: Command) -> list[str]:
    return ["git", command.kind, command.arg]


def run_store(command: Command, root: str) -> int:
    from pathlib import Path

    from reconciler.protocol.errors import LedgerError
    from reconciler.store.serve import serve_get, serve_has, serve_put

    try:
        if command.kind == "store-put":
            return serve_put(Path(root), command.arg, sys.stdin.buffer)
        if command.kind == "store-get":
            return serve_get(Path(root), command.arg, sys.stdout.buffer)
        return serve_has(Path(root), command.arg)
    except LedgerError as exc:
        print(f"trainledger-shell: {command.kind}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the client hung up mid-transfer (EPIPE), or the disk failed
        print(f"trainledger-shell: {command.kind}: {exc.strerror or exc}", file=sys.stderr)
        return 1


@dataclass(frozen=True)
class Options:
    ledger: str | None
    store: str | None
    name: str


def parse_args(argv: list[str]) -> Options:
    """`[--ledger PATH] [--store ROOT] NAME`, by hand: argparse's error output is
    several lines and exit 2, and this runs on every connection."""
    ledger = store = None
    rest = list(argv)
    while len(rest) > 1 and rest[0] in ("--ledger", "--store"):
        flag, value = rest.pop(0), rest.pop(0)
        if not os.path.isabs(value):
            raise Refusal(f"misconfigured key: {flag} must be an absolute path")
        if flag == "--ledger":
            ledger = value
        else:
            store = value
    if len(rest) != 1:
        raise Refusal("misconfigured key: usage trainledger-shell [--ledger PATH] "
                      "[--store ROOT] NAME")
    if not NAME_RE.fullmatch(rest[0]) or name_problem(rest[0]):
        raise Refusal(f"misconfigured key: {_shown(rest[0])} is not a valid name")
    return Options(ledger, store, rest[0])


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
        command = parse_command(os.environ.get("SSH_ORIGINAL_COMMAND"), opts.ledger, opts.store)
    except Refusal as exc:
        print(f"trainledger-shell: refused: {exc}", file=sys.stderr)
        return 1
    if command.kind.startswith("store-"):
        assert opts.store is not None
        return run_store(command, opts.store)
    env = exec_env(os.environ, opts.name)
    try:
        os.execvpe("git", git_argv(command), env)
    except OSError as exc:
        print(f"trainledger-shell: cannot run git: {exc.strerror}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
