"""The JSON Schemas in docs/ are exactly what the code exports, and state files
are canonical JSON (sorted keys, 2-space indent, trailing newline)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ledgerkit import make_ledger
from reconciler.protocol.schema import SCHEMAS, schema_text
from reconciler.protocol.state import STATE_SCHEMA, JobState, Status, parse_state, state_path

ART = {"sha256": "ab" * 32, "size": 123}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_docs_schema_is_what_the_code_exports(repo_root: Path, name: str) -> None:
    doc = repo_root / "docs" / f"{name}.schema.json"
    assert doc.read_text() == schema_text(name), (
        f"{doc} is stale: run `python -m reconciler.protocol.schema` and commit docs/")


def test_no_schema_in_docs_without_a_source(repo_root: Path) -> None:
    documented = {p.name.removesuffix(".schema.json")
                  for p in (repo_root / "docs").glob("*.schema.json")}
    assert documented == set(SCHEMAS)


def _objects(node: object, path: str = "$"):
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict):
            yield path, node
        for key, value in node.items():
            yield from _objects(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, f"{path}[{i}]")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_object_is_closed_and_every_field_described(name: str) -> None:
    schema = json.loads(schema_text(name))
    objects = list(_objects(schema))
    assert objects
    for path, obj in objects:
        assert obj.get("additionalProperties") is False, f"{name}: {path} accepts unknown keys"
        for key, prop in obj["properties"].items():
            assert prop.get("description"), f"{name}: {path}.{key} has no description"


def test_schema_text_is_canonical_json() -> None:
    for name in SCHEMAS:
        text = schema_text(name)
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_the_state_schema_and_the_state_class_name_the_same_fields() -> None:
    fields = {f.name for f in dataclasses.fields(JobState)}
    assert set(STATE_SCHEMA["properties"]) == fields
    assert set(STATE_SCHEMA["required"]) == {"job_id", "name", "status"}
    assert STATE_SCHEMA["properties"]["status"]["enum"] == [s.value for s in Status]


def canonical(data: bytes) -> bytes:
    return (json.dumps(json.loads(data), sort_keys=True, indent=2) + "\n").encode()


@pytest.mark.parametrize("state", [
    JobState(job_id="0123456789abcdef", name="j", status=Status.PENDING),
    JobState(job_id="0123456789abcdef", name="j", status=Status.RUNNING, attempt=3,
             holder="desktop", lost=1, cpu_ok=True),
    JobState(job_id="0123456789abcdef", name="j", status=Status.COMPLETED, attempt=1,
             artifact=ART),
    JobState(job_id="0123456789abcdef", name="j", status=Status.FAILED, attempt=2,
             last_error="exit 1: \u00e9 \"quoted\"\nline two"),
], ids=lambda s: s.status.value)
def test_state_to_json_is_canonical_and_round_trips(state: JobState) -> None:
    data = state.to_json().encode()
    assert data == canonical(data)
    assert data.endswith(b"}\n") and b'\n  "attempt": ' in data
    assert list(json.loads(data)) == sorted(json.loads(data))
    assert parse_state(data, state.job_id) == state
    assert state.path == state_path(state.job_id) == "state/01/0123456789abcdef.json"


def test_the_ledgers_state_files_are_canonical(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=4, hooks=False)
    listing = led.git("ls-tree", "-r", "main", "state").splitlines()
    assert len(listing) == 4
    for line in listing:
        meta, path = line.split("\t")
        blob = meta.split()[2]
        data = led.git("cat-file", "blob", blob).encode()
        assert data == canonical(data), path
        state = parse_state(data, Path(path).stem)
        assert isinstance(state, JobState) and state.status is Status.PENDING
        assert path == state.path
