"""upload(): files and folders, atomic blobs, skipping what storage already has, never clobbering by default."""

from __future__ import annotations

import os
import random

import pytest

from aml_identity.datastore import _upload as upload_module
from aml_identity.datastore import download, upload
from aml_identity.datastore._upload import MTIME_METADATA
from aml_identity.errors import ConfigurationError, TransferError

pytestmark = pytest.mark.azurite


def _write_tree(root, files):
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def test_a_folder_uploads_byte_identical_and_a_second_run_sends_nothing(
    storage_job, store, tree, tmp_path, monkeypatch
):
    monkeypatch.setattr(upload_module, "SINGLE_PUT_MAX", 1 << 20)  # exercise staged blocks with small files
    monkeypatch.setattr(upload_module, "BLOCK_SIZE", 1 << 20)
    rng = random.Random(3)
    files = {f"part-{i:03d}.bin": rng.randbytes(rng.choice((0, 10, 5000))) for i in range(200)}
    files["nested/deep/model.bin"] = rng.randbytes(3 * (1 << 20) + 7)  # four blocks
    src = tmp_path / "outputs"
    _write_tree(src, files)
    (src / ".model.bin.aml-partial").write_bytes(b"a partial download is never uploaded")

    first = upload(src, store.uri("run-1/"), progress=False)

    assert store.matches("run-1/", files)
    assert (first.transferred_files, first.skipped_files) == (201, 0)
    assert first.bytes_transferred == sum(map(len, files.values()))
    assert first.destination == store.uri("run-1/")
    props = store.client.get_blob_client("run-1/nested/deep/model.bin").get_blob_properties()
    assert props.metadata[MTIME_METADATA] == str((src / "nested/deep/model.bin").stat().st_mtime_ns)

    second = upload(src, store.uri("run-1/"), progress=False)
    assert (second.transferred_files, second.skipped_files, second.bytes_transferred) == (0, 201, 0)
    assert second.requests == 1  # the listing

    # What was uploaded downloads back identical (and the round trip agrees with the SDK's view above).
    download(store.uri("run-1/"), tmp_path / "back", progress=False)
    assert tree(tmp_path / "back") == files


def test_a_single_file_goes_to_the_blob_named_or_into_the_folder(storage_job, store, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights")
    result = upload(tmp_path / "model.pt", store.uri("models/best.pt"), progress=False)
    assert store.read("models/best.pt") == b"weights"
    assert result.destination == store.uri("models/best.pt")
    result = upload(tmp_path / "model.pt", store.uri("models/"), progress=False)
    assert store.read("models/model.pt") == b"weights"
    assert result.destination == store.uri("models/model.pt")


def test_existing_different_blobs_are_not_replaced_without_overwrite(storage_job, store, tmp_path):
    store.seed({"out/a.txt": b"someone else's", "out/b.txt": b"keep"})
    src = tmp_path / "src"
    _write_tree(src, {"a.txt": b"mine", "c.txt": b"new"})

    with pytest.raises(TransferError, match=r"1 blob\(s\) already exist .*'out/a.txt'.*overwrite=True"):
        upload(src, store.uri("out/"), progress=False)
    assert store.read("out/a.txt") == b"someone else's"
    assert store.read("out/c.txt") == b"new"  # the others were uploaded: nothing is lost

    result = upload(src, store.uri("out/"), overwrite=True, progress=False)
    assert store.read("out/a.txt") == b"mine"
    assert result.transferred_files == 1  # c.txt is already up to date
    assert store.read("out/b.txt") == b"keep"


def test_a_locally_modified_file_is_sent_again(storage_job, store, tmp_path):
    src = tmp_path / "src"
    _write_tree(src, {"log.txt": b"epoch 1\n"})
    upload(src, store.uri("logs/"), progress=False)
    (src / "log.txt").write_bytes(b"epoch 1\nepoch 2\n")
    os.utime(src / "log.txt", ns=(1, 1))
    result = upload(src, store.uri("logs/"), overwrite=True, progress=False)
    assert result.transferred_files == 1
    assert store.read("logs/log.txt") == b"epoch 1\nepoch 2\n"


def test_a_missing_source_is_named(storage_job, store, tmp_path):
    with pytest.raises(ConfigurationError, match="is not a file or a folder"):
        upload(tmp_path / "nope", store.uri("x/"), progress=False)
