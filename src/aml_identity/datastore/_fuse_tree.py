"""A mount's namespace: folders synthesized from blob-name prefixes, with a bounded, timed listing cache.

A folder lists with one delimited List Blobs call per 5,000 entries, and the answer is cached for
``attr_timeout`` seconds (see :data:`ATTR_CACHE_TTL_S`); a lookup is answered from its parent's listing. Changes
made through the mount are noted in the cached listings, and folders made with ``mkdir`` stay virtual (blob
storage has no folders) until a file is written in them.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aml_identity.datastore._fuse_errors import StorageErrors, os_error
from aml_identity.datastore._rest import BlobRestClient, StorageHttpError

__all__ = ["ATTR_CACHE_TTL_S", "MAX_BLOB_NAME", "MAX_CACHED_ENTRIES", "SYMLINK_METADATA", "Entry", "Namespace"]

_log = logging.getLogger("aml_identity.mount")

# How long a directory listing (and so a file's size and ETag) is trusted. Azure ML's mount trusts it forever
# by default and users then read stale listings; blobfuse2 uses 120 s. Training data rarely changes during a
# job, so a minute costs at most one listing request per directory per minute, while files written by others
# show up within a minute. The kernel caches attributes for the same time.
ATTR_CACHE_TTL_S = 60.0
# Listing entries kept in memory across all cached folders (~300 bytes each: ~75 MB). Least recently used
# folders are dropped beyond it (the folder just listed is always kept); blobfuse2 bounds its attribute cache too.
MAX_CACHED_ENTRIES = 250_000
# The longest blob name the service accepts; longer paths fail with ENAMETOOLONG before any request.
MAX_BLOB_NAME = 1024
# blobfuse2's convention for a symbolic link: a blob with this metadata key set to "true", the target as content.
SYMLINK_METADATA = "is_symlink"


@dataclass(frozen=True)
class Entry:
    """A name in a folder: a folder, a file, or a symbolic link.

    Attributes:
        is_dir: A folder.
        size: The content's length (a link's: its target's).
        etag: The blob's ETag; None when written through this mount and not known yet (asked for on open).
        mtime: Last modified, epoch seconds.
        is_link: A symbolic link (blob metadata ``is_symlink=true``).
    """

    is_dir: bool
    size: int = 0
    etag: str | None = None
    mtime: float = 0.0
    is_link: bool = False


@dataclass
class _Listing:
    entries: dict[str, Entry]
    fetched_at: float


def _valid_name(name: str) -> bool:
    """Whether a listed name (relative to its folder) can be a POSIX file name."""
    return bool(name) and "/" not in name and name not in (".", "..")


def split(path: str) -> tuple[str, str]:
    """Return a path's parent folder and its name."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return parent or "/", name


