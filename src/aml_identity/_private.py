"""The one safety check for private directories and files (token cache, once-per-node lock folder).

A directory that holds tokens or single-flight locks must belong to this user and be writable by no one
else, and must not be reached through a symlink: anyone who could plant or swap a file in it could feed
another user's job a token or block its downloads.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import TYPE_CHECKING

from aml_identity.errors import AmlIdentityError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["UnsafeCacheError", "check_owned_private", "ensure_private_dir"]

# Group/other permission bits that make a private directory unsafe (anyone else could plant or swap files).
UNSAFE_DIR_BITS = stat.S_IWGRP | stat.S_IWOTH
# Any group/other bit on a private file is refused: the file holds a bearer token.
UNSAFE_FILE_BITS = stat.S_IRWXG | stat.S_IRWXO


class UnsafeCacheError(AmlIdentityError):
    """A private directory or a file in it is not safe to use; the message says why."""


def check_owned_private(st: os.stat_result, path: Path, *, is_dir: bool, uid: int, what: str = "cache") -> None:
    """Raise :class:`UnsafeCacheError` unless ``st`` (of ``path``) is owned by ``uid`` and private.

    Args:
        st: The ``stat`` result of ``path``.
        path: The directory or file, for the message.
        is_dir: Whether it is a directory (not group/world-writable) or a file (mode 0600).
        uid: The user who must own it.
        what: What it is, for the message (``"cache"``, ``"lock"``).
    """
    kind = "directory" if is_dir else "file"
    if st.st_uid != uid:
        raise UnsafeCacheError(f"{what} {kind} {path} is owned by uid {st.st_uid}, not by this user ({uid})")
    bad = UNSAFE_DIR_BITS if is_dir else UNSAFE_FILE_BITS
    if st.st_mode & bad:
        mode = stat.S_IMODE(st.st_mode)
        want = "not group/world-writable" if is_dir else "mode 0600"
        raise UnsafeCacheError(f"{what} {kind} {path} has mode {mode:04o}; it must be {want}")


def ensure_private_dir(directory: Path, *, uid: int, what: str = "cache") -> None:
    """Create ``directory`` if needed (mode 0700, parents too) and check that it is safe to use.

    Args:
        directory: The directory.
        uid: The user who must own it.
        what: What it is, for the message (``"cache"``, ``"lock"``).

    Raises:
        UnsafeCacheError: It is a symlink, not a directory, owned by someone else, or group/world-writable.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    st = directory.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeCacheError(f"{what} directory {directory} is a symlink (to {directory.readlink()})")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeCacheError(f"{what} path {directory} is not a directory")
    check_owned_private(st, directory, is_dir=True, uid=uid, what=what)
