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
  :class:`DataAccessDeniedError` is also a :class:`PermissionError` (``EACCES``), what fsspec file systems
  raise for a refusal, so pandas and PyArrow callers of ``azureml://`` catch it as they catch any.

The classes with an Azure SDK base are defined in a private module and loaded on first use (a module
``__getattr__``), so ``import aml_identity`` does not import ``azure.identity`` (which pulls in msal and
requests) or azure-core's pipeline: naming ``aml_identity.errors.TokenRequestError`` (in an ``except``
clause, say) is what loads them.

Messages say what was tried and what to do. No message, ``repr`` or attribute holds a token or secret:
response bodies are quoted only through :func:`redact`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aml_identity._azure_errors import (
        ClusterNotFoundError,
        DataAccessDeniedError,
        IdentityNotConfiguredError,
        IdentityNotFoundError,
        IdentityUnavailableError,
        OperationFailedError,
        ProvisioningError,
        ProvisioningTimeoutError,
        QuotaExceededError,
        TokenRequestError,
    )

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
    "MissingExtraError",
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


class MissingExtraError(AmlIdentityError, ModuleNotFoundError):
    """A feature needs an optional extra that is not installed; the message names the ``pip install`` line.

    Also a :class:`ModuleNotFoundError` (an ``ImportError``), which is what a missing module has always been.

    Attributes:
        extra: The extra to install (``"testing"``, ``"mount"``...).
        missing: What was found missing (distribution or module names).
    """

    def __init__(self, feature: str, extra: str, missing: tuple[str, ...]) -> None:
        """Create the error.

        Args:
            feature: What needs the extra, as the user called it (``"aml-identity sandbox"``...).
            extra: The extra that provides it.
            missing: The distributions or modules that are not installed.
        """
        super().__init__(
            f"{feature} needs the {extra} extra ({', '.join(missing)} not installed): "
            f"pip install 'aml-identity[{extra}]'"
        )
        self.extra = extra
        self.missing = missing


class DatastoreError(AmlIdentityError):
    """A datastore could not be resolved, read or written."""


class TransferError(DatastoreError):
    """A transfer failed or a downloaded file did not verify (size or checksum)."""


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


# The classes whose bases live in azure-core / azure-identity, defined in aml_identity._azure_errors.
_AZURE_ERRORS = frozenset({
    "ClusterNotFoundError", "DataAccessDeniedError", "IdentityNotConfiguredError", "IdentityNotFoundError",
    "IdentityUnavailableError", "OperationFailedError", "ProvisioningError", "ProvisioningTimeoutError",
    "QuotaExceededError", "TokenRequestError",
})  # fmt: skip


def __getattr__(name: str) -> Any:
    """Load the errors with an Azure SDK base class on first use (see the module docstring)."""
    if name not in _AZURE_ERRORS:
        raise AttributeError(f"module 'aml_identity.errors' has no attribute {name!r}")
    from aml_identity import _azure_errors  # noqa: PLC0415 - imports azure.identity and azure-core

    value = getattr(_azure_errors, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the public names, loaded or not."""
    return sorted(set(globals()) | _AZURE_ERRORS)
