"""The block caches behind a mount: a bounded in-memory LRU and an optional bounded disk tier.

Blocks are keyed by (blob, ETag, block index): a blob replaced in storage gets a new ETag, so its old blocks
are never served for the new version - they just age out of the LRU. The disk tier never grows past its size
limit (a block is written only after enough older blocks are evicted to make room for it, the temporary file
included) and never lets the disk's free space fall below a reserve, whatever else is filling the disk: the
two ways Azure ML's mount and blobfuse2 users lose jobs to a full disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

__all__ = [
    "DEFAULT_DISK_CACHE_FRACTION",
    "RESERVED_FREE_DISK_BYTES",
    "DiskCache",
    "MemoryCache",
    "block_file_key",
    "free_bytes",
    "parse_size",
]

_log = logging.getLogger(__name__)

# Disk space the cache (and a rw mount's staging files) always leaves free on its disk. Azure ML's mount keeps
# 150 MB (DATASET_RESERVED_FREE_DISK_SPACE); the job's own checkpoints and logs share that disk and a single
# checkpoint is often larger, so we keep 1 GiB: running out of space there kills the job, while a smaller cache
# only costs some re-reads.
RESERVED_FREE_DISK_BYTES = 1 << 30
# With a cache folder but no size given, the cache may use this fraction of the free space found at mount time
# (blobfuse2's file cache default is 80% of free space; we leave more room for the job's own outputs).
DEFAULT_DISK_CACHE_FRACTION = 0.5
# Cached block files end with this suffix; a crash can leave ``*.tmp`` files, which are removed at start.
_BLOCK_SUFFIX = ".blk"
_TMP_SUFFIX = ".tmp"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(value: int | str) -> int:
    """Parse a byte count: an int, or a string such as ``"512MiB"``, ``"10G"``, ``"1.5GB"``, ``"4096"``.

    ``K``/``M``/``G``/``T`` are decimal (10^3...) and ``Ki``/``Mi``/``Gi``/``Ti`` binary (2^10...), as in
    ``df -H`` and ``df -h``; ``B`` is optional.

    Raises:
        ValueError: The value is not a non-negative size.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size such as 512MiB, 10G or 1073741824")
    number, unit, binary, _ = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** _POWERS[unit.lower()])


def free_bytes(path: str) -> int:
    """Return the bytes an unprivileged process may still write on the disk holding ``path``."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def block_file_key(blob: str, etag: str, block_size: int) -> str:
    """Return the file-name stem of a blob version's blocks (a digest: blob names may be long or odd)."""
    return hashlib.sha256(f"{blob}\0{etag}\0{block_size}".encode()).hexdigest()[:40]


