"""A fake clock shared by several processes: one float in a memory-mapped file, moved only by ``sleep``.

The fault matrix's 16-process rows run real processes against one emulator. Giving them (and the emulator)
this clock keeps their retry schedules on injected time, so a row that retries for 90 s takes seconds of
wall time and its time-to-outcome is read from the clock, not from a stopwatch.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time
from pathlib import Path

_FORMAT = "d"  # one double: the clock's time in epoch seconds
_SIZE = struct.calcsize(_FORMAT)


class SharedClock:
    """A fake ``time.time`` backed by ``path``; :meth:`sleep` and :meth:`advance` move it for every process."""

    def __init__(self, path: str | os.PathLike[str], *, start: float | None = None) -> None:
        """Open (and, with ``start``, reset) the clock file.

        Args:
            path: The file holding the time (created when missing).
            start: Set the clock to this time (the creating process passes it; the others omit it).
        """
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < _SIZE:
            os.ftruncate(self._fd, _SIZE)
        self._map = mmap.mmap(self._fd, _SIZE)
        if start is not None:
            self._write(start)

    def _write(self, value: float) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            struct.pack_into(_FORMAT, self._map, 0, value)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __call__(self) -> float:
        """Return the shared fake time."""
        return float(struct.unpack_from(_FORMAT, self._map, 0)[0])

    def advance(self, seconds: float) -> float:
        """Move the shared time forward by ``seconds`` (atomically) and return it."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            now = float(struct.unpack_from(_FORMAT, self._map, 0)[0]) + max(0.0, seconds)
            struct.pack_into(_FORMAT, self._map, 0, now)
            return now
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def sleep(self, seconds: float) -> None:
        """Advance the shared time instead of waiting."""
        self.advance(seconds)
        time.sleep(0)  # let other threads run, as a real sleep would

    def close(self) -> None:
        """Unmap and close the file."""
        self._map.close()
        os.close(self._fd)
