"""Download and upload datastore data with the job's identity.

.. code-block:: python

    from aml_identity.datastore import download, upload, upload_on_exit

    download("azureml://datastores/training/paths/imagenet/", "/mnt/data/imagenet", once_per_node=True)
    upload_on_exit("outputs/", "azureml://datastores/results/paths/run-42/")   # also on SIGTERM (preemption)

Transfers are parallel (listing overlaps fetching), ranged for large files with bounded memory, verified
before a file gets its final name, resumable, and skip files that are already up to date. See
``docs/datastores.md``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import signal
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Literal

from aml_identity._environment import JobEnvironment, check_outbound_url
from aml_identity._fork import after_fork_in_child_while_alive
from aml_identity._job import job_credential
from aml_identity._private import UnsafeCacheError, ensure_private_dir
from aml_identity.datastore._download import run_download
from aml_identity.datastore._engine import Counters, Progress
from aml_identity.datastore._rest import BearerToken, BlobRestClient, ConnectionFactory
from aml_identity.datastore._upload import run_upload
from aml_identity.datastore.resolve import BlobLocation, resolve
from aml_identity.datastore.uri import DatastoreUri
from aml_identity.errors import AmlIdentityError, ConfigurationError, TransferError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "Outcome",
    "TransferResult",
    "UploadOnExit",
    "download",
    "upload",
    "upload_on_exit",
]

_log = logging.getLogger(__name__)

# Parallel requests by default: enough to hide ~10 ms of round trip per small file and to keep every
# connection of a large file busy; memory is 1 MiB of buffer per worker.
DEFAULT_MAX_CONCURRENCY = 32
# The most we allow (each worker is a thread and a TLS connection).
MAX_CONCURRENCY = 256
# With once_per_node=True, a process that finds another's finished download of the same URI and folder
# reuses it when both belong to the same Azure ML run (AZUREML_RUN_ID); without a run id, when it finished
# at most this long before the call: the ranks of one job start within minutes of each other, while a
# call much later (a new job on the same node) checks storage again.
ONCE_PER_NODE_REUSE_S = 600.0

ProgressArg = bool | Callable[[int, int], None] | None
# What one call did: sent data ("transferred"), waited for another process on the node that did the same
# once-per-node download ("waited"), or found everything already up to date ("up_to_date").
Outcome = Literal["transferred", "waited", "up_to_date"]


@dataclass(frozen=True)
class TransferResult:
    """What a download or upload did.

    Attributes:
        direction: ``"download"`` or ``"upload"``.
        source: Where from (a URI or a local path).
        destination: Where to (a local path, or a URI).
        files: Files considered.
        transferred_files: Files transferred by this call.
        skipped_files: Files already up to date (not transferred).
        bytes_transferred: Bytes sent or received by this call.
        bytes_skipped: Bytes of the skipped files.
        bytes_resumed: Bytes a previous, interrupted download had already written (not fetched again).
        requests: Storage requests sent.
        seconds: Wall time.
        outcome: What this call did: ``"transferred"`` (it sent or received data: with ``once_per_node=True``,
            it is the process that downloaded for the node), ``"waited"`` (another process on this node did
            this once-per-node download and this call only waited for it: it sent no request) or
            ``"up_to_date"`` (it checked storage and every file was already there).
        changed_files: Local files that changed while being uploaded (committed with their old mtime or not
            at all; the next upload sends them again).
    """

    direction: Literal["download", "upload"]
    source: str
    destination: str
    files: int
    transferred_files: int
    skipped_files: int
    bytes_transferred: int
    bytes_skipped: int
    bytes_resumed: int
    requests: int
    seconds: float
    outcome: Outcome = "transferred"
    changed_files: tuple[str, ...] = ()

    @property
    def shared(self) -> bool:
        """``outcome == "waited"``: another process on this node did the download (kept for compatibility).

        False for a process that checked storage and found everything up to date, so it does not say which
        process downloaded; read :attr:`outcome` for that.
        """
        return self.outcome == "waited"

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dictionary (with ``shared`` too)."""
        data = asdict(self)
        data["changed_files"] = list(self.changed_files)
        data["shared"] = self.shared
        return data


