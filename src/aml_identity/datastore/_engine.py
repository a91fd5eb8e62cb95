"""The worker pool, progress reporting and counters shared by downloads and uploads.

One producer (the caller's thread: it lists blobs or walks folders) feeds a bounded queue; ``workers``
threads run the tasks. The queue bound keeps memory flat however many files there are, and the producer
keeps listing while the workers already transfer. The first error stops the run: queued tasks are dropped,
running ones finish, and the error is raised in the caller's thread.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from aml_identity.datastore._errors import Operation, convert_storage_error

if TYPE_CHECKING:
    from aml_identity.datastore._rest import BlobItem, BlobRestClient, StorageHttpError
    from aml_identity.datastore.resolve import BlobLocation

__all__ = ["BUFFER_SIZE", "Counters", "Engine", "Progress", "Transfer", "TransferCancelledError"]

_log = logging.getLogger(__name__)

# Queued tasks per worker: enough that no worker ever waits on the producer, few enough to stay small.
QUEUE_PER_WORKER = 64
# Progress callbacks are throttled to this interval (a terminal redraw per small file would cost more
# than the file).
PROGRESS_INTERVAL_S = 0.1
# Each worker moves bodies through one buffer this size: memory stays at workers x 1 MiB whatever the file
# sizes, and each os.pwrite / socket send is a large contiguous one.
BUFFER_SIZE = 1024 * 1024


class TransferCancelledError(Exception):
    """Raised inside the engine's tasks once the run has failed (internal)."""


@dataclass
class Counters:
    """What a transfer did, updated by the workers under :attr:`lock`."""

    files: int = 0
    transferred_files: int = 0
    skipped_files: int = 0
    bytes_transferred: int = 0
    bytes_skipped: int = 0
    bytes_resumed: int = 0
    requests: int = 0

    def __post_init__(self) -> None:
        """Create the lock."""
        self.lock = threading.Lock()

    def add(self, **deltas: int) -> None:
        """Add to several counters at once."""
        with self.lock:
            for name, value in deltas.items():
                setattr(self, name, getattr(self, name) + value)

    def count_request(self) -> None:
        """Count one request (a plain increment: the GIL makes it safe enough for a statistic)."""
        self.requests += 1


ProgressCallback = Callable[[int, int], None]


class Progress:
    """Reports bytes done: a tqdm bar on a terminal, a caller's callback, or nothing.

    Args:
        progress: ``None`` - a bar when stderr is a terminal; ``True``/``False`` - force the bar on or off;
            a callable - called as ``progress(bytes_done, bytes_total)`` after each piece of work that is
            safely on disk (for a download: written and recorded for resume).
        description: The bar's label.
    """

    def __init__(self, progress: bool | ProgressCallback | None, description: str) -> None:  # noqa: FBT001
        """Create the reporter."""
        self._lock = threading.Lock()
        self.done = 0
        self.total = 0
        self._callback: ProgressCallback | None = None
        self._bar: Any = None
        self._last = 0.0
        if callable(progress):
            self._callback = progress
            return
        show = sys.stderr.isatty() if progress is None else bool(progress)
        if show:
            from tqdm import tqdm  # noqa: PLC0415 - only on a terminal

            self._bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=description, leave=True)

    def add_total(self, nbytes: int) -> None:
        """Grow the expected total (listing and transferring overlap, so it is learnt as we go)."""
        with self._lock:
            self.total += nbytes
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.refresh()

    def advance(self, nbytes: int) -> None:
        """Record ``nbytes`` more done."""
        with self._lock:
            self.done += nbytes
            if self._callback is not None:
                self._callback(self.done, self.total)
            elif self._bar is not None:
                self._bar.update(nbytes)

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()


class Engine:
    """A fixed pool of worker threads fed by a bounded queue.

    Args:
        workers: The number of worker threads (= the most requests in flight).
        name: Thread name prefix (shows in stack dumps).
    """

    def __init__(self, workers: int, name: str) -> None:
        """Start the workers."""
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=workers * QUEUE_PER_WORKER)
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{index}", daemon=True) for index in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def failed(self) -> bool:
        """Whether a task has failed (producers stop submitting)."""
        return self._error is not None

    def fail(self, error: BaseException) -> None:
        """Record the run's first error; later ones are logged at debug level."""
        with self._error_lock:
            if self._error is None:
                self._error = error
            else:
                _log.debug("further error after the first: %r", error)

    def check(self) -> None:
        """Raise :class:`TransferCancelledError` when the run has failed (long tasks call this)."""
        if self._error is not None:
            raise TransferCancelledError

    def submit(self, task: Callable[[], None]) -> None:
        """Queue a task, waiting while the queue is full."""
        if self._error is None:
            self._queue.put(task)

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            if self._error is not None:
                continue
            try:
                task()
            except TransferCancelledError:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by finish()
                self.fail(exc)

    def finish(self) -> None:
        """Wait for every queued task, stop the workers, and raise the first error, if any."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            while thread.is_alive():
                thread.join(timeout=0.5)  # a timeout keeps the main thread responsive to Ctrl+C
        if self._error is not None:
            raise self._error

    def abort(self, error: BaseException) -> None:
        """Fail the run from the producer (Ctrl+C, a listing error) and wait for the workers to stop."""
        self.fail(error)
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        started = time.monotonic()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        _log.debug("aborted after %.2f s", time.monotonic() - started)


class Transfer:
    """What a download or an upload shares: where, with which client, engine, counters and progress."""

    # What the whole call does, for the role an access error names (None: the refused operation itself).
    purpose: ClassVar[Operation | None] = None

    def __init__(
        self, location: BlobLocation, client: BlobRestClient, engine: Engine, counters: Counters, progress: Progress
    ) -> None:
        """Keep the pieces of one transfer call."""
        self.loc = location
        self.client = client
        self.engine = engine
        self.counters = counters
        self.progress = progress
        self._local = threading.local()

    def _buffer(self) -> memoryview:
        """Return this worker thread's I/O buffer (allocated once per thread)."""
        buf: memoryview | None = getattr(self._local, "buf", None)
        if buf is None:
            buf = memoryview(bytearray(BUFFER_SIZE))
            self._local.buf = buf
        return buf

    def pages(self, prefix: str) -> Iterator[list[BlobItem]]:
        """Yield listing pages under ``prefix`` (a refused listing raises the aml-identity error)."""
        from aml_identity.datastore._rest import StorageHttpError  # noqa: PLC0415 - only typed at module level

        marker: str | None = None
        while True:
            try:
                items, marker = self.client.list_page(self.loc.container, prefix, marker)
            except StorageHttpError as exc:
                raise self._storage_error(exc, "list") from None
            yield items
            if not marker:
                return

    def _storage_error(self, error: StorageHttpError, operation: Operation) -> Exception:
        """Turn a service error into the aml-identity error naming the identity, the account and the fix."""
        return convert_storage_error(
            error,
            account=self.loc.account,
            container=self.loc.container,
            operation=operation,
            token=self.client.token,
            purpose=self.purpose,
        )
