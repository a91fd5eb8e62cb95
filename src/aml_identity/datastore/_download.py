"""Download a blob or a prefix: listing pipelined with parallel ranged GETs, verified, resumable.

For each blob the listing returns (page by page, while earlier pages are already being fetched):

* up to date locally (same size, and the mtime we set from the blob's Last-Modified) -> skipped;
* up to :data:`SINGLE_GET_MAX` bytes -> one GET streamed into a partial file, ``.<name>.<host>.aml-partial``
  (see :mod:`._paths` for how processes and hosts that share a folder get distinct partial files);
* larger -> :data:`RANGE_SIZE` ranges fetched in parallel and ``os.pwrite``-n at their offsets into the
  partial file, each range recorded in a journal once on disk, so that an interrupted download resumes
  with only the missing ranges (unless the blob's ETag changed).

Every GET pins the ETag from the listing (``If-Match``). A file is renamed to its final name only when
complete and verified (size, and Content-MD5 when the service has one), with its mtime set to the blob's
Last-Modified - which is what makes the next run skip it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from aml_identity.datastore._engine import BUFFER_SIZE, Counters, Engine, Progress, Transfer
from aml_identity.datastore._journal import Journal
from aml_identity.datastore._paths import (
    ClaimedPartial,
    claim_partial,
    ensure_parent,
    journal_path,
    local_path_for,
    remove_stale_partial,
)
from aml_identity.datastore._rest import BlobItem, BlobRestClient, StorageHttpError
from aml_identity.datastore.resolve import BlobLocation
from aml_identity.errors import TransferError

__all__ = ["RANGE_SIZE", "SINGLE_GET_MAX", "run_download"]

# Range size of a large blob: big enough that per-request cost vanishes (~0.3 ms of CPU per 8 MiB), small
# enough that a resume re-fetches little and that a file of a few ranges is already fetched in parallel.
RANGE_SIZE = 8 * 1024 * 1024
# Blobs up to one range are fetched with a single GET (no journal: an interrupted one restarts).
SINGLE_GET_MAX = RANGE_SIZE
_NS = 1_000_000_000


class _LocalWriteError(TransferError):
    """Writing the local file failed (disk full, permissions): never retried as a network error."""


def _pwrite_all(fd: int, data: memoryview, offset: int, path: str) -> None:
    try:
        while data:
            written = os.pwrite(fd, data, offset)
            data = data[written:]
            offset += written
    except OSError as exc:
        raise _LocalWriteError(f"Could not write {path!r}: {exc.strerror or exc}.") from None


@dataclass(eq=False)  # compared and hashed by identity: kept in a set while unfinished
class _RangedFile:
    item: BlobItem
    final: str
    claim: ClaimedPartial
    journal: Journal
    remaining: int

    @property
    def partial(self) -> str:
        return self.claim.path

    def __post_init__(self) -> None:
        self.lock = threading.Lock()


class _Download(Transfer):
    def __init__(  # noqa: PLR0917 - private; built in one place
        self,
        location: BlobLocation,
        dest: str,
        client: BlobRestClient,
        engine: Engine,
        counters: Counters,
        progress: Progress,
        *,
        resume: bool,
    ) -> None:
        super().__init__(location, client, engine, counters, progress)
        self.dest = dest
        self.resume = resume
        self.created_dirs: set[str] = set()
        # Ranged files being fetched, whose partial files this process holds locked until they are published.
        self.ranged: set[_RangedFile] = set()
        self.ranged_lock = threading.Lock()

    # -- planning (producer thread) ---------------------------------------------------------------------

    def plan(self, item: BlobItem, final: str) -> None:
        """Decide what to do with one listed blob and queue the work."""
        self.counters.add(files=1)
        try:
            st = os.stat(final)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise TransferError(f"Cannot use {final!r} as the download target: {exc.strerror}.") from None
        if st is not None and st.st_size == item.size and st.st_mtime_ns == int(item.last_modified) * _NS:
            self.counters.add(skipped_files=1, bytes_skipped=item.size)
            if item.size > SINGLE_GET_MAX:  # an interrupted download of it may have left a partial file
                remove_stale_partial(final)
            return
        self.progress.add_total(item.size)
        if item.size <= SINGLE_GET_MAX:
            self.engine.submit(lambda: self._fetch_whole(item, final))
        else:
            self._start_ranged(item, final)

    # -- whole blobs ------------------------------------------------------------------------------------

    def _fetch_whole(self, item: BlobItem, final: str) -> None:
        ensure_parent(final, self.created_dirs)
        size = item.size
        claim = self._claim(final)
        partial, fd = claim.path, claim.fd
        assert fd is not None  # noqa: S101 - just claimed
        published = False
        try:
            try:
                os.ftruncate(fd, 0)
            except OSError as exc:
                raise _LocalWriteError(f"Could not write {partial!r}: {exc.strerror}.") from None
            if size:
                try:
                    md5 = self.client.get_into(
                        self.loc.container, item.name, offset=0, length=size, etag=item.etag,
                        sink=self._whole_sink(item, fd, partial),
                    )  # fmt: skip
                except StorageHttpError as exc:
                    raise self._storage_error(exc, "read") from None
                if item.content_md5 is not None and md5 != item.content_md5:
                    raise self._corrupt(item, partial)
            self._publish(item, partial, final)
            published = True
        finally:
            if published:
                claim.release()
            else:
                claim.discard()
        self.counters.add(transferred_files=1, bytes_transferred=size)
        self.progress.advance(size)

    def _whole_sink(self, item: BlobItem, fd: int, partial: str) -> Callable[[http.client.HTTPResponse], bytes | None]:
        """Return the sink that writes a whole blob's response into ``fd`` (and hashes it when storage has an MD5)."""
        size = item.size
        buf = self._buffer()

        def sink(response: http.client.HTTPResponse) -> bytes | None:
            if response.length is not None and response.length != size:
                raise http.client.IncompleteRead(b"", size)
            digest = hashlib.md5() if item.content_md5 is not None else None  # noqa: S324 - Content-MD5
            got = 0
            while got < size:
                n = response.readinto(buf[: min(BUFFER_SIZE, size - got)])
                if not n:
                    raise http.client.IncompleteRead(b"", size - got)
                chunk = buf[:n]
                _pwrite_all(fd, chunk, got, partial)
                if digest is not None:
                    digest.update(chunk)
                got += n
            return digest.digest() if digest is not None else None

        return sink

    @staticmethod
    def _claim(final: str) -> ClaimedPartial:
        try:
            return claim_partial(final)
        except OSError as exc:
            raise _LocalWriteError(f"Could not create the partial file of {final!r}: {exc.strerror}.") from None

    def _corrupt(self, item: BlobItem, partial: str) -> TransferError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        return TransferError(
            f"{self.loc.container}/{item.name} arrived with a different MD5 than storage holds for it "
            "(Content-MD5). The partial file was deleted; run the download again."
        )

    def _publish(self, item: BlobItem, partial: str, final: str) -> None:
        mtime = int(item.last_modified) * _NS
        try:
            os.utime(partial, ns=(mtime, mtime))
            os.replace(partial, final)
        except OSError as exc:
            raise _LocalWriteError(f"Could not move the finished download to {final!r}: {exc.strerror}.") from None

    # -- ranged blobs -----------------------------------------------------------------------------------

    def _start_ranged(self, item: BlobItem, final: str) -> None:
        ensure_parent(final, self.created_dirs)
        claim = self._claim(final)
        partial, fd = claim.path, claim.fd
        assert fd is not None  # noqa: S101 - just claimed
        header: dict[str, object] = {"name": item.name, "etag": item.etag, "size": item.size, "range": RANGE_SIZE}
        journal = Journal(journal_path(partial), header)
        done: set[int] = set()
        try:
            if self.resume and not claim.private and os.fstat(fd).st_size == item.size:
                done = journal.load()
            if not done:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, item.size)
            journal.start(keep=bool(done))
        except OSError as exc:
            claim.discard()
            raise _LocalWriteError(f"Could not create {partial!r}: {exc.strerror}.") from None
        count = -(-item.size // RANGE_SIZE)
        missing = [index for index in range(count) if index not in done]
        resumed = item.size - sum(min(RANGE_SIZE, item.size - index * RANGE_SIZE) for index in missing)
        if resumed:
            self.counters.add(bytes_resumed=resumed)
            self.progress.advance(resumed)
        state = _RangedFile(item, final, claim, journal, remaining=len(missing))
        with self.ranged_lock:
            self.ranged.add(state)
        if not missing:
            self._finish_ranged(state)
            return
        for index in missing:
            self.engine.submit(lambda index=index: self._fetch_range(state, index))  # type: ignore[misc]

    def _fetch_range(self, state: _RangedFile, index: int) -> None:
        self.engine.check()
        item = state.item
        offset = index * RANGE_SIZE
        length = min(RANGE_SIZE, item.size - offset)
        buf = self._buffer()
        try:
            fd = os.open(state.partial, os.O_WRONLY)
        except OSError as exc:
            raise _LocalWriteError(f"Could not open {state.partial!r}: {exc.strerror}.") from None
        try:

            def sink(response: http.client.HTTPResponse) -> None:
                if response.length is not None and response.length != length:
                    raise http.client.IncompleteRead(b"", length)
                got = 0
                while got < length:
                    n = response.readinto(buf[: min(BUFFER_SIZE, length - got)])
                    if not n:
                        raise http.client.IncompleteRead(b"", length - got)
                    _pwrite_all(fd, buf[:n], offset + got, state.partial)
                    got += n

            try:
                self.client.get_into(
                    self.loc.container, item.name, offset=offset, length=length, etag=item.etag, sink=sink
                )
            except StorageHttpError as exc:
                raise self._storage_error(exc, "read") from None
        finally:
            os.close(fd)
        state.journal.record(index)
        self.counters.add(bytes_transferred=length)
        self.progress.advance(length)
        with state.lock:
            state.remaining -= 1
            last = state.remaining == 0
        if last:
            self._finish_ranged(state)

    def _finish_ranged(self, state: _RangedFile) -> None:
        item = state.item
        with self.ranged_lock:
            self.ranged.discard(state)
        state.journal.close()
        published = False
        try:
            if item.content_md5 is not None and self._file_md5(state.partial) != item.content_md5:
                state.journal.remove()
                raise self._corrupt(item, state.partial)
            self._publish(item, state.partial, state.final)
            state.journal.remove()
            published = True
        finally:
            # Only now, after the rename: no other process may take the partial file over before it.
            if published:
                state.claim.release()
            else:
                state.claim.discard()
        self.counters.add(transferred_files=1)

    def release(self) -> None:
        """Unlock the partial files of ranged files left unfinished (a failed or interrupted download).

        The host's partial files and journals stay for the next download to resume; process-unique ones are
        deleted, since nothing would resume them.
        """
        with self.ranged_lock:
            unfinished, self.ranged = self.ranged, set()
        for state in unfinished:
            state.journal.close()
            state.claim.discard()

    def _file_md5(self, path: str) -> bytes:
        digest = hashlib.md5()  # noqa: S324 - the service's Content-MD5, not a security hash
        buf = self._buffer()
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                digest.update(buf[:n])
        return digest.digest()


def run_download(
    location: BlobLocation,
    dest: str,
    *,
    client: BlobRestClient,
    workers: int,
    resume: bool,
    counters: Counters,
    progress: Progress,
) -> str:
    """Download ``location`` into ``dest``; return the local path written (a file or a folder).

    Raises:
        DataAccessDeniedError: The identity lacks a read role on the account.
        DatastoreError: The container or blob does not exist.
        TransferError: A transfer failed after retries, did not verify, or a blob name would escape ``dest``.
    """
    dest_is_folder = dest.endswith(("/", os.sep))
    dest = os.path.abspath(dest)
    engine = Engine(workers, "aml-download")
    job = _Download(location, dest, client, engine, counters, progress, resume=resume)
    target = dest
    try:
        prefix = location.path
        if not location.is_folder:
            # A path without a trailing slash is a blob if one has exactly that name, else a folder.
            first = next(iter(job.pages(prefix)), [])
            exact = next((item for item in first if item.name == prefix), None)
            if exact is not None:
                target = _single_target(dest, prefix, is_folder=dest_is_folder)
                job.plan(exact, target)
                engine.finish()
                job.release()
                return target
            prefix += "/"
        for page in job.pages(prefix):
            for item in page:
                relative = item.name[len(prefix) :]
                if item.is_directory_marker or not relative or (relative.endswith("/") and item.size == 0):
                    continue  # folder placeholders (ADLS Gen2, or tools that write "dir/" blobs)
                job.plan(item, local_path_for(dest, relative, item.name))
                if engine.failed:
                    break
            if engine.failed:
                break
    except BaseException as exc:
        engine.abort(exc)
        job.release()
        raise
    try:
        engine.finish()
    finally:
        job.release()  # a worker's failure left ranged files unfinished
    return target


def _single_target(dest: str, blob_name: str, *, is_folder: bool) -> str:
    if is_folder or os.path.isdir(dest):
        return os.path.join(dest, blob_name.rsplit("/", 1)[-1])
    return dest
