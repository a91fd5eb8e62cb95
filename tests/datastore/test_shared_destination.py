"""Several nodes downloading into one shared folder (NFS), and what TransferResult.outcome says to each process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from aml_identity.datastore import download
from aml_identity.datastore._download import RANGE_SIZE
from aml_identity.datastore._paths import claim_partial, journal_path, partial_path, remove_stale_partial

# Each child waits for the go signal on a pipe, so the nodes' downloads really overlap.
CHILD = textwrap.dedent(
    """
    import json, os, sys
    from aml_identity.datastore import download

    os.read(int(sys.argv[3]), 1)
    result = download(sys.argv[1], sys.argv[2], once_per_node=True, progress=False)
    print(json.dumps(result.to_dict()))
    """
)
NODES = 2
# The workspace the workspace_job fixture serves (tests/datastore/conftest.py).
WS = ("5ab5c1e7-0000-4000-8000-00000000da7a", "rg-data", "ws-data")
RANKS_PER_NODE = 2


def _start_nodes(uri: str, dest, environ: dict[str, str], tmp_path) -> list[tuple[int, dict[str, object]]]:
    """Run NODES x RANKS_PER_NODE downloaders of ``uri`` into ``dest``, each node with its own temp and cache."""
    read_go, write_go = os.pipe()
    children: list[tuple[int, subprocess.Popen[str]]] = []
    try:
        for node in range(NODES):
            node_dir = tmp_path / f"node-{node}"
            (node_dir / "tmp").mkdir(parents=True)
            env = {**environ, "TMPDIR": str(node_dir / "tmp"), "AML_IDENTITY_CACHE_DIR": str(node_dir / "cache")}
            for rank in range(RANKS_PER_NODE):
                child = subprocess.Popen(
                    [sys.executable, "-c", CHILD, uri, str(dest), str(read_go)],
                    env={**env, "LOCAL_RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    pass_fds=(read_go,),
                )  # fmt: skip
                children.append((node, child))
    finally:
        os.close(read_go)
        os.write(write_go, b"g" * len(children))
        os.close(write_go)
    results = []
    for node, child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        results.append((node, json.loads(out)))
    return results


@pytest.mark.slow
def test_two_nodes_download_into_one_shared_folder_at_once_and_both_verify(  # noqa: PLR0917 - fixtures
    storage_job, store, open_proxy, via, tree, tmp_path
):
    rng = random.Random(5)
    files = {f"ds/{i:03d}.bin": rng.randbytes(rng.randrange(1, 5000)) for i in range(200)}
    files |= {"ds/big-a.bin": rng.randbytes(2 * RANGE_SIZE + 7), "ds/big-b.bin": rng.randbytes(RANGE_SIZE + 1)}
    store.seed(files)
    shared = tmp_path / "nfs" / "dataset"  # one folder both nodes mount

    results = _start_nodes(store.uri("ds/"), shared, via(open_proxy), tmp_path)

    assert tree(shared) == {name.removeprefix("ds/"): content for name, content in files.items()}
    assert not [p.name for p in shared.rglob("*") if ".aml-partial" in p.name]  # no partial file or journal left
    # Each node elected one downloader (its own lock folder); every other rank waited for its node's.
    for node in range(NODES):
        outcomes = Counter(r["outcome"] for n, r in results if n == node)
        assert outcomes["waited"] == RANKS_PER_NODE - 1, outcomes
    # The two nodes' downloaders both listed: one per node, never more.
    assert len([r for r in open_proxy.requests if r.action == "list"]) == NODES


def test_a_partial_file_in_use_on_this_host_gives_a_second_writer_its_own(tmp_path):
    final = str(tmp_path / "model.bin")
    first = claim_partial(final)
    second = claim_partial(final)
    try:
        assert first.path == partial_path(final)
        assert not first.private
        assert second.private
        assert second.path != first.path
        assert Path(second.path).name.startswith(".model.bin.")
        assert second.path.endswith(".aml-partial")
    finally:
        first.release()
        second.discard()
    assert not Path(second.path).exists()  # a private partial file is never resumed: it goes
    assert Path(first.path).exists()  # the host's stays for the next download to resume
    again = claim_partial(final)  # released: the next writer on this host takes the host's partial file over
    try:
        assert again.path == first.path
    finally:
        again.release()


def test_a_partial_file_its_owner_publishes_while_we_lock_it_is_not_written(monkeypatch, tmp_path):
    from aml_identity.datastore import _paths

    final = tmp_path / "a.bin"
    owner = claim_partial(str(final))
    os.write(owner.fd, b"complete")
    real_flock = _paths.fcntl.flock
    raced = []

    def flock_after_the_owner_published(fd, operation):
        if not raced:  # between our open and our lock, the owner renames its partial file and unlocks it
            raced.append(True)
            Path(owner.path).replace(final)
            owner.release()
        return real_flock(fd, operation)

    monkeypatch.setattr(_paths.fcntl, "flock", flock_after_the_owner_published)
    follower = claim_partial(str(final))
    try:
        assert raced
        assert follower.path == owner.path  # a new file under the host's name, not the published one
        assert os.fstat(follower.fd).st_ino != final.stat().st_ino
    finally:
        follower.discard()
    assert final.read_bytes() == b"complete"


def test_a_stale_partial_file_goes_but_one_being_written_stays(tmp_path):
    final = str(tmp_path / "big.bin")
    writer = claim_partial(final)
    Path(journal_path(writer.path)).write_text("{}\n")
    remove_stale_partial(final)  # a live process is writing it: left alone
    assert Path(writer.path).exists()
    assert Path(journal_path(writer.path)).exists()
    writer.release()  # as a kill would: the kernel drops the lock
    remove_stale_partial(final)
    assert not Path(writer.path).exists()
    assert not Path(journal_path(writer.path)).exists()


def test_partial_names_differ_between_hosts(monkeypatch, tmp_path):
    import socket

    from aml_identity.datastore import _paths

    names = []
    for host in ("node-0", "node-1"):
        _paths.host_tag.cache_clear()
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        names.append(partial_path(str(tmp_path / "x.bin")))
    _paths.host_tag.cache_clear()
    assert names[0] != names[1]
    assert all(journal_path(name).endswith(".aml-partial.journal") for name in names)


def test_outcome_says_transferred_then_up_to_date(storage_job, store, tmp_path):
    store.seed({"d/a.txt": b"a", "d/b.txt": b"b"})
    first = download(store.uri("d/"), tmp_path / "d", progress=False)
    second = download(store.uri("d/"), tmp_path / "d", progress=False)
    assert (first.outcome, first.shared) == ("transferred", False)
    assert (second.outcome, second.shared) == ("up_to_date", False)
    assert second.to_dict()["outcome"] == "up_to_date"


def test_two_jobs_on_one_node_with_one_destination_list_and_resolve_once_each(
    workspace_job, store, open_proxy, via, tmp_path
):
    from aml_identity.datastore.resolve import clear_cache

    workspace_job.add_datastore(WS, "shared_data", account_name="devstoreaccount1", container_name=store.name)
    store.seed({f"d/{i}.txt": b"x" * i for i in range(1, 20)})
    dest = tmp_path / "data"
    base = via(open_proxy)
    jobs = {run: {**base, "AZUREML_RUN_ID": run} for run in ("job-a", "job-b")}

    # The ranks of the two jobs call in turns, as they do when both jobs start on the node at once; each rank is
    # a process of its own, with nothing resolved yet.
    outcomes = []
    for run in ("job-a", "job-b", "job-a", "job-b", "job-a", "job-b"):
        clear_cache()
        uri = "azureml://datastores/shared_data/paths/d/"
        outcomes.append((run, download(uri, dest, once_per_node=True, progress=False, environ=jobs[run]).outcome))

    assert outcomes == [
        ("job-a", "transferred"),
        ("job-b", "up_to_date"),  # job b checked storage once: everything was there
        ("job-a", "waited"),
        ("job-b", "waited"),
        ("job-a", "waited"),
        ("job-b", "waited"),
    ]
    assert len([r for r in open_proxy.requests if r.action == "list"]) == 2  # one per job, not one per turn
    assert len(workspace_job.requests_for("Datastores_Get")) == 2
