"""aml-identity: be your Azure ML compute cluster's managed identity.

Resolve the cluster's default identity, get tokens with it that every process on the node shares, and use
them with any Azure SDK client.
"""

from __future__ import annotations

from aml_identity.errors import (
    AmlIdentityError,
    ConfigurationError,
    DataAccessDeniedError,
    IdentityNotConfiguredError,
    IdentityUnavailableError,
    TokenRequestError,
)

__version__ = "0.1.0"

__all__ = [
    "AmlIdentityError",
    "ConfigurationError",
    "DataAccessDeniedError",
    "IdentityNotConfiguredError",
    "IdentityUnavailableError",
    "TokenRequestError",
    "__version__",
]
