"""What this host can run: detected, or read from `--capability FILE`.

Detection never fails for want of a GPU, torch or a cgroup: the devices come
from worker/cuda.py, the cores and RAM this process may use from
worker/cgroup.py. A capability file is checked field by field, and every
error names the file and the field.
"""

from __future__ import annotations

import json
import platform
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil
from pydantic import ValidationError

from reconciler.protocol.errors import LedgerError
from reconciler.protocol.schema import Capability, CudaDevice
from worker.cgroup import cgroup_limits, usable_cores, usable_memory
from worker.cuda import cuda_devices, gib, installed_version, nvidia_smi_devices

MAX_CAPABILITY_BYTES = 1 << 20


class CapabilityError(LedgerError):
    """The capability file is not valid."""


# ------------------------------------------------------------------ detection


def refresh_capability(cap: Capability) -> Capability:
    """`cap` with available RAM and each device's free VRAM read again: cheap
    (/proc, cgroup files, one nvidia-smi call; never torch), so a worker asks
    before each claim decision and each heartbeat. A device nvidia-smi does not
    report keeps its last figure."""
    total, available = usable_memory(cgroup_limits())
    update: dict[str, Any] = {"ram_total_gib": gib(total), "ram_available_gib": gib(available)}
    if cap.cuda_devices:
        fresh = nvidia_smi_devices()
        update["cuda_devices"] = [_fresh_figure(d, fresh) for d in cap.cuda_devices]
    return cap.model_copy(update=update)


def _fresh_figure(device: CudaDevice, fresh: list[CudaDevice]) -> CudaDevice:
    """nvidia-smi numbers devices by PCI bus, torch (which detected them) may
    number them fastest first: match on the same index and name, else on a name
    and size only one device has; no match keeps the last figure."""
    same = [f for f in fresh if f.name == device.name
            and abs(f.vram_total_gib - device.vram_total_gib) < 0.5]
    match = next((f for f in same if f.index == device.index), None)
    if match is None and len(same) == 1:
        match = same[0]
    if match is None:
        return device
    return device.model_copy(update={"vram_free_gib": min(match.vram_free_gib,
                                                          device.vram_total_gib)})


def detect_capability() -> Capability:
    """This host as it is now. Never raises for a missing GPU, torch or cgroup."""
    limits = cgroup_limits()
    total, available = usable_memory(limits)
    devices = cuda_devices()
    physical = psutil.cpu_count(logical=False)
    return Capability(
        hostname=socket.gethostname()[:256],
        cpu_cores=usable_cores(limits),
        cpu_physical_cores=min(physical, 65_536) if physical else None,
        ram_total_gib=gib(total),
        ram_available_gib=gib(available),
        cuda_available=bool(devices),
        cuda_devices=devices,
        torch_version=installed_version("torch"),
        xgboost_version=installed_version("xgboost") or installed_version("xgboost-cpu"),
        os=platform.system()[:64],
        arch=platform.machine()[:64],
        trainledger_version=installed_version("trainledger") or "",
    )


# ---------------------------------------------------------------- file, JSON


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of two equal keys; a hand-edited file must not."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"


def load_capability(path: Path) -> Capability:
    """A capability file (`worker run --capability`). Every error names the file
    and, when there is one, the field (also kept on `.path` and `.field`)."""
    path = Path(path)

    def fail(message: str, field: str | None = None) -> CapabilityError:
        where = f"field {field!r}: " if field else ""
        return CapabilityError(f"{path}: {where}{message}", path=path, field=field)

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_CAPABILITY_BYTES:
        raise fail(f"file is {len(data)} bytes, over the {MAX_CAPABILITY_BYTES}-byte limit")
    try:
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 (invalid byte at offset {exc.start})") from None
    except _DuplicateKey as exc:
        raise fail("duplicate key", str(exc)) from None
    except json.JSONDecodeError as exc:
        raise fail(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise fail("not JSON: nested too deeply") from None
    if not isinstance(raw, dict):
        raise fail(f"expected a JSON object, got {type(raw).__name__}")
    try:
        return Capability.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        fields = [_dotted(e["loc"]) for e in errors]
        message = "\n".join(f"{path}: field {f!r}: {_reason(e)}"
                            for f, e in zip(fields, errors, strict=True))
        raise CapabilityError(message, path=path, field=fields[0], fields=fields) from None


def _reason(err: Mapping[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    value = err.get("input")
    msg = str(err["msg"])
    if isinstance(value, str | int | float | bool) and len(repr(value)) < 60:
        return f"{msg} (got {value!r})"
    return msg


def self_test(cap: Capability) -> list[str]:
    """Problems that must stop a worker from starting: a capability that
    contradicts itself would make every eligibility verdict wrong."""
    problems = []
    if cap.ram_total_gib <= 0:
        problems.append("ram_total_gib is 0: no RAM detected")
    if cap.ram_available_gib > cap.ram_total_gib:
        problems.append(f"ram_available_gib ({cap.ram_available_gib}) is more than "
                        f"ram_total_gib ({cap.ram_total_gib})")
    if cap.cuda_available and not cap.cuda_devices:
        problems.append("cuda_available is true but no CUDA device is listed")
    if not cap.cuda_available and cap.cuda_devices:
        problems.append("CUDA devices are listed but cuda_available is false")
    indices = [d.index for d in cap.cuda_devices]
    if len(set(indices)) != len(indices):
        problems.append(f"CUDA device indices repeat: {indices}")
    for d in cap.cuda_devices:
        if d.vram_free_gib > d.vram_total_gib:
            problems.append(f"cuda:{d.index} has more free VRAM ({d.vram_free_gib}) than "
                            f"total ({d.vram_total_gib})")
    return problems


def capability_json(cap: Capability) -> str:
    """Canonical JSON (sorted keys, 2-space indent, trailing newline), the
    format `worker capability --json` prints and `--capability` reads."""
    return json.dumps(cap.model_dump(mode="json"), sort_keys=True, indent=2) + "\n"
