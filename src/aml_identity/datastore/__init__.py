"""Datastores: parse their URIs, resolve them, download, upload and mount them with the job's identity.

See ``docs/datastores.md``. Each name is imported on first use (so ``aml-identity``'s command line and
``import aml_identity`` stay light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aml_identity._lazy import exports

if TYPE_CHECKING:
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

__getattr__, __dir__ = exports(
    __name__,
    {
        "BlobLocation": "aml_identity.datastore.resolve",
        "DatastoreUri": "aml_identity.datastore.uri",
        "Mount": "aml_identity.datastore.mount",
        "TransferResult": "aml_identity.datastore.transfer",
        "UploadOnExit": "aml_identity.datastore.transfer",
        "download": "aml_identity.datastore.transfer",
        "mount": "aml_identity.datastore.mount",
        "resolve": "aml_identity.datastore.resolve",
        "upload": "aml_identity.datastore.transfer",
        "upload_on_exit": "aml_identity.datastore.transfer",
    },
)
