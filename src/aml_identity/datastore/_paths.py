"""Map blob names to local paths safely, and name the partial files and journals of a download.

A download writes ``<dir>/.<name>.<host>.aml-partial`` and renames it to ``<dir>/<name>`` once verified; a
file fetched in several ranges also keeps ``<dir>/.<name>.<host>.aml-partial.journal``, the ranges already on
disk. ``<host>`` is a short tag of this machine's host name, so downloaders on different nodes that share a
destination folder (NFS, a shared mount) never write the same partial file. On one host, a process holds an
exclusive ``flock`` on the partial file while it writes it: a second process downloading the same file at the
same time finds it locked and writes its own ``<dir>/.<name>.<host>-<pid>-<n>.aml-partial`` instead. The kernel
drops the lock when a process dies, however it dies, so the next download on the node takes the partial file
over and resumes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import itertools
import os
import socket
from pathlib import Path
from typing import Literal

from aml_identity.errors import TransferError

__all__ = [
    "JOURNAL_SUFFIX",
    "PARTIAL_SUFFIX",
    "ClaimedPartial",
    "claim_partial",
    "ensure_parent",
    "is_transfer_artifact",
    "journal_path",
    "local_path_for",
    "partial_path",
    "remove_stale_partial",
]

PARTIAL_SUFFIX = ".aml-partial"
JOURNAL_SUFFIX = ".aml-partial.journal"
# Hex digits of the host name's hash in partial names: short (a long blob name must still fit in the 255 bytes
# of a file name) yet enough that two nodes sharing a folder practically never get the same tag.
_HOST_TAG_HEX = 10
# Times to retry taking the host's partial file when its owner renamed it to the final name between our open
# and our lock (each retry means another process just finished the same file: a few are plenty).
_CLAIM_ATTEMPTS = 3
# Process-unique partial names: a counter per process (next() on it is atomic under the GIL).
_private_names = itertools.count(1)
# flock errors that mean the file system cannot lock at all (some FUSE file systems, NFS without a lock daemon).
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


@functools.cache
def host_tag() -> str:
    """Return this host's tag in partial file names (a short hash of the host name)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:_HOST_TAG_HEX]


def partial_path(final: str, owner: str | None = None) -> str:
    """Return the partial file path that is renamed to ``final`` once complete.

    Args:
        final: The file's final path.
        owner: The tag in the name (this host's when omitted).
    """
    head, tail = os.path.split(final)
    return os.path.join(head, f".{tail}.{owner or host_tag()}{PARTIAL_SUFFIX}")


def journal_path(partial: str) -> str:
    """Return the resume journal's path of a partial file."""
    return partial[: -len(PARTIAL_SUFFIX)] + JOURNAL_SUFFIX


class ClaimedPartial:
    """A partial file this process holds an exclusive lock on, open for writing.

    Attributes:
        path: The partial file.
        fd: Its descriptor (write with ``os.pwrite``); closing it releases the lock.
        private: True for a process-unique name (another process on this host held the host's partial file),
            which no later download resumes.
    """

    def __init__(self, path: str, fd: int, *, private: bool) -> None:
        """Hold ``fd`` (already locked) for ``path``."""
        self.path = path
        self.fd: int | None = fd
        self.private = private

    def release(self) -> None:
        """Close the descriptor, which releases the lock (idempotent)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def discard(self) -> None:
        """Release a private partial file and delete it and its journal: nothing would ever resume them."""
        self.release()
        if self.private:
            for path in (self.path, journal_path(self.path)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def _try_lock(path: str, flags: int) -> int | Literal["busy", "moved"]:
    """Open ``path`` and take an exclusive lock on it without waiting.

    Returns:
        The locked descriptor; ``"busy"`` when another process holds the lock; ``"moved"`` when the file was
        renamed away (to its final name) between the open and the lock. A file system without locks gives an
        unlocked descriptor: the partial file is then only this host's, as on a local disk without locks.

    Raises:
        OSError: The file cannot be created.
    """
    fd = os.open(path, flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _NO_LOCKS:
            return fd
        os.close(fd)
        if exc.errno in {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}:
            return "busy"
        raise
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return "moved"
    return fd


def claim_partial(final: str) -> ClaimedPartial:
    """Open and lock the partial file for ``final``: this host's, or a process-unique one when it is busy.

    The host's partial file is opened without truncating it, so that the caller can resume what it holds.

    Raises:
        OSError: The partial file cannot be created.
    """
    path = partial_path(final)
    for _ in range(_CLAIM_ATTEMPTS):
        claimed = _try_lock(path, os.O_WRONLY | os.O_CREAT)
        if claimed == "busy":
            break  # another process on this host is writing it right now
        if claimed != "moved":
            return ClaimedPartial(path, claimed, private=False)
    while True:  # a name nobody else uses: "busy" or "moved" cannot happen, unless a stale file had the name
        private = partial_path(final, f"{host_tag()}-{os.getpid()}-{next(_private_names)}")
        claimed = _try_lock(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        if not isinstance(claimed, str):
            return ClaimedPartial(private, claimed, private=True)


def remove_stale_partial(final: str) -> None:
    """Delete this host's partial file and journal for ``final`` unless a live process is writing them.

    For a file found up to date: a process killed while another one finished the same file left them.
    """
    path = partial_path(final)
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(journal_path(path))  # a kill between the rename and the journal's removal left it
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            for stale in (path, journal_path(path)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stale)
    except OSError:
        pass  # busy (a live writer), renamed meanwhile, or no locks here: leave it
    finally:
        os.close(fd)


def is_transfer_artifact(name: str) -> bool:
    """Whether a local file name is one of our partial files or journals (never uploaded)."""
    return name.startswith(".") and (name.endswith((PARTIAL_SUFFIX, JOURNAL_SUFFIX)))


def local_path_for(dest: str, relative: str, blob_name: str) -> str:
    """Return where the blob ``blob_name`` (``relative`` to the downloaded prefix) goes under ``dest``.

    Args:
        dest: The absolute destination folder.
        relative: The blob name with the URI's prefix removed.
        blob_name: The full blob name, for the error message.

    Returns:
        An absolute path inside ``dest``.

    Raises:
        TransferError: The name is absolute or has empty, ``.`` or ``..`` segments, so it would land
            outside ``dest`` or somewhere other than its name says; nothing has been written for it.
    """
    segments = relative.split("/")
    bad = (
        relative.startswith("/")
        or "\\" in relative
        or "\x00" in relative
        or any(segment in ("", ".", "..") for segment in segments)
    )
    if not bad:
        path = os.path.join(dest, *segments)
        if os.path.commonpath([dest, os.path.normpath(path)]) == dest:
            return path
    raise TransferError(
        f"Refusing blob {blob_name!r}: its name is absolute or contains '', '.' or '..' segments (or a "
        f"backslash), so it would be written outside {dest!r} or under another name. Nothing was written "
        "for it. Rename the blob in storage, or download a narrower prefix that does not include it."
    )


def ensure_parent(path: str, created: set[str]) -> None:
    """Create ``path``'s parent folders once per transfer (``created`` remembers which exist)."""
    parent = os.path.dirname(path)
    if parent not in created:
        Path(parent).mkdir(parents=True, exist_ok=True)
        created.add(parent)
