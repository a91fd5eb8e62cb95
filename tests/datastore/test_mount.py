"""``mount()``: a blob datastore as a FUSE folder served by its own process, against Azurite over HTTPS.

Every test here mounts through the kernel (fuse3) with tokens from the identity endpoint emulator. Requests are
counted at a StorageAuthProxy in front of Azurite, which is also what refuses them in the 403 tests; tests that
do not count requests talk to Azurite directly. Token expiry and network failures are tested on the file system
object in-process (``test_mount_fs.py``), where the clock and the retry sleeps can be injected.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from aml_identity import default_credential
from aml_identity.datastore import Mount, mount
from aml_identity.datastore._fuse_fs import BLOCK_SIZE, UPLOAD_SINGLE_PUT_BYTES
from aml_identity.datastore._fuse_main import is_stale
from aml_identity.datastore._fuse_read import READ_AHEAD_BLOCKS, RUN_BLOCKS
from aml_identity.errors import ConfigurationError, DatastoreError
from aml_identity.testing import StorageAuthProxy

pytestmark = [pytest.mark.azurite, pytest.mark.fuse]

LARGE = 6 * BLOCK_SIZE + 12345  # several blocks and a partial last one
BLOCKS = -(-LARGE // BLOCK_SIZE)


def _bytes_on_disk(folder: Path) -> int:
    """The bytes of every file under ``folder``, from one listing in which no file disappeared.

    The mount writes a cache block to a temporary file and renames it into place while the test walks the
    folder; a walk that lists the temporary name and then finds it gone is taken again, not counted short.
    """
    while (total := _one_walk(folder)) is None:
        pass
    return total


def _one_walk(folder: Path) -> int | None:
    """The bytes of every file under ``folder``, or None when a listed file was gone before its ``stat``."""
    try:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    except FileNotFoundError:
        return None


def _blob_gets(proxy, name: str) -> list:
    """The GETs of blob ``name`` (a path suffix) that the proxy answered."""
    return [r for r in proxy.requests if r.method == "GET" and r.action == "read" and r.path.endswith("/" + name)]


def _covered(requests: list) -> list[tuple[int, int]]:
    """The byte ranges the GETs fetched, merged, as ``[start, end)`` pairs; an overlap (a byte fetched twice) fails."""
    spans = sorted(tuple(int(n) for n in r.range.removeprefix("bytes=").split("-")) for r in requests)
    merged: list[tuple[int, int]] = []
    for start, last in spans:
        assert not merged or start >= merged[-1][1], f"bytes from {start} fetched twice"
        if merged and start == merged[-1][1]:
            merged[-1] = (merged[-1][0], last + 1)
        else:
            merged.append((start, last + 1))
    return merged


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _files_under(root: Path) -> dict[str, bytes]:
    return {
        str(Path(folder, name).relative_to(root)): Path(folder, name).read_bytes()
        for folder, _, names in os.walk(root)
        for name in names
    }


@pytest.fixture
def dataset(store):
    """200 small files (some empty) in four folders, and one large file."""
    rng = random.Random(7)
    files = {f"train/{c}/{i:03d}.bin": rng.randbytes(rng.randrange(0, 3000)) for c in "abcd" for i in range(50)}
    files["train/weights.bin"] = rng.randbytes(LARGE)
    store.seed(files)
    return files


def test_small_files_and_a_large_file_read_byte_identical_and_listings_match_the_blobs(storage_job, store, dataset):
    with mount(store.uri("train/")) as m:
        root = m.path
        assert m.mounted
        assert _names(root) == ["a", "b", "c", "d", "weights.bin"]
        assert _names(root / "b") == sorted(n[len("train/b/") :] for n in dataset if n.startswith("train/b/"))
        assert (root / "a").is_dir()
        assert (root / "a" / "000.bin").is_file()
        assert _files_under(root) == {n.removeprefix("train/"): c for n, c in dataset.items()}
        assert (root / "weights.bin").stat().st_size == LARGE

        big = dataset["train/weights.bin"]
        rng = random.Random(3)
        with (root / "weights.bin").open("rb", buffering=0) as f:
            for _ in range(40):  # random offsets and lengths, across block boundaries
                offset, length = rng.randrange(0, LARGE), rng.randrange(1, 3 * BLOCK_SIZE // 2)
                f.seek(offset)
                assert f.read(length) == big[offset : offset + length]
            f.seek(LARGE - 10)
            assert f.read(100) == big[-10:]
            assert f.read(10) == b""
        with pytest.raises(FileNotFoundError):
            (root / "a" / "nope.bin").read_bytes()
        with pytest.raises(OSError) as caught:
            (root / "a" / "new.bin").write_bytes(b"x")
        assert caught.value.errno == errno.EROFS
    assert not m.mounted
    assert not os.path.ismount(root)
    assert not root.exists()  # the temporary mount point is removed again


def test_a_folder_too_big_for_one_kernel_listing_buffer_lists_every_file_once_with_its_size(storage_job, store):
    files = {f"data/many/{i:04d}-{'x' * 90}.bin": b"y" * (i % 7) for i in range(600)}  # ~5 kernel buffers
    store.seed(files)
    with mount(store.uri("data/")) as m:
        listed = [p.name for p in (m.path / "many").iterdir()]
        sizes = {name: (m.path / "many" / name).stat().st_size for name in listed}  # from readdirplus
    assert sorted(listed) == sorted(n.rsplit("/", 1)[1] for n in files)
    assert len(listed) == len(files)
    assert sizes == {n.rsplit("/", 1)[1]: len(c) for n, c in files.items()}


def test_a_second_read_is_served_from_the_cache_and_read_ahead_fetches_each_block_once(
    storage_job, store, dataset, open_proxy, via
):
    with mount(store.uri("train/"), environ=via(open_proxy)) as m:
        first = (m.path / "weights.bin").read_bytes()
        small = (m.path / "a" / "001.bin").read_bytes()
        fetched = _blob_gets(open_proxy, "weights.bin")
        gets = len(fetched)
        assert first == dataset["train/weights.bin"]
        assert _covered(fetched) == [(0, LARGE)]  # sequential read with read-ahead: every byte fetched exactly once
        assert gets <= (BLOCKS + RUN_BLOCKS - 1) // RUN_BLOCKS + 1  # in runs of blocks per GET, not a GET a block
        assert len(_blob_gets(open_proxy, "a/001.bin")) == 1

        assert (m.path / "weights.bin").read_bytes() == first  # a new open: the kernel asks again, we have it
        assert (m.path / "a" / "001.bin").read_bytes() == small
        assert len(_blob_gets(open_proxy, "weights.bin")) == gets
        assert len(_blob_gets(open_proxy, "a/001.bin")) == 1


def test_the_disk_cache_never_exceeds_cache_size_and_serves_a_later_mount(store, dataset, open_proxy, via, tmp_path):
    cache = tmp_path / "cache"
    limit = 3 * BLOCK_SIZE + BLOCK_SIZE // 2
    big = dataset["train/weights.bin"]
    with mount(store.uri("train/"), cache_dir=cache, cache_size=limit, environ=via(open_proxy)) as m:
        with (m.path / "weights.bin").open("rb") as f:
            for index in range(BLOCKS):
                assert f.read(BLOCK_SIZE) == big[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE]
                assert _bytes_on_disk(cache) <= limit
        for name in ("a/000.bin", "b/000.bin"):
            (m.path / name).read_bytes()
            assert _bytes_on_disk(cache) <= limit
    assert _bytes_on_disk(cache) > 2 * BLOCK_SIZE  # it was used

    open_proxy.clear()
    with mount(store.uri("train/"), cache_dir=cache, cache_size=limit, environ=via(open_proxy)) as m:
        assert (m.path / "weights.bin").read_bytes() == big
    # the blocks the cache kept (3 of them fit; which ones depends on the order fetches finished) were not fetched
    fetched = sum(end - start for start, end in _covered(_blob_gets(open_proxy, "weights.bin")))
    assert fetched <= LARGE - 3 * BLOCK_SIZE


def test_a_blob_replaced_in_storage_is_never_served_as_a_mix_of_two_versions(storage_job, store):
    rng = random.Random(11)
    # longer than what the first read fetches ahead, so some blocks are fetched after the replacement
    fetched_at_first_read = -(-(READ_AHEAD_BLOCKS + 1) // RUN_BLOCKS) * RUN_BLOCKS
    size = (fetched_at_first_read + 1) * BLOCK_SIZE + 100
    old, new = rng.randbytes(size), rng.randbytes(size)
    store.seed({"data/model.bin": old})
    with mount(store.uri("data/"), attr_timeout=0) as m:
        served = bytearray()
        with (m.path / "model.bin").open("rb", buffering=0) as f:

            def read_to_the_end() -> None:
                while chunk := f.read(BLOCK_SIZE):
                    served.extend(chunk)

            served += f.read(BLOCK_SIZE)
            store.seed({"data/model.bin": new})  # replaced while open, after one block was read
            with pytest.raises(OSError) as caught:
                read_to_the_end()
        assert caught.value.errno == errno.ESTALE  # the blocks it had not fetched yet are of the new version
        assert served == old[: len(served)]  # whatever it returned was the old version only
        assert (m.path / "model.bin").read_bytes() == new  # opened again: the new version, whole

    store.seed({"data/model.bin": old, "data/other.bin": b"other"})
    with mount(store.uri("data/")) as m:  # default attr_timeout: the listing (and its ETag) is trusted for 60 s
        assert _names(m.path) == ["model.bin", "other.bin"]
        store.seed({"data/model.bin": new})
        store.client.delete_blob("data/other.bin")
        assert (m.path / "model.bin").read_bytes() == new  # the stale ETag is detected at the first block
        with pytest.raises(FileNotFoundError):  # listed, then deleted before it was read
            (m.path / "other.bin").read_bytes()


def test_rw_a_file_is_in_storage_once_closed_and_not_while_still_open(storage_job, store):
    store.seed({"out/keep.txt": b"kept"})
    rng = random.Random(5)
    large = rng.randbytes(UPLOAD_SINGLE_PUT_BYTES * 2 + 999)  # committed as staged blocks
    with mount(store.uri("out/"), mode="rw") as m:
        with (m.path / "log.txt").open("wb") as f:
            f.write(b"epoch 1\n")
            f.flush()  # written to the mount, but the file is still open
            assert not store.client.get_blob_client("out/log.txt").exists()
            assert (m.path / "log.txt").read_bytes() == b"epoch 1\n"  # this node sees its own writes
        assert store.read("out/log.txt") == b"epoch 1\n"

        with (m.path / "ckpt.bin").open("wb") as f:
            f.write(large[:1000])
            f.flush()
            os.fsync(f.fileno())  # fsync commits what is there now
            assert store.read("out/ckpt.bin") == large[:1000]
            f.write(large[1000:])
        assert store.read("out/ckpt.bin") == large

        with (m.path / "keep.txt").open("r+b") as f:  # modify an existing blob in place
            f.seek(2)
            f.write(b"NN")
        assert store.read("out/keep.txt") == b"keNN"
        os.truncate(m.path / "keep.txt", 1)
        assert store.read("out/keep.txt") == b"k"
        with (m.path / "keep.txt").open("ab") as f:
            f.write(b"+")
        assert store.read("out/keep.txt") == b"k+"
        (m.path / "empty").touch()
        assert store.read("out/empty") == b""
        assert _names(m.path) == ["ckpt.bin", "empty", "keep.txt", "log.txt"]


def test_rw_rename_unlink_and_folders_behave_as_documented(storage_job, store):
    store.seed({"out/a.txt": b"alpha", "out/sub/x.txt": b"x"})
    with mount(store.uri("out/"), mode="rw") as m:
        root = m.path
        (root / "a.txt").rename(root / "b.txt")  # copied to the new name, then the old blob deleted
        assert store.contents("out/") == {"b.txt": b"alpha", "sub/x.txt": b"x"}
        assert _names(root) == ["b.txt", "sub"]

        with (root / "tmp.part").open("wb") as f:  # the atomic-save pattern: write, close, rename
            f.write(b"weights")
        (root / "tmp.part").replace(root / "b.txt")
        assert store.contents("out/") == {"b.txt": b"weights", "sub/x.txt": b"x"}

        with (root / "open.part").open("wb") as f:  # renamed while still open: committed under the new name
            f.write(b"1")
            (root / "open.part").rename(root / "final.txt")
            f.write(b"2")
        assert store.read("out/final.txt") == b"12"
        assert not store.client.get_blob_client("out/open.part").exists()

        (root / "final.txt").unlink()
        assert not store.client.get_blob_client("out/final.txt").exists()
        assert not (root / "final.txt").exists()
        with (root / "gone.txt").open("wb") as f:  # unlinked while open: never uploaded
            f.write(b"scratch")
            (root / "gone.txt").unlink()
            f.write(b" more")
        assert not store.client.get_blob_client("out/gone.txt").exists()

        (root / "empty").mkdir()  # a folder exists only in this mount until a file is written in it
        assert (root / "empty").is_dir()
        assert "empty" in _names(root)
        (root / "empty").rename(root / "renamed")
        assert _names(root) == ["b.txt", "renamed", "sub"]
        (root / "renamed").rmdir()
        (root / "made").mkdir()
        (root / "made" / "f.txt").write_bytes(b"f")
        assert store.read("out/made/f.txt") == b"f"

        with pytest.raises(OSError) as caught:
            (root / "sub").rmdir()
        assert caught.value.errno == errno.ENOTEMPTY
        with pytest.raises(OSError) as caught:
            (root / "sub").rename(root / "sub2")  # `mv` copies and deletes on EXDEV
        assert caught.value.errno == errno.EXDEV
        with pytest.raises(FileExistsError):
            (root / "sub").mkdir()
    assert store.contents("out/") == {"b.txt": b"weights", "sub/x.txt": b"x", "made/f.txt": b"f"}


def test_storage_403_is_eacces_with_one_log_line_per_kind_naming_the_identity_and_role(
    storage_job, store, azurite, via, capsys
):
    store.seed({"data/a.bin": b"a" * 100, "data/b.bin": b"b" * 100})
    client_id = default_credential().identity.client_id
    may_list = lambda _principal, _account, action, **_: action == "list"  # noqa: E731
    with StorageAuthProxy(f"https://127.0.0.1:{azurite.port}", authorizer=may_list, tls=azurite.tls) as proxy:
        with mount(store.uri("data/"), mode="rw", environ=via(proxy)) as m:
            assert _names(m.path) == ["a.bin", "b.bin"]
            for name in ("a.bin", "b.bin", "a.bin"):
                with pytest.raises(PermissionError):
                    (m.path / name).read_bytes()
            for name in ("new1.bin", "new2.bin"):
                f = (m.path / name).open("wb")
                f.write(b"data")
                with pytest.raises(PermissionError):
                    f.close()
        refused = {r.action for r in proxy.requests if r.status == 403}
    assert refused == {"read", "write"}
    lines = capsys.readouterr().err.splitlines()
    reads = [line for line in lines if "read refused by storage (EACCES)" in line]
    writes = [line for line in lines if "write refused by storage (EACCES)" in line]
    assert len(reads) == 1, lines
    assert len(writes) == 1, lines
    for line, role in ((reads[0], "Storage Blob Data Reader"), (writes[0], "Storage Blob Data Contributor")):
        assert client_id in line
        assert "devstoreaccount1" in line
        assert role in line
        assert "eyJ" not in line


def test_a_mount_the_identity_may_not_list_fails_at_mount_time_naming_the_role(storage_job, store, azurite, via):
    store.seed({"data/a.bin": b"a"})
    deny = lambda *_, **__: False  # noqa: E731
    with (
        StorageAuthProxy(f"https://127.0.0.1:{azurite.port}", authorizer=deny, tls=azurite.tls) as proxy,
        pytest.raises(DatastoreError) as caught,
    ):
        mount(store.uri("data/"), environ=via(proxy))
    message = str(caught.value)
    assert "Storage Blob Data Reader" in message
    assert "exited with code 1" in message
    with pytest.raises(DatastoreError, match="does not exist"):
        mount(store.uri("data/").replace(store.name, "no-such-container"))


def test_sigterm_to_the_mount_process_unmounts_cleanly_and_leaves_unclosed_files_out(storage_job, store, capsys):
    store.seed({"out/a.txt": b"a"})
    m = mount(store.uri("out/"), mode="rw")
    f = (m.path / "half.bin").open("wb")
    f.write(b"half-written")
    f.flush()
    os.kill(m.pid, signal.SIGTERM)
    assert m._state.process.wait(timeout=30) == 0
    assert not os.path.ismount(m.path)
    assert not is_stale(str(m.path))
    with pytest.raises(OSError):
        f.close()
    m.unmount()  # nothing left to do
    assert not store.client.get_blob_client("out/half.bin").exists()
    err = capsys.readouterr().err
    assert "half.bin was still open for writing" in err
    assert "Traceback" not in err


def test_a_stale_mount_from_a_killed_process_is_cleared_before_mounting_again(storage_job, store, tmp_path, capsys):
    store.seed({"data/a.txt": b"a"})
    point = tmp_path / "mnt"
    crashed = mount(store.uri("data/"), point)
    # The fusermount3 watchdog (auto_unmount) dies too, as when a whole cgroup is killed: the mount is left dead.
    for child in Path(f"/proc/{crashed.pid}/task/{crashed.pid}/children").read_text().split():
        os.kill(int(child), signal.SIGKILL)
    os.kill(crashed.pid, signal.SIGKILL)
    crashed._state.process.wait(timeout=30)
    with pytest.raises(OSError) as caught:
        list(point.iterdir())
    assert caught.value.errno == errno.ENOTCONN  # "Transport endpoint is not connected"

    chosen = default_credential(client_id=default_credential().identity.client_id)  # a user-assigned identity
    with mount(store.uri("data/"), point, credential=chosen) as again:
        assert (again.path / "a.txt").read_bytes() == b"a"
        crashed.unmount()  # the dead process is reaped; the new mount is left alone
        assert again.mounted
    assert "stale mount" in capsys.readouterr().err
    assert not os.path.ismount(point)


def test_unmount_while_a_file_is_open_detaches_lazily_and_the_process_exits_when_it_is_closed(
    storage_job, store, caplog
):
    store.seed({"data/a.txt": b"abc"})
    m = mount(store.uri("data/"))
    f = (m.path / "a.txt").open("rb")
    assert f.read(1) == b"a"
    process = m._state.process
    finished = []
    unmounting = threading.Thread(target=lambda: finished.append(m.unmount()))
    unmounting.start()
    for _ in range(1000):  # wait for the lazy detach (a state change of the kernel, not a timer)
        if not os.path.ismount(m.path) or not unmounting.is_alive():
            break
        unmounting.join(0.01)
    assert not os.path.ismount(m.path)
    assert process.poll() is None  # still serving the open file
    assert f.read() == b"bc"
    f.close()
    unmounting.join(timeout=30)
    assert finished == [None]
    assert process.returncode == 0
    assert "is busy" in caplog.text


def test_the_cli_runs_in_the_foreground_until_unmounted(storage_job, store, tmp_path):
    store.seed({"data/a.txt": b"a"})
    point = tmp_path / "cli"
    point.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "aml_identity", "mount", store.uri("data/"), str(point), "--cache-size", "64MiB"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line == f"mounted {store.uri('data/')} at {point} (ro)\n"
        assert (point / "a.txt").read_text() == "a"
    finally:
        subprocess.run(["fusermount3", "-u", str(point)], check=False)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err

    bad = subprocess.run(
        [sys.executable, "-m", "aml_identity", "mount", store.uri("data/"), "--cache-size", "lots"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert "--cache-size lots" in bad.stderr


def test_bad_arguments_are_refused_before_anything_is_mounted(storage_job, store, tmp_path, monkeypatch):
    with pytest.raises(ConfigurationError, match="mode"):
        mount(store.uri("data/"), mode="wr")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="cache_size"):
        mount(store.uri("data/"), cache_size="plenty")
    with pytest.raises(ConfigurationError, match="credential"):
        mount(store.uri("data/"), credential=object())  # type: ignore[arg-type]
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(ConfigurationError, match="apt-get install fuse3"):
        mount(store.uri("data/"))
    monkeypatch.undo()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("do not hide me")
    with pytest.raises(DatastoreError, match="not empty"):
        mount(store.uri("data/"), busy)
    assert (busy / "mine.txt").read_text() == "do not hide me"


def test_mount_and_mount_class_are_exported():
    import aml_identity
    import aml_identity.datastore

    assert aml_identity.mount is aml_identity.datastore.mount is mount
    assert aml_identity.Mount is Mount
    assert "mount" in aml_identity.__all__
    assert "Mount" in aml_identity.datastore.__all__
