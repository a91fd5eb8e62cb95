"""A ``rw`` mount's write path: local staging files, uploaded in blocks while written, committed atomically.

A file open for writing lives in a staging file on local disk (shared by every handle open on that path). While
it is written, each :data:`UPLOAD_BLOCK_BYTES` block the writer has gone past is staged in storage (Put Block,
invisible to readers) by a small pool, so closing a large file only sends its last block and the block list.
A block written again after it was sent is sent again at commit (each block carries a write generation).
Its content becomes the blob - in one Put Blob up to :data:`UPLOAD_SINGLE_PUT_BYTES`, else one Put Block List,
both atomic - when a descriptor that wrote it is closed (``flush``), on ``fsync`` and on the last ``release``;
each returns once storage has answered, so ``close()`` and ``fsync()`` report a failed upload. A file still
open and never closed is not in storage, and a killed mount leaves only uncommitted blocks, which readers never
see (the service drops them after a week).

Staging never takes the last of its disk: a write that would leave less than the reserve free fails with
``ENOSPC``, as does a write the disk itself refuses. A file whose write failed that way is never uploaded (a
truncated blob would look complete): its staging file is emptied at once, so the space is back before the writer
even closes it (the kernel's ``release``, which drops the staging file, comes after ``close()`` returns), its
pending block uploads are cancelled, later writes fail with ``ENOSPC`` too and closing it reports ``ENOSPC``;
it stays there, empty and on this node only, until it is deleted or opened with ``O_TRUNC`` (``open(..., "w")``),
which starts it afresh. Deleting a file still being written cancels its pending block uploads.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from aml_identity.datastore._fuse_cache import RESERVED_FREE_DISK_BYTES, free_bytes
from aml_identity.datastore._fuse_errors import StorageErrors, os_error
from aml_identity.datastore._fuse_tree import Entry
from aml_identity.datastore._rest import BlobRestClient, StorageHttpError

__all__ = ["UPLOAD_BLOCK_BYTES", "UPLOAD_SINGLE_PUT_BYTES", "UPLOAD_THREADS", "Staged", "StagingArea", "Writer"]

_log = logging.getLogger("aml_identity.mount")

# Upload: content up to this size is sent in one Put Blob, bigger files as staged blocks of
# UPLOAD_BLOCK_BYTES (50,000 blocks x 8 MiB = 390 GiB, beyond any checkpoint) sent by UPLOAD_THREADS threads.
UPLOAD_SINGLE_PUT_BYTES = 8 * 1024 * 1024
UPLOAD_BLOCK_BYTES = 8 * 1024 * 1024
UPLOAD_THREADS = 4
# On a small staging disk (a tmpfs, a container's scratch) the fixed reserve would refuse every write: there,
# at most this fraction of the disk's size is kept free instead.
SMALL_DISK_RESERVE_FRACTION = 1 / 8


@dataclass
class Staged:
    """The local staging file of a file open for writing (shared by every handle open on that path)."""

    path: str
    blob: str
    fd: int
    file: str
    refs: int = 0
    dirty: bool = False
    unlinked: bool = False
    failed: bool = False  # a write hit ENOSPC: never uploaded (see the module docstring)
    metadata: Mapping[str, str] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    # Blocks staged in storage while the file was written: index -> (block id, write generation sent).
    sent: dict[int, tuple[str, int]] = field(default_factory=dict)
    generation: dict[int, int] = field(default_factory=dict)
    pending: list[Future[str]] = field(default_factory=list)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    serial: int = 0
    blocks_lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Writer:
    """An open handle on a staging file (``writable`` False: a reader of a file being written here)."""

    staged: Staged
    writable: bool


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    parts = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        parts.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


class StagingArea:
    """The staging files of one mount and their uploads (thread-safe).

    Args:
        client: The REST client.
        container: The container.
        errors: Converts failed requests to errnos.
        staging_dir: Where staging files go (a private temporary folder when None).
        reserve_bytes: Free disk space staging always leaves.
        free_space: Returns a path's disk's free bytes (injected by tests).
    """

    def __init__(
        self,
        client: BlobRestClient,
        *,
        container: str,
        errors: StorageErrors,
        staging_dir: str | None = None,
        reserve_bytes: int = RESERVED_FREE_DISK_BYTES,
        free_space: Callable[[str], int] = free_bytes,
    ) -> None:
        """Create the area (its folder is made on first use)."""
        self.client = client
        self.container = container
        self._errors = errors
        self._dir = staging_dir
        self._own_dir = False
        self._reserve = reserve_bytes
        self._disk_reserve: int | None = None
        self._free_space = free_space
        self._lock = threading.Lock()
        self._staged: dict[str, Staged] = {}
        self._uploads = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="aml-mount-upload")

    # -- the staging folder --------------------------------------------------------------------------------

    def directory(self) -> str:
        """Return the staging folder (made if needed)."""
        with self._lock:
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="aml-mount-staging-")
                self._own_dir = True
            else:
                os.makedirs(self._dir, mode=0o700, exist_ok=True)
            return self._dir

    def reserve(self) -> int:
        """The free space staging leaves on its disk (smaller on a small disk, see SMALL_DISK_RESERVE_FRACTION)."""
        if self._disk_reserve is None:
            info = os.statvfs(self.directory())
            self._disk_reserve = min(self._reserve, int(info.f_blocks * info.f_frsize * SMALL_DISK_RESERVE_FRACTION))
        return self._disk_reserve

    def room(self) -> int:
        """Bytes that may still be staged."""
        return max(0, self._free_space(self.directory()) - self.reserve())

    def require_room(self, size: int) -> None:
        """Fail with ``ENOSPC`` if staging ``size`` more bytes would leave less than the reserve free."""
        if self.room() < size:
            _log.error(
                "refusing to stage %d more bytes in %s: its disk would have less than %d bytes free",
                size,
                self.directory(),
                self.reserve(),
            )
            raise os_error(errno.ENOSPC)

    def close(self) -> None:
        """Drop every staging file; files still open for writing are not committed (they were never closed)."""
        with self._lock:
            staged_files = list(self._staged.values())
            self._staged.clear()
        for staged in staged_files:
            if staged.dirty and not staged.unlinked and not staged.failed:
                _log.warning(
                    "%s was still open for writing when the mount ended; its unclosed content was not "
                    "uploaded (a half-written file never becomes a blob)",
                    staged.blob,
                )
            with contextlib.suppress(OSError):
                os.close(staged.fd)
            with contextlib.suppress(OSError):
                os.unlink(staged.file)
        self._uploads.shutdown(wait=False, cancel_futures=True)
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    # -- staging files --------------------------------------------------------------------------------------

    def get(self, path: str) -> Staged | None:
        """The staging file of ``path``, if it is open for writing."""
        with self._lock:
            return self._staged.get(path)

    def attach(self, path: str) -> Staged | None:
        """The staging file of ``path`` with one more reference, if it is open for writing."""
        with self._lock:
            staged = self._staged.get(path)
            if staged is not None:
                staged.refs += 1
            return staged

    def children(self, folder: str) -> list[Staged]:
        """The files being written directly in ``folder``."""
        base = "/" if folder == "/" else folder.rstrip("/")
        with self._lock:
            staged = list(self._staged.values())
        return [each for each in staged if (each.path.rpartition("/")[0] or "/") == base]

    def stage(self, path: str, blob: str, *, fill: Callable[[Staged], None] | None) -> tuple[Staged, bool]:
        """Return the staging file of ``path`` with one more reference, and whether it was just made.

        ``fill`` copies the file's current content into a staging file just made (None: start empty).
        """
        directory = self.directory()
        with self._lock:
            staged = self._staged.get(path)
            fresh = staged is None
            if staged is None:
                fd, file = tempfile.mkstemp(prefix="staged-", dir=directory)
                staged = Staged(path, blob, fd, file)
                self._staged[path] = staged
            staged.refs += 1
        if fresh:
            with staged.lock:
                try:
                    if fill is not None:
                        fill(staged)
                    else:
                        staged.dirty = True
                except BaseException:
                    self.drop_ref(staged)
                    raise
        return staged, fresh

    def entry(self, staged: Staged) -> Entry:
        """The attributes of a file being written: its staging file's."""
        info = os.fstat(staged.fd)
        return Entry(is_dir=False, size=info.st_size, mtime=info.st_mtime)

    def drop_ref(self, staged: Staged) -> None:
        """One reference fewer; the last one removes the staging file (not a failed one's: see :meth:`forget`)."""
        with self._lock:
            staged.refs -= 1
            if staged.refs > 0:
                return
            if self._staged.get(staged.path) is staged:
                if staged.failed:  # kept, empty, so that the path is there to delete or write again
                    return
                del self._staged[staged.path]
        self._remove(staged)

    def _remove(self, staged: Staged) -> None:
        with contextlib.suppress(OSError):
            os.close(staged.fd)
        with contextlib.suppress(OSError):
            os.unlink(staged.file)

    def forget(self, path: str) -> Staged | None:
        """``path`` was unlinked: its staging file (if any) stays usable by its handles but is never uploaded."""
        with self._lock:
            staged = self._staged.pop(path, None)
            if staged is not None:
                staged.unlinked = True
            closed = staged is not None and staged.refs <= 0  # a failed write's, kept by drop_ref
        if staged is not None:
            self._cancel_pending(staged)
            if closed:
                self._remove(staged)
        return staged

    def _cancel_pending(self, staged: Staged) -> None:
        """Cancel the block uploads of ``staged`` not started yet (it will never be committed)."""
        with staged.blocks_lock:
            pending, staged.pending = staged.pending, []
            staged.sent.clear()
        for future in pending:
            future.cancel()

    def _fail(self, staged: Staged) -> None:
        """A write of ``staged`` hit ``ENOSPC``: give its space back now and never upload it."""
        with staged.lock:
            staged.failed = True
            self._cancel_pending(staged)
            with contextlib.suppress(OSError):
                os.ftruncate(staged.fd, 0)
        _log.error(
            "%s: a write found the staging disk full; the file will not be uploaded and its staged content was "
            "dropped to give the space back (free space on %s, then write the file again)",
            staged.blob,
            self.directory(),
        )

    def move(self, old: str, new: str, new_blob: str) -> Staged | None:
        """``old`` was renamed to ``new``: its staging file (if any) is committed under the new name."""
        with self._lock:
            staged = self._staged.pop(old, None)
            if staged is None:
                return None
            displaced = self._staged.pop(new, None)
            if displaced is not None:
                displaced.unlinked = True
            staged.path, staged.blob, staged.dirty = new, new_blob, True
            with staged.blocks_lock:
                staged.sent.clear()  # blocks staged under the old blob name are not the new blob's
            self._staged[new] = staged
            return staged

    # -- writing ----------------------------------------------------------------------------------------------

    def write(self, staged: Staged, data: bytes, offset: int) -> int:
        """Write to the staging file; send the blocks the writer has gone past.

        Raises:
            OSError: ``ENOSPC``: the staging disk is full, now or at an earlier write of this file (which is then
                never uploaded, see the module docstring).
        """
        if staged.failed:
            raise os_error(errno.ENOSPC)
        try:
            self.require_room(len(data))
            written = os.pwrite(staged.fd, data, offset)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._fail(staged)
            raise
        end = offset + written
        first, last = offset // UPLOAD_BLOCK_BYTES, (end - 1) // UPLOAD_BLOCK_BYTES
        with staged.blocks_lock:
            for index in range(first, last + 1):
                staged.generation[index] = staged.generation.get(index, 0) + 1
        staged.dirty = True
        for index in range(first, end // UPLOAD_BLOCK_BYTES):  # the blocks this write completed
            self._send_soon(staged, index)
        return written

    def truncate(self, staged: Staged, length: int) -> None:
        """Truncate the staging file (blocks from the new end on must be sent again; 0 clears a failed write)."""
        with staged.lock:
            os.ftruncate(staged.fd, length)
            if length == 0 and staged.refs > 0:  # open(..., "w") of a failed file: written afresh
                staged.failed = False
            with staged.blocks_lock:
                for index in [i for i in staged.generation if i >= length // UPLOAD_BLOCK_BYTES]:
                    staged.generation[index] += 1
            staged.dirty = True

    def _send_soon(self, staged: Staged, index: int) -> None:
        with contextlib.suppress(RuntimeError):  # the pool is shut down: unmounting
            future = self._uploads.submit(self._send_block, staged, index, UPLOAD_BLOCK_BYTES)
            with staged.blocks_lock:
                staged.pending = [each for each in staged.pending if not each.done()]
                staged.pending.append(future)

    def _send_block(self, staged: Staged, index: int, length: int) -> str:
        """Stage one block of the file in storage; return its id (recorded as sent if not written since)."""
        with staged.blocks_lock:
            generation = staged.generation.get(index, 0)
            staged.serial += 1
            block_id = base64.b64encode(f"{staged.tag}-{staged.serial:08d}".encode()).decode()
            blob = staged.blob
        data = _pread_all(staged.fd, length, index * UPLOAD_BLOCK_BYTES)
        self.client.put_block(self.container, blob, block_id, data, length=len(data))
        with staged.blocks_lock:
            if staged.blob == blob:
                staged.sent[index] = (block_id, generation)
        return block_id

    def commit(self, staged: Staged) -> Entry | None:
        """Upload the staging file as the blob if it changed since the last commit; return its new entry.

        Raises:
            OSError: The upload failed (the errno for it); the file stays dirty, to be committed again. ``ENOSPC``:
                a write of the file failed on a full staging disk, so it is not uploaded.
        """
        with staged.lock:
            if staged.unlinked:
                return None
            if staged.failed:
                raise os_error(errno.ENOSPC, staged.blob)
            if not staged.dirty:
                return None
            staged.dirty = False
            size = os.fstat(staged.fd).st_size
            try:
                self._commit(staged, size)
            except StorageHttpError as exc:
                staged.dirty = True
                raise self._errors.fail(exc, "write", staged.blob) from None
            return Entry(is_dir=False, size=size, mtime=os.fstat(staged.fd).st_mtime, is_link=False)

    def _commit(self, staged: Staged, size: int) -> None:
        with staged.blocks_lock:
            pending = list(staged.pending)
        wait(pending)  # a failed early send is sent again below
        with staged.blocks_lock:
            staged.pending = []
            sent = dict(staged.sent)
            generation = dict(staged.generation)
        if size <= UPLOAD_SINGLE_PUT_BYTES and not sent:
            data = _pread_all(staged.fd, size, 0)
            self.client.put_blob(
                self.container, staged.blob, data, length=size, metadata=staged.metadata, overwrite=True
            )
            return
        count = (size + UPLOAD_BLOCK_BYTES - 1) // UPLOAD_BLOCK_BYTES
        ids: list[str | Future[str]] = []
        for index in range(count):
            length = min(UPLOAD_BLOCK_BYTES, size - index * UPLOAD_BLOCK_BYTES)
            record = sent.get(index)
            if record is not None and record[1] == generation.get(index, 0) and length == UPLOAD_BLOCK_BYTES:
                ids.append(record[0])
            else:
                ids.append(self._uploads.submit(self._send_block, staged, index, length))
        block_ids = [each if isinstance(each, str) else each.result() for each in ids]
        self.client.put_block_list(self.container, staged.blob, block_ids, metadata=staged.metadata, overwrite=True)

    def upload(self, blob: str, fd: int, size: int, metadata: Mapping[str, str]) -> None:
        """Upload the content of file ``fd`` as ``blob`` (a copy for a rename; not a staging file).

        Raises:
            StorageHttpError: The upload failed.
        """
        if size <= UPLOAD_SINGLE_PUT_BYTES:
            data = _pread_all(fd, size, 0)
            self.client.put_blob(self.container, blob, data, length=size, metadata=metadata, overwrite=True)
            return
        tag = uuid.uuid4().hex[:16]
        offsets = range(0, size, UPLOAD_BLOCK_BYTES)
        ids = [base64.b64encode(f"{tag}-{i:08d}".encode()).decode() for i in range(len(offsets))]

        def put(item: tuple[str, int]) -> None:
            block_id, offset = item
            length = min(UPLOAD_BLOCK_BYTES, size - offset)
            self.client.put_block(self.container, blob, block_id, _pread_all(fd, length, offset), length=length)

        list(self._uploads.map(put, zip(ids, offsets, strict=True)))
        self.client.put_block_list(self.container, blob, ids, metadata=metadata, overwrite=True)
