"""The worker's trainer contract in one place, shared by every example trainer.

A trainer is run as `<command> --<hyper-key> <value> ...` in a clean
environment (see docs/trainers.md). This module reads that environment and the
job spec, parses the hyper flags strictly (an unknown flag is an error, never a
silent default), derives every random stream from the spec's seed, prints
`progress:` lines and writes the output files as canonical bytes, so the same
job gives byte-identical outputs on the same host.

Exit codes: 0 trained and wrote outputs; 2 bad input (flag, spec, environment),
which a retry cannot fix; 1 anything else (a bug or a crash while training).

Only the standard library is imported here at module level: parser builders must
be importable by tests and tools without loading numpy, torch or xgboost.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import numpy as np

MODES = ("realistic", "oracle")
DEFAULT_MODE = "realistic"
DEFAULT_SPLIT = "holdout:0.2"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class TrainerError(Exception):
    """Bad input from the job (spec, environment, hyper): exit 2 with a message."""


# ------------------------------------------------------------------ hyper flags


class HyperParser(argparse.ArgumentParser):
    """argparse that names the manifest when a flag is wrong: the operator fixes
    `[trainers.<model>] hyper` or the job's `hyper`, not a command line."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def new_parser(prog: str, description: str) -> HyperParser:
    """A parser without prefix matching, so `--n` never quietly means `--n-samples`."""
    return HyperParser(
        prog=prog,
        description=description,
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def parse_hyper(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the hyper flags; unknown flags exit 2 naming the ones accepted."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        accepted = ", ".join(hyper_flags(parser))
        parser.error(
            f"unknown hyper flag(s) {' '.join(unknown)}; this trainer accepts: {accepted}. "
            "Fix the job's hyper (and [trainers.<model>] hyper) in manifest.toml."
        )
    return args


def hyper_flags(parser: argparse.ArgumentParser) -> list[str]:
    """The `--flag` options a parser accepts (help excluded)."""
    flags = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flags.extend(s for s in action.option_strings if s.startswith("--"))
    return flags


def hyper_keys(parser: argparse.ArgumentParser) -> list[str]:
    """Manifest hyper keys a parser accepts: `--max-depth` is key `max_depth`."""
    return [flag[2:].replace("-", "_") for flag in hyper_flags(parser)]


def parse_bool(text: str) -> bool:
    """The worker renders booleans as `true` / `false`."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A probability in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def unit_interval(text: str) -> float:
    """A rate in [0, 1), e.g. dropout."""
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def _number(text: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: "
                                         f"{text!r}") from None


def add_data_flags(parser: argparse.ArgumentParser, *, n_samples: int, noise: float) -> None:
    """Flags every trainer shares: how much data to generate and how noisy it is."""
    parser.add_argument("--n-samples", type=positive_int, default=n_samples,
                        help="examples generated (train + held-out)")
    parser.add_argument("--noise", type=non_negative_float, default=noise,
                        help="std of the observation noise (realistic mode's features)")


def add_torch_flags(parser: argparse.ArgumentParser, *, epochs: int, lr: float) -> None:
    """Optimiser flags shared by the torch trainers."""
    parser.add_argument("--epochs", type=positive_int, default=epochs, help="passes over the data")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="minibatch size")
    parser.add_argument("--lr", type=positive_float, default=lr, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=non_negative_float, default=0.0,
                        help="AdamW weight decay")


# ------------------------------------------------------------------- the job


@dataclass(frozen=True)
class Job:
    """What the worker handed over: environment plus the spec it resolved."""

    job_id: str
    name: str
    attempt: int
    output_dir: Path
    spec: dict[str, Any]
    mode: str
    seed: int
    test_fraction: float
    n_resamples: int | None
    cuda_visible: bool  # CUDA_VISIBLE_DEVICES non-empty: the worker gave us a device


def load_job(environ: dict[str, str] | None = None) -> Job:
    """Read the contract's environment; a missing or bad value is a TrainerError."""
    env = os.environ if environ is None else environ
    out = _required(env, "TRAINLEDGER_OUTPUT_DIR")
    spec_path = _required(env, "TRAINLEDGER_SPEC")
    output_dir = Path(out)
    if not output_dir.is_dir():
        raise TrainerError(f"TRAINLEDGER_OUTPUT_DIR={out}: not a directory")
    try:
        spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainerError(f"TRAINLEDGER_SPEC={spec_path}: cannot read the spec: {exc}") from None
    if not isinstance(spec, dict):
        raise TrainerError(f"TRAINLEDGER_SPEC={spec_path}: not a JSON object")
    mode = spec.get("mode") or DEFAULT_MODE
    if mode not in MODES:
        raise TrainerError(f"spec mode {mode!r} is not one of {', '.join(MODES)}")
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TrainerError(f"spec seed {seed!r} is not a non-negative integer")
    n_resamples = spec.get("n_resamples")
    if n_resamples is not None and (
        isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1
    ):
        raise TrainerError(f"spec n_resamples {n_resamples!r} is not a positive integer")
    attempt_text = env.get("TRAINLEDGER_ATTEMPT", "0") or "0"
    try:
        attempt = int(attempt_text)
    except ValueError:
        raise TrainerError(f"TRAINLEDGER_ATTEMPT={attempt_text!r} is not an integer") from None
    return Job(
        job_id=env.get("TRAINLEDGER_JOB_ID") or str(spec.get("job_id", "")),
        name=env.get("TRAINLEDGER_JOB_NAME") or str(spec.get("name", "")),
        attempt=attempt,
        output_dir=output_dir,
        spec=spec,
        mode=mode,
        seed=seed,
        test_fraction=parse_split(spec.get("split_recipe")),
        n_resamples=n_resamples,
        cuda_visible=bool(env.get("CUDA_VISIBLE_DEVICES", "").strip()),
    )


def _required(env: Any, key: str) -> str:
    value = env.get(key, "")
    if not value:
        raise TrainerError(f"{key} is not set: run this trainer through the worker, or set it "
                           "by hand (see docs/trainers.md)")
    return str(value)


def parse_split(recipe: Any) -> float:
    """`split_recipe` of the example trainers: `holdout:<test fraction>` (unset means
    `holdout:0.2`). Any other recipe is refused rather than guessed at."""
    if recipe is None:
        recipe = DEFAULT_SPLIT
    if not isinstance(recipe, str):
        raise TrainerError(f"split_recipe {recipe!r} is not a string")
    kind, _, value = recipe.partition(":")
    if kind == "holdout":
        try:
            test = float(value)
        except ValueError:
            test = math.nan
        if 0.05 <= test <= 0.5:
            return test
    raise TrainerError(
        f"split_recipe {recipe!r} is not understood: the example trainers take "
        "'holdout:<fraction>' with a test fraction between 0.05 and 0.5, e.g. 'holdout:0.2'"
    )


# --------------------------------------------------------------- randomness


def rng(seed: int, stream: str) -> np.random.Generator:
    """An independent generator per purpose ("data", "split", ...): adding a draw
    to one stream never shifts the numbers another stream produces."""
    import numpy as np

    key = zlib.crc32(stream.encode())
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))


