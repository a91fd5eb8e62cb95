"""The mount's file system object in-process, where the clock and the retry sleeps can be injected.

``BlobFilesystem`` is what the mount process hands to libfuse; here its callbacks are called directly, as the
kernel would, so that tokens can expire every 60 emulated seconds during a long read and a storage outage can
exhaust the retries without waiting for either.
"""

from __future__ import annotations

import errno
import os
import random
import ssl

import pytest

from aml_identity import default_credential
from aml_identity.datastore import _fuse_tree
from aml_identity.datastore._fuse_fs import BLOCK_SIZE, BlobFilesystem
from aml_identity.datastore._fuse_read import FOLDER_AHEAD_FILES
from aml_identity.datastore._rest import BearerToken, BlobRestClient
from aml_identity.testing import FakeClock, IdentityEndpoint, StorageAuthProxy

pytestmark = pytest.mark.azurite

TOKEN_LIFETIME_S = 60
FUSE_READ = 128 * 1024  # what the kernel asks for per read
STEP_S = 1  # emulated seconds per read: the reader is slow (a training step between reads); 8 MiB blocks: 64 reads each
MIB = 1 << 20


def _filesystem(client, store, **options) -> BlobFilesystem:
    return BlobFilesystem(client, account="devstoreaccount1", container=store.name, prefix="data/", **options)


def test_tokens_expiring_every_60_s_during_a_long_read_cause_no_failed_request(storage_job, clean_env, store, azurite):
    content = random.Random(2).randbytes(5 * BLOCK_SIZE + 777)
    store.seed({"data/long.bin": content})
    clock = FakeClock()
    with (
        IdentityEndpoint(token_lifetime=TOKEN_LIFETIME_S, clock=clock) as endpoint,
        StorageAuthProxy(
            f"https://127.0.0.1:{azurite.port}", authorizer=lambda *_, **__: True, tls=azurite.tls, clock=clock
        ) as proxy,
    ):
        for name, value in endpoint.azureml_environ().items():
            clean_env.setenv(name, value)
        credential = default_credential(clock=clock, cache="process")
        client = BlobRestClient(
            proxy.blob_endpoint(),
            BearerToken(credential),
            ssl_context=ssl.create_default_context(cafile=str(azurite.tls.cert)),
        )
        # No read-ahead: a block fetched ahead would carry a token minted long (in emulated time) before it lands.
        fs = _filesystem(client, store, read_ahead_blocks=0)
        start = clock()
        fh = fs.open("/long.bin", os.O_RDONLY)
        read = bytearray()
        for offset in range(0, len(content), FUSE_READ):
            read += fs.read(None, FUSE_READ, offset, fh)
            clock.advance(STEP_S)
        fs.release(None, fh)
        fs.close()
        elapsed = clock() - start
        statuses = proxy.statuses()
        tokens_used = {r.token_id for r in proxy.requests}

    assert bytes(read) == content
    assert elapsed >= 5 * TOKEN_LIFETIME_S
    assert set(statuses) <= {200, 206}, statuses  # not one 403 "token expired"
    assert len(tokens_used) >= elapsed // TOKEN_LIFETIME_S  # a fresh token at least once per lifetime


def test_a_storage_outage_after_retries_is_eio_with_a_log_line(storage_job, store, azurite, caplog):
    store.seed({"data/a.bin": b"a" * 1000})
    clock = FakeClock()
    proxy = StorageAuthProxy(f"https://127.0.0.1:{azurite.port}", authorizer=lambda *_, **__: True, tls=azurite.tls)
    proxy.start()
    try:
        client = BlobRestClient(
            proxy.blob_endpoint(),
            BearerToken(default_credential()),
            ssl_context=ssl.create_default_context(cafile=str(azurite.tls.cert)),
            sleep=clock.sleep,
        )
        fs = _filesystem(client, store)
        assert fs.getattr("/a.bin")["st_size"] == 1000  # listed while storage was up
    finally:
        proxy.stop()  # storage goes away...
    client.close()  # ...and with it the connections that were open to it
    fh = fs.open("/a.bin", os.O_RDONLY)
    with pytest.raises(OSError) as caught:
        fs.read(None, FUSE_READ, 0, fh)
    assert caught.value.errno == errno.EIO
    assert len(clock.sleeps) >= 3  # it was retried (with backoff) before giving up
    assert "read of" in caplog.text
    assert "failed (EIO)" in caplog.text
    fs.close()


