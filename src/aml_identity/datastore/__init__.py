"""Datastores: parse their URIs, resolve them, and download and upload with the job's identity.

See ``docs/datastores.md``.
"""

from __future__ import annotations

from aml_identity.datastore.resolve import BlobLocation, resolve
from aml_identity.datastore.transfer import TransferResult, UploadOnExit, download, upload, upload_on_exit
from aml_identity.datastore.uri import DatastoreUri

__all__ = [
    "BlobLocation",
    "DatastoreUri",
    "TransferResult",
    "UploadOnExit",
    "download",
    "resolve",
    "upload",
    "upload_on_exit",
]
