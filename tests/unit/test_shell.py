"""The forced command's allow-list as a pure function: what a key may ask sshd to run."""

from __future__ import annotations

import re

import pytest

from reconciler import shell
from reconciler.protocol import schema
from reconciler.shell import Command, Refusal, exec_env, parse_args, parse_command

LEDGER = "/srv/trainledger/ledger.git"
STORE = "/srv/trainledger/store"
SHA = "ab" * 32

ALLOWED = [
    (f"git-receive-pack '{LEDGER}'", Command("receive-pack", LEDGER)),
    (f"git-upload-pack '{LEDGER}'", Command("upload-pack", LEDGER)),
    (f"git receive-pack '{LEDGER}'", Command("receive-pack", LEDGER)),
    (f"git upload-pack '{LEDGER}'", Command("upload-pack", LEDGER)),
    (f"git-upload-pack {LEDGER}", Command("upload-pack", LEDGER)),
    (f"store-put {SHA}", Command("store-put", SHA)),
    (f"store-get {SHA}", Command("store-get", SHA)),
    (f"store-has {SHA}", Command("store-has", SHA)),
]


@pytest.mark.parametrize(("original", "expected"), ALLOWED, ids=[a for a, _ in ALLOWED])
def test_allowed_commands(original: str, expected: Command) -> None:
    assert parse_command(original, LEDGER, STORE) == expected


REFUSED = [
    (None, "interactive login"),
    ("", "interactive login"),
    ("   ", "interactive login"),
    ("bash", "not allowed"),
    ("sh -c id", "not allowed"),
    ("git-upload-archive '/srv/trainledger/ledger.git'", "not allowed"),
    ("git-shell -c ls", "not allowed"),
    ("scp -t /tmp/x", "not allowed"),
    ("rsync --server . /srv", "not allowed"),
    ("git-receive-pack '--upload-pack=touch /tmp/pwned'", "may not start with '-'"),
    ("git-upload-pack --help", "may not start with '-'"),
    ("git-upload-pack '-'", "may not start with '-'"),
    ("git-upload-pack '/srv/other.git'", "is not the ledger"),
    ("git-upload-pack '/srv/trainledger/ledger.git/'", "is not the ledger"),
    ("git-upload-pack '/srv/trainledger/../trainledger/ledger.git'", "is not the ledger"),
    ("git-upload-pack 'ledger.git'", "is not the ledger"),
    (f"git-upload-pack '{LEDGER}' extra", "expected one quoted path"),
    (f"git-upload-pack {LEDGER} extra", "extra arguments"),
    (f"git-upload-pack '{LEDGER}'; id", "expected one quoted path"),
    (f"git-upload-pack '{LEDGER}'\nid", "control characters"),
    (f"git-upload-pack {LEDGER};id", "unsafe characters"),
    (f"git-upload-pack {LEDGER}$(id)", "unsafe characters"),
    (f"git-upload-pack {LEDGER}`id`", "unsafe characters"),
    (f"git-upload-pack {LEDGER}|id", "unsafe characters"),
    ("git-upload-pack '/srv/a'\\''b'", "expected one quoted path"),
    ("git-upload-pack '/srv/ledger git'", "unsafe characters"),
    ("git-upload-pack ''", "unsafe characters"),
    ("git-upload-pack '", "expected one quoted path"),
    ("git-upload-pack", "not allowed"),
    ("store-put", "expected `store-put <sha256>`"),
    ("store-put ../../etc/passwd", "expected `store-put <sha256>`"),
    (f"store-put {SHA.upper()}", "expected `store-put <sha256>`"),
    (f"store-put {SHA[:-1]}", "expected `store-put <sha256>`"),
    (f"store-get {SHA} extra", "expected `store-get <sha256>`"),
    (f"store-get  {SHA}", "expected `store-get <sha256>`"),
    (f"store-delete {SHA}", "not allowed"),
    ("x" * 5000, "over 4096"),
]


@pytest.mark.parametrize(("original", "reason"), REFUSED, ids=[repr(r[0])[:60] for r in REFUSED])
def test_refused_commands(original: str | None, reason: str) -> None:
    with pytest.raises(Refusal, match=re.escape(reason)):
        parse_command(original, LEDGER, STORE)


def test_a_key_without_a_ledger_or_store_gets_neither() -> None:
    with pytest.raises(Refusal, match="no ledger access"):
        parse_command(f"git-upload-pack '{LEDGER}'", None, STORE)
    with pytest.raises(Refusal, match="no store access"):
        parse_command(f"store-get {SHA}", LEDGER, None)


def test_name_pattern_matches_the_schema() -> None:
    # the shell keeps a copy to stay free of pydantic; the copy must not drift
    assert shell.NAME_PATTERN == schema.NAME_PATTERN


@pytest.mark.parametrize(("argv", "expected"), [
    (["desktop"], (None, None, "desktop")),
    (["--ledger", LEDGER, "desktop"], (LEDGER, None, "desktop")),
    (["--ledger", LEDGER, "--store", STORE, "gpu-1.lab"], (LEDGER, STORE, "gpu-1.lab")),
])
def test_arguments(argv: list[str], expected: tuple) -> None:
    opts = parse_args(argv)
    assert (opts.ledger, opts.store, opts.name) == expected


@pytest.mark.parametrize("argv", [
    [], ["--ledger", LEDGER], ["a", "b"], ["-x"], ["../etc"], ["a b"], ["x" * 65],
    ["--ledger", "relative.git", "desktop"], ["--store", "store", "desktop"], ["--bogus", "a"],
])
def test_bad_arguments_are_a_misconfigured_key(argv: list[str]) -> None:
    with pytest.raises(Refusal, match="misconfigured key"):
        parse_args(argv)


def test_exec_env_sets_the_identity_and_drops_client_git_settings() -> None:
    env = exec_env({"PATH": "/usr/bin", "HOME": "/home/tl", "TRAINLEDGER_IDENTITY": "operator",
                    "GIT_DIR": "/elsewhere", "GIT_CONFIG_PARAMETERS": "'core.hooksPath'='/x'",
                    "GIT_PROTOCOL": "version=2"}, "desktop")
    assert env == {"PATH": "/usr/bin", "HOME": "/home/tl", "TRAINLEDGER_IDENTITY": "desktop",
                   "GIT_PROTOCOL": "version=2"}
    assert "GIT_PROTOCOL" not in exec_env({"GIT_PROTOCOL": "version=2:x=$(id)"}, "desktop")


def test_main_refuses_with_one_line_and_exit_1(monkeypatch, capsys) -> None:
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "bash -i")
    assert shell.main(["--ledger", LEDGER, "desktop"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("trainledger-shell: refused: ")


def test_main_execs_git_as_an_argv_list(monkeypatch) -> None:
    calls = []

    def fake_exec(file, argv, env):
        calls.append((file, argv, env["TRAINLEDGER_IDENTITY"]))
        raise OSError(2, "stopped here")

    monkeypatch.setattr(shell.os, "execvpe", fake_exec)
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", f"git-receive-pack '{LEDGER}'")
    monkeypatch.setenv("TRAINLEDGER_IDENTITY", "operator")
    assert shell.main(["--ledger", LEDGER, "desktop"]) == 1
    assert calls == [("git", ["git", "receive-pack", LEDGER], "desktop")]
