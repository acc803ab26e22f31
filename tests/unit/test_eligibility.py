"""Eligibility is pure: every rule, their combinations, device choice, pick
order and tie randomness, fleet summaries and `worker explain` rows."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerkit import manifest_text
from reconciler.protocol.eligibility import (
    CANCELLED,
    NO_CUDA,
    NO_STATE,
    PREFER_CUDA_WAIT,
    EligibleJobs,
    choose_device,
    explain,
    fleet_reasons,
    gib,
    pick,
    reasons,
)
from reconciler.protocol.identity import JobSpec
from reconciler.protocol.manifest import load_manifest
from reconciler.protocol.schema import Capability, CudaDevice, Host, JobState, Status

JOB_ID = "0123456789abcdef"


def spec(**kw: Any) -> JobSpec:
    base: dict[str, Any] = dict(
        job_id=JOB_ID, index=0, name="gbt-small", model="gbt", mode=None, priority=0,
        require_cuda=False, prefer_cuda=False, min_vram_gib=0.0, min_ram_gib=0.0,
        min_cores=0, allowed_hosts=None, denied_hosts=(), hyper={}, split_recipe=None,
        train_hosts=None, seed=0, n_resamples=None, cancel=False, command=("true",),
        workdir=None, timeout_s=None)
    return JobSpec(**{**base, **kw})


def gpu(index: int = 0, free: float = 20.0, total: float = 24.0) -> CudaDevice:
    return CudaDevice(index=index, name=f"GPU {index}", vram_total_gib=total,
                      vram_free_gib=free)


def cap(devices: list[CudaDevice] | None = None, **kw: Any) -> Capability:
    devices = devices or []
    base: dict[str, Any] = dict(hostname="h", cpu_cores=8, ram_total_gib=32.0,
                                ram_available_gib=16.0, cuda_available=bool(devices),
                                cuda_devices=devices)
    return Capability(**{**base, **kw})


def state(status: Status = Status.PENDING, cpu_ok: bool = False) -> JobState:
    held = status in (Status.CLAIMED, Status.RUNNING)
    return JobState(job_id=JOB_ID, name="gbt-small", status=status, cpu_ok=cpu_ok,
                    attempt=1 if held else 0, holder="other" if held else None,
                    artifact={"sha256": "0" * 64, "size": 1}
                    if status is Status.COMPLETED else None)


CPU = cap()
CUDA = cap([gpu(0, free=1.5), gpu(1, free=6.0)])
PENDING = state()

# (id, spec fields, state, host, capability, expected reasons for worker "desk")
RULES: list[tuple[str, dict[str, Any], JobState | None, Host | None, Capability, list[str]]] = [
    ("plain job, plain host", {}, PENDING, None, CPU, []),
    ("no state", {}, None, None, CPU, [NO_STATE]),
    ("claimed", {}, state(Status.CLAIMED), None, CPU, ["status is claimed"]),
    ("running", {}, state(Status.RUNNING), None, CPU, ["status is running"]),
    ("completed", {}, state(Status.COMPLETED), None, CPU, ["status is completed"]),
    ("failed", {}, state(Status.FAILED), None, CPU, ["status is failed"]),
    ("cancelled state", {}, state(Status.CANCELLED), None, CPU, ["status is cancelled"]),
    ("cancel in manifest", {"cancel": True}, PENDING, None, CPU, [CANCELLED]),
    ("allow_jobs by name", {}, PENDING, Host(allow_jobs=["gbt-*"]), CPU, []),
    ("allow_jobs by model", {}, PENDING, Host(allow_jobs=["gbt"]), CPU, []),
    # the seed fleet read [] as "no whitelist": a seed manifest must not starve the host
    ("allow_jobs empty list is no whitelist", {}, PENDING, Host(allow_jobs=[]), CPU, []),
    ("deny_jobs * takes nothing", {}, PENDING, Host(deny_jobs=["*"]), CPU,
     ["[hosts.desk] deny_jobs ['*'] matches 'gbt-small' or model 'gbt'"]),
    ("allow_jobs no match", {}, PENDING, Host(allow_jobs=["mlp", "cnn-*"]), CPU,
     ["[hosts.desk] allow_jobs ['mlp', 'cnn-*'] matches neither name 'gbt-small' "
      "nor model 'gbt'"]),
    ("allow_jobs is case-sensitive", {}, PENDING, Host(allow_jobs=["GBT"]), CPU,
     ["[hosts.desk] allow_jobs ['GBT'] matches neither name 'gbt-small' nor model 'gbt'"]),
    ("deny_jobs by model", {}, PENDING, Host(deny_jobs=["gbt", "x"]), CPU,
     ["[hosts.desk] deny_jobs ['gbt'] matches 'gbt-small' or model 'gbt'"]),
    ("deny_jobs by name glob", {}, PENDING, Host(deny_jobs=["*-small"]), CPU,
     ["[hosts.desk] deny_jobs ['*-small'] matches 'gbt-small' or model 'gbt'"]),
    ("deny beats allow", {}, PENDING, Host(allow_jobs=["*"], deny_jobs=["gbt"]), CPU,
     ["[hosts.desk] deny_jobs ['gbt'] matches 'gbt-small' or model 'gbt'"]),
    ("deny_jobs no match", {}, PENDING, Host(deny_jobs=["mlp"]), CPU, []),
    ("allowed_hosts includes", {"allowed_hosts": ("desk", "pi")}, PENDING, None, CPU, []),
    ("allowed_hosts excludes", {"allowed_hosts": ("pi",)}, PENDING, None, CPU,
     ["allowed_hosts ['pi'] does not include desk"]),
    ("allowed_hosts empty", {"allowed_hosts": ()}, PENDING, None, CPU,
     ["allowed_hosts [] does not include desk"]),
    ("denied_hosts", {"denied_hosts": ("desk",)}, PENDING, None, CPU,
     ["denied_hosts includes desk"]),
    ("denied_hosts other", {"denied_hosts": ("pi",)}, PENDING, None, CPU, []),
    ("require_cuda on CPU", {"require_cuda": True}, PENDING, None, CPU, [NO_CUDA]),
    ("require_cuda on CUDA", {"require_cuda": True}, PENDING, None, CUDA, []),
    ("require_cuda, devices but cuda off", {"require_cuda": True}, PENDING, None,
     cap([gpu()], cuda_available=False), [NO_CUDA]),
    ("require_cuda, VRAM short", {"require_cuda": True, "min_vram_gib": 8.0}, PENDING, None,
     CUDA, ["needs 8.0 GiB free VRAM, best device has 6.0"]),
    ("require_cuda, VRAM on the best device", {"require_cuda": True, "min_vram_gib": 6.0},
     PENDING, None, CUDA, []),
    ("brief's example", {"require_cuda": True, "min_vram_gib": 4}, PENDING, None,
     cap([gpu(free=1.5)]), ["needs 4.0 GiB free VRAM, best device has 1.5"]),
    ("min_vram alone on CUDA", {"min_vram_gib": 2.0}, PENDING, None, CUDA, []),
    ("min_vram alone, short", {"min_vram_gib": 7.25}, PENDING, None, CUDA,
     ["needs 7.25 GiB free VRAM, best device has 6.0"]),
    ("min_vram alone on CPU", {"min_vram_gib": 2.0}, PENDING, None, CPU,
     ["needs 2.0 GiB free VRAM, no CUDA device"]),
    ("prefer_cuda on CUDA", {"prefer_cuda": True}, PENDING, None, CUDA, []),
    ("prefer_cuda on CPU, waiting", {"prefer_cuda": True}, PENDING, None, CPU,
     [PREFER_CUDA_WAIT]),
    ("prefer_cuda on CPU, opened", {"prefer_cuda": True}, state(cpu_ok=True), None, CPU, []),
    ("prefer_cuda, VRAM short, waiting", {"prefer_cuda": True, "min_vram_gib": 10.0},
     PENDING, None, CUDA, ["needs 10.0 GiB free VRAM, best device has 6.0"]),
    ("prefer_cuda, VRAM short, opened", {"prefer_cuda": True, "min_vram_gib": 10.0},
     state(cpu_ok=True), None, CUDA, []),
    ("prefer_cuda, VRAM short on CPU, opened", {"prefer_cuda": True, "min_vram_gib": 10.0},
     state(cpu_ok=True), None, CPU, []),
    ("require_cuda ignores cpu_ok", {"require_cuda": True}, state(cpu_ok=True), None, CPU,
     [NO_CUDA]),
    ("min_ram met exactly", {"min_ram_gib": 16.0}, PENDING, None, CPU, []),
    ("min_ram short", {"min_ram_gib": 24.0}, PENDING, None, CPU,
     ["needs 24.0 GiB available RAM, host has 16.0"]),
    ("min_ram is against available, not total", {"min_ram_gib": 20.0}, PENDING, None,
     cap(ram_total_gib=64.0, ram_available_gib=3.333),
     ["needs 20.0 GiB available RAM, host has 3.33"]),
    ("min_cores met exactly", {"min_cores": 8}, PENDING, None, CPU, []),
    ("min_cores short", {"min_cores": 9}, PENDING, None, CPU, ["needs 9 cores, host has 8"]),
]


@pytest.mark.parametrize(("spec_kw", "st_", "host", "capability", "expected"),
                         [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_each_rule(spec_kw: dict[str, Any], st_: JobState | None, host: Host | None,
                   capability: Capability, expected: list[str]) -> None:
    assert reasons(spec(**spec_kw), st_, "desk", host, capability) == expected


def test_every_reason_is_collected_in_one_verdict() -> None:
    job = spec(cancel=True, allowed_hosts=("pi",), denied_hosts=("desk",), require_cuda=True,
               min_vram_gib=4.0, min_ram_gib=64.0, min_cores=32)
    got = reasons(job, state(Status.RUNNING), "desk",
                  Host(allow_jobs=["mlp"], deny_jobs=["gbt"]), CPU)
    assert got == [
        "status is running",
        CANCELLED,
        "[hosts.desk] allow_jobs ['mlp'] matches neither name 'gbt-small' nor model 'gbt'",
        "[hosts.desk] deny_jobs ['gbt'] matches 'gbt-small' or model 'gbt'",
        "allowed_hosts ['pi'] does not include desk",
        "denied_hosts includes desk",
        NO_CUDA,
        "needs 64.0 GiB available RAM, host has 16.0",
        "needs 32 cores, host has 8",
    ]


@pytest.mark.parametrize(("a", "b"), [
    ({"require_cuda": True}, {"min_ram_gib": 99.0}),
    ({"prefer_cuda": True}, {"min_cores": 99}),
    ({"cancel": True}, {"denied_hosts": ("desk",)}),
    ({"allowed_hosts": ("pi",)}, {"min_vram_gib": 2.0}),
])
def test_combined_rules_give_the_union_of_single_rules(a: dict, b: dict) -> None:
    alone_a = reasons(spec(**a), PENDING, "desk", None, CPU)
    alone_b = reasons(spec(**b), PENDING, "desk", None, CPU)
    both = reasons(spec(**a, **b), PENDING, "desk", None, CPU)
    assert alone_a and alone_b
    assert sorted(both) == sorted(alone_a + alone_b)


@pytest.mark.parametrize(("value", "text"), [
    (4, "4.0"), (4.0, "4.0"), (1.5, "1.5"), (0.25, "0.25"), (0, "0.0"), (12.345, "12.35")])
def test_gib_format(value: float, text: str) -> None:
    assert gib(value) == text


# --------------------------------------------------------------- choose_device

TWO = cap([gpu(0, free=3.0), gpu(1, free=9.0), gpu(2, free=9.0)])


@pytest.mark.parametrize(("spec_kw", "capability", "device"), [
    ({}, TWO, None),                                      # did not ask for CUDA
    ({"require_cuda": True}, TWO, 1),                     # most free; lowest index on a tie
    ({"prefer_cuda": True}, TWO, 1),
    ({"min_vram_gib": 2.0}, TWO, 1),
    ({"require_cuda": True, "min_vram_gib": 9.0}, TWO, 1),
    ({"require_cuda": True, "min_vram_gib": 9.5}, TWO, None),
    ({"prefer_cuda": True, "min_vram_gib": 12.0}, TWO, None),  # opened to CPU: runs on CPU
    ({"require_cuda": True}, CPU, None),
    ({"require_cuda": True}, cap([gpu()], cuda_available=False), None),
    ({"require_cuda": True}, cap([gpu(3, free=1.0), gpu(7, free=2.0)]), 7),
])
def test_choose_device(spec_kw: dict, capability: Capability, device: int | None) -> None:
    assert choose_device(spec(**spec_kw), capability) == device


def test_chosen_device_meets_the_job_whenever_reasons_allow_it() -> None:
    for free in (0.5, 3.0, 9.0):
        job = spec(require_cuda=True, min_vram_gib=free)
        if not reasons(job, PENDING, "desk", None, TWO):
            chosen = choose_device(job, TWO)
            assert chosen is not None
            assert TWO.cuda_devices[chosen].vram_free_gib >= free


# ------------------------------------------------------------------------ pick


def jobs(priorities: list[int]) -> list[JobSpec]:
    return [spec(job_id=f"{i:016x}", index=i, name=f"j{i}", priority=p)
            for i, p in enumerate(priorities)]


def test_pick_takes_higher_priority_first_strictly() -> None:
    cands = jobs([0, 5, 0, 10, 5, -1])
    for seed in range(50):
        got = pick(cands, 3, random.Random(seed))
        assert [j.priority for j in got] == [10, 5, 5]
    assert [j.name for j in pick(cands, 1, random.Random(0))] == ["j3"]


def test_pick_within_a_priority_is_random_but_seeded() -> None:
    cands = jobs([1] * 10 + [0] * 5)
    first = Counter(pick(cands, 1, random.Random(seed))[0].name for seed in range(400))
    assert set(first) == {f"j{i}" for i in range(10)}  # any of the tier, never a lower one
    assert max(first.values()) < 100  # roughly uniform, not "always the oldest"
    assert pick(cands, 4, random.Random(7)) == pick(cands, 4, random.Random(7))


def test_pick_fills_slots_across_tiers_in_claim_order() -> None:
    cands = jobs([2, 1, 1, 1, 2, 0])
    got = pick(cands, 4, random.Random(3))
    assert [j.priority for j in got] == [2, 2, 1, 1]
    assert [j.name for j in got[:2]] == ["j0", "j4"]  # whole tier taken: manifest order
    assert got[2].index < got[3].index


@pytest.mark.parametrize("slots", [0, -1])
def test_pick_no_slots(slots: int) -> None:
    assert pick(jobs([1, 2]), slots, random.Random(0)) == []


def test_pick_more_slots_than_jobs_and_empty() -> None:
    assert [j.name for j in pick(jobs([0, 3, 1]), 10, random.Random(0))] == ["j1", "j2", "j0"]
    assert pick([], 3, random.Random(0)) == []


def test_eligible_jobs_kept_job_by_job_picks_like_pick() -> None:
    """The worker's incremental set: adds, re-adds with a new priority and
    discards leave it choosing as pick() would over the same jobs."""
    rng = random.Random(5)
    cands = jobs([rng.choice([0, 1, 2]) for _ in range(60)])
    kept = EligibleJobs(cands)
    live = {s.job_id: s for s in cands}
    for step in range(300):
        s = rng.choice(cands)
        if rng.random() < 0.5:
            kept.discard(s.job_id)
            live.pop(s.job_id, None)
        else:
            moved = spec(job_id=s.job_id, index=s.index, name=s.name,
                         priority=rng.choice([0, 1, 2, 3]))
            kept.add(moved)
            live[s.job_id] = moved
        assert len(kept) == len(live) and all(j in kept for j in live)
        got = kept.pick(3, random.Random(step))
        top = sorted((j.priority for j in live.values()), reverse=True)[:3]
        assert [j.priority for j in got] == top
        assert all(live[j.job_id] is j for j in got) and len({j.job_id for j in got}) == len(got)


def test_eligible_jobs_skip_what_the_worker_already_runs() -> None:
    kept = EligibleJobs(jobs([1, 1, 1, 0]))
    for seed in range(30):
        got = kept.pick(2, random.Random(seed), skip={"0000000000000000", "0000000000000001"})
        assert [j.name for j in got] == ["j2", "j3"]
    assert kept.pick(5, random.Random(0), skip=[j.job_id for j in jobs([0] * 4)]) == []


def test_racing_workers_rarely_want_the_same_job() -> None:
    """The point of the random tie-break (docs/architecture.md)."""
    cands = jobs([0] * 100)
    collisions = 0
    for trial in range(200):
        wants = [pick(cands, 1, random.Random(trial * 100 + w))[0].job_id for w in range(4)]
        collisions += len(wants) != len(set(wants))
    assert collisions < 30  # ~6% expected; oldest-first would collide every time


# --------------------------------------------------------------- fleet_reasons


def test_fleet_no_live_worker() -> None:
    assert fleet_reasons(spec(), PENDING, {}) == ["no live worker"]


def test_fleet_empty_when_some_worker_can_take_it() -> None:
    workers = {"pi": (Host(allow_jobs=["mlp"]), CPU), "desk": (None, CPU)}
    assert fleet_reasons(spec(), PENDING, workers) == []


def test_fleet_require_cuda_without_cuda_worker_is_one_line() -> None:
    workers = {"pi": (None, CPU), "laptop": (None, cap(cpu_cores=2))}
    assert fleet_reasons(spec(require_cuda=True), PENDING, workers) == ["no worker with CUDA"]


def test_fleet_prefer_cuda_wait_is_one_line() -> None:
    workers = {"pi": (None, CPU), "laptop": (None, CPU)}
    assert fleet_reasons(spec(prefer_cuda=True), PENDING, workers) == [PREFER_CUDA_WAIT]
    assert fleet_reasons(spec(prefer_cuda=True), state(cpu_ok=True), workers) == []


def test_fleet_job_level_reasons_are_said_once() -> None:
    workers = {"pi": (None, CPU), "desk": (None, CUDA)}
    assert fleet_reasons(spec(cancel=True), PENDING, workers) == [CANCELLED]
    assert fleet_reasons(spec(), None, workers) == [NO_STATE]
    assert fleet_reasons(spec(), None, {}) == [NO_STATE]


def test_fleet_otherwise_one_line_per_worker_sorted() -> None:
    workers = {"pi": (Host(deny_jobs=["gbt"]), cap(cpu_cores=4)), "desk": (None, CUDA)}
    job = spec(require_cuda=True, min_vram_gib=8.0, min_cores=6)
    assert fleet_reasons(job, PENDING, workers) == [
        "desk: needs 8.0 GiB free VRAM, best device has 6.0",
        "pi: [hosts.pi] deny_jobs ['gbt'] matches 'gbt-small' or model 'gbt'; "
        f"{NO_CUDA}; needs 6 cores, host has 4",
    ]


# --------------------------------------------------------------------- explain


def test_explain_rows_for_pending_and_stateless_jobs_in_manifest_order() -> None:
    text = manifest_text([
        {"name": "a", "seed": 1},
        {"name": "gpu", "seed": 2, "require_cuda": True},
        {"name": "done", "seed": 3},
        {"name": "new", "seed": 4},
        {"name": "big", "seed": 5, "min_ram_gib": 1000.0, "denied_hosts": ["desk"]},
    ], extra='\n[hosts.desk]\ndeny_jobs = ["gpu"]\n')
    loaded = load_manifest(text.encode())
    ids = {s.name: s.job_id for s in loaded.specs.values()}

    def st_(name: str, status: Status = Status.PENDING) -> JobState:
        extra = {"artifact": {"sha256": "a" * 64, "size": 1}} if status is Status.COMPLETED \
            else {}
        return JobState(job_id=ids[name], name=name, status=status, **extra)

    states = {ids[n]: st_(n) for n in ("a", "gpu", "big")}
    states[ids["done"]] = st_("done", Status.COMPLETED)
    rows = explain(loaded, states, "desk", CPU)
    assert rows == [
        {"job_id": ids["a"], "name": "a", "eligible": True, "reasons": []},
        {"job_id": ids["gpu"], "name": "gpu", "eligible": False, "reasons": [
            "[hosts.desk] deny_jobs ['gpu'] matches 'gpu' or model 'quick'", NO_CUDA]},
        {"job_id": ids["new"], "name": "new", "eligible": False, "reasons": [NO_STATE]},
        {"job_id": ids["big"], "name": "big", "eligible": False, "reasons": [
            "denied_hosts includes desk", "needs 1000.0 GiB available RAM, host has 16.0"]},
    ]
    assert explain(loaded, states, "other", CPU)[1]["reasons"] == [NO_CUDA]


# -------------------------------------------------------------------- property

names = st.sampled_from(["desk", "pi", "laptop"])
globs = st.lists(st.sampled_from(["gbt", "gbt-*", "*", "mlp", "*-small", "x?"]), max_size=3)
gibs = st.floats(min_value=0, max_value=64, allow_nan=False).map(lambda v: round(v, 2))


@st.composite
def cases(draw: st.DrawFn) -> tuple[JobSpec, JobState | None, str, Host | None, Capability]:
    job = spec(
        name=draw(st.sampled_from(["gbt-small", "mlp", "xy"])),
        model=draw(st.sampled_from(["gbt", "mlp"])),
        require_cuda=draw(st.booleans()), prefer_cuda=draw(st.booleans()),
        min_vram_gib=draw(gibs), min_ram_gib=draw(gibs),
        min_cores=draw(st.integers(0, 16)), cancel=draw(st.booleans()),
        allowed_hosts=draw(st.none() | st.lists(names, max_size=2).map(tuple)),
        denied_hosts=tuple(draw(st.lists(names, max_size=2))))
    status = draw(st.none() | st.sampled_from(list(Status)))
    job_state = None if status is None else state(status, cpu_ok=draw(st.booleans()))
    host = draw(st.none() | st.builds(Host, allow_jobs=st.none() | globs, deny_jobs=globs))
    devices = [gpu(i, free=f, total=64.0) for i, f in enumerate(draw(st.lists(gibs,
                                                                               max_size=3)))]
    capability = cap(devices, cuda_available=draw(st.booleans()) and bool(devices),
                     cpu_cores=draw(st.integers(1, 16)), ram_available_gib=draw(gibs))
    return job, job_state, draw(names), host, capability


def oracle(job: JobSpec, s: JobState | None, worker: str, host: Host | None,
           c: Capability) -> bool:
    """The rules restated independently: may this worker take the job?"""
    from fnmatch import fnmatchcase

    def hit(pats: list[str]) -> bool:
        return any(fnmatchcase(job.name, p) or fnmatchcase(job.model, p) for p in pats)

    cuda = c.cuda_available and len(c.cuda_devices) > 0
    gpu_fits = cuda and any(d.vram_free_gib >= job.min_vram_gib for d in c.cuda_devices)
    if job.require_cuda:
        device_ok = gpu_fits
    elif job.prefer_cuda:
        device_ok = gpu_fits or (s is not None and s.cpu_ok)
    else:
        device_ok = job.min_vram_gib == 0 or gpu_fits
    return (s is not None and s.status is Status.PENDING and not job.cancel
            and (host is None or host.allow_jobs is None or hit(host.allow_jobs))
            and (host is None or not hit(host.deny_jobs))
            and (job.allowed_hosts is None or worker in job.allowed_hosts)
            and worker not in job.denied_hosts
            and device_ok and job.min_ram_gib <= c.ram_available_gib
            and job.min_cores <= c.cpu_cores)


@settings(max_examples=250, deadline=None)
@given(cases())
def test_reasons_empty_exactly_when_every_constraint_holds(case: tuple) -> None:
    got = reasons(*case)
    assert all(isinstance(r, str) and r for r in got)
    assert (not got) == oracle(*case)
    if not got:
        job, _, _, _, c = case
        device = choose_device(job, c)
        if job.require_cuda:
            assert device is not None
        if device is not None:
            assert c.cuda_devices[device].vram_free_gib >= job.min_vram_gib
