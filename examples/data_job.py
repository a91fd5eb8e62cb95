"""A training job that downloads its data once per node, trains on 4 ranks, and uploads its outputs on exit.

Each of the 4 ranks (as ``torchrun --nproc-per-node 4`` would start them) calls ``download(...,
once_per_node=True)``: one rank fetches the dataset, the others wait for it and read the same local copy.
Outputs are written under ``outputs/`` and uploaded when the job ends - or when the node is preempted
(SIGTERM) - by ``upload_on_exit``.

The URIs are the ones an Azure ML job is given (``azureml://datastores/<name>/paths/...``): they are
resolved through the workspace's datastore API with the job identity. Offline, against the emulators (the
ARM emulator serves the workspace and its datastores, Azurite the storage, behind a proxy that enforces the
identity's storage role as Azure does)::

  aml-identity sandbox --datastore training_data=examples/data --datastore outputs -- python examples/data_job.py

On Azure ML, submit it as a command job on a cluster whose identity has Storage Blob Data Reader on the data's
account and Storage Blob Data Contributor on the outputs' account.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
from pathlib import Path

from aml_identity import default_credential
from aml_identity.datastore import download, upload_on_exit

RANKS = 4
DEFAULT_DATA = "azureml://datastores/training_data/paths/images/"
DEFAULT_OUTPUTS = "azureml://datastores/outputs/paths/run-1/"


def rank_main(rank: int, data_uri: str, local: str) -> dict[str, int]:
    """One rank: make sure the data is on the node (one download per node), then 'train' on its shard."""
    os.environ["LOCAL_RANK"] = str(rank)
    result = download(data_uri, local, once_per_node=True, progress=False)
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    shard = files[rank::RANKS]
    return {
        "rank": rank,
        # "transferred": this rank downloaded for the node; "waited": another rank did; "up_to_date": this
        # rank checked storage and the node already had every file (a rerun on a node that kept its disk).
        "downloaded": int(result.outcome != "waited"),
        "files": len(files),
        "shard_bytes": sum(p.stat().st_size for p in shard),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="datastore URI of the training data")
    parser.add_argument("--outputs", default=DEFAULT_OUTPUTS, help="datastore URI for the outputs")
    args = parser.parse_args()

    print(f"job identity: {default_credential().identity.describe()}")
    work = Path(tempfile.mkdtemp(prefix="aml-job-"))
    outputs = work / "outputs"
    # Uploads when the block ends, at exit, and on SIGTERM/SIGINT (a preempted low-priority node).
    with upload_on_exit(outputs, args.outputs) as uploader:
        with multiprocessing.get_context("spawn").Pool(RANKS) as pool:
            ranks = pool.starmap(rank_main, [(rank, args.data, str(work / "data")) for rank in range(RANKS)])
        downloaders = [r["rank"] for r in ranks if r["downloaded"]]
        print(f"{RANKS} ranks, {ranks[0]['files']} files on the node, downloaded by rank {downloaders}")
        if len(downloaders) != 1:
            raise SystemExit("expected exactly one rank per node to download")

        (outputs / "model").mkdir(parents=True, exist_ok=True)
        summary = {"files": ranks[0]["files"], "bytes": sum(r["shard_bytes"] for r in ranks)}
        (outputs / "model" / "summary.json").write_text(json.dumps(summary))
    result = uploader.last_result
    print(f"uploaded {result.transferred_files if result else 0} file(s) to {args.outputs}")


if __name__ == "__main__":
    main()
