"""`[[sweeps]]` expanded into jobs, and `after` resolved into an order.

A sweep point is built as the `[[jobs]]` table a person would have written for
it (same fields, hyper = the sweep's fixed hyper plus the point), so it has
exactly that job's identity. Its name is the sweep's name plus one
`<key><value>` part per grid key (and `seed<n>` when `seed` is a list), in the
grid's order: adding values to a grid never renames the points that were
already there. A name that would not fit the name alphabet or 64 characters is
the sweep's name plus 10 hex chars of sha256 over the point, still stable.

`after` is resolved here too, since a sweep name stands for all its points:
`order` returns the jobs upstream-first, so each job's id can include its
upstream ids, or the errors naming the unknown names and the jobs in a cycle.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from reconciler.protocol.schema import NAME_PATTERN, Job, Sweep

MAX_POINTS = 10_000
_NAME_RE = re.compile(NAME_PATTERN)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Entry:
    """One job to resolve: a `[[jobs]]` table or a sweep point."""

    job: Job
    where: str  # "job 'x' (jobs[3])" or "job 'mlp-lr-lr0.1' (sweeps[0] 'mlp-lr')"
    sweep: str | None = None
    sweep_index: int | None = None


def points(sweep: Sweep) -> int:
    seeds = len(sweep.seed) if isinstance(sweep.seed, list) else 1
    return math.prod(len(v) for v in sweep.grid.values()) * seeds


def value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return _UNSAFE.sub("_", str(value))


def point_name(sweep: Sweep, point: dict[str, Any], seed: int | None) -> str:
    parts = [f"{key}{value_text(value)}" for key, value in point.items()]
    if seed is not None:
        parts.append(f"seed{seed}")
    name = "-".join([sweep.name, *parts])
    if _NAME_RE.match(name):
        return name
    digest = hashlib.sha256(json.dumps([point, seed], sort_keys=True).encode()).hexdigest()
    return f"{sweep.name[:53]}-{digest[:10]}"


def expand(sweep: Sweep, index: int) -> Iterable[Entry]:
    """The sweep's points as jobs, grid-major, seeds last."""
    fields = sweep.model_dump(exclude={"grid", "seed", "name", "hyper"}, exclude_none=True)
    seeds: list[int | None] = list(sweep.seed) if isinstance(sweep.seed, list) \
        else [None]
    keys = list(sweep.grid)
    for values in itertools.product(*(sweep.grid[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        for seed in seeds:
            name = point_name(sweep, point, seed)
            raw: dict[str, Any] = {**fields, "name": name, "hyper": {**sweep.hyper, **point}}
            job_seed = seed if seed is not None else sweep.seed
            if job_seed is not None:
                raw["seed"] = job_seed
            yield Entry(Job.model_validate(raw), f"job {name!r} (sweeps[{index}] {sweep.name!r})",
                        sweep.name, index)


def sweep_problems(sweeps: list[Sweep], job_names: set[str], filename: str) -> list[str]:
    """Checks made before expanding: size, names, grid keys also in hyper."""
    out = []
    seen: dict[str, int] = {}
    for index, sweep in enumerate(sweeps):
        where = f"{filename}: sweep {sweep.name!r} (sweeps[{index}])"
        n = points(sweep)
        if n > MAX_POINTS:
            out.append(f"{where}: {n} points, over the {MAX_POINTS}-point limit of one sweep")
        if sweep.name in seen:
            out.append(f"{where}: field 'name': duplicate of sweeps[{seen[sweep.name]}]")
        seen.setdefault(sweep.name, index)
        if sweep.name in job_names:
            out.append(f"{where}: field 'name': also the name of a job (after = [...] "
                       "would be ambiguous)")
        for key in sweep.grid:
            if key in sweep.hyper:
                out.append(f"{where}: field 'grid.{key}': also set in hyper")
    return out


def order(entries: list[Entry], sweeps: dict[str, list[int]],
          filename: str) -> tuple[list[int], dict[int, dict[str, int]], list[str]]:
    """Entry indices upstream-first, each entry's upstream {name: index}, and
    the errors (unknown names, cycles). `sweeps` maps a sweep name to the
    indices of its points."""
    by_name = {e.job.name: i for i, e in enumerate(entries)}
    ups: dict[int, dict[str, int]] = {}
    problems: list[str] = []
    reported_sweeps: set[tuple[int | None, str]] = set()
    for i, entry in enumerate(entries):
        deps: dict[str, int] = {}
        for name in entry.job.after:
            if name in sweeps:
                deps.update({entries[j].job.name: j for j in sweeps[name]})
            elif name in by_name:
                deps[name] = by_name[name]
            else:
                key = (entry.sweep_index, name)
                if entry.sweep is not None and key in reported_sweeps:
                    continue  # said once per sweep, not once per point
                reported_sweeps.add(key)
                where = f"sweep {entry.sweep!r} (sweeps[{entry.sweep_index}])" \
                    if entry.sweep is not None else entry.where
                problems.append(f"{filename}: {where}: field 'after': no job or sweep "
                                f"named {name!r}")
        ups[i] = deps
    if problems:
        return [], ups, problems
    down: dict[int, list[int]] = {i: [] for i in range(len(entries))}
    missing = {i: len(set(d.values())) for i, d in ups.items()}
    for i, d in ups.items():
        for j in set(d.values()):
            down[j].append(i)
    ready = [i for i, n in missing.items() if n == 0]
    out: list[int] = []
    while ready:
        i = ready.pop()
        out.append(i)
        for k in down[i]:
            missing[k] -= 1
            if missing[k] == 0:
                ready.append(k)
    if len(out) < len(entries):
        left = {i for i, n in missing.items() if n > 0}
        cycle = _a_cycle(left, ups)
        names = " -> ".join(entries[i].job.name for i in cycle)
        problems.append(f"{filename}: field 'after': a cycle: {names} (each runs only after "
                        "the next, so none would ever run)")
    return out, ups, problems


def _a_cycle(left: set[int], ups: dict[int, dict[str, int]]) -> list[int]:
    """Walk upstream inside the unresolved jobs until a job repeats."""
    start = min(left)
    path: list[int] = []
    seen: dict[int, int] = {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(j for j in ups[node].values() if j in left)
    return [*path[seen[node]:], node]