class MemoryCache:
    """A thread-safe LRU of blocks bounded by their total size in bytes."""

    def __init__(self, max_bytes: int) -> None:
        """Create an empty cache holding at most ``max_bytes`` bytes of blocks."""
        self.max_bytes = max_bytes
        self._blocks: OrderedDict[Hashable, bytes | bytearray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes_used(self) -> int:
        """The bytes held."""
        return self._bytes

    def get(self, key: Hashable) -> bytes | bytearray | None:
        """Return the block and mark it most recently used, or None."""
        with self._lock:
            block = self._blocks.get(key)
            if block is not None:
                self._blocks.move_to_end(key)
            return block

    def __contains__(self, key: Hashable) -> bool:
        """Whether the block is held (without touching its recency)."""
        return key in self._blocks

    def put(self, key: Hashable, block: bytes | bytearray) -> None:
        """Add a block, evicting the least recently used ones to stay within the bound."""
        if len(block) > self.max_bytes:
            return
        with self._lock:
            old = self._blocks.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            while self._blocks and self._bytes + len(block) > self.max_bytes:
                _, evicted = self._blocks.popitem(last=False)
                self._bytes -= len(evicted)
            self._blocks[key] = block
            self._bytes += len(block)


class DiskCache:
    """Blocks as files in one folder, LRU-evicted to stay within a size limit and above a free-space reserve.

    Files from an earlier mount with the same folder are reused (their names pin blob, ETag and block size,
    and each is written to a temporary name and renamed only when complete). Thread-safe.
    """

    def __init__(
        self,
        directory: str,
        max_bytes: int,
        *,
        reserve_bytes: int = RESERVED_FREE_DISK_BYTES,
        free_space: Callable[[str], int] = free_bytes,
    ) -> None:
        """Open (creating) the cache folder and index what an earlier mount left there.

        Args:
            directory: The folder (created with mode 0700 if missing).
            max_bytes: The most the cached blocks may take on disk.
            reserve_bytes: Free space always left on the disk.
            free_space: Returns the free bytes on a path's disk (injected by tests).
        """
        self.directory = directory
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self._free_space = free_space
        self._lock = threading.Lock()
        self._index: OrderedDict[str, int] = OrderedDict()
        self._writing: set[str] = set()  # blocks being written: never evicted (their file is not in place yet)
        self._bytes = 0
        os.makedirs(directory, mode=0o700, exist_ok=True)
        found: list[tuple[float, str, int]] = []
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(_TMP_SUFFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                elif entry.name.endswith(_BLOCK_SUFFIX) and entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    found.append((info.st_mtime, entry.name[: -len(_BLOCK_SUFFIX)], info.st_size))
        for _, key, size in sorted(found):
            self._index[key] = size
            self._bytes += size
        with self._lock:
            self._make_room(0)
        if found:
            _log.info("disk cache %s: reusing %d blocks (%d bytes)", directory, len(self._index), self._bytes)

    @property
    def bytes_used(self) -> int:
        """The bytes the cached blocks take on disk (temporary files of blocks being written included)."""
        return self._bytes

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key + _BLOCK_SUFFIX)

    def __contains__(self, key: str) -> bool:
        """Whether the block is indexed (its file may still be being written)."""
        return key in self._index

    def get(self, key: str, length: int) -> bytearray | None:
        """Return the cached block, or None (a block of the wrong length is dropped)."""
        with self._lock:
            if key not in self._index:
                return None
            self._index.move_to_end(key)
        data = bytearray(length)
        try:
            with open(self._path(key), "rb", buffering=0) as f:
                whole = os.fstat(f.fileno()).st_size == length
                got = f.readinto(data) if whole else -1
        except OSError:
            got = -1
        if got != length:
            self._drop(key)
            return None
        return data

    def put(self, key: str, block: bytes | bytearray) -> bool:
        """Store a block if it fits within the size limit and the free-space reserve.

        Returns:
            Whether it was stored.
        """
        size = len(block)
        with self._lock:
            if key in self._index:
                self._index.move_to_end(key)
                return True
            if not self._make_room(size):
                return False
            self._index[key] = size  # counted before it is written, so concurrent puts cannot overshoot
            self._bytes += size
            self._writing.add(key)
        path = self._path(key)
        temporary = f"{path}.{threading.get_ident()}{_TMP_SUFFIX}"
        try:
            with open(temporary, "wb") as f:
                f.write(block)
            os.replace(temporary, path)
        except OSError as exc:
            _log.warning("disk cache %s: could not write a block (%s); continuing without it", self.directory, exc)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            with self._lock:
                self._writing.discard(key)
            self._drop(key)
            return False
        with self._lock:
            self._writing.discard(key)
        return True

    def _make_room(self, size: int) -> bool:
        """Evict least recently used blocks until ``size`` more bytes fit; called with the lock held."""
        if size > self.max_bytes:
            return False
        while self._bytes + size > self.max_bytes:
            if self._evict_oldest() is None:
                return False  # what is left is being written right now
        try:
            free = self._free_space(self.directory)
        except OSError:
            return False
        while free - size < self.reserve_bytes:
            freed = self._evict_oldest()
            if freed is None:
                return False
            free += freed
        return True

    def _evict_oldest(self) -> int | None:
        """Delete the least recently used block that is not being written; return its size (None: none)."""
        victim = next((key for key in self._index if key not in self._writing), None)
        if victim is None:
            return None
        size = self._index.pop(victim)
        self._bytes -= size
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(victim))
        return size

    def _drop(self, key: str) -> None:
        with self._lock:
            size = self._index.pop(key, None)
            if size is not None:
                self._bytes -= size
        with contextlib.suppress(OSError):
            os.unlink(self._path(key))
