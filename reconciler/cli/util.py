"""What every `reconciler` and `worker` subcommand shares: common flags (accepted
before or after the subcommand), checked numeric flags, log formats, and the
one place where a closed pipe and Ctrl-C end a command without a traceback.

Kept free of heavy imports: `--help` and `--version` load only this and argparse.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

# Documented in docs/operators.md; `health` uses 0/1/2 for its verdict instead.
EXIT_CODES = """exit codes:
  0    success
  1    an expected failure, printed as one line naming the file, job or field
  2    usage error (a bad flag or value)
  130  interrupted (Ctrl-C)
  a closed output pipe (`| head`) ends the command quietly with 0"""

LOG_FORMATS = ("text", "json")


# ------------------------------------------------------------ numeric flags


def _number(kind: type, text: str) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None


def positive_float(text: str) -> float:
    """A flag like --watch S: a finite number above 0."""
    value = float(_number(float, text))
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number above 0")
    return value


def positive_int(text: str) -> int:
    value = int(_number(int, text))
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer of 1 or more")
    return value


def nonneg_int(text: str) -> int:
    value = int(_number(int, text))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer of 0 or more")
    return value


# ------------------------------------------------------------- common flags


def common_parent() -> argparse.ArgumentParser:
    """Flags every subcommand takes. Added to the top parser with their defaults
    and to each subparser with SUPPRESS, so `-v status` and `status -v` both work
    and the subcommand's absent flag never resets the top one."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging")
    parent.add_argument("--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS,
                        help="log lines on stderr: text (default) or json, one object a line")
    return parent


def add_common_top(parser: argparse.ArgumentParser, version: str) -> None:
    parser.add_argument("-V", "--version", action="version",
                        version=f"%(prog)s (trainledger) {version}")
    parser.add_argument("-v", "--verbose", action="store_true", default=False,
                        help="debug logging")
    parser.add_argument("--log-format", choices=LOG_FORMATS,
                        default=os.environ.get("TRAINLEDGER_LOG_FORMAT") or "text",
                        help="log lines on stderr: text (default) or json, one object a line "
                             "(default: $TRAINLEDGER_LOG_FORMAT)")


def version() -> str:
    import reconciler

    return str(reconciler.__version__)


# ---------------------------------------------------------------- logging


def under_journald() -> bool:
    """systemd sets JOURNAL_STREAM=dev:inode to the stream it gave us as stderr;
    only when stderr still is that stream does journald stamp each line itself."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def json_text(doc: object) -> str:
    """A `--json` document: indented for a person at a terminal, compact (and
    ~10x faster to write) for a script; keys sorted, so it diffs."""
    return json.dumps(doc, sort_keys=True, indent=2 if sys.stdout.isatty() else None)


def parse_fields(message: str) -> dict[str, str]:
    """`event=claim job=a attempt=2 free text` -> {event, job, attempt}: the
    key=value tokens of the project's log lines (the rest stays in msg)."""
    out: dict[str, str] = {}
    for token in message.split():
        key, sep, value = token.partition("=")
        if sep and key.replace("_", "").replace("-", "").isalnum() and key not in out:
            out[key] = value
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (unless journald stamps it), level, logger, msg,
    and each key=value of the message as its own key (never overriding those)."""

    def __init__(self, stamp: bool = True) -> None:
        super().__init__()
        self.stamp = stamp

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, Any] = {}
        if self.stamp:
            doc["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + \
                f".{int(record.msecs):03d}Z"
        doc.update(level=record.levelname.lower(), logger=record.name, msg=message)
        for key, value in parse_fields(message).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, sort_keys=False)


def setup_logging(verbose: bool, fmt: str) -> None:
    """text: `2026-01-02 03:04:05,678 INFO event=...` (the time dropped under
    journald, which adds its own); json: JsonFormatter."""
    stamp = not under_journald()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(stamp))
    else:
        handler.setFormatter(logging.Formatter(
            ("%(asctime)s " if stamp else "") + "%(levelname)s %(message)s"))
    handler._trainledger = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_trainledger", False):  # ours from an earlier call, not pytest's
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


# ---------------------------------------------------------- quiet endings


def quiet_broken_pipe() -> int:
    """`reconciler log | head -1`: the reader left. Point stdout at /dev/null so
    the interpreter's final flush cannot raise again, and end quietly (0)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return 0


def examples(*lines: str) -> str:
    """An epilog: the examples, then the exit codes."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) + "\n\n" + EXIT_CODES


def table(head: list[str], rows: list[list[str]], right: set[str] = frozenset()) -> list[str]:
    """Columns as wide as their widest cell (a 40-character job name fits); the
    last column is not padded. Columns named in `right` align right."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(head)]
    out = []
    for row in [head, *rows]:
        cells = [c.rjust(w) if h in right else c.ljust(w)
                 for c, w, h in zip(row[:-1], widths[:-1], head[:-1], strict=True)]
        out.append("  ".join([*cells, row[-1]]).rstrip())
    return out


def error_line(error: str | None, limit: int = 300) -> str:
    """The line that says why a job failed: with a log tail, the reason and the
    trainer's last non-empty line ("trainer exit 3: CUDA out of memory"); else
    the first line."""
    if not error:
        return ""
    lines = [ln.strip() for ln in error.splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].endswith("; log tail:"):  # a worker before the real line
        return f"{lines[0].removesuffix('; log tail:')}: {lines[-1]}"[:limit]
    return lines[0][:limit] if lines else ""
