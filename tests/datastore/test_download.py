"""download(): byte-identical, verified, skipping what is up to date, refusing names that escape dest."""

from __future__ import annotations

import http.client
import os
import random
import ssl
import time
from urllib.parse import urlsplit

import pytest
from azure.storage.blob import ContentSettings

from aml_identity.datastore import download
from aml_identity.datastore._download import RANGE_SIZE
from aml_identity.errors import DatastoreError, TransferError
from aml_identity.testing import mint_token

pytestmark = pytest.mark.azurite


def _random_files(count: int, *, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {}
    for i in range(count):
        folder = f"shard-{i % 7}/" if i % 3 else ""
        files[f"data/{folder}file-{i:05d}.bin"] = rng.randbytes(rng.choice((0, 1, 100, 4096, 8191)))
    return files


def test_prefix_with_2000_small_files_and_large_ones_is_byte_identical_and_a_second_run_transfers_nothing(
    storage_job, store, tree, tmp_path
):
    files = _random_files(2000, seed=1)
    rng = random.Random(2)
    files["data/big/exactly-one-range.bin"] = rng.randbytes(RANGE_SIZE)
    files["data/big/two-ranges.bin"] = rng.randbytes(RANGE_SIZE + 1)
    files["data/big/three-ranges.bin"] = rng.randbytes(2 * RANGE_SIZE + 12345)
    store.seed(files)
    dest = tmp_path / "dest"

    first = download(store.uri("data/"), dest, progress=False)

    assert tree(dest) == {name.removeprefix("data/"): content for name, content in files.items()}
    total = sum(map(len, files.values()))
    assert (first.files, first.transferred_files, first.skipped_files) == (2003, 2003, 0)
    assert first.bytes_transferred == total
    assert first.destination == str(dest)
    assert not list(dest.rglob("*.aml-partial*"))  # no partial file or journal left behind

    second = download(store.uri("data/"), dest, progress=False)

    assert (second.transferred_files, second.skipped_files, second.bytes_transferred) == (0, 2003, 0)
    assert second.bytes_skipped == total
    assert second.requests == 1  # one listing page, no GET
    assert tree(dest) == {name.removeprefix("data/"): content for name, content in files.items()}


def test_a_changed_blob_or_a_locally_modified_file_is_fetched_again(storage_job, store, tmp_path):
    store.seed({"d/a.txt": b"one", "d/b.txt": b"two"})
    dest = tmp_path / "out"
    download(store.uri("d/"), dest, progress=False)
    store.seed({"d/a.txt": b"ONE, rewritten"})
    (dest / "b.txt").write_bytes(b"tampered")

    again = download(store.uri("d/"), dest, progress=False)

    assert again.transferred_files == 2
    assert (dest / "a.txt").read_bytes() == b"ONE, rewritten"
    assert (dest / "b.txt").read_bytes() == b"two"


def test_a_single_blob_goes_to_the_file_or_into_the_folder_named(storage_job, store, tmp_path):
    store.seed({"models/final.pt": b"weights", "models/final.pt.bak": b"old"})
    into_file = download(store.uri("models/final.pt"), tmp_path / "model.pt", progress=False)
    assert (tmp_path / "model.pt").read_bytes() == b"weights"
    assert into_file.destination == str(tmp_path / "model.pt")
    (tmp_path / "folder").mkdir()
    download(store.uri("models/final.pt"), tmp_path / "folder", progress=False)
    assert (tmp_path / "folder" / "final.pt").read_bytes() == b"weights"
    download(store.uri("models/final.pt"), str(tmp_path / "new") + "/", progress=False)
    assert (tmp_path / "new" / "final.pt").read_bytes() == b"weights"


def test_a_path_without_slash_that_is_not_a_blob_is_a_folder(storage_job, store, tree, tmp_path):
    store.seed({"run/a": b"a", "run/sub/b": b"b", "run-other/c": b"c"})
    download(store.uri("run"), tmp_path / "run", progress=False)
    assert tree(tmp_path / "run") == {"a": b"a", "sub/b": b"b"}


def test_a_blob_whose_content_md5_does_not_match_never_reaches_its_final_name(storage_job, store, tmp_path):
    store.seed({"d/good.txt": b"fine", "d/bad.txt": b"the real bytes"})
    store.client.get_blob_client("d/bad.txt").set_http_headers(
        content_settings=ContentSettings(content_md5=bytearray(b"0123456789abcdef"))
    )
    with pytest.raises(TransferError, match="different MD5"):
        download(store.uri("d/"), tmp_path / "out", max_concurrency=1, progress=False)
    assert not (tmp_path / "out" / "bad.txt").exists()
    assert not list((tmp_path / "out").glob(".bad.txt*"))


def test_a_blob_replaced_during_the_download_is_not_mixed_into_one_file(storage_job, store, tmp_path):
    store.seed({"big.bin": os.urandom(3 * RANGE_SIZE)})
    replaced = []

    def replace_after_first_range(done: int, total: int) -> None:
        if not replaced:
            replaced.append(done)
            store.seed({"big.bin": os.urandom(3 * RANGE_SIZE)})

    with pytest.raises(TransferError, match="changed while it was being downloaded"):
        download(store.uri("big.bin"), tmp_path / "big.bin", max_concurrency=1, progress=replace_after_first_range)
    assert not (tmp_path / "big.bin").exists()
    # The next run sees the new ETag, discards the partial file and fetches the new version whole.
    again = download(store.uri("big.bin"), tmp_path / "big.bin", progress=False)
    assert again.bytes_resumed == 0
    assert (tmp_path / "big.bin").read_bytes() == store.read("big.bin")


def _put_raw(azurite, container: str, name_in_url: str, body: bytes) -> None:
    """Create a blob whose name has '..' segments: sent with http.client, which keeps dot segments (the SDK's
    URL handling would normalise them away)."""
    url = urlsplit(azurite.blob_endpoint())
    now = int(time.time())
    token = mint_token(audience="https://storage.azure.com", issued_at=now - 60, expires_on=now + 600,
                       object_id="seed", client_id="seed")  # fmt: skip
    conn = http.client.HTTPSConnection(
        url.hostname, url.port, context=ssl.create_default_context(cafile=str(azurite.tls.cert))
    )
    headers = {"Authorization": f"Bearer {token}", "x-ms-version": "2025-11-05", "x-ms-blob-type": "BlockBlob"}
    conn.request("PUT", f"{url.path}/{container}/{name_in_url}", body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    assert response.status == 201, response.status
    conn.close()


@pytest.mark.parametrize("evil", ["d/../../x", "d//abs", "d/a/../../../y", "d/./z"])
def test_a_blob_name_escaping_dest_is_refused_and_nothing_is_written_outside(
    storage_job, azurite, store, tmp_path, evil
):
    store.seed({"d/fine.txt": b"ok"})
    _put_raw(azurite, store.name, evil, b"evil")
    assert evil in [b.name for b in store.client.list_blobs()]
    root = tmp_path / "root"
    sandbox = root / "a" / "b"
    dest = sandbox / "dest"
    root.mkdir()

    with pytest.raises(TransferError, match="Refusing blob") as caught:
        download(store.uri("d/"), dest, max_concurrency=1, progress=False)

    assert repr(evil) in str(caught.value)
    created = set(root.rglob("*"))
    assert all(p == sandbox or sandbox in p.parents or p in sandbox.parents for p in created), created
    assert not any(p.name in ("x", "y", "z", "abs") for p in created)


def test_missing_container_names_it(storage_job, tmp_path):
    with pytest.raises(DatastoreError, match="Container 'no-such-container' does not exist"):
        download("https://devstoreaccount1.blob.core.windows.net/no-such-container/x/", tmp_path, progress=False)