def _workers(max_concurrency: int | None) -> int:
    if max_concurrency is None:
        return DEFAULT_MAX_CONCURRENCY
    if not isinstance(max_concurrency, int) or not 1 <= max_concurrency <= MAX_CONCURRENCY:
        raise ConfigurationError(
            f"max_concurrency={max_concurrency!r} must be an integer from 1 to {MAX_CONCURRENCY}.",
            name="max_concurrency",
        )
    return max_concurrency


def _client(
    location: BlobLocation,
    credential: TokenCredential,
    env: JobEnvironment,
    counters: Counters,
    connection_factory: ConnectionFactory | None,
) -> BlobRestClient:
    check_outbound_url(location.endpoint, env, what="blob endpoint")
    context = ssl.create_default_context(cafile=env.ca_bundle) if env.ca_bundle else ssl.create_default_context()
    return BlobRestClient(
        location.endpoint, BearerToken(credential), ssl_context=context, on_request=counters.count_request,
        connection_factory=connection_factory,
    )  # fmt: skip


@contextlib.contextmanager
def _session(
    uri: str | DatastoreUri,
    credential: TokenCredential | None,
    environ: Mapping[str, str] | None,
    progress: ProgressArg,
    direction: Literal["download", "upload"],
    *,
    connection_factory: ConnectionFactory | None = None,
) -> Iterator[tuple[BlobLocation, BlobRestClient, Counters, Progress]]:
    """Resolve ``uri`` with the credential, and hold a client and a progress reporter for one transfer call."""
    env = JobEnvironment.from_environ(environ)
    credential = credential or job_credential(environ)
    location = resolve(uri, credential=credential, environ=environ)
    counters = Counters()
    if progress is None and env.local_rank:
        progress = False  # one bar per node: the ranks other than local rank 0 stay quiet on a shared terminal
    reporter = Progress(progress, direction)
    client = _client(location, credential, env, counters, connection_factory)
    try:
        yield location, client, counters, reporter
    finally:
        reporter.close()
        client.close()


def _result(
    direction: Literal["download", "upload"],
    source: str,
    destination: str,
    *,
    counters: Counters,
    started: float,
    changed: tuple[str, ...] = (),
) -> TransferResult:
    return TransferResult(
        direction=direction,
        source=source,
        destination=destination,
        files=counters.files,
        transferred_files=counters.transferred_files,
        skipped_files=counters.skipped_files,
        bytes_transferred=counters.bytes_transferred,
        bytes_skipped=counters.bytes_skipped,
        bytes_resumed=counters.bytes_resumed,
        requests=counters.requests,
        seconds=round(time.monotonic() - started, 3),
        outcome="transferred" if counters.transferred_files or counters.bytes_transferred else "up_to_date",
        changed_files=changed,
    )


