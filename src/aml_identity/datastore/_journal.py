"""The resume journal of a download fetched in several ranges.

A small text file next to the partial file. Its first line pins what the partial file holds a piece of -
the blob's name, ETag, size and the range size - and every following line is the index of one range that
has been written to the partial file. A line is appended only after its range is written, and a line is
trusted only when complete (ends in a newline), so a process killed at any instant leaves a journal that
never claims bytes that are not there. On the next run the ranges it lists are not fetched again - unless
the blob's ETag or size changed, in which case the partial file is discarded.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading

__all__ = ["Journal"]


class Journal:
    """The journal of one partial file.

    Args:
        path: The journal's path.
        header: What the partial file is a piece of (name, etag, size, range size).
    """

    def __init__(self, path: str, header: dict[str, object]) -> None:
        """Describe the journal (nothing is read or written yet)."""
        self.path = path
        self.header = header
        self._fd: int | None = None
        self._lock = threading.Lock()

    def load(self) -> set[int]:
        """Return the ranges already done, or an empty set when the journal is missing or for another blob."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return set()
        lines = data.split(b"\n")
        try:
            header = json.loads(lines[0])
        except ValueError:
            return set()
        if header != self.header:
            return set()
        done: set[int] = set()
        # Every line but the last is complete (the last is empty, or torn by a kill mid-write).
        for line in lines[1:-1]:
            if line.isdigit():
                done.add(int(line))
        return done

    def start(self, *, keep: bool) -> None:
        """Open the journal for appending; ``keep=False`` starts a new one."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        if not keep:
            flags |= os.O_TRUNC
        self._fd = os.open(self.path, flags, 0o644)
        if not keep:
            os.write(self._fd, json.dumps(self.header, sort_keys=True).encode() + b"\n")

    def record(self, index: int) -> None:
        """Record that range ``index`` is on disk (one small append; atomic on local file systems)."""
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, b"%d\n" % index)

    def close(self) -> None:
        """Close the journal file."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def remove(self) -> None:
        """Close and delete the journal (the download is complete, or restarts from zero)."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
