"""Capability: parsers fed text, detection with its sources faked, this host's
real detection, and the file `--capability` reads (errors name file and field)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler.protocol.errors import LedgerError
from reconciler.protocol.schema import Capability, CudaDevice
from worker import capability as capmod
from worker import cuda as cudamod
from worker.capability import (
    CapabilityError,
    capability_json,
    detect_capability,
    load_capability,
    self_test,
)
from worker.cgroup import CgroupLimits, cgroup_limits, parse_proc_cgroup, usable_cores
from worker.cuda import (
    nvidia_smi_devices,
    parse_nvidia_smi,
    parse_torch_probe,
    torch_devices,
    torch_may_see_cuda,
    visible_devices,
)

GIB = 1024**3


def dev(index: int, name: str = "RTX", total: float = 24.0, free: float = 20.0) -> CudaDevice:
    return CudaDevice(index=index, name=name, vram_total_gib=total, vram_free_gib=free)


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


# ------------------------------------------------------------------ nvidia-smi

SMI = """\
0, NVIDIA GeForce RTX 4090, 24564, 23012
1, Tesla T4, 15360, 1536
"""


def test_parse_nvidia_smi() -> None:
    assert parse_nvidia_smi(SMI) == [
        dev(0, "NVIDIA GeForce RTX 4090", 23.99, 22.47), dev(1, "Tesla T4", 15.0, 1.5)]


@pytest.mark.parametrize(("text", "expected"), [
    ("", []),
    ("2, Odd, Name, With Commas, 1024, 512", [dev(2, "Odd, Name, With Commas", 1.0, 0.5)]),
    ("0, MIG GPU, [N/A], [N/A]", [dev(0, "MIG GPU", 0.0, 0.0)]),
    ("NVIDIA-SMI has failed because it couldn't communicate with the driver.", []),
    ("0, A, 1024", []),                      # too few fields
    ("x, A, 1024, 512", []),                 # index not a number
    ("-1, A, 1024, 512", []),                # invalid for the model: skipped, not raised
    ("0, A, nan, 512", []),
    ("0, A, 1024, -5", []),
    ("0, A, 1024, 512\r\n\n1, B, 2048, 2048\n", [dev(0, "A", 1.0, 0.5), dev(1, "B", 2.0, 2.0)]),
])
def test_parse_nvidia_smi_edge_cases(text: str, expected: list[CudaDevice]) -> None:
    assert parse_nvidia_smi(text) == expected


THREE = [dev(0, "A"), dev(1, "B"), dev(2, "C")]


@pytest.mark.parametrize(("value", "names"), [
    (None, ["A", "B", "C"]),
    ("", []),
    ("-1", []),
    ("1", ["B"]),
    ("2,0", ["C", "A"]),
    (" 1 , 2 ", ["B", "C"]),
    ("0,7,1", ["A"]),                  # CUDA stops at the first invalid entry
    ("1,1", ["B"]),
    ("GPU-8d3a1c2e-aaaa", ["A", "B", "C"]),  # UUIDs cannot be mapped from this query
])
def test_visible_devices(value: str | None, names: list[str]) -> None:
    got = visible_devices(THREE, value)
    assert [d.name for d in got] == names
    renumbered = value is not None and not value.startswith("GPU-")
    assert [d.index for d in got] == (list(range(len(names))) if renumbered else [0, 1, 2])


def test_nvidia_smi_devices_runs_the_query(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = tmp_path / "args"
    exe = script(tmp_path, "nvidia-smi", f'echo "$@" > {args}\ncat <<EOF\n{SMI}EOF')
    assert [d.name for d in nvidia_smi_devices(exe)] == ["NVIDIA GeForce RTX 4090", "Tesla T4"]
    assert args.read_text().split() == list(cudamod.NVIDIA_SMI_ARGS)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert nvidia_smi_devices(exe) == [dev(0, "Tesla T4", 15.0, 1.5)]


def test_nvidia_smi_failures_mean_no_devices(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert nvidia_smi_devices(script(tmp_path, "fails", f"cat <<EOF\n{SMI}EOF\nexit 9")) == []
    assert nvidia_smi_devices(script(tmp_path, "hangs", "exec sleep 30"), timeout_s=0.3) == []
    assert nvidia_smi_devices(str(tmp_path / "missing")) == []
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert nvidia_smi_devices() == []


# ----------------------------------------------------------------------- torch


def test_parse_torch_probe() -> None:
    out = json.dumps([{"index": 0, "name": "A100", "total": 80 * GIB, "free": 79.5 * GIB}])
    assert parse_torch_probe("some warning\n" + out + "\n") == [dev(0, "A100", 80.0, 79.5)]
    assert parse_torch_probe("[]") == []


@pytest.mark.parametrize("text", [
    "", "not json", "{}", '[{"index": 0}]', '[{"index": -1, "name": "x", "total": 1, "free": 1}]',
    '[{"index": 0, "name": "x", "total": "many", "free": 1}]'])
def test_parse_torch_probe_rejects(text: str) -> None:
    assert parse_torch_probe(text) is None


@pytest.mark.parametrize(("version", "system", "may"), [
    ("2.3.0+cpu", "Linux", False), ("2.3.0", "Darwin", False), ("2.3.0", "Linux", True),
    ("2.3.0+cu121", "Linux", True), ("2.3.0+rocm6.0", "Linux", True),
    ("2.3.0", "Windows", True)])
def test_torch_may_see_cuda(version: str, system: str, may: bool) -> None:
    assert torch_may_see_cuda(version, system) is may


def test_torch_devices_asks_a_child_process(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cudamod, "installed_version", lambda dist: "2.3.0+cu121")
    out = json.dumps([{"index": 0, "name": "L4", "total": 24 * GIB, "free": 12 * GIB}])
    fake = script(tmp_path, "python", f"echo '{out}'")
    assert torch_devices(fake) == [dev(0, "L4", 24.0, 12.0)]
    assert torch_devices(script(tmp_path, "crash", "exit 1")) is None
    assert torch_devices(script(tmp_path, "slow", "exec sleep 30"), timeout_s=0.3) is None
    assert torch_devices(str(tmp_path / "missing")) is None


def test_torch_devices_without_torch_or_with_a_cpu_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    never = script(tmp_path, "python", "echo probe-ran >&2; exit 3")
    monkeypatch.setattr(cudamod, "installed_version", lambda dist: None)
    assert torch_devices(never) is None
    monkeypatch.setattr(cudamod, "installed_version", lambda dist: "2.3.0+cpu")
    assert torch_devices(never) == []


FAKE_TORCH = """
class cuda:
    is_available = staticmethod(lambda: True)
    device_count = staticmethod(lambda: 2)
    mem_get_info = staticmethod(lambda i: ((i + 1) * 2**30, 8 * 2**30))
    get_device_name = staticmethod(lambda i: f"Fake {i}")