def download(
    uri: str | DatastoreUri,
    dest: str | os.PathLike[str],
    *,
    credential: TokenCredential | None = None,
    max_concurrency: int | None = None,
    resume: bool = True,
    once_per_node: bool = False,
    progress: ProgressArg = None,
    environ: Mapping[str, str] | None = None,
    connection_factory: ConnectionFactory | None = None,
) -> TransferResult:
    """Download a blob or a folder (prefix) to ``dest``.

    A URI whose path names a blob downloads that blob to ``dest`` (or into it, when ``dest`` is a folder or
    ends with ``/``); otherwise every blob under the path is downloaded below ``dest``, keeping the
    relative names.

    Args:
        uri: A datastore URI (any form :class:`DatastoreUri` accepts).
        dest: The local file or folder.
        credential: The identity to use; the job's default credential when omitted.
        max_concurrency: Parallel requests (default :data:`DEFAULT_MAX_CONCURRENCY`).
        resume: Continue interrupted downloads from their journal (``False`` starts them over).
        once_per_node: Let one process per node download while the other processes calling this with the
            same URI and ``dest`` wait for it (elected with a node-local file lock).
        progress: ``None`` shows a bar when stderr is a terminal (on local rank 0 only, when ``LOCAL_RANK`` or
            another launcher's variable is set); ``True``/``False`` forces it; a callable is called as
            ``progress(bytes_done, bytes_total)``.
        environ: The environment to read (``os.environ`` when omitted).
        connection_factory: Opens storage connections, ``(host, port, ssl_context) -> HTTPConnection``
            (``http.client.HTTPSConnection`` by default): swaps the HTTP layer without patching anything.

    Returns:
        What was transferred and skipped.

    Raises:
        ConfigurationError: The URI or an argument is malformed.
        DataAccessDeniedError: The identity lacks the Storage Blob Data Reader role; the message says how to
            grant it.
        DatastoreError: The datastore, container or blob does not exist.
        TransferError: A transfer failed after retries, did not verify, or a blob name would escape ``dest``.
    """
    started = time.monotonic()
    workers = _workers(max_concurrency)
    dest_text = os.fspath(dest)
    source = str(DatastoreUri.parse(uri))

    def run() -> TransferResult:
        return _download(
            uri,
            dest_text,
            credential=credential,
            workers=workers,
            resume=resume,
            progress=progress,
            environ=environ,
            started=started,
            connection_factory=connection_factory,
        )

    if once_per_node:
        return _once_per_node(JobEnvironment.from_environ(environ).run_id, source, dest_text, started, run)
    return run()


def _download(
    uri: str | DatastoreUri,
    dest: str,
    *,
    credential: TokenCredential | None,
    workers: int,
    resume: bool,
    progress: ProgressArg,
    environ: Mapping[str, str] | None,
    started: float,
    connection_factory: ConnectionFactory | None,
) -> TransferResult:
    session = _session(uri, credential, environ, progress, "download", connection_factory=connection_factory)
    with session as (location, client, counters, reporter):
        target = run_download(
            location, dest, client=client, workers=workers, resume=resume, counters=counters, progress=reporter
        )
    return _result("download", str(location.uri), target, counters=counters, started=started)


def _once_per_node(
    run_id: str | None, source: str, dest: str, started: float, run: Callable[[], TransferResult]
) -> TransferResult:
    from filelock import FileLock  # noqa: PLC0415 - only for once_per_node

    key = hashlib.sha256(f"{source}\0{os.path.abspath(dest)}".encode()).hexdigest()[:32]
    folder = os.path.join(tempfile.gettempdir(), f"aml-identity-{os.getuid()}")
    try:
        ensure_private_dir(Path(folder), uid=os.getuid(), what="lock")
    except UnsafeCacheError as exc:
        raise TransferError(
            f"once_per_node needs a private lock folder, but {folder!r} is not a directory owned by this user "
            f"with mode 0700 ({exc}); remove it (or set TMPDIR to another folder) and run again."
        ) from None
    # One "done" marker per job: two jobs on the node downloading the same URI into the same folder each keep
    # their own, so their ranks never take turns overwriting one marker (each turn cost a listing and ARM calls).
    run_key = f"-{hashlib.sha256(run_id.encode()).hexdigest()[:16]}" if run_id else ""
    marker = os.path.join(folder, f"download-{key}{run_key}.done")
    called_at = time.time()
    with FileLock(os.path.join(folder, f"download-{key}.lock")):
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            with open(marker, encoding="utf-8") as f:
                done = json.load(f)
            same_run = done["run_id"] == run_id if run_id else done["finished_at"] >= called_at - ONCE_PER_NODE_REUSE_S
            if same_run and os.path.exists(done["destination"]):
                _log.info("another process on this node downloaded %s to %s; reusing it", source, dest)
                return TransferResult(
                    direction="download",
                    source=source,
                    destination=done["destination"],
                    files=done["files"],
                    transferred_files=0,
                    skipped_files=done["files"],
                    bytes_transferred=0,
                    bytes_skipped=done["bytes"],
                    bytes_resumed=0,
                    requests=0,
                    seconds=round(time.monotonic() - started, 3),
                    outcome="waited",
                )
        result = run()
        payload = {
            "finished_at": time.time(),
            "run_id": run_id,
            "destination": result.destination,
            "files": result.files,
            "bytes": result.bytes_transferred + result.bytes_skipped + result.bytes_resumed,
        }
        temporary = f"{marker}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(payload, f)
        os.replace(temporary, marker)
        return result


