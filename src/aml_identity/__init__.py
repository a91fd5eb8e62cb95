"""aml-identity: be your Azure ML compute cluster's managed identity.

Resolve the cluster's default identity, get tokens with it that every process on the node shares, and use
them with any Azure SDK client:

>>> from aml_identity import default_credential
>>> credential = default_credential()  # doctest: +SKIP
"""

from __future__ import annotations

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
    "RetryPolicy",
    "TokenRequestError",
    "__version__",
    "default_credential",
    "default_identity",
    "get_token",
]
