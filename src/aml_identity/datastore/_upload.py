"""Upload a file or a folder: parallel, atomic per blob, and skipping what storage already has.

* A file up to :data:`SINGLE_PUT_MAX` bytes is one Put Blob request: readers see all of it or nothing.
* A larger file is staged as :data:`BLOCK_SIZE` blocks in parallel (larger blocks over 390 GiB; uncommitted
  blocks are invisible) and committed with one Put Block List once every block is staged - and only if the
  file did not change meanwhile - so an interrupted upload never leaves a half-written blob.
  If the service no longer has the staged blocks at commit (``InvalidBlockList``: a storage server that
  restarted and lost them, or another writer that replaced the blob), they are staged once more.
* Each blob records the local file's mtime in its metadata (``aml_mtime_ns``); a file whose size and mtime
  match the blob's is skipped on the next run.
* ``overwrite=False`` refuses to replace a different existing blob (conditional ``If-None-Match: *``,
  so a blob created concurrently is not replaced either).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from aml_identity.datastore._engine import BUFFER_SIZE, Counters, Engine, Progress, Transfer
from aml_identity.datastore._paths import is_transfer_artifact
from aml_identity.datastore._rest import BlobItem, BlobRestClient, StorageHttpError
from aml_identity.datastore.resolve import BlobLocation
from aml_identity.errors import ConfigurationError, TransferError

_log = logging.getLogger(__name__)

__all__ = ["BLOCK_SIZE", "MAX_BLOCKS", "MTIME_METADATA", "SINGLE_PUT_MAX", "run_upload"]

# Files up to this size are sent in one Put Blob (one request, atomic); the service allows up to 5000 MiB.
SINGLE_PUT_MAX = 8 * 1024 * 1024
# Block size of larger files: few requests per GiB, and a file of a few blocks is already sent in parallel.
BLOCK_SIZE = 8 * 1024 * 1024
# The service's answer to Put Block List naming a block it does not have (staged blocks lost or discarded).
INVALID_BLOCK_LIST = "InvalidBlockList"
# A blob holds at most 50,000 committed blocks; files over BLOCK_SIZE x 50,000 (390 GiB) get bigger blocks.
MAX_BLOCKS = 50_000
# Blob metadata holding the uploaded file's mtime (metadata names must be C# identifiers).
MTIME_METADATA = "aml_mtime_ns"
# How many refused names an error message lists.
_MAX_NAMES_SHOWN = 10


class _FileChangedError(TransferError):
    """The local file changed size while it was being read (internal: not a network error)."""


def _block_id(index: int) -> str:
    # Every block id of a blob must have the same length; base64 of a fixed-width counter.
    return base64.b64encode(b"aml-%08d" % index).decode()


def walk_files(root: str) -> Iterator[tuple[str, str]]:
    """Yield ``(path, relative posix name)`` for every regular file below ``root``.

    Symlinked folders are not followed; our own partial files and journals are left out.
    """
    stack = [("", root)]
    while stack:
        relative_dir, folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                relative = f"{relative_dir}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append((relative + "/", entry.path))
                elif entry.is_file() and not is_transfer_artifact(entry.name):
                    yield entry.path, relative


class _Upload(Transfer):
    purpose = "write"  # every request of an upload, its listing too, is fixed by the write role

    def __init__(
        self,
        location: BlobLocation,
        client: BlobRestClient,
        engine: Engine,
        counters: Counters,
        progress: Progress,
        *,
        overwrite: bool,
    ) -> None:
        super().__init__(location, client, engine, counters, progress)
        self.overwrite = overwrite
        self.conflicts: list[str] = []
        self.changed: list[str] = []
        self._lock = threading.Lock()

    def existing(self, prefix: str) -> dict[str, BlobItem]:
        """Return the blobs already under ``prefix``, by name."""
        return {item.name: item for items in self.pages(prefix) for item in items}

    def plan(self, path: str, name: str, remote: BlobItem | None) -> None:
        """Decide what to do with one local file and queue the work."""
        self.counters.add(files=1)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise TransferError(f"Cannot read {path!r}: {exc.strerror}.") from None
        if remote is not None:
            if remote.size == st.st_size and remote.metadata.get(MTIME_METADATA) == str(st.st_mtime_ns):
                self.counters.add(skipped_files=1, bytes_skipped=st.st_size)
                return
            if not self.overwrite:
                self._conflict(name)
                return
        self.progress.add_total(st.st_size)
        if st.st_size <= SINGLE_PUT_MAX:
            self.engine.submit(lambda: self._put_whole(path, name, st.st_size, st.st_mtime_ns))
        else:
            self._start_blocks(path, name, st.st_size, st.st_mtime_ns)

    def _conflict(self, name: str) -> None:
        with self._lock:
            self.conflicts.append(name)

    def _body(self, fd: int, offset: int, length: int, path: str) -> Callable[[Callable[[Any], None]], None]:
        buf = self._buffer()

        def send_body(send: Callable[[Any], None]) -> None:
            sent = 0
            while sent < length:
                want = min(BUFFER_SIZE, length - sent)
                try:
                    n = os.preadv(fd, [buf[:want]], offset + sent)
                except OSError as exc:
                    raise TransferError(f"Could not read {path!r}: {exc.strerror}.") from None
                if n <= 0:
                    raise _FileChangedError(f"{path!r} shrank while it was being uploaded; it was not committed.")
                send(buf[:n])
                sent += n

        return send_body

    def _open(self, path: str) -> int:
        try:
            return os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise TransferError(f"Cannot read {path!r}: {exc.strerror}.") from None

    def _still_same(self, fd: int, size: int, mtime_ns: int) -> bool:
        st = os.fstat(fd)
        return st.st_size == size and st.st_mtime_ns == mtime_ns

    def _refused(self, exc: StorageHttpError, name: str) -> None:
        """Handle a refused write: an existing blob (and no ``overwrite``) is a conflict; anything else raises."""
        if exc.status == 409 and exc.code == "BlobAlreadyExists":  # noqa: PLR2004 - HTTP status
            self._conflict(name)
            return
        raise self._storage_error(exc, "write") from None

    def _put_whole(self, path: str, name: str, size: int, mtime_ns: int) -> None:
        fd = self._open(path)
        try:
            metadata = {MTIME_METADATA: str(mtime_ns)}
            try:
                self.client.put_blob(
                    self.loc.container, name, self._body(fd, 0, size, path), length=size, metadata=metadata,
                    overwrite=self.overwrite,
                )  # fmt: skip
            except StorageHttpError as exc:
                self._refused(exc, name)
                return
            if not self._still_same(fd, size, mtime_ns):
                with self._lock:  # the next run sees a different mtime and uploads it again
                    self.changed.append(path)
        finally:
            os.close(fd)
        self.counters.add(transferred_files=1, bytes_transferred=size)
        self.progress.advance(size)

    def _send_block(self, path: str, name: str, index: int, block_size: int, size: int) -> None:
        offset = index * block_size
        length = min(block_size, size - offset)
        fd = self._open(path)
        try:
            self.client.put_block(
                self.loc.container, name, _block_id(index), self._body(fd, offset, length, path), length=length
            )
        except StorageHttpError as exc:
            raise self._storage_error(exc, "write") from None
        finally:
            os.close(fd)
        self.counters.add(bytes_transferred=length)
        self.progress.advance(length)

    def _commit(self, path: str, name: str, size: int, mtime_ns: int, block_size: int) -> None:
        fd = self._open(path)
        try:
            if not self._still_same(fd, size, mtime_ns):
                with self._lock:
                    self.changed.append(path)
                return  # staged blocks are discarded by the service; the blob is untouched
        finally:
            os.close(fd)
        count = -(-size // block_size)
        blocks = [_block_id(i) for i in range(count)]
        metadata = {MTIME_METADATA: str(mtime_ns)}
        try:
            try:
                self.client.put_block_list(self.loc.container, name, blocks, metadata=metadata,
                                           overwrite=self.overwrite)  # fmt: skip
            except StorageHttpError as exc:
                if not (exc.status == 400 and exc.code == INVALID_BLOCK_LIST):  # noqa: PLR2004 - HTTP status
                    raise
                # The service lost blocks it had acknowledged (a storage server restarted, or another writer
                # replaced the blob meanwhile): stage them all again, in this thread, and commit once more.
                _log.warning("%s: storage no longer has its staged blocks (%s); sending them again", name, exc.code)
                self.progress.add_total(size)
                for index in range(count):
                    self.engine.check()
                    self._send_block(path, name, index, block_size, size)
                self.client.put_block_list(self.loc.container, name, blocks, metadata=metadata,
                                           overwrite=self.overwrite)  # fmt: skip
        except StorageHttpError as exc:
            self._refused(exc, name)
            return
        self.counters.add(transferred_files=1)

    def _start_blocks(self, path: str, name: str, size: int, mtime_ns: int) -> None:
        block_size = max(BLOCK_SIZE, -(-size // MAX_BLOCKS))
        count = -(-size // block_size)
        state = {"remaining": count}
        lock = threading.Lock()

        def stage(index: int) -> None:
            self.engine.check()
            self._send_block(path, name, index, block_size, size)
            with lock:
                state["remaining"] -= 1
                last = state["remaining"] == 0
            if last:
                self._commit(path, name, size, mtime_ns, block_size)

        for index in range(count):
            self.engine.submit(lambda index=index: stage(index))  # type: ignore[misc]


def run_upload(
    src: str,
    location: BlobLocation,
    *,
    client: BlobRestClient,
    workers: int,
    overwrite: bool,
    counters: Counters,
    progress: Progress,
    exclude: frozenset[str] = frozenset(),
) -> tuple[str, list[str]]:
    """Upload ``src`` (a file or a folder) to ``location``.

    Args:
        src: The local file or folder.
        location: Where to: a blob name for a file (or a folder URI, which gets the file's name), a prefix
            for a folder.
        client: The blob client.
        workers: Parallel requests.
        overwrite: Replace existing blobs that differ.
        counters: Updated as files are uploaded.
        progress: Progress reporting.
        exclude: Absolute paths to leave out (files still open for writing).

    Returns:
        The blob name or prefix written, and the files that changed while they were read (not committed,
        or committed with their old mtime so the next run uploads them again).

    Raises:
        ConfigurationError: ``src`` does not exist.
        DataAccessDeniedError: The identity lacks a write role on the account.
        TransferError: An upload failed after retries, or existing blobs differ and ``overwrite`` is False.
    """
    src = os.path.abspath(src)
    if os.path.isfile(src):
        name = location.path + os.path.basename(src) if location.is_folder else location.path
        files: Iterator[tuple[str, str]] = iter([(src, "")])
        prefix, listing_prefix, target = name, name, name
    elif os.path.isdir(src):
        prefix = location.path if location.is_folder else location.path + "/"
        files, listing_prefix, target = walk_files(src), prefix, prefix
    else:
        raise ConfigurationError(f"Nothing to upload: {src!r} is not a file or a folder.", name="src")
    engine = Engine(workers, "aml-upload")
    job = _Upload(location, client, engine, counters, progress, overwrite=overwrite)
    try:
        existing = job.existing(listing_prefix)
        for path, relative in files:
            if path in exclude:
                continue
            blob = prefix + relative
            job.plan(path, blob, existing.get(blob))
            if engine.failed:
                break
    except BaseException as exc:
        engine.abort(exc)
        raise
    engine.finish()
    if job.conflicts:
        shown = ", ".join(repr(n) for n in sorted(job.conflicts)[:_MAX_NAMES_SHOWN])
        more = f" and {len(job.conflicts) - _MAX_NAMES_SHOWN} more" if len(job.conflicts) > _MAX_NAMES_SHOWN else ""
        raise TransferError(
            f"{len(job.conflicts)} blob(s) already exist in {location.container!r} with different content and "
            f"were not replaced: {shown}{more}. Pass overwrite=True (--overwrite) to replace them."
        )
    with contextlib.suppress(Exception):
        job.changed.sort()
    return target, job.changed
