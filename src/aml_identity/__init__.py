"""aml-identity: be your Azure ML compute cluster's managed identity.

Resolve the cluster's default identity, get tokens with it that every process on the node shares, and use
them with any Azure SDK client:

>>> from aml_identity import default_credential
>>> credential = default_credential()  # doctest: +SKIP

Every name below is imported on first use (a module ``__getattr__``), so ``import aml_identity`` costs
almost nothing: each rank, spawned DataLoader worker and ``aml-identity token`` in a shell script pays only
for what it uses. Nothing of azure-identity, msal, requests, azure-core's pipeline or PyJWT is imported
until the code that needs it runs (the first token fetch, the first error with an Azure SDK base class...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aml_identity._lazy import exports

if TYPE_CHECKING:
    from aml_identity._retry import RetryPolicy
    from aml_identity.credential import CacheMode, JobCredential, default_credential, get_token
    from aml_identity.datastore.mount import Mount, mount
    from aml_identity.datastore.transfer import TransferResult, download, upload, upload_on_exit
    from aml_identity.datastore.uri import DatastoreUri
    from aml_identity.errors import (
        AmlIdentityError,
        ClusterNotFoundError,
        ConfigurationError,
        DataAccessDeniedError,
        DatastoreError,
        IdentityNotConfiguredError,
        IdentityNotFoundError,
        IdentityUnavailableError,
        ProvisioningError,
        TokenRequestError,
        TransferError,
    )
    from aml_identity.identity import ManagedIdentity, default_identity

    __version__: str

__all__ = [
    "AmlIdentityError",
    "CacheMode",
    "ClusterNotFoundError",
    "ConfigurationError",
    "DataAccessDeniedError",
    "DatastoreError",
    "DatastoreUri",
    "IdentityNotConfiguredError",
    "IdentityNotFoundError",
    "IdentityUnavailableError",
    "JobCredential",
    "ManagedIdentity",
    "Mount",
    "ProvisioningError",
    "RetryPolicy",
    "TokenRequestError",
    "TransferError",
    "TransferResult",
    "__version__",
    "default_credential",
    "default_identity",
    "download",
    "get_token",
    "mount",
    "upload",
    "upload_on_exit",
]

# Where each public name lives; its module is imported the first time the name is used.
_LAZY = {
    "AmlIdentityError": "aml_identity.errors",
    "CacheMode": "aml_identity.credential",
    "ClusterNotFoundError": "aml_identity.errors",
    "ConfigurationError": "aml_identity.errors",
    "DataAccessDeniedError": "aml_identity.errors",
    "DatastoreError": "aml_identity.errors",
    "DatastoreUri": "aml_identity.datastore.uri",
    "IdentityNotConfiguredError": "aml_identity.errors",
    "IdentityNotFoundError": "aml_identity.errors",
    "IdentityUnavailableError": "aml_identity.errors",
    "JobCredential": "aml_identity.credential",
    "ManagedIdentity": "aml_identity.identity",
    "Mount": "aml_identity.datastore.mount",
    "ProvisioningError": "aml_identity.errors",
    "RetryPolicy": "aml_identity._retry",
    "TokenRequestError": "aml_identity.errors",
    "TransferError": "aml_identity.errors",
    "TransferResult": "aml_identity.datastore.transfer",
    "__version__": "aml_identity._version",
    "default_credential": "aml_identity.credential",
    "default_identity": "aml_identity.identity",
    "download": "aml_identity.datastore.transfer",
    "get_token": "aml_identity.credential",
    "mount": "aml_identity.datastore.mount",
    "upload": "aml_identity.datastore.transfer",
    "upload_on_exit": "aml_identity.datastore.transfer",
}

__getattr__, __dir__ = exports(__name__, _LAZY)
