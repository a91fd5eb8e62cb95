"""Blob listings as fsspec sees them: the info dicts of files and folders under a prefix.

Part of :mod:`aml_identity.fsspec`, which runs these in its worker threads over a :class:`Store`. Blob storage
has no folders: they are the prefixes between ``/``, the placeholder blobs named like a folder, and the ADLS
Gen2 (``hdi_isfolder``) markers, and each is listed once.
"""

from __future__ import annotations

from typing import Any

from aml_identity._fsspec_store import Store, blob_info

__all__ = ["directory_info", "join_path", "list_level", "list_tree"]


def join_path(root: str, blob: str) -> str:
    """``root/blob``, or ``root`` for the root itself."""
    return f"{root}/{blob}" if blob else root


def directory_info(name: str, mtime: float | None = None) -> dict[str, Any]:
    """The fsspec info dict of a directory."""
    info: dict[str, Any] = {"name": name, "size": 0, "type": "directory"}
    if mtime is not None:
        info["mtime"] = mtime
    return info


def list_level(store: Store, root: str, prefix: str) -> list[dict[str, Any]]:
    """The entries directly under ``prefix`` (one delimited listing), as fsspec info dicts sorted by name."""
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    for page in store.iter_pages(prefix, delimited=True):
        for item in page.blobs:
            relative = item.name[len(prefix) :]
            if not relative.rstrip("/"):
                continue  # a placeholder blob named like the folder itself
            if relative.endswith("/"):
                name = join_path(root, item.name.rstrip("/"))
                entries.setdefault((name, "directory"), directory_info(name, item.last_modified))
                continue
            info = blob_info(join_path(root, item.name), item)
            entries[info["name"], info["type"]] = info
        for sub in page.prefixes:
            name = join_path(root, sub.rstrip("/"))
            if sub.rstrip("/") != prefix.rstrip("/"):
                entries.setdefault((name, "directory"), directory_info(name))
    return sorted(entries.values(), key=lambda info: info["name"])


def list_tree(store: Store, root: str, base: str, prefix: str, *, withdirs: bool) -> dict[str, dict[str, Any]]:
    """Every blob under ``base + prefix`` (one flat listing) by name; with ``withdirs``, the folders too."""
    out: dict[str, dict[str, Any]] = {}
    dirs: dict[str, float | None] = {}
    for page in store.iter_pages(base + prefix, delimited=False):
        for item in page.blobs:
            relative = item.name[len(base) :].rstrip("/")
            if not relative:
                continue
            parts = relative.split("/")
            for depth in range(1, len(parts)):
                dirs.setdefault("/".join(parts[:depth]), None)
            if item.name.endswith("/") or item.is_directory_marker:
                dirs[relative] = item.last_modified
                continue
            out[join_path(root, item.name)] = blob_info(join_path(root, item.name), item)
    if withdirs:
        for relative, mtime in dirs.items():
            name = join_path(root, base + relative)
            out.setdefault(name, directory_info(name, mtime))
    return out
