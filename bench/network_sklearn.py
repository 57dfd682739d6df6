"""scikit-learn peer of `sentinel eval network --peer`.

Reads the job file the command writes and prints a JSON array with one object
per input x model x seed: ROC AUC, PR AUC and detection at 1 % false positives
on the test rows (higher score = more anomalous: score_samples negated).

Two inputs, the same rows:
- `service`: the rows exactly as the service's models saw them (its features,
  scaled by its fitted preprocessor), raw little-endian float64 files;
- `dataset`: every one of NSL-KDD's 41 columns, the three symbolic ones one-hot,
  the numbers log1p then min-max scaled on the training rows (the baseline of
  ../shared/data/README.md).

Models with default hyper-parameters, fitted on the normal training rows only:
IsolationForest, LocalOutlierFactor (novelty) and OneClassSVM (RBF, gamma
"scale", fitted on a random 20,000 of the rows: libsvm is quadratic in rows).
The dependencies are in .ci/requirements.txt, which .ci/run installs.
"""

import json
import sys

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sklearn.neighbors import LocalOutlierFactor
from sklearn.svm import OneClassSVM

SVM_MAX_ROWS = 20_000
SYMBOLIC = [1, 2, 3]


def detection_at(labels, scores, max_fpr):
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(tpr[fpr <= max_fpr].max())


def read_nsl_kdd(path, difficulty_below):
    rows, labels = [], []
    with open(path) as f:
        for line in f:
            fields = [field.strip() for field in line.strip().split(",")]
            if len(fields) != 43:
                continue
            if difficulty_below is not None and int(fields[42]) >= difficulty_below:
                continue
            rows.append(fields[:41])
            labels.append(fields[41] != "normal")
    return rows, np.array(labels)


def encode(train_rows, test_rows):
    """One-hot symbolic columns (categories of the training rows), log1p and min-max numbers."""
    categories = {c: sorted({row[c] for row in train_rows}) for c in SYMBOLIC}

    def matrix(rows):
        numeric = np.array([[float(v) for i, v in enumerate(row) if i not in SYMBOLIC] for row in rows])
        onehot = [
            np.array([[1.0 if row[c] == value else 0.0 for value in categories[c]] for row in rows])
            for c in SYMBOLIC
        ]
        return np.log1p(numeric), np.hstack(onehot)

    train_numeric, train_onehot = matrix(train_rows)
    test_numeric, test_onehot = matrix(test_rows)
    low, high = train_numeric.min(axis=0), train_numeric.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return (
        np.hstack([(train_numeric - low) / span, train_onehot]),
        np.hstack([(test_numeric - low) / span, test_onehot]),
    )


def measure(features, train, test, labels, seeds):
    results = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        svm_rows = train[rng.choice(len(train), min(SVM_MAX_ROWS, len(train)), replace=False)]
        models = {
            "iforest": (IsolationForest(n_estimators=100, max_samples=256, random_state=seed), train),
            "lof": (LocalOutlierFactor(n_neighbors=20, novelty=True), train),
            "ocsvm": (OneClassSVM(kernel="rbf", gamma="scale"), svm_rows),
        }
        for name, (model, rows) in models.items():
            model.fit(rows)
            scores = -model.score_samples(test)
            results.append(
                {
                    "features": features,
                    "model": name,
                    "seed": seed,
                    "roc_auc": float(roc_auc_score(labels, scores)),
                    "pr_auc": float(average_precision_score(labels, scores)),
                    "detection_at_1pct_fpr": detection_at(labels, scores, 0.01),
                }
            )
    return results


def main():
    with open(sys.argv[1]) as f:
        job = json.load(f)
    cols = job["cols"]
    train = np.fromfile(job["train"], dtype="<f8").reshape(-1, cols)
    test = np.fromfile(job["test"], dtype="<f8").reshape(-1, cols)
    labels = np.fromfile(job["labels"], dtype=np.uint8).astype(bool)
    results = measure("service", train, test, labels, job["seeds"])

    train_rows, train_labels = read_nsl_kdd(job["dataset_train"], None)
    test_rows, dataset_labels = read_nsl_kdd(job["dataset_test"], job["difficulty_below"])
    if not np.array_equal(dataset_labels, labels):
        sys.exit("the data set's test rows are not the rows the service scored")
    normal = [row for row, anomalous in zip(train_rows, train_labels) if not anomalous]
    train41, test41 = encode(normal, test_rows)
    results += measure("dataset", train41, test41, labels, job["seeds"])
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
