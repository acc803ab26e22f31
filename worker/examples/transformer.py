"""Example trainer: a tiny encoder-only transformer (torch) on the generated
sequence task the gru and lstm trainers learn.

Task: which rhythm is hidden in a noisy signal (see
`worker.examples.data.sequences`). Tokens are overlapping patches of `--patch`
steps, as in PatchTST.

Modes (from the spec's `mode`; unset means realistic):

- realistic: one input channel, the sine in Gaussian noise (`--noise`);
- oracle: a second channel with the clean sine, the upper bound.

Outputs in $TRAINLEDGER_OUTPUT_DIR: `model.pt` (a state_dict of
`worker.examples.nets.Transformer`), `metrics.json`, `spec.json`. Determinism
and GPU notes: `worker.examples.nets` (attention kernels on CUDA may only warn
under deterministic mode).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from worker.examples import common
from worker.examples.common import Job, add_data_flags, add_torch_flags, positive_int, unit_interval

MODEL = "transformer"


def build_parser() -> argparse.ArgumentParser:
    parser = common.new_parser(
        "python -m worker.examples.transformer", "tiny torch transformer on generated rhythms"
    )
    parser.add_argument("--d-model", type=positive_int, default=32, help="embedding width")
    parser.add_argument("--heads", type=positive_int, default=4,
                        help="attention heads (must divide --d-model)")
    parser.add_argument("--layers", type=positive_int, default=2, help="encoder layers")
    parser.add_argument("--ff", type=positive_int, default=64, help="feed-forward width")
    parser.add_argument("--patch", type=positive_int, default=4,
                        help="steps per token (tokens overlap by half a patch)")
    parser.add_argument("--dropout", type=unit_interval, default=0.0, help="dropout rate")
    add_torch_flags(parser, epochs=8, lr=3e-3)
    parser.add_argument("--seq-len", type=positive_int, default=32, help="steps per sequence")
    add_data_flags(parser, n_samples=2000, noise=0.8)
    return parser


def train(job: Job, args: argparse.Namespace) -> None:
    if args.d_model % args.heads:
        raise common.TrainerError(f"--heads {args.heads} does not divide --d-model {args.d_model}")
    if args.patch > args.seq_len:
        raise common.TrainerError(f"--patch {args.patch} is longer than --seq-len {args.seq_len}")
    from worker.examples import nets
    from worker.examples.data import sequences

    data = sequences(job.seed, job.mode, args.n_samples, args.seq_len, args.noise)

    def make() -> nets.nn.Module:
        return nets.Transformer(data.x.shape[2], data.n_classes, args.seq_len, args.d_model,
                                args.heads, args.layers, args.ff, args.dropout, args.patch)

    nets.fit(job, data, make, args, MODEL)


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(build_parser, train, argv)


if __name__ == "__main__":
    sys.exit(main())
