"""Datastores: parse their URIs, resolve them, download, upload and mount them with the job's identity.

See ``docs/datastores.md``.
"""

from __future__ import annotations

from aml_identity.datastore.mount import Mount, mount
from aml_identity.datastore.resolve import BlobLocation, resolve
from aml_identity.datastore.transfer import TransferResult, UploadOnExit, download, upload, upload_on_exit
from aml_identity.datastore.uri import DatastoreUri

__all__ = [
    "BlobLocation",
    "DatastoreUri",
    "Mount",
    "TransferResult",
    "UploadOnExit",
    "download",
    "mount",
    "resolve",
    "upload",
    "upload_on_exit",
]
