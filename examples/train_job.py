"""An example training job that reads and writes storage as its compute cluster's managed identity.

It starts 4 ranks, as ``torchrun --nproc-per-node 4`` would on one node. Every rank creates its own
credential and reads its shard of the training data; rank 0 writes the result. However many ranks there are,
the node makes one request to the identity endpoint: the ranks share the node-wide token cache.

Offline, against the emulators and Azurite::

    aml-identity sandbox --datastore training_data=examples/data -- python examples/train_job.py

On Azure ML, submit it as a command job on a cluster whose managed identity has Storage Blob Data Contributor
on the account, with ``--account-url https://<account>.blob.core.windows.net``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import time

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

from aml_identity import default_credential

RANKS = 4


def account_url(account: str) -> str:
    """The account's blob endpoint: the sandbox maps it to Azurite, Azure uses the public name."""
    overrides = json.loads(os.environ.get("AML_IDENTITY_BLOB_ENDPOINTS", "{}"))
    return overrides.get(account, f"https://{account}.blob.core.windows.net")


def train_shard(rank: int, url: str, container: str) -> dict[str, int]:
    """One rank: read every RANKS-th file of the training data and 'train' on it (count its bytes)."""
    os.environ["LOCAL_RANK"] = str(rank)
    credential = default_credential()  # each rank has its own credential; they share the node's token cache
    data = BlobServiceClient(url, credential=credential).get_container_client(container)
    names = sorted(blob.name for blob in data.list_blobs())
    shard = names[rank::RANKS]
    return {name: len(data.download_blob(name).readall()) for name in shard}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--account", default="devstoreaccount1", help="storage account of the datastores")
    parser.add_argument("--account-url", help="its blob endpoint (default: from the account name)")
    parser.add_argument("--input", default="training-data", help="container with the training data")
    parser.add_argument("--output", default="outputs", help="container for the results")
    args = parser.parse_args()
    url = args.account_url or account_url(args.account)

    credential = default_credential()
    print(f"job identity: {credential.identity.describe()}")
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(RANKS) as pool:
        shards = pool.starmap(train_shard, [(rank, url, args.input) for rank in range(RANKS)])
    seen = {name: size for shard in shards for name, size in shard.items()}
    print(f"{RANKS} ranks read {len(seen)} files, {sum(seen.values())} bytes, in {time.perf_counter() - start:.1f} s")

    outputs = BlobServiceClient(url, credential=credential).get_container_client(args.output)
    with contextlib.suppress(ResourceExistsError):
        outputs.create_container()
    model = json.dumps({"files": len(seen), "bytes": sum(seen.values())}).encode()
    outputs.upload_blob("model/summary.json", model, overwrite=True)
    print(f"wrote {args.output}/model/summary.json ({len(model)} bytes)")


if __name__ == "__main__":
    main()
