"""The filesystem operations behind ``aml-identity mount``: a blob container prefix as a POSIX tree.

This module is the mfusepy ``Operations`` table without importing mfusepy (mfusepy only looks its methods up by
name), so it runs and is tested in-process without a kernel mount. Paths are ``/``-separated and relative to the
mount root; every operation on an open file uses its handle (``fh``), never its path (the mount runs with
``nullpath_ok``, and an unlinked file that is still open has no path).

The table only dispatches; each concern has its own module: the namespace and its listing cache
(:mod:`._fuse_tree`), the read path (:mod:`._fuse_read`), the write path (:mod:`._fuse_write`) and the errnos
of failed requests (:mod:`._fuse_errors`).

**Consistency.** Reads are pinned to the ETag seen in the listing: a handle that already returned data of one
version fails the next read with ``ESTALE`` rather than continue with the other version.

**Writes** (``rw``): see :mod:`._fuse_write`. One writer per file: two processes writing the same file through
this mount share one staging file; writers on other nodes are not coordinated (the last close wins), as with
blobfuse2. **Symbolic links** are stored as blobfuse2 stores them: a blob with metadata ``is_symlink=true``
whose content is the target.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

from aml_identity.datastore._fuse_core import Folder, Mode
from aml_identity.datastore._fuse_errors import os_error
from aml_identity.datastore._fuse_kernel import KERNEL_READ_AHEAD_BYTES
from aml_identity.datastore._fuse_ops_rw import WriteOperations
from aml_identity.datastore._fuse_read import (
    BLOCK_SIZE,
    MEMORY_CACHE_BYTES,
    PREFETCH_THREADS,
    READ_AHEAD_BLOCKS,
    Reader,
)
from aml_identity.datastore._fuse_tree import ATTR_CACHE_TTL_S, Entry, split
from aml_identity.datastore._fuse_write import UPLOAD_SINGLE_PUT_BYTES, Writer
from aml_identity.datastore._rest import StorageHttpError

__all__ = [
    "ATTR_CACHE_TTL_S",
    "BLOCK_SIZE",
    "MEMORY_CACHE_BYTES",
    "PREFETCH_THREADS",
    "READ_AHEAD_BLOCKS",
    "UPLOAD_SINGLE_PUT_BYTES",
    "BlobFilesystem",
    "Mode",
]

_log = logging.getLogger("aml_identity.mount")

# What a file system reports as its capacity when the store has no meaningful one (``df``, space checks).
_VIRTUAL_CAPACITY_BYTES = 1 << 50
_STATFS_BLOCK = 4096


class BlobFilesystem(WriteOperations):
    """The mfusepy operations table over one container prefix (see the module docstring and :class:`MountCore`)."""

    use_ns = True  # mfusepy: times are integer nanoseconds

    def init_with_config(self, conn_info: Any, config: Any) -> None:
        """Set the kernel's caching to match ours, then report the mount as ready (mfusepy ``init``).

        The kernel's read-ahead is the smaller of its device's ``read_ahead_kb`` and the ``max_readahead`` given
        here, so this asks for :data:`._fuse_kernel.KERNEL_READ_AHEAD_BYTES` and ``on_ready`` raises the other.
        """
        if conn_info is not None and hasattr(conn_info, "max_readahead"):
            conn_info.max_readahead = max(conn_info.max_readahead, KERNEL_READ_AHEAD_BYTES)
        if config is not None:
            config.attr_timeout = self.attr_timeout
            config.entry_timeout = self.attr_timeout
            config.negative_timeout = self.attr_timeout
            config.hard_remove = 1  # unlink an open file at once (no .fuse_hidden rename = blob copy)
            config.nullpath_ok = 1  # operations on open files use the handle, never the path
        self.ready = True
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path: str | None) -> None:
        """Unmounted: report files left open (never committed), stop the pools, remove staging files."""
        self.close()

    # -- metadata operations ---------------------------------------------------------------------------

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        """Return a file's or folder's attributes."""
        handle = self._handles.get(fh) if fh else None
        if isinstance(handle, Writer):
            return self._attrs(self._staging.entry(handle.staged))
        if isinstance(handle, Reader):
            return self._attrs(Entry(is_dir=False, size=handle.size, etag=handle.etag, mtime=handle.mtime))
        if path is None:
            raise os_error(errno.ENOENT)
        return self._attrs(self._lookup(path))

    def opendir(self, path: str | None) -> int:
        """Open a folder (the handle remembers its path for ``readdir``)."""
        if path is None:
            raise os_error(errno.ENOENT)
        if not self._lookup(path).is_dir:
            raise os_error(errno.ENOTDIR)
        return self._new_fh(Folder(path))

    def releasedir(self, path: str | None, fh: int) -> int:
        """Close a folder."""
        with self._lock:
            self._handles.pop(fh, None)
        return 0

    def readdir(self, path: str | None, fh: int) -> list[str | tuple[str, dict[str, int], int]]:
        """List a folder: its blobs and sub-prefixes, plus files and folders made through this mount."""
        handle = self._handles.get(fh)
        if isinstance(handle, Folder):
            if handle.listing is not None:  # a later call for the same open folder: resume in the same listing
                return handle.listing
            path = handle.path
        if path is None:
            raise os_error(errno.EBADF)
        entries = dict(self._tree.list_or_fail(path))
        entries.update(self._local_children(path))
        result: list[str | tuple[str, dict[str, int], int]] = [".", ".."]
        for name, entry in sorted(entries.items()):
            result.append((name, self._attrs(entry), 0))  # all of them: the kernel caches them (readdirplus)
        if isinstance(handle, Folder):
            handle.listing = result
        return result

    def statfs(self, path: str | None) -> dict[str, int]:
        """Report a large capacity (blob storage has none that matters); rw reports the staging disk's room."""
        blocks = _VIRTUAL_CAPACITY_BYTES // _STATFS_BLOCK
        available = self._staging.room() // _STATFS_BLOCK if self.mode == "rw" else blocks
        return {
            "f_bsize": _STATFS_BLOCK,
            "f_frsize": _STATFS_BLOCK,
            "f_blocks": blocks,
            "f_bfree": available,
            "f_bavail": available,
            "f_files": 1 << 32,
            "f_ffree": 1 << 32,
            "f_favail": 1 << 32,
            "f_namemax": 255,
        }

    def readlink(self, path: str | None) -> str:
        """Return a symbolic link's target."""
        if path is None:
            raise os_error(errno.ENOENT)
        entry = self._lookup(path)
        if not entry.is_link:
            raise os_error(errno.EINVAL)
        blob = self._tree.blob(path)
        try:
            content = self.client.get_blob(self.container, blob)
        except StorageHttpError as exc:
            raise self._errors.fail(exc, "read", blob) from None
        return content.decode("utf-8", "surrogateescape")

    def open(self, path: str | None, flags: int) -> int:
        """Open a file: a block-cached reader, or (``rw``) a writer on a local staging file."""
        if path is None:
            raise os_error(errno.ENOENT)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if writing:
            self._require_rw()
            return self._new_fh(Writer(self._stage(path, truncate=bool(flags & os.O_TRUNC)), writable=True))
        staged = self._staging.attach(path)
        if staged is not None:  # written through this mount and not closed yet: read what was written
            return self._new_fh(Writer(staged, writable=False))
        entry = self._lookup(path)
        if entry.is_dir:
            raise os_error(errno.EISDIR)
        etag, size = (entry.etag, entry.size) if entry.etag is not None else self._properties(path)
        fh = self._new_fh(Reader(path, self._tree.blob(path), size, etag, entry.mtime))
        self._fetch_ahead(path)
        return fh

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        """Read from the block cache (fetching, and fetching ahead for a sequential reader)."""
        data = self.read_view(path, size, offset, fh)
        return data if isinstance(data, bytes) else bytes(data)

    def read_view(self, path: str | None, size: int, offset: int, fh: int) -> bytes | memoryview:
        """:meth:`read`, as a view of the cached block where it can be (the mount copies it to the kernel)."""
        handle = self._handles.get(fh)
        if isinstance(handle, Writer):
            return os.pread(handle.staged.fd, size, offset)
        if not isinstance(handle, Reader):
            raise os_error(errno.EBADF)
        for attempt in range(2):
            try:
                data = self._reader.read_view(handle, size, offset)
            except StorageHttpError as exc:
                if exc.status == 412 and attempt == 0 and not handle.served:  # noqa: PLR2004 - changed before any read
                    self._reopen(handle)
                    continue
                if exc.status == 412:  # noqa: PLR2004 - changed after data was returned
                    self._tree.invalidate(split(handle.path)[0])
                raise self._errors.fail(exc, "read", handle.blob) from None
            handle.served = True
            return data
        raise os_error(errno.ESTALE, handle.blob)  # pragma: no cover - the loop returns or raises

    def _reopen(self, handle: Reader) -> None:
        """The blob changed before this handle returned any data: switch it to the current version."""
        self._tree.invalidate(split(handle.path)[0])
        etag, size = self._properties(handle.path)
        with handle.lock:
            handle.etag, handle.size = etag, size
            handle.last_block = handle.prefetched_to = -1

    def release(self, path: str | None, fh: int) -> int:
        """The last descriptor of a handle was closed: commit anything left, drop the staging file."""
        with self._lock:
            handle = self._handles.pop(fh, None)
        if isinstance(handle, Writer):
            try:
                if handle.writable and not handle.staged.failed:  # a failed write was reported already
                    self._commit(handle.staged)
            except OSError as exc:
                _log.error("%s could not be committed when it was closed: %s", handle.staged.blob, exc)
            finally:
                self._staging.drop_ref(handle.staged)
        return 0
