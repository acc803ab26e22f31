"""Property tests for the bad-input matrix (tests/BAD_INPUTS.md), on the pure pieces the
hook and the reconciler judge with: `load_manifest`, `parse_state`,
`check_transition` and `load_access`.

For any input they either accept it or raise one of the product's `LedgerError`
subclasses whose message names what is wrong (file, job, field); they never
accept an invalid ledger: a generated valid manifest with one rule broken is
refused naming that rule's job and field, and no accepted state change breaks
the fencing rules, checked here against an oracle written out independently of
`transitions.TABLE`. Deep nesting and huge inputs included. (Random and mutated
manifest *bytes* are in tests/unit/test_manifest.py.)
"""

from __future__ import annotations

import json
import math
import re
import string

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from reconciler.protocol.access import load_access
from reconciler.protocol.errors import AccessDenied, IllegalTransition, LedgerError, ManifestError
from reconciler.protocol.manifest import load_manifest
from reconciler.protocol.state import (
    HELD,
    MAX_STATE_BYTES,
    STATE_SCHEMA,
    Artifact,
    JobState,
    Status,
    parse_state,
    state_path,
)
from reconciler.protocol.transitions import Actor, Role, check_transition

FILE = "ledger/manifest.toml"
SLOW = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ------------------------------------------------------------ TOML rendering


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise TypeError(value)


def render(doc: dict) -> str:
    """The manifest shapes used here: top-level values, [tables], [tables.x], [[jobs]]."""
    lines = [f"{k} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict | list)
             or (isinstance(v, list) and k != "jobs")]
    for key, value in doc.items():
        if key in ("trainers", "hosts") and isinstance(value, dict):
            for name, table in value.items():
                lines += ["", f"[{key}.{json.dumps(name)}]"]
                lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
        elif isinstance(value, dict):
            lines += ["", f"[{key}]"]
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()]
    for job in doc.get("jobs", []):
        lines += ["", "[[jobs]]"]
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in job.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ valid manifests

names = st.from_regex(r"\A[a-z][a-z0-9-]{0,11}\Z")
hyper_keys = st.sampled_from(["lr", "depth", "n_estimators", "dropout", "seconds"])
hyper_values = st.one_of(st.booleans(), st.integers(-1000, 1000),
                         st.floats(-10, 10, allow_nan=False), st.text(string.ascii_letters,
                                                                      max_size=8))


@st.composite
def manifests(draw) -> dict:
    """A valid manifest as a dict: every job distinct by seed, every hyper key declared."""
    beat = draw(st.floats(0.1, 60))
    job_names = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    jobs = []
    for i, name in enumerate(job_names):
        job = {"name": name, "model": "quick", "seed": i}
        if draw(st.booleans()):
            job["hyper"] = draw(st.dictionaries(hyper_keys, hyper_values, max_size=3))
        if draw(st.booleans()):
            job["priority"] = draw(st.integers(-100, 100))
        if draw(st.booleans()):
            job["min_ram_gib"] = draw(st.floats(0, 64, allow_nan=False))
        if draw(st.booleans()):
            job["min_cores"] = draw(st.integers(0, 64))
        jobs.append(job)
    return {
        "schema_version": 1,
        "name": draw(names),
        "fleet": {"heartbeat_s": beat, "stale_after_s": beat * draw(st.floats(2, 100)),
                  "max_attempts": draw(st.integers(1, 10))},
        "trainers": {"quick": {"command": ["python", "-m", "quick"],
                               "hyper": ["lr", "depth", "n_estimators", "dropout", "seconds"]}},
        "jobs": jobs,
    }


@SLOW
@given(manifests())
def test_generated_manifests_are_valid(doc: dict) -> None:
    """The generator's manifests load: so a refusal below is the mutation's doing."""
    loaded = load_manifest(render(doc).encode(), filename=FILE)
    assert [s.name for s in loaded.specs.values()] == [j["name"] for j in doc["jobs"]]


