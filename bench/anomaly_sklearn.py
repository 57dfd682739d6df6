"""scikit-learn peer of `sentinel bench anomaly`.

Reads the job file the bench writes (one data set x seed: the exact training
and test matrices as .npy, the test labels, and the training rows the exact
One-Class SVM is fitted on), runs scikit-learn's detectors with their default
hyper-parameters, and prints a JSON array with one object per model x thread
count: ROC AUC, PR AUC, fit and score seconds.

Protocol (ADBench, unsupervised): fit on all training rows, score the test rows
with score_samples (negated, so that higher is more anomalous). LOF runs in
novelty mode (fit on the training split, score the test split). The exact
One-Class SVM is fitted on the given subsample of the training rows; the
approximate one (RBFSampler + SGDOneClassSVM, scikit-learn's documented method
for large data) on all of them.
"""

import json
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits
from sklearn.ensemble import IsolationForest
from sklearn.kernel_approximation import RBFSampler
from sklearn.linear_model import SGDOneClassSVM
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.neighbors import LocalOutlierFactor
from sklearn.pipeline import make_pipeline
from sklearn.svm import OneClassSVM


def gamma_scale(x):
    variance = x.var()
    return 1.0 / (x.shape[1] * variance) if variance > 0 else 1.0


def make_model(name, threads, seed, train, job):
    jobs = None if threads == 1 else threads
    if name == "iforest":
        return IsolationForest(n_estimators=100, max_samples=256, random_state=seed, n_jobs=jobs)
    if name == "lof":
        return LocalOutlierFactor(n_neighbors=20, novelty=True, n_jobs=jobs)
    if name == "ocsvm":
        return OneClassSVM(kernel="rbf", nu=0.5, gamma="scale")
    if name == "ocsvm-rff":
        return make_pipeline(
            RBFSampler(gamma=gamma_scale(train), n_components=job["rff_components"], random_state=seed),
            SGDOneClassSVM(nu=0.5, random_state=seed),
        )
    raise ValueError(f"unknown model {name!r}")


# libsvm and the SGD solver have no threads: run them once.
SINGLE_THREADED = {"ocsvm", "ocsvm-rff"}


def main():
    with open(sys.argv[1]) as f:
        job = json.load(f)
    train = np.load(job["train"])
    test = np.load(job["test"])
    labels = np.load(job["labels"]).astype(bool)
    ocsvm_rows = np.load(job["ocsvm_rows"])
    results = []
    for name in job["models"]:
        fit_rows = train[ocsvm_rows] if name == "ocsvm" else train
        for threads in job["threads"]:
            if name in SINGLE_THREADED and threads != 1:
                continue
            model = make_model(name, threads, job["seed"], fit_rows, job)
            # BLAS threads too: single-threaded means single-threaded.
            with threadpool_limits(limits=threads):
                start = time.perf_counter()
                model.fit(fit_rows)
                fit_seconds = time.perf_counter() - start
                start = time.perf_counter()
                scores = -model.score_samples(test)
                score_seconds = time.perf_counter() - start
            results.append(
                {
                    "dataset": job["dataset"],
                    "model": name,
                    "implementation": "scikit-learn",
                    "threads": threads,
                    "seed": job["seed"],
                    "n_train": int(fit_rows.shape[0]),
                    "n_test": int(test.shape[0]),
                    "roc_auc": float(roc_auc_score(labels, scores)),
                    "pr_auc": float(average_precision_score(labels, scores)),
                    "fit_seconds": fit_seconds,
                    "score_seconds": score_seconds,
                }
            )
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
