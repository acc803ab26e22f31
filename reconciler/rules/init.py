"""`reconciler init DIR`: a bare ledger from the template, hardened and hooked.

The first commit is the reconciler's: the template's manifest, access list and
README, plus a pending state file for every job, so a worker can claim at once.
"""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from reconciler.git.repo import GitRepo, Signature
from reconciler.protocol import trailers, transitions
from reconciler.protocol.access import DEFAULT_ACCESS, load_access
from reconciler.protocol.errors import LedgerError
from reconciler.protocol.layout import MAIN
from reconciler.protocol.manifest import load_manifest
from reconciler.rules.resources import CHECKOUT_ROOT, resource_dir

PACKAGE_ROOT = CHECKOUT_ROOT  # the checkout, or site-packages
HOOK_NAMES = ("pre-receive",)
CLIENT_HOOK_NAMES = ("pre-commit",)

# The server settings docs/operators.md lists: history only moves forward, objects
# are checked and capped, and every write is fsynced. denyNonFastForwards covers
# refs/heads/* only, so heartbeat amends under refs/heartbeats/ still go through.
SERVER_CONFIG = {
    "receive.denyNonFastForwards": "true",
    "receive.denyDeletes": "true",
    "receive.fsckObjects": "true",
    "receive.maxInputSize": str(16 << 20),
    "core.fsync": "all",
    "core.fsyncMethod": "fsync",
    "gc.pruneExpire": "1.hour.ago",
    "gc.auto": "256",
    "core.logAllRefUpdates": "false",
    "transfer.hideRefs": "refs/remotes",
}


class InitError(LedgerError):
    """The ledger could not be created."""


def init_ledger(
    directory: Path,
    *,
    template: Path | None = None,
    store: Path | None = None,
    fleet: dict[str, float | int] | None = None,
) -> tuple[GitRepo, str, Path]:
    """Create the ledger; returns (repo, first commit, store dir)."""
    directory = Path(directory).absolute()
    template = Path(template or resource_dir("ledger-template"))
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise InitError(f"{directory}: exists and is not empty; choose a new directory",
                        path=directory)
    manifest_path = template / "manifest.toml"
    if not manifest_path.is_file():
        raise InitError(f"{template}: template has no manifest.toml", path=template)
    raw = manifest_path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        load_manifest(raw, filename=str(manifest_path))  # raises ManifestError naming the line
        raise
    # An explicit store wins over one the template chose (it kept the template's,
    # so `--store X` created X while workers were told the other one).
    explicit = store is not None
    store = Path(store).absolute() if store else directory.parent / "store"
    text = _with_fleet(text, store_setting(store, directory), fleet or {},
                       keep_template_store=not explicit)
    loaded = load_manifest(text.encode(), filename=str(manifest_path))  # ManifestError if bad
    access = (template / "access.toml").read_bytes() if (template / "access.toml").is_file() \
        else DEFAULT_ACCESS
    load_access(access, filename=str(template / "access.toml"))

    repo = GitRepo.init_bare(directory)
    for key, value in SERVER_CONFIG.items():
        repo.git("config", key, value)
    files: dict[str, bytes | None] = {"manifest.toml": text.encode(), "access.toml": access}
    if (template / "README.md").is_file():
        files["README.md"] = (template / "README.md").read_bytes()
    changes = []
    for spec in loaded.specs.values():
        step = transitions.create(spec.job_id, spec.name)
        files[step.new.path] = step.new.to_json().encode()
        changes.append(step.change)
    tree = repo.edit_tree(None, files)
    message = trailers.render(
        f"init ledger {loaded.manifest.name} with {len(changes)} jobs", changes, "reconciler",
        kind=trailers.INIT)
    sha = repo.write_commit(tree, [], Signature("reconciler", "reconciler@trainledger",
                                                time.time()), message)
    repo.update_ref(MAIN, sha)
    install_hooks(directory)
    store.mkdir(parents=True, exist_ok=True)
    (store / "sha256").mkdir(exist_ok=True)
    return repo, sha, store


def store_setting(store: Path, ledger: Path) -> str:
    """`[fleet] store` as every host can read it: relative to the ledger's
    directory when the store lies under it (the Pi opens it locally, a worker
    over ssh at the same host as its ledger), else the Pi's absolute path."""
    try:
        return store.relative_to(ledger.parent).as_posix()
    except ValueError:
        return store.as_posix()


FLEET_HEADER = re.compile(r"^[ \t]*\[[ \t]*fleet[ \t]*\][ \t]*(#.*)?$")
TABLE_HEADER = re.compile(r"^[ \t]*\[")