def test_listings_are_trusted_for_attr_timeout_then_asked_again(storage_job, store, azurite):
    store.seed({"data/a.bin": b"a"})
    clock = FakeClock()
    client = BlobRestClient(
        azurite.blob_endpoint("devstoreaccount1"),
        BearerToken(default_credential()),
        ssl_context=ssl.create_default_context(cafile=str(azurite.tls.cert)),
    )
    fs = _filesystem(client, store, attr_timeout=60, clock=clock)
    assert [e[0] for e in fs.readdir("/", 0)[2:]] == ["a.bin"]
    store.seed({"data/b.bin": b"b"})
    clock.advance(59)
    assert [e[0] for e in fs.readdir("/", 0)[2:]] == ["a.bin"]  # within the TTL: the cached listing
    with pytest.raises(FileNotFoundError):
        fs.getattr("/b.bin")
    clock.advance(2)
    assert [e[0] for e in fs.readdir("/", 0)[2:]] == ["a.bin", "b.bin"]
    assert fs.getattr("/b.bin")["st_size"] == 1
    fs.close()


def test_opening_a_folders_files_in_name_order_fetches_the_next_small_files_ahead(storage_job, store, azurite):
    files = {f"data/shards/{i:03d}.bin": random.Random(i).randbytes(1000 + i) for i in range(20)}
    store.seed(files)
    proxy = StorageAuthProxy(f"https://127.0.0.1:{azurite.port}", authorizer=lambda *_, **__: True, tls=azurite.tls)
    with proxy:
        client = BlobRestClient(
            proxy.blob_endpoint(),
            BearerToken(default_credential()),
            ssl_context=ssl.create_default_context(cafile=str(azurite.tls.cert)),
        )
        fs = _filesystem(client, store)
        for name in ("/shards/005.bin", "/shards/000.bin"):  # out of order: nothing is fetched ahead
            fh = fs.open(name, os.O_RDONLY)
            assert fs.read(None, 4096, 0, fh) == files["data" + name][:4096]
            fs.release(None, fh)
        for name in ("/shards/001.bin", "/shards/002.bin"):  # 000, 001, 002: a walk in name order
            fh = fs.open(name, os.O_RDONLY)
            assert fs.read(None, 4096, 0, fh) == files["data" + name][:4096]
            fs.release(None, fh)
        fs._reader.close(wait=True)  # let the fetches ahead finish
        fetched = sorted(r.path.rsplit("/", 1)[1] for r in proxy.requests if r.method == "GET" and r.action == "read")
        fs.close()

    ahead = [f"{i:03d}.bin" for i in range(3, 3 + FOLDER_AHEAD_FILES)]
    assert fetched == sorted({"000.bin", "001.bin", "002.bin", "005.bin", *ahead})  # each once (005 was cached)


def test_listings_beyond_the_memory_bound_are_dropped_least_recently_used_first(
    storage_job, store, azurite, open_proxy, monkeypatch
):
    store.seed({f"data/{d}/{i}.bin": b"x" for d in "abc" for i in range(2)})
    monkeypatch.setattr(_fuse_tree, "MAX_CACHED_ENTRIES", 7)  # the root (3 entries) and two folders of two files
    client = BlobRestClient(
        open_proxy.blob_endpoint(),
        BearerToken(default_credential()),
        ssl_context=ssl.create_default_context(cafile=str(azurite.tls.cert)),
    )
    fs = _filesystem(client, store)

    def listings() -> int:
        return sum(1 for r in open_proxy.requests if r.action == "list")

    for folder in ("/a", "/b", "/a", "/c"):  # a is used again before c arrives, so b is the one dropped
        fs.opendir(folder)
        fs.readdir(folder, 0)
    before = listings()
    fs.readdir("/a", 0)
    fs.readdir("/c", 0)
    assert listings() == before  # still cached
    fs.readdir("/b", 0)
    assert listings() == before + 1  # dropped, listed again
    fs.close()


