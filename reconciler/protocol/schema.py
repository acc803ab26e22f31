"""The ledger's file formats as pydantic models: one module that the hooks, the
reconciler, the worker and the CLI all import.

`python -m reconciler.protocol.schema` writes `docs/manifest.schema.json`,
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

from reconciler.protocol.layout import NAME_PATTERN
from reconciler.protocol.names import name_problem

# Defined without pydantic in reconciler/protocol/state.py, so the hook starts fast.
from reconciler.protocol.state import (  # noqa: F401 - re-exported
    HELD,
    MAX_STATE_BYTES,
    STATE_SCHEMA,
    TERMINAL,
    Artifact,
    Checkpoint,
    JobState,
    Status,
    parse_state,
    state_path,
)

SCHEMA_VERSION = 1

# Host, job, model and worker names appear in refs, paths, argv and commit
# subjects, so they come from a small, safe alphabet.
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
JobId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
HyperKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]
ShortText = Annotated[str, StringConstraints(max_length=256)]
# A variable [trainers.X] env may set: not the ones the worker sets for every trainer.
EnvKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
WORKER_ENV = ("TRAINLEDGER_", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")

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
        description="Artifact store: a path on the ledger's host (a relative one is taken "
        "from the ledger's directory; each host reaches it through its ledger URL), or "
        "ssh://host/path. A worker may override it with --store.",
    )
    prune: bool = Field(
        False, description="Cancel jobs removed from the manifest instead of reporting them."
    )
    checkpoint_every_s: float = Field(
        600.0, ge=0, le=31_536_000, allow_inf_nan=False,
        description="Seconds between saves of a running job's checkpoint dir while it "
        "changed (0: only on a graceful release).",
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
    env: dict[EnvKey, Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=dict, max_length=128,
        description="Non-secret variables set for the trainer (visible in git: pass secrets "
                    "with `worker run --pass-env`). TRAINLEDGER_* and CUDA_VISIBLE_DEVICES "
                    "are the worker's.",
    )

    @field_validator("env")
    @classmethod
    def _not_the_workers(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if key.startswith(WORKER_ENV):
                raise ValueError(f"{key!r} is set by the worker for every trainer")
        return env


class Host(StrictTypes):
    allow_jobs: list[ShortText] | None = Field(
        None, description="Job names or models (globs) this host may run; unset or [] means all."
    )
    deny_jobs: list[ShortText] = Field(
        default_factory=list, description="Job names or models (globs) this host never runs."
    )
    priority: int = Field(0, ge=-1_000_000, le=1_000_000, description="Informational host rank.")
    description: str = Field("", max_length=1024, description="Free text for operators.")
    drain: bool = Field(
        False, description="Finish the jobs it runs, claim nothing more (status: draining, "
        "then drained)."
    )
    retired: bool = Field(
        False, description="Gone for good: claims nothing and leaves status, workers and health."
    )


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
    retries: int | None = Field(
        None, ge=0, le=1000,
        description="Trainer failures (exit != 0, timeout, signal) retried per requeue (0).",
    )
    timeout_s: Seconds | None = Field(
        None, description="Per job: SIGTERM, then SIGKILL; the attempt fails. Wins over "
        "[trainers.X] timeout_s.",
    )


class Defaults(JobFields):
    """Values for job fields a job leaves unset."""


class Job(JobFields):
    name: Name = Field(..., description="Unique, human name of the job.")
    model: Name = Field(..., description="Selects [trainers.<model>].")
    hyper: dict[HyperKey, HyperValue] = Field(
        default_factory=dict, description="Hyperparameters, passed as --<key> <value>."
    )
    cancel: bool = Field(False, description="Declarative cancel: the reconciler stops the job.")
    after: list[Name] = Field(
        default_factory=list, max_length=10_000,
        description="Job or sweep names that must be completed first (afterok); their "
        "artifacts are unpacked in $TRAINLEDGER_INPUTS.",
    )

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


Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]


class Sweep(Job):
    """A grid that expands at load time into one job per point (reconciler/protocol/sweeps.py)."""

    grid: dict[HyperKey, Annotated[list[HyperValue], Field(min_length=1, max_length=10_000)]] \
        = Field(..., min_length=1, description="Hyper keys -> the values to sweep over.")
    seed: Seed | list[Seed] | None = Field(  # type: ignore[assignment]
        None, description="A seed, or a list of seeds that expands like a grid key.")

    @field_validator("grid", mode="before")
    @classmethod
    def _no_huge_grid_ints(cls, grid: Any) -> Any:
        if isinstance(grid, dict):
            for key, values in grid.items():
                for value in values if isinstance(values, list) else []:
                    if type(value) is int and not -(2**63) <= value <= 2**63 - 1:
                        raise ValueError(f"{key!r} = {value} does not fit in 64 bits")
        return grid


class Manifest(StrictTypes):
    schema_version: Literal[1] = Field(..., description="Manifest format version.")
    name: Name = Field(..., description="Fleet name.")
    fleet: Fleet = Field(default_factory=Fleet, description="Timing, budget and store.")
    defaults: Defaults = Field(default_factory=Defaults, description="Defaults for job fields.")
    trainers: dict[Name, Trainer] = Field(default_factory=dict, description="How to run models.")
    hosts: dict[Name, Host] = Field(default_factory=dict, description="Per-host policy.")
    jobs: list[Job] = Field(default_factory=list, max_length=200_000, description="The jobs.")
    sweeps: list[Sweep] = Field(
        default_factory=list, max_length=10_000, description="Grids expanded into jobs."
    )

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
    tail: list[Annotated[str, StringConstraints(max_length=512)]] | None = Field(
        None, max_length=64, description="The trainer's latest lines (`reconciler logs`).")
    device: int | None = Field(None, ge=0, le=1024, description="CUDA device it runs on.")


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
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs")
    for p in export_schemas(out):
        print(p)
