"""The Blob service calls behind the ``azureml`` fsspec protocol, on the package's storage engine.

Everything here is synchronous and runs either in the file system's worker threads (behind its async API)
or in the caller's thread (an open file's reads). Requests go through :class:`BlobRestClient`, so the token
(the job credential's node-wide cache), retries and connection pooling are the ones every other part of
aml-identity uses. Service errors become the exceptions fsspec's contract names (``FileNotFoundError``,
``FileExistsError``) or, for access and token problems, the aml-identity error that names the identity, the
account and the role to grant.
"""

from __future__ import annotations

import errno
import http.client
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from aml_identity.datastore._errors import Operation, convert_storage_error
from aml_identity.datastore._rest import LIST_PAGE_SIZE, BlobItem, BlobRestClient, StorageHttpError, parse_listing

__all__ = ["FOLDER_METADATA", "Listing", "Store", "blob_info", "storage_error"]

# The metadata that marks a zero-length blob as a folder: what ADLS Gen2 (hierarchical namespace) shows through
# the blob API, and what Azure tools and the aml-identity mount read as an (empty) directory.
FOLDER_METADATA = {"hdi_isfolder": "true"}
# Storage codes that mean "a blob is already there" for a conditional create (If-None-Match: *).
_EXISTS_CODES = frozenset({"BlobAlreadyExists", "ConditionNotMet"})
# Bodies move between a socket and a local file through one buffer this size (the engine's per-worker size).
COPY_BUFFER_SIZE = 1024 * 1024


def storage_error(error: StorageHttpError, store: Store, path: str, operation: Operation) -> Exception:
    """Return the exception a caller of fsspec expects for a failed request on ``path``."""
    if error.status == 404 and error.code != "ContainerNotFound":  # noqa: PLR2004 - HTTP status
        return FileNotFoundError(errno.ENOENT, "No such file or directory in storage", path)
    if operation == "write" and error.status in (409, 412) and error.code in _EXISTS_CODES:
        return FileExistsError(errno.EEXIST, "A blob already exists there", path)
    converted = convert_storage_error(
        error, account=store.account, container=store.container, operation=operation, token=store.client.token
    )
    if error.status == 404:  # noqa: PLR2004 - the container is missing: still "not found" to fsspec callers
        return FileNotFoundError(errno.ENOENT, str(converted), path)
    return converted


@dataclass
class Listing:
    """One level (or, flat, every level) of blobs under a prefix.

    Attributes:
        blobs: The blobs, names relative to the container.
        prefixes: The "sub-folders" (delimited listings only), container-relative, with a trailing ``/``.
    """

    blobs: list[BlobItem]
    prefixes: list[str]


def blob_info(name: str, item: BlobItem) -> dict[str, Any]:
    """Return fsspec's ``info`` dictionary for a listed blob shown under ``name``."""
    if item.is_directory_marker:
        return {"name": name, "size": 0, "type": "directory", "mtime": item.last_modified}
    return {"name": name, "size": item.size, "type": "file", "mtime": item.last_modified, "etag": item.etag}


