"""Shared code of the recurrent example trainers, `gru` and `lstm`: the same
flags, data and loop, only the cell differs.

Task: which rhythm is hidden in a noisy signal, a sine of period 16, 8 or 4
steps with random phase and amplitude (see `worker.examples.data.sequences`).

Modes (from the spec's `mode`; unset means realistic):

- realistic: one input channel, the sine in Gaussian noise (`--noise`);
- oracle: a second channel with the clean sine, the upper bound.

Outputs in $TRAINLEDGER_OUTPUT_DIR: `model.pt` (a state_dict of
`worker.examples.nets.RNN`), `metrics.json`, `spec.json`. Determinism and GPU
notes: `worker.examples.nets` (cuDNN's RNN kernels are the usual source of
GPU run-to-run differences).
"""

from __future__ import annotations

import argparse

from worker.examples import common
from worker.examples.common import (
    Job,
    add_data_flags,
    add_torch_flags,
    parse_bool,
    positive_int,
    unit_interval,
)


def build_parser(cell: str) -> argparse.ArgumentParser:
    parser = common.new_parser(
        f"python -m worker.examples.{cell}", f"torch {cell.upper()} on generated noisy rhythms"
    )
    parser.add_argument("--hidden", type=positive_int, default=32, help="hidden state size")
    parser.add_argument("--layers", type=positive_int, default=1, help="stacked recurrent layers")
    parser.add_argument("--bidirectional", type=parse_bool, default=False,
                        help="read the sequence both ways (true/false)")
    parser.add_argument("--dropout", type=unit_interval, default=0.0,
                        help="dropout between stacked layers")
    add_torch_flags(parser, epochs=8, lr=5e-3)
    parser.add_argument("--seq-len", type=positive_int, default=32, help="steps per sequence")
    add_data_flags(parser, n_samples=2000, noise=0.8)
    return parser


def train(cell: str, job: Job, args: argparse.Namespace) -> None:
    from worker.examples import nets
    from worker.examples.data import sequences

    data = sequences(job.seed, job.mode, args.n_samples, args.seq_len, args.noise)

    def make() -> nets.nn.Module:
        return nets.RNN(cell, data.x.shape[2], data.n_classes, args.hidden, args.layers,
                        args.bidirectional, args.dropout)

    nets.fit(job, data, make, args, cell)
