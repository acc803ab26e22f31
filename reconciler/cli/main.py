"""`reconciler ...`: one `configure_parser` per subcommand module, `main(argv) -> int`.

Every expected failure is a `LedgerError`, printed as one line naming what is
wrong (exit 1); a traceback means a bug.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from reconciler.protocol.errors import LedgerError

# command -> (module with configure_parser(name, parser) that sets `func`, help)
COMMANDS = {
    "init": ("reconciler.cli.main", "create a bare ledger from the template, install hooks"),
    "validate": ("reconciler.cli.main", "validate a manifest file"),
    "schema": ("reconciler.cli.main", "print the JSON Schema of the manifest, state or capability"),
    "install-hooks": ("reconciler.cli.main", "install the pre-commit hook in a clone (--server: "
                      "the ledger's)"),
    "run": ("reconciler.cli.run", "the reconciler daemon (--once: one pass)"),
    "status": ("reconciler.cli.status", "jobs by status, workers, last reconcile, errors"),
    "show": ("reconciler.cli.history", "a job's spec, state and history"),
    "log": ("reconciler.cli.history", "the audit trail from commit trailers, newest first"),
    "cancel": ("reconciler.cli.operator", "cancel a job (an operator commit)"),
    "requeue": ("reconciler.cli.operator", "requeue a failed, cancelled or completed job"),
    "fsck": ("reconciler.cli.fsck", "check bundles, history and the repository"),
    "enroll": ("reconciler.cli.enroll", "print or install a host's authorized_keys line"),
    "fetch-artifact": ("reconciler.cli.fetch", "download and safely unpack a job's bundle"),
    "workers": ("reconciler.cli.workers",
                "each worker: last beat, live, draining, jobs, resources"),
    "health": ("reconciler.cli.health", "0 healthy, 1 degraded, 2 reconciler down (for monitors)"),
    "report": ("reconciler.cli.report", "write a self-contained HTML fleet report (index.html)"),
    "completion": ("reconciler.cli.main", "print a bash or zsh completion script"),
    "results": ("reconciler.cli.results", "completed jobs with their hyper and metrics, sorted"),
    "logs": ("reconciler.cli.logs",
             "a job's whole log from the store; a running job's latest lines"),
    "import-seed": ("reconciler.cli.seed",
                    "bring the seed fleet's queue and bundles into the ledger"),
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
    from reconciler.rules.init import init_ledger

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
    from reconciler.protocol.errors import ManifestError
    from reconciler.protocol.manifest import load_manifest

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
    sweeps = {name: len(ids) for name, ids in loaded.sweeps.items()}
    if args.json:
        print(json.dumps({"ok": True, "file": str(path), "jobs": len(loaded.specs),
                          "sweeps": sweeps}))
    else:
        print(f"{path}: ok ({len(loaded.specs)} jobs)")
        for name, count in sweeps.items():
            print(f"  sweep {name}: {count} jobs")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from reconciler.protocol.schema import schema_text

    print(schema_text(args.which), end="")
    return 0


def cmd_install_hooks(args: argparse.Namespace) -> int:
    from reconciler.rules.init import install_client_hooks, install_server_hooks

    paths = install_server_hooks(Path(args.server)) if args.server \
        else install_client_hooks(Path(args.clone))
    for path in paths:
        print(f"installed {path}")
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    from reconciler.cli.completion import script

    print(script(args.full_parser(), args.shell), end="")
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
    elif name == "completion":
        from reconciler.cli.completion import configure

        configure(parser, "reconciler")
        parser.set_defaults(func=cmd_completion)
    elif name == "install-hooks":
        parser.add_argument("clone", nargs="?", default=".",
                            help="an operator's clone: installs the pre-commit hook")
        parser.add_argument("--server", metavar="LEDGER",
                            help="rewrite a bare ledger's server hooks (after an upgrade), "
                                 "wherever core.hooksPath points")
        parser.set_defaults(func=cmd_install_hooks)


# ---------------------------------------------------------------------- main


ALL = "*"


def chosen_command(argv: list[str] | None, commands: Iterable[str]) -> str | None:
    """The subcommand named in argv (the first word that is one), so only its
    module is imported: `reconciler --help` imports no subcommand at all."""
    names = set(commands)
    for word in sys.argv[1:] if argv is None else argv:
        if word in names:
            return word
    return None


def build_parser(prog: str = "reconciler", only: str | None = ALL) -> argparse.ArgumentParser:
    """The parser; subcommands other than `only` get their name and help but no
    flags (they are never parsed in this process). ALL configures every one."""
    from reconciler.cli.util import EXIT_CODES, add_common_top, common_parent, version

    parser = argparse.ArgumentParser(
        prog=prog, description="trainledger reconciler and tools", epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_top(parser, version())
    common = common_parent()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module_name) is None:
            continue  # a command whose module this build does not ship
        child = sub.add_parser(name, help=help_text, description=help_text, parents=[common],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        if only in (ALL, name):
            importlib.import_module(module_name).configure_parser(name, child)
            add_examples(prog, name, child)
    return parser


def add_examples(prog: str, name: str, child: argparse.ArgumentParser) -> None:
    from reconciler.cli.examples import EXAMPLES
    from reconciler.cli.util import EXIT_CODES

    lines = EXAMPLES.get((prog, name))
    if lines and not child.epilog:
        child.epilog = "examples:\n" + "\n".join(f"  {line}" for line in lines) \
            + "\n\n" + EXIT_CODES


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None,
             full_parser: Callable[[], argparse.ArgumentParser] | None = None) -> int:
    """Parse, set up logging, run the command: an expected failure is one line
    naming the command (exit 1), never a traceback; a closed pipe (`| head`)
    and Ctrl-C end every command quietly, here and only here."""
    from reconciler.cli.util import quiet_broken_pipe, setup_logging

    try:
        args = parser.parse_args(argv)
        args.full_parser = full_parser or (lambda: parser)
        setup_logging(args.verbose, args.log_format)
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a reader gone before the last write
        return code
    except LedgerError as exc:
        print(f"{parser.prog} {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return quiet_broken_pipe()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    only = chosen_command(argv, COMMANDS)
    return dispatch(build_parser(only=only), argv, lambda: build_parser(only=ALL))


if __name__ == "__main__":
    sys.exit(main())
