"""load_manifest on the bad-input matrix (tests/BAD_INPUTS.md): every bad manifest is
one `ManifestError` whose message names the file, the job (name and index) and
the field, or the line and column, or the size; never a traceback. Hypothesis
then throws random and mutated bytes at it."""

from __future__ import annotations

import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerkit import manifest_text
from reconciler.protocol.errors import ManifestError
from reconciler.protocol.manifest import MAX_KEY_PARTS, MAX_MANIFEST_BYTES, load_manifest

FILE = "fleet/manifest.toml"
GOOD = manifest_text([
    {"name": "alpha", "seed": 1, "hyper": {"lr": 0.1}},
    {"name": "beta", "seed": 2, "priority": 5, "min_ram_gib": 2.5},
])
ALPHA = "job 'alpha' (jobs[0])"
BETA = "job 'beta' (jobs[1])"


def in_alpha(line: str) -> str:
    """GOOD with `line` added to job alpha's table."""
    return GOOD.replace('name = "alpha"', f'name = "alpha"\n{line}', 1)


def in_beta(line: str) -> str:
    return GOOD.replace('name = "beta"', f'name = "beta"\n{line}', 1)


def load(text: str | bytes, **kw) -> object:
    data = text.encode() if isinstance(text, str) else text
    return load_manifest(data, filename=FILE, **kw)


def refused(text: str | bytes, **kw) -> str:
    with pytest.raises(ManifestError) as err:
        load(text, **kw)
    message = str(err.value)
    assert message.startswith(FILE + ": "), message
    assert "Traceback" not in message
    return message


def test_the_good_manifest_loads() -> None:
    loaded = load(GOOD)
    assert [s.name for s in loaded.specs.values()] == ["alpha", "beta"]
    beta = loaded.by_name()["beta"]
    assert (beta.priority, beta.min_ram_gib, beta.index) == (5, 2.5, 1)


