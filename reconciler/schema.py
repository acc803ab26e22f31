"""The ledger's file formats as pydantic models: one module that the hooks, the
reconciler, the worker and the CLI all import.

`python -m reconciler.schema` writes `docs/manifest.schema.json`,
`docs/state.schema.json` and `docs/capability.schema.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from reconciler.names import name_problem

# Defined without pydantic in reconciler/state.py, so the hook starts fast.
from reconciler.state import (  # noqa: F401 - re-exported
    HELD,
    MAX_STATE_BYTES,
    STATE_SCHEMA,
    TERMINAL,
    Artifact,
    JobState,
    Status,
    parse_state,
    state_path,
)

SCHEMA_VERSION = 1

# Host, job, model and worker names appear in refs, paths, argv and commit
# subjects, so they come from a small, safe alphabet.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
JobId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
HyperKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]
ShortText = Annotated[str, StringConstraints(max_length=256)]

# Finite, non-negative and bounded: no NaN, inf, negative or absurd resources.
Gib = Annotated[float, Field(ge=0, le=1_048_576, allow_inf_nan=False)]
Seconds = Annotated[float, Field(gt=0, le=31_536_000, allow_inf_nan=False)]
HyperValue = (
    Annotated[bool, Field(strict=True)]
    | Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]
    | Annotated[float, Field(strict=True, allow_inf_nan=False)]
    | Annotated[str, StringConstraints(max_length=1024)]
)

RESERVED_NAMES = frozenset({"reconciler", "operator", "HEAD"})


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------- manifest


class StrictTypes(Strict):
    """TOML has types: `min_cores = true` or `priority = "10"` is a mistake to
    report, not a value to coerce (lax pydantic took them as 1 and 10)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Fleet(StrictTypes):
    heartbeat_s: Seconds = Field(30.0, description="Seconds between worker heartbeats.")
    stale_after_s: Seconds = Field(
        600.0, description="A claim with no sign of life for this long is swept."
    )
    max_attempts: int = Field(
        3, ge=1, le=1000, description="Claims that may be lost to sweeps before the job fails."
    )
    prefer_cuda_grace_s: float = Field(
        300.0,
        ge=0,
        le=31_536_000,
        allow_inf_nan=False,
        description="Seconds a prefer_cuda job waits for CUDA before CPU workers may take it.",
    )
    store: str | None = Field(
        None,
        max_length=1024,
        description="Artifact store: a local path or ssh://host/path. Workers may override it.",
    )
    prune: bool = Field(
        False, description="Cancel jobs removed from the manifest instead of reporting them."
    )

    @model_validator(mode="after")
    def _stale_after_beats(self) -> Fleet:
        if self.stale_after_s < 2 * self.heartbeat_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s}) must be at least twice "
                f"heartbeat_s ({self.heartbeat_s}), or live workers get swept"
            )
        return self


class Trainer(StrictTypes):
    command: list[Annotated[str, StringConstraints(min_length=1, max_length=4096)]] = Field(
        ...,
        min_length=1,
        max_length=256,
        description="argv run for this model (never a shell string); hyper flags appended.",
    )
    hyper: list[HyperKey] = Field(
        default_factory=list, description="Hyper keys this trainer accepts."
    )
    workdir: str | None = Field(
        None, max_length=1024, description="Trainer working directory (default: a fresh dir)."
    )
    timeout_s: Seconds | None = Field(
        None, description="Kill the trainer after this many seconds (the job fails)."
    )


class Host(StrictTypes):
    allow_jobs: list[ShortText] | None = Field(
        None, description="Job names or models (globs) this host may run; unset means all."
    )
    deny_jobs: list[ShortText] = Field(
        default_factory=list, description="Job names or models (globs) this host never runs."
    )
    priority: int = Field(0, ge=-1_000_000, le=1_000_000, description="Informational host rank.")
    description: str = Field("", max_length=1024, description="Free text for operators.")


