"""The mount's read path on its own (a stand-in storage client): memory is taken only as bytes arrive."""

from __future__ import annotations

import random
import threading
import tracemalloc

from aml_identity.datastore._fuse_read import BLOCK_SIZE, RUN_BLOCKS, STREAM_CHUNK_BYTES, BlockReader, Reader

SIZE = RUN_BLOCKS * BLOCK_SIZE  # one run: a sequential reader's first GET covers the whole file


class _HeldResponse:
    """A ranged GET's body that delivers its first chunk, then waits until the test lets the rest through."""

    def __init__(self, body: memoryview, release: threading.Event) -> None:
        self._body, self._release, self._at = body, release, 0

    def readinto(self, into: memoryview) -> int:
        if self._at >= STREAM_CHUNK_BYTES:
            self._release.wait(timeout=60)
        count = min(len(into), len(self._body) - self._at)
        into[:count] = self._body[self._at : self._at + count]
        self._at += count
        return count


class _HeldStorage:
    """Serves one blob's ranges (``get_into``'s contract) and counts the GETs."""

    def __init__(self, data: bytes) -> None:
        self.data, self.release, self.gets = memoryview(data), threading.Event(), 0

    def get_into(self, container, name, *, offset, length, etag, sink):  # the REST client's signature
        self.gets += 1
        return sink(_HeldResponse(self.data[offset : offset + length], self.release))


def test_a_cold_sequential_read_gets_its_first_bytes_without_holding_memory_for_the_blocks_still_to_come():
    data = random.Random(7).randbytes(SIZE)
    storage = _HeldStorage(data)
    reader = BlockReader(storage, container="c")  # type: ignore[arg-type]
    handle = Reader(path="/f", blob="f", size=SIZE, etag="e")
    tracemalloc.start()
    try:
        first = reader.read(handle, 4096, 0)  # served while the GET for the whole run is still arriving
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        storage.release.set()
    try:
        rest = b"".join(reader.read(handle, 1 << 20, offset) for offset in range(4096, SIZE, 1 << 20))
    finally:
        reader.close(wait=True)

    assert first == data[:4096]
    assert held < 2 * BLOCK_SIZE  # the first block's buffer, not the run's 4 blocks of 8 MiB zeroed up front
    assert first + rest[: SIZE - 4096] == data
    assert storage.gets == 1  # the whole file in one ranged GET
