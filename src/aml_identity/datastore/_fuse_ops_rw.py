"""The ``rw`` half of a mount's operations table: writing files, links, folders, renames and deletes.

Blob storage has no folders, no rename and no links: folders made here are virtual until a file is written in
them, a rename writes the new blob before deleting the old one, and a symbolic link is a blob with metadata
``is_symlink=true`` whose content is the target (blobfuse2's convention, so either tool reads the other's links).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time

from aml_identity.datastore._fuse_core import MountCore
from aml_identity.datastore._fuse_errors import os_error
from aml_identity.datastore._fuse_tree import SYMLINK_METADATA, Entry, split
from aml_identity.datastore._fuse_write import Staged, Writer
from aml_identity.datastore._rest import StorageHttpError

__all__ = ["WriteOperations"]

# The longest symbolic link target accepted (Linux's PATH_MAX).
_MAX_LINK_TARGET = 4096


class WriteOperations(MountCore):
    """The operations that change the tree (each fails with ``EROFS`` on a read-only mount)."""

    def chmod(self, path: str | None, mode: int) -> int:
        """Accepted and ignored in ``rw`` (blobs have no permission bits)."""
        self._require_rw()
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        """Accepted and ignored in ``rw``."""
        self._require_rw()
        return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        """Accepted and ignored in ``rw`` (``touch``, ``cp -p``); a blob's time is its last write."""
        self._require_rw()
        return 0

    def _new_entry(self, path: str | None) -> str:
        """Check that ``path`` may be made (``rw``, nothing there yet, its parent a folder) and return it."""
        self._require_rw()
        if path is None:
            raise os_error(errno.ENOENT)
        if self._lookup_or_none(path) is not None:
            raise os_error(errno.EEXIST)
        self._require_folder(split(path)[0])
        return path

    # -- symbolic links ----------------------------------------------------------------------------------

    def symlink(self, path: str | None, target: str) -> int:
        """Make a symbolic link (``rw``): a blob with metadata ``is_symlink=true`` holding the target."""
        path = self._new_entry(path)
        content = target.encode("utf-8", "surrogateescape")
        if len(content) >= _MAX_LINK_TARGET:
            raise os_error(errno.ENAMETOOLONG)
        blob = self._tree.blob(path)
        try:
            self.client.put_blob(
                self.container, blob, content, length=len(content), metadata={SYMLINK_METADATA: "true"}, overwrite=True
            )
        except StorageHttpError as exc:
            raise self._errors.fail(exc, "write", blob) from None
        self._tree.note(path, Entry(is_dir=False, size=len(content), mtime=time.time(), is_link=True))
        return 0

    # -- writing ---------------------------------------------------------------------------------------

    def _stage(self, path: str, *, truncate: bool, create: bool = False) -> Staged:
        """Return the staging file of ``path`` (made, and filled with the blob's content, if needed), +1 ref."""
        fill = None if truncate or create else self._fill
        staged, fresh = self._staging.stage(path, self._tree.blob(path), fill=fill)
        if (truncate or create) and not fresh:
            try:
                self._staging.truncate(staged, 0)
            except BaseException:
                self._staging.drop_ref(staged)
                raise
        return staged

    def _fill(self, staged: Staged) -> None:
        """Copy an existing blob's content into a fresh staging file (to modify it in place)."""
        entry = self._remote_or_none(staged.path)
        if entry is None:
            staged.dirty = True  # a new file
            return
        if entry.is_dir:
            raise os_error(errno.EISDIR)
        self._fill_fd(staged.fd, staged.path, entry)

    def create(self, path: str | None, mode: int, flags: int | None = None) -> int:
        """Create a new file (``rw``): staged locally, in storage once closed."""
        self._require_rw()
        if path is None:
            raise os_error(errno.ENOENT)
        self._require_folder(split(path)[0])
        self._tree.blob(path)  # name length
        return self._new_fh(Writer(self._stage(path, truncate=False, create=True), writable=True))

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        """Write to the staging file (the blocks the writer has gone past are sent meanwhile)."""
        handle = self._handles.get(fh)
        if not isinstance(handle, Writer) or not handle.writable:
            raise os_error(errno.EBADF)
        return self._staging.write(handle.staged, data, offset)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        """Truncate (``rw``): the staging file of an open file, else the blob (download, truncate, upload)."""
        self._require_rw()
        handle = self._handles.get(fh) if fh else None
        staged = handle.staged if isinstance(handle, Writer) else None
        if staged is None and path is not None:
            staged = self._staging.get(path)
        if staged is not None:
            self._staging.truncate(staged, length)
            return 0
        if path is None:
            raise os_error(errno.EBADF)
        fresh = self._stage(path, truncate=length == 0)
        try:
            self._staging.truncate(fresh, length)
            self._commit(fresh)
        finally:
            self._staging.drop_ref(fresh)
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        """A descriptor was closed: commit what it wrote (so ``close()`` reports a failed upload)."""
        handle = self._handles.get(fh)
        if isinstance(handle, Writer) and handle.writable:
            self._commit(handle.staged)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        """Commit the file's content now; return once storage holds it."""
        return self.flush(path, fh)

    # -- namespace changes -----------------------------------------------------------------------------

    def unlink(self, path: str | None) -> int:
        """Delete a file (``rw``). A file still open stays readable and writable there, but is never uploaded."""
        self._require_rw()
        if path is None:
            raise os_error(errno.ENOENT)
        staged = self._staging.forget(path)
        entry = self._remote_or_none(path)
        if entry is not None and entry.is_dir:
            raise os_error(errno.EISDIR)
        if entry is None and staged is None:
            raise os_error(errno.ENOENT)
        if entry is not None:
            with contextlib.suppress(FileNotFoundError):
                self._delete(self._tree.blob(path))
        self._tree.note(path, None)
        return 0

    def mkdir(self, path: str | None, mode: int) -> int:
        """Make a folder (``rw``): virtual until a file is written in it (blob storage has no folders)."""
        path = self._new_entry(path)
        self._tree.blob(path)
        self._tree.add_virtual(path)
        return 0

    def rmdir(self, path: str | None) -> int:
        """Remove an empty folder (``rw``)."""
        self._require_rw()
        if path is None or path == "/":
            raise os_error(errno.EBUSY if path == "/" else errno.ENOENT)
        self._require_folder(path)
        self._tree.invalidate(path)
        if self._tree.list_or_fail(path) or self._local_children(path):
            raise os_error(errno.ENOTEMPTY)
        self._tree.discard_virtual(path)
        if self._remote_or_none(path) is not None:  # an ADLS Gen2 folder placeholder blob
            with contextlib.suppress(FileNotFoundError):
                self._delete(self._tree.blob(path))
        self._tree.note(path, None)
        return 0

    def rename(self, old: str | None, new: str | None) -> int:
        """Rename a file (``rw``): the new blob is written first, then the old one deleted (never neither).

        The data is copied through this mount (blob storage has no rename). A folder can be renamed only while
        it is empty and was made through this mount; otherwise ``EXDEV`` tells ``mv`` to copy and delete.
        """
        self._require_rw()
        if old is None or new is None:
            raise os_error(errno.ENOENT)
        source = self._lookup(old)
        target = self._lookup_or_none(new)
        if source.is_dir:
            return self._rename_dir(old, new, target)
        if target is not None and target.is_dir:
            raise os_error(errno.EISDIR)
        staged = self._staging.move(old, new, self._tree.blob(new))
        if staged is not None:  # open for writing: committed under its new name
            self._commit(staged)
        else:
            self._copy(old, new, source)
        remote_old = self._remote_or_none(old)
        if remote_old is not None and not remote_old.is_dir:
            with contextlib.suppress(FileNotFoundError):
                self._delete(self._tree.blob(old))
        self._tree.note(old, None)
        return 0

    def _copy(self, old: str, new: str, source: Entry) -> None:
        """Write blob ``new`` with the content (and link-ness) of blob ``old``, through a private staging file."""
        fd, file = tempfile.mkstemp(prefix="copy-", dir=self._staging.directory())
        try:
            size = self._fill_fd(fd, old, source)
            blob = self._tree.blob(new)
            metadata = {SYMLINK_METADATA: "true"} if source.is_link else {}
            try:
                self._staging.upload(blob, fd, size, metadata)
            except StorageHttpError as exc:
                raise self._errors.fail(exc, "write", blob) from None
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(file)
        self._tree.note(new, Entry(is_dir=False, size=size, mtime=time.time(), is_link=source.is_link))

    def _rename_dir(self, old: str, new: str, target: Entry | None) -> int:
        if not self._tree.is_virtual(old) or target is not None or self._local_children(old):
            raise os_error(errno.EXDEV)
        if self._tree.list_or_fail(old):
            raise os_error(errno.EXDEV)
        self._tree.discard_virtual(old)
        self._tree.add_virtual(new)
        return 0
