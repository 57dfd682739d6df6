#!/usr/bin/env python3
"""scikit-learn peer of Sentinel's behaviour model, run by `sentinel bench dynamic`.

Both tasks fit TfidfVectorizer(1-3-grams, sublinear tf, min_df=2) + LogisticRegression (L2,
lbfgs) with C chosen by grouped 5-fold cross-validation over the same grid as Sentinel, on
the training file Sentinel wrote for one split, and print one JSON object with the outputs
on the test file (Sentinel computes every figure from them with its own metric code):

* `--task detector`: MalBehavD-schema CSVs (sha256, labels, API calls); the test scores
  (probability of malware) and the timings.
* `--task families`: JSON lines `{"family": ..., "calls": "a b c ..."}`; the predicted
  family of each test line.
"""
import argparse
import csv
import json
import sys
import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline

C_GRID = [1.0, 3.0, 10.0, 30.0, 100.0]


def read(path):
    csv.field_size_limit(sys.maxsize)
    docs, labels = [], []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            labels.append(int(row[1]))
            docs.append(" ".join(cell for cell in row[2:] if cell))
    return docs, np.array(labels)


def read_families(path):
    docs, labels = [], []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            docs.append(row["calls"])
            labels.append(row["family"])
    return docs, np.array(labels)


def families(args):
    train_docs, train_y = read_families(args.train)
    test_docs, _ = read_families(args.test)
    groups = np.unique(train_docs, return_inverse=True)[1]
    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 3), token_pattern=r"\S+", lowercase=True, sublinear_tf=True, min_df=2),
        LogisticRegression(max_iter=2000),
    )
    search = GridSearchCV(
        pipeline,
        {"logisticregression__C": C_GRID},
        scoring="accuracy",
        cv=StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=args.seed),
        n_jobs=1,
    )
    search.fit(train_docs, train_y, groups=groups)
    print(json.dumps({
        "predictions": search.best_estimator_.predict(test_docs).tolist(),
        "c": search.best_params_["logisticregression__C"],
    }))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=["detector", "families"], default="detector")
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.task == "families":
        families(args)
        return
    train_docs, train_y = read(args.train)
    test_docs, _ = read(args.test)
    groups = np.unique(train_docs, return_inverse=True)[1]

    started = time.perf_counter()
    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 3), token_pattern=r"\S+", lowercase=True, sublinear_tf=True, min_df=2),
        LogisticRegression(max_iter=2000),
    )
    search = GridSearchCV(
        pipeline,
        {"logisticregression__C": C_GRID},
        scoring="roc_auc",
        cv=StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=args.seed),
        n_jobs=1,
    )
    search.fit(train_docs, train_y, groups=groups)
    train_seconds = time.perf_counter() - started

    model = search.best_estimator_
    started = time.perf_counter()
    scores = model.predict_proba(test_docs)[:, 1]
    batch_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for doc in test_docs:
        model.predict_proba([doc])
    single_seconds = time.perf_counter() - started
    print(json.dumps({
        "scores": scores.tolist(),
        "c": search.best_params_["logisticregression__C"],
        "features": len(model.named_steps["tfidfvectorizer"].vocabulary_),
        "train_seconds": train_seconds,
        "batch_sequences_per_second": len(test_docs) / batch_seconds,
        "single_sequences_per_second": len(test_docs) / single_seconds,
    }))


if __name__ == "__main__":
    main()
