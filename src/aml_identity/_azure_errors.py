"""The errors of :mod:`aml_identity.errors` whose base classes come from azure-core and azure-identity.

Import them from :mod:`aml_identity.errors`: it loads this module the first time one of them is named, so
that ``import aml_identity`` stays free of ``azure.identity`` (and the msal and requests it imports) and of
azure-core's pipeline. Each class reports ``aml_identity.errors`` as its module (tracebacks, pickling).
"""

from __future__ import annotations

import errno
from typing import Any

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity import CredentialUnavailableError

from aml_identity.errors import AmlIdentityError, ConfigurationError, DatastoreError

__all__ = [
    "ClusterNotFoundError",
    "DataAccessDeniedError",
    "IdentityNotConfiguredError",
    "IdentityNotFoundError",
    "IdentityUnavailableError",
    "OperationFailedError",
    "ProvisioningError",
    "ProvisioningTimeoutError",
    "QuotaExceededError",
    "TokenRequestError",
]


class IdentityUnavailableError(AmlIdentityError, CredentialUnavailableError):
    """No managed identity can be used in this environment; a credential chain moves on.

    Attributes:
        source: The identity source that was considered (``"azureml"``, ``"imds"``...), if any.
    """

    def __init__(self, message: str, *, source: str | None = None) -> None:
        """Create the error.

        Args:
            message: What was looked for and how to make an identity available.
            source: The identity source that was considered.
        """
        CredentialUnavailableError.__init__(self, message)
        self.message = message
        self.source = source


class IdentityNotConfiguredError(IdentityUnavailableError):
    """The compute has no managed identity assigned (``DEFAULT_IDENTITY_CLIENT_ID`` missing or a placeholder).

    Azure ML would answer a request without a client id with a token for the *user* who submitted the
    job, not for the compute: aml-identity refuses instead of fetching it.
    """


class TokenRequestError(AmlIdentityError, ClientAuthenticationError):
    """The identity endpoint was asked for a token and did not give one.

    Attributes:
        identity: A description of the identity asked for (client id or "system-assigned").
        endpoint: The endpoint URL (no secret in it).
        status_code: The last HTTP status received, or None when no response came back.
        attempts: How many requests were sent.
        retryable: Whether trying again later may succeed (throttling, outage, timeout).
    """

    def __init__(
        self,
        message: str,
        *,
        identity: str,
        endpoint: str,
        status_code: int | None = None,
        attempts: int = 1,
        retryable: bool = False,
    ) -> None:
        """Create the error.

        Args:
            message: What happened and what to do.
            identity: The identity asked for.
            endpoint: The endpoint URL.
            status_code: The last HTTP status, if any.
            attempts: The number of requests sent.
            retryable: Whether a later attempt may succeed.
        """
        ClientAuthenticationError.__init__(self, message)
        self.message = message
        self.identity = identity
        self.endpoint = endpoint
        self.status_code = status_code
        self.attempts = attempts
        self.retryable = retryable


class IdentityNotFoundError(TokenRequestError, ConfigurationError):
    """The endpoint knows no identity with the id that was asked for.

    The usual cause is an object (principal) id passed where a client (application) id is expected: both
    are GUIDs, so only the endpoint can tell. Also a :class:`ConfigurationError`, since the input is wrong.
    """

    def __init__(
        self,
        message: str,
        *,
        identity: str,
        endpoint: str,
        status_code: int | None = None,
        attempts: int = 1,
        name: str | None = None,
    ) -> None:
        """Create the error.

        Args:
            message: Which id was not found and how to find the right one.
            identity: The identity asked for.
            endpoint: The endpoint URL.
            status_code: The HTTP status.
            attempts: The number of requests sent.
            name: The argument or variable the id came from.
        """
        TokenRequestError.__init__(
            self, message, identity=identity, endpoint=endpoint, status_code=status_code, attempts=attempts
        )
        self.name = name


class DataAccessDeniedError(DatastoreError, HttpResponseError, PermissionError):
    """Storage answered 403: the identity lacks a data-plane role on the account.

    Also a :class:`PermissionError` (``errno.EACCES``): what file-system code catches for a refusal, and what
    fsspec file systems raise for one, so pandas, PyArrow and ``datasets`` callers reading ``azureml://`` URIs
    see a refused read as they would on any other file system.

    Attributes:
        identity: The client id (and object id, when known) of the identity that was refused.
        account: The storage account name.
        operation: What was attempted (``"read"``, ``"list"``, ``"write"``...).
        role: The built-in role that grants it.
        error_code: Storage's error code (for example ``AuthorizationPermissionMismatch``).
        client_id: The refused identity's client (application) id, when known.
        object_id: The refused identity's object (principal) id, when known: the id to assign the role to.
    """

    def __init__(
        self,
        message: str,
        *,
        identity: str,
        account: str,
        operation: str,
        role: str,
        error_code: str | None = None,
        status_code: int = 403,
        client_id: str | None = None,
        object_id: str | None = None,
    ) -> None:
        """Create the error.

        Args:
            message: What was refused and how to grant it.
            identity: The refused identity.
            account: The storage account.
            operation: The attempted operation.
            role: The role to grant.
            error_code: Storage's error code.
            status_code: The HTTP status (403).
            client_id: The identity's client id.
            object_id: The identity's object id.
        """
        HttpResponseError.__init__(self, message)
        self.message = message
        self.errno = errno.EACCES  # PermissionError's errno (its strerror stays unset: str() is the message)
        self.identity = identity
        self.account = account
        self.operation = operation
        self.role = role
        self.error_code = error_code
        self.status_code = status_code
        self.client_id = client_id
        self.object_id = object_id


class ProvisioningError(AmlIdentityError, HttpResponseError):
    """Azure Resource Manager refused or failed a provisioning request.

    Attributes:
        status_code: The HTTP status, when the error came from a response.
        error_code: ARM's error code (for example ``QuotaExceeded``), when given.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_code: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the error.

        Args:
            message: What was asked, what ARM said and what to do.
            status_code: The HTTP status.
            error_code: ARM's error code.
            **kwargs: Passed to ``HttpResponseError`` (for example ``response``).
        """
        HttpResponseError.__init__(self, message, **kwargs)
        self.message = message
        self.status_code = status_code if status_code is not None else self.status_code
        self.error_code = error_code


class ClusterNotFoundError(ProvisioningError, ResourceNotFoundError):
    """The compute cluster does not exist in the workspace."""


class QuotaExceededError(ProvisioningError):
    """The cluster would not fit the subscription's core quota; the message says how to request more."""


class OperationFailedError(ProvisioningError):
    """A long-running ARM operation ended ``Failed`` or ``Canceled``; carries the service's code and message."""


class ProvisioningTimeoutError(ProvisioningError, TimeoutError):
    """A cluster did not reach the state waited for in time; the message says where it stopped and what to check."""


for _name in __all__:
    globals()[_name].__module__ = "aml_identity.errors"
