"""The mount process: ``aml-identity mount URI [MOUNT_POINT]`` serves the file system in the foreground.

It resolves the URI with the job identity, checks that the root can be listed (a missing container or role
fails here, with the message naming the role), clears a stale mount left by a crashed run, mounts with libfuse3
through mfusepy, prints ``mounted ...`` on stdout when the kernel has mounted it (the readiness line
:func:`aml_identity.datastore.mount` waits for), and serves until unmounted (``fusermount3 -u``), SIGTERM or
SIGINT; then libfuse unmounts and the process exits 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import importlib.util
import logging
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aml_identity._environment import JobEnvironment, check_outbound_url
from aml_identity.datastore._fuse_cache import DEFAULT_DISK_CACHE_FRACTION, RESERVED_FREE_DISK_BYTES, free_bytes
from aml_identity.datastore._fuse_fs import ATTR_CACHE_TTL_S, BlobFilesystem, Mode
from aml_identity.datastore._fuse_kernel import raise_read_ahead
from aml_identity.datastore._rest import BearerToken, BlobRestClient
from aml_identity.errors import ConfigurationError, DatastoreError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = ["READY_PREFIX", "MountOptions", "check_fuse", "clear_stale", "fusermount", "is_stale", "serve"]

_log = logging.getLogger("aml_identity.mount")

# The first line the mount process prints on stdout once the kernel has mounted the file system.
READY_PREFIX = "mounted "
# fusermount3 is fuse3's setuid helper (unprivileged mount and unmount); Debian also links it as fusermount.
_FUSERMOUNT_NAMES = ("fusermount3", "fusermount")
# libfuse 3's readdir flag (the kernel asks for attributes too) and filler flag (they are given).
_FUSE_READDIR_PLUS = 1
_FUSE_FILL_DIR_PLUS = 2
# Seconds fusermount may take (it only talks to the kernel; a hang means something is badly wrong).
_FUSERMOUNT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class MountOptions:
    """What ``aml-identity mount`` was asked to do.

    Attributes:
        uri: The datastore URI (its path is the mount root).
        mount_point: The folder to mount on (a fresh temporary folder when None).
        mode: ``"ro"`` or ``"rw"``.
        cache_dir: The disk cache folder (None: memory only, unless ``cache_size`` is given).
        cache_size: The disk cache's limit in bytes (None with a ``cache_dir``: half the free space).
        attr_timeout: Seconds listings and attributes are trusted.
        client_id: Use this user-assigned identity instead of the default.
        object_id: Select the identity by object id instead.
        resource_id: Select the identity by resource id instead.
        exit_with_stdin: Unmount when stdin reaches end-of-file (the starting process has exited).
    """

    uri: str
    mount_point: str | None = None
    mode: Mode = "ro"
    cache_dir: str | None = None
    cache_size: int | None = None
    attr_timeout: float = ATTR_CACHE_TTL_S
    client_id: str | None = None
    object_id: str | None = None
    resource_id: str | None = None
    exit_with_stdin: bool = False


def _fusermount_binary() -> str:
    for name in _FUSERMOUNT_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise ConfigurationError(
        "fusermount3 was not found: install fuse3 (Debian/Ubuntu: apt-get install fuse3) to mount datastores.",
        name="fusermount3",
    )


def check_fuse() -> None:
    """Check that this machine can mount: /dev/fuse, fusermount3 and mfusepy (without loading libfuse).

    Raises:
        ConfigurationError: Something is missing; the message says what to install or how to run.
    """
    if not os.path.exists("/dev/fuse"):
        raise ConfigurationError(
            "/dev/fuse does not exist: this machine (or container) cannot mount FUSE file systems. In a container, "
            "run it with --device /dev/fuse --cap-add SYS_ADMIN.",
            name="/dev/fuse",
        )
    _fusermount_binary()
    if importlib.util.find_spec("mfusepy") is None:
        raise ConfigurationError("Mounting needs mfusepy: pip install 'aml-identity[mount]'.", name="mfusepy")


def fusermount(path: str, *, lazy: bool = False) -> tuple[bool, str]:
    """Unmount ``path`` with ``fusermount3 -u`` (``-z``: lazily, detaching even while busy).

    Returns:
        Whether it succeeded, and fusermount's message.
    """
    command = [_fusermount_binary(), "-u", *(["-z"] if lazy else []), path]
    try:
        done = subprocess.run(  # noqa: S603 - a fixed binary and our own mount point
            command, capture_output=True, text=True, timeout=_FUSERMOUNT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return False, f"{' '.join(command)} did not finish in {_FUSERMOUNT_TIMEOUT_S:.0f} s"
    return done.returncode == 0, (done.stderr or done.stdout).strip()


def is_stale(path: str) -> bool:
    """Whether ``path`` is a dead FUSE mount ("Transport endpoint is not connected": its process died)."""
    try:
        os.stat(path)
        with os.scandir(path):  # stat may be answered from the kernel's attribute cache; opening reaches FUSE
            pass
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def clear_stale(path: str) -> None:
    """Unmount a dead mount left on ``path`` by a crashed run, with a log line."""
    if not is_stale(path):
        return
    _log.warning(
        "%s is a stale mount from a process that died (Transport endpoint is not connected); unmounting it",
        path,
    )
    ok, message = fusermount(path)
    if not ok:
        ok, message = fusermount(path, lazy=True)
    if not ok or is_stale(path):
        raise DatastoreError(
            f"{path} is a stale FUSE mount and could not be unmounted ({message}). Run `fusermount3 -u -z {path}` "
            "(as the user who mounted it) and try again."
        )


def _check_mount_point(path: str) -> None:
    if not os.path.isdir(path):
        raise ConfigurationError(
            f"mount point {path!r} is not a folder; create it or pass another.", name="mount_point"
        )
    if os.path.ismount(path):
        raise ConfigurationError(
            f"mount point {path!r} is already a mount point; unmount it first (fusermount3 -u {path}).",
            name="mount_point",
        )
    with os.scandir(path) as entries:
        if next(entries, None) is not None:
            raise ConfigurationError(
                f"mount point {path!r} is not empty; mounting there would hide its files. Pass an empty folder.",
                name="mount_point",
            )


def _credential(options: MountOptions) -> TokenCredential:
    from aml_identity.credential import default_credential  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

    credential: TokenCredential = default_credential(
        client_id=options.client_id, object_id=options.object_id, resource_id=options.resource_id
    )
    return credential


def _load_mfusepy(env: JobEnvironment) -> object:
    if not env.fuse_library_configured and ctypes.util.find_library("fuse3"):
        # mfusepy prefers libfuse2 when both are installed; we are written for (and tested on) libfuse3.
        os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
    try:
        import mfusepy  # noqa: PLC0415 - optional dependency, and it loads libfuse when imported
    except ImportError:
        raise ConfigurationError("Mounting needs mfusepy: pip install 'aml-identity[mount]'.", name="mfusepy") from None
    except OSError as exc:
        raise ConfigurationError(
            f"libfuse could not be loaded ({exc}): install fuse3 (Debian/Ubuntu: apt-get install fuse3).",
            name="libfuse",
        ) from None
    return mfusepy


def _fuse_class(mfusepy: Any) -> Any:
    """Mfusepy's ``FUSE`` with ``ftruncate`` given its open file's handle.

    mfusepy 3.1 drops the handle of a ``truncate`` on an open file, and with ``nullpath_ok`` libfuse gives no path
    either: ``ftruncate`` (SQLite, ``truncate -s`` on an open file) would fail with ``EBADF``.
    """

    class _Fuse(mfusepy.FUSE):  # type: ignore[misc]  # mfusepy is untyped
        def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:  # noqa: ARG002
            # One copy, from the cached block straight into the kernel's buffer (mfusepy copies bytes twice).
            data = self.operations.read_view(None, size, offset, fip.contents.fh)
            count = len(data)
            if count:
                if isinstance(data, memoryview) and not data.readonly:
                    ctypes.memmove(buf, (ctypes.c_char * count).from_buffer(data), count)
                else:
                    ctypes.memmove(buf, bytes(data), count)
            return count

        def readdir_fuse_3(  # noqa: PLR0917 - libfuse's signature
            self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int
        ) -> int:
            # readdirplus: each entry goes to the kernel with its attributes, so ``ls -l``, ``find`` and the opens
            # after a ``cat dir/*`` glob cost no lookup round trip per file. libfuse forwards the attributes only
            # for entries given with a non-zero offset (mfusepy gives 0), so every entry carries its position + 1
            # (plain readdir calls too, so the kernel sees one numbering) and a listing that fills the kernel's
            # buffer resumes at the offset the kernel asks for next (the open folder keeps its listing).
            name = None if path is None else path.decode(self.encoding, self.errors)
            items = self.operations.readdir(name, fip.contents.fh)
            for position in range(offset, len(items)):
                item, st, plus = items[position], None, 0
                if not isinstance(item, str):
                    item, attrs, _ = item
                    st = mfusepy.c_stat()
                    mfusepy.set_st_attrs(st, attrs, use_ns=True)
                    plus = _FUSE_FILL_DIR_PLUS if flags & _FUSE_READDIR_PLUS else 0
                if filler(buf, item.encode(self.encoding, self.errors), st, position + 1, plus):
                    break
            return 0

        def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
            fh = fip.contents.fh if fip else None
            name = None if path is None else path.decode(self.encoding, self.errors)
            result: int = self.operations.truncate(name, length, fh)
            return result

    return _Fuse


def _exit_with_stdin(mount_point: str) -> None:
    """Block until stdin closes (the process that started the mount has exited), then unmount."""
    with contextlib.suppress(OSError):
        while os.read(0, 4096):  # raw reads: a buffered stdin's lock would block interpreter shutdown
            pass
    if os.path.ismount(mount_point):
        _log.warning("the process that started the mount has exited; unmounting %s", mount_point)
        ok, _ = fusermount(mount_point)
        if not ok:
            fusermount(mount_point, lazy=True)


def serve(options: MountOptions) -> int:  # noqa: C901, PLR0915 - the mount's whole lifetime, in order
    """Mount and serve until unmounted; return the exit code.

    Raises:
        ConfigurationError: A bad option, or FUSE is not installed.
        DataAccessDeniedError: The identity may not list the mount root.
        DatastoreError: The container does not exist, or the mount failed.
    """
    env = JobEnvironment.from_environ()
    check_fuse()
    fusermount_binary = _fusermount_binary()
    mfusepy = _load_mfusepy(env)
    made_mount_point = options.mount_point is None
    mount_point = os.path.abspath(options.mount_point or tempfile.mkdtemp(prefix="aml-mount-"))
    clear_stale(mount_point)
    _check_mount_point(mount_point)

    made_cache = False
    cache_dir, cache_size = options.cache_dir, options.cache_size
    if cache_size is not None and cache_dir is None:
        cache_dir, made_cache = tempfile.mkdtemp(prefix="aml-mount-cache-"), True
    staging_dir = None
    if cache_dir is not None:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        if cache_size is None:
            cache_size = int(max(0, free_bytes(cache_dir) - RESERVED_FREE_DISK_BYTES) * DEFAULT_DISK_CACHE_FRACTION)
        staging_dir = os.path.join(cache_dir, "staging")

    credential = _credential(options)
    from aml_identity.datastore.resolve import resolve  # noqa: PLC0415 - keep the module light to import

    location = resolve(options.uri, credential=credential)
    check_outbound_url(location.endpoint, env, what="blob endpoint")
    context = ssl.create_default_context(cafile=env.ca_bundle) if env.ca_bundle else ssl.create_default_context()
    client = BlobRestClient(location.endpoint, BearerToken(credential), ssl_context=context)
    uri = str(location.uri)

    def ready() -> None:
        raise_read_ahead(mount_point)  # called during the kernel's init, before its reply fixes the read-ahead
        sys.stdout.write(f"{READY_PREFIX}{uri} at {mount_point} ({options.mode})\n")
        sys.stdout.flush()
        _log.info("mounted %s at %s (%s)", uri, mount_point, options.mode)

    fs = BlobFilesystem(
        client,
        account=location.account,
        container=location.container,
        prefix=location.path,
        mode=options.mode,
        cache_dir=os.path.join(cache_dir, "blocks") if cache_dir is not None else None,
        cache_size=cache_size,
        staging_dir=staging_dir,
        attr_timeout=options.attr_timeout,
        on_ready=ready,
    )
    try:
        fs.check_access()
        if options.exit_with_stdin:
            threading.Thread(target=_exit_with_stdin, args=(mount_point,), name="aml-mount-parent", daemon=True).start()
        fuse_options: dict[str, object] = {
            "foreground": True,
            "fsname": f"aml-identity:{location.account}/{location.container}".replace(",", "_"),
            "subtype": "aml-identity",
            # fusermount3 stays as a watchdog and unmounts if this process dies (kill -9, OOM): no dead mount
            # point ("Transport endpoint is not connected") is left for the user to clear.
            "auto_unmount": True,
        }
        if options.mode == "ro":
            fuse_options["ro"] = True
        try:
            _fuse_class(mfusepy)(fs, mount_point, **fuse_options)
        except RuntimeError as exc:
            # libfuse returns non-zero after SIGTERM/SIGINT (mfusepy raises RuntimeError(8)); it has unmounted.
            if fs.ready and not os.path.ismount(mount_point):
                _log.info("%s unmounted after a signal", mount_point)
            else:
                raise DatastoreError(
                    f"Could not mount {uri} at {mount_point}: libfuse failed ({exc}); see the messages above. Check "
                    f"that {fusermount_binary} works for this user and that /dev/fuse is accessible."
                ) from None
        _log.info("unmounted %s", mount_point)
        return 0
    finally:
        fs.close()
        if made_cache and cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)
        if made_mount_point:
            with contextlib.suppress(OSError):
                os.rmdir(mount_point)
