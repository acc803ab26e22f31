"""Holes an outside probe found in the hook's rules (issue 19, findings 4, 5, 6, 8),
through real `git push` from real clones into a ledger with the hook installed.
Each push here went through before the fix."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_hook import EMPTY_TREE, Clone, accepted, claim, refused

from ledgerkit import LedgerDir, make_ledger
from reconciler.protocol.state import JobState, Status


@pytest.fixture
def ledger(tmp_path: Path) -> LedgerDir:
    return make_ledger(tmp_path, jobs=3, fleet={"max_attempts": 2})


def beat(clone: Clone, message: str = "heartbeat") -> str:
    return clone.git("commit-tree", EMPTY_TREE, "-m", message).stdout.strip()


# ------------------------------------------------------------- 5: heartbeat refs


def test_heartbeat_annotated_tag(ledger: LedgerDir) -> None:
    """A tag object pointing at a valid beat commit: the hook must judge the pushed
    object itself (a peeled `cat-file commit` saw only the commit)."""
    a = Clone(ledger, "alpha")
    commit = beat(a, "heartbeat alpha")
    body = (f"object {commit}\ntype commit\ntag beat\ntagger alpha <a@x> 0 +0000\n\n"
            + "x" * 200_000 + "\n")
    tag = subprocess.run(["git", "-C", str(a.path), "mktag"], input=body, text=True,
                         capture_output=True, check=True, env=a.env).stdout.strip()
    refused(a, "refs/heartbeats/alpha", "is a tag, not a commit",
            refspec=f"{tag}:refs/heartbeats/alpha")
    assert ledger.git("for-each-ref", "refs/heartbeats").strip() == ""


def test_heartbeat_without_a_role(ledger: LedgerDir) -> None:
    """An identity access.toml no longer lists may not renew a lease."""
    op = Clone(ledger, "operator")
    (op.path / "access.toml").write_text('operators = ["operator"]\nworkers = ["beta"]\n')
    op.commit("only beta works here")
    accepted(op)
    a = Clone(ledger, "alpha")
    refused(a, "identity 'alpha' has no role in access.toml; it may not heartbeat",
            refspec=f"{beat(a)}:refs/heartbeats/alpha")
    b = Clone(ledger, "beta")
    assert b.push(f"{beat(b)}:refs/heartbeats/beta").returncode == 0


# ------------------------------------------------------------- 4: ref-safe names


@pytest.mark.parametrize("name", ["w1.lock", "a..b", "host."])
def test_pusher_name_not_a_ref_component(ledger: LedgerDir, name: str) -> None:
    w = Clone(ledger, name)
    w.change("job-000", status=Status.CLAIMED, attempt=1, holder=name)
    refused(w, f"pusher identity {name!r}: not a valid name")


def test_manifest_host_not_a_ref_component(ledger: LedgerDir) -> None:
    op = Clone(ledger, "operator")
    text = (op.path / "manifest.toml").read_text()
    (op.path / "manifest.toml").write_text(text + '\n[hosts."w1.lock"]\n')
    op.commit("a host named like a lock file")
    refused(op, "host name 'w1.lock'", "may not end with '.lock'")


# ------------------------------------------------------ 6: authors under a worker's name


def test_operator_authors_as_a_worker_with_workers_unset(ledger: LedgerDir) -> None:
    """`workers` unset: every valid name is a worker's, so an operator's commit
    authored "alpha" would read in `reconciler log` as alpha's own cancel."""
    forged = Clone(ledger, "operator", author="alpha")
    forged.change("job-000", status=Status.CANCELLED)
    refused(forged, "author 'alpha' is not the pusher 'operator'", "`workers` unset")
    # a full name (no identity can have a space) is still the operator's to use
    named = Clone(ledger, "operator", author="Alice Smith")
    named.sync()
    named.change("job-000", status=Status.CANCELLED)
    accepted(named)


# ---------------------------------------------------------- 8: strict state JSON


def raw_put(clone: Clone, state: JobState, data: bytes) -> None:
    (clone.path / state.path).write_bytes(data)
    clone.commit(f"raw {state.name}")


def claimed(clone: Clone, job: str, **update) -> tuple[JobState, dict]:
    old = clone.state(job)
    new = old.model_copy(update={"status": Status.CLAIMED, "attempt": old.attempt + 1,
                                 "holder": clone.identity})
    return old, {**new.model_dump(), **update}


def test_state_name_changed_in_a_claim(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    old, doc = claimed(a, "job-000", name="renamed")
    raw_put(a, old, json.dumps(doc, sort_keys=True, indent=2).encode() + b"\n")
    refused(a, "name may not change in a move")


def test_state_trailing_newline_in_a_pattern(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    state = claim(a, "job-000")
    state = state.model_copy(update={"status": Status.RUNNING})
    a.put(state)
    a.commit("start")
    accepted(a)
    doc = {**state.model_dump(), "status": "completed", "holder": None,
           "artifact": {"sha256": "a" * 64 + "\n", "size": 1}}
    raw_put(a, state, json.dumps(doc, sort_keys=True, indent=2).encode() + b"\n")
    refused(a, "field 'artifact.sha256'", "does not match")


def test_state_utf16(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    old, doc = claimed(a, "job-000")
    raw_put(a, old, json.dumps(doc, sort_keys=True, indent=2).encode("utf-16"))
    refused(a, "not UTF-8")


def test_state_duplicate_keys(ledger: LedgerDir) -> None:
    a = Clone(ledger, "alpha")
    old, doc = claimed(a, "job-000")
    text = json.dumps(doc, sort_keys=True, indent=2)
    text = text.replace('"status": "claimed"', '"status": "pending",\n  "status": "claimed"')
    raw_put(a, old, text.encode() + b"\n")
    refused(a, "field 'status': duplicate key")
