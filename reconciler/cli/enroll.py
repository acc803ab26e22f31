"""`reconciler enroll NAME --pubkey FILE`: one host, one key, one identity.

Prints (or appends to `authorized_keys`) the line that pins the host's key to
`trainledger-shell ... NAME`, so every push over that key is judged as NAME
whatever the host claims (docs/failure-model.md, security rule 1). Roles live in the ledger's
`access.toml`, which only an operator may change: for an operator or a
reconciler this prints the change to commit.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from reconciler.protocol.errors import LedgerError
from reconciler.protocol.names import name_problem
from reconciler.shell import NAME_RE

KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)
ROLES = ("worker", "operator", "reconciler")
ROLE_KEYS = {"operator": "operators", "reconciler": "reconcilers", "worker": "workers"}
# Paths go into command="..." (sshd unescapes only \") and then into sh -c.
SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9._/+@~:,=-]*$")


class EnrollError(LedgerError):
    """The host could not be enrolled."""


def read_pubkey(path: Path) -> tuple[str, str]:
    """(type, base64 blob) of an OpenSSH public key file; options are refused."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise EnrollError(f"{path}: cannot read a public key ({exc})") from None
    if "PRIVATE KEY" in text:
        raise EnrollError(f"{path}: this is a private key; give the .pub file (and keep the "
                          "private key on the host)")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise EnrollError(f"{path}: expected exactly one public key line, found {len(lines)}")
    fields = lines[0].split()
    if len(fields) < 2 or fields[0] not in KEY_TYPES:
        raise EnrollError(f"{path}: not an OpenSSH public key (`<type> <base64> [comment]`, "
                          f"type one of {', '.join(KEY_TYPES)}); is it the private key?")
    kind, blob = fields[0], fields[1]
    try:
        raw = base64.b64decode(blob, validate=True)
        length = int.from_bytes(raw[:4], "big")
        embedded = raw[4:4 + length].decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise EnrollError(f"{path}: the key data is not valid base64") from None
    if embedded != kind:
        raise EnrollError(f"{path}: key data says {embedded!r}, the line says {kind!r}")
    return kind, blob


def shell_path() -> str:
    """The absolute trainledger-shell of this installation (the one next to python)."""
    beside = Path(sys.executable).parent / "trainledger-shell"
    if beside.is_file():
        return os.path.abspath(beside)
    found = shutil.which("trainledger-shell")
    if not found:
        raise EnrollError("trainledger-shell is not installed next to this python nor on PATH")
    return os.path.abspath(found)


def _safe_path(value: str, what: str) -> str:
    path = os.path.abspath(value)
    if not SAFE_PATH_RE.match(path):
        raise EnrollError(f"{what} {path!r}: use a path of letters, digits and ._/+@~:,=- only "
                          "(it goes into authorized_keys and a shell command line)")
    return path


def authorized_line(name: str, kind: str, blob: str, ledger: str | None, store: str | None,
                    shell: str) -> str:
    argv = [shell]
    if ledger:
        argv += ["--ledger", ledger]
    if store:
        argv += ["--store", store]
    argv.append(name)
    return f'restrict,command="{shlex.join(argv)}" {kind} {blob} trainledger:{name}'