def job_mutations(job: dict) -> list[tuple[str, object, str]]:
    """(field, bad value, what the message must name) for one job."""
    return [
        ("priorty", 3, "'priorty'"),  # misspelt key
        ("seeed", 1, "'seeed'"),
        ("min_ram_gib", float("nan"), "'min_ram_gib'"),
        ("min_ram_gib", float("inf"), "'min_ram_gib'"),
        ("min_ram_gib", -1.0, "'min_ram_gib'"),
        ("min_vram_gib", 1e300, "'min_vram_gib'"),
        ("min_cores", -1, "'min_cores'"),
        ("min_cores", 10**12, "'min_cores'"),
        ("priority", "10", "'priority'"),  # a string where TOML has an int
        ("require_cuda", 1, "'require_cuda'"),
        ("seed", -5, "'seed'"),
        ("hyper", {**job.get("hyper", {}), "learning_rte": 0.1}, "'hyper.learning_rte'"),
        ("hyper", {"lr": 2**70}, "'hyper"),
        ("name", "has space", "'name'"),
        ("allowed_hosts", "desktop", "'allowed_hosts'"),
        ("model", "nosuch", "'model'"),
    ]


@SLOW
@given(manifests(), st.data())
def test_one_broken_job_field_is_refused_naming_file_job_and_field(doc: dict, data) -> None:
    index = data.draw(st.integers(0, len(doc["jobs"]) - 1))
    job = doc["jobs"][index]
    field, value, named = data.draw(st.sampled_from(job_mutations(job)))
    job[field] = value
    with pytest.raises(ManifestError) as err:
        load_manifest(render(doc).encode(), filename=FILE)
    message = str(err.value)
    assert message.startswith(FILE + ": "), message
    shown = job["name"] if field != "name" else None
    assert f"jobs[{index}]" in message, message
    if shown:
        assert repr(shown) in message, message
    assert named in message, message


FLEET_MUTATIONS = [
    ("fleet", "heartbeat_s", float("nan"), "heartbeat_s"),
    ("fleet", "stale_after_s", -1.0, "stale_after_s"),
    ("fleet", "stale_after_s", 0.01, "stale_after_s"),  # under 2 x heartbeat_s
    ("fleet", "max_attempts", 0, "max_attempts"),
    ("fleet", "max_attemps", 3, "max_attemps"),
    ("trainers", "command", "python train.py", "command"),  # a shell string
    ("trainers", "comand", ["x"], "comand"),
    ("top", "shema_version", 1, "shema_version"),
    ("top", "schema_version", 2, "schema_version"),
]


@SLOW
@given(manifests(), st.sampled_from(FLEET_MUTATIONS))
def test_one_broken_table_field_is_refused_naming_it(doc: dict, mutation) -> None:
    where, field, value, named = mutation
    if where == "fleet":
        doc["fleet"][field] = value
    elif where == "trainers":
        doc["trainers"]["quick"][field] = value
    else:
        doc[field] = value
    with pytest.raises(ManifestError) as err:
        load_manifest(render(doc).encode(), filename=FILE)
    message = str(err.value)
    assert message.startswith(FILE + ": ") and named in message, message


@settings(max_examples=12, deadline=None)
@given(manifests(), st.integers(1_000, 50_000), st.sampled_from(["[", "{ a = ", "[{ b = ["]))
def test_deep_nesting_inside_a_job_is_a_clean_error(doc: dict, depth: int, opener: str) -> None:
    text = render(doc).replace('"model" = "quick"', '"model" = "quick"\n"mode" = '
                               + opener * depth, 1)
    with pytest.raises(ManifestError) as err:
        load_manifest(text.encode(), filename=FILE)
    assert str(err.value).startswith(FILE + ": ")


# ------------------------------------------------------------------ state files

JOB_ID = "0123456789abcdef"
PATH = state_path(JOB_ID)


@st.composite
def job_states(draw, job_id: str = JOB_ID) -> JobState:
    """Any valid state file (holder exactly when held, artifact exactly when completed)."""
    status = draw(st.sampled_from(list(Status)))
    attempt = draw(st.integers(1 if status in HELD else 0, 6))
    return JobState(
        job_id=job_id, name=draw(st.sampled_from(["job-a", "job-b"])), status=status,
        attempt=attempt,
        holder=draw(st.sampled_from(["w1", "w2"])) if status in HELD else None,
        lost=draw(st.integers(0, 5)), cpu_ok=draw(st.booleans()),
        artifact=Artifact(sha256="ab" * 32, size=draw(st.integers(0, 10**6)))
        if status is Status.COMPLETED else None,
        last_error=draw(st.none() | st.text(max_size=40)),
    )


def judged(data: bytes) -> JobState | str:
    """parse_state returns a state or one message naming the file; it never raises."""
    result = parse_state(data, JOB_ID)
    if isinstance(result, str):
        assert result.startswith(PATH + ": "), result
        assert "Traceback" not in result
    return result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)


