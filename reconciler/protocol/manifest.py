"""Loading the manifest: bytes in, a validated `LoadedManifest` or one readable
`ManifestError` out, never a traceback (the bad-input matrix, tests/BAD_INPUTS.md).

Order matters: size cap, strict UTF-8, TOML parse with `RecursionError` caught,
pydantic with `extra="forbid"`, then the cross-field rules pydantic cannot see
(hyper keys the trainer does not declare, duplicate names and identities).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from reconciler.protocol.errors import ManifestError
from reconciler.protocol.hyperkey import value_key
from reconciler.protocol.identity import JobSpec, resolve
from reconciler.protocol.schema import Manifest
from reconciler.protocol.sweeps import Entry, expand, order, sweep_problems

# A 100,000-job manifest is about 12.9 MB (docs/performance.md) and the schema allows
# 200,000 jobs, so the cap is receive.maxInputSize (16 MiB), which already
# bounds what a push can carry: a bigger file could never reach the ledger.
MAX_MANIFEST_BYTES = 16 << 20


@dataclass(frozen=True)
class LoadedManifest:
    manifest: Manifest
    specs: dict[str, JobSpec]  # by job id: [[jobs]] in manifest order, then sweep points
    sweeps: dict[str, list[str]] = field(default_factory=dict)  # sweep name -> point job ids
    downstream: dict[str, tuple[str, ...]] = field(default_factory=dict)  # id -> ids after it

    @property
    def fleet(self):
        return self.manifest.fleet

    def by_name(self) -> dict[str, JobSpec]:
        return {s.name: s for s in self.specs.values()}


def load_manifest(
    data: bytes, filename: str = "manifest.toml", max_bytes: int = MAX_MANIFEST_BYTES
) -> LoadedManifest:
    raw = _parse_toml(data, filename, max_bytes)
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(
            _format_validation(exc, raw, filename), filename=filename, errors=exc.errors()
        ) from None
    entries = [Entry(job, f"job {job.name!r} (jobs[{index}])")
               for index, job in enumerate(manifest.jobs)]
    problems = sweep_problems(manifest.sweeps, {job.name for job in manifest.jobs}, filename)
    if problems:
        raise ManifestError("\n".join(problems), filename=filename)
    sweep_points: dict[str, list[int]] = {}
    for index, sweep in enumerate(manifest.sweeps):
        for entry in expand(sweep, index):
            sweep_points.setdefault(sweep.name, []).append(len(entries))
            entries.append(entry)
    if len(entries) > MAX_JOBS:
        raise ManifestError(f"{filename}: {len(entries)} jobs with the sweeps expanded, over "
                            f"the {MAX_JOBS}-job limit", filename=filename)
    specs_in_order = _resolve_all(manifest, entries, sweep_points, filename)
    problems = list(_cross_checks(manifest, filename, entries, specs_in_order))
    if problems:
        raise ManifestError("\n".join(problems), filename=filename)
    specs = {spec.job_id: spec for spec in specs_in_order if spec is not None}
    downstream: dict[str, list[str]] = {}
    for spec in specs.values():
        for up in spec.after:
            downstream.setdefault(up, []).append(spec.job_id)
    return LoadedManifest(
        manifest, specs,
        {name: [s.job_id for i in idx if (s := specs_in_order[i]) is not None]
         for name, idx in sweep_points.items()},
        {k: tuple(v) for k, v in downstream.items()})


MAX_JOBS = 200_000


def _resolve_all(manifest: Manifest, entries: list[Entry], sweep_points: dict[str, list[int]],
                 filename: str) -> list[JobSpec | None]:
    """Resolve upstream-first, so each job's id can include its upstream ids;
    None for a job without a trainer (reported by the cross checks)."""
    topo, ups, problems = order(entries, sweep_points, filename)
    if problems:
        raise ManifestError("\n".join(problems), filename=filename)
    specs: list[JobSpec | None] = [None] * len(entries)
    for i in topo:
        entry = entries[i]
        trainer = manifest.trainers.get(entry.job.model)
        upstream = {name: spec.job_id for name, j in ups[i].items()
                    if (spec := specs[j]) is not None}
        if trainer is not None and len(upstream) == len(ups[i]):
            specs[i] = resolve(entry.job, manifest.defaults, trainer, i, upstream, entry.sweep)
    return specs


def _parse_toml(data: bytes, filename: str, max_bytes: int) -> dict[str, Any]:
    if len(data) > max_bytes:
        raise ManifestError(
            f"{filename}: file is {len(data)} bytes, over the {max_bytes}-byte limit",
            filename=filename,
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError(
            f"{filename}: not UTF-8 (invalid byte at line {line}, offset {exc.start})",
            filename=filename,
        ) from None
    _refuse_deep_keys(text, filename)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{filename}: TOML syntax error: {exc}", filename=filename) from None
    except RecursionError:
        raise ManifestError(
            f"{filename}: TOML nested too deeply (arrays, tables or dotted keys)",
            filename=filename,
        ) from None


# tomllib's time grows with the square of the parts of one dotted key (10,000
# parts took 4 s; the ~500,000 that fit in 1 MiB would take hours), so absurd
# keys are refused before parsing. A key is on one line, so only lines with that
# many dots are looked at; a string value of 128 dot-separated words would be
# taken for a key, a price no real manifest pays.
MAX_KEY_PARTS = 128
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_DEEP_KEY = re.compile(rf"{_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART}){{{MAX_KEY_PARTS},}}")


def _refuse_deep_keys(text: str, filename: str) -> None:
    if text.count(".") < MAX_KEY_PARTS:
        return
    for number, line in enumerate(text.split("\n"), 1):
        if len(line) > 2 * MAX_KEY_PARTS and line.count(".") >= MAX_KEY_PARTS \
                and _DEEP_KEY.search(line):
            raise ManifestError(
                f"{filename}: line {number}: a dotted key or table name of more than "
                f"{MAX_KEY_PARTS} parts", filename=filename,
            )


def _format_validation(exc: ValidationError, raw: dict[str, Any], filename: str) -> str:
    """One line per field: a value that fits no branch of a union (a hyper value
    is a bool, an int, a float or a string) was four lines, one per branch."""
    by_field: dict[str, list[dict[str, Any]]] = {}
    for err in exc.errors():
        by_field.setdefault(_where(err["loc"], raw), []).append(err)
    return "\n".join(f"{filename}: {where}: {_reasons(errs)}" for where, errs in by_field.items())


def _reasons(errs: list[dict[str, Any]]) -> str:
    if len(errs) == 1:
        return _reason(errs[0])
    # The branch that took the value's type says what is wrong with it (nan for a
    # float); if none did, name the types the field accepts.
    specific = [e for e in errs if not str(e["type"]).endswith(("_type", "_parsing"))]
    if specific:
        return "; ".join(dict.fromkeys(_reason(e) for e in specific))
    kinds = [str(e["msg"]).removeprefix("Input should be a valid ") for e in errs]
    expected = ", ".join(kinds[:-1]) + f" or {kinds[-1]}"
    value = errs[0].get("input")
    got = f" (got {value!r})" if isinstance(value, str | int | float | bool) \
        and len(repr(value)) < 60 else ""
    return f"Input should be a {expected}{got}"


def _where(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    """Name the job by name and index, and the field by its dotted path."""
    if len(loc) >= 2 and loc[0] in ("jobs", "sweeps") and isinstance(loc[1], int):
        index = loc[1]
        jobs = raw.get(loc[0])
        name = None
        if isinstance(jobs, list) and index < len(jobs) and isinstance(jobs[index], dict):
            name = jobs[index].get("name")
        kind = "job" if loc[0] == "jobs" else "sweep"
        label = f"{kind} {name!r} ({loc[0]}[{index}])" if isinstance(name, str) \
            else f"{loc[0]}[{index}]"
        field = _dotted(loc[2:])
        return f"{label}: field {field!r}" if field else label
    if len(loc) >= 2 and loc[0] in ("trainers", "hosts"):
        return f"[{loc[0]}.{loc[1]}]: field {_dotted(loc[2:])!r}"
    return f"field {_dotted(loc)!r}"


def _dotted(loc: Iterable[Any]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif str(item).startswith(("function-after", "constrained-", "lax-or-strict")) or (
            str(item) in ("bool", "int", "float", "str")
        ):
            continue  # pydantic's union/validator branch names, not user fields
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _reason(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, str | int | float | bool) and len(repr(value)) < 60:
        return f"{msg} (got {value!r})"
    return msg


def _cross_checks(
    manifest: Manifest, filename: str, entries: list[Entry], specs: list[JobSpec | None]
) -> Iterable[str]:
    """`specs[i]` is entries[i] resolved (None without a trainer, or downstream
    of a job without one): resolving once per job halves the load time of a
    100,000-job manifest. A sweep's bad model or hyper key is said once, not
    once per point."""
    seen_names: dict[str, int] = {}
    seen_ids: dict[str, int] = {}
    seen_values: dict[tuple, int] = {}
    said: set[tuple[str | None, str]] = set()
    for index, entry in enumerate(entries):
        job = entry.job
        where = f"{filename}: {entry.where}"
        if entry.sweep is not None:
            where = f"{filename}: sweep {entry.sweep!r} (sweeps[{entry.sweep_index}])"
        trainer = manifest.trainers.get(job.model)
        if trainer is None:
            if (entry.sweep, "model") not in said:
                yield f"{where}: field 'model': no [trainers.{job.model}] table"
            if entry.sweep is not None:
                said.add((entry.sweep, "model"))
            continue
        for key in job.hyper:
            if key not in trainer.hyper and (entry.sweep, key) not in said:
                accepted = ", ".join(trainer.hyper) or "none"
                yield (
                    f"{where}: field 'hyper.{key}': trainer {job.model!r} does not accept it "
                    f"(accepted: {accepted})"
                )
                if entry.sweep is not None:
                    said.add((entry.sweep, key))
        where = f"{filename}: {entry.where}"
        if job.name in seen_names:
            first = entries[seen_names[job.name]]
            other = first.where if first.sweep else f"jobs[{seen_names[job.name]}]"
            yield f"{where}: field 'name': duplicate of {other}"
        seen_names.setdefault(job.name, index)
        spec = specs[index]
        if spec is None:
            continue  # downstream of a job without a trainer: that job is reported
        jid = spec.job_id
        if jid in seen_ids:
            other = entries[seen_ids[jid]].where
            yield (
                f"{where}: same identity {jid} as {other}: "
                "they would train the same artifact"
            )
        seen_ids.setdefault(jid, index)
        same = seen_values.setdefault(value_key(spec), index)
        other_spec = specs[same]
        if same != index and other_spec is not None and other_spec.job_id != jid:
            yield (f"{where}: field 'hyper': the same values as {entries[same].where} "
                   "written another way "
                   "(60, 60.0 and \"60\" are one value to a trainer): write them alike")