def _with_fleet(text: str, store: str, fleet: dict[str, float | int], *,
                keep_template_store: bool = False) -> str:
    """Point `[fleet] store` at the store and apply overrides, keeping comments.

    Line by line within the `[fleet]` table: the regex this replaced missed a
    header with a comment (`[fleet]  # timing`), an indented key or CRLF line
    ends, and then added a second [fleet] or a duplicate key, so init failed
    with a TOML error on a line the operator never wrote."""
    try:
        current = tomllib.loads(text).get("fleet")
    except tomllib.TOMLDecodeError:
        return text  # load_manifest names the line and column
    values: dict[str, object] = dict(fleet)
    if not (keep_template_store and isinstance(current, dict) and "store" in current):
        values = {"store": store, **values}
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines(keepends=True)
    header = next((i for i, line in enumerate(lines)
                   if FLEET_HEADER.match(line.rstrip("\r\n"))), None)
    if header is None:
        if current is not None:
            raise InitError("the template sets fleet values without a [fleet] table header; "
                            "write them under [fleet] so init can set "
                            + ", ".join(sorted(values)))
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += newline
        lines += [newline, f"[fleet]{newline}"]
        header = len(lines) - 1
    end = next((j for j in range(header + 1, len(lines)) if TABLE_HEADER.match(lines[j])),
               len(lines))
    for key, value in values.items():
        rendered = f"{key} = {_toml_value(value)}"
        key_re = re.compile(rf"^[ \t]*{re.escape(key)}[ \t]*=")
        hit = next((j for j in range(header + 1, end) if key_re.match(lines[j])), None)
        if hit is not None:
            ending = lines[hit][len(lines[hit].rstrip("\r\n")):] or newline
            lines[hit] = rendered + ending
        else:
            lines.insert(header + 1, rendered + newline)
            end += 1
    return "".join(lines)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    return repr(value)


def hook_script(name: str, python: str = sys.executable) -> str:
    """The hook's text, started fast: the installing interpreter's absolute path
    (a version manager's shim adds ~50 ms), `-S` to skip site.py and its .pth
    import hooks (~30 ms more), and the paths it would have added written in:
    the package's own root and this environment's site-packages."""
    source = resource_dir("hooks") / name
    body = source.read_text()
    lines = body.splitlines()
    if lines and lines[0].startswith("#!"):
        lines = lines[1:]
    paths = [str(PACKAGE_ROOT), *(p for p in site.getsitepackages() if p != str(PACKAGE_ROOT))]
    preamble = ["import sys", f"sys.path[:0] = {paths!r}"]
    return "\n".join([f"#!{os.path.abspath(python)} -IS", *preamble, *lines]) + "\n"


def install_hooks(
    repo_dir: Path, python: str = sys.executable, names: tuple[str, ...] = HOOK_NAMES,
    hooks: Path | None = None,
) -> list[Path]:
    hooks = hooks or Path(repo_dir) / "hooks"
    hooks.mkdir(exist_ok=True)
    for sample in hooks.glob("*.sample"):
        sample.unlink()
    written = []
    for name in names:
        # written beside and renamed into place: a push during an upgrade runs
        # the old hook or the new one, never a half-written file
        path, tmp = hooks / name, hooks / f".{name}.new"
        tmp.write_text(hook_script(name, python))
        tmp.chmod(0o755)
        os.replace(tmp, path)
        written.append(path)
    return written


def install_client_hooks(clone: Path, python: str = sys.executable) -> list[Path]:
    """The operator's pre-commit hook: a bad manifest is refused before it is a commit."""
    proc = subprocess.run(["git", "-C", str(clone), "rev-parse", "--git-path", "hooks"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise InitError(f"{clone}: not a git clone ({proc.stderr.strip()})", path=clone)
    hooks = Path(proc.stdout.strip())
    if not hooks.is_absolute():
        hooks = Path(clone) / hooks
    return install_hooks(clone, python, CLIENT_HOOK_NAMES, hooks)



def install_server_hooks(ledger: Path, python: str = sys.executable) -> list[Path]:
    """Rewrite a bare ledger's server hooks where git runs them (core.hooksPath or
    hooks/): after an upgrade they must name the new interpreter and paths."""
    from reconciler.rules.hookpath import server_hooks_dir

    ledger = Path(ledger).absolute()
    if not (ledger / "HEAD").is_file() or not (ledger / "refs").is_dir():
        raise InitError(f"{ledger}: not a bare git repository (give the ledger's path)",
                        path=ledger)
    try:
        hooks = server_hooks_dir(ledger)
    except OSError as exc:
        raise InitError(str(exc), path=ledger) from None
    if not hooks.is_dir():
        raise InitError(f"{hooks}: core.hooksPath names a directory that does not exist; "
                        "create it (root-owned, see docs/operators.md) first", path=hooks)
    return install_hooks(ledger, python, HOOK_NAMES, hooks)