@SLOW
@given(st.binary(max_size=4096))
def test_random_bytes_are_a_state_error_never_a_crash(data: bytes) -> None:
    judged(data)


@SLOW
@given(job_states())
def test_every_valid_state_round_trips(state: JobState) -> None:
    assert judged(state.to_json().encode()) == state


FIELDS = sorted(STATE_SCHEMA["properties"])


@SLOW
@given(job_states(), st.sampled_from(FIELDS), json_values)
def test_one_changed_field_is_accepted_only_if_valid_and_else_named(
        state: JobState, field: str, value: object) -> None:
    raw = state.model_dump()
    raw[field] = value
    result = judged(json.dumps(raw).encode())
    if isinstance(result, JobState):
        # accepted: then it is a valid state, and it says what was written
        assert result.model_dump() == {**raw, "status": Status(raw["status"]).value}
        assert (result.status in HELD) == (result.holder is not None)
        assert result.job_id == JOB_ID
    else:
        assert f"'{field}" in result or "holder" in result or "artifact" in result \
            or "attempt" in result or "job_id" in result, result


@SLOW
@given(job_states(), st.text(string.ascii_lowercase + "_", min_size=1, max_size=12))
def test_an_unknown_state_field_is_refused_by_name(state: JobState, key: str) -> None:
    assume(key not in STATE_SCHEMA["properties"])
    raw = {**state.model_dump(), key: 1}
    assert f"field '{key}': unknown field" in judged(json.dumps(raw).encode())


@settings(max_examples=20, deadline=None)
@given(st.integers(1_000, 200_000), st.sampled_from(["[", '{"a":']))
@example(depth=100_000, opener="[")
def test_deeply_nested_json_is_a_state_error(depth: int, opener: str) -> None:
    result = judged((opener * depth).encode())
    assert isinstance(result, str)


def test_a_state_file_over_64k_is_refused_by_size() -> None:
    state = JobState(job_id=JOB_ID, name="job-a", status=Status.PENDING)
    big = state.to_json().encode() + b" " * MAX_STATE_BYTES
    assert judged(big) == f"{PATH}: state file is {len(big)} bytes, over 64 KiB"


def test_a_huge_number_is_a_state_error() -> None:
    raw = JobState(job_id=JOB_ID, name="job-a", status=Status.PENDING).model_dump()
    text = json.dumps(raw).replace('"attempt": 0', '"attempt": ' + "9" * 5000)
    assert "'(file)'" in judged(text.encode()) or "'attempt'" in judged(text.encode())


def test_a_state_under_another_jobs_path_is_refused() -> None:
    other = JobState(job_id="fedcba9876543210", name="job-a", status=Status.PENDING)
    assert "does not match its path" in judged(other.to_json().encode())


# ----------------------------------------------------------------- transitions

actors = st.builds(Actor, st.sampled_from(["w1", "w2", "operator", "reconciler"]),
                   st.sampled_from(list(Role)))


def fencing_oracle(old: JobState, new: JobState, actor: Actor, max_attempts: int) -> str | None:
    """The rules, written out again: why an accepted change would be illegal."""
    if new.attempt < old.attempt:
        return "attempt fell"
    if actor.role is Role.WORKER:
        if new.status is Status.CLAIMED and old.status is not Status.CLAIMED:
            if old.status is not Status.PENDING:
                return "claimed a job that was not pending"
            if new.attempt != old.attempt + 1 or new.holder != actor.name:
                return "a claim raises the attempt by one, for the claimer"
            return None
        if old.status not in HELD or old.holder != actor.name or new.attempt != old.attempt:
            return "a worker wrote a job it does not hold at that attempt"
        if new.lost not in (old.lost, old.lost + 1):
            return "budget changed by more than one"
        return None
    if new.attempt != old.attempt:
        return f"{actor.role.value} changed the attempt"
    if new.status is Status.COMPLETED and old.status is not Status.COMPLETED:
        imported = (actor.role is Role.OPERATOR and old.status is Status.PENDING
                    and new.artifact is not None and new.lost == old.lost
                    and new.holder is None)
        if not imported:  # import-seed: the seed fleet's verified result
            return "only a worker completes, or an operator imports a pending job"
    if actor.role is Role.RECONCILER and old.status in HELD and new.status is Status.FAILED \
            and new.lost < max_attempts:
        return "swept to failed with budget left"
    if actor.role is Role.RECONCILER and old.status in HELD and new.status is Status.PENDING \
            and new.lost >= max_attempts:
        return "swept to pending with the budget spent"
    return None


