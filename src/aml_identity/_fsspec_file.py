"""Open files of the ``azureml`` fsspec protocol.

Reading: blocks are fetched by ranged GETs pinned to the ETag seen at open (a blob replaced while it is read
fails instead of mixing two versions). :class:`ReadAheadCache` keeps recently used blocks (a Parquet reader's
footer, then its column chunks, are served from it), fetches every block a large read spans in parallel, and
keeps :data:`READ_AHEAD_BLOCKS` blocks in flight ahead of a reader that moves forward (a CSV parser, a
sequential scan).

Writing: the file is a block-blob upload. Blocks are staged while the file is written (a few in flight,
bounded memory) and committed with one Put Block List only when the file is closed; a small file is one Put
Blob at close. Staged blocks are invisible, so a file that is never closed - an exception inside ``with``, a
library's cleanup while an exception propagates, a file garbage-collected open - leaves no blob (and an
existing blob untouched).
"""

from __future__ import annotations

import base64
import io
import logging
import sys
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fsspec.caching import BaseCache, register_cache
from fsspec.spec import AbstractBufferedFile

if TYPE_CHECKING:
    from aml_identity._fsspec_store import Store

__all__ = [
    "READ_AHEAD_BLOCKS",
    "READ_BLOCK_SIZE",
    "SINGLE_PUT_MAX",
    "WRITE_BLOCK_SIZE",
    "AzureMLFile",
    "ReadAheadCache",
]

_log = logging.getLogger("aml_identity.fsspec")

# Read block: one ranged GET. 4 MiB is large enough that a request's latency (~1-10 ms) costs little against
# its transfer time, and small enough that a Parquet footer read does not drag in much more than the footer.
READ_BLOCK_SIZE = 4 * 1024 * 1024
# Blocks kept in flight ahead of a forward-moving reader: 16 MiB, enough to keep a single file's read at the
# account's bandwidth rather than one connection's.
READ_AHEAD_BLOCKS = 4
# Blocks an open file keeps (read-ahead included): the memory bound of one reader, 32 MiB with 4 MiB blocks.
CACHED_BLOCKS = 8
# Write block: one Put Block. A blob holds at most 50,000 blocks, so 8 MiB blocks allow files up to 390 GiB.
WRITE_BLOCK_SIZE = 8 * 1024 * 1024
# A file no larger than this at close is one Put Blob (one request, and atomic like a commit).
SINGLE_PUT_MAX = WRITE_BLOCK_SIZE
# Blocks being uploaded at once per open file: bounds a writer's memory to this many blocks plus its buffer.
UPLOADS_IN_FLIGHT = 4

Submit = Callable[[Callable[[], bytes]], "Future[bytes]"]
SubmitNone = Callable[[Callable[[], None]], "Future[None]"]


def _run_now(task: Callable[[], bytes]) -> Future[bytes]:
    future: Future[bytes] = Future()
    try:
        future.set_result(task())
    except BaseException as exc:  # noqa: BLE001 - handed to the reader through the future
        future.set_exception(exc)
    return future


