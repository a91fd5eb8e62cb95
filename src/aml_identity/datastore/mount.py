"""Mount a blob datastore as a local folder, read-only or read-write, with the job's identity (FUSE).

.. code-block:: python

    from aml_identity.datastore import mount

    with mount("azureml://datastores/training_data/paths/images/", cache_dir="/mnt/cache", cache_size="20GiB") as m:
        train(m.path)

The file system runs in its own process (``aml-identity mount``), so a crash there never takes the job down and
the job's reads can never deadlock against FUSE callbacks running in the job's own interpreter. :func:`mount`
starts it, waits for its readiness line, and the :class:`Mount` it returns unmounts and reaps it on exit. See
``docs/mount.md`` for caching, consistency and the ``rw`` semantics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Literal

import aml_identity
from aml_identity.datastore._fuse_cache import parse_size
from aml_identity.datastore._fuse_main import READY_PREFIX, check_fuse, clear_stale, fusermount, is_stale
from aml_identity.datastore._fuse_tree import ATTR_CACHE_TTL_S
from aml_identity.datastore.uri import DatastoreUri
from aml_identity.errors import ConfigurationError, DatastoreError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from aml_identity.datastore._token_relay import TokenRelay

__all__ = ["MOUNT_READY_TIMEOUT_S", "UNMOUNT_TIMEOUT_S", "Mount", "mount"]

_log = logging.getLogger("aml_identity.mount")

# How long the mount process may take to mount: resolving a named datastore (ARM), a first token (the identity
# endpoint is retried for up to 90 s by default) and listing the root. Beyond that something is wrong.
MOUNT_READY_TIMEOUT_S = 120.0
# How long an unmount may take before the mount process is stopped: Azure ML's DATASET_UNMOUNT_TIMEOUT_SECONDS.
UNMOUNT_TIMEOUT_S = 30.0
# After SIGTERM, how long the mount process gets to unmount before SIGKILL.
_TERMINATE_GRACE_S = 5.0
# After the mount process died on its own (kill -9, OOM), how long fusermount3's auto_unmount watchdog gets to
# release the mount point (it takes milliseconds) before this process detaches the dead mount itself.
_DEAD_MOUNT_GRACE_S = 5.0
# Lines of the mount process's stderr kept to quote when it fails.
_STDERR_TAIL_LINES = 40
# What libfuse 3.14 prints at every mount with mfusepy; harmless (see docs/mount.md), so not copied to the job's log.
_HARMLESS_LINES = frozenset({"Ignoring invalid max threads value 4294967295 > max (100000)."})
_SOURCE_ROOT = str(Path(aml_identity.__file__).resolve().parents[1])


class _Pump(threading.Thread):
    """Copy a child's output to our stderr line by line, keeping the last lines to quote in errors."""

    def __init__(self, stream: IO[bytes], tail: deque[str]) -> None:
        super().__init__(name="aml-mount-output", daemon=True)
        self._stream = stream
        self._tail = tail

    def run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in iter(self._stream.readline, b""):
                line = raw.decode("utf-8", "replace")
                if line.rstrip("\n") in _HARMLESS_LINES:
                    continue
                self._tail.append(line.rstrip("\n"))
                if sys.stderr is not None:
                    with contextlib.suppress(OSError, ValueError):
                        sys.stderr.write(line)
                        sys.stderr.flush()


@dataclass
class _State:
    """Everything the unmount needs (kept apart from :class:`Mount` so a finalizer can hold it)."""

    process: subprocess.Popen[bytes]
    path: str
    made_path: bool
    tail: deque[str]
    pumps: list[_Pump] = field(default_factory=list)
    done: bool = False
    owner_pid: int = field(default_factory=os.getpid)  # a forked child (a DataLoader worker) must not unmount