"""


def test_the_probe_script_against_a_fake_torch(tmp_path: Path) -> None:
    """The real probe script runs (torch's API faked, so no seconds-long import)."""
    (tmp_path / "torch.py").write_text(FAKE_TORCH)
    proc = subprocess.run([sys.executable, "-P", "-c", cudamod.TORCH_PROBE],
                          capture_output=True, text=True, timeout=60, check=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert parse_torch_probe(proc.stdout) == [dev(0, "Fake 0", 8.0, 1.0),
                                              dev(1, "Fake 1", 8.0, 2.0)]


def test_cuda_devices_falls_back_to_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    smi = [dev(0, "from-smi")]
    monkeypatch.setattr(cudamod, "nvidia_smi_devices", lambda: smi)
    for torch_says in (None, []):
        monkeypatch.setattr(cudamod, "torch_devices", lambda said=torch_says: said)
        assert cudamod.cuda_devices() == smi
    monkeypatch.setattr(cudamod, "torch_devices", lambda: [dev(0, "from-torch")])
    assert [d.name for d in cudamod.cuda_devices()] == ["from-torch"]


# --------------------------------------------------------------------- cgroups


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_parse_proc_cgroup() -> None:
    text = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/user.slice/x\n"
    assert parse_proc_cgroup(text) == {"memory": "/docker/abc", "cpu": "/docker/abc",
                                       "cpuacct": "/docker/abc", "": "/user.slice/x"}


def test_cgroup_v2_tightest_limit_along_the_path(tmp_path: Path) -> None:
    root = tree(tmp_path / "cg", {
        "cgroup.controllers": "cpu memory",
        "cpu.max": "max 100000",
        "a/cpu.max": "150000 100000",
        "a/memory.max": str(8 * GIB),
        "a/b/cpu.max": "400000 100000",
        "a/b/memory.max": "max",
        "a/b/memory.current": str(3 * GIB),
        "a/b/memory.stat": f"anon 123\ninactive_file {GIB}\nactive_file 5\n",
    })
    proc = tree(tmp_path, {"self-cgroup": "0::/a/b\n"}) / "self-cgroup"
    assert cgroup_limits(root, proc) == CgroupLimits(1.5, 8 * GIB, 2 * GIB)


def test_cgroup_v2_namespaced_path_reads_the_mount_root(tmp_path: Path) -> None:
    root = tree(tmp_path / "cg", {"cgroup.controllers": "", "memory.max": str(GIB),
                                  "memory.current": "100", "cpu.max": "max 100000"})
    proc = tree(tmp_path, {"self-cgroup": "0::/kubepods/pod1/c1\n"}) / "self-cgroup"
    assert cgroup_limits(root, proc) == CgroupLimits(None, GIB, 100)


def test_cgroup_v1(tmp_path: Path) -> None:
    root = tree(tmp_path / "cg", {
        "memory/memory.limit_in_bytes": "9223372036854771712",
        "memory/docker/abc/memory.limit_in_bytes": str(4 * GIB),
        "memory/docker/abc/memory.usage_in_bytes": str(GIB),
        "memory/docker/abc/memory.stat": "cache 1\ntotal_inactive_file 1000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
    })
    proc = tree(tmp_path, {"self-cgroup": "5:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n"
                                          "0::/\n"}) / "self-cgroup"
    assert cgroup_limits(root, proc) == CgroupLimits(2.0, 4 * GIB, GIB - 1000)


def test_cgroup_unlimited_or_missing(tmp_path: Path) -> None:
    root = tree(tmp_path / "cg", {"cpu/cpu.cfs_quota_us": "-1",
                                  "cpu/cpu.cfs_period_us": "100000",
                                  "memory/memory.limit_in_bytes": "9223372036854771712"})
    proc = tree(tmp_path, {"self-cgroup": "4:memory:/\n2:cpu:/\n"}) / "self-cgroup"
    assert cgroup_limits(root, proc) == CgroupLimits(None, None, None)
    assert cgroup_limits(tmp_path / "nothing", tmp_path / "none") == CgroupLimits()


def test_usable_cores_honours_a_quota() -> None:
    free = usable_cores(CgroupLimits())
    assert free >= 1
    assert usable_cores(CgroupLimits(cpus=0.5)) == 1
    assert usable_cores(CgroupLimits(cpus=1.5)) == min(free, 2)
    assert usable_cores(CgroupLimits(cpus=10_000.0)) == free


# ------------------------------------------------------------------- detection


def test_detect_with_a_gpu_and_a_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capmod, "cuda_devices", lambda: [dev(0, "L4", 24.0, 12.0)])
    monkeypatch.setattr(capmod, "cgroup_limits",
                        lambda: CgroupLimits(cpus=1.0, memory_bytes=2 * GIB,
                                             memory_used_bytes=GIB // 2))
    cap = detect_capability()
    assert cap.cuda_available and cap.cuda_devices == [dev(0, "L4", 24.0, 12.0)]
    assert cap.cpu_cores == 1
    assert cap.ram_total_gib <= 2.0 and cap.ram_available_gib <= 1.5
    assert self_test(cap) == []


def test_detect_on_this_host_is_a_valid_capability() -> None:
    cap = detect_capability()
    assert Capability.model_validate_json(capability_json(cap)) == cap
    assert self_test(cap) == []
    assert cap.cpu_cores >= 1 and 0 < cap.ram_available_gib <= cap.ram_total_gib
    assert cap.cuda_available == bool(cap.cuda_devices)
    assert cap.trainledger_version and cap.os and cap.arch and cap.hostname
    if shutil.which("nvidia-smi") is None and not _torch_sees_cuda():
        assert cap.cuda_available is False


def _torch_sees_cuda() -> bool:
    version = cudamod.installed_version("torch")
    return bool(version) and torch_may_see_cuda(version, cudamod.platform.system()) and bool(
        torch_devices())


def test_detection_does_not_import_torch_into_the_worker() -> None:
    code = ("import sys, worker.capability as c; c.detect_capability(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "False"


# ------------------------------------------------------------------ the file

GOOD: dict[str, Any] = {
    "hostname": "desktop", "cpu_cores": 16, "ram_total_gib": 62.7, "ram_available_gib": 51.3,
    "cuda_available": True,
    "cuda_devices": [{"index": 0, "name": "RTX", "vram_total_gib": 24.0, "vram_free_gib": 22.5}],
    "torch_version": "2.3.0", "xgboost_version": "2.0.3", "os": "Linux", "arch": "x86_64",
    "trainledger_version": "0.1.0"}


def test_load_the_designs_example_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cap.json"
    path.write_text(json.dumps(GOOD))
    cap = load_capability(path)
    assert cap.best_free_vram_gib == 22.5 and self_test(cap) == []
    text = capability_json(cap)
    assert text.endswith("}\n") and '\n  "arch": "x86_64",' in text
    assert list(json.loads(text)) == sorted(json.loads(text))
    path.write_text(text)
    assert load_capability(path) == cap


def with_(**kw: Any) -> dict[str, Any]:
    return {**GOOD, **kw}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


BAD_DEVICE = [{**GOOD["cuda_devices"][0], "vram_free_gib": -1}]


@pytest.mark.parametrize(("content", "field", "words"), [
    (with_(cpu_cores=0), "cpu_cores", "greater than or equal to 1"),
    (with_(cpu_cores="many"), "cpu_cores", "got 'many'"),
    (without("ram_total_gib"), "ram_total_gib", "required key is missing"),
    (with_(gpus=[]), "gpus", "unknown key"),
    (with_(cuda_devices=BAD_DEVICE), "cuda_devices[0].vram_free_gib", "greater than or equal"),
    (with_(cuda_devices=[{"index": 0}]), "cuda_devices[0].name", "required key is missing"),
    (with_(ram_total_gib=float("inf")), "ram_total_gib", "finite"),
])
def test_invalid_fields_are_named(tmp_path: Path, content: dict, field: str,
                                  words: str) -> None:
    path = tmp_path / "cap.json"
    path.write_text(json.dumps(content))
    with pytest.raises(CapabilityError) as info:
        load_capability(path)
    err = info.value
    assert isinstance(err, LedgerError)
    assert str(err).startswith(f"{path}: field {field!r}: ") and words in str(err)
    assert err.path == path and err.field == field


def test_every_invalid_field_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "cap.json"
    path.write_text(json.dumps(with_(cpu_cores=0, os=7, extra=1)))
    with pytest.raises(CapabilityError) as info:
        load_capability(path)
    lines = str(info.value).splitlines()
    assert sorted(info.value.fields) == ["cpu_cores", "extra", "os"]
    assert len(lines) == 3 and all(line.startswith(f"{path}: field '") for line in lines)


@pytest.mark.parametrize(("data", "field", "words"), [
    (b"{", None, "not JSON: Expecting property name enclosed in double quotes at line 1"),
    (b"", None, "not JSON"),
    (b"[1, 2]", None, "expected a JSON object, got list"),
    (b"\xff\xfe{}", None, "not UTF-8"),
    (b'{"cpu_cores": 2, "cpu_cores": 3}', "cpu_cores", "duplicate key"),
    (b"[" * 100_000, None, "not JSON"),
    (b" " * (capmod.MAX_CAPABILITY_BYTES + 1), None, "over the"),
])
def test_unreadable_files_are_named(tmp_path: Path, data: bytes, field: str | None,
                                    words: str) -> None:
    path = tmp_path / "cap.json"
    path.write_bytes(data)
    with pytest.raises(CapabilityError) as info:
        load_capability(path)
    assert str(info.value).startswith(f"{path}: ") and words in str(info.value)
    assert info.value.field == field
    if field:
        assert f"field {field!r}" in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(CapabilityError, match=r"nope\.json: cannot read \(No such file"):
        load_capability(path)
    with pytest.raises(CapabilityError, match="cannot read"):
        load_capability(tmp_path)


# ------------------------------------------------------------------ self-test


@pytest.mark.parametrize(("changes", "problem"), [
    ({"ram_total_gib": 0, "ram_available_gib": 0}, "ram_total_gib is 0"),
    ({"ram_available_gib": 70.0}, "ram_available_gib (70.0) is more than ram_total_gib"),
    ({"cuda_devices": []}, "cuda_available is true but no CUDA device is listed"),
    ({"cuda_available": False}, "CUDA devices are listed but cuda_available is false"),
    ({"cuda_devices": [GOOD["cuda_devices"][0]] * 2}, "CUDA device indices repeat: [0, 0]"),
    ({"cuda_devices": [{**GOOD["cuda_devices"][0], "vram_free_gib": 30.0}]},
     "cuda:0 has more free VRAM (30.0) than total (24.0)"),
])
def test_self_test_problems(changes: dict, problem: str) -> None:
    cap = Capability.model_validate(with_(**changes))
    assert problem in "\n".join(self_test(cap))


def test_self_test_passes_a_cpu_host() -> None:
    cap = Capability.model_validate(with_(cuda_available=False, cuda_devices=[]))
    assert self_test(cap) == []
