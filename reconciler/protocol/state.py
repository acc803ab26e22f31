"""The state file format, without pydantic: the pre-receive hook judges every
push to main, and importing pydantic alone costs ~120 ms, more than the push.

`STATE_SCHEMA` (JSON Schema) is the single definition: `JobState` is checked
against it by a small validator for the subset it uses, then against the
cross-field rules, and `docs/state.schema.json` is exported from it. The class
keeps the pydantic-style methods the rest of the code uses (`model_copy`,
`model_dump`, `model_validate_json`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from reconciler.protocol.errors import StateError
from reconciler.protocol.layout import NAME_PATTERN

MAX_STATE_BYTES = 64 * 1024


class Status(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


HELD = frozenset({Status.CLAIMED, Status.RUNNING})
TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})

_INT31 = {"type": "integer", "minimum": 0, "maximum": 2**31}
ARTIFACT_SCHEMA: dict[str, Any] = {
    "title": "Artifact",
    "type": "object",
    "additionalProperties": False,
    "required": ["sha256", "size"],
    "properties": {
        "sha256": {"type": "string", "pattern": r"^[0-9a-f]{64}$",
                   "description": "sha256 of the .tar.zst bundle."},
        "size": {"type": "integer", "minimum": 0, "maximum": 2**50,
                 "description": "Bundle size in bytes."},
    },
}
CHECKPOINT_SCHEMA: dict[str, Any] = {
    "title": "Checkpoint",
    "type": "object",
    "additionalProperties": False,
    "required": ["sha256", "size", "attempt"],
    "properties": {
        **ARTIFACT_SCHEMA["properties"],
        "attempt": {**_INT31, "description": "The attempt that saved it."},
    },
}
METRICS_MAX_BYTES = 4096  # a metrics.json larger than this is ignored (with a note)
METRIC_KEY = r"^[A-Za-z][A-Za-z0-9_.:/-]{0,63}$"
METRICS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": 64,
    "propertyNames": {"pattern": METRIC_KEY},
    "additionalProperties": {"anyOf": [{"type": "number"},
                                       {"type": "string", "maxLength": 256}]},
    "description": "The trainer's metrics.json: a flat object of finite numbers and short "
                   "strings (at most 64 keys, 4 KiB).",
}
LOG_SCHEMA: dict[str, Any] = {
    "title": "LogRef",
    "type": "object",
    "additionalProperties": False,
    "required": ["sha256", "size", "attempt"],
    "properties": {
        "sha256": {"type": "string", "pattern": r"^[0-9a-f]{64}$",
                   "description": "sha256 of the .tar.zst bundle holding log.txt."},
        "size": {"type": "integer", "minimum": 0, "maximum": 2**50,
                 "description": "Bundle size in bytes."},
        "attempt": {**_INT31, "description": "The attempt whose log it is."},
    },
}
STATE_SCHEMA: dict[str, Any] = {
    "title": "JobState",
    "description": "Observed state of one job: state/<aa>/<job_id>.json.",
    "type": "object",
    "additionalProperties": False,
    "required": ["job_id", "name", "status"],
    "properties": {
        "job_id": {"type": "string", "pattern": r"^[0-9a-f]{16}$",
                   "description": "16 hex chars of sha256 over the identity fields."},
        "name": {"type": "string", "pattern": NAME_PATTERN,
                 "description": "Job name when the state was last written."},
        "status": {"enum": [s.value for s in Status],
                   "description": "Where the job is in the state machine."},
        "attempt": {**_INT31, "default": 0,
                    "description": "Fencing token: +1 at every claim, never decreases."},
        "holder": {"anyOf": [{"type": "string", "pattern": NAME_PATTERN}, {"type": "null"}],
                   "default": None,
                   "description": "Worker holding the claim (claimed/running)."},
        "lost": {**_INT31, "default": 0,
                 "description": "Claims lost to sweeps since the last requeue."},
        "cpu_ok": {"type": "boolean", "default": False,
                   "description": "prefer_cuda grace is over: CPU workers may claim."},
        "artifact": {"anyOf": [ARTIFACT_SCHEMA, {"type": "null"}], "default": None,
                     "description": "The bundle, once completed."},
        "last_error": {"anyOf": [{"type": "string", "maxLength": 8192}, {"type": "null"}],
                       "default": None,
                       "description": "Why it last failed, was swept or released."},
        "failures": {**_INT31, "default": 0,
                     "description": "Trainer failures since the last requeue (retries)."},
        "checkpoint": {"anyOf": [CHECKPOINT_SCHEMA, {"type": "null"}], "default": None,
                       "description": "The latest saved checkpoint dir (.tar.zst); the next "
                       "attempt starts from it. Dropped on completion."},
        "metrics": {"anyOf": [METRICS_SCHEMA, {"type": "null"}], "default": None,
                    "description": "The completed attempt's metrics.json, if it wrote one."},
        "metrics_error": {"anyOf": [{"type": "string", "maxLength": 1024}, {"type": "null"}],
                          "default": None,
                          "description": "Why the attempt's metrics.json was ignored."},
        "log": {"anyOf": [LOG_SCHEMA, {"type": "null"}], "default": None,
                "description": "The last finished attempt's full log (capped) in the store."},
    },
}


def check(value: Any, schema: dict[str, Any], where: str = "") -> None:
    """Raise StateError naming the field for the JSON Schema subset used above."""
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                check(value, option, where)
                return
            except StateError as exc:
                errors.append(str(exc))
        raise StateError(errors[0], field=where)
    if "enum" in schema and value not in schema["enum"]:
        raise StateError(f"field {where!r}: {value!r} is not one of {schema['enum']}", field=where)
    kind = schema.get("type")
    if kind == "null" and value is not None:
        raise StateError(f"field {where!r}: expected null", field=where)
    if kind == "boolean" and not isinstance(value, bool):
        raise StateError(f"field {where!r}: expected a boolean, got {value!r}", field=where)
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)
                             or value != value or value in (float("inf"), float("-inf"))):
        raise StateError(f"field {where!r}: expected a finite number, got {value!r}",
                         field=where)
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise StateError(f"field {where!r}: expected an integer, got {value!r}", field=where)
        if not schema.get("minimum", value) <= value <= schema.get("maximum", value):
            raise StateError(f"field {where!r}: {value} is out of range", field=where)
    if kind == "string":
        if not isinstance(value, str):
            raise StateError(f"field {where!r}: expected a string, got {value!r}", field=where)
        if len(value) > schema.get("maxLength", len(value)):
            raise StateError(f"field {where!r}: longer than {schema['maxLength']}", field=where)
        # fullmatch: `$` alone lets a trailing newline through ("j1\n")
        if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
            raise StateError(f"field {where!r}: {value[:80]!r} does not match "
                             f"{schema['pattern']}", field=where)
    if kind == "object":
        if not isinstance(value, dict):
            raise StateError(f"field {where or '(file)'!r}: expected an object", field=where)
        props = schema.get("properties", {})  # none: a map whose values all match `extra`
        extra = schema.get("additionalProperties", False)
        if len(value) > schema.get("maxProperties", len(value)):
            raise StateError(f"field {where!r}: more than {schema['maxProperties']} keys",
                             field=where)
        for key in value:
            if key not in props and not isinstance(extra, dict):
                raise StateError(f"field {_join(where, key)!r}: unknown field",
                                 field=_join(where, key))
            names = schema.get("propertyNames")
            if names and not (isinstance(key, str) and re.match(names["pattern"], key)):
                raise StateError(f"field {where!r}: key {str(key)[:80]!r} does not match "
                                 f"{names['pattern']}", field=where)
        for key in schema.get("required", []):
            if key not in value:
                raise StateError(f"field {_join(where, key)!r}: missing",
                                 field=_join(where, key))
        for key, item in value.items():
            check(item, props.get(key, extra), _join(where, key))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


@dataclass(frozen=True)
class Artifact:
    sha256: str
    size: int

    def __post_init__(self) -> None:
        check(asdict(self), ARTIFACT_SCHEMA, "artifact")


@dataclass(frozen=True)
class LogRef:
    sha256: str
    size: int
    attempt: int

    def __post_init__(self) -> None:
        check(asdict(self), LOG_SCHEMA, "log")


@dataclass(frozen=True)
class Checkpoint:
    sha256: str
    size: int
    attempt: int

    def __post_init__(self) -> None:
        check(asdict(self), CHECKPOINT_SCHEMA, "checkpoint")


@dataclass(frozen=True)
class JobState:
    """Observed state of one job (`state/<aa>/<job_id>.json`), validated when made."""

    job_id: str
    name: str
    status: Status
    attempt: int = 0
    holder: str | None = None
    lost: int = 0
    cpu_ok: bool = False
    artifact: Artifact | None = None
    last_error: str | None = None
    failures: int = 0
    checkpoint: Checkpoint | None = None
    metrics: dict[str, float | int | str] | None = field(default=None, hash=False)
    metrics_error: str | None = None
    log: LogRef | None = None

    def __post_init__(self) -> None:
        if isinstance(self.artifact, dict):
            object.__setattr__(self, "artifact", Artifact(**self.artifact))
        if isinstance(self.checkpoint, dict):
            check(self.checkpoint, CHECKPOINT_SCHEMA, "checkpoint")
            object.__setattr__(self, "checkpoint", Checkpoint(**self.checkpoint))
        if isinstance(self.log, dict):
            object.__setattr__(self, "log", LogRef(**self.log))
        if not isinstance(self.status, Status):
            check(self.status, STATE_SCHEMA["properties"]["status"], "status")
            object.__setattr__(self, "status", Status(self.status))
        check(self.model_dump(), STATE_SCHEMA)
        if (self.status in HELD) != (self.holder is not None):
            raise StateError(f"holder must be set exactly when status is claimed or running "
                             f"(status {self.status.value}, holder {self.holder!r})")
        if (self.status is Status.COMPLETED) != (self.artifact is not None):
            raise StateError("artifact must be set exactly when status is completed")
        if self.status is Status.COMPLETED and self.checkpoint is not None:
            raise StateError("a completed job keeps no checkpoint")
        if self.status in HELD and self.attempt == 0:
            raise StateError("a held job has attempt >= 1")

    # pydantic-style API, so callers need not care which library backs a model
    def model_copy(self, *, update: dict[str, Any] | None = None) -> JobState:
        return replace(self, **(update or {}))

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["status"] = self.status.value if isinstance(self.status, Status) else self.status
        out["artifact"] = asdict(self.artifact) if isinstance(self.artifact, Artifact) \
            else self.artifact
        out["checkpoint"] = asdict(self.checkpoint) if isinstance(self.checkpoint, Checkpoint) \
            else self.checkpoint
        out["log"] = asdict(self.log) if isinstance(self.log, LogRef) else self.log
        out["metrics"] = dict(self.metrics) if self.metrics is not None else None
        return out

    @classmethod
    def model_validate_json(cls, data: bytes | str) -> JobState:
        """Strict: UTF-8 only (json.loads would also take UTF-16/32 bytes) and no
        duplicate keys (json.loads keeps the last one silently)."""
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
        except UnicodeDecodeError as exc:
            raise StateError(f"field '(file)': not UTF-8 ({exc})", field="(file)") from None
        if text.startswith("\ufeff"):
            raise StateError("field '(file)': a byte order mark is not canonical JSON",
                             field="(file)")
        try:
            raw = json.loads(text, object_pairs_hook=_no_duplicates)
        except StateError:
            raise
        except (ValueError, RecursionError) as exc:
            raise StateError(f"field '(file)': not JSON ({exc})", field="(file)") from None
        check(raw, STATE_SCHEMA)
        return cls(**raw)

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, 2-space indent, trailing newline. The
        pipeline and result fields are left out at their defaults, so a job that
        never failed a trainer, saved a checkpoint or wrote metrics has the bytes
        it always had."""
        data = self.model_dump()
        for key in _OMITTED_AT_DEFAULT:
            if data[key] == STATE_SCHEMA["properties"][key]["default"]:
                del data[key]
        return json.dumps(data, sort_keys=True, indent=2) + "\n"

    @property
    def path(self) -> str:
        return state_path(self.job_id)


_OMITTED_AT_DEFAULT = ("failures", "checkpoint", "metrics", "metrics_error", "log")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StateError(f"field {key!r}: duplicate key", field=key)
        out[key] = value
    return out


def state_path(job_id: str) -> str:
    return f"state/{job_id[:2]}/{job_id}.json"


def parse_state(data: bytes, job_id: str) -> JobState | str:
    """A state file, or the error naming its path and field."""
    path = state_path(job_id)
    if len(data) > MAX_STATE_BYTES:
        return f"{path}: state file is {len(data)} bytes, over 64 KiB"
    try:
        state = JobState.model_validate_json(data)
    except StateError as exc:
        return f"{path}: {exc}"
    if state.job_id != job_id:
        return f"{path}: job_id {state.job_id} does not match its path"
    return state