def _end_process(state: _State) -> None:
    """Unmount (lazily if busy) and wait for the mount process to exit, stopping it if it does not."""
    process = state.process
    ok, message = fusermount(state.path)
    if not ok and process.poll() is None and os.path.ismount(state.path):
        _log.warning(
            "%s is busy (%s); detaching it lazily: it goes away once the files open there are closed",
            state.path,
            message,
        )
        fusermount(state.path, lazy=True)
    try:
        process.wait(UNMOUNT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _log.warning(
            "the mount process %d did not exit %.0f s after unmounting; stopping it", process.pid, UNMOUNT_TIMEOUT_S
        )
        process.terminate()
        try:
            process.wait(_TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _watch(state: _State) -> None:
    """Wait for the mount process; if it died on its own and left a dead mount, detach it (a second watchdog)."""
    state.process.wait()
    if state.done or os.getpid() != state.owner_pid:
        return
    threading.Event().wait(_DEAD_MOUNT_GRACE_S)
    if not state.done and is_stale(state.path):
        _log.warning("the mount process for %s died; detaching its dead mount", state.path)
        fusermount(state.path, lazy=True)


def _stop(state: _State) -> None:
    """Unmount, reap the mount process, clear a dead mount, remove the mount point if we made it."""
    if state.done or os.getpid() != state.owner_pid:
        return
    state.done = True
    process = state.process
    if process.poll() is None:
        _end_process(state)
    if is_stale(state.path):  # the mount process died (killed, crashed): clear the dead mount
        with contextlib.suppress(DatastoreError):
            clear_stale(state.path)
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    for pump in state.pumps:
        pump.join(timeout=UNMOUNT_TIMEOUT_S)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    if process.returncode not in (0, None):
        _log.warning("the mount process for %s exited with code %s", state.path, process.returncode)
    if state.made_path:
        with contextlib.suppress(OSError):
            os.rmdir(state.path)


class Mount:
    """A mounted datastore (returned by :func:`mount`); unmounts when its ``with`` block ends.

    Attributes:
        uri: The datastore URI mounted.
        mode: ``"ro"`` or ``"rw"``.
    """

    def __init__(self, state: _State, uri: str, mode: Literal["ro", "rw"]) -> None:
        """Wrap a running mount process (use :func:`mount`)."""
        self._state = state
        self.uri = uri
        self.mode = mode
        self._finalizer = weakref.finalize(self, _stop, state)

    @property
    def path(self) -> Path:
        """The mount point."""
        return Path(self._state.path)

    @property
    def pid(self) -> int:
        """The process id of the mount process (``aml-identity mount``)."""
        return self._state.process.pid

    @property
    def mounted(self) -> bool:
        """Whether the mount is still up (its process running and the folder a mount point)."""
        return self._state.process.poll() is None and os.path.ismount(self._state.path)

    def unmount(self) -> None:
        """Unmount (lazily if files are still open there) and wait for the mount process to exit.

        Files written through an ``rw`` mount are in storage as soon as they are closed; files still open for
        writing at this point are not uploaded. Calling it again does nothing.
        """
        self._finalizer()

    def __enter__(self) -> Mount:
        """Return the mount (it is already mounted)."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Unmount."""
        self.unmount()

    def __repr__(self) -> str:
        """Describe the mount."""
        state = "mounted" if self.mounted else "unmounted"
        return f"Mount({self.uri!r}, path={self._state.path!r}, mode={self.mode!r}, {state})"


def _identity_arguments(credential: TokenCredential | None) -> list[str]:
    if credential is None:
        return []
    from aml_identity.credential import JobCredential  # noqa: PLC0415 - only to inspect the argument

    if isinstance(credential, JobCredential):
        identity = credential.identity
        if identity.selected_by != "argument":
            return []
        arguments = []
        for option, value in (
            ("--client-id", identity.client_id),
            ("--object-id", identity.object_id),
            ("--resource-id", identity.resource_id),
        ):
            if value:
                arguments += [option, value]
        return arguments
    if callable(getattr(credential, "get_token", None)):
        return []  # any other TokenCredential: the mount process takes its tokens from a relay (see mount())
    raise ConfigurationError(
        f"mount() got credential={type(credential).__name__}, which is not a TokenCredential (it has no "
        "get_token). Pass None (the job's default identity), aml_identity.default_credential(client_id=...), or "
        "any azure-core TokenCredential.",
        name="credential",
    )


def _token_relay(credential: TokenCredential | None, env: dict[str, str]) -> TokenRelay | None:
    """Serve a credential that is not a job credential to the mount process (which then uses it alone)."""
    from aml_identity.credential import JobCredential  # noqa: PLC0415 - only to inspect the argument

    if credential is None or isinstance(credential, JobCredential):
        return None
    from aml_identity.datastore._token_relay import TokenRelay  # noqa: PLC0415

    relay = TokenRelay(credential)
    relay.point(env)
    return relay


def _prepare_mount_point(mount_point: str | os.PathLike[str] | None) -> tuple[str, bool]:
    if mount_point is None:
        return tempfile.mkdtemp(prefix="aml-mount-"), True
    path = os.path.abspath(os.fspath(mount_point))
    if is_stale(path):
        return path, False  # the mount process clears it (with a log line)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"mount point {path!r} cannot be created: {exc.strerror}.", name="mount_point"
        ) from None
    return path, False


def _wait_ready(process: subprocess.Popen[bytes], state: _State, uri: str) -> None:
    """Wait for the mount process's readiness line, or its death (quoting its stderr), or the timeout."""
    assert process.stdout is not None  # noqa: S101 - we asked for a pipe
    fd = process.stdout.fileno()
    deadline = time.monotonic() + MOUNT_READY_TIMEOUT_S
    pending = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            process.kill()
            process.wait()
            raise DatastoreError(
                f"Mounting {uri} at {state.path} did not finish within {MOUNT_READY_TIMEOUT_S:.0f} s. Its last "
                "messages:\n" + "\n".join(state.tail)
            )
        readable, _, _ = select.select([fd], [], [], remaining)  # wakes on output or exit, not on a timer
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            code = process.wait()
            for pump in state.pumps:
                pump.join(timeout=UNMOUNT_TIMEOUT_S)
            messages = "\n".join(state.tail).strip() or "(no message)"
            raise DatastoreError(
                f"Mounting {uri} at {state.path} failed: the mount process exited with code {code}:\n{messages}"
            )
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.decode("utf-8", "replace").startswith(READY_PREFIX):
                return
            state.tail.append(line.decode("utf-8", "replace"))


def _check_arguments(mode: str, cache_size: int | str | None, attr_timeout: float | None) -> tuple[int | None, float]:
    if mode not in ("ro", "rw"):
        raise ConfigurationError(f"mode={mode!r} must be 'ro' or 'rw'.", name="mode")
    size: int | None = None
    if cache_size is not None:
        try:
            size = parse_size(cache_size)
        except ValueError as exc:
            raise ConfigurationError(f"cache_size={cache_size!r}: {exc}.", name="cache_size") from None
    timeout = ATTR_CACHE_TTL_S if attr_timeout is None else float(attr_timeout)
    if timeout < 0:
        raise ConfigurationError(f"attr_timeout={attr_timeout!r} must be 0 or more seconds.", name="attr_timeout")
    return size, timeout


def mount(
    uri: str | DatastoreUri,
    mount_point: str | os.PathLike[str] | None = None,
    *,
    mode: Literal["ro", "rw"] = "ro",
    cache_dir: str | os.PathLike[str] | None = None,
    cache_size: int | str | None = None,
    credential: TokenCredential | None = None,
    attr_timeout: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> Mount:
    """Mount the folder a datastore URI names, with the job's identity, and return when it is ready.

    Args:
        uri: A datastore URI (any form :class:`~aml_identity.datastore.DatastoreUri` accepts); its path is the
            folder mounted.
        mount_point: An empty folder to mount on (created if missing); a fresh temporary folder when omitted
            (removed again at unmount).
        mode: ``"ro"`` (read-only) or ``"rw"``: new and changed files are uploaded when closed.
        cache_dir: A folder for the disk block cache (reused by later mounts with the same folder) and ``rw``
            staging files. Without it blocks are cached in memory only.
        cache_size: The disk cache's limit: bytes, or a string such as ``"20GiB"``. Without ``cache_dir`` a
            temporary cache folder is used. The cache also always leaves 1 GiB of its disk free.
        credential: ``None`` for the job's default identity; a :class:`~aml_identity.JobCredential` (from
            ``default_credential(client_id=...)``) to use another of the compute's identities; or any other
            ``TokenCredential``, whose tokens the mount process then gets from this process (over a loopback
            endpoint only it can use).
        attr_timeout: Seconds listings and file attributes are trusted before storage is asked again (default
            :data:`~aml_identity.datastore._fuse_fs.ATTR_CACHE_TTL_S`, 60 s).
        environ: The environment of the mount process (``os.environ`` when omitted).

    Returns:
        The mount; use it as a context manager, or call :meth:`Mount.unmount`.

    Raises:
        ConfigurationError: An argument is malformed, or FUSE is not available here.
        DatastoreError: The mount failed; the message quotes the mount process (for example the
            DataAccessDeniedError text naming the role to grant, or a missing container).
    """
    size, timeout = _check_arguments(mode, cache_size, attr_timeout)
    check_fuse()
    text = str(DatastoreUri.parse(uri))
    options = ["--mode", mode, "--attr-timeout", repr(timeout), *_identity_arguments(credential)]
    if cache_dir is not None:
        options += ["--cache-dir", os.path.abspath(os.fspath(cache_dir))]
    if size is not None:
        options += ["--cache-size", str(size)]
    path, made_path = _prepare_mount_point(mount_point)
    command = [sys.executable, "-m", "aml_identity", "mount", text, path, "--exit-with-stdin", *options]
    env = dict(os.environ if environ is None else environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SOURCE_ROOT, env.get("PYTHONPATH", "")) if p)
    relay = _token_relay(credential, env)
    try:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # the terminal's Ctrl-C reaches the job, which then unmounts in order
        )
    except OSError:
        if relay is not None:
            relay.stop()
        if made_path:
            os.rmdir(path)
        raise
    if relay is not None:
        relay.stop_with(process)
    state = _State(process, path, made_path, deque(maxlen=_STDERR_TAIL_LINES))
    assert process.stderr is not None  # noqa: S101 - we asked for a pipe
    state.pumps.append(_Pump(process.stderr, state.tail))
    state.pumps[0].start()
    try:
        _wait_ready(process, state, text)
    except BaseException:
        _stop(state)
        raise
    assert process.stdout is not None  # noqa: S101 - we asked for a pipe
    state.pumps.append(_Pump(process.stdout, state.tail))
    state.pumps[-1].start()
    if not os.path.ismount(path):
        _stop(state)
        raise DatastoreError(f"The mount process reported {path} mounted, but it is not a mount point.")
    threading.Thread(target=_watch, args=(state,), name="aml-mount-watch", daemon=True).start()
    _log.info("mounted %s at %s (%s, process %d)", text, path, mode, process.pid)
    return Mount(state, text, mode)
