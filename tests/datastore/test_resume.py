"""A download killed with SIGKILL leaves only complete files at final names, and the rerun fetches the rest."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aml_identity.datastore import download
from aml_identity.datastore._download import RANGE_SIZE
from aml_identity.datastore._paths import journal_path, partial_path

pytestmark = pytest.mark.azurite

# The child downloads with 2 connections and kills itself (SIGKILL: no cleanup of any kind) from the
# progress callback, which runs after a range is on disk and recorded in the journal.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from aml_identity.datastore import download

    threshold = int(sys.argv[3])

    def progress(done, total):
        if done >= threshold:
            os.kill(os.getpid(), signal.SIGKILL)

    download(sys.argv[1], sys.argv[2], max_concurrency=2, progress=progress)
    """
)


def _ranges_in_journal(path) -> list[int]:
    lines = path.read_bytes().split(b"\n")
    return sorted(int(line) for line in lines[1:-1])


def test_sigkill_halfway_leaves_no_incomplete_final_file_and_the_rerun_fetches_only_the_rest(
    storage_job, store, open_proxy, via, tmp_path
):
    rng = random.Random(7)
    big = rng.randbytes(8 * RANGE_SIZE + 999)
    files = {"d/big.bin": big} | {f"d/small/{i:03d}.txt": rng.randbytes(100 + i) for i in range(40)}
    store.seed(files)
    dest = tmp_path / "dest"

    child = subprocess.run(
        [sys.executable, "-c", CHILD, store.uri("d/"), str(dest), str(len(big) // 2)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr

    # Every file at its final name is complete; the big one is not there, only its partial file + journal.
    finals = [p for p in dest.rglob("*") if p.is_file() and ".aml-partial" not in p.name]
    for path in finals:
        assert path.read_bytes() == files["d/" + path.relative_to(dest).as_posix()]
    assert not (dest / "big.bin").exists()
    journal = Path(journal_path(partial_path(str(dest / "big.bin"))))
    done = _ranges_in_journal(journal)
    assert len(done) * RANGE_SIZE >= len(big) // 2 - RANGE_SIZE  # killed after about half
    assert len(done) < 9

    rerun = download(store.uri("d/"), dest, progress=False, environ=via(open_proxy))

    assert (dest / "big.bin").read_bytes() == big
    assert not journal.exists()
    # Count what storage really served for the big blob: exactly the ranges the journal did not have.
    served = [r for r in open_proxy.requests if r.method == "GET" and r.path.endswith("/d/big.bin")]
    fetched = [tuple(map(int, r.range.removeprefix("bytes=").split("-"))) for r in served]
    fetched_bytes = sum(end - start + 1 for start, end in fetched)
    missing = [i for i in range(9) if i not in done]
    assert sorted(start // RANGE_SIZE for start, _ in fetched) == missing
    assert fetched_bytes == len(big) - len(done) * RANGE_SIZE
    assert rerun.bytes_resumed == len(done) * RANGE_SIZE
    small_fetched = sum(len(files[f"d/{p}"]) for p in [r.path.split("/d/", 1)[1] for r in open_proxy.requests
                                                        if r.method == "GET" and "/d/small/" in r.path])  # fmt: skip
    assert rerun.bytes_transferred == fetched_bytes + small_fetched
    assert {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()} == {
        name.removeprefix("d/") for name in files
    }


def test_resume_false_starts_over(storage_job, store, tmp_path):
    big = os.urandom(2 * RANGE_SIZE)
    store.seed({"big.bin": big})
    # A partial file + journal for this very blob version that claims range 0 is done (its bytes are zeros):
    # resume=True would trust it; resume=False fetches everything again.
    dest = tmp_path / "big.bin"
    etag = store.client.get_blob_client("big.bin").get_blob_properties().etag.strip('"')
    header = {"name": "big.bin", "etag": etag, "size": len(big), "range": RANGE_SIZE}
    partial = partial_path(str(dest))
    Path(journal_path(partial)).write_text(json.dumps(header) + "\n0\n")
    Path(partial).write_bytes(b"\0" * len(big))
    result = download(store.uri("big.bin"), dest, resume=False, progress=False)
    assert result.bytes_resumed == 0
    assert dest.read_bytes() == big