@dataclass(frozen=True)
class Store:
    """One container, and the client that reaches its account.

    Attributes:
        client: The REST client of the container's account (shared by every container of the account).
        account: The storage account (for messages).
        container: The container (an ADLS Gen2 filesystem is a container to the blob API).
    """

    client: BlobRestClient
    account: str
    container: str

    def _resource(self, blob: str) -> str:
        return f"{self.container}/{blob}"

    def head(self, blob: str) -> dict[str, Any] | None:
        """Return a blob's properties (``size``, ``mtime``, ``etag``, ``folder``), or ``None`` when it is absent."""
        from aml_identity.datastore._rest import _http_date  # noqa: PLC0415 - the engine's cached date parser

        def read(response: http.client.HTTPResponse) -> dict[str, Any]:
            return {
                "size": int(response.getheader("Content-Length") or 0),
                "mtime": _http_date(response.getheader("Last-Modified") or ""),
                "etag": (response.getheader("ETag") or "").strip('"'),
                "folder": (response.getheader("x-ms-meta-hdi_isfolder") or "").lower() == "true",
            }

        try:
            found: dict[str, Any] = self.client.request(  # type: ignore[assignment]  # on_response given
                "HEAD", self.client.blob_path(self.container, blob), on_response=read, resource=self._resource(blob)
            )
        except StorageHttpError as exc:
            if exc.status == 404 and exc.code != "ContainerNotFound":  # noqa: PLR2004 - HTTP status
                return None
            raise storage_error(exc, self, blob, "read") from None
        return found

    def list_page(
        self, prefix: str, marker: str | None, *, delimited: bool, max_results: int = LIST_PAGE_SIZE
    ) -> tuple[Listing, str | None]:
        """List one page of blobs (and, ``delimited``, sub-folders) under ``prefix``; return it and the next marker."""
        query = f"?restype=container&comp=list&include=metadata&maxresults={max_results}"
        if delimited:
            query += "&delimiter=%2F"
        if prefix:
            query += "&prefix=" + quote(prefix, safe="")
        if marker:
            query += "&marker=" + quote(marker, safe="")
        try:
            body = self.client.request(
                "GET", self.client.blob_path(self.container) + query, resource=self._resource(prefix)
            )
        except StorageHttpError as exc:
            raise storage_error(exc, self, prefix, "list") from None
        assert isinstance(body, bytes)  # noqa: S101 - no reader given, so the body
        blobs, next_marker = parse_listing(body)
        prefixes: list[str] = []
        if b"<BlobPrefix>" in body:
            for element in ET.fromstring(body).iter("BlobPrefix"):  # noqa: S314 - the service's own listing
                name_el = element.find("Name")
                if name_el is not None and name_el.text:
                    text = name_el.text
                    prefixes.append(unquote(text) if name_el.get("Encoded") == "true" else text)
        return Listing(blobs, prefixes), next_marker

    def iter_pages(self, prefix: str, *, delimited: bool) -> Iterator[Listing]:
        """Yield every page of the listing under ``prefix``."""
        marker: str | None = None
        while True:
            page, marker = self.list_page(prefix, marker, delimited=delimited)
            yield page
            if not marker:
                return

    def has_children(self, prefix: str) -> bool:
        """Whether any blob exists under ``prefix`` (which ends with ``/``): one request for one result."""
        page, _ = self.list_page(prefix, None, delimited=False, max_results=1)
        return bool(page.blobs)

    def get(self, blob: str, start: int | None = None, end: int | None = None, *, etag: str | None = None) -> bytes:
        """Return a blob's bytes, or bytes ``[start, end)`` of it (``b""`` past its end)."""
        headers: dict[str, str] = {}
        if start is not None or end is not None:
            first = start or 0
            headers["x-ms-range"] = f"bytes={first}-" + (str(end - 1) if end is not None else "")
            if end is not None and end <= first:
                return b""
        if etag:
            headers["If-Match"] = f'"{etag}"'
        try:
            body = self.client.request(
                "GET", self.client.blob_path(self.container, blob), headers=headers, ok=(200, 206),
                resource=self._resource(blob),
            )  # fmt: skip
        except StorageHttpError as exc:
            if exc.status == 416:  # noqa: PLR2004 - the range starts past the end of the blob
                return b""
            raise storage_error(exc, self, blob, "read") from None
        assert isinstance(body, bytes)  # noqa: S101 - no reader given, so the body
        return body

    def get_to_fd(self, blob: str, fd: int, offset: int, length: int, *, etag: str | None) -> None:
        """Write bytes ``[offset, offset + length)`` of a blob to the same place of ``fd`` (1 MiB at a time)."""

        def sink(response: http.client.HTTPResponse) -> None:
            buffer = memoryview(bytearray(min(length, COPY_BUFFER_SIZE)))
            done = 0
            while done < length:
                count = response.readinto(buffer[: min(len(buffer), length - done)])
                if not count:
                    raise http.client.IncompleteRead(b"", length - done)
                written = 0
                while written < count:
                    written += os.pwrite(fd, buffer[written:count], offset + done + written)
                done += count

        try:
            self.client.get_into(self.container, blob, offset=offset, length=length, etag=etag, sink=sink)
        except StorageHttpError as exc:
            raise storage_error(exc, self, blob, "read") from None

    def put(self, blob: str, data: bytes | memoryview, *, overwrite: bool, folder: bool = False) -> None:
        """Create or replace a block blob in one request (``folder``: a folder marker)."""
        try:
            self.client.put_blob(
                self.container, blob, data, length=len(data), metadata=FOLDER_METADATA if folder else {},
                overwrite=overwrite,
            )  # fmt: skip
        except StorageHttpError as exc:
            raise storage_error(exc, self, blob, "write") from None

    def put_block(
        self, blob: str, block_id: str, data: bytes | memoryview | Callable[[Callable[[Any], None]], None],
        length: int | None = None,
    ) -> None:  # fmt: skip
        """Stage one uncommitted block of ``blob`` (invisible until :meth:`commit`).

        ``data`` is the block, or a function that sends ``length`` bytes through the ``send`` it is given
        (called again on a retry).
        """
        size = length if length is not None else len(data)  # type: ignore[arg-type]  # bytes when no length
        try:
            self.client.put_block(self.container, blob, block_id, data, length=size)
        except StorageHttpError as exc:
            raise storage_error(exc, self, blob, "write") from None

    def commit(self, blob: str, block_ids: list[str], *, overwrite: bool) -> None:
        """Commit staged blocks as the blob's content, atomically."""
        try:
            self.client.put_block_list(self.container, blob, block_ids, metadata={}, overwrite=overwrite)
        except StorageHttpError as exc:
            raise storage_error(exc, self, blob, "write") from None

    def delete(self, blob: str) -> None:
        """Delete a blob (``FileNotFoundError`` when there is none)."""
        try:
            self.client.request(
                "DELETE", self.client.blob_path(self.container, blob), ok=(202,), resource=self._resource(blob)
            )
        except StorageHttpError as exc:
            raise storage_error(exc, self, blob, "write") from None

    def create_container(self) -> bool:
        """Create the container; return ``False`` when it already existed."""
        try:
            self.client.request(
                "PUT", self.client.blob_path(self.container) + "?restype=container", ok=(201,),
                resource=self.container,
            )  # fmt: skip
        except StorageHttpError as exc:
            if exc.status == 409:  # noqa: PLR2004 - ContainerAlreadyExists
                return False
            raise storage_error(exc, self, "", "write") from None
        return True
