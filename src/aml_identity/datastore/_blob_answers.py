"""What the Blob service answers, as data: listed blobs, folder pages, blob properties and errors.

The parsers here read the service's own documents (List Blobs XML, the error XML, the Get Blob Properties
headers) into the frozen dataclasses the transfer engine, the FUSE mount and the fsspec store work with.
:mod:`aml_identity.datastore._rest` sends the requests and re-exports every name here.
"""

from __future__ import annotations

import calendar
import functools
import http.client
import time
import xml.etree.ElementTree as ET
from base64 import b64decode
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from aml_identity.errors import redact

__all__ = [
    "BlobItem",
    "BlobProperties",
    "FolderPage",
    "StorageHttpError",
    "parse_folder_listing",
    "parse_listing",
]

# User metadata travels as headers with this prefix (Get Blob Properties).
_META_HEADER = "x-ms-meta-"


class StorageHttpError(Exception):
    """The Blob service answered an error (internal: converted to aml-identity errors by the caller).

    Attributes:
        status: The HTTP status (0 when no response came back).
        code: The storage error code (``x-ms-error-code`` or the XML ``<Code>``), if any.
        detail: The service's message, with any token masked.
        method: The HTTP method.
        resource: ``container/blob`` or the container the request addressed.
    """

    def __init__(self, status: int, code: str | None, detail: str, method: str, resource: str) -> None:
        """Create the error."""
        super().__init__(f"{method} {resource}: HTTP {status} {code or ''} {detail}".strip())
        self.status = status
        self.code = code
        self.detail = detail
        self.method = method
        self.resource = resource


@dataclass(frozen=True)
class BlobItem:
    """One blob from a listing.

    Attributes:
        name: The full blob name.
        size: Its length in bytes.
        etag: Its ETag, without quotes.
        last_modified: Its Last-Modified time, epoch seconds.
        content_md5: The MD5 the service holds for the whole blob, if any.
        metadata: Its user metadata (lower-case keys).
    """

    name: str
    size: int
    etag: str
    last_modified: float
    content_md5: bytes | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_directory_marker(self) -> bool:
        """Whether this is an ADLS Gen2 folder placeholder rather than a file."""
        return self.metadata.get("hdi_isfolder", "").lower() == "true"


@functools.lru_cache(maxsize=4096)
def _http_date(value: str) -> float:
    """Parse an RFC 1123 date as the service writes it (cached: listings repeat the same seconds)."""
    try:
        return float(calendar.timegm(time.strptime(value, "%a, %d %b %Y %H:%M:%S GMT")))
    except ValueError:
        return 0.0


def _error_from(
    status: int, headers: http.client.HTTPMessage | None, body: bytes, method: str, resource: str
) -> StorageHttpError:
    code = headers.get("x-ms-error-code") if headers is not None else None
    detail = ""
    if body:
        text = body[:4096].decode("utf-8", "replace")
        try:
            root = ET.fromstring(body)  # noqa: S314 - a small error document from the storage service
            code = code or root.findtext("Code")
            detail = (root.findtext("Message") or "").split("\n", 1)[0]
            auth_detail = root.findtext("AuthenticationErrorDetail")
            if auth_detail:
                detail = f"{detail} {auth_detail}".strip()
        except ET.ParseError:
            detail = text
    return StorageHttpError(status, code, redact(detail), method, resource)


def parse_listing(body: bytes) -> tuple[list[BlobItem], str | None]:
    """Parse a List Blobs answer into blob items and the next marker."""
    root = ET.fromstring(body)  # noqa: S314 - the storage service's own listing
    return _blob_items(root), root.findtext("NextMarker") or None


def _blob_items(root: ET.Element) -> list[BlobItem]:
    items: list[BlobItem] = []
    for blob in root.iter("Blob"):
        name_el = blob.find("Name")
        if name_el is None or name_el.text is None:
            continue
        name = unquote(name_el.text) if name_el.get("Encoded") == "true" else name_el.text
        props = blob.find("Properties")
        if props is None:
            continue
        md5_text = props.findtext("Content-MD5")
        metadata_el = blob.find("Metadata")
        metadata = {child.tag.lower(): child.text or "" for child in metadata_el} if metadata_el is not None else {}
        items.append(
            BlobItem(
                name=name,
                size=int(props.findtext("Content-Length") or 0),
                etag=(props.findtext("Etag") or "").strip('"'),
                last_modified=_http_date(props.findtext("Last-Modified") or ""),
                content_md5=b64decode(md5_text) if md5_text else None,
                metadata=metadata,
            )
        )
    return items


@dataclass(frozen=True)
class FolderPage:
    """One page of a delimited (``/``) listing: the blobs directly in a folder and its sub-folders.

    Attributes:
        blobs: The blobs whose names have no ``/`` after the prefix.
        prefixes: The sub-folders' full names, each ending in ``/``.
        marker: The marker of the next page (``None`` after the last page).
    """

    blobs: list[BlobItem]
    prefixes: list[str]
    marker: str | None


@dataclass(frozen=True)
class BlobProperties:
    """What Get Blob Properties (``HEAD``) says of one blob.

    Attributes:
        etag: Its ETag, without quotes.
        size: Its length in bytes.
        last_modified: Its Last-Modified time, epoch seconds.
        metadata: Its user metadata (lower-case keys).
    """

    etag: str
    size: int
    last_modified: float
    metadata: Mapping[str, str] = field(default_factory=dict)


def parse_folder_listing(body: bytes) -> FolderPage:
    """Parse a delimited List Blobs answer (blobs, sub-folder prefixes, next marker) in one pass."""
    root = ET.fromstring(body)  # noqa: S314 - the storage service's own listing
    prefixes = []
    for element in root.iter("BlobPrefix"):
        name_el = element.find("Name")
        if name_el is None or not name_el.text:
            continue
        prefixes.append(unquote(name_el.text) if name_el.get("Encoded") == "true" else name_el.text)
    return FolderPage(_blob_items(root), prefixes, root.findtext("NextMarker") or None)


def _properties_from(response: http.client.HTTPResponse) -> BlobProperties:
    metadata = {
        key[len(_META_HEADER) :].lower(): value
        for key, value in response.getheaders()
        if key.lower().startswith(_META_HEADER)
    }
    return BlobProperties(
        etag=(response.getheader("ETag") or "").strip('"'),
        size=int(response.getheader("Content-Length") or 0),
        last_modified=_http_date(response.getheader("Last-Modified") or ""),
        metadata=metadata,
    )
