"""Example trainer: a tiny convolutional network (torch) on generated pictures.

Task: which stroke is in an 8x8 (or `--image-size`) picture: a horizontal bar, a
vertical bar, a cross or a small box, at a random place and brightness (see
`worker.examples.data.images`).

Modes (from the spec's `mode`; unset means realistic):

- realistic: one channel, the picture in Gaussian pixel noise (`--noise`);
- oracle: a second channel with the clean picture, the upper bound.

Outputs in $TRAINLEDGER_OUTPUT_DIR: `model.pt` (a state_dict of
`worker.examples.nets.CNN`), `metrics.json`, `spec.json`. Determinism and GPU
notes: `worker.examples.nets`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from worker.examples import common
from worker.examples.common import Job, add_data_flags, add_torch_flags, positive_int, unit_interval

MODEL = "cnn"


def image_size(text: str) -> int:
    value = positive_int(text)
    if not 6 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be between 6 and 64 pixels, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = common.new_parser(
        "python -m worker.examples.cnn", "torch CNN on generated stroke pictures"
    )
    parser.add_argument("--channels", type=positive_int, default=8,
                        help="filters of the first conv layer (the second has twice as many)")
    parser.add_argument("--dropout", type=unit_interval, default=0.0,
                        help="dropout before the head")
    add_torch_flags(parser, epochs=8, lr=3e-3)
    parser.add_argument("--image-size", type=image_size, default=8, help="picture side in pixels")
    add_data_flags(parser, n_samples=3000, noise=0.5)
    return parser


def train(job: Job, args: argparse.Namespace) -> None:
    from worker.examples import nets
    from worker.examples.data import images

    data = images(job.seed, job.mode, args.n_samples, args.image_size, args.noise)

    def make() -> nets.nn.Module:
        return nets.CNN(data.x.shape[1], data.n_classes, args.channels, args.dropout)

    nets.fit(job, data, make, args, MODEL)


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(build_parser, train, argv)


if __name__ == "__main__":
    sys.exit(main())
