"""once_per_node=True: of 8 processes on a node, one downloads; every blob is fetched exactly once."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from aml_identity.datastore._download import RANGE_SIZE

pytestmark = [pytest.mark.azurite, pytest.mark.slow]

PROCESSES = 8
CHILD = textwrap.dedent(
    """
    import json, sys
    from aml_identity.datastore import download

    result = download(sys.argv[1], sys.argv[2], once_per_node=True, progress=False)
    print(json.dumps(result.to_dict()))
    """
)


def test_eight_processes_fetch_every_blob_exactly_once(storage_job, store, open_proxy, via, tree, tmp_path):  # noqa: PLR0917
    rng = random.Random(11)
    files = {f"ds/{i:04d}.jpg": rng.randbytes(rng.randrange(1, 3000)) for i in range(300)}
    files["ds/shard.tar"] = rng.randbytes(2 * RANGE_SIZE + 5)
    store.seed(files)
    dest = tmp_path / "node-local" / "dataset"
    env = via(open_proxy)

    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, store.uri("ds/"), str(dest)],
            env={**env, "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(PROCESSES)
    ]
    results = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        results.append(json.loads(out))

    assert tree(dest) == {name.removeprefix("ds/"): content for name, content in files.items()}
    gets = Counter((r.path, r.range) for r in open_proxy.requests if r.method == "GET" and "/ds/" in r.path)
    assert all(count == 1 for count in gets.values()), [k for k, v in gets.items() if v > 1]
    assert {path.split("/ds/", 1)[1] for path, _ in gets} == {n.removeprefix("ds/") for n in files}
    assert len(gets) == len(files) - 1 + 3  # the big blob in three ranges
    listings = [r for r in open_proxy.requests if r.action == "list"]
    assert len(listings) == 1  # the others did not even list
    assert Counter(r["outcome"] for r in results) == {"transferred": 1, "waited": PROCESSES - 1}
    elected = [r for r in results if r["outcome"] == "transferred"]
    assert elected[0]["transferred_files"] == len(files)
    assert not elected[0]["shared"]
    waited = [r for r in results if r["outcome"] == "waited"]
    assert all(r["shared"] and r["files"] == len(files) and r["bytes_transferred"] == 0 for r in waited)
