"""Unsupervised ensemble rules measured side by side (docs/benchmarks.md, "Choosing the
ensemble's rule").

For every ADBench file of ../shared/data/anomaly/adbench (stratified 70/30 split per seed,
training labels unused) and NSL-KDD (fit on the normal rows of KDDTrain+, score KDDTest+ and
KDDTest-21), fits the ensemble's three members with scikit-learn, whose scores match Sentinel's
(`sentinel bench anomaly`: LOF and the exact SVM to 1e-4, the forest within noise), scores the
test rows and 5,000 calibration rows drawn from the training rows, and combines the members with
each candidate rule. Prints each member's ROC AUC and each rule's margin over the best member,
averaged over the seeds, and how many data sets each rule keeps within 0.01 of the best member
and at or above it.

    python3 bench/anomaly_ensemble_rules.py [--seeds 0,1,2] [--cache FILE]

`--cache` keeps the member scores in an .npz, so that changing a rule does not refit.
"""

import argparse
import csv
import glob
import os

import numpy as np
from scipy.stats import rankdata
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import LocalOutlierFactor
from sklearn.svm import OneClassSVM
from threadpoolctl import threadpool_limits

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
MEMBERS = ["iforest", "lof", "ocsvm"]


def stratified_split(y, seed):
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in (0, 1):
        rows = np.flatnonzero(y == label)
        rng.shuffle(rows)
        n_test = int(round(len(rows) * 0.3))
        test += list(rows[:n_test])
        train += list(rows[n_test:])
    return np.sort(train), np.sort(test)


def nsl_kdd():
    """One-hot of the 3 symbolic columns, log1p + min-max of the others, fitted on normal rows."""
    folder = os.path.join(DATA, "network", "nsl-kdd")

    def read(name):
        rows = [r for r in csv.reader(open(os.path.join(folder, name))) if r]
        return {c: np.array([r[c] for r in rows]) for c in range(43)}

    train, test = read("KDDTrain+.txt"), read("KDDTest+.txt")
    normal = {c: v[train[41] == "normal"] for c, v in train.items()}

    def encode(table):
        parts = []
        for c in range(41):
            if c in (1, 2, 3):
                parts.append(np.stack([(table[c] == k).astype(float) for k in sorted(set(normal[c]))], 1))
            else:
                fitted = np.log1p(normal[c].astype(float))
                low, high = fitted.min(), fitted.max()
                scaled = (np.log1p(table[c].astype(float)) - low) / (high - low if high > low else 1.0)
                parts.append(scaled[:, None])
        return np.hstack(parts)

    hard = test[42].astype(int) < 21
    return encode(normal), encode(test), test[41] != "normal", hard


def member_scores(seeds):
    """{(dataset, seed): (calibration scores, test scores, test labels)}, scores one column a member."""
    out = {}
    for seed in seeds:
        sets = []
        for path in sorted(glob.glob(os.path.join(DATA, "anomaly", "adbench", "*.npz"))):
            data = np.load(path)
            x, y = data["X"].astype(float), data["y"].astype(bool)
            train, test = stratified_split(y, seed)
            sets.append((os.path.basename(path)[:-4], x[train], x[test], y[test], None))
        train, test, labels, hard = nsl_kdd()
        sets.append(("nsl-kdd", train, test, labels, hard))
        for name, train, test, labels, hard in sets:
            rng = np.random.default_rng(seed + 100)
            calibration = train[np.sort(rng.choice(len(train), min(5000, len(train)), replace=False))]
            svm_rows = train[np.sort(rng.choice(len(train), min(20000, len(train)), replace=False))]
            models = {
                "iforest": IsolationForest(n_estimators=100, max_samples=256, random_state=seed),
                "lof": LocalOutlierFactor(n_neighbors=20, novelty=True),
                "ocsvm": OneClassSVM(kernel="rbf", nu=0.5, gamma="scale"),
            }
            cal, tst = [], []
            with threadpool_limits(1):
                for member, model in models.items():
                    model.fit(svm_rows if member == "ocsvm" else train)
                    cal.append(-model.score_samples(calibration))
                    tst.append(-model.score_samples(test))
            cal, tst = np.stack(cal, 1), np.stack(tst, 1)
            out[(name, seed)] = (cal, tst, labels)
            if hard is not None:
                out[("nsl-kdd-21", seed)] = (cal, tst[hard], labels[hard])
            print(f"members fitted: {name} seed {seed}", flush=True)
    return out


def rank_normalise(calibration, scores):
    """The ensemble's map: position among 1,001 calibration quantiles, saturating beyond them."""
    quantiles = np.quantile(calibration, np.linspace(0, 1, 1001))
    low, high = quantiles[0], quantiles[-1]
    spread, step = (high - low if high > low else 1.0), 1 / 1000
    out = np.interp(scores, quantiles, np.linspace(0, 1, 1001))
    above, below = scores > high, scores < low
    out[above] = 1 + step * (1 - 1 / (1 + (scores[above] - high) / spread))
    out[below] = -step * (1 - 1 / (1 + (low - scores[below]) / spread))
    return out


def z_normalise(calibration, scores):
    sd = calibration.std()
    return (scores - calibration.mean()) / (sd if sd > 0 else 1.0)


def robust_z_normalise(calibration, scores):
    median = np.median(calibration)
    mad = 1.4826 * np.median(np.abs(calibration - median))
    return (scores - median) / (mad if mad > 0 else (calibration.std() or 1.0))


