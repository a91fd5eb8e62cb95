"""A 4-rank training job that runs as its compute cluster's managed identity, end to end (this is ``make demo``).

Every rank is one process of a distributed Azure ML command job (``distribution: pytorch``,
``process_count_per_instance: 4``): Azure ML sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``, and ``DEFAULT_IDENTITY_CLIENT_ID`` to the cluster's default identity. The job

1. prints ``aml-identity whoami`` (rank 0): which identity the job is, from its token's claims;
2. downloads its input once for the node (``download(..., once_per_node=True)``: one rank fetches, the others
   wait for it and read the same local copy);
3. fits ``y = w0 + w1*x1 + w2*x2`` by least squares: each rank sums the normal equations over its shard of the
   rows, rank 0 gathers the sums over ``MASTER_ADDR:MASTER_PORT`` and solves them (plain Python: three unknowns
   need no NumPy);
4. writes the model and its metrics through ``upload_on_exit`` (uploaded when the job ends, or when a
   low-priority node is preempted).

Offline, after ``examples/setup_cluster_identity.py`` has created the cluster with a user-assigned identity and
granted it its storage roles, in the same sandbox session (``--cluster`` makes the job run as that cluster's
identity, read from the ARM emulator after the setup step)::

  aml-identity sandbox --datastore training_data=examples/data --datastore outputs \\
      --setup "python examples/setup_cluster_identity.py --identity uai-sandbox --input-datastore training_data \\
      --output-datastore outputs" --cluster cpu-cluster --processes 4 --output outputs=demo-outputs \\
      -- python examples/train_job.py

On Azure ML, submit it as a command job on that cluster with the same datastore URIs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Client, Listener
from pathlib import Path

from aml_identity.datastore import download, upload_on_exit

DEFAULT_DATA = "azureml://datastores/training_data/paths/regression/"
DEFAULT_OUTPUTS = "azureml://datastores/outputs/paths/run-1/"
FEATURES = ("x1", "x2")
# How long a rank keeps trying to reach rank 0 while it starts listening (ranks start together).
CONNECT_TIMEOUT_S = 60.0
CONNECT_RETRY_S = 0.05

K = len(FEATURES) + 1  # unknowns: the intercept w0 and one weight per feature


def shard_stats(rows: list[dict[str, str]]) -> list[float]:
    """Sum the normal equations over ``rows``, flat: X'X (K*K), X'y (K), y'y, sum(y), n (X has a leading 1)."""
    stats = [0.0] * (K * K + K + 3)
    for row in rows:
        x = [1.0, *(float(row[f]) for f in FEATURES)]
        y = float(row["y"])
        for i in range(K):
            stats[K * K + i] += x[i] * y
            for j in range(K):
                stats[i * K + j] += x[i] * x[j]
        stats[-3] += y * y
        stats[-2] += y
        stats[-1] += 1
    return stats


def solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Solve ``a w = b`` by Gaussian elimination with partial pivoting."""
    n = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            factor = m[r][col] / m[col][col]
            m[r] = [v - factor * p for v, p in zip(m[r], m[col], strict=True)]
    w = [0.0] * n
    for r in reversed(range(n)):
        w[r] = (m[r][n] - sum(m[r][c] * w[c] for c in range(r + 1, n))) / m[r][r]
    return w


def fit(stats: list[float]) -> tuple[list[float], dict[str, float]]:
    """The least-squares weights and their metrics (RMSE, R²) from the summed normal equations."""
    xtx = [stats[i * K : (i + 1) * K] for i in range(K)]
    xty = stats[K * K : K * K + K]
    yty, sum_y, n = stats[-3:]
    w = solve(xtx, xty)
    sse = max(yty - 2 * sum(w[i] * xty[i] for i in range(K))
              + sum(w[i] * xtx[i][j] * w[j] for i in range(K) for j in range(K)), 0.0)  # fmt: skip
    sst = yty - sum_y * sum_y / n
    return w, {"rows": n, "rmse": (sse / n) ** 0.5, "r2": 1 - sse / sst}


def gather(stats: list[float], rank: int, world: int) -> list[float] | None:
    """Sum every rank's statistics on rank 0 over MASTER_ADDR:MASTER_PORT; None on the other ranks."""
    if world == 1:
        return stats
    address = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
    if rank == 0:
        total = stats
        with Listener(address) as listener:
            for _ in range(world - 1):
                with listener.accept() as conn:
                    total = [a + b for a, b in zip(total, conn.recv(), strict=True)]
        return total
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            with Client(address) as conn:
                conn.send(stats)
                return None
        except ConnectionRefusedError:  # noqa: PERF203 - a retry loop, not a hot one
            if time.monotonic() > deadline:
                raise
            time.sleep(CONNECT_RETRY_S)  # rank 0 is not listening yet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="datastore URI of the training data (CSV: x1,x2,y)")
    parser.add_argument("--outputs", default=DEFAULT_OUTPUTS, help="datastore URI for the model and metrics")
    parser.add_argument("--workdir", default=tempfile.gettempdir(), help="the node's local disk (default: TMPDIR)")
    args = parser.parse_args()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    node = Path(args.workdir) / f"aml-job-{os.environ.get('AZUREML_RUN_ID', 'local')}"

    if rank == 0:
        subprocess.run([sys.executable, "-m", "aml_identity", "whoami"], check=True)
    result = download(args.data, node / "data", once_per_node=True, progress=False)
    what = {"transferred": "downloaded", "waited": "waited for", "up_to_date": "found up to date"}[result.outcome]
    print(f"rank {rank}: {what} {result.files} file(s) on the node")

    with (node / "data" / "train.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    total = gather(shard_stats(rows[rank::world]), rank, world)
    if total is None:
        return
    outputs = node / "outputs"
    with upload_on_exit(outputs, args.outputs) as uploader:
        weights, metrics = fit(total)
        outputs.mkdir(parents=True, exist_ok=True)
        model = {"intercept": weights[0], **dict(zip(FEATURES, weights[1:], strict=True))}
        (outputs / "model.json").write_text(json.dumps(model, indent=2))
        (outputs / "metrics.json").write_text(json.dumps({**metrics, "ranks": world}, indent=2))
        print(f"fit on {int(metrics['rows'])} rows by {world} ranks: y = {weights[0]:.3f} + {weights[1]:.3f}*x1 "
              f"+ {weights[2]:.3f}*x2, RMSE {metrics['rmse']:.3f}, R² {metrics['r2']:.4f}")  # fmt: skip
    landed = uploader.last_result
    print(f"uploaded {landed.transferred_files if landed else 0} file(s) to {args.outputs}")


if __name__ == "__main__":
    main()
