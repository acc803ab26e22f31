"""Example trainer: a LSTM (torch) on a generated sequence task.

Flags, task, modes (realistic: the noisy signal; oracle: plus the clean signal,
an upper bound) and outputs are those of `worker.examples.rnn`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial

from worker.examples import common, rnn

MODEL = "lstm"


def build_parser() -> argparse.ArgumentParser:
    return rnn.build_parser(MODEL)


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(build_parser, partial(rnn.train, MODEL), argv)


if __name__ == "__main__":
    sys.exit(main())