class Namespace:
    """The listing cache and virtual folders of one mount (thread-safe).

    Args:
        client: The REST client.
        container: The container.
        prefix: The blob-name prefix that is the mount root (``""`` or ending in ``/``).
        errors: Converts failed requests to errnos.
        attr_timeout: Seconds a listing is trusted.
        clock: A monotonic clock (injected by tests).
    """

    def __init__(
        self,
        client: BlobRestClient,
        *,
        container: str,
        prefix: str,
        errors: StorageErrors,
        attr_timeout: float = ATTR_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create an empty namespace (nothing is listed until asked)."""
        self.client = client
        self.container = container
        self.prefix = prefix
        self.attr_timeout = attr_timeout
        self.started = time.time()
        self._errors = errors
        self._clock = clock
        self._listings: OrderedDict[str, _Listing] = OrderedDict()
        self._cached_entries = 0
        self._dir_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._virtual_dirs: set[str] = set()

    def blob(self, path: str) -> str:
        """Return the blob name of a mount path (``ENAMETOOLONG`` beyond the service's limit)."""
        name = self.prefix + path.lstrip("/")
        if len(name) > MAX_BLOB_NAME:
            raise os_error(errno.ENAMETOOLONG)
        return name

    def folder_entry(self) -> Entry:
        """The entry of a folder (folders have no time of their own: the mount's start)."""
        return Entry(is_dir=True, mtime=self.started)

    # -- listings ----------------------------------------------------------------------------------------

    def list_dir(self, path: str) -> dict[str, Entry]:
        """Return the folder's entries from storage (cached for ``attr_timeout``), without local changes.

        Raises:
            StorageHttpError: The listing failed.
        """
        with self._lock:
            cached = self._listings.get(path)
            if cached is not None and self._clock() - cached.fetched_at < self.attr_timeout:
                self._listings.move_to_end(path)
                return cached.entries
            dir_lock = self._dir_locks.setdefault(path, threading.Lock())
        with dir_lock:  # one listing per directory at a time; the others wait for it
            with self._lock:
                cached = self._listings.get(path)
                if cached is not None and self._clock() - cached.fetched_at < self.attr_timeout:
                    return cached.entries
            started = self._clock()
            entries = self._fetch(self.prefix if path == "/" else self.blob(path) + "/")
            with self._lock:
                self._store(path, _Listing(entries, started))
            return entries

    def list_or_fail(self, path: str) -> dict[str, Entry]:
        """:meth:`list_dir`, a failure being the errno for it."""
        try:
            return self.list_dir(path)
        except StorageHttpError as exc:
            raise self._errors.fail(exc, "list", path) from None

    def _store(self, path: str, listing: _Listing) -> None:
        """Cache a listing, dropping the least recently used ones beyond MAX_CACHED_ENTRIES (lock held)."""
        old = self._listings.pop(path, None)
        if old is not None:
            self._cached_entries -= len(old.entries)
        self._listings[path] = listing
        self._cached_entries += len(listing.entries)
        while self._cached_entries > MAX_CACHED_ENTRIES and len(self._listings) > 1:
            _, dropped = self._listings.popitem(last=False)
            self._cached_entries -= len(dropped.entries)

    def _fetch(self, prefix: str) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        dirs: set[str] = set()
        marker: str | None = None
        while True:
            page = self.client.list_folder_page(self.container, prefix, marker)
            for item in page.blobs:
                name = item.name[len(prefix) :]
                if not _valid_name(name):
                    continue  # a "folder/" placeholder blob, or a name no POSIX path can spell
                if item.is_directory_marker:
                    dirs.add(name)
                else:
                    link = item.metadata.get(SYMLINK_METADATA, "").lower() == "true"
                    entries[name] = Entry(
                        is_dir=False, size=item.size, etag=item.etag, mtime=item.last_modified, is_link=link
                    )
            for full in page.prefixes:
                name = full[len(prefix) :].rstrip("/")
                if _valid_name(name):
                    dirs.add(name)
            marker = page.marker
            if not marker:
                break
        for name in dirs:
            if name in entries:
                _log.warning("%s%s is both a blob and a folder; showing the folder", prefix, name)
            entries[name] = self.folder_entry()
        return entries

    def note(self, path: str, entry: Entry | None) -> None:
        """Record a change made through this mount in the cached listing of its parent (if cached)."""
        parent, name = split(path)
        with self._lock:
            listing = self._listings.get(parent)
            if listing is None:
                return
            entries = dict(listing.entries)
            if entry is None:
                entries.pop(name, None)
            else:
                entries[name] = entry
            self._cached_entries += len(entries) - len(listing.entries)
            listing.entries = entries

    def invalidate(self, path: str) -> None:
        """Forget the cached listing of folder ``path``."""
        with self._lock:
            dropped = self._listings.pop(path, None)
            if dropped is not None:
                self._cached_entries -= len(dropped.entries)

    def lookup_remote(self, path: str) -> Entry:
        """Look ``path`` up in storage only (ignoring files being written through this mount).

        Raises:
            OSError: ``ENOENT`` (not there), or the errno of a failed listing.
        """
        if path == "/":
            return self.folder_entry()
        parent, name = split(path)
        entry = self.list_or_fail(parent).get(name)
        if entry is None:
            raise os_error(errno.ENOENT)
        return entry

    # -- folders made through this mount ---------------------------------------------------------------------

    def add_virtual(self, path: str) -> None:
        """Show folder ``path`` (made with ``mkdir``) until it is removed."""
        with self._lock:
            self._virtual_dirs.add(path)

    def discard_virtual(self, path: str) -> bool:
        """Stop showing the virtual folder ``path``; return whether it was one."""
        with self._lock:
            was = path in self._virtual_dirs
            self._virtual_dirs.discard(path)
            return was

    def is_virtual(self, path: str) -> bool:
        """Whether ``path`` is a folder made through this mount."""
        with self._lock:
            return path in self._virtual_dirs

    def virtual_children(self, path: str) -> dict[str, Entry]:
        """The folders made through this mount directly in ``path``."""
        base = "/" if path == "/" else path.rstrip("/")
        with self._lock:
            virtual = list(self._virtual_dirs)
        found = {}
        for each in virtual:
            parent, name = split(each)
            if parent == base:
                found[name] = self.folder_entry()
        return found
