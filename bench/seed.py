"""Seed big ledgers directly with `git fast-import`, with realistic history.

Pushing 100,000 jobs through the real claim path would take hours; fast-import
writes the same objects in seconds. The history is what a fleet leaves behind:
the operator adds jobs to the manifest in batches, the reconciler creates their
state files, and workers claim, start and complete (or fail) a share of them,
one commit per transition with the same trailers the product writes. At the
tip a few jobs are running (held by the simulated workers) and the rest wait.
The repository is then configured and hooked exactly as `reconciler init` does.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import manifest_text
from reconciler.protocol import trailers
from reconciler.protocol.access import DEFAULT_ACCESS
from reconciler.protocol.identity import job_id_of
from reconciler.protocol.manifest import load_manifest
from reconciler.protocol.schema import Artifact, JobState, Status
from reconciler.rules.init import SERVER_CONFIG, install_hooks

WORKERS = tuple(f"w{i:02d}" for i in range(20))


@dataclass(frozen=True)
class Seeded:
    url: str
    path: Path
    store: Path
    jobs: int
    commits: int
    job_ids: tuple[str, ...]
    running: dict[str, str]  # job id -> holder at the tip
    seconds: float


@dataclass
class _Commit:
    author: str
    when: int
    message: str
    files: dict[str, bytes]


def job_ids_of(jobs: int) -> list[str]:
    """Job ids of ledgerkit's manifest_text(jobs): the product's identity hash
    over what that manifest resolves to (checked against load_manifest on a
    small manifest, so the shortcut cannot drift)."""
    ids = [job_id_of({"model": "quick", "mode": None, "hyper": {}, "split_recipe": None,
                      "train_hosts": None, "seed": i}) for i in range(jobs)]
    probe = list(load_manifest(manifest_text(min(jobs, 5)).encode()).specs)
    if probe != ids[: len(probe)]:
        raise AssertionError("bench/seed.py: job ids drifted from reconciler.identity")
    return ids


def _state(job_id: str, name: str, status: Status, attempt: int = 0,
           holder: str | None = None, artifact: Artifact | None = None,
           last_error: str | None = None) -> bytes:
    """Canonical state JSON, as JobState.to_json() writes it (json.dumps with an
    indent runs the pure-Python encoder: too slow for 100,000 files)."""
    return (
        STATE_TEMPLATE % {
            "artifact": _artifact_json(artifact), "attempt": attempt,
            "cpu_ok": "false", "holder": json.dumps(holder), "job_id": job_id,
            "last_error": json.dumps(last_error), "name": json.dumps(name),
            "status": status.value,
        }
    ).encode()


STATE_TEMPLATE = """{
  "artifact": %(artifact)s,
  "attempt": %(attempt)d,
  "cpu_ok": %(cpu_ok)s,
  "holder": %(holder)s,
  "job_id": "%(job_id)s",
  "last_error": %(last_error)s,
  "lost": 0,
  "name": %(name)s,
  "status": "%(status)s"
}
"""


def _artifact_json(artifact: Artifact | None) -> str:
    if artifact is None:
        return "null"
    return f'{{\n    "sha256": "{artifact.sha256}",\n    "size": {artifact.size}\n  }}'


def canonical_matches() -> bool:
    """The template writes exactly what JobState.to_json() writes (smoke test)."""
    art = Artifact(sha256="ab" * 32, size=12)
    cases = [("0123456789abcdef", "job-1", Status.PENDING, 0, None, None, None),
             ("0123456789abcdef", "job-1", Status.RUNNING, 2, "w01", None, None),
             ("0123456789abcdef", "job-1", Status.COMPLETED, 2, None, art, None),
             ("0123456789abcdef", "job-1", Status.FAILED, 1, None, None, 'a "b"\nc')]
    return all(
        _state(*c) == JobState(job_id=c[0], name=c[1], status=c[2], attempt=c[3],
                               holder=c[4], artifact=c[5], last_error=c[6]).to_json().encode()
        for c in cases)


def _history(names: list[str], ids: list[str], text_for: dict[int, str], batches: list[int],
             done_fraction: float, running: int, rng: random.Random,
             start: int) -> Iterator[_Commit]:
    """The commits, oldest first."""
    when = start
    created = 0
    for batch_end in batches:
        when += 3600
        yield _Commit("operator", when, f"add jobs {created}..{batch_end - 1}",
                      {"manifest.toml": text_for[batch_end].encode()})
        changes, files = [], {}
        for i in range(created, batch_end):
            files[f"state/{ids[i][:2]}/{ids[i]}.json"] = _state(ids[i], names[i], Status.PENDING)
            changes.append(trailers.Change(ids[i], names[i], 0, "new->pending", "create"))
        when += 5
        yield _Commit("reconciler", when,
                      trailers.render(f"reconciler: create {len(changes)} jobs", changes,
                                      "reconciler"), files)
        created = batch_end
    order = list(range(len(ids)))
    rng.shuffle(order)
    finished = order[: int(len(ids) * done_fraction)]
    for n, i in enumerate(finished):
        job, name, worker = ids[i], names[i], WORKERS[n % len(WORKERS)]
        path = f"state/{job[:2]}/{job}.json"
        when += 7
        for transition, meaning, status in (("pending->claimed", "claim", Status.CLAIMED),
                                            ("claimed->running", "start", Status.RUNNING)):
            change = trailers.Change(job, name, 1, transition, meaning)
            yield _Commit(worker, when, trailers.render(
                trailers.subject_for([change], worker), [change], worker),
                {path: _state(job, name, status, 1, worker)})
            when += 1
        if n % 10 == 9:
            final = trailers.Change(job, name, 1, "running->failed", "fail")
            data = _state(job, name, Status.FAILED, 1, None,
                          last_error="trainer exited with 1; log tail:\nValueError: nan loss")
        else:
            final = trailers.Change(job, name, 1, "running->completed", "complete")
            digest = hashlib.sha256(job.encode()).hexdigest()
            data = _state(job, name, Status.COMPLETED, 1, None,
                          Artifact(sha256=digest, size=1 << 20))
        when += 120
        yield _Commit(worker, when, trailers.render(trailers.subject_for([final], worker),
                                                    [final], worker), {path: data})
    for n, i in enumerate(order[len(finished): len(finished) + running]):
        job, name, worker = ids[i], names[i], WORKERS[n % len(WORKERS)]
        path = f"state/{job[:2]}/{job}.json"
        for transition, meaning, status in (("pending->claimed", "claim", Status.CLAIMED),
                                            ("claimed->running", "start", Status.RUNNING)):
            change = trailers.Change(job, name, 1, transition, meaning)
            when += 3
            yield _Commit(worker, when, trailers.render(
                trailers.subject_for([change], worker), [change], worker),
                {path: _state(job, name, status, 1, worker)})


def _stream(commits: Iterator[_Commit], static: dict[str, bytes]) -> Iterator[bytes]:
    first = True
    for c in commits:
        msg = c.message.encode()
        sig = f"{c.author} <{c.author}@trainledger> {c.when} +0000".encode()
        parts = [b"commit refs/heads/main\n", b"author " + sig + b"\n",
                 b"committer " + sig + b"\n", b"data %d\n" % len(msg), msg, b"\n"]
        files = {**static, **c.files} if first else c.files
        first = False
        for path, data in files.items():
            parts += [b"M 100644 inline " + path.encode() + b"\n", b"data %d\n" % len(data),
                      data, b"\n"]
        parts.append(b"\n")
        yield b"".join(parts)
    yield b"done\n"


def seed_ledger(root: Path, jobs: int, *, done_fraction: float = 0.3, running: int = 20,
                batches: int = 5, fleet: dict | None = None, seed: int = 7,
                history_cap: int | None = None, extra: str = "") -> Seeded:
    """A hooked bare ledger at root/ledger.git with `jobs` jobs and history.

    `history_cap` bounds how many jobs get a full claim/start/finish history
    (three commits each), to keep seeding time in budget at 100k jobs; `extra`
    is appended to the manifest (e.g. a [hosts.*] table)."""
    started = time.perf_counter()
    fleet = {"heartbeat_s": 30, "stale_after_s": 600, "max_attempts": 3,
             "prefer_cuda_grace_s": 300, **(fleet or {})}
    store = root / "store"
    (store / "sha256").mkdir(parents=True, exist_ok=True)
    fleet["store"] = str(store)
    ids = job_ids_of(jobs)
    names = [f"job-{i:03d}" for i in range(jobs)]
    ends = sorted({max(1, jobs * (b + 1) // batches) for b in range(batches)})
    text_for = {end: manifest_text(end, fleet, extra=extra) for end in ends}
    fraction = done_fraction
    if history_cap is not None and jobs * done_fraction > history_cap:
        fraction = history_cap / jobs
    path = root / "ledger.git"
    subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(path)],
                   check=True)
    for key, value in SERVER_CONFIG.items():
        subprocess.run(["git", "-C", str(path), "config", key, value], check=True)
    static = {"access.toml": DEFAULT_ACCESS,
              "README.md": b"# bench ledger\n\nSeeded by bench/seed.py with git fast-import.\n"}
    rng = random.Random(seed)
    start = int(time.time()) - 30 * 86400
    history = _history(names, ids, text_for, ends, fraction, running, rng, start)
    proc = subprocess.Popen(["git", "-C", str(path), "fast-import", "--quiet", "--done",
                             "--force"], stdin=subprocess.PIPE)
    assert proc.stdin
    count = 0
    for chunk in _stream(history, static):
        proc.stdin.write(chunk)
        count += 1
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError("git fast-import failed")
    install_hooks(path)
    held = {}
    order = list(range(jobs))
    random.Random(seed).shuffle(order)
    for n, i in enumerate(order[int(jobs * fraction): int(jobs * fraction) + running]):
        held[ids[i]] = WORKERS[n % len(WORKERS)]
    return Seeded(str(path), path, store, jobs, count - 1, tuple(ids), held,
                  time.perf_counter() - started)
