"""Real programs on a read-write mount: tar, git, SQLite, a killed mount process and a full staging disk.

Each test drives a mount through the kernel (fuse3) against Azurite, with the programs a user runs, and checks
what storage holds afterwards with the real azure-storage-blob client.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import tarfile
import threading
import uuid
from pathlib import Path

import pytest

from aml_identity.datastore import mount
from aml_identity.datastore._fuse_main import is_stale
from aml_identity.datastore._fuse_write import UPLOAD_BLOCK_BYTES

pytestmark = [pytest.mark.azurite, pytest.mark.fuse, pytest.mark.slow]

# The standard library as Debian installs it (symlinks included), else this interpreter's.
_STDLIB = next(
    p for p in (Path(f"/usr/lib/python3.{sys.version_info.minor}"), Path(sysconfig.get_paths()["stdlib"])) if p.is_dir()
)


def _git(*args: str, cwd: Path | None = None) -> str:
    environ = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd or Path.cwd())}
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main", *args],
        cwd=cwd, capture_output=True, text=True, env=environ, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def stdlib_tar(tmp_path_factory):
    """A tar of the standard library (without bytecode caches), and the folder it was made from."""
    target = tmp_path_factory.mktemp("stdlib") / "stdlib.tar"
    with tarfile.open(target, "w") as tar:
        tar.add(_STDLIB, arcname="stdlib", filter=lambda info: None if "__pycache__" in info.name else info)
    return target


def test_the_standard_library_untars_onto_a_rw_mount_and_reads_back_identical(storage_job, store, stdlib_tar, tmp_path):
    with mount(store.uri("py/"), mode="rw") as m:
        subprocess.run(["tar", "-xf", str(stdlib_tar), "-C", str(m.path)], check=True)
        links = [p.relative_to(m.path) for p in (m.path / "stdlib").rglob("*") if p.is_symlink()]
    reference = tmp_path / "reference"
    reference.mkdir()
    subprocess.run(["tar", "-xf", str(stdlib_tar), "-C", str(reference)], check=True)
    with mount(store.uri("py/")) as m:  # a fresh mount: everything comes back from storage
        diff = subprocess.run(
            ["diff", "-r", "--no-dereference", str(reference / "stdlib"), str(m.path / "stdlib")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert diff.returncode == 0, (diff.stdout + diff.stderr)[:2000]
        assert links == [p.relative_to(reference) for p in (reference / "stdlib").rglob("*") if p.is_symlink()]
        for link in links:  # symbolic links read back as links, with their targets
            assert (m.path / link).readlink() == (reference / link).readlink()
    for link in links:  # stored the way blobfuse2 stores them: metadata is_symlink=true, the target as content
        blob = store.client.get_blob_client(f"py/{link.as_posix()}")
        assert blob.get_blob_properties().metadata == {"is_symlink": "true"}
        assert blob.download_blob().readall() == str((reference / link).readlink()).encode()


def test_symlinks_are_blobs_with_is_symlink_metadata_and_read_back_as_links(storage_job, store):
    store.client.upload_blob("out/by-blobfuse", b"target.txt", metadata={"is_symlink": "true"})
    with mount(store.uri("out/"), mode="rw") as m:
        (m.path / "target.txt").write_text("content")
        (m.path / "link").symlink_to("target.txt")
        assert str((m.path / "link").readlink()) == "target.txt"
        assert (m.path / "link").read_text() == "content"
        assert str((m.path / "by-blobfuse").readlink()) == "target.txt"
        (m.path / "link").rename(m.path / "moved")
        assert str((m.path / "moved").readlink()) == "target.txt"
    assert store.read("out/moved") == b"target.txt"
    assert store.client.get_blob_client("out/moved").get_blob_properties().metadata == {"is_symlink": "true"}
    assert not store.client.get_blob_client("out/link").exists()


def test_git_clone_of_a_local_repository_onto_a_rw_mount_works(storage_job, store, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    _git("init", "-q", cwd=source)
    for i in range(20):
        (source / f"file{i}.txt").write_text(f"line {i}\n" * (i + 1))
    (source / "link").symlink_to("file0.txt")
    _git("add", ".", cwd=source)
    _git("commit", "-qm", "first", cwd=source)
    (source / "file1.txt").write_text("changed\n")
    _git("commit", "-qam", "second", cwd=source)
    with mount(store.uri("repo/"), mode="rw") as m:
        _git("clone", "-q", "--no-hardlinks", str(source), str(m.path / "clone"), cwd=tmp_path)
        assert _git("log", "--format=%s", cwd=m.path / "clone").split() == ["second", "first"]
        assert _git("status", "--porcelain", cwd=m.path / "clone") == ""
        _git("fsck", "--no-progress", cwd=m.path / "clone")
        assert (m.path / "clone" / "file1.txt").read_text() == "changed\n"
    with mount(store.uri("repo/")) as m:  # read back from storage
        assert _git("log", "--format=%s", cwd=m.path / "clone").split() == ["second", "first"]
        assert str((m.path / "clone" / "link").readlink()) == "file0.txt"


def test_an_sqlite_database_in_wal_mode_works_on_a_rw_mount(storage_job, store):
    with mount(store.uri("db/"), mode="rw") as m:
        db = sqlite3.connect(m.path / "runs.db")
        assert db.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
        db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, loss REAL)")
        with db:
            db.executemany("INSERT INTO runs (loss) VALUES (?)", [(1.0 / (i + 1),) for i in range(500)])
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (500,)
        db.close()
    with mount(store.uri("db/")) as m:  # read back from storage: the WAL was checkpointed into the database
        db = sqlite3.connect(f"file:{m.path / 'runs.db'}?mode=ro&immutable=1", uri=True)
        assert db.execute("SELECT count(*), max(loss) FROM runs").fetchone() == (500, 1.0)
        db.close()
    assert set(store.contents("db/")) == {"runs.db"}  # the -wal and -shm files were removed at close


def test_after_kill_9_of_the_mount_process_the_mount_point_is_released_and_no_partial_blob_is_visible(
    storage_job, store
):
    m = mount(store.uri("out/"), mode="rw")
    with (m.path / "done.bin").open("wb") as f:
        f.write(b"done")
    half = (m.path / "half.bin").open("wb")
    half.write(os.urandom(UPLOAD_BLOCK_BYTES * 2 + 5))  # two blocks already sent to storage (uncommitted)
    half.flush()
    os.kill(m.pid, signal.SIGKILL)
    m._state.process.wait(timeout=30)
    with pytest.raises(OSError):
        half.close()
    released = threading.Event()
    for _ in range(600):  # the watchdog (fusermount3 auto_unmount) releases the mount point within moments
        if not is_stale(str(m.path)) and not os.path.ismount(m.path):
            break
        released.wait(0.05)
    assert not os.path.ismount(m.path)
    assert not is_stale(str(m.path))
    assert list(m.path.iterdir()) == []  # an ordinary empty folder again, without fusermount -u
    m.unmount()
    assert set(store.contents("out/")) == {"done.bin"}  # the half-written file never became a blob


def _put_blocks(proxy, name: str) -> list:
    """The Put Block requests for blob ``name`` that storage accepted."""
    return [
        r for r in proxy.requests
        if r.method == "PUT" and "comp=block&" in r.query + "&" and r.path.endswith("/" + name) and r.status == 201
    ]  # fmt: skip


def test_a_large_file_is_uploaded_in_blocks_while_it_is_written_and_close_only_sends_the_rest(
    storage_job, store, open_proxy, via
):
    content = os.urandom(UPLOAD_BLOCK_BYTES * 2 + 5)
    with mount(store.uri("out/"), mode="rw", environ=via(open_proxy)) as m, (m.path / "ckpt.bin").open("wb") as f:
        f.write(content)
        f.flush()  # in the mount's staging file; the file is still open
        staged = threading.Event()
        for _ in range(600):  # Put Block runs in the mount's upload pool, moments after each block is written
            if len(_put_blocks(open_proxy, "out/ckpt.bin")) == 2:
                break
            staged.wait(0.05)
        before_close = len(_put_blocks(open_proxy, "out/ckpt.bin"))
        assert not store.client.get_blob_client("out/ckpt.bin").exists()  # staged blocks are invisible
        f.close()
        after_close = len(_put_blocks(open_proxy, "out/ckpt.bin"))
        committed, _ = store.client.get_blob_client("out/ckpt.bin").get_block_list("committed")
    assert before_close == 2
    assert after_close == 3
    assert store.read("out/ckpt.bin") == content
    assert [b.size for b in committed] == [UPLOAD_BLOCK_BYTES, UPLOAD_BLOCK_BYTES, 5]


def _write_repeatedly(fd: int, chunk: bytes, times: int) -> None:
    for _ in range(times):
        os.write(fd, chunk)


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(point)], check=True)
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)
    shutil.rmtree(point, ignore_errors=True)


def test_a_full_staging_disk_is_enospc_to_the_writer_and_the_mount_keeps_working(storage_job, store, small_disk):
    with mount(store.uri("out/"), mode="rw", cache_dir=small_disk) as m:
        fd = os.open(m.path / "big.bin", os.O_WRONLY | os.O_CREAT)
        chunk = b"\0" * (1 << 20)
        with pytest.raises(OSError) as caught:
            _write_repeatedly(fd, chunk, 64)  # 64 MiB onto a 24 MiB disk
        assert caught.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as closed:
            os.close(fd)  # the file is not stored (never a truncated blob), and close() says so
        assert closed.value.errno == errno.ENOSPC
        (m.path / "big.bin").unlink()
        (m.path / "small.txt").write_bytes(b"still works")  # the space came back
        assert (m.path / "small.txt").read_bytes() == b"still works"
    assert store.contents("out/") == {"small.txt": b"still works"}
