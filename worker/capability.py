"""What this host can run: detected, or read from `--capability FILE`.

torch is imported only when it is installed (to ask CUDA); without it,
`nvidia-smi` is asked; without either, the host has no CUDA device, which is
not an error.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path

import psutil
from pydantic import ValidationError

from reconciler.errors import LedgerError
from reconciler.schema import Capability, CudaDevice

GIB = 1024**3


class CapabilityError(LedgerError):
    """The capability file is not valid."""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_devices() -> list[CudaDevice] | None:
    """None when torch is not installed; [] when it sees no CUDA device."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return []
    devices = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        devices.append(CudaDevice(index=i, name=torch.cuda.get_device_name(i),
                                  vram_total_gib=round(total / GIB, 2),
                                  vram_free_gib=round(free / GIB, 2)))
    return devices


def parse_nvidia_smi(text: str) -> list[CudaDevice]:
    """`--query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits`
    (MiB); malformed lines are skipped."""
    devices = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            index, total, free = int(parts[0]), float(parts[2]), float(parts[3])
        except ValueError:
            continue
        devices.append(CudaDevice(index=index, name=parts[1][:256],
                                  vram_total_gib=round(total / 1024, 2),
                                  vram_free_gib=round(free / 1024, 2)))
    return devices


def nvidia_smi_devices() -> list[CudaDevice]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total,memory.free",
             "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(proc.stdout) if proc.returncode == 0 else []


def detect_capability() -> Capability:
    mem = psutil.virtual_memory()
    devices = torch_devices()
    if devices is None:
        devices = nvidia_smi_devices()
    return Capability(
        hostname=socket.gethostname(),
        cpu_cores=os.cpu_count() or 1,
        cpu_physical_cores=psutil.cpu_count(logical=False) or None,
        ram_total_gib=round(mem.total / GIB, 2),
        ram_available_gib=round(mem.available / GIB, 2),
        cuda_available=bool(devices),
        cuda_devices=devices,
        torch_version=_version("torch"),
        xgboost_version=_version("xgboost") or _version("xgboost-cpu"),
        os=platform.system(),
        arch=platform.machine(),
        trainledger_version=_version("trainledger") or "",
    )


def load_capability(path: Path) -> Capability:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CapabilityError(f"{path}: {exc.strerror}", path=path) from None
    try:
        return Capability.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(file)"
        raise CapabilityError(f"{path}: field {where!r}: {first['msg']}", path=path) from None


def self_test(cap: Capability) -> list[str]:
    """Problems that must stop a worker from starting."""
    problems = []
    if cap.ram_total_gib <= 0:
        problems.append("no RAM reported")
    if cap.cuda_available and not cap.cuda_devices:
        problems.append("cuda_available is true but no CUDA device is listed")
    if not cap.cuda_available and cap.cuda_devices:
        problems.append("CUDA devices are listed but cuda_available is false")
    if cap.ram_available_gib > cap.ram_total_gib:
        problems.append("more RAM available than installed")
    return problems


def capability_json(cap: Capability) -> str:
    return json.dumps(cap.model_dump(mode="json"), sort_keys=True, indent=2) + "\n"