@settings(max_examples=500, deadline=None)
@given(job_states(), job_states(), actors, st.integers(1, 5))
def test_accepted_transitions_obey_fencing_and_refusals_name_job_and_attempt(
        old: JobState, new: JobState, actor: Actor, max_attempts: int) -> None:
    try:
        verdict = check_transition(old, new, actor, max_attempts=max_attempts)
    except IllegalTransition as exc:
        message = str(exc)
        assert f"job {old.name} ({old.job_id}) attempt {old.attempt}" in message, message
        assert "refused: " in message
        if old.status in HELD:
            assert f"held by {old.holder}" in message, message
        return
    assert verdict.label == f"{old.status.value}->{new.status.value}"
    assert fencing_oracle(old, new, actor, max_attempts) is None, (old, new, actor, verdict)


@settings(max_examples=100, deadline=None)
@given(job_states(), st.integers(1, 5), st.sampled_from(["w1", "w2"]))
def test_a_stale_attempt_is_always_refused(state: JobState, behind: int, worker: str) -> None:
    """Whatever a worker writes for an attempt older than the ledger's is refused."""
    assume(state.attempt > behind)  # a held state names attempt 1 or more
    stale = state.attempt - behind
    for status in (Status.RUNNING, Status.COMPLETED, Status.FAILED, Status.PENDING):
        new = state.model_copy(update={
            "status": status, "attempt": stale, "holder": worker if status in HELD else None,
            "artifact": Artifact(sha256="cd" * 32, size=1) if status is Status.COMPLETED
            else None})
        with pytest.raises(IllegalTransition, match=rf"attempt {state.attempt}\b"):
            check_transition(state, new, Actor(worker, Role.WORKER), max_attempts=3)


@settings(max_examples=300, deadline=None)
@given(job_states(), actors)
def test_deleting_or_creating_a_state_is_judged_too(state: JobState, actor: Actor) -> None:
    with pytest.raises(IllegalTransition, match="never deleted"):
        check_transition(state, None, actor, max_attempts=3)
    try:
        check_transition(None, state, actor, max_attempts=3)
    except IllegalTransition as exc:
        assert state.name in str(exc) and state.job_id in str(exc)
    else:
        assert actor.role is Role.RECONCILER and state.status is Status.PENDING
        assert state.attempt == 0 and state.holder is None and state.lost == 0


# --------------------------------------------------------------------- access


@SLOW
@given(st.binary(max_size=2048))
def test_random_access_bytes_raise_only_access_denied(data: bytes) -> None:
    try:
        load_access(data, filename="access.toml")
    except AccessDenied as exc:
        assert str(exc).startswith("access.toml")


@SLOW
@given(st.dictionaries(st.sampled_from(["operators", "reconcilers", "workers", "operator",
                                        "admins"]),
                       st.one_of(st.lists(st.text(max_size=10), max_size=3), st.integers(),
                                 st.text(max_size=10)), max_size=3))
def test_access_files_are_accepted_only_when_valid(raw: dict) -> None:
    text = "\n".join(f"{k} = {toml_value(v)}" for k, v in raw.items())
    try:
        access = load_access(text.encode(), filename="access.toml")
    except AccessDenied as exc:
        assert str(exc).startswith("access.toml: ")
        return
    assert set(raw) <= {"operators", "reconcilers", "workers"}
    for name in [*access.operators, *access.reconcilers, *(access.workers or [])]:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name), name


@pytest.mark.parametrize("text", [
    "operators = " + "[" * 10_000,
    "a" + ".a" * 10_000 + " = 1",
    "operators = [" + '"x", ' * 200_000 + "]",
])
def test_deep_or_huge_access_files_are_a_clean_error(text: str) -> None:
    with pytest.raises(AccessDenied) as err:
        load_access(text.encode(), filename="access.toml")
    assert str(err.value).startswith("access.toml: ")


def test_every_refusal_is_a_ledger_error() -> None:
    """What the CLI turns into one line (reconciler/cli/main.py) covers all of the above."""
    for cls in (ManifestError, IllegalTransition, AccessDenied):
        assert issubclass(cls, LedgerError)