# (id, manifest, what the single line must say)
ONE_LINE_ROWS = [
    ("unknown job key", in_alpha("seeed = 3"), [ALPHA, "'seeed'", "unknown key"]),
    ("unknown key in the second job", in_beta("prioritty = 3"),
     [BETA, "'prioritty'", "unknown key"]),
    ("unknown top-level key", GOOD.replace('name = "test-fleet"', 'name = "t"\nnmae = "x"'),
     ["field 'nmae'", "unknown key"]),
    ("unknown [fleet] key", GOOD.replace("[fleet]", "[fleet]\nheartbeet_s = 1"),
     ["field 'fleet.heartbeet_s'", "unknown key"]),
    ("unknown [trainers] key", GOOD.replace("[trainers.quick]", "[trainers.quick]\nargs = 1"),
     ["[trainers.quick]", "'args'", "unknown key"]),
    ("unknown [defaults] key", GOOD + "\n[defaults]\nname = 'x'\n",
     ["field 'defaults.name'", "unknown key"]),
    ("unknown [hosts] key", GOOD + "\n[hosts.pi]\nallow = ['x']\n",
     ["[hosts.pi]", "'allow'", "unknown key"]),
    ("misspelt hyper key", GOOD.replace("lr = 0.1", "lrr = 0.1"),
     [ALPHA, "'hyper.lrr'", "does not accept", "seconds, exit_code, size, lr"]),
    ("string command", GOOD.replace("command = [", 'command = "python train.py" #['),
     ["[trainers.quick]", "'command'", "list", "'python train.py'"]),
    ("empty command", GOOD.replace("command = [", "command = [] #["),
     ["[trainers.quick]", "'command'", "at least 1"]),
    ("negative min_ram_gib", in_alpha("min_ram_gib = -4"),
     [ALPHA, "'min_ram_gib'", "greater than or equal to 0", "-4"]),
    ("negative min_cores", in_beta("min_cores = -1"), [BETA, "'min_cores'", "-1"]),
    ("negative seed", GOOD.replace("seed = 1", "seed = -1"), [ALPHA, "'seed'"]),
    ("negative default", GOOD + "\n[defaults]\nmin_vram_gib = -0.5\n",
     ["'defaults.min_vram_gib'", "-0.5"]),
    ("nan resource", in_alpha("min_ram_gib = nan"), [ALPHA, "'min_ram_gib'", "finite"]),
    ("inf resource", in_alpha("min_vram_gib = inf"), [ALPHA, "'min_vram_gib'", "finite"]),
    ("-inf resource", in_alpha("min_vram_gib = -inf"), [ALPHA, "'min_vram_gib'"]),
    ("nan in [fleet]", GOOD.replace("prefer_cuda_grace_s = 2", "prefer_cuda_grace_s = nan"),
     ["'fleet.prefer_cuda_grace_s'", "finite"]),
    ("inf heartbeat", GOOD.replace("heartbeat_s = 0.5", "heartbeat_s = inf"),
     ["'fleet.heartbeat_s'", "finite"]),
    ("nan hyper value", GOOD.replace("lr = 0.1", "lr = nan"),
     [ALPHA, "'hyper.lr'", "finite"]),
    ("inf hyper value", GOOD.replace("lr = 0.1", "lr = -inf"), [ALPHA, "'hyper.lr'", "finite"]),
    ("huge int resource", in_alpha("min_cores = 99999999999999999999"),
     [ALPHA, "'min_cores'", "less than or equal"]),
    ("huge float resource", in_alpha("min_ram_gib = 1e300"),
     [ALPHA, "'min_ram_gib'", "less than or equal"]),
    ("huge max_attempts", GOOD.replace("max_attempts = 3", "max_attempts = 10000000"),
     ["'fleet.max_attempts'"]),
    ("huge timeout", GOOD.replace("[trainers.quick]", "[trainers.quick]\ntimeout_s = 1e30"),
     ["[trainers.quick]", "'timeout_s'"]),
    ("hyper int beyond 64 bits", GOOD.replace("lr = 0.1", "lr = 99999999999999999999999"),
     [ALPHA, "'hyper'", "'lr'", "64 bits"]),
    ("hyper value of no accepted type", GOOD.replace("lr = 0.1", "lr = [1, 2]"),
     [ALPHA, "'hyper.lr'", "boolean, integer, number or string"]),
    ("bool where an int belongs", in_alpha("min_cores = true"),
     [ALPHA, "'min_cores'", "integer"]),
    ("string where an int belongs", in_alpha('priority = "10"'),
     [ALPHA, "'priority'", "integer", "'10'"]),
    ("string where a bool belongs", in_alpha('require_cuda = "yes"'),
     [ALPHA, "'require_cuda'", "bool"]),
    ("fractional cores", in_alpha("min_cores = 2.5"), [ALPHA, "'min_cores'", "integer"]),
    ("missing model", GOOD.replace('model = "quick"', 'model = "nope"', 1),
     [ALPHA, "'model'", "[trainers.nope]"]),
    ("missing job name", GOOD.replace('name = "alpha"\n', "", 1),
     ["jobs[0]", "'name'", "missing"]),
    ("wrong schema_version", GOOD.replace("schema_version = 1", "schema_version = 2"),
     ["'schema_version'"]),
    ("stale_after below two beats", GOOD.replace("stale_after_s = 3", "stale_after_s = 0.6"),
     ["'fleet'", "twice"]),
    ("duplicate job names", manifest_text([{"name": "alpha", "seed": 1},
                                           {"name": "alpha", "seed": 2}]),
     ["job 'alpha' (jobs[1])", "'name'", "duplicate of jobs[0]"]),
    ("duplicate identity", manifest_text([{"name": "alpha", "seed": 1},
                                          {"name": "beta", "seed": 1}]),
     ["job 'beta' (jobs[1])", "job 'alpha' (jobs[0])", "same identity"]),
    ("job name with a path", manifest_text([{"name": "../etc", "seed": 1}]),
     ["job '../etc' (jobs[0])", "'name'", "pattern"]),
    ("job name like an option", manifest_text([{"name": "-rf", "seed": 1}]),
     ["jobs[0]", "'name'", "pattern"]),
    ("job name with a space", manifest_text([{"name": "a b", "seed": 1}]),
     ["jobs[0]", "'name'"]),
    ("job name too long", manifest_text([{"name": "a" * 65, "seed": 1}]),
     ["jobs[0]", "'name'"]),
    ("model name with a slash", GOOD.replace('model = "quick"', 'model = "a/b"', 1),
     [ALPHA, "'model'", "pattern"]),
    ("unsafe allowed host", in_alpha('allowed_hosts = ["x;rm"]'),
     [ALPHA, "'allowed_hosts[0]'", "pattern"]),
    ("unsafe host table", GOOD + '\n[hosts."bad host"]\n', ["[hosts.bad host]", "pattern"]),
    ("unsafe trainer name", GOOD.replace("[trainers.quick]", '[trainers."../q"]'),
     ["[trainers.../q]", "pattern"]),
    ("reserved host reconciler", GOOD + "\n[hosts.reconciler]\n",
     ["'hosts'", "'reconciler' is reserved"]),
    ("reserved host operator", GOOD + "\n[hosts.operator]\n", ["'operator' is reserved"]),
    ("reserved host HEAD", GOOD + "\n[hosts.HEAD]\n", ["'HEAD' is reserved"]),
    ("TOML syntax error", GOOD.replace('name = "alpha"', 'name = "alpha'),
     ["TOML syntax error", "line 16", "column 14"]),
    ("TOML duplicate key", in_alpha('name = "again"'), ["TOML syntax error", "line 17"]),
    ("non-UTF-8", GOOD.encode().replace(b"alpha", b"al\xffpha", 1),
     ["not UTF-8", "line 16"]),
    ("10k nested [", "a = " + "[" * 10_000, ["nested too deeply"]),
    ("10k nested [ closed", "a = " + "[" * 10_000 + "]" * 10_000, ["nested too deeply"]),
    ("10k nested inline tables", "a = " + "{b = " * 10_000, ["nested too deeply"]),
]


