"""Map blob names to local paths safely, and name the partial files and journals of a download."""

from __future__ import annotations

import os
from pathlib import Path

from aml_identity.errors import TransferError

__all__ = [
    "JOURNAL_SUFFIX",
    "PARTIAL_SUFFIX",
    "ensure_parent",
    "is_transfer_artifact",
    "local_path_for",
    "partial_path",
]

# A download writes `<dir>/.<name>.aml-partial` and renames it to `<dir>/<name>` once verified; a file
# fetched in several ranges also keeps `<dir>/.<name>.aml-partial.journal`, the ranges already on disk.
PARTIAL_SUFFIX = ".aml-partial"
JOURNAL_SUFFIX = ".aml-partial.journal"


def partial_path(final: str) -> str:
    """Return the partial file path that is renamed to ``final`` once complete."""
    head, tail = os.path.split(final)
    return os.path.join(head, f".{tail}{PARTIAL_SUFFIX}")


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