class ReadAheadCache(BaseCache):  # type: ignore[misc]  # fsspec has no type hints
    """An LRU block cache that reads ahead of a sequential reader and fetches a large read's blocks in parallel.

    Args:
        blocksize: The block size (one ranged GET each).
        fetcher: ``fetcher(start, end)`` returns bytes ``[start, end)`` of the file.
        size: The file's size.
        submit: Runs a fetch in a worker thread and returns its future (``None``: fetch in the caller's thread).
        read_ahead: Blocks fetched ahead of a forward-moving reader.
        max_blocks: Blocks kept.
    """

    name = "aml-readahead"

    def __init__(
        self,
        blocksize: int,
        fetcher: Callable[[int, int], bytes],
        size: int,
        *,
        submit: Submit | None = None,
        read_ahead: int = READ_AHEAD_BLOCKS,
        max_blocks: int = CACHED_BLOCKS,
    ) -> None:
        """Create the cache (nothing is fetched until the first read)."""
        super().__init__(blocksize, fetcher, size)
        self._submit: Submit = submit or _run_now
        self._read_ahead = read_ahead
        self._max_blocks = max(max_blocks, read_ahead + 1)
        self._blocks: OrderedDict[int, Future[bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self._next = 0  # the block a forward-moving reader reads next
        self.nblocks = (size + blocksize - 1) // blocksize

    def _block(self, index: int) -> Future[bytes]:
        """Return the future of block ``index``, starting its fetch if it is not cached (lock held)."""
        future = self._blocks.get(index)
        if future is not None and not (future.done() and future.exception() is not None):
            self._blocks.move_to_end(index)
            self.hit_count += 1
            return future
        self.miss_count += 1
        start = index * self.blocksize
        end = min(start + self.blocksize, self.size)
        self.total_requested_bytes += end - start
        future = self._submit(lambda: self.fetcher(start, end))
        self._blocks[index] = future
        return future

    def _fetch(self, start: int | None, stop: int | None) -> bytes:
        """Return bytes ``[start, stop)`` of the file."""
        start = start or 0
        stop = self.size if stop is None else min(stop, self.size)
        if start >= stop:
            return b""
        first, last = start // self.blocksize, (stop - 1) // self.blocksize
        with self._lock:
            forward = first in (self._next - 1, self._next)
            wanted = [self._block(index) for index in range(first, last + 1)]
            if forward:
                for index in range(last + 1, min(last + 1 + self._read_ahead, self.nblocks)):
                    self._block(index)
            self._next = last + 1
            while len(self._blocks) > self._max_blocks:
                self._blocks.popitem(last=False)
        blocks = [future.result() for future in wanted]
        head = start - first * self.blocksize
        if len(blocks) == 1:
            return blocks[0][head : head + stop - start]
        blocks[0] = blocks[0][head:]
        blocks[-1] = blocks[-1][: stop - last * self.blocksize]
        return b"".join(blocks)

    def close(self) -> None:
        """Drop every block (fetches still running finish in the background and are discarded)."""
        with self._lock:
            for future in self._blocks.values():
                future.cancel()
            self._blocks.clear()


register_cache(ReadAheadCache, clobber=True)


class AzureMLFile(AbstractBufferedFile):  # type: ignore[misc]  # fsspec has no type hints
    """A blob opened through :class:`aml_identity.fsspec.AzureMLFileSystem` (``rb``, ``wb`` or ``xb``).

    Use :meth:`AzureMLFileSystem.open <aml_identity.fsspec.AzureMLFileSystem.open>`; the arguments beyond
    fsspec's are the file system's.
    """

    def __init__(
        self,
        fs: Any,
        path: str,
        mode: str,
        *,
        store: Store,
        blob: str,
        submit: Callable[[Callable[[], Any]], Future[Any]],
        details: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Open the file (reading: from ``details``, the ``info`` of the blob; writing: nothing sent yet)."""
        self._store = store
        self._blob = blob
        self._submit = submit
        self._etag: str | None = None
        self._block_ids: list[str] = []
        self._pending: list[Future[None]] = []
        self._tag = uuid.uuid4().hex[:12]
        if mode == "rb" and details is not None:
            self._details = details
            self._etag = details.get("etag")
            kwargs["size"] = details["size"]
            if kwargs.get("cache_type") == ReadAheadCache.name:
                kwargs["cache_options"] = {"submit": submit, **(kwargs.get("cache_options") or {})}
        super().__init__(fs, path, mode, **kwargs)

    # -- reading ---------------------------------------------------------------------------------------

    def _fetch_range(self, start: int, end: int) -> bytes:
        data: bytes = self._store.get(self._blob, start, end, etag=self._etag)
        return data

    # -- writing ---------------------------------------------------------------------------------------

    def _initiate_upload(self) -> None:
        """Nothing to do: blocks are staged against the blob's name, and committed at close."""

    def _stage(self, data: bytes) -> None:
        block_id = base64.b64encode(f"{self._tag}-{len(self._block_ids):08d}".encode()).decode()
        self._block_ids.append(block_id)
        while len(self._pending) >= UPLOADS_IN_FLIGHT:
            self._pending.pop(0).result()
        self._pending.append(self._submit(lambda: self._store.put_block(self._blob, block_id, data)))

    def _upload_chunk(self, final: bool = False) -> bool:  # noqa: FBT001, FBT002 - fsspec's signature
        data: bytes = self.buffer.getvalue()  # type: ignore[has-type]  # set by fsspec's __init__
        overwrite = self.mode != "xb"
        if final and self.autocommit and not self._block_ids and len(data) <= SINGLE_PUT_MAX:
            self._store.put(self._blob, data, overwrite=overwrite)
            return True
        full = len(data) if final else len(data) - len(data) % self.blocksize
        for offset in range(0, full, self.blocksize):
            self._stage(data[offset : min(offset + self.blocksize, full)])
        if not final:
            self.buffer = io.BytesIO(data[full:])
            self.buffer.seek(0, io.SEEK_END)
            return False  # fsspec keeps our new buffer (the remainder, smaller than a block)
        for future in self._pending:
            future.result()
        self._pending.clear()
        if self.autocommit:
            self.commit()
        return True

    def commit(self) -> None:
        """Commit the staged blocks as the blob (at close, or at the end of an fsspec transaction)."""
        self._store.commit(self._blob, self._block_ids, overwrite=self.mode != "xb")

    def discard(self) -> None:
        """Abandon the upload: nothing is committed (staged blocks are invisible and expire in storage)."""
        if not self.writable():
            return
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self.buffer = io.BytesIO()
        self.closed = True

    def close(self) -> None:
        """Commit the file (writing), or release its cache (reading).

        A writer closed while an exception is propagating - from ``with`` or from a library's cleanup code
        (pandas, ``fsspec.open``) - is discarded instead: a half-written file never becomes a blob.
        """
        if self.writable() and sys.exc_info()[1] is not None:
            _log.warning(
                "%s: not committed - closed while %s was raised (the blob is left as it was)",
                self.path,
                type(sys.exc_info()[1]).__name__,
            )
            self.discard()
            return
        super().close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Commit on a clean exit; discard when the block raised."""
        if exc_type is not None and self.writable():
            _log.warning("%s: not committed - %s raised inside `with`", self.path, exc_type.__name__)
            self.discard()
            return
        self.close()

    def __del__(self) -> None:
        """A writer garbage-collected open is discarded, never committed half-written."""
        if getattr(self, "mode", "rb") != "rb" and self.writable():
            _log.warning("%s: garbage-collected while open for writing; not committed", self.path)
            self.discard()
            return
        super().__del__()
