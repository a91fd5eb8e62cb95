"""The filesystem operations behind ``aml-identity mount``: a blob container prefix as a POSIX tree.

This module is the mfusepy ``Operations`` object without importing mfusepy (mfusepy only looks its methods up by
name), so it runs and is tested in-process without a kernel mount. Paths are ``/``-separated and relative to the
mount root; every operation on an open file uses its handle (``fh``), never its path (the mount runs with
``nullpath_ok``, and an unlinked file that is still open has no path).

**Namespace.** Directories are synthesized from blob-name prefixes: a directory lists with one delimited List
Blobs call per 5,000 entries, and the answer is cached for ``attr_timeout`` seconds (see
:data:`ATTR_CACHE_TTL_S`). A lookup is answered from its parent's listing.

**Reads** are served from fixed-size blocks (:data:`BLOCK_SIZE`) fetched with ranged GETs pinned to the ETag
seen in the listing (``If-Match``). A sequential reader gets the next blocks fetched ahead in a small pool.
Blocks are cached in memory (LRU) and, with a cache folder, on disk (see :mod:`._fuse_cache`), keyed by ETag,
so a blob replaced in storage is never served as a mix of two versions: a handle that already returned data of
one version fails the next read with ``ESTALE`` rather than continue with the other version.

**Writes** (``rw``) go to a local staging file; its content becomes the blob - in one Put Blob, or staged
blocks and one Put Block List, both atomic - when a descriptor that wrote it is closed (``flush``), on ``fsync``
and on the last ``release``. A file still open and not yet closed is not in storage. One writer per file: two
processes writing the same file through this mount share one staging file; writers on other nodes are not
coordinated (the last close wins), as with blobfuse2.

**Errors**: storage 403 -> ``EACCES`` (and one log line per kind of operation with the identity, account and
role to grant), 404 -> ``ENOENT``, 412 (changed) -> ``ESTALE``, anything else after the REST client's
retries -> ``EIO``.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import http.client
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, unquote

from aml_identity.datastore._errors import convert_storage_error
from aml_identity.datastore._fuse_cache import (
    RESERVED_FREE_DISK_BYTES,
    DiskCache,
    MemoryCache,
    block_file_key,
    free_bytes,
)
from aml_identity.datastore._rest import LIST_PAGE_SIZE, BlobRestClient, StorageHttpError, parse_listing

__all__ = [
    "ATTR_CACHE_TTL_S",
    "BLOCK_SIZE",
    "MEMORY_CACHE_BYTES",
    "PREFETCH_THREADS",
    "READ_AHEAD_BLOCKS",
    "BlobFilesystem",
]

_log = logging.getLogger("aml_identity.mount")

Mode = Literal["ro", "rw"]
OpKind = Literal["list", "read", "write", "delete"]

# Read block size: one ranged GET each. 4 MiB amortises a request's fixed cost (a round trip, ~1 ms of client
# CPU) to a few percent at 1 Gbit/s while a random 4 KiB read over-fetches at most 4 MiB; Azure ML's mount
# uses 2 MB, blobfuse2's block cache 16 MB.
BLOCK_SIZE = 4 * 1024 * 1024
# Blocks fetched ahead of a sequential reader: 16 MiB in flight keeps a link of a few Gbit/s busy across the
# per-request latency, and stays far below the memory cache so prefetched blocks are not evicted unused.
READ_AHEAD_BLOCKS = 4
# Threads fetching ahead (shared by every open file); each holds one block and one connection.
PREFETCH_THREADS = 4
# In-memory block cache: Azure ML's mount default (DATASET_MOUNT_MEMORY_CACHE_SIZE = 128 MB) - enough for the
# read-ahead of several readers and for small files read every epoch.
MEMORY_CACHE_BYTES = 128 * 1024 * 1024
# How long a directory listing (and so a file's size and ETag) is trusted. Azure ML's mount trusts it forever
# by default and users then read stale listings; blobfuse2 uses 120 s. Training data rarely changes during a
# job, so a minute costs at most one listing request per directory per minute, while files written by others
# show up within a minute. The kernel caches attributes for the same time.
ATTR_CACHE_TTL_S = 60.0
# Listing entries kept in memory across all cached folders (~300 bytes each: ~75 MB). Least recently used
# folders are dropped beyond it (the folder just listed is always kept); blobfuse2 bounds its attribute cache too.
MAX_CACHED_ENTRIES = 250_000
# Upload: content up to this size is sent in one Put Blob, bigger files as staged blocks of
# UPLOAD_BLOCK_BYTES (50,000 blocks x 8 MiB = 390 GiB, beyond any checkpoint) sent by UPLOAD_THREADS threads.
UPLOAD_SINGLE_PUT_BYTES = 8 * 1024 * 1024
UPLOAD_BLOCK_BYTES = 8 * 1024 * 1024
UPLOAD_THREADS = 4
# What a file system reports as its capacity when the store has no meaningful one (``df``, space checks).
_VIRTUAL_CAPACITY_BYTES = 1 << 50
_STATFS_BLOCK = 4096
# The longest blob name the service accepts; longer paths fail with ENAMETOOLONG before any request.
_MAX_BLOB_NAME = 1024


@dataclass(frozen=True)
class _Entry:
    is_dir: bool
    size: int = 0
    etag: str | None = None  # None: written through this mount, ETag not known yet (asked for on open)
    mtime: float = 0.0


@dataclass
class _Listing:
    entries: dict[str, _Entry]
    fetched_at: float


@dataclass
class _Reader:
    """An open handle reading a blob through the block cache."""

    path: str
    blob: str
    size: int
    etag: str
    mtime: float = 0.0
    served: bool = False
    last_block: int = -1
    prefetched_to: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Staged:
    """The local staging file of a file open for writing (shared by every handle open on that path)."""

    path: str
    blob: str
    fd: int
    file: str
    refs: int = 0
    dirty: bool = False
    unlinked: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)


@dataclass
class _Writer:
    staged: _Staged
    writable: bool


@dataclass
class _Folder:
    """An open folder (``opendir``): ``readdir`` gets no path with ``nullpath_ok``, so the handle keeps it."""

    path: str


_Handle = _Reader | _Writer | _Folder


# The role-naming operation of each kind of request (deleting needs what writing needs).
_OPERATION: dict[OpKind, Literal["list", "read", "write"]] = {
    "list": "list",
    "read": "read",
    "write": "write",
    "delete": "write",
}


def _os_error(code: int, detail: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {detail}" if detail else ""))


class BlobFilesystem:
    """mfusepy operations over one container prefix (see the module docstring).

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
        self.read_ahead_blocks = read_ahead_blocks
        self._clock = clock
        self._free_space = free_space
        self._reserve = reserve_bytes
        self._on_ready = on_ready
        self._memory = MemoryCache(memory_cache_bytes)
        self._disk = (
            DiskCache(cache_dir, cache_size, reserve_bytes=reserve_bytes, free_space=free_space)
            if cache_dir is not None and cache_size is not None
            else None
        )
        self._own_staging = False
        self._staging_dir = staging_dir
        self._listings: OrderedDict[str, _Listing] = OrderedDict()
        self._cached_entries = 0
        self._dir_locks: dict[str, threading.Lock] = {}
        self._lock = threading.RLock()  # the maps below and the listing cache
        self._virtual_dirs: set[str] = set()
        self._staged: dict[str, _Staged] = {}
        self._handles: dict[int, _Handle] = {}
        self._next_fh = 1
        self._inflight: dict[tuple[str, str, int], Future[bytes]] = {}
        self._inflight_lock = threading.Lock()
        self._prefetch = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="aml-mount-prefetch")
        self._uploads = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="aml-mount-upload")
        self._logged_denials: set[str] = set()
        self._uid, self._gid = os.getuid(), os.getgid()
        self._started = time.time()
        self.ready = False

    # -- lifecycle -------------------------------------------------------------------------------------

    def check_access(self) -> None:
        """List the mount root once, so a missing container or role fails the mount, not the first read.

        Raises:
            AmlIdentityError: From :func:`convert_storage_error` (DataAccessDeniedError names the role).
        """
        try:
            self._list_dir("/")
        except StorageHttpError as exc:
            raise convert_storage_error(
                exc, account=self.account, container=self.container, operation="list", token=self.client.token
            ) from None

    def init_with_config(self, conn_info: Any, config: Any) -> None:
        """Set the kernel's caching to match ours, then report the mount as ready (mfusepy ``init``)."""
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

    def close(self) -> None:
        """Release every resource; files still open for writing are not committed (they were never closed)."""
        with self._lock:
            staged_files = list(self._staged.values())
            self._staged.clear()
            self._handles.clear()
        for staged in staged_files:
            if staged.dirty and not staged.unlinked:
                _log.warning(
                    "%s was still open for writing when the mount ended; its unclosed content was not "
                    "uploaded (a half-written file never becomes a blob)",
                    staged.blob,
                )
            with contextlib.suppress(OSError):
                os.close(staged.fd)
            with contextlib.suppress(OSError):
                os.unlink(staged.file)
        self._prefetch.shutdown(wait=False, cancel_futures=True)
        self._uploads.shutdown(wait=False, cancel_futures=True)
        if self._own_staging and self._staging_dir is not None:
            shutil.rmtree(self._staging_dir, ignore_errors=True)
        self.client.close()

    # -- names -----------------------------------------------------------------------------------------

    def _blob(self, path: str) -> str:
        name = self.prefix + path.lstrip("/")
        if len(name) > _MAX_BLOB_NAME:
            raise _os_error(errno.ENAMETOOLONG)
        return name

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        parent, _, name = path.rstrip("/").rpartition("/")
        return parent or "/", name

    # -- errors ----------------------------------------------------------------------------------------

    def _fail(self, error: StorageHttpError, kind: OpKind, what: str) -> OSError:
        """Return the errno for a failed request, logging what the user must know."""
        if error.status == 403:  # noqa: PLR2004 - HTTP status
            converted = convert_storage_error(
                error,
                account=self.account,
                container=self.container,
                operation=_OPERATION[kind],
                token=self.client.token,
            )
            with self._lock:
                first = kind not in self._logged_denials
                self._logged_denials.add(kind)
            if first:  # one line (the message's own line breaks folded), once per kind of operation
                _log.error("%s refused by storage (EACCES): %s", kind, " ".join(str(converted).split()))
            return _os_error(errno.EACCES, what)
        if error.status == 404:  # noqa: PLR2004 - HTTP status
            return _os_error(errno.ENOENT, what)
        if error.status == 412:  # noqa: PLR2004 - If-Match failed
            _log.warning(
                "%s changed in storage while it was open; reads of this open file fail with ESTALE so "
                "two versions are never mixed. Open it again to read the new version.",
                what,
            )
            return _os_error(errno.ESTALE, what)
        converted = convert_storage_error(
            error, account=self.account, container=self.container, operation=_OPERATION[kind], token=self.client.token
        )
        _log.error("%s of %s failed (EIO): %s", kind, what, converted)
        return _os_error(errno.EIO, what)

    # -- listings --------------------------------------------------------------------------------------

    def _list_dir(self, path: str) -> dict[str, _Entry]:
        """Return the directory's entries from storage (cached for ``attr_timeout``), without local changes."""
        with self._lock:
            cached = self._listings.get(path)
            if cached is not None and self._clock() - cached.fetched_at < self.attr_timeout:
                self._listings.move_to_end(path)
                return cached.entries
            dir_lock = self._dir_locks.setdefault(path, threading.Lock())
        with dir_lock:  # one listing per directory at a time; the others wait for it
            with self._lock:
                cached = self._listings.get(path)
                if cached is not None and self._clock() - cached.fetched_at < self.attr_timeout:
                    return cached.entries
            started = self._clock()
            entries = self._fetch_listing(self.prefix if path == "/" else self._blob(path) + "/")
            with self._lock:
                self._store_listing(path, _Listing(entries, started))
            return entries

    def _store_listing(self, path: str, listing: _Listing) -> None:
        """Cache a listing, dropping the least recently used ones beyond MAX_CACHED_ENTRIES (lock held)."""
        old = self._listings.pop(path, None)
        if old is not None:
            self._cached_entries -= len(old.entries)
        self._listings[path] = listing
        self._cached_entries += len(listing.entries)
        while self._cached_entries > MAX_CACHED_ENTRIES and len(self._listings) > 1:
            _, dropped = self._listings.popitem(last=False)
            self._cached_entries -= len(dropped.entries)

    def _fetch_listing(self, prefix: str) -> dict[str, _Entry]:
        entries: dict[str, _Entry] = {}
        dirs: set[str] = set()
        marker: str | None = None
        while True:
            query = f"?restype=container&comp=list&delimiter=%2F&include=metadata&maxresults={LIST_PAGE_SIZE}"
            if prefix:
                query += "&prefix=" + quote(prefix, safe="")
            if marker:
                query += "&marker=" + quote(marker, safe="")
            body = self.client.request(
                "GET", self.client.blob_path(self.container) + query, resource=f"{self.container}/{prefix}"
            )
            assert isinstance(body, bytes)  # noqa: S101 - no reader given, so the body
            marker = _parse_page(body, prefix, entries, dirs)
            if not marker:
                break
        for name in dirs:
            if name in entries:
                _log.warning("%s%s is both a blob and a folder; showing the folder", prefix, name)
            entries[name] = _Entry(is_dir=True, mtime=self._started)
        return entries

    def _note(self, path: str, entry: _Entry | None) -> None:
        """Record a change made through this mount in the cached listing of its parent (if cached)."""
        parent, name = self._split(path)
        with self._lock:
            listing = self._listings.get(parent)
            if listing is None:
                return
            entries = dict(listing.entries)
            if entry is None:
                entries.pop(name, None)
            else:
                entries[name] = entry
            self._cached_entries += len(entries) - len(listing.entries)
            listing.entries = entries

    def _invalidate(self, path: str) -> None:
        with self._lock:
            dropped = self._listings.pop(path, None)
            if dropped is not None:
                self._cached_entries -= len(dropped.entries)

    def _local_children(self, path: str) -> dict[str, _Entry]:
        """Files being written and folders made through this mount, directly in ``path``."""
        base = "" if path == "/" else path.rstrip("/")
        found: dict[str, _Entry] = {}
        with self._lock:
            for virtual in self._virtual_dirs:
                parent, name = self._split(virtual)
                if parent == (base or "/"):
                    found[name] = _Entry(is_dir=True, mtime=self._started)
            staged = list(self._staged.values())
        for item in staged:
            parent, name = self._split(item.path)
            if parent == (base or "/"):
                found[name] = self._staged_entry(item)
        return found

    @staticmethod
    def _staged_entry(staged: _Staged) -> _Entry:
        info = os.fstat(staged.fd)
        return _Entry(is_dir=False, size=info.st_size, mtime=info.st_mtime)

    def _lookup(self, path: str) -> _Entry:
        if path == "/":
            return _Entry(is_dir=True, mtime=self._started)
        with self._lock:
            staged = self._staged.get(path)
            virtual = path in self._virtual_dirs
        if staged is not None:
            return self._staged_entry(staged)
        if virtual:
            return _Entry(is_dir=True, mtime=self._started)
        return self._lookup_remote(path)

    def _attrs(self, entry: _Entry) -> dict[str, int]:
        nanos = int(entry.mtime * 1e9)
        if entry.is_dir:
            mode, links = stat.S_IFDIR | 0o755, 2
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

    # -- metadata operations ---------------------------------------------------------------------------

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        """Return a file's or folder's attributes."""
        handle = self._handles.get(fh) if fh else None
        if isinstance(handle, _Writer):
            return self._attrs(self._staged_entry(handle.staged))
        if isinstance(handle, _Reader):
            return self._attrs(_Entry(is_dir=False, size=handle.size, etag=handle.etag, mtime=handle.mtime))
        if path is None:
            raise _os_error(errno.ENOENT)
        return self._attrs(self._lookup(path))

    def opendir(self, path: str | None) -> int:
        """Open a folder (the handle remembers its path for ``readdir``)."""
        if path is None:
            raise _os_error(errno.ENOENT)
        if not self._lookup(path).is_dir:
            raise _os_error(errno.ENOTDIR)
        return self._new_fh(_Folder(path))

    def releasedir(self, path: str | None, fh: int) -> int:
        """Close a folder."""
        with self._lock:
            self._handles.pop(fh, None)
        return 0

    def readdir(self, path: str | None, fh: int) -> list[str | tuple[str, dict[str, int], int]]:
        """List a folder: its blobs and sub-prefixes, plus files and folders made through this mount."""
        handle = self._handles.get(fh)
        if isinstance(handle, _Folder):
            path = handle.path
        if path is None:
            raise _os_error(errno.EBADF)
        try:
            entries = dict(self._list_dir(path))
        except StorageHttpError as exc:
            raise self._fail(exc, "list", path) from None
        entries.update(self._local_children(path))
        result: list[str | tuple[str, dict[str, int], int]] = [".", ".."]
        for name, entry in sorted(entries.items()):
            result.append((name, {"st_mode": stat.S_IFDIR if entry.is_dir else stat.S_IFREG}, 0))
        return result

    def statfs(self, path: str | None) -> dict[str, int]:
        """Report a large capacity (blob storage has none that matters); rw reports the staging disk's room."""
        blocks = _VIRTUAL_CAPACITY_BYTES // _STATFS_BLOCK
        available = blocks
        if self.mode == "rw":
            room = max(0, self._free_space(self._staging()) - self._reserve)
            available = room // _STATFS_BLOCK
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

    def _require_rw(self) -> None:
        if self.mode != "rw":
            raise _os_error(errno.EROFS)

    def chmod(self, path: str | None, mode: int) -> int:
        """Accepted and ignored in ``rw`` (blobs have no permission bits)."""
        self._require_rw()
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        """Accepted and ignored in ``rw``."""
        self._require_rw()
        return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        """Accepted and ignored in ``rw`` (``touch``, ``cp -p``); a blob's time is its last write."""
        self._require_rw()
        return 0

    # -- reading ---------------------------------------------------------------------------------------

    def _new_fh(self, handle: _Handle) -> int:
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = handle
            return fh

    def _properties(self, path: str) -> tuple[str, int]:
        """Return a blob's ETag and size (Get Blob Properties)."""
        blob = self._blob(path)

        def read(response: http.client.HTTPResponse) -> tuple[str, int]:
            etag = (response.getheader("ETag") or "").strip('"')
            return etag, int(response.getheader("Content-Length") or 0)

        try:
            found: tuple[str, int] = self.client.request(  # type: ignore[assignment]  # on_response given
                "HEAD", self.client.blob_path(self.container, blob), on_response=read,
                resource=f"{self.container}/{blob}",
            )  # fmt: skip
        except StorageHttpError as exc:
            raise self._fail(exc, "read", path) from None
        return found

    def open(self, path: str | None, flags: int) -> int:
        """Open a file: a block-cached reader, or (``rw``) a writer on a local staging file."""
        if path is None:
            raise _os_error(errno.ENOENT)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if writing:
            self._require_rw()
            return self._new_fh(_Writer(self._stage(path, truncate=bool(flags & os.O_TRUNC)), writable=True))
        with self._lock:
            staged = self._staged.get(path)
            if staged is not None:
                staged.refs += 1
        if staged is not None:  # written through this mount and not closed yet: read what was written
            return self._new_fh(_Writer(staged, writable=False))
        entry = self._lookup(path)
        if entry.is_dir:
            raise _os_error(errno.EISDIR)
        etag, size = (entry.etag, entry.size) if entry.etag is not None else self._properties(path)
        return self._new_fh(_Reader(path, self._blob(path), size, etag, entry.mtime))

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        """Read from the block cache (fetching, and fetching ahead for a sequential reader)."""
        handle = self._handles.get(fh)
        if isinstance(handle, _Writer):
            return os.pread(handle.staged.fd, size, offset)
        if not isinstance(handle, _Reader):
            raise _os_error(errno.EBADF)
        for attempt in range(2):
            try:
                data = self._read_blocks(handle, size, offset)
            except StorageHttpError as exc:
                if exc.status == 412 and attempt == 0 and not handle.served:  # noqa: PLR2004 - changed before any read
                    self._reopen(handle)
                    continue
                if exc.status == 412:  # noqa: PLR2004 - changed after data was returned
                    self._invalidate(self._split(handle.path)[0])
                raise self._fail(exc, "read", handle.blob) from None
            handle.served = True
            return data
        raise _os_error(errno.ESTALE, handle.blob)  # pragma: no cover - the loop returns or raises

    def _reopen(self, handle: _Reader) -> None:
        """The blob changed before this handle returned any data: switch it to the current version."""
        self._invalidate(self._split(handle.path)[0])
        etag, size = self._properties(handle.path)
        with handle.lock:
            handle.etag, handle.size = etag, size
            handle.last_block = handle.prefetched_to = -1

    def _read_blocks(self, handle: _Reader, size: int, offset: int) -> bytes:
        end = min(offset + size, handle.size)
        if offset >= end:
            return b""
        first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        sequential = handle.last_block <= first <= handle.last_block + 1
        handle.last_block = last
        if sequential and self.read_ahead_blocks:
            self._read_ahead(handle, last)
        parts = []
        for index in range(first, last + 1):
            block = self._block(handle.blob, handle.etag, handle.size, index)
            base = index * BLOCK_SIZE
            parts.append(block[max(offset, base) - base : min(end, base + BLOCK_SIZE) - base])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_ahead(self, handle: _Reader, last: int) -> None:
        final = (handle.size - 1) // BLOCK_SIZE
        start = max(last + 1, handle.prefetched_to + 1)
        stop = min(last + self.read_ahead_blocks, final)
        blob, etag, size = handle.blob, handle.etag, handle.size
        for index in range(start, stop + 1):
            if (blob, etag, index) in self._memory:
                continue
            with contextlib.suppress(RuntimeError):  # the pool is shut down: unmounting
                self._prefetch.submit(self._prefetch_one, blob, etag, size, index)
        handle.prefetched_to = max(handle.prefetched_to, stop)

    def _prefetch_one(self, blob: str, etag: str, size: int, index: int) -> None:
        try:
            self._block(blob, etag, size, index)
        except Exception as exc:  # noqa: BLE001 - a failed prefetch is retried (and reported) by the reader
            _log.debug("prefetch of %s block %d failed: %s", blob, index, exc)

    def _block(self, blob: str, etag: str, size: int, index: int) -> bytes:
        """Return one block: memory, else disk, else one ranged GET (one fetch per block however many wait)."""
        key = (blob, etag, index)
        block = self._memory.get(key)
        if block is not None:
            return block
        with self._inflight_lock:
            pending = self._inflight.get(key)
            owner = pending is None
            if pending is None:
                pending = Future()
                self._inflight[key] = pending
        if not owner:
            return pending.result()
        try:
            block = self._load(blob, etag, size, index)
            self._memory.put(key, block)
            pending.set_result(block)
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        finally:
            with self._inflight_lock:
                self._inflight.pop(key, None)
        return block

    def _load(self, blob: str, etag: str, size: int, index: int) -> bytes:
        offset = index * BLOCK_SIZE
        length = min(BLOCK_SIZE, size - offset)
        disk_key = f"{block_file_key(blob, etag, BLOCK_SIZE)}.{index}" if self._disk is not None else ""
        if self._disk is not None:
            cached = self._disk.get(disk_key, length)
            if cached is not None:
                return cached

        def sink(response: http.client.HTTPResponse) -> bytes:
            buffer = bytearray(length)
            view = memoryview(buffer)
            got = 0
            while got < length:
                count = response.readinto(view[got:])
                if not count:
                    raise http.client.IncompleteRead(bytes(view[:got]), length - got)
                got += count
            return bytes(buffer)

        block = self.client.get_into(self.container, blob, offset=offset, length=length, etag=etag, sink=sink)
        if self._disk is not None:
            self._disk.put(disk_key, block)
        return block

    # -- writing ---------------------------------------------------------------------------------------

    def _staging(self) -> str:
        with self._lock:
            if self._staging_dir is None:
                self._staging_dir = tempfile.mkdtemp(prefix="aml-mount-staging-")
                self._own_staging = True
            else:
                os.makedirs(self._staging_dir, mode=0o700, exist_ok=True)
            return self._staging_dir

    def _stage(self, path: str, *, truncate: bool, create: bool = False) -> _Staged:
        """Return the staging file of ``path`` (made, and filled with the blob's content, if needed), +1 ref."""
        with self._lock:
            staged = self._staged.get(path)
            fresh = staged is None
            if staged is None:
                fd, file = tempfile.mkstemp(prefix="staged-", dir=self._staging())
                staged = _Staged(path, self._blob(path), fd, file)
                self._staged[path] = staged
            staged.refs += 1
        with staged.lock:
            try:
                if fresh and not truncate and not create:
                    self._fill(staged)
                if truncate or create:
                    os.ftruncate(staged.fd, 0)
                    staged.dirty = True
            except BaseException:
                self._drop_ref(staged)
                raise
        return staged

    def _fill(self, staged: _Staged) -> None:
        """Copy an existing blob's content into a fresh staging file (to modify it in place)."""
        try:
            entry = self._lookup_remote(staged.path)
        except FileNotFoundError:
            staged.dirty = True  # a new file
            return
        if entry.is_dir:
            raise _os_error(errno.EISDIR)
        self._fill_fd(staged.fd, staged.path, entry)

    def _fill_fd(self, fd: int, path: str, entry: _Entry) -> int:
        """Write the blob at ``path`` (as listed in ``entry``) into ``fd``; return its size."""
        blob = self._blob(path)
        etag, size = (entry.etag, entry.size) if entry.etag is not None else self._properties(path)
        self._require_room(size)
        try:
            for index in range((size + BLOCK_SIZE - 1) // BLOCK_SIZE):
                os.pwrite(fd, self._block(blob, etag, size, index), index * BLOCK_SIZE)
        except StorageHttpError as exc:
            raise self._fail(exc, "read", blob) from None
        return size

    def _copy(self, old: str, new: str, source: _Entry) -> None:
        """Write blob ``new`` with the content of blob ``old`` (through a private staging file)."""
        fd, file = tempfile.mkstemp(prefix="copy-", dir=self._staging())
        try:
            size = self._fill_fd(fd, old, source)
            blob = self._blob(new)
            try:
                self._upload(blob, fd, size)
            except StorageHttpError as exc:
                raise self._fail(exc, "write", blob) from None
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(file)
        self._note(new, _Entry(is_dir=False, size=size, mtime=time.time()))

    def _lookup_remote(self, path: str) -> _Entry:
        """Look ``path`` up in storage only (ignoring files being written through this mount)."""
        parent, name = self._split(path)
        try:
            entry = self._list_dir(parent).get(name)
        except StorageHttpError as exc:
            raise self._fail(exc, "list", parent) from None
        if entry is None:
            raise _os_error(errno.ENOENT)
        return entry

    def _require_room(self, size: int) -> None:
        if self._free_space(self._staging()) - size < self._reserve:
            _log.error(
                "refusing to stage %d more bytes in %s: its disk would have less than %d bytes free",
                size,
                self._staging(),
                self._reserve,
            )
            raise _os_error(errno.ENOSPC)

    def create(self, path: str | None, mode: int, flags: int | None = None) -> int:
        """Create a new file (``rw``): staged locally, in storage once closed."""
        self._require_rw()
        if path is None:
            raise _os_error(errno.ENOENT)
        parent, _ = self._split(path)
        if not self._lookup(parent).is_dir:
            raise _os_error(errno.ENOTDIR)
        self._blob(path)  # name length
        return self._new_fh(_Writer(self._stage(path, truncate=False, create=True), writable=True))

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        """Write to the staging file."""
        handle = self._handles.get(fh)
        if not isinstance(handle, _Writer) or not handle.writable:
            raise _os_error(errno.EBADF)
        self._require_room(len(data))
        staged = handle.staged
        written = os.pwrite(staged.fd, data, offset)
        staged.dirty = True
        return written

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        """Truncate (``rw``): the staging file of an open file, else the blob (download, truncate, upload)."""
        self._require_rw()
        handle = self._handles.get(fh) if fh else None
        staged = handle.staged if isinstance(handle, _Writer) else None
        if staged is None and path is not None:
            with self._lock:
                staged = self._staged.get(path)
        if staged is not None:
            with staged.lock:
                os.ftruncate(staged.fd, length)
                staged.dirty = True
            return 0
        if path is None:
            raise _os_error(errno.EBADF)
        fresh = self._stage(path, truncate=length == 0)
        try:
            with fresh.lock:
                os.ftruncate(fresh.fd, length)
                fresh.dirty = True
            self._commit(fresh)
        finally:
            self._drop_ref(fresh)
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        """A descriptor was closed: commit what it wrote (so ``close()`` reports a failed upload)."""
        handle = self._handles.get(fh)
        if isinstance(handle, _Writer) and handle.writable:
            self._commit(handle.staged)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        """Commit the file's content now."""
        return self.flush(path, fh)

    def release(self, path: str | None, fh: int) -> int:
        """The last descriptor of a handle was closed: commit anything left, drop the staging file."""
        with self._lock:
            handle = self._handles.pop(fh, None)
        if isinstance(handle, _Writer):
            try:
                if handle.writable:
                    self._commit(handle.staged)
            except OSError as exc:
                _log.error("%s could not be committed when it was closed: %s", handle.staged.blob, exc)
            finally:
                self._drop_ref(handle.staged)
        return 0

    def _drop_ref(self, staged: _Staged) -> None:
        with self._lock:
            staged.refs -= 1
            if staged.refs > 0:
                return
            if self._staged.get(staged.path) is staged:
                del self._staged[staged.path]
        with contextlib.suppress(OSError):
            os.close(staged.fd)
        with contextlib.suppress(OSError):
            os.unlink(staged.file)

    def _commit(self, staged: _Staged) -> None:
        """Upload the staging file as the blob if it changed since the last commit."""
        with staged.lock:
            if not staged.dirty or staged.unlinked:
                return
            staged.dirty = False
            size = os.fstat(staged.fd).st_size
            try:
                self._upload(staged.blob, staged.fd, size)
            except StorageHttpError as exc:
                staged.dirty = True
                raise self._fail(exc, "write", staged.blob) from None
            self._note(staged.path, _Entry(is_dir=False, size=size, mtime=time.time()))

    def _upload(self, blob: str, fd: int, size: int) -> None:
        if size <= UPLOAD_SINGLE_PUT_BYTES:
            data = _pread_all(fd, size, 0)
            self.client.put_blob(self.container, blob, data, length=size, metadata={}, overwrite=True)
            return
        tag = uuid.uuid4().hex[:16]
        offsets = range(0, size, UPLOAD_BLOCK_BYTES)
        ids = [base64.b64encode(f"{tag}-{i:06d}".encode()).decode() for i in range(len(offsets))]

        def put(item: tuple[str, int]) -> None:
            block_id, offset = item
            length = min(UPLOAD_BLOCK_BYTES, size - offset)
            self.client.put_block(self.container, blob, block_id, _pread_all(fd, length, offset), length=length)

        list(self._uploads.map(put, zip(ids, offsets, strict=True)))
        self.client.put_block_list(self.container, blob, ids, metadata={}, overwrite=True)

    def _delete(self, path: str, blob: str) -> None:
        try:
            self.client.request(
                "DELETE", self.client.blob_path(self.container, blob), ok=(202,), resource=f"{self.container}/{blob}"
            )
        except StorageHttpError as exc:
            raise self._fail(exc, "delete", blob) from None

    # -- namespace changes -----------------------------------------------------------------------------

    def unlink(self, path: str | None) -> int:
        """Delete a file (``rw``). A file still open stays readable and writable there, but is never uploaded."""
        self._require_rw()
        if path is None:
            raise _os_error(errno.ENOENT)
        with self._lock:
            staged = self._staged.pop(path, None)
            if staged is not None:
                staged.unlinked = True
        try:
            entry: _Entry | None = self._lookup_remote(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            entry = None
        if entry is not None and entry.is_dir:
            raise _os_error(errno.EISDIR)
        if entry is None and staged is None:
            raise _os_error(errno.ENOENT)
        if entry is not None:
            try:
                self._delete(path, self._blob(path))
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
        self._note(path, None)
        return 0

    def mkdir(self, path: str | None, mode: int) -> int:
        """Make a folder (``rw``): virtual until a file is written in it (blob storage has no folders)."""
        self._require_rw()
        if path is None:
            raise _os_error(errno.ENOENT)
        with contextlib.suppress(FileNotFoundError):
            self._lookup(path)
            raise _os_error(errno.EEXIST)
        parent, _ = self._split(path)
        if not self._lookup(parent).is_dir:
            raise _os_error(errno.ENOTDIR)
        self._blob(path)
        with self._lock:
            self._virtual_dirs.add(path)
        return 0

    def rmdir(self, path: str | None) -> int:
        """Remove an empty folder (``rw``)."""
        self._require_rw()
        if path is None or path == "/":
            raise _os_error(errno.EBUSY if path == "/" else errno.ENOENT)
        if not self._lookup(path).is_dir:
            raise _os_error(errno.ENOTDIR)
        self._invalidate(path)
        try:
            remote = self._list_dir(path)
        except StorageHttpError as exc:
            raise self._fail(exc, "list", path) from None
        if remote or self._local_children(path):
            raise _os_error(errno.ENOTEMPTY)
        with self._lock:
            self._virtual_dirs.discard(path)
        try:
            placeholder: _Entry | None = self._lookup_remote(path)  # an ADLS Gen2 folder placeholder blob
        except FileNotFoundError:
            placeholder = None
        if placeholder is not None:
            with contextlib.suppress(FileNotFoundError):
                self._delete(path, self._blob(path))
        self._note(path, None)
        return 0

    def rename(self, old: str | None, new: str | None) -> int:
        """Rename a file (``rw``): the new blob is written first, then the old one deleted (never neither).

        The data is copied through this mount (blob storage has no rename). A folder can be renamed only while
        it is empty and was made through this mount; otherwise ``EXDEV`` tells ``mv`` to copy and delete.
        """
        self._require_rw()
        if old is None or new is None:
            raise _os_error(errno.ENOENT)
        source = self._lookup(old)
        try:
            target: _Entry | None = self._lookup(new)
        except FileNotFoundError:
            target = None
        if source.is_dir:
            return self._rename_dir(old, new, target)
        if target is not None and target.is_dir:
            raise _os_error(errno.EISDIR)
        new_blob = self._blob(new)
        with self._lock:
            staged = self._staged.pop(old, None)
            if staged is not None:  # open for writing: move it; it is committed under its new name
                displaced = self._staged.pop(new, None)
                if displaced is not None:
                    displaced.unlinked = True
                staged.path, staged.blob, staged.dirty = new, new_blob, True
                self._staged[new] = staged
        if staged is not None:
            self._commit(staged)
        else:
            self._copy(old, new, source)
        try:
            remote_old: _Entry | None = self._lookup_remote(old)
        except FileNotFoundError:
            remote_old = None
        if remote_old is not None and not remote_old.is_dir:
            with contextlib.suppress(FileNotFoundError):
                self._delete(old, self._blob(old))
        self._note(old, None)
        return 0

    def _rename_dir(self, old: str, new: str, target: _Entry | None) -> int:
        with self._lock:
            virtual = old in self._virtual_dirs
        if not virtual or target is not None or self._local_children(old):
            raise _os_error(errno.EXDEV)
        try:
            if self._list_dir(old):
                raise _os_error(errno.EXDEV)
        except StorageHttpError as exc:
            raise self._fail(exc, "list", old) from None
        with self._lock:
            self._virtual_dirs.discard(old)
            self._virtual_dirs.add(new)
        return 0


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


def _valid_name(name: str) -> bool:
    """Whether a listed name (relative to its folder) can be a POSIX file name."""
    return bool(name) and "/" not in name and name not in (".", "..")


def _parse_page(body: bytes, prefix: str, entries: dict[str, _Entry], dirs: set[str]) -> str | None:
    """Add one delimited List Blobs page's files to ``entries`` and folders to ``dirs``; return the next marker."""
    items, marker = parse_listing(body)
    for item in items:
        name = item.name[len(prefix) :]
        if not _valid_name(name):
            continue  # a "folder/" placeholder blob, or a name no POSIX path can spell
        if item.is_directory_marker:
            dirs.add(name)
        else:
            entries[name] = _Entry(is_dir=False, size=item.size, etag=item.etag, mtime=item.last_modified)
    if b"<BlobPrefix>" in body:
        for element in ET.fromstring(body).iter("BlobPrefix"):  # noqa: S314 - the service's own listing
            name_el = element.find("Name")
            if name_el is None or not name_el.text:
                continue
            full = unquote(name_el.text) if name_el.get("Encoded") == "true" else name_el.text
            name = full[len(prefix) :].rstrip("/")
            if _valid_name(name):
                dirs.add(name)
    return marker