def _staging_on_small_disk(store, azurite, staging, capacity):
    """An rw file system whose staging folder is on an emulated disk of ``capacity`` bytes (and its free())."""

    def free(_path: str) -> int:
        return capacity - sum(p.stat().st_size for p in staging.iterdir())

    client = BlobRestClient(
        azurite.blob_endpoint("devstoreaccount1"),
        BearerToken(default_credential()),
        ssl_context=ssl.create_default_context(cafile=str(azurite.tls.cert)),
    )
    fs = _filesystem(client, store, mode="rw", staging_dir=str(staging), reserve_bytes=0, free_space=free)
    return fs, free


def _write_until_it_fails(fs, fh) -> tuple[int, OSError]:
    written = [0]

    def write_forever() -> None:
        while True:
            written[0] += fs.write(None, b"\0" * MIB, written[0], fh)

    with pytest.raises(OSError) as caught:
        write_forever()
    return written[0], caught.value


def test_a_write_that_fills_the_staging_disk_gives_the_space_back_before_release_and_uploads_nothing(
    storage_job, store, azurite, tmp_path
):
    # The kernel sends RELEASE (which drops a staging file) only after close() has returned, so the space of a
    # file whose write failed must come back without it: here release is never called before the next write.
    staging = tmp_path / "staging"
    fs, free = _staging_on_small_disk(store, azurite, staging, 20 * MIB)
    big = fs.create("/big.bin", 0o644)
    written, caught = _write_until_it_fails(fs, big)
    assert caught.errno == errno.ENOSPC
    assert written >= 16 * MIB  # blocks were already being sent while it was written
    assert free(str(staging)) == 20 * MIB  # the space is back at once
    with pytest.raises(OSError) as again:
        fs.write(None, b"more", written, big)
    assert again.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as closed:
        fs.flush(None, big)  # close(): the file is not stored, and the writer is told so
    assert closed.value.errno == errno.ENOSPC
    fs.unlink("/big.bin")
    small = fs.create("/small.txt", 0o644)
    assert fs.write(None, b"still works", 0, small) == len(b"still works")
    fs.flush(None, small)
    fs.release(None, small)
    fs.release(None, big)  # late, as the kernel may send it
    fs.close()
    assert store.contents("data/") == {"small.txt": b"still works"}


def test_a_file_whose_write_hit_enospc_is_written_afresh_when_opened_with_o_trunc(
    storage_job, store, azurite, tmp_path
):
    staging = tmp_path / "staging"
    fs, _ = _staging_on_small_disk(store, azurite, staging, 4 * MIB)
    fh = fs.create("/a.bin", 0o644)
    with pytest.raises(OSError):
        fs.write(None, b"x" * (5 * MIB), 0, fh)
    with pytest.raises(OSError):
        fs.flush(None, fh)
    fs.release(None, fh)
    assert fs.getattr("/a.bin")["st_size"] == 0  # still there (empty, never uploaded) to be deleted or rewritten
    again = fs.open("/a.bin", os.O_WRONLY | os.O_TRUNC)
    fs.write(None, b"fits", 0, again)
    fs.flush(None, again)
    fs.release(None, again)
    gone = fs.create("/b.bin", 0o644)
    with pytest.raises(OSError):
        fs.write(None, b"x" * (5 * MIB), 0, gone)
    with pytest.raises(OSError):
        fs.flush(None, gone)
    fs.release(None, gone)
    fs.unlink("/b.bin")  # deleted after release: its kept staging file goes too
    assert list(staging.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        fs.getattr("/b.bin")
    fs.close()
    assert store.contents("data/") == {"a.bin": b"fits"}
