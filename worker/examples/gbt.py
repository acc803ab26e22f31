"""Example trainer: gradient-boosted trees (xgboost, `hist`) on a generated
tabular task.

Task: binary classification whose label is a Bernoulli draw from a logit with
interactions (see `worker.examples.data.tabular`).

Modes (from the spec's `mode`; unset means realistic):

- realistic: the true features observed with Gaussian noise (`--noise`) plus
  distractor columns that carry no signal;
- oracle: the same columns plus the noise-free features and the true logit, an
  upper bound for what any model can reach on these labels.

Outputs in $TRAINLEDGER_OUTPUT_DIR: `model.ubj` (xgboost's UBJSON model, load
with `xgboost.Booster(model_file=...)`), `metrics.json` (held-out accuracy and
log loss), `spec.json` (the spec it trained).

Determinism: `nthread` is a flag (default 1) rather than "all cores", because
histogram sums taken in a different order by a different number of threads can
change split points, and with them the model bytes. Same seed, hyper and
nthread on the same xgboost version give byte-identical outputs. xgboost runs
on the CPU here (the fleet installs xgboost-cpu), whatever CUDA the host has.

Run by hand: `TRAINLEDGER_OUTPUT_DIR=out TRAINLEDGER_SPEC=spec.json
python -m worker.examples.gbt --n-estimators 50`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from worker.examples import common
from worker.examples.common import (
    Job,
    add_data_flags,
    fraction,
    non_negative_float,
    positive_float,
    positive_int,
)

MODEL = "gbt"


def build_parser() -> argparse.ArgumentParser:
    parser = common.new_parser(
        "python -m worker.examples.gbt", "xgboost hist trees on a generated tabular task"
    )
    parser.add_argument("--n-estimators", type=positive_int, default=100,
                        help="boosting rounds")
    parser.add_argument("--max-depth", type=positive_int, default=6, help="maximum tree depth")
    parser.add_argument("--learning-rate", type=positive_float, default=0.1,
                        help="shrinkage (xgboost eta)")
    parser.add_argument("--subsample", type=fraction, default=1.0, help="row sampling per tree")
    parser.add_argument("--colsample-bytree", type=fraction, default=1.0,
                        help="column sampling per tree")
    parser.add_argument("--min-child-weight", type=non_negative_float, default=1.0,
                        help="minimum hessian in a leaf")
    parser.add_argument("--reg-lambda", type=non_negative_float, default=1.0,
                        help="L2 regularisation of leaf weights")
    parser.add_argument("--max-bin", type=positive_int, default=256,
                        help="histogram bins per feature")
    parser.add_argument("--n-features", type=positive_int, default=8,
                        help="informative features generated")
    add_data_flags(parser, n_samples=4000, noise=0.5)
    parser.add_argument("--nthread", type=positive_int, default=1,
                        help="xgboost threads (fixed, so the model bytes are reproducible)")
    return parser


def train(job: Job, args: argparse.Namespace) -> None:
    import numpy as np
    import xgboost as xgb

    from worker.examples.data import tabular

    data = tabular(job.seed, job.mode, args.n_samples, args.n_features, args.noise)
    common.progress(0.0)
    train_idx, test_idx = common.split_indices(len(data.y), job)
    dtrain = xgb.DMatrix(data.x[train_idx], label=data.y[train_idx], nthread=args.nthread)
    dtest = xgb.DMatrix(data.x[test_idx], label=data.y[test_idx], nthread=args.nthread)
    params = {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "device": "cpu",
        "max_depth": args.max_depth,
        "eta": args.learning_rate,
        "subsample": args.subsample,
        "colsample_bytree": args.colsample_bytree,
        "min_child_weight": args.min_child_weight,
        "lambda": args.reg_lambda,
        "max_bin": args.max_bin,
        "nthread": args.nthread,
        "seed": job.seed % 2**31,
        "verbosity": 1,
    }
    rounds = args.n_estimators
    every = max(1, rounds // 20)

    class Progress(xgb.callback.TrainingCallback):
        def after_iteration(self, model: object, epoch: int, evals_log: object) -> bool:
            if (epoch + 1) % every == 0 and epoch + 1 < rounds:
                common.progress((epoch + 1) / rounds)
            return False

    booster = xgb.train(params, dtrain, num_boost_round=rounds, callbacks=[Progress()])
    common.write_file(job, "model.ubj", bytes(booster.save_raw(raw_format="ubj")))

    def scores(matrix: xgb.DMatrix, labels: np.ndarray) -> tuple[np.ndarray, float]:
        p = np.clip(booster.predict(matrix).astype(np.float64), 1e-7, 1 - 1e-7)
        loss = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
        return (p >= 0.5).astype(np.int64) == labels, loss

    correct, loss = scores(dtest, data.y[test_idx])
    train_correct, train_loss = scores(dtrain, data.y[train_idx])
    metrics = {
        **common.accuracy_metrics(correct, data.y[test_idx], job),
        "loss": loss,
        "train_accuracy": float(train_correct.mean()),
        "train_loss": train_loss,
        "n_train": len(train_idx),
        "n_test": len(test_idx),
        "n_features": int(data.x.shape[1]),
        "rounds": rounds,
        "device": "cpu",
        "xgboost_version": xgb.__version__,
    }
    common.finish(job, MODEL, metrics)


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(build_parser, train, argv)


if __name__ == "__main__":
    sys.exit(main())