class JobFields(StrictTypes):
    """Fields a job may set and [defaults] may default."""

    mode: Name | None = Field(
        None, description="Training mode (identity); the trainer reads it from $TRAINLEDGER_SPEC."
    )
    priority: int | None = Field(
        None, ge=-1_000_000, le=1_000_000, description="Higher runs first."
    )
    require_cuda: bool | None = Field(None, description="Only CUDA workers may run it.")
    prefer_cuda: bool | None = Field(
        None, description="CUDA workers first; CPU workers after prefer_cuda_grace_s."
    )
    min_vram_gib: Gib | None = Field(None, description="Free VRAM the best device must have.")
    min_ram_gib: Gib | None = Field(None, description="Available RAM the host must have.")
    min_cores: int | None = Field(None, ge=0, le=65_536, description="Logical cores required.")
    allowed_hosts: list[Name] | None = Field(None, description="Only these hosts may run it.")
    denied_hosts: list[Name] | None = Field(None, description="These hosts never run it.")
    split_recipe: ShortText | None = Field(None, description="How the data is split (identity).")
    train_hosts: list[Name] | None = Field(
        None, description="Hosts whose data it trains on (identity)."
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Random seed (identity).")
    n_resamples: int | None = Field(None, ge=1, le=1_000_000, description="Resample count.")


class Defaults(JobFields):
    """Values for job fields a job leaves unset."""


class Job(JobFields):
    name: Name = Field(..., description="Unique, human name of the job.")
    model: Name = Field(..., description="Selects [trainers.<model>].")
    hyper: dict[HyperKey, HyperValue] = Field(
        default_factory=dict, description="Hyperparameters, passed as --<key> <value>."
    )
    cancel: bool = Field(False, description="Declarative cancel: the reconciler stops the job.")

    @field_validator("hyper", mode="before")
    @classmethod
    def _no_huge_ints(cls, hyper: Any) -> Any:
        """An int beyond 64 bits failed the int branch and slipped into the float
        one, silently becoming 1e+23: refuse it instead."""
        if isinstance(hyper, dict):
            for key, value in hyper.items():
                if type(value) is int and not -(2**63) <= value <= 2**63 - 1:
                    raise ValueError(f"{key!r} = {value} does not fit in 64 bits")
        return hyper


class Manifest(StrictTypes):
    schema_version: Literal[1] = Field(..., description="Manifest format version.")
    name: Name = Field(..., description="Fleet name.")
    fleet: Fleet = Field(default_factory=Fleet, description="Timing, budget and store.")
    defaults: Defaults = Field(default_factory=Defaults, description="Defaults for job fields.")
    trainers: dict[Name, Trainer] = Field(default_factory=dict, description="How to run models.")
    hosts: dict[Name, Host] = Field(default_factory=dict, description="Per-host policy.")
    jobs: list[Job] = Field(default_factory=list, max_length=200_000, description="The jobs.")

    @field_validator("hosts")
    @classmethod
    def _no_reserved_hosts(cls, hosts: dict[str, Host]) -> dict[str, Host]:
        for name in hosts:
            if name in RESERVED_NAMES:
                raise ValueError(f"host name {name!r} is reserved")
            if (problem := name_problem(name)) is not None:
                raise ValueError(f"host name {name!r}: {problem}")
        return hosts


# ------------------------------------------------------------------------ state


# ------------------------------------------------------------------- capability


class CudaDevice(Strict):
    index: int = Field(..., ge=0, le=1024, description="CUDA device index.")
    name: str = Field(..., max_length=256, description="Device name.")
    vram_total_gib: Gib = Field(..., description="Total VRAM.")
    vram_free_gib: Gib = Field(..., description="Free VRAM when detected.")


class Capability(Strict):
    """What a host can run, detected or read from `--capability FILE`."""

    hostname: str = Field(..., max_length=256, description="The host's name.")
    cpu_cores: int = Field(..., ge=1, le=65_536, description="Logical cores.")
    cpu_physical_cores: int | None = Field(None, ge=1, le=65_536, description="Physical cores.")
    ram_total_gib: Gib = Field(..., description="Total RAM.")
    ram_available_gib: Gib = Field(..., description="Available RAM when detected.")
    cuda_available: bool = Field(False, description="At least one usable CUDA device.")
    cuda_devices: list[CudaDevice] = Field(default_factory=list, description="CUDA devices.")
    torch_version: str | None = Field(None, max_length=64, description="torch, if importable.")
    xgboost_version: str | None = Field(None, max_length=64, description="xgboost, if importable.")
    os: str = Field("", max_length=64, description="Operating system.")
    arch: str = Field("", max_length=64, description="CPU architecture.")
    trainledger_version: str = Field("", max_length=64, description="Installed trainledger.")

    @property
    def best_free_vram_gib(self) -> float:
        return max((d.vram_free_gib for d in self.cuda_devices), default=0.0)


# -------------------------------------------------------------------- heartbeat


class HeldJob(Strict):
    job_id: JobId
    attempt: int = Field(..., ge=1)
    progress: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    last_line: str | None = Field(None, max_length=512)


class Heartbeat(Strict):
    """The message of the commit on `refs/heartbeats/<worker>`."""

    worker: Name
    seq: int = Field(..., ge=0, description="Beat counter since the worker started.")
    sent_at: float = Field(..., description="Worker's clock (informational only).")
    jobs: list[HeldJob] = Field(default_factory=list, max_length=1024)
    capability: Capability | None = None
    slots: int = Field(1, ge=1, le=1024)
    # The reconciler's own beat carries what it saw, on its own clock.
    report: dict[str, Any] | None = Field(None, description="Reconciler report (its ref only).")


SCHEMAS: dict[str, type[BaseModel] | dict[str, Any]] = {
    "manifest": Manifest, "state": STATE_SCHEMA, "capability": Capability,
}


def schema_text(name: str) -> str:
    schema = SCHEMAS[name]
    data = schema if isinstance(schema, dict) else schema.model_json_schema()
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def export_schemas(docs: Path) -> list[Path]:
    written = []
    for name in SCHEMAS:
        path = docs / f"{name}.schema.json"
        path.write_text(schema_text(name))
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover - exercised by the drift test
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent.parent / "docs"
    for p in export_schemas(out):
        print(p)
