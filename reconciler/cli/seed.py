"""`reconciler import-seed DB ARTIFACT_DIR --ledger URL`: the seed fleet's work,
brought into the ledger so nothing it trained is trained again.

The seed fleet kept its queue in SQLite, one table
`jobs(job_id, name, spec_json, status, ..., artifact_id, ...)`, and its bundles
at `<ARTIFACT_DIR>/<model>_<mode>/<sha256>/bundle.tar.zst`. Its job id is
`sha256(json.dumps(identity, sort_keys=True))[:16]` over the identity fields
with its defaults filled in. Each row is matched to the manifest's job with the
same identity; a completed row's bundle is re-hashed, copied into the store and
the job marked completed (an operator's `import` transition). Every other row
leaves its job pending. Rows that cannot be matched are reported with why.
Running it again changes nothing: imported jobs are already completed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.cli.main import add_ledger_arg, state_dir_default
from reconciler.protocol.errors import LedgerError
from reconciler.protocol.identity import IDENTITY_FIELDS

SEED_DEFAULTS: dict[str, Any] = {"mode": "realistic", "split_recipe": "host",
                                 "train_hosts": ["elliott-thinkpad"], "seed": 0}
SEED_STATUSES = ("pending", "claimed", "running", "completed", "failed", "cancelled")


class SeedError(LedgerError):
    """The seed fleet's database or artifact tree cannot be read."""


def seed_identity(spec: dict[str, Any]) -> dict[str, Any]:
    """The identity fields of a seed spec, the seed's defaults filled in."""
    return {k: spec.get(k, SEED_DEFAULTS.get(k)) for k in IDENTITY_FIELDS}


def seed_job_id(spec: dict[str, Any]) -> str:
    """The seed fleet's job id: json's default separators, keys sorted."""
    return hashlib.sha256(json.dumps(seed_identity(spec), sort_keys=True).encode()
                          ).hexdigest()[:16]


def _canonical(identity: dict[str, Any]) -> str:
    return json.dumps(identity, sort_keys=True)


@dataclass
class SeedRow:
    job_id: str
    name: str
    status: str
    spec: dict[str, Any]
    artifact_id: str | None


@dataclass
class ImportReport:
    imported: list[dict[str, Any]] = field(default_factory=list)  # completed now
    already: list[dict[str, Any]] = field(default_factory=list)  # completed before
    pending: list[dict[str, Any]] = field(default_factory=list)  # left to train here
    unmatched: list[dict[str, Any]] = field(default_factory=list)  # with a reason
    commit: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_seed(db: Path) -> list[SeedRow]:
    if not db.is_file():
        raise SeedError(f"{db}: no such file (the seed fleet's SQLite queue)")
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT job_id, name, spec_json, status, artifact_id FROM jobs "
                               "ORDER BY created_at, job_id").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise SeedError(f"{db}: not the seed fleet's queue ({exc})") from None
    out = []
    for job_id, name, spec_json, status, artifact_id in rows:
        try:
            spec = json.loads(spec_json)
        except (TypeError, json.JSONDecodeError) as exc:
            spec = {"__error__": f"spec_json is not JSON: {exc}"}
        if not isinstance(spec, dict):
            spec = {"__error__": "spec_json is not a JSON object"}
        out.append(SeedRow(str(job_id), str(name or ""), str(status), spec, artifact_id))
    return out


def bundle_path(artifacts: Path, spec: dict[str, Any], sha: str) -> Path:
    ident = seed_identity(spec)
    return artifacts / f"{ident['model']}_{ident['mode']}" / sha / "bundle.tar.zst"


def plan_import(rows: list[SeedRow], specs: dict[str, Any], states: dict[str, Any],
                artifacts: Path) -> tuple[ImportReport, list[tuple[SeedRow, str, Path]]]:
    """Match rows to manifest jobs; returns the report so far and the completed
    rows to import as (row, ledger job id, bundle path)."""
    from reconciler.protocol.schema import Status

    by_identity = {_canonical(s.identity()): s for s in specs.values()}
    report, todo = ImportReport(), []
    for row in rows:
        where = {"seed_job_id": row.job_id, "name": row.name, "status": row.status}
        if "__error__" in row.spec:
            report.unmatched.append({**where, "reason": row.spec["__error__"]})
            continue
        if row.status not in SEED_STATUSES:
            report.unmatched.append({**where, "reason": f"unknown seed status {row.status!r}"})
            continue
        computed = seed_job_id(row.spec)
        if computed != row.job_id:
            report.unmatched.append({**where, "reason": f"job_id is not the seed's id of its "
                                     f"spec_json (that is {computed}): the row was edited"})
            continue
        identity = seed_identity(row.spec)
        spec = by_identity.get(_canonical(identity))
        if spec is None:
            report.unmatched.append({**where, "reason": "no job in the manifest with this "
                                     f"identity {_canonical(identity)}: add it, then run "
                                     "import-seed again"})
            continue
        state = states.get(spec.job_id)
        entry = {**where, "job": spec.name, "job_id": spec.job_id}
        if state is None:
            report.unmatched.append({**entry, "reason": "the job has no state file yet: let "
                                     "the reconciler create it (one pass), then run again"})
        elif state.status is Status.COMPLETED:
            report.already.append({**entry, "sha256": state.artifact.sha256})
        elif row.status != "completed":
            report.pending.append({**entry, "ledger_status": state.status.value})
        elif state.status is not Status.PENDING:
            report.unmatched.append({**entry, "reason": f"the job is {state.status.value} in "
                                     "the ledger: only a pending job is imported"})
        elif not isinstance(row.artifact_id, str) or len(row.artifact_id) != 64:
            report.unmatched.append({**entry, "reason": "completed without an artifact_id"})
        else:
            todo.append((row, spec.job_id, bundle_path(artifacts, row.spec, row.artifact_id)))
    return report, todo


