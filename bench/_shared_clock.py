"""A fake clock shared by several processes: one float in a memory-mapped file, moved only by ``sleep``.

The fault matrix's 16-process rows run real processes against one emulator. Giving them (and the emulator)
this clock keeps their retry schedules on injected time, so a row that retries for 90 s takes seconds of
wall time and its time-to-outcome is read from the clock, not from a stopwatch.

Compressing time has one side effect the clock must undo: a fetch that retries for 90 injected seconds ends
in milliseconds of real time, before a process that started a moment late has even begun to wait for it (on
a real node every rank would be waiting by then). So the clock is also a start barrier: each process calls
:meth:`SharedClock.arrive` just before it asks for a token, and the first :meth:`~SharedClock.sleep` of a
retry waits (in real time) until every expected process has arrived, plus a short grace for them to reach
the node lock.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

_FORMAT = "ddd"  # the time (epoch seconds), processes arrived, processes expected
_SIZE = struct.calcsize(_FORMAT)
# How long a retry's sleep waits for late processes to arrive before going on anyway.
ARRIVAL_TIMEOUT_S = 30.0
# After everyone arrived: time for each to get from "about to ask" to waiting on the node lock.
ARRIVAL_GRACE_S = 0.3
_POLL_S = 0.01


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
        self._settled = False
        if start is not None:
            self._update(lambda _now, _arrived, _expected: (start, 0.0, 0.0))

    def _update(self, change: Callable[[float, float, float], tuple[float, float, float]]) -> tuple[float, ...]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            values = change(*struct.unpack_from(_FORMAT, self._map, 0))
            struct.pack_into(_FORMAT, self._map, 0, *values)
            return values
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __call__(self) -> float:
        """Return the shared fake time."""
        return float(struct.unpack_from(_FORMAT, self._map, 0)[0])

    def advance(self, seconds: float) -> float:
        """Move the shared time forward by ``seconds`` (atomically) and return it."""
        return self._update(lambda now, arrived, expected: (now + max(0.0, seconds), arrived, expected))[0]

    def expect(self, processes: int) -> None:
        """Make the first retry sleep of each process wait until ``processes`` have called :meth:`arrive`."""
        self._update(lambda now, arrived, _expected: (now, arrived, float(processes)))

    def arrive(self) -> None:
        """Count this process in: it is about to ask for a token."""
        self._update(lambda now, arrived, expected: (now, arrived + 1, expected))

    def _wait_for_arrivals(self) -> None:
        deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
        while time.monotonic() < deadline:
            _, arrived, expected = struct.unpack_from(_FORMAT, self._map, 0)
            if arrived >= expected:
                break
            time.sleep(_POLL_S)
        time.sleep(ARRIVAL_GRACE_S)
        self._settled = True

    def sleep(self, seconds: float) -> None:
        """Advance the shared time instead of waiting (the first time, after every expected process arrived)."""
        if not self._settled:
            self._wait_for_arrivals()
        self.advance(seconds)
        time.sleep(0)  # let other threads run, as a real sleep would

    def close(self) -> None:
        """Unmap and close the file."""
        self._map.close()
        os.close(self._fd)
