"""`reconciler ...`: one `configure_parser` per subcommand module, `main(argv) -> int`.

Every expected failure is a `LedgerError`, printed as one line naming what is
wrong (exit 1); a traceback means a bug.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

from reconciler.errors import LedgerError

# command -> (module with configure_parser(name, parser) that sets `func`, help)
COMMANDS = {
    "init": ("reconciler.cli", "create a bare ledger from the template, install hooks"),
    "validate": ("reconciler.cli", "validate a manifest file"),
    "schema": ("reconciler.cli", "print the JSON Schema of the manifest, state or capability"),
    "install-hooks": ("reconciler.cli", "install the pre-commit hook in a clone (--server: "
                      "the ledger's)"),
    "run": ("reconciler.daemon", "the reconciler daemon (--once: one pass)"),
    "status": ("reconciler.status", "jobs by status, workers, last reconcile, errors"),
    "show": ("reconciler.history", "a job's spec, state and history"),
    "log": ("reconciler.history", "the audit trail from commit trailers, newest first"),
    "cancel": ("reconciler.operator", "cancel a job (an operator commit)"),
    "requeue": ("reconciler.operator", "requeue a failed, cancelled or completed job"),
    "fsck": ("reconciler.fsck", "check bundles, history and the repository"),
    "enroll": ("reconciler.enroll", "print or install a host's authorized_keys line"),
    "fetch-artifact": ("reconciler.fetch", "download and safely unpack a job's bundle"),
    "import-seed": ("reconciler.seed", "bring the seed fleet's queue and bundles into the ledger"),
}


def add_ledger_arg(parser: argparse.ArgumentParser, required: bool = True) -> None:
    default = os.environ.get("TRAINLEDGER_LEDGER")
    parser.add_argument(
        "--ledger", default=default, required=required and default is None,
        help="ledger URL: a path or ssh://host/path (default: $TRAINLEDGER_LEDGER)",
    )


def state_dir_default(name: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "trainledger" / name


# -------------------------------------------------------------- own commands


def cmd_init(args: argparse.Namespace) -> int:
    from reconciler.init import init_ledger

    fleet = dict(_parse_set(s) for s in args.set or [])
    _repo, sha, store = init_ledger(Path(args.dir), template=args.template,
                                    store=args.store, fleet=fleet)
    print(f"created ledger {Path(args.dir).absolute()} (main {sha[:12]}); store {store}")
    return 0


def _parse_set(item: str) -> tuple[str, float | int]:
    key, sep, value = item.partition("=")
    key = key.removeprefix("fleet.")
    if not sep or not key.isidentifier():
        raise LedgerError(f"--set {item!r}: expected fleet.KEY=NUMBER")
    try:
        number: float | int = int(value)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            raise LedgerError(f"--set {item!r}: {value!r} is not a number") from None
    return key, number


def cmd_validate(args: argparse.Namespace) -> int:
    from reconciler.errors import ManifestError
    from reconciler.manifest import load_manifest

    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LedgerError(f"{path}: {exc.strerror}") from None
    try:
        loaded = load_manifest(data, filename=str(path))
    except ManifestError as exc:
        if args.json:
            print(json.dumps({"ok": False, "file": str(path), "errors": str(exc).splitlines()}))
        else:
            print(exc, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"ok": True, "file": str(path), "jobs": len(loaded.specs)}))
    else:
        print(f"{path}: ok ({len(loaded.specs)} jobs)")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from reconciler.schema import schema_text

    print(schema_text(args.which), end="")
    return 0


def cmd_install_hooks(args: argparse.Namespace) -> int:
    from reconciler.init import install_client_hooks, install_server_hooks

    paths = install_server_hooks(Path(args.server)) if args.server \
        else install_client_hooks(Path(args.clone))
    for path in paths:
        print(f"installed {path}")
    return 0


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "init":
        parser.add_argument("dir", help="new, empty directory for the bare ledger")
        parser.add_argument("--template", type=Path, help="template dir (default: built-in)")
        parser.add_argument("--store", type=Path, help="store dir (default: DIR/../store)")
        parser.add_argument("--set", action="append", metavar="fleet.KEY=VALUE",
                            help="override a [fleet] number, e.g. fleet.heartbeat_s=1")
        parser.set_defaults(func=cmd_init)
    elif name == "validate":
        parser.add_argument("file", nargs="?", default="manifest.toml")
        parser.add_argument("--json", action="store_true")
        parser.set_defaults(func=cmd_validate)
    elif name == "schema":
        parser.add_argument("which", nargs="?", default="manifest",
                            choices=["manifest", "state", "capability"])
        parser.set_defaults(func=cmd_schema)
    elif name == "install-hooks":
        parser.add_argument("clone", nargs="?", default=".",
                            help="an operator's clone: installs the pre-commit hook")
        parser.add_argument("--server", metavar="LEDGER",
                            help="rewrite a bare ledger's server hooks (after an upgrade), "
                                 "wherever core.hooksPath points")
        parser.set_defaults(func=cmd_install_hooks)


# ---------------------------------------------------------------------- main


def build_parser(prog: str = "reconciler") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="trainledger reconciler and tools")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module_name) is None:
            continue  # a command whose module this build does not ship
        child = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module_name).configure_parser(name, child)
    return parser


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse, set up logging, run the command: an expected failure is one line
    naming the command (exit 1), never a traceback."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except LedgerError as exc:
        print(f"{parser.prog} {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
