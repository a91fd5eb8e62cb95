"""upload_on_exit(): a preempted job (SIGTERM) has every file it had closed in storage, none half-written."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from aml_identity.datastore import upload_on_exit
from aml_identity.datastore._upload import SINGLE_PUT_MAX

pytestmark = pytest.mark.azurite

CHILD = textwrap.dedent(
    """
    import os, sys
    from aml_identity.datastore import upload_on_exit

    uri, out, big_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    upload_on_exit(out, uri)
    os.makedirs(os.path.join(out, "epoch-1"), exist_ok=True)
    for i in range(20):
        with open(os.path.join(out, "epoch-1", f"metrics-{i}.json"), "w") as f:
            f.write('{"step": %d}' % i)
    with open(os.path.join(out, "model-epoch-1.pt"), "wb") as f:
        f.write(bytes(range(256)) * (big_size // 256))
    half = open(os.path.join(out, "model-epoch-2.pt"), "wb")   # still being written when preempted
    half.write(b"only the first half")
    half.flush()
    print("ready", flush=True)
    sys.stdin.read()   # training goes on until the node is preempted
    """
)


def test_sigterm_uploads_every_closed_file_and_no_half_written_one(storage_job, store, tmp_path):
    out = tmp_path / "outputs"
    big_size = SINGLE_PUT_MAX + 256 * 1000  # staged as blocks, committed only when complete
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, store.uri("run-7/"), str(out), str(big_size)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout.readline() == "ready\n", child.stderr.read()

    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)

    assert child.returncode == -signal.SIGTERM, err  # it still dies of SIGTERM, after the upload
    uploaded = store.contents("run-7/")
    assert set(uploaded) == {f"epoch-1/metrics-{i}.json" for i in range(20)} | {"model-epoch-1.pt"}
    for i in range(20):
        assert uploaded[f"epoch-1/metrics-{i}.json"] == b'{"step": %d}' % i
    assert uploaded["model-epoch-1.pt"] == bytes(range(256)) * (big_size // 256)
    assert "model-epoch-2.pt" not in uploaded  # open for writing: possibly half-written, left out


def test_upload_on_exit_as_a_context_manager_uploads_when_the_block_ends(storage_job, store, tmp_path):
    out = tmp_path / "out"
    with upload_on_exit(out, store.uri("ctx/")) as watcher:
        (out / "a.txt").write_text("a")
        first = watcher.flush()  # a checkpoint
        assert first.transferred_files == 1
        (out / "b.txt").write_text("b")
    assert store.contents("ctx/") == {"a.txt": b"a", "b.txt": b"b"}
    assert watcher.last_result.transferred_files == 1  # a.txt was already there
    assert signal.getsignal(signal.SIGTERM) is not watcher._on_signal  # hooks removed


def _failing_job(out, uri) -> None:
    with upload_on_exit(out, uri):
        (out / "checkpoint.pt").write_bytes(b"weights")
        _ = 1 / 0  # the training step that fails


def test_when_the_block_fails_its_outputs_are_uploaded_and_its_own_error_is_raised(storage_job, store, tmp_path):
    with pytest.raises(ZeroDivisionError):
        _failing_job(tmp_path / "out", store.uri("crash/"))
    assert store.contents("crash/") == {"checkpoint.pt": b"weights"}


def test_when_the_block_fails_and_so_does_the_upload_the_blocks_error_is_raised(storage_job, tmp_path, caplog):
    with pytest.raises(ZeroDivisionError):
        _failing_job(tmp_path / "out", "wasbs://no-such-container@devstoreaccount1.blob.core.windows.net/run/")
    assert "no-such-container" in caplog.text  # the failed upload is logged, with what failed
