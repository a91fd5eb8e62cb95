"""The shared core of a mount's operations table: its parts, its open handles and the lookups every operation uses.

:class:`MountCore` holds the namespace (:mod:`._fuse_tree`), the read path (:mod:`._fuse_read`) and the write path
(:mod:`._fuse_write`); the operations themselves are in :mod:`._fuse_ops_rw` (changes, ``rw``) and
:mod:`._fuse_fs` (the table mfusepy is given).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from aml_identity.datastore._errors import convert_storage_error
from aml_identity.datastore._fuse_cache import RESERVED_FREE_DISK_BYTES, DiskCache, free_bytes
from aml_identity.datastore._fuse_errors import StorageErrors, os_error
from aml_identity.datastore._fuse_read import (
    FOLDER_AHEAD_FILES,
    MEMORY_CACHE_BYTES,
    READ_AHEAD_BLOCKS,
    BlockReader,
    FolderAhead,
    Reader,
)
from aml_identity.datastore._fuse_tree import ATTR_CACHE_TTL_S, Entry, Namespace, split
from aml_identity.datastore._fuse_write import Staged, StagingArea, Writer
from aml_identity.datastore._rest import BlobRestClient, StorageHttpError

__all__ = ["Handle", "Mode", "MountCore"]

_log = logging.getLogger("aml_identity.mount")

Mode = Literal["ro", "rw"]


@dataclass
class Folder:
    """An open folder (``opendir``): ``readdir`` gets no path with ``nullpath_ok``, so the handle keeps it.

    It also keeps the listing its first ``readdir`` returned: a big folder is read in several calls, each
    resuming at an offset into that one listing.
    """

    path: str
    listing: list[str | tuple[str, dict[str, int], int]] | None = None


Handle = Reader | Writer | Folder


class MountCore:
    """The parts and handles of one mount (see the module docstring).

    Args:
        client: The REST client for the storage account (it owns the token and the retries).
        account: The storage account name (for messages).
        container: The container.
        prefix: The blob-name prefix that is the mount root (``""`` or ending in ``/``).
        mode: ``"ro"`` or ``"rw"``.
        cache_dir: A folder for the disk block cache (None: memory only).
        cache_size: The disk cache's size limit in bytes (with ``cache_dir``).
        staging_dir: Where ``rw`` staging files go (a private temporary folder when None).
        attr_timeout: Seconds a listing is trusted.
        memory_cache_bytes: The in-memory block cache's bound.
        read_ahead_blocks: Blocks fetched ahead of a sequential reader (0: none).
        reserve_bytes: Free disk space the disk cache and staging files always leave.
        clock: A monotonic clock (injected by tests).
        free_space: Returns a path's disk's free bytes (injected by tests).
        on_ready: Called once the kernel has mounted the file system (prints the readiness line).
    """

    use_ns = True  # mfusepy: times are integer nanoseconds

    def __init__(
        self,
        client: BlobRestClient,
        *,
        account: str,
        container: str,
        prefix: str,
        mode: Mode = "ro",
        cache_dir: str | None = None,
        cache_size: int | None = None,
        staging_dir: str | None = None,
        attr_timeout: float = ATTR_CACHE_TTL_S,
        memory_cache_bytes: int = MEMORY_CACHE_BYTES,
        read_ahead_blocks: int = READ_AHEAD_BLOCKS,
        reserve_bytes: int = RESERVED_FREE_DISK_BYTES,
        clock: Callable[[], float] = time.monotonic,
        free_space: Callable[[str], int] = free_bytes,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        """Create the file system (no request is sent until the first operation)."""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.client = client
        self.account = account
        self.container = container
        self.prefix = prefix
        self.mode: Mode = mode
        self.attr_timeout = attr_timeout
        self._on_ready = on_ready
        self._errors = StorageErrors(client, account=account, container=container)
        self._tree = Namespace(
            client, container=container, prefix=prefix, errors=self._errors, attr_timeout=attr_timeout, clock=clock
        )
        disk = (
            DiskCache(cache_dir, cache_size, reserve_bytes=reserve_bytes, free_space=free_space)
            if cache_dir is not None and cache_size is not None
            else None
        )
        self._reader = BlockReader(
            client, container=container, memory_cache_bytes=memory_cache_bytes, disk=disk,
            read_ahead_blocks=read_ahead_blocks,
        )  # fmt: skip
        self._ahead = FolderAhead(read_ahead_blocks and FOLDER_AHEAD_FILES)
        self._staging = StagingArea(
            client, container=container, errors=self._errors, staging_dir=staging_dir, reserve_bytes=reserve_bytes,
            free_space=free_space,
        )  # fmt: skip
        self._lock = threading.Lock()
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._uid, self._gid = os.getuid(), os.getgid()
        self.ready = False

    # -- lifecycle -------------------------------------------------------------------------------------

    def check_access(self) -> None:
        """List the mount root once, so a missing container or role fails the mount, not the first read.

        Raises:
            AmlIdentityError: From :func:`convert_storage_error` (DataAccessDeniedError names the role).
        """
        try:
            self._tree.list_dir("/")
        except StorageHttpError as exc:
            raise convert_storage_error(
                exc, account=self.account, container=self.container, operation="list", token=self.client.token
            ) from None

    def close(self) -> None:
        """Release every resource; files still open for writing are not committed (they were never closed)."""
        with self._lock:
            self._handles.clear()
        self._staging.close()
        self._reader.close()
        self.client.close()

    # -- lookups ---------------------------------------------------------------------------------------

    def _new_fh(self, handle: Handle) -> int:
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = handle
            return fh

    def _lookup(self, path: str) -> Entry:
        """A file being written here, a folder made here, else what storage lists."""
        if path == "/":
            return self._tree.folder_entry()
        staged = self._staging.get(path)
        if staged is not None:
            return self._staging.entry(staged)
        if self._tree.is_virtual(path):
            return self._tree.folder_entry()
        return self._tree.lookup_remote(path)

    def _lookup_or_none(self, path: str) -> Entry | None:
        try:
            return self._lookup(path)
        except FileNotFoundError:
            return None

    def _remote_or_none(self, path: str) -> Entry | None:
        try:
            return self._tree.lookup_remote(path)
        except FileNotFoundError:
            return None

    def _local_children(self, path: str) -> dict[str, Entry]:
        """Files being written and folders made through this mount, directly in ``path``."""
        found = self._tree.virtual_children(path)
        for staged in self._staging.children(path):
            found[split(staged.path)[1]] = self._staging.entry(staged)
        return found

    def _attrs(self, entry: Entry) -> dict[str, int]:
        nanos = int(entry.mtime * 1e9)
        if entry.is_dir:
            mode, links = stat.S_IFDIR | 0o755, 2
        elif entry.is_link:
            mode, links = stat.S_IFLNK | 0o777, 1
        else:
            mode, links = stat.S_IFREG | (0o644 if self.mode == "rw" else 0o444), 1
        return {
            "st_mode": mode,
            "st_nlink": links,
            "st_size": entry.size,
            "st_blocks": (entry.size + 511) // 512,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_mtime": nanos,
            "st_ctime": nanos,
            "st_atime": nanos,
        }

    def _require_rw(self) -> None:
        if self.mode != "rw":
            raise os_error(errno.EROFS)

    def _require_folder(self, path: str) -> None:
        if not self._lookup(path).is_dir:
            raise os_error(errno.ENOTDIR)

    # -- reading ---------------------------------------------------------------------------------------

    def _properties(self, path: str) -> tuple[str, int]:
        """Return a blob's ETag and size (Get Blob Properties)."""
        blob = self._tree.blob(path)
        try:
            found = self.client.get_properties(self.container, blob)
        except StorageHttpError as exc:
            raise self._errors.fail(exc, "read", path) from None
        return found.etag, found.size

    def _fetch_ahead(self, path: str) -> None:
        """Opening files of a folder one after another in name order: start fetching the next small ones."""
        folder, name = split(path)
        try:
            entries = self._tree.list_dir(folder)  # the listing the open's lookup just used (cached)
        except StorageHttpError:
            return
        base = "" if folder == "/" else folder
        for ahead in self._ahead.next_files(folder, name, entries):
            entry = entries[ahead]
            if entry.etag is not None and self._staging.get(f"{base}/{ahead}") is None:
                self._reader.fetch_ahead(self._tree.blob(f"{base}/{ahead}"), entry.etag, entry.size)

    def _fill_fd(self, fd: int, path: str, entry: Entry) -> int:
        """Write the blob at ``path`` (as listed in ``entry``) into ``fd``; return its size."""
        blob = self._tree.blob(path)
        etag, size = (entry.etag, entry.size) if entry.etag is not None else self._properties(path)
        self._staging.require_room(size)
        try:
            self._reader.copy_into(fd, blob, etag, size)
        except StorageHttpError as exc:
            raise self._errors.fail(exc, "read", blob) from None
        return size

    def _commit(self, staged: Staged) -> None:
        entry = self._staging.commit(staged)
        if entry is not None:
            self._tree.note(staged.path, entry)

    def _delete(self, blob: str) -> None:
        try:
            self.client.delete_blob(self.container, blob)
        except StorageHttpError as exc:
            raise self._errors.fail(exc, "delete", blob) from None
