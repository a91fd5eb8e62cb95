"""The exception tree of aml-identity.

Every error the library raises is an :class:`AmlIdentityError`. Where a caller of the Azure SDKs would
already catch an ``azure-core`` or ``azure-identity`` type, the matching error subclasses it too, so
aml-identity drops into existing code without changing its ``except`` clauses:

* :class:`ConfigurationError` is a :class:`ValueError`: bad input, named with its fix.
* :class:`IdentityUnavailableError` is an ``azure.identity.CredentialUnavailableError``: no identity can
  be used here, so a credential chain moves on to its next credential.
* :class:`TokenRequestError` is an ``azure.core.exceptions.ClientAuthenticationError``: the identity
  endpoint was asked and failed, so a chain stops.
* :class:`ComputeTargetException` is what the SDK v1 shim (``aml_identity.provisioning.v1``) raises, as
  ``azureml-core`` did; its validation errors are :class:`ComputeTargetConfigurationError`, also a
  :class:`ConfigurationError`.
* :class:`DataAccessDeniedError` and :class:`ProvisioningError` are
  ``azure.core.exceptions.HttpResponseError`` subclasses, like the errors of the storage and management
  SDKs they replace; :class:`ClusterNotFoundError` is also a ``ResourceNotFoundError``.

Messages say what was tried and what to do. No message, ``repr`` or attribute holds a token or secret:
response bodies are quoted only through :func:`redact`.
"""

from __future__ import annotations

import re
from typing import Any

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity import CredentialUnavailableError

__all__ = [
    "AmlIdentityError",
    "ClusterNotFoundError",
    "ComputeTargetConfigurationError",
    "ComputeTargetException",
    "ConfigurationError",
    "DataAccessDeniedError",
    "DatastoreError",
    "IdentityNotConfiguredError",
    "IdentityNotFoundError",
    "IdentityUnavailableError",
    "OperationFailedError",
    "ProvisioningError",
    "ProvisioningTimeoutError",
    "QuotaExceededError",
    "TokenRequestError",
    "TransferError",
    "redact",
]

# A JWT is three base64url segments; the first two start with '{"' encoded ("eyJ"). Anything shaped like one
# is masked before a response body or URL is quoted in a message or a log line.
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# access_token / secret-like JSON or query fields whose value is not a JWT (opaque tokens, secrets).
_SECRET_FIELD_RE = re.compile(
    r'(?i)("?(?:access_token|refresh_token|client_secret|secret|sig|x-identity-header|identity_header)"?'
    r'\s*[:=]\s*"?)([^"&,\s}]+)'
)
# Long bodies are cut: a message names the problem, it does not replay the response.
_MAX_QUOTED_CHARS = 300


def redact(text: str, *secrets: str | None) -> str:
    """Mask tokens and secrets in ``text`` so it can be quoted in a message or a log line.

    Args:
        text: A response body, URL or other text that may contain a token.
        *secrets: Known secret values (for example ``MSI_SECRET``) to mask wherever they appear.

    Returns:
        The text with JWTs, secret-looking fields and the given secrets replaced by ``****``, cut to a
        length that is useful in a message.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "****")
    text = _JWT_RE.sub("****", text)
    text = _SECRET_FIELD_RE.sub(r"\1****", text)
    if len(text) > _MAX_QUOTED_CHARS:
        text = text[:_MAX_QUOTED_CHARS] + "..."
    return text


class AmlIdentityError(Exception):
    """The root of every error raised by aml-identity."""

    def __init__(self, message: str) -> None:
        """Create the error.

        Args:
            message: What was tried, what went wrong and what to do.
        """
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        """Return the message alone (azure-core's subclasses would otherwise append a response body)."""
        return self.message

    def __repr__(self) -> str:
        """Return the class name and message (the message never holds a secret)."""
        return f"{type(self).__name__}({self.message!r})"


class ConfigurationError(AmlIdentityError, ValueError):
    """An input or environment variable is malformed; the message names it and the fix.

    Attributes:
        name: The argument or environment variable at fault, when there is one.
    """

    def __init__(self, message: str, *, name: str | None = None) -> None:
        """Create the error.

        Args:
            message: What is wrong and how to fix it.
            name: The argument or environment variable at fault.
        """
        super().__init__(message)
        self.name = name


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


class DatastoreError(AmlIdentityError):
    """A datastore could not be resolved, read or written."""


class DataAccessDeniedError(DatastoreError, HttpResponseError):
    """Storage answered 403: the identity lacks a data-plane role on the account.

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
        self.identity = identity
        self.account = account
        self.operation = operation
        self.role = role
        self.error_code = error_code
        self.status_code = status_code
        self.client_id = client_id
        self.object_id = object_id


class TransferError(DatastoreError):
    """A transfer failed or a downloaded file did not verify (size or checksum)."""


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


class ComputeTargetException(AmlIdentityError):  # noqa: N818 - SDK v1's name, kept so v1 scripts' except clauses work
    """An SDK v1 compute call failed (``aml_identity.provisioning.v1``, in place of ``azureml-core``'s).

    The message is the one aml-identity gives for the same failure (what was tried, ARM's answer, the fix);
    the aml-identity error behind it, when there is one, is its ``__cause__``.

    Attributes:
        status_code: The HTTP status, when ARM answered.
        error_code: ARM's error code (``ResourceNotFound``, ``QuotaExceeded``...), when given.
    """

    def __init__(self, message: str, *, status_code: int | None = None, error_code: str | None = None) -> None:
        """Create the error.

        Args:
            message: What was tried, what went wrong and what to do.
            status_code: The HTTP status.
            error_code: ARM's error code.
        """
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code


class ComputeTargetConfigurationError(ComputeTargetException, ConfigurationError):
    """An SDK v1 compute setting is invalid or no longer supported; the message names it and the alternative."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        """Create the error.

        Args:
            message: What is wrong and how to fix it.
            name: The keyword at fault.
        """
        ComputeTargetException.__init__(self, message)
        self.name = name