def upload(
    src: str | os.PathLike[str],
    uri: str | DatastoreUri,
    *,
    overwrite: bool = False,
    credential: TokenCredential | None = None,
    max_concurrency: int | None = None,
    progress: ProgressArg = None,
    environ: Mapping[str, str] | None = None,
    exclude: frozenset[str] = frozenset(),
    connection_factory: ConnectionFactory | None = None,
) -> TransferResult:
    """Upload a file or a folder to ``uri``.

    A file goes to the blob the URI names (or into the URI's folder when it ends with ``/``); a folder's
    files go below the URI's path, keeping their relative names. Files whose blob already has the same size
    and mtime (recorded in the blob's metadata) are skipped.

    Args:
        src: The local file or folder.
        uri: The destination datastore URI.
        overwrite: Replace existing blobs whose content differs (otherwise they are reported, not replaced).
        credential: The identity to use; the job's default credential when omitted.
        max_concurrency: Parallel requests (default :data:`DEFAULT_MAX_CONCURRENCY`).
        progress: As for :func:`download`.
        environ: The environment to read (``os.environ`` when omitted).
        exclude: Absolute paths of files to leave out.
        connection_factory: As for :func:`download`.

    Returns:
        What was transferred and skipped.

    Raises:
        ConfigurationError: ``src`` does not exist, or the URI or an argument is malformed.
        DataAccessDeniedError: The identity lacks the Storage Blob Data Contributor role.
        DatastoreError: The datastore or container does not exist.
        TransferError: An upload failed after retries, or existing blobs differ and ``overwrite`` is False.
    """
    started = time.monotonic()
    workers = _workers(max_concurrency)
    session = _session(uri, credential, environ, progress, "upload", connection_factory=connection_factory)
    with session as (location, client, counters, reporter):
        target, changed = run_upload(
            os.fspath(src), location, client=client, workers=workers, overwrite=overwrite, counters=counters,
            progress=reporter, exclude=exclude,
        )  # fmt: skip
    for path in changed:
        _log.warning("%s changed while it was uploaded; the next upload sends it again", path)
    relative = target[len(location.path) :]
    destination = str(location.uri.joinpath(relative) if relative else location.uri)
    return _result(
        "upload",
        os.path.abspath(os.fspath(src)),
        destination,
        counters=counters,
        started=started,
        changed=tuple(changed),
    )


