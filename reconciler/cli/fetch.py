"""`reconciler fetch-artifact JOB DEST`: a completed job's outputs, safely.

The bundle named by the ledger is read from the store (a path or ssh://), its
sha256 is checked while it is read, and only then is it unpacked, by
`unpack.unpack`, into DEST, which must not exist or be empty. Bundles are
attacker data as far as this command knows (docs/failure-model.md, security rules 9-10), so a
refused bundle leaves DEST as it was and nothing outside it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from reconciler.cli.jobref import resolve_job
from reconciler.cli.main import add_ledger_arg, state_dir_default
from reconciler.protocol.errors import BundleError, LedgerError
from reconciler.protocol.schema import JobState, Status
from reconciler.store.download import download


def check_dest(dest: Path) -> bool:
    """DEST must not exist or be an empty directory; returns whether it existed."""
    if dest.is_symlink():
        raise LedgerError(f"{dest}: is a symlink; give a new directory")
    if not dest.exists():
        if not dest.parent.is_dir():
            raise LedgerError(f"{dest.parent}: no such directory")
        return False
    if not dest.is_dir() or any(dest.iterdir()):
        raise LedgerError(f"{dest}: exists and is not an empty directory")
    return True


def _clear(dest: Path, existed: bool) -> None:
    """Undo a partial unpack: DEST goes back to what it was (absent or empty)."""
    if not dest.exists() or dest.is_symlink():
        return
    if existed:
        for child in dest.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    else:
        shutil.rmtree(dest)


def fetch_artifact(ledger_url: str, job: str, dest: Path, store_url: str | None,
                   state_dir: Path, caps: dict[str, int] | None = None) -> tuple[JobState, int]:
    """Unpack JOB's bundle into DEST; returns the job and the number of members."""
    from reconciler.git.ledger import Ledger
    from reconciler.store.backends import open_store
    from reconciler.store.unpack import unpack

    existed = check_dest(dest)
    identity = os.environ.get("TRAINLEDGER_IDENTITY") or "operator"
    ledger = Ledger(ledger_url, state_dir / "ledger.git", identity)
    try:
        snap = ledger.snapshot(ledger.fetch())
    finally:
        ledger.close()
    names = {s.job_id: s.name for s in snap.manifest.specs.values()} if snap.manifest else {}
    state = resolve_job(snap.states, names, job)
    if state.status is not Status.COMPLETED or state.artifact is None:
        raise LedgerError(f"job {state.name} ({state.job_id}) is {state.status.value}: "
                          "only a completed job has an artifact")
    from reconciler.protocol.storeurl import describe_store, resolve

    url = resolve(store_url, snap.manifest.fleet.store if snap.manifest else None, ledger_url)
    store = open_store(url, state_dir)
    print(f"reading bundle {state.artifact.sha256[:12]} from {describe_store(store)}", flush=True)
    art = state.artifact
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=state_dir) as tmp:
        bundle = download(store, art.sha256, art.size, Path(tmp))
        try:
            members = len(unpack(bundle, dest, **(caps or {})))
        except BaseException:
            _clear(dest, existed)
            raise
    return state, members


def cmd_fetch(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir or state_dir_default("fetch"))
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        caps = {k: v for k, v in (("max_members", args.max_members),
                                  ("max_bytes", args.max_bytes)) if v is not None}
        state, members = fetch_artifact(args.ledger, args.job, Path(args.dest).absolute(),
                                        args.store, state_dir, caps)
    except BundleError as exc:
        raise LedgerError(f"refused the bundle, nothing written: {exc}") from None
    art = state.artifact
    assert art is not None
    print(f"{state.name} ({state.job_id}): unpacked bundle {art.sha256[:12]} "
          f"({art.size} bytes, {members} members) into {args.dest}")
    return 0


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job id, unique id prefix, or name")
    parser.add_argument("dest", help="directory to unpack into: must not exist or be empty")
    add_ledger_arg(parser)
    parser.add_argument("--store", help="store path or ssh:// URL (default: the manifest's)")
    parser.add_argument("--state-dir", help="where the ledger cache and ssh socket live")
    from reconciler.cli.util import positive_int

    parser.add_argument("--max-members", type=positive_int,
                        help="refuse a bundle with more members")
    parser.add_argument("--max-bytes", type=positive_int,
                        help="refuse a bundle that unpacks to more bytes")
    parser.set_defaults(func=cmd_fetch)