def import_seed(db: Path, artifacts: Path, ledger_url: str, store_url: str | None,
                state_dir: Path, identity: str) -> ImportReport:
    from reconciler.git.ledger import Ledger
    from reconciler.git.push import Proposal
    from reconciler.protocol import transitions
    from reconciler.protocol.schema import Status
    from reconciler.protocol.state import Artifact
    from reconciler.protocol.storeurl import resolve
    from reconciler.store.backends import open_store, sha256_file

    rows = read_seed(db)
    if not artifacts.is_dir():
        raise SeedError(f"{artifacts}: no such directory (the seed fleet's artifacts)")
    ledger = Ledger(ledger_url, state_dir / "ledger.git", identity)
    try:
        snap = ledger.snapshot(ledger.fetch())
        if snap.manifest is None:
            raise LedgerError(f"the ledger's manifest is invalid: {snap.manifest_error}")
        report, todo = plan_import(rows, snap.manifest.specs, snap.states, artifacts)
        store = open_store(resolve(store_url, snap.manifest.fleet.store, ledger_url), state_dir)
        verified: dict[str, tuple[SeedRow, Artifact]] = {}
        for row, job_id, path in todo:
            where = {"seed_job_id": row.job_id, "name": row.name, "status": row.status,
                     "job_id": job_id, "bundle": str(path)}
            if not path.is_file():
                report.unmatched.append({**where, "reason": "bundle not found"})
                continue
            sha, _size = sha256_file(path)
            if sha != row.artifact_id:
                report.unmatched.append({**where, "reason": f"bundle re-hashes to {sha}, not "
                                         "its artifact_id: left pending"})
                continue
            art = store.put_file(path)  # the store re-hashes as it writes
            verified[job_id] = (row, Artifact(sha256=art.sha256, size=art.size))

        def build(s):
            steps = []
            for job_id, (_row, art) in verified.items():
                old = s.states.get(job_id)
                if old is None or old.status is not Status.PENDING:
                    continue  # moved since we read it: run again to see why
                steps.append(transitions.import_result(old, art))
            if not steps:
                return None
            return Proposal.of_states(
                [step.new for step in steps], [step.change for step in steps],
                subject=f"import {len(steps)} completed jobs from the seed fleet",
                body=f"from {db.name}, bundles re-hashed")

        outcome = ledger.write(build) if verified else None
        report.commit = outcome.commit if outcome else None
        for job_id, (row, art) in verified.items():
            report.imported.append({"seed_job_id": row.job_id, "name": row.name,
                                    "job_id": job_id, "sha256": art.sha256, "size": art.size})
    finally:
        ledger.close()
    return report


def cmd_import_seed(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir or state_dir_default("import-seed"))
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    report = import_seed(Path(args.db), Path(args.artifact_dir), args.ledger, args.store,
                         state_dir, args.as_)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
        return 0
    for r in report.imported:
        print(f"imported   {r['name'] or r['seed_job_id']} -> {r['job_id']} completed, "
              f"bundle {r['sha256'][:12]} ({r['size']} bytes) verified into the store")
    for r in report.already:
        print(f"unchanged  {r['job']} ({r['job_id']}): already completed")
    for r in report.pending:
        print(f"pending    {r['job']} ({r['job_id']}): seed row was {r['status']}; "
              f"{r['ledger_status']} here")
    for r in report.unmatched:
        print(f"unmatched  {r['name'] or r['seed_job_id']} (seed {r['seed_job_id']}, "
              f"{r['status']}): {r['reason']}")
    print(f"{len(report.imported)} imported, {len(report.already)} already completed, "
          f"{len(report.pending)} left pending, {len(report.unmatched)} unmatched"
          + (f"; commit {report.commit[:12]}" if report.commit else "; no commit"))
    return 0


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("db", help="the seed fleet's SQLite queue")
    parser.add_argument("artifact_dir", help="the seed fleet's artifact directory")
    add_ledger_arg(parser)
    parser.add_argument("--store", help="store path or URL (default: the manifest's)")
    parser.add_argument("--as", dest="as_", default="operator",
                        help="the operator identity to write as on a local ledger")
    parser.add_argument("--state-dir", help="where the ledger cache lives")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=cmd_import_seed)
