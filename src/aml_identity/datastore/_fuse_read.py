"""A mount's read path: fixed-size blocks fetched with ranged GETs, read ahead, cached in memory and on disk.

Blocks (:data:`BLOCK_SIZE`) are fetched with ranged GETs pinned to the ETag seen in the listing (``If-Match``);
a sequential reader gets the next blocks fetched ahead in a small pool. Blocks are cached in memory (LRU) and,
with a cache folder, on disk (see :mod:`._fuse_cache`), keyed by ETag, so a blob replaced in storage is never
served as a mix of two versions. However many readers wait for a block, it is fetched once.

**Streaming.** A block is fetched by a pool thread into a buffer that readers read from as it fills: a read
waits only for the bytes it asks for, not for the whole block, so the first bytes of a file arrive one round
trip after ``open`` and a sequential reader keeps pace with the network (as rclone streams). Blocks a reader
is about to need are fetched by their own pool (:data:`DEMAND_THREADS`), never queued behind read-ahead.
Reads hand out views of the block's buffer (no copy until the kernel's buffer), and blocks are written to the
disk cache by a background thread, off the read path.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aml_identity.datastore._fuse_cache import DiskCache, MemoryCache, block_file_key
from aml_identity.datastore._fuse_tree import Entry
from aml_identity.datastore._rest import BlobRestClient, StorageHttpError

__all__ = [
    "BLOCK_SIZE",
    "DEMAND_THREADS",
    "FOLDER_AHEAD_FILES",
    "MEMORY_CACHE_BYTES",
    "PREFETCH_THREADS",
    "READ_AHEAD_BLOCKS",
    "RUN_BLOCKS",
    "BlockReader",
    "FolderAhead",
    "Reader",
]

_log = logging.getLogger("aml_identity.mount")

# Read block size: one ranged GET each. A request's fixed cost dominates small blocks: measured against Azurite
# here, 4 MiB GETs (4 at once) moved 255 MB/s and 8 MiB GETs 479 MB/s, and a 4 KiB random read over-fetches
# at most 8 MiB (Azure ML's mount uses 2 MB, blobfuse2's block cache 16 MB). Reads stream, so a bigger block
# does not delay the first bytes.
BLOCK_SIZE = 8 * 1024 * 1024
# Blocks fetched ahead of a sequential reader: 32 MiB in flight keeps a link of a few Gbit/s busy across the
# per-request latency, and stays far below the memory cache so prefetched blocks are not evicted unused.
READ_AHEAD_BLOCKS = 4
# A sequential reader's blocks are fetched this many per GET (one ranged GET filling consecutive blocks, each
# handed out as it completes). Each request has a fixed cost at the server: measured against Azurite here, 64 MiB
# read as 1 MiB GETs cost it 0.33 s of CPU, as 8 MiB GETs 0.10-0.16 s, as 32 MiB GETs 0.09 s (as much as
# rclone's one GET for the whole file). With READ_AHEAD_BLOCKS two such runs are in flight at the start.
RUN_BLOCKS = 4
# Threads fetching ahead (shared by every open file); each holds one block and one connection. Azurite and
# Azure both serve several streams faster than one; 4 streams of 8 MiB keep 32 MiB in flight.
PREFETCH_THREADS = 4
# Threads fetching the blocks readers are waiting for (a reader's own block never waits behind read-ahead).
DEMAND_THREADS = 4
# Files fetched ahead of a reader that opens a folder's files one after another in name order (``cat dir/*``,
# ``tar c``, a loader over sorted shards): a small file is one GET whose fixed cost (a round trip, the server's
# per-request work) dwarfs its bytes, so the next files are fetched while the reader is on this one. At most
# this many files, each at most one block, and at most FOLDER_AHEAD_BYTES in all per step.
FOLDER_AHEAD_FILES = 8
FOLDER_AHEAD_BYTES = 16 * 1024 * 1024
# Folders whose last opened file is remembered (to tell a walk in name order from other opens).
_FOLDER_AHEAD_FOLDERS = 1024
# A fetch tells waiting readers about new data every this many bytes (fewer wake-ups, yet streaming).
STREAM_CHUNK_BYTES = 256 * 1024
# In-memory block cache: Azure ML's mount default (DATASET_MOUNT_MEMORY_CACHE_SIZE = 128 MB) - enough for the
# read-ahead of several readers and for small files read every epoch.
MEMORY_CACHE_BYTES = 128 * 1024 * 1024

Block = bytes | bytearray
_Key = tuple[str, str, int]


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


class FolderAhead:
    """Tells which files of a folder to fetch ahead when its files are opened one after another in name order."""

    def __init__(self, files: int = FOLDER_AHEAD_FILES, max_bytes: int = FOLDER_AHEAD_BYTES) -> None:
        """Remember nothing yet; fetch at most ``files`` files and ``max_bytes`` bytes ahead."""
        self.files = files
        self.max_bytes = max_bytes
        self._last: OrderedDict[str, str] = OrderedDict()
        self._sorted: tuple[Mapping[str, Entry], list[str], dict[str, int]] | None = None
        self._lock = threading.Lock()

    def next_files(self, folder: str, name: str, entries: Mapping[str, Entry]) -> list[str]:
        """Note that ``name`` in ``folder`` was opened; return the small files to fetch ahead.

        None unless the file opened before it in that folder was its predecessor in name order.
        """
        with self._lock:
            previous = self._last.pop(folder, None)
            self._last[folder] = name
            while len(self._last) > _FOLDER_AHEAD_FOLDERS:
                self._last.popitem(last=False)
            if self._sorted is None or self._sorted[0] is not entries:  # sorted once per listing
                names = sorted(entries)
                self._sorted = (entries, names, {n: i for i, n in enumerate(names)})
            _, names, index = self._sorted
        position = index.get(name)
        if self.files <= 0 or position is None or previous is None or index.get(previous) != position - 1:
            return []
        found, total = [], 0
        for candidate in names[position + 1 : position + 1 + self.files]:
            entry = entries[candidate]
            if entry.is_dir or entry.is_link or entry.etag is None or not 0 < entry.size <= BLOCK_SIZE:
                continue
            total += entry.size
            if total > self.max_bytes:
                break
            found.append(candidate)
        return found


class _Fetch:
    """A block being fetched: its buffer fills while readers take the bytes that have arrived.

    Each waiting reader is woken once, when the bytes it asked for are there (not at every step of the fetch:
    with the kernel's read-ahead ten readers can wait on one block, and waking them all 32 times per block cost
    more than the reads on a busy machine).
    """

    def __init__(self, length: int) -> None:
        self.buffer: Block = bytearray(length)
        self.filled = 0
        self.complete = False
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._waiters: list[tuple[int, threading.Lock]] = []  # (bytes wanted, a held lock released to wake)

    def advance(self, filled: int) -> None:
        with self._lock:
            self.filled = filled
            if self._waiters:
                self._wake(lambda wanted: wanted <= filled)

    def finish(self, buffer: Block | None = None, error: BaseException | None = None) -> None:
        with self._lock:
            if buffer is not None:
                self.buffer, self.filled = buffer, len(buffer)
            self.complete, self.error = True, error
            self._wake(lambda _: True)

    def _wake(self, ready: Callable[[int], bool]) -> None:
        """Release the waiters ``ready`` accepts (called with the lock held)."""
        waiting = []
        for wanted, gate in self._waiters:
            if ready(wanted):
                gate.release()
            else:
                waiting.append((wanted, gate))
        self._waiters = waiting

    def wait(self, end: int) -> Block:
        """Return the buffer once its first ``end`` bytes are there (raises the fetch's error)."""
        while True:
            with self._lock:
                if self.filled >= end:
                    return self.buffer
                if self.complete:
                    if self.error is not None:
                        raise self.error
                    raise StorageHttpError(0, "IncompleteRead", "the block ended early", "GET", "")
                gate = threading.Lock()
                gate.acquire()
                self._waiters.append((end, gate))
            gate.acquire()  # released by advance() or finish(); look again (a retry may have started over)


def _fill(response: http.client.HTTPResponse, fetch: _Fetch, discard: memoryview | None) -> bytearray:
    """Read the fetch's block from the response into its buffer, telling its readers as bytes arrive.

    With ``discard`` (a block an earlier attempt already handed out), read its bytes into that scratch buffer.
    """
    buffer = fetch.buffer
    assert isinstance(buffer, bytearray)  # noqa: S101 - a fetch starts with its own buffer
    view, size, got = memoryview(buffer), len(buffer), 0
    if discard is None:
        fetch.advance(0)
    while got < size:
        # A bounded slice: readinto on the response's buffered reader fills all it is given before it returns,
        # so an unbounded one would hold readers back until the whole block had arrived.
        into = discard[: size - got] if discard is not None else view[got : got + STREAM_CHUNK_BYTES]
        count = response.readinto(into)
        if not count:
            raise http.client.IncompleteRead(b"", size - got)
        got += count
        if discard is None:
            fetch.advance(got)
    return buffer


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
        """Create the reader (its pools start threads only when first used)."""
        self.client = client
        self.container = container
        self.read_ahead_blocks = read_ahead_blocks
        self._memory = MemoryCache(memory_cache_bytes)
        self._disk = disk
        self._inflight: dict[_Key, _Fetch] = {}
        self._inflight_lock = threading.Lock()
        self._prefetch = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="aml-mount-prefetch")
        self._demand = ThreadPoolExecutor(DEMAND_THREADS, thread_name_prefix="aml-mount-fetch")
        self._disk_writer = ThreadPoolExecutor(1, thread_name_prefix="aml-mount-disk")

    def close(self, *, wait: bool = False) -> None:
        """Stop fetching (``wait``: let the fetches already started finish first).

        Blocks already fetched but not yet written to the disk cache are written first, so that a later mount
        with the same cache folder finds every block this one read.
        """
        for pool in (self._prefetch, self._demand):
            pool.shutdown(wait=wait, cancel_futures=not wait)
        self._disk_writer.shutdown(wait=True)

    def read(self, handle: Reader, size: int, offset: int) -> bytes:
        """Return ``size`` bytes at ``offset`` of the handle's blob version (fewer at its end).

        Raises:
            StorageHttpError: A block could not be fetched (412: the blob changed).
        """
        return bytes(self.read_view(handle, size, offset))

    def read_view(self, handle: Reader, size: int, offset: int) -> memoryview:
        """:meth:`read` as a view of the cached block (no copy) when the range lies in one block."""
        end = min(offset + size, handle.size)
        if offset >= end:
            return memoryview(b"")
        first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        sequential = handle.last_block <= first <= handle.last_block + 1
        handle.last_block = last
        if sequential and self.read_ahead_blocks:
            self._read_ahead(handle, first, last)
        fetches = [self._get(handle.blob, handle.etag, handle.size, index, demand=True) for index in (first, last)]
        parts = []
        for index in range(first, last + 1):
            got = fetches[0] if index == first else fetches[1] if index == last else None
            if got is None:
                got = self._get(handle.blob, handle.etag, handle.size, index, demand=True)
            base = index * BLOCK_SIZE
            start, stop = max(offset, base) - base, min(end, base + BLOCK_SIZE) - base
            block = got.wait(stop) if isinstance(got, _Fetch) else got
            parts.append(memoryview(block)[start:stop])
        return parts[0] if len(parts) == 1 else memoryview(b"".join(parts))

    def fetch_ahead(self, blob: str, etag: str, size: int) -> None:
        """Start fetching the first block of a blob version (read-ahead: a file about to be opened)."""
        if size > 0:
            self._get(blob, etag, size, 0, demand=False)

    def block(self, blob: str, etag: str, size: int, index: int) -> Block:
        """Return one whole block (fetched once however many wait for it).

        Raises:
            StorageHttpError: It could not be fetched.
        """
        got = self._get(blob, etag, size, index, demand=True)
        if isinstance(got, _Fetch):
            return got.wait(min(BLOCK_SIZE, size - index * BLOCK_SIZE))
        return got

    def copy_into(self, fd: int, blob: str, etag: str, size: int) -> None:
        """Write a whole blob version into the file ``fd`` (through the block cache).

        Raises:
            StorageHttpError: A block could not be fetched.
        """
        for index in range((size + BLOCK_SIZE - 1) // BLOCK_SIZE):
            os.pwrite(fd, self.block(blob, etag, size, index), index * BLOCK_SIZE)

    def _read_ahead(self, handle: Reader, first: int, last: int) -> None:
        """Keep :attr:`read_ahead_blocks` blocks past ``last`` fetched, in runs of :data:`RUN_BLOCKS` per GET."""
        final = (handle.size - 1) // BLOCK_SIZE
        horizon = min(last + self.read_ahead_blocks, final)
        start = max(first, handle.prefetched_to + 1)
        while start <= horizon:
            stop = min(start + RUN_BLOCKS - 1, final)
            self._start_run(handle.blob, handle.etag, handle.size, range(start, stop + 1), demand=start <= last)
            start = stop + 1
        handle.prefetched_to = max(handle.prefetched_to, start - 1)

    def _start_run(self, blob: str, etag: str, size: int, indices: range, *, demand: bool) -> None:
        """Fetch the blocks of ``indices`` not cached or being fetched, each contiguous stretch in one GET."""
        stretch: list[tuple[_Key, _Fetch]] = []
        stretches = [stretch]
        with self._inflight_lock:
            for index in indices:
                key = (blob, etag, index)
                if key in self._memory or key in self._inflight:
                    stretch = []
                    stretches.append(stretch)
                    continue
                fetch = _Fetch(min(BLOCK_SIZE, size - index * BLOCK_SIZE))
                self._inflight[key] = fetch
                if self._disk is not None and self._disk_key(key) in self._disk:
                    stretches.append([(key, fetch)])  # read from the disk cache on its own, not fetched again
                    stretch = []
                    stretches.append(stretch)
                else:
                    stretch.append((key, fetch))
        for run in stretches:
            if not run:
                continue
            try:
                (self._demand if demand else self._prefetch).submit(self._run_many, run)
            except RuntimeError as exc:  # the pools are shut down: unmounting
                for key, fetch in run:
                    self._done(key, fetch, None, exc)

    def _get(self, blob: str, etag: str, size: int, index: int, *, demand: bool) -> Block | _Fetch:
        """The cached block, or its fetch (started now, by the demand or the read-ahead pool, if none runs)."""
        key = (blob, etag, index)
        block = self._memory.get(key)
        if block is not None:
            return block
        with self._inflight_lock:
            fetch = self._inflight.get(key)
            if fetch is not None:
                return fetch
            block = self._memory.get(key)  # finished between the two looks
            if block is not None:
                return block
            fetch = _Fetch(min(BLOCK_SIZE, size - index * BLOCK_SIZE))
            self._inflight[key] = fetch
        try:
            (self._demand if demand else self._prefetch).submit(self._run, key, fetch)
        except RuntimeError as exc:  # the pools are shut down: unmounting
            self._done(key, fetch, None, exc)
        return fetch

    def _run(self, key: _Key, fetch: _Fetch) -> None:
        try:
            block = self._load(key, fetch)
        except BaseException as exc:  # noqa: BLE001 - handed to every reader of the block
            _log.debug("fetch of %s block %d failed: %s", key[0], key[2], exc)
            self._done(key, fetch, None, exc)
        else:
            self._done(key, fetch, block, None)

    def _run_many(self, run: list[tuple[_Key, _Fetch]]) -> None:
        """Fetch consecutive blocks of one blob version with one ranged GET, each handed out as it completes."""
        if len(run) == 1:
            self._run(*run[0])
            return
        (blob, etag, first), _ = run[0]
        length = sum(len(fetch.buffer) for _, fetch in run)
        scratch = memoryview(bytearray(STREAM_CHUNK_BYTES))

        def sink(response: http.client.HTTPResponse) -> None:
            for key, fetch in run:  # a retry starts again from the run's first byte
                if fetch.complete:  # handed out by an earlier attempt: skip its bytes
                    _fill(response, fetch, scratch)
                else:
                    self._done(key, fetch, _fill(response, fetch, None), None)
                    self._to_disk(key, fetch.buffer)

        try:
            self.client.get_into(self.container, blob, offset=first * BLOCK_SIZE, length=length, etag=etag, sink=sink)
        except BaseException as exc:  # noqa: BLE001 - handed to every reader of the blocks not yet complete
            _log.debug("fetch of %s blocks %d-%d failed: %s", blob, first, first + len(run) - 1, exc)
            for key, fetch in run:
                if not fetch.complete:
                    self._done(key, fetch, None, exc)

    def _to_disk(self, key: _Key, block: Block) -> None:
        """Write a fetched block to the disk cache in the background (off the read path)."""
        if self._disk is not None:
            with contextlib.suppress(RuntimeError):  # the pool is shut down: unmounting
                self._disk_writer.submit(self._disk.put, self._disk_key(key), block)

    @staticmethod
    def _disk_key(key: _Key) -> str:
        blob, etag, index = key
        return f"{block_file_key(blob, etag, BLOCK_SIZE)}.{index}"

    def _done(self, key: _Key, fetch: _Fetch, block: Block | None, error: BaseException | None) -> None:
        if block is not None:
            self._memory.put(key, block)
        with self._inflight_lock:
            self._inflight.pop(key, None)
        fetch.finish(block, error)

    def _load(self, key: _Key, fetch: _Fetch) -> Block:
        blob, etag, index = key
        offset = index * BLOCK_SIZE
        length = len(fetch.buffer)
        if self._disk is not None:
            cached = self._disk.get(self._disk_key(key), length)
            if cached is not None:
                return cached

        def sink(response: http.client.HTTPResponse) -> bytearray:
            return _fill(response, fetch, None)  # a retry starts again (the same bytes: the ETag is pinned)

        block = self.client.get_into(self.container, blob, offset=offset, length=length, etag=etag, sink=sink)
        self._to_disk(key, block)
        return block
