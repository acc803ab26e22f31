"""Example trainer: a multilayer perceptron (torch) on the generated tabular task
that gbt trains on, so the two can be compared job for job.

Modes (from the spec's `mode`; unset means realistic):

- realistic: the true features observed with Gaussian noise (`--noise`) plus
  distractor columns;
- oracle: the same columns plus the noise-free features and the true logit, an
  upper bound for what any model can reach on these labels.

Outputs in $TRAINLEDGER_OUTPUT_DIR: `model.pt` (a state_dict; rebuild with
`worker.examples.nets.MLP` and the input width in metrics.json), `metrics.json`,
`spec.json`. Determinism and GPU notes: `worker.examples.nets`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from worker.examples import common
from worker.examples.common import Job, add_data_flags, add_torch_flags, positive_int, unit_interval

MODEL = "mlp"


def build_parser() -> argparse.ArgumentParser:
    parser = common.new_parser(
        "python -m worker.examples.mlp", "torch MLP on a generated tabular task"
    )
    parser.add_argument("--hidden", type=positive_int, default=64, help="units per hidden layer")
    parser.add_argument("--layers", type=positive_int, default=2, help="hidden layers")
    parser.add_argument("--dropout", type=unit_interval, default=0.0, help="dropout rate")
    add_torch_flags(parser, epochs=20, lr=1e-3)
    parser.add_argument("--n-features", type=positive_int, default=8,
                        help="informative features generated")
    add_data_flags(parser, n_samples=4000, noise=0.5)
    return parser


def train(job: Job, args: argparse.Namespace) -> None:
    from worker.examples import nets
    from worker.examples.data import tabular

    data = tabular(job.seed, job.mode, args.n_samples, args.n_features, args.noise)

    def make() -> nets.nn.Module:
        return nets.MLP(data.x.shape[1], data.n_classes, args.hidden, args.layers, args.dropout)

    nets.fit(job, data, make, args, MODEL)


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(build_parser, train, argv)


if __name__ == "__main__":
    sys.exit(main())
