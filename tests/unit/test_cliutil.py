"""CLI conventions, pure parts: numeric flags, log formats, tables, completion
(run in a real bash), selectors and the health verdict."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from reconciler.cli import util as cliutil
from reconciler.cli.completion import bash_script, zsh_script
from reconciler.cli.examples import EXAMPLES
from reconciler.cli.health import judge
from reconciler.cli.main import COMMANDS, build_parser
from reconciler.cli.selectors import row_matches, status_list
from worker.cli import build_parser as worker_parser


@pytest.mark.parametrize("text", ["-1", "0", "nan", "inf", "x", ""])
def test_positive_float_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be a number above 0|not a number"):
        cliutil.positive_float(text)


def test_numeric_flags_accept_good_values() -> None:
    assert cliutil.positive_float("0.5") == 0.5
    assert cliutil.positive_int("3") == 3
    assert cliutil.nonneg_int("0") == 0
    for bad in ("0", "-2", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            cliutil.positive_int(bad)


@pytest.mark.parametrize("argv", [
    ["status", "--watch", "-1"], ["status", "--watch", "0"], ["log", "--limit", "0"],
    ["run", "--tick-s", "-3"], ["fetch-artifact", "j", "d", "--max-members", "-1"],
])
def test_every_numeric_flag_is_a_usage_error_not_a_traceback(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "reconciler.cli", *argv, "--ledger", "/x"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "error: argument" in proc.stderr


@pytest.mark.parametrize("argv", [["run", "--poll-s", "-1"], ["run", "--slots", "0"],
                                  ["run", "--max-jobs", "x"]])
def test_worker_numeric_flags(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "worker.cli", *argv, "--ledger", "/x"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_common_flags_before_or_after_the_subcommand() -> None:
    parser = build_parser()
    before = parser.parse_args(["-v", "--log-format", "json", "status", "--ledger", "/x"])
    after = parser.parse_args(["status", "--ledger", "/x", "-v", "--log-format", "json"])
    neither = parser.parse_args(["status", "--ledger", "/x"])
    assert (before.verbose, before.log_format) == (after.verbose, after.log_format) \
        == (True, "json")
    assert (neither.verbose, neither.log_format) == (False, "text")
    w = worker_parser().parse_args(["capability", "--log-format", "json"])
    assert w.log_format == "json"


def test_every_subcommand_has_examples_and_exit_codes_in_its_help() -> None:
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, child in subs.choices.items():
        if name == "completion":
            assert "completion bash" in child.epilog
            continue
        assert ("reconciler", name) in EXAMPLES, name
        assert "examples:" in child.epilog and "exit codes:" in child.epilog, name
    wsubs = next(a for a in worker_parser()._actions
                 if isinstance(a, argparse._SubParsersAction))
    for name, child in wsubs.choices.items():
        assert child.epilog and "examples:" in child.epilog, name
    assert set(COMMANDS) >= {"workers", "health", "report", "completion"}


def test_version_needs_no_subcommand_module() -> None:
    code = ("import sys; from reconciler.cli.main import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit as e:\n    rc = e.code\n"
            "heavy = [m for m in ('pydantic', 'reconciler.git.ledger', 'reconciler.cli.status') "
            "if m in sys.modules]\nprint(rc, heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.splitlines()[-1] == "0 []", proc.stderr
    assert proc.stdout.startswith("reconciler (trainledger) ")


def test_json_log_lines_carry_the_key_values() -> None:
    record = logging.LogRecord("trainledger.worker", logging.INFO, __file__, 1,
                               "event=claim job=%s attempt=%s", ("job-1", 2), None)
    doc = json.loads(cliutil.JsonFormatter(stamp=True).format(record))
    assert doc["event"] == "claim" and doc["job"] == "job-1" and doc["attempt"] == "2"
    assert doc["level"] == "info" and doc["msg"].startswith("event=claim") and "ts" in doc
    assert "ts" not in json.loads(cliutil.JsonFormatter(stamp=False).format(record))


def test_journald_is_detected_only_on_its_own_stream(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert not cliutil.under_journald()
    st = os.fstat(sys.stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert cliutil.under_journald()
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
    assert not cliutil.under_journald()


def test_text_logs_drop_their_timestamp_under_journald(tmp_path) -> None:
    """One timestamp under journald: systemd passes the stream's dev:inode."""
    code = ("import os, sys, logging\n"
            "st = os.fstat(2); os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'\n"
            "from reconciler.cli.util import setup_logging\n"
            "setup_logging(False, sys.argv[1]); logging.getLogger('t').info('event=x a=1')\n"
            "del os.environ['JOURNAL_STREAM']\n"
            "setup_logging(False, sys.argv[1]); logging.getLogger('t').info('event=y a=2')\n")
    text = subprocess.run([sys.executable, "-c", code, "text"], capture_output=True,
                          text=True, timeout=60).stderr.splitlines()
    assert text[0] == "INFO event=x a=1"
    assert text[1].endswith("INFO event=y a=2") and text[1][:4].isdigit()
    js = subprocess.run([sys.executable, "-c", code, "json"], capture_output=True, text=True,
                        timeout=60).stderr.splitlines()
    first, second = json.loads(js[0]), json.loads(js[1])
    assert "ts" not in first and first["event"] == "x" and "ts" in second