def files_open_for_writing(root: str) -> frozenset[str]:
    """Return the files below ``root`` that this process has open for writing (Linux ``/proc``).

    Such a file may be half-written, so :class:`UploadOnExit` leaves it out.
    """
    root = os.path.abspath(root) + os.sep
    found: set[str] = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return frozenset()
    for fd in fds:
        with contextlib.suppress(OSError, ValueError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if not target.startswith(root):
                continue
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
                flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
            if flags & (os.O_WRONLY | os.O_RDWR):
                found.add(target)
    return frozenset(found)


class UploadOnExit:
    """Uploads a folder when the process exits, is terminated (SIGTERM) or interrupted (SIGINT).

    Created by :func:`upload_on_exit`. Files the process still has open for writing are left out (they may
    be half-written); every other file is uploaded, each blob atomically. Use it as a context manager to
    also upload when the block ends, or call :meth:`flush` at any time (checkpoints).
    """

    def __init__(
        self,
        src: str | os.PathLike[str],
        uri: str | DatastoreUri,
        *,
        credential: TokenCredential | None = None,
        max_concurrency: int | None = None,
        environ: Mapping[str, str] | None = None,
        signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
    ) -> None:
        """Register the exit and signal hooks (signals only from the main thread); create ``src`` if missing."""
        self.src = os.path.abspath(os.fspath(src))
        self.uri = DatastoreUri.parse(uri)
        self._credential = credential
        self._max_concurrency = _workers(max_concurrency)
        self._environ = environ
        self._lock = threading.RLock()
        self._previous: dict[int, Any] = {}
        self._active = True
        self.last_result: TransferResult | None = None
        if not os.path.exists(self.src):
            os.makedirs(self.src)  # the outputs folder the job is about to write into
        atexit.register(self._at_exit)
        after_fork_in_child_while_alive(self._after_fork_in_child)
        if threading.current_thread() is threading.main_thread():
            for signum in signals:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        else:
            _log.warning("upload_on_exit was called outside the main thread: it uploads at exit, not on signals")

    def _after_fork_in_child(self) -> None:
        # Only the process that asked uploads: a forked worker that exits or is terminated must not upload the
        # folder (half of it may be its parent's work in progress), and a parent thread's flush may hold the lock.
        self._lock = threading.RLock()
        self._active = False

    def flush(self) -> TransferResult:
        """Upload every closed file now (unchanged ones are skipped)."""
        with self._lock:
            self.last_result = upload(
                self.src, self.uri, overwrite=True, credential=self._credential,
                max_concurrency=self._max_concurrency, progress=False, environ=self._environ,
                exclude=files_open_for_writing(self.src),
            )  # fmt: skip
            return self.last_result

    def _flush_logged(self, why: str) -> None:
        try:
            result = self.flush()
        except (AmlIdentityError, OSError) as exc:
            _log.error("upload_on_exit: uploading %s to %s on %s failed: %s", self.src, self.uri, why, exc)
        else:
            _log.info(
                "upload_on_exit: %s: uploaded %d file(s), %d up to date", why, result.transferred_files,
                result.skipped_files,
            )  # fmt: skip

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._active:
            self._flush_logged(signal.Signals(signum).name)
        previous = self._previous.get(signum, signal.SIG_DFL)
        signal.signal(signum, previous)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            os.kill(os.getpid(), signum)  # the default action, so the exit status says which signal it was

    def _at_exit(self) -> None:
        if self._active:
            self._flush_logged("exit")

    def close(self) -> None:
        """Stop watching: unregister the exit and signal hooks (no upload)."""
        self._active = False
        atexit.unregister(self._at_exit)
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous.items():
                if signal.getsignal(signum) == self._on_signal:
                    signal.signal(signum, previous)
        self._previous.clear()

    def __enter__(self) -> UploadOnExit:
        """Return self."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Upload, then stop watching.

        When the block raised, what it wrote is still uploaded, but a failure of that upload is logged rather
        than raised: the block's own error is the one the job must report.
        """
        try:
            if exc_type is None:
                self.flush()
            else:
                self._flush_logged(f"{exc_type.__name__} in the with block")
        finally:
            self.close()


def upload_on_exit(
    src: str | os.PathLike[str],
    uri: str | DatastoreUri,
    *,
    credential: TokenCredential | None = None,
    max_concurrency: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> UploadOnExit:
    """Upload ``src`` to ``uri`` when the process exits - including on SIGTERM (preemption) and SIGINT.

    Args:
        src: The local folder (or file) to upload.
        uri: The destination datastore URI.
        credential: The identity to use; the job's default credential when omitted.
        max_concurrency: Parallel requests.
        environ: The environment to read (``os.environ`` when omitted).

    Returns:
        The registration; :meth:`UploadOnExit.flush` uploads now, :meth:`UploadOnExit.close` unregisters.
    """
    return UploadOnExit(src, uri, credential=credential, max_concurrency=max_concurrency, environ=environ)