def split_indices(n: int, job: Job) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random holdout split: (train indices, test indices)."""
    order = rng(job.seed, "split").permutation(n)
    n_test = max(1, round(n * job.test_fraction))
    if n - n_test < 1:
        raise TrainerError(f"{n} examples are too few to hold {n_test} out: raise --n-samples")
    return order[n_test:], order[:n_test]


def accuracy_metrics(correct: np.ndarray, labels: np.ndarray, job: Job) -> dict[str, Any]:
    """Held-out accuracy, the majority-class rate it must beat, and, when the
    spec asks for `n_resamples`, a bootstrap interval of the accuracy."""
    import numpy as np

    correct = np.asarray(correct, dtype=bool)
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    out: dict[str, Any] = {
        "accuracy": float(correct.mean()),
        "chance": float(counts.max() / counts.sum()),
    }
    if job.n_resamples:
        gen = rng(job.seed, "bootstrap")
        n = correct.size
        samples = np.array(
            [correct[gen.integers(0, n, n)].mean() for _ in range(job.n_resamples)]
        )
        low, mid, high = np.quantile(samples, [0.05, 0.5, 0.95])
        out["accuracy_bootstrap"] = {
            "n_resamples": job.n_resamples, "p05": float(low), "p50": float(mid),
            "p95": float(high),
        }
    return out


# ------------------------------------------------------------------- output


def progress(fraction_done: float) -> None:
    """A `progress: 0.42` line the worker reports in heartbeats; flushed at once
    because stdout is a pipe and would otherwise be block-buffered."""
    value = min(1.0, max(0.0, fraction_done))
    print(f"progress: {value:.3f}", flush=True)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, 2-space indent, trailing newline, floats rounded to 6 digits:
    byte-stable and readable in a diff."""
    return (json.dumps(_rounded(obj), sort_keys=True, indent=2, allow_nan=False) + "\n").encode()


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 6)
    if isinstance(obj, dict):
        return {str(k): _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_rounded(v) for v in obj]
    return obj


def write_file(job: Job, name: str, data: bytes) -> Path:
    """Write one output file whole: temporary name, then rename, so a crash never
    leaves a half-written model that looks complete."""
    path = job.output_dir / name
    tmp = job.output_dir / f".{name}.tmp"
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def finish(job: Job, model: str, metrics: dict[str, Any]) -> None:
    """Write metrics.json and spec.json, print the summary and the final progress."""
    record = {"model": model, "mode": job.mode, "seed": job.seed, **metrics}
    write_file(job, "metrics.json", canonical_json(record))
    write_file(job, "spec.json", canonical_json(job.spec))
    progress(1.0)
    print(
        f"{model} {job.mode}: held-out accuracy {metrics['accuracy']:.3f} "
        f"(chance {metrics['chance']:.3f}), loss {metrics['loss']:.4f}",
        flush=True,
    )


# -------------------------------------------------------------------- entry


def run(
    build_parser: Callable[[], argparse.ArgumentParser],
    train: Callable[[Job, argparse.Namespace], None],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse flags before anything heavy is imported (a bad flag fails in
    milliseconds), then train; map errors onto the contract's exit codes."""
    args = parse_hyper(build_parser(), argv)
    try:
        job = load_job()
        train(job, args)
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except Exception:
        traceback.print_exc()
        return EXIT_FAILED
    return EXIT_OK
