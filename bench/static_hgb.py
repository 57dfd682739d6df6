#!/usr/bin/env python3
"""scikit-learn's HistGradientBoostingClassifier on a split written by `sentinel bench static`.

The peer of Sentinel's own booster in the static-classifier benchmark. The bench writes the
training rows (the 50 pe-header columns, `Malware`, `weight`) and the test rows (the columns and
`Malware`) as CSV, runs this script with the same hyper-parameters it gives its own trainer, and
computes every figure from the scores written here with the same metric code for both models.

    python3 bench/static_hgb.py --train train.csv --test test.csv --scores scores.txt \
        --learning-rate 0.1 --max-iter 300 --max-leaf-nodes 31 --min-samples-leaf 10 \
        --l2 1.0 --validation-fraction 0.1 --patience 10 --seed 42

Prints one JSON object (timings, iterations) on stdout. Needs only numpy and scikit-learn
(`pip install scikit-learn`).
"""

import argparse
import json
import time

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier


def read(path):
    with open(path) as fh:
        header = fh.readline().strip().split(",")
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return header, data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--scores", required=True, help="where to write one test score per line")
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--max-leaf-nodes", type=int, default=31)
    parser.add_argument("--min-samples-leaf", type=int, default=20)
    parser.add_argument("--l2", type=float, default=0.0)
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--single-row-calls", type=int, default=200,
                        help="one-row predict_proba calls timed for the per-file latency")
    args = parser.parse_args()

    header, train = read(args.train)
    label, weight = header.index("Malware"), header.index("weight")
    features = [i for i in range(len(header)) if i not in (label, weight)]
    x_train, y_train, w_train = train[:, features], train[:, label], train[:, weight]
    test_header, test = read(args.test)
    test_features = [test_header.index(header[i]) for i in features]
    x_test = test[:, test_features]

    model = HistGradientBoostingClassifier(
        learning_rate=args.learning_rate,
        max_iter=args.max_iter,
        max_leaf_nodes=args.max_leaf_nodes,
        min_samples_leaf=args.min_samples_leaf,
        l2_regularization=args.l2,
        early_stopping=True,
        validation_fraction=args.validation_fraction,
        n_iter_no_change=args.patience,
        random_state=args.seed,
    )
    started = time.perf_counter()
    model.fit(x_train, y_train, sample_weight=w_train)
    train_seconds = time.perf_counter() - started

    started = time.perf_counter()
    scores = model.predict_proba(x_test)[:, 1]
    batch_seconds = time.perf_counter() - started

    calls = min(args.single_row_calls, len(x_test))
    started = time.perf_counter()
    for i in range(calls):
        model.predict_proba(x_test[i : i + 1])
    single_seconds = (time.perf_counter() - started) / max(calls, 1)

    np.savetxt(args.scores, scores, fmt="%.17g")
    print(json.dumps({
        "train_seconds": train_seconds,
        "batch_score_us_per_row": 1e6 * batch_seconds / len(x_test),
        "single_row_score_us": 1e6 * single_seconds,
        "iterations": int(model.n_iter_),
    }))


if __name__ == "__main__":
    main()
