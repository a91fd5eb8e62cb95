"""aml-identity: be your Azure ML compute cluster's managed identity.

Resolve the cluster's default identity, get tokens with it that every process on the node shares, and use
them with any Azure SDK client:

>>> from aml_identity import default_credential
>>> credential = default_credential()  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aml_identity._retry import RetryPolicy
from aml_identity.credential import CacheMode, JobCredential, default_credential, get_token
from aml_identity.errors import (
    AmlIdentityError,
    ConfigurationError,
    DataAccessDeniedError,
    IdentityNotConfiguredError,
    IdentityNotFoundError,
    IdentityUnavailableError,
    TokenRequestError,
)
from aml_identity.identity import ManagedIdentity, default_identity

if TYPE_CHECKING:
    from aml_identity.datastore.mount import Mount, mount

__version__ = "0.1.0"

__all__ = [
    "AmlIdentityError",
    "CacheMode",
    "ConfigurationError",
    "DataAccessDeniedError",
    "IdentityNotConfiguredError",
    "IdentityNotFoundError",
    "IdentityUnavailableError",
    "JobCredential",
    "ManagedIdentity",
    "Mount",
    "RetryPolicy",
    "TokenRequestError",
    "__version__",
    "default_credential",
    "default_identity",
    "get_token",
    "mount",
]

# Loaded on first use, so `import aml_identity` stays as light as the token path needs.
_LAZY = {"Mount": "aml_identity.datastore.mount", "mount": "aml_identity.datastore.mount"}


def __getattr__(name: str) -> Any:
    """Import the datastore mount API on first access (``aml_identity.mount``, ``aml_identity.Mount``)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aml_identity' has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