def test_table_widths_follow_the_data() -> None:
    long = "transformer-d512-h8-l6-lr3e-4-seed1"
    lines = cliutil.table(["JOB", "ATT", "ERROR"], [[long, "1", "boom"], ["x", "12", ""]],
                          right={"ATT"})
    assert lines[1].startswith(long + "    1  boom")
    assert lines[2] == "x" + " " * (len(long) - 1) + "   12"
    assert lines[0].index("ATT") + 2 == lines[1].index(" 1 ") + 1


def test_error_line_prefers_the_trainers_last_line() -> None:
    err = "trainer exit 3; log tail:\nprogress: 0.5\nCUDA out of memory\n"
    assert cliutil.error_line(err) == "trainer exit 3: CUDA out of memory"
    assert cliutil.error_line("released: lease lost") == "released: lease lost"
    assert cliutil.error_line(None) == ""


def test_selectors() -> None:
    args = argparse.Namespace(status=[["failed", "cancelled"]], worker=["gpu*"],
                              model=None)
    row = {"job_id": "ab12", "name": "sweep-lr-1", "status": "failed", "holder": None,
           "last_host": "gpu2", "model": "xgb"}
    assert row_matches(row, args)
    assert row_matches(row, args, ["sweep-*"]) and row_matches(row, args, ["ab1"])
    assert not row_matches(row, args, ["other"])
    assert not row_matches({**row, "status": "pending"}, args)
    assert not row_matches({**row, "last_host": "cpu1"}, args)
    by_sweep = argparse.Namespace(status=None, worker=None, model=None, sweep=["sweep-*"])
    assert row_matches({**row, "sweep": "sweep-lr"}, by_sweep)
    assert not row_matches({**row, "sweep": "other"}, by_sweep)
    assert not row_matches({**row, "sweep": None}, by_sweep)
    assert status_list("failed,cancelled") == ["failed", "cancelled"]
    with pytest.raises(argparse.ArgumentTypeError, match="expected one or more of"):
        status_list("faild")


def _doc(**kw) -> dict:
    doc = {"revision": "r", "manifest_error": None, "counts": {}, "jobs": [],
           "state_errors": {}, "stale_after_s": 10.0,
           "workers": [{"name": "w1", "live": True, "last_seen_s": 1.0, "drain": None}],
           "reconciler": {"last_seen_s": 2.0, "report": {"manifest_error": None,
                                                         "last_error": None}}}
    doc.update(kw)
    return doc


def test_health_verdicts() -> None:
    assert judge(_doc())["exit"] == 0
    lost = judge(_doc(workers=[{"name": "w1", "live": False, "last_seen_s": 99.0,
                                "drain": None}]))
    assert lost["exit"] == 1 and "worker w1 lost" in lost["reasons"][0]
    drained = _doc(workers=[{"name": "w1", "live": False, "last_seen_s": 99.0,
                             "drain": "drained"}])
    assert judge(drained)["exit"] == 0
    bad = judge(_doc(manifest_error="manifest.toml: jobs[0]: boom"))
    assert bad["exit"] == 1 and "boom" in bad["reasons"][0]
    assert judge(_doc(state_errors={"state/ab/x.json": "not JSON"}))["exit"] == 1
    down = judge(_doc(reconciler={"last_seen_s": 10.0, "report": {}}))
    assert down["exit"] == 2 and "10s ago" in down["reasons"][0]
    assert judge(_doc(reconciler=None))["exit"] == 2


def _complete(script: str, prog: str, line: str) -> list[str]:
    """COMPREPLY of `script`'s function for the words of `line` (cursor at its end)."""
    words = line.split(" ")
    func = next(w for w in script.split() if w.endswith("_complete()")).removesuffix("()")
    code = (f"{script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)}); "
            f"COMP_CWORD={len(words) - 1}; {func}; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    proc = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_generated_from_the_parser() -> None:
    script = bash_script(build_parser())
    assert "complete -o default -F" in script
    assert {"status", "workers", "health"} <= set(_complete(script, "reconciler",
                                                            "reconciler "))
    assert set(_complete(script, "reconciler", "reconciler status --st")) == {"--status"}
    assert "failed" in _complete(script, "reconciler", "reconciler status --status ")
    assert _complete(script, "reconciler", "reconciler --log-format j") == ["json"]
    assert "--dry-run" in _complete(script, "reconciler", "reconciler cancel --d")
    wscript = bash_script(worker_parser())
    assert "--exit-when-idle" in _complete(wscript, "worker", "worker run --exit")
    zsh = zsh_script(build_parser())
    assert zsh.startswith("#compdef reconciler") and "bashcompinit" in zsh
    proc = subprocess.run(["bash", "-n"], input=zsh.split("\n", 3)[3], text=True,
                          capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("module", ["reconciler.cli", "worker.cli"])
def test_the_completion_subcommand_prints_a_script_bash_accepts(module: str) -> None:
    for shell in ("bash", "zsh"):
        proc = subprocess.run([sys.executable, "-m", module, "completion", shell],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "complete -o default -F" in proc.stdout
    checked = subprocess.run(["bash", "-c", f"{proc.stdout.split(chr(10), 3)[3]}\ncomplete -p"],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0 and module.split(".")[0] in checked.stdout