def install_line(path: Path, line: str, blob: str) -> str:
    """Append `line` unless this key is already there; returns what happened."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    for current in existing.splitlines():
        if blob in current.split():
            if current.strip() == line:
                os.chmod(path, 0o600)
                return "already enrolled"
            raise EnrollError(f"{path}: this key is already enrolled with another line; one "
                              f"key per host (remove that line first):\n  {current.strip()}")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        prefix = "\n" if existing and not existing.endswith("\n") else ""
        os.write(fd, (prefix + line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)
    return "appended"


def _ledger_file(ledger: str, name: str) -> bytes | None:
    proc = subprocess.run(["git", "-C", ledger, "show", f"main:{name}"], capture_output=True)
    return proc.stdout if proc.returncode == 0 else None


def store_from_manifest(ledger: str) -> str | None:
    """The manifest's [fleet] store when it is a path on the ledger's host
    (relative paths are taken from the ledger's directory)."""
    from reconciler.protocol.storeurl import from_manifest

    data = _ledger_file(ledger, "manifest.toml")
    try:
        store = tomllib.loads(data.decode()).get("fleet", {}).get("store") if data else None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    if not isinstance(store, str) or not store:
        return None
    local = from_manifest(store, str(Path(ledger).absolute()))
    return local if local.startswith("/") else None


def access_change(name: str, role: str, ledger: str | None) -> str | None:
    """The access.toml edit an operator must commit for `name` to have `role`."""
    data = _ledger_file(ledger, "access.toml") if ledger else None
    try:
        access = tomllib.loads(data.decode()) if data else {}
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        access = {}
    key = ROLE_KEYS[role]
    default = {"operators": ["operator"], "reconcilers": ["reconciler"], "workers": None}[key]
    current = access.get(key, default)
    if role == "worker" and current is None:
        others = set(access.get("operators", ["operator"])) | set(
            access.get("reconcilers", ["reconciler"]))
        if name not in others:
            return None  # `workers` unset: every other identity is a worker
        current = []
    if current is not None and name in current:
        return None
    names = ", ".join(f'"{n}"' for n in [*(current or []), name])
    return (f"{name} needs the {role} role: in an operator's clone of the ledger, set\n\n"
            f"    {key} = [{names}]\n\n"
            f"in access.toml, then `git commit -m 'access: {name} is {role}' access.toml && "
            "git push`.\nThe hook judges a push by access.toml as of the tip before it, so the "
            "new role counts from the next push.")


def cmd_enroll(args: argparse.Namespace) -> int:
    name = args.name
    if not NAME_RE.fullmatch(name) or name_problem(name):
        raise EnrollError(f"{name!r}: {name_problem(name) or 'not a valid name'} "
                          "(letters, digits, ._-; up to 64)")
    kind, blob = read_pubkey(Path(args.pubkey))
    if args.ledger and "://" in args.ledger:
        raise EnrollError(f"--ledger {args.ledger}: enroll runs on the ledger's machine; give "
                          "the bare repository's local path")
    ledger = _safe_path(args.ledger, "--ledger") if args.ledger else None
    if ledger and not (Path(ledger) / "HEAD").is_file():
        raise EnrollError(f"--ledger {ledger}: not a bare git repository on this machine")
    store = args.store or (store_from_manifest(ledger) if ledger else None)
    store = _safe_path(store, "--store") if store else None
    if not ledger and not store:
        raise EnrollError("give --ledger PATH (and --store ROOT): the key would reach nothing")
    line = authorized_line(name, kind, blob, ledger, store, shell_path())
    if args.authorized_keys:
        what = install_line(Path(args.authorized_keys), line, blob)
        print(f"{name}: {what} in {args.authorized_keys}")
    else:
        print(line)
    change = access_change(name, args.role, ledger)
    if change:
        print(change, file=sys.stderr)
    return 0


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the host's identity (its worker name)")
    parser.add_argument("--pubkey", required=True, type=Path,
                        help="the host's public key file (one key per host)")
    parser.add_argument("--role", choices=ROLES, default="worker")
    parser.add_argument("--ledger", default=os.environ.get("TRAINLEDGER_LEDGER"),
                        help="the bare ledger's absolute path on this machine "
                             "(default: $TRAINLEDGER_LEDGER)")
    parser.add_argument("--store", help="the store directory (default: the manifest's, "
                                        "when it is a local path)")
    parser.add_argument("--authorized-keys", type=Path,
                        help="append the line to this file (idempotent, mode 0600) "
                             "instead of printing it")
    parser.set_defaults(func=cmd_enroll)
