"""A mount's read path: fixed-size blocks fetched with ranged GETs, read ahead, cached in memory and on disk.

Blocks (:data:`BLOCK_SIZE`) are fetched with ranged GETs pinned to the ETag seen in the listing (``If-Match``);
a sequential reader gets the next blocks fetched ahead in a small pool. Blocks are cached in memory (LRU) and,
with a cache folder, on disk (see :mod:`._fuse_cache`), keyed by ETag, so a blob replaced in storage is never
served as a mix of two versions. However many readers wait for a block, it is fetched once.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from aml_identity.datastore._fuse_cache import DiskCache, MemoryCache, block_file_key
from aml_identity.datastore._rest import BlobRestClient

__all__ = ["BLOCK_SIZE", "MEMORY_CACHE_BYTES", "PREFETCH_THREADS", "READ_AHEAD_BLOCKS", "BlockReader", "Reader"]

_log = logging.getLogger("aml_identity.mount")

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


@dataclass
class Reader:
    """An open handle reading one version (ETag) of a blob through the block cache."""

    path: str
    blob: str
    size: int
    etag: str
    mtime: float = 0.0
    served: bool = False
    last_block: int = -1
    prefetched_to: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)


class BlockReader:
    """Blocks of blob versions: memory, else disk, else one ranged GET; read-ahead for sequential readers.

    Args:
        client: The REST client.
        container: The container.
        memory_cache_bytes: The in-memory block cache's bound.
        disk: The disk tier (None: memory only).
        read_ahead_blocks: Blocks fetched ahead of a sequential reader (0: none).
    """

    def __init__(
        self,
        client: BlobRestClient,
        *,
        container: str,
        memory_cache_bytes: int = MEMORY_CACHE_BYTES,
        disk: DiskCache | None = None,
        read_ahead_blocks: int = READ_AHEAD_BLOCKS,
    ) -> None:
        """Create the reader (its pool starts threads only when first used)."""
        self.client = client
        self.container = container
        self.read_ahead_blocks = read_ahead_blocks
        self._memory = MemoryCache(memory_cache_bytes)
        self._disk = disk
        self._inflight: dict[tuple[str, str, int], Future[bytes]] = {}
        self._inflight_lock = threading.Lock()
        self._prefetch = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="aml-mount-prefetch")

    def close(self) -> None:
        """Stop fetching ahead."""
        self._prefetch.shutdown(wait=False, cancel_futures=True)

    def read(self, handle: Reader, size: int, offset: int) -> bytes:
        """Return ``size`` bytes at ``offset`` of the handle's blob version (fewer at its end).

        Raises:
            StorageHttpError: A block could not be fetched (412: the blob changed).
        """
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
            block = self.block(handle.blob, handle.etag, handle.size, index)
            base = index * BLOCK_SIZE
            parts.append(block[max(offset, base) - base : min(end, base + BLOCK_SIZE) - base])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def copy_into(self, fd: int, blob: str, etag: str, size: int) -> None:
        """Write a whole blob version into the file ``fd`` (through the block cache).

        Raises:
            StorageHttpError: A block could not be fetched.
        """
        for index in range((size + BLOCK_SIZE - 1) // BLOCK_SIZE):
            os.pwrite(fd, self.block(blob, etag, size, index), index * BLOCK_SIZE)

    def _read_ahead(self, handle: Reader, last: int) -> None:
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
            self.block(blob, etag, size, index)
        except Exception as exc:  # noqa: BLE001 - a failed prefetch is retried (and reported) by the reader
            _log.debug("prefetch of %s block %d failed: %s", blob, index, exc)

    def block(self, blob: str, etag: str, size: int, index: int) -> bytes:
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