@pytest.mark.parametrize(("text", "expected"), [r[1:] for r in ONE_LINE_ROWS],
                         ids=[r[0] for r in ONE_LINE_ROWS])
def test_bad_input_is_one_line_naming_what_is_wrong(text: str | bytes, expected: list[str]
                                                    ) -> None:
    message = refused(text)
    assert len(message.splitlines()) == 1, message
    for word in expected:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize(("text", "line"), [
    ("a" + ".a" * 10_000 + " = 1", 1),
    ("[" + "a." * 10_000 + "a]", 1),
    ("x = 1\ny = {" + "a . " * 10_000 + "a = 1}", 2),
    ('x = 1\n\n"q.q"' + '."q.\\"q"' * 10_000 + " = 1", 3),
    (in_alpha("x" + ".x" * 10_000 + " = 1"), 17),
], ids=["dotted key", "dotted table", "in an inline table", "quoted parts", "inside a job"])
def test_a_10k_part_dotted_key_is_a_clean_error(text: str, line: int) -> None:
    """tomllib takes the square of the parts in time (4 s for 10,000, hours
    for what fits in 1 MiB): such keys are refused before parsing."""
    assert sys.getrecursionlimit() < 10_000  # or this row would prove nothing
    message = refused(text)
    assert message == f"{FILE}: line {line}: a dotted key or table name of more than " \
                      f"{MAX_KEY_PARTS} parts"


def test_a_dotted_key_of_128_parts_is_still_toml() -> None:
    key = "a" + ".a" * (MAX_KEY_PARTS - 1)
    assert "'a': unknown key" in refused(f"{key} = 1")
    assert "more than" in refused(f"{key}.a = 1")
    # dots in values are not keys
    assert "unknown key" in refused('x = "' + "." * 5000 + '"\ny = [' + "1.5, " * 500 + "]")


def test_every_error_is_reported_not_only_the_first() -> None:
    text = in_beta("min_cores = -1").replace('name = "alpha"', 'name = "alpha"\nseeed = 1')
    lines = refused(text).splitlines()
    assert len(lines) == 2
    assert ALPHA in lines[0] and "'seeed'" in lines[0]
    assert BETA in lines[1] and "'min_cores'" in lines[1]


def test_a_file_over_the_cap_is_refused_by_size_before_parsing() -> None:
    over = b"#" * MAX_MANIFEST_BYTES + b"\n"
    message = refused(over)
    assert f"{len(over)} bytes" in message and f"{MAX_MANIFEST_BYTES}-byte limit" in message
    # the bad-input matrix's row is 1 MiB; the default is 16 MiB (docs/performance.md:
    # a 100,000-job manifest is 12.9 MB), and a caller may ask for less.
    mib = 1 << 20
    padded = GOOD.encode() + b"#" * (mib - len(GOOD.encode()))
    assert len(padded) == mib
    load(padded, max_bytes=mib)
    assert "over the 1048576-byte limit" in refused(padded + b"#", max_bytes=mib)


def test_nested_data_within_the_recursion_limit_is_a_field_error() -> None:
    message = refused(in_alpha("mode = " + "[" * 200 + "]" * 200))
    assert ALPHA in message and "'mode'" in message


# ------------------------------------------------------------------ hypothesis

TOKENS = [b"[", b"]", b"[[jobs]]", b"{", b"}", b"=", b'"', b"'", b"\n", b"nan", b"inf", b"-",
          b"1e999", b"99999999999999999999", b".", b",", b"true", b"\\u0000", b"\xff", b"\x00",
          b"hyper", b"name", b"0x", b"1979-05-27T07:32:00Z", b"\\", b"[" * 2000, b"a." * 2000]


def outcome(data: bytes) -> None:
    """Loading either succeeds or raises ManifestError; anything else escapes."""
    try:
        load_manifest(data, filename=FILE)
    except ManifestError as exc:
        assert str(exc).startswith(FILE)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_manifest_error(data: bytes) -> None:
    outcome(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(GOOD)), st.integers(0, 2),
                          st.sampled_from(TOKENS), st.integers(0, 255)), min_size=1, max_size=5))
def test_mutated_manifests_raise_only_manifest_error(edits: list[tuple[int, int, bytes, int]]
                                                      ) -> None:
    data = bytearray(GOOD.encode())
    for pos, op, token, byte in edits:
        pos = min(pos, len(data))
        if op == 0:
            del data[pos:pos + 1 + byte % 12]
        elif op == 1:
            data[pos:pos] = token
        else:
            data[pos:pos + 1] = bytes([byte])
    outcome(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=8),
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
              st.lists(st.integers(), max_size=3)),
    max_size=4,
))
def test_random_job_fields_raise_only_manifest_error(fields: dict[str, object]) -> None:
    lines = []
    for key, value in fields.items():
        if value is None:
            continue
        lines.append(f'"{key}" = {_toml(value)}')
    outcome(in_alpha("\n".join(lines)).encode())


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
