"""Peer of Sentinel's network API for `analyze_load` (docs/benchmarks.md, "Network API").

The stack the first design named: a FastAPI service (served by uvicorn) scoring network feature
rows with scikit-learn's Isolation Forest, One-Class SVM and LOF. It does the work Sentinel's
`POST /api/v1/analyze` does for feature vectors, with the same model sizes as Sentinel's
defaults: parse the JSON body, encode the rows (ln(1 + x) of the heavy-tailed numbers, one-hot
categories, standard scaling), score with the three models (Isolation Forest of 100 trees on
256-row samples; LOF with 20 neighbours and the One-Class SVM with nu = 0.5, each fitted on at
most 1,000 training rows), turn each model's score into its rank among the training rows' scores,
average the three, flag rows above the training rows' 99th percentile, and answer JSON.

Usage: python3 network_api_peer.py TRAINING_ROWS.json PORT
TRAINING_ROWS.json holds a JSON array of feature objects ({name: value}); the service fits on
them, then listens on 127.0.0.1:PORT (the load generator polls it until it answers).
fastapi and uvicorn are installed with pip when missing (scikit-learn and numpy come from
.ci/requirements.txt).
"""

import json
import subprocess
import sys
import warnings


def import_or_install():
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "fastapi", "uvicorn"],
            check=True,
        )


import_or_install()

import numpy as np  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import Response  # noqa: E402
from sklearn.ensemble import IsolationForest  # noqa: E402
from sklearn.neighbors import LocalOutlierFactor  # noqa: E402
from sklearn.svm import OneClassSVM  # noqa: E402

NUMERIC = [
    "bytes_sent_delta", "bytes_received_delta", "bytes_sent_total", "bytes_received_total",
    "send_rate", "receive_rate", "rtt_ms", "retransmits", "remote_is_loopback",
    "process_connection_rate", "process_distinct_remote_ports", "process_distinct_remote_hosts",
    "process_failed_connects", "process_send_rate", "process_receive_rate",
    "host_connection_rate", "host_distinct_remote_ports", "host_failed_connects",
    "host_send_rate", "host_receive_rate",
]
CATEGORICAL = ["protocol", "state", "change", "remote_port_class"]
KEPT_ROWS = 1000
SEED = 7


class Encoder:
    """ln(1 + x) of the heavy-tailed numbers, missing values as the training median, standard
    scaling, one-hot categories (a category unseen in training encodes as zeros)."""

    def __init__(self, rows):
        numbers = self.numbers(rows)
        with warnings.catch_warnings():
            # A feature no training row has (rates of first sightings) is 0 throughout, as in Sentinel.
            warnings.simplefilter("ignore", RuntimeWarning)
            self.median = np.nan_to_num(np.nanmedian(numbers, axis=0), nan=0.0)
        numbers = np.where(np.isnan(numbers), self.median, numbers)
        self.mean = numbers.mean(axis=0)
        self.scale = numbers.std(axis=0)
        self.scale[self.scale == 0] = 1.0
        self.categories = [sorted({row.get(name, "") for row in rows}) for name in CATEGORICAL]
        self.index = [{value: i for i, value in enumerate(values)} for values in self.categories]

    @staticmethod
    def numbers(rows):
        numbers = np.array(
            [[np.nan if row.get(name) is None else float(row[name]) for name in NUMERIC] for row in rows],
            dtype=np.float64,
        )
        heavy = [i for i, name in enumerate(NUMERIC) if name != "remote_is_loopback"]
        numbers[:, heavy] = np.log1p(numbers[:, heavy])
        return numbers

    def encode(self, rows):
        numbers = self.numbers(rows)
        numbers = np.where(np.isnan(numbers), self.median, numbers)
        numbers = (numbers - self.mean) / self.scale
        blocks = [numbers]
        for name, index in zip(CATEGORICAL, self.index):
            onehot = np.zeros((len(rows), len(index)))
            for r, row in enumerate(rows):
                column = index.get(row.get(name, ""))
                if column is not None:
                    onehot[r, column] = 1.0
            blocks.append(onehot)
        return np.hstack(blocks)


class Models:
    def __init__(self, rows):
        self.encoder = Encoder(rows)
        x = self.encoder.encode(rows)
        kept = np.random.default_rng(SEED).permutation(len(x))[:KEPT_ROWS]
        self.members = [
            IsolationForest(n_estimators=100, max_samples=256, random_state=SEED).fit(x),
            LocalOutlierFactor(n_neighbors=20, novelty=True).fit(x[kept]),
            OneClassSVM(kernel="rbf", nu=0.5, gamma="scale").fit(x[kept]),
        ]
        # Each member's training scores, sorted: a new score becomes its rank among them.
        self.reference = [np.sort(-member.score_samples(x)) for member in self.members]
        self.threshold = np.quantile(self.combine(x), 0.99)

    def combine(self, x):
        ranks = [
            np.searchsorted(reference, -member.score_samples(x)) / len(reference)
            for member, reference in zip(self.members, self.reference)
        ]
        return np.mean(ranks, axis=0)

    def judge(self, rows):
        scores = self.combine(self.encoder.encode(rows))
        return [{"score": float(score), "anomaly": bool(score > self.threshold)} for score in scores]


def main():
    training_path, port = sys.argv[1], int(sys.argv[2])
    with open(training_path) as file:
        models = Models(json.load(file))
    app = FastAPI()

    @app.post("/api/v1/analyze")
    async def analyze(request: Request):
        body = json.loads(await request.body())
        rows = body.get("features", [])
        results = models.judge(rows) if rows else []
        return Response(json.dumps({"results": results}), media_type="application/json")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    server.run()


if __name__ == "__main__":
    main()
