"""Pure parts of the runtime: metrics files, log capping, progress bars, the
error's real line, the trainer's environment, VRAM/RAM accounting, the state's
new fields and who may write them, the leaderboard's order."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from ledgerkit import manifest_text
from reconciler.cli.logs import new_lines
from reconciler.cli.results import sort_rows
from reconciler.protocol.errors import IllegalTransition, ManifestError, StateError
from reconciler.protocol.manifest import load_manifest
from reconciler.protocol.schema import Capability
from reconciler.protocol.state import JobState, Status
from reconciler.protocol.transitions import Actor, Role, check_transition
from worker.metrics import capped_log, read_metrics
from worker.resources import Reservation, Resources, judged, place
from worker.runner import meaningful_line, parse_progress, passed_env, trainer_env


def spec(**job):
    text = manifest_text([{"name": "j", "seed": 1, **job}])
    return next(iter(load_manifest(text.encode()).specs.values()))


# ------------------------------------------------------------------ metrics


@pytest.mark.parametrize(("text", "why"), [
    ("{loss: 1}", "not JSON"),
    ("[1, 2]", "expected a flat object"),
    ('{"loss": NaN}', "not JSON"),
    ('{"pad": "' + "x" * 5000 + '"}', "over the 4096-byte cap"),
])
def test_a_malformed_metrics_file_is_ignored_with_the_reason(tmp_path: Path, text: str,
                                                             why: str) -> None:
    (tmp_path / "metrics.json").write_text(text)
    metrics, error = read_metrics(tmp_path)
    assert metrics is None and error.startswith("metrics.json ignored:") and why in error


@pytest.mark.parametrize(("text", "kept", "why"), [
    ('{"loss": 1, "boot": {"p05": 0.1, "p95": 0.9}}',
     {"loss": 1, "boot.p05": 0.1, "boot.p95": 0.9}, None),
    ('{"loss": 1, "deep": {"a": {"b": 1}}}', {"loss": 1}, "'deep.a' (nested more than one"),
    ('{"flag": true}', None, "'flag' (a boolean)"),
    ('{"shape": [3, 4], "acc": 0.5}', {"acc": 0.5}, "'shape' (a list)"),
    ('{"bad key": 1}', None, "key does not match"),
    ('{"s": "' + "x" * 300 + '"}', None, "'s' (a string over 256 characters)"),
    ("{" + ", ".join(f'"k{i}": {i}' for i in range(70)) + "}",
     {f"k{i}": i for i in range(64)}, "'k64' (over 64 keys)"),
])
def test_what_does_not_fit_is_left_out_and_named(tmp_path: Path, text: str, kept, why) -> None:
    (tmp_path / "metrics.json").write_text(text)
    metrics, note = read_metrics(tmp_path)
    assert metrics == kept
    assert (note is None) if why is None else (why in note and note.startswith("metrics.json"))
    if metrics:  # whatever is kept fits the state
        JobState(job_id="0" * 16, name="j", status=Status.PENDING, metrics=metrics)


def test_metrics_are_read_and_fit_the_state(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps({"loss": 0.25, "epochs": 3, "opt": "adam"}))
    metrics, error = read_metrics(tmp_path)
    assert error is None and metrics == {"loss": 0.25, "epochs": 3, "opt": "adam"}
    state = JobState(job_id="0" * 16, name="j", status=Status.COMPLETED,
                     artifact={"sha256": "a" * 64, "size": 1}, attempt=1, metrics=metrics)
    assert JobState.model_validate_json(state.to_json()) == state
    assert read_metrics(tmp_path / "nowhere") == (None, None)


def test_unset_result_fields_leave_a_state_file_as_it_was() -> None:
    state = JobState(job_id="0" * 16, name="j", status=Status.PENDING)
    assert set(json.loads(state.to_json())) == {
        "job_id", "name", "status", "attempt", "holder", "lost", "cpu_ok", "artifact",
        "last_error"}


def test_a_state_with_a_non_finite_metric_is_refused() -> None:
    with pytest.raises(StateError, match=r"metrics\.loss"):
        JobState(job_id="0" * 16, name="j", status=Status.PENDING, metrics={"loss": float("inf")})


W1 = Actor("w1", Role.WORKER)
RUNNING = JobState(job_id="0" * 16, name="j", status=Status.RUNNING, attempt=1, holder="w1")
LOG = {"sha256": "b" * 64, "size": 9, "attempt": 1}


def test_a_worker_writes_results_when_it_completes_or_fails() -> None:
    done = replace(RUNNING, status=Status.COMPLETED, holder=None,
                   artifact={"sha256": "a" * 64, "size": 1}, metrics={"loss": 1.0}, log=LOG)
    assert check_transition(RUNNING, done, W1, max_attempts=3).meaning == "complete"
    failed = replace(RUNNING, status=Status.FAILED, holder=None, log=LOG, last_error="x")
    assert check_transition(RUNNING, failed, W1, max_attempts=3).meaning == "fail"


def test_a_claim_may_not_rewrite_the_last_result() -> None:
    old = JobState(job_id="0" * 16, name="j", status=Status.PENDING, attempt=1, log=LOG)
    new = replace(old, status=Status.CLAIMED, attempt=2, holder="w1", log=None)
    with pytest.raises(IllegalTransition, match="log may not change"):
        check_transition(old, new, W1, max_attempts=3)


# --------------------------------------------------------------------- logs


def test_a_long_log_keeps_its_tail_and_says_so(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"".join(f"line {i}\n".encode() for i in range(1000)))
    out = capped_log(log, tmp_path / "b", cap=100).read_bytes()
    first, rest = out.split(b"\n", 1)
    assert b"first 8790 were dropped" in first and len(rest) == 100
    assert out.endswith(b"line 999\n")
    small = capped_log(log, tmp_path / "c", cap=1 << 20).read_bytes()
    assert small == log.read_bytes()


@pytest.mark.parametrize(("line", "value"), [
    (" 45%|####      | 45/100 [00:01<00:02]", 0.45),
    ("Epoch 3: 100%|██████████| 50/50 [00:02<00:00, 20.1it/s, loss=0.1]", 1.0),
    ("train  7%|7  | 7/100 val 90%|", 0.9),  # the last bar on the line
    ("progress: 0.5", 0.5),
    ("accuracy 45% on val", None),
])
def test_progress_bars_count_as_progress(line: str, value: float | None) -> None:
    assert parse_progress(line) == value


@pytest.mark.parametrize(("lines", "expected"), [
    (["Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: bad lr"],
     "ValueError: bad lr"),
    (["real error", "", " 99%|#########| 99/100", "-----"], "real error"),
    (["", "  "], None),
])
def test_the_error_line_is_the_last_meaningful_one(lines: list[str], expected) -> None:
    assert meaningful_line(lines) == expected


def test_follow_prints_only_what_is_new() -> None:
    assert new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]
    assert new_lines([], ["a"]) == ["a"]
    assert new_lines(["x"], ["a", "b"]) == ["a", "b"]


# ---------------------------------------------------------------------- env


def test_env_layers_manifest_then_pass_env_and_the_worker_has_the_last_word(
        tmp_path: Path) -> None:
    s = replace(spec(), env={"OMP_NUM_THREADS": "4", "HF_HOME": "/shared/hf"})
    base = {"PATH": "/bin", "HF_HOME": "/local/hf", "HF_TOKEN": "t", "WANDB_API_KEY": "w",
            "SECRET": "no", "TRAINLEDGER_JOB_ID": "forged"}
    env = trainer_env(s, 1, tmp_path, tmp_path / "spec.json", None, base=base,
                      pass_env=["HF_*", "WANDB_API_KEY", "TRAINLEDGER_*"], fence="f:1")
    assert env["OMP_NUM_THREADS"] == "4" and env["HF_HOME"] == "/local/hf"
    assert env["HF_TOKEN"] == "t" and env["WANDB_API_KEY"] == "w" and "SECRET" not in env
    assert env["TRAINLEDGER_JOB_ID"] == s.job_id and env["TRAINLEDGER_FENCE"] == "f:1"
    assert passed_env({"a": "1", "A": "2"}, ["a"]) == {"a": "1"}  # case-sensitive globs


@pytest.mark.parametrize("key", ["TRAINLEDGER_JOB_ID", "CUDA_VISIBLE_DEVICES", "1BAD", "A-B"])
def test_the_manifest_may_not_set_the_workers_variables(key: str) -> None:
    text = manifest_text(1).replace("[trainers.quick]\n",
                                    '[trainers.quick]\nenv = { "' + key + '" = "x" }\n')
    with pytest.raises(ManifestError, match="env"):
        load_manifest(text.encode())


# ---------------------------------------------------------------- resources


def cap(free: float = 24.0, total: float = 24.0, ram: float = 32.0) -> Capability:
    return Capability(hostname="h", cpu_cores=8, ram_total_gib=64.0, ram_available_gib=ram,
                      cuda_available=True, cuda_devices=[
                          {"index": 0, "name": "g", "vram_total_gib": total,
                           "vram_free_gib": free}])


def test_a_running_job_reserves_its_vram_until_it_uses_more() -> None:
    assert judged(cap(), [Reservation(0, 16.0, 0.0)]).cuda_devices[0].vram_free_gib == 8.0
    # it already uses 20 GiB of its device: the measured figure is lower, and wins
    assert judged(cap(free=4.0), [Reservation(0, 16.0, 0.0)]).cuda_devices[0].vram_free_gib \
        == 4.0
    assert judged(cap(), [Reservation(None, 0.0, 30.0)]).ram_available_gib == 32.0
    assert judged(cap(ram=60.0), [Reservation(None, 0.0, 30.0)]).ram_available_gib == 34.0


def test_two_16_gib_jobs_do_not_both_fit_one_24_gib_device() -> None:
    big = spec(min_vram_gib=16.0)
    device, after = place(big, cap())
    assert device == 0 and after.cuda_devices[0].vram_free_gib == 8.0
    second, _ = place(big, after)
    assert second is None  # no device fits: eligibility says why
    from reconciler.protocol.eligibility import capability_reasons
    assert capability_reasons(big, after, cpu_ok=False) == [
        "needs 16.0 GiB free VRAM, best device has 8.0"]


def test_fresh_figures_are_read_at_most_every_interval() -> None:
    readings = iter([10.0, 6.0])
    now = [0.0]
    res = Resources(cap(), lambda old: cap(free=next(readings)), min_interval_s=1.0,
                    clock=lambda: now[0])
    assert res.measured().cuda_devices[0].vram_free_gib == 10.0
    now[0] = 0.5
    assert res.measured().cuda_devices[0].vram_free_gib == 10.0
    now[0] = 1.5
    assert res.now([Reservation(0, 1.0, 0.0)]).cuda_devices[0].vram_free_gib == 6.0


def test_a_failed_reading_keeps_the_last_figures() -> None:
    def broken(_old: Capability) -> Capability:
        raise OSError("nvidia-smi hung")
    assert Resources(cap(free=5.0), broken, min_interval_s=0).measured() == cap(free=5.0)


# ------------------------------------------------------------------ results


def row(name: str, metrics: dict, hyper: dict | None = None) -> dict:
    return {"name": name, "metrics": metrics, "hyper": hyper or {}}


def test_results_sort_by_metric_then_hyper_missing_last() -> None:
    rows = [row("a", {"loss": 0.3}), row("b", {}), row("c", {"loss": 0.1}),
            row("d", {"loss": "n/a"})]
    assert [r["name"] for r in sort_rows(rows, "loss")] == ["c", "a", "d", "b"]
    assert [r["name"] for r in sort_rows(rows, "loss", desc=True)] == ["d", "a", "c", "b"]
    by_hyper = [row("x", {}, {"lr": 0.2}), row("y", {}, {"lr": 0.1})]
    assert [r["name"] for r in sort_rows(by_hyper, "lr")] == ["y", "x"]


def test_a_fresh_vram_figure_is_matched_to_its_device() -> None:
    from reconciler.protocol.schema import CudaDevice
    from worker.capability import _fresh_figure

    a = CudaDevice(index=0, name="A100", vram_total_gib=80.0, vram_free_gib=80.0)
    b = CudaDevice(index=1, name="T4", vram_total_gib=16.0, vram_free_gib=16.0)
    # nvidia-smi lists them the other way round (PCI order)
    smi = [b.model_copy(update={"index": 0, "vram_free_gib": 3.0}),
           a.model_copy(update={"index": 1, "vram_free_gib": 50.0})]
    assert _fresh_figure(a, smi).vram_free_gib == 50.0
    assert _fresh_figure(b, smi).vram_free_gib == 3.0
    assert _fresh_figure(a, []).vram_free_gib == 80.0  # nothing read: keep the last figure


def test_the_reader_splits_at_cr_and_a_redraw_replaces_the_line_before(tmp_path: Path) -> None:
    import subprocess
    import sys

    from worker.runner import TrainerRun

    # a real pipe, written in pieces: a \r\n split across writes, tqdm redraws, and a
    # bar left undrawn-over at the end
    script = ("import sys, time\nw = sys.stdout.buffer\n"
              "for part in [b'loading\\r', b'\\nepoch 1\\n', b'\\r 10%|#  |', b'\\r 45%|####|',"
              " b'\\rdone\\n', b'\\r 99%|#########|']:\n"
              "    w.write(part); w.flush(); time.sleep(0.02)\n")
    run = TrainerRun(spec(), 1, tmp_path / "a", tmp_path / "a.log")
    run._proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    run._read()
    assert run._proc.wait(timeout=30) == 0
    assert run._lines() == ["loading", "epoch 1", "done", " 99%|#########|"]
    assert run.progress == 0.99 and run.last_line == " 99%|#########|"
    assert (tmp_path / "a.log").read_bytes().count(b"\r") == 5  # the log keeps the bytes