def normalised(normalise, cal, tst):
    k = cal.shape[1]
    return (np.stack([normalise(cal[:, m], cal[:, m]) for m in range(k)], 1),
            np.stack([normalise(cal[:, m], tst[:, m]) for m in range(k)], 1))


def pseudo_label_auc(cal, share=0.1):
    """Each member's ROC AUC against pseudo-labels: the `share` of calibration rows the other
    members rank highest on average."""
    aucs = []
    for m in range(cal.shape[1]):
        others = np.delete(cal, m, axis=1).mean(1)
        labels = others >= np.quantile(others, 1 - share)
        aucs.append(roc_auc_score(labels, cal[:, m]) if 0 < labels.sum() < len(labels) else 0.5)
    return np.array(aucs)


def agreement_weights(cal):
    """The previous `weigh_by_agreement`: 2s - 1, s a member's mean normalised score on the rows
    the others rank in their top tenth."""
    raw = []
    for m in range(cal.shape[1]):
        others = np.delete(cal, m, axis=1).mean(1)
        top = others >= np.quantile(others, 0.9)
        raw.append(max(2 * np.minimum(cal[top, m], 1).mean() - 1, 0))
    raw = np.array(raw)
    return raw / raw.sum() if raw.sum() > 0 else np.full(len(raw), 1 / len(raw))


def select(cal, tst):
    """SELECT, vertical (Rayana & Akoglu 2016): greedily add members, in order of their rank
    correlation with the mean, while the combination's correlation with it grows."""
    target = rankdata(cal.mean(1))
    corr = lambda s: np.corrcoef(rankdata(s), target)[0, 1]
    order = np.argsort([corr(cal[:, m]) for m in range(cal.shape[1])])[::-1]
    chosen, best = [order[0]], corr(cal[:, order[0]])
    for m in order[1:]:
        value = corr(cal[:, chosen + [m]].mean(1))
        if value > best:
            chosen, best = chosen + [m], value
    return tst[:, chosen].mean(1)


def rules(cal, tst):
    rank_cal, rank = normalised(rank_normalise, cal, tst)
    z_cal, z = normalised(z_normalise, cal, tst)
    _, robust = normalised(robust_z_normalise, cal, tst)
    agreement = pseudo_label_auc(rank_cal)
    out = {
        "rank mean (previous default)": rank.mean(1),
        "rank, agreement weights (2s-1)": rank @ agreement_weights(rank_cal),
        "z-score mean": z.mean(1),
        "robust z-score mean": robust.mean(1),
        "rank max": rank.max(1),
        "rank, pseudo-AUC weights": rank @ (np.maximum(agreement - 0.5, 0) / max(np.maximum(agreement - 0.5, 0).sum(), 1e-12)),
        "rank, SELECT": select(rank_cal, rank),
        "z-score, SELECT": select(z_cal, z),
        "most central member only": rank[:, agreement.argmax()],
    }
    for floor in (0.6, 0.7):
        keep = agreement >= floor if (agreement >= floor).any() else agreement == agreement.max()
        out[f"rank, drop pseudo-AUC < {floor}"] = rank[:, keep].mean(1)
    for tolerance in (0.02, 0.05, 0.1):
        keep = agreement >= agreement.max() - tolerance
        out[f"rank, central within {tolerance}" + (" (the default)" if tolerance == 0.02 else "")] = rank[:, keep].mean(1)
        out[f"z-score, central within {tolerance}"] = z[:, keep].mean(1)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cache")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.cache and os.path.exists(args.cache):
        stored = np.load(args.cache)
        scores = {tuple(k.split("|")[:1]) + (int(k.split("|")[1]),): None for k in stored if k.endswith("|labels")}
        scores = {key: (stored[f"{key[0]}|{key[1]}|cal"], stored[f"{key[0]}|{key[1]}|test"], stored[f"{key[0]}|{key[1]}|labels"]) for key in scores}
    else:
        scores = member_scores(seeds)
        if args.cache:
            flat = {}
            for (name, seed), (cal, tst, labels) in scores.items():
                flat[f"{name}|{seed}|cal"], flat[f"{name}|{seed}|test"], flat[f"{name}|{seed}|labels"] = cal, tst, labels
            np.savez(args.cache, **flat)
    auc = {}
    for (name, seed), (cal, tst, labels) in scores.items():
        for m, member in enumerate(MEMBERS):
            auc.setdefault((name, member), []).append(roc_auc_score(labels, tst[:, m]))
        for rule, combined in rules(cal, tst).items():
            auc.setdefault((name, rule), []).append(roc_auc_score(labels, combined))
    datasets = sorted({name for name, _ in scores})
    best = {d: max(np.mean(auc[(d, m)]) for m in MEMBERS) for d in datasets}
    print("| member | " + " | ".join(datasets) + " |")
    print("|---|" + "---|" * len(datasets))
    for member in MEMBERS:
        print(f"| {member} | " + " | ".join(f"{np.mean(auc[(d, member)]):.4f}" for d in datasets) + " |")
    print()
    print("| rule (margin over the best member) | " + " | ".join(datasets) + " | within 0.01 | at or above | mean |")
    print("|---|" + "---|" * (len(datasets) + 3))
    names = [rule for (_, rule) in auc if rule not in MEMBERS]
    for rule in dict.fromkeys(names):
        margins = np.array([np.mean(auc[(d, rule)]) - best[d] for d in datasets])
        print(f"| {rule} | " + " | ".join(f"{m:+.4f}" for m in margins)
              + f" | {np.sum(margins >= -0.01)} | {np.sum(margins >= 0)} | {margins.mean():+.4f} |")


if __name__ == "__main__":
    main()
