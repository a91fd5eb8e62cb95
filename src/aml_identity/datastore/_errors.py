"""Turn Blob service errors into aml-identity errors that name the identity, the account and the fix."""

from __future__ import annotations

from typing import Literal

from aml_identity.datastore._rest import BearerToken, StorageHttpError
from aml_identity.errors import AmlIdentityError, DataAccessDeniedError, DatastoreError, TransferError

__all__ = ["ROLE_FOR", "convert_storage_error"]

Operation = Literal["list", "read", "write"]

# The least-privileged built-in role that allows each operation (Azure RBAC data roles for blobs).
ROLE_FOR: dict[str, str] = {
    "list": "Storage Blob Data Reader",
    "read": "Storage Blob Data Reader",
    "write": "Storage Blob Data Contributor",
}
_VERB = {"list": "list blobs in", "read": "read blobs in", "write": "write blobs to"}
# Storage's codes for "authenticated, but not allowed" (RBAC data actions missing).
_AUTHORIZATION_CODES = frozenset(
    {"AuthorizationPermissionMismatch", "AuthorizationPermissionDenied", "AuthorizationFailure"}
)


def _identity(token: BearerToken) -> tuple[str | None, str | None, str]:
    claims = token.claims()
    client_id = claims.get("appid") or claims.get("azp")
    object_id = claims.get("oid")
    parts = []
    if client_id:
        parts.append(f"client id {client_id}")
    if object_id:
        parts.append(f"object id {object_id}")
    return client_id, object_id, ", ".join(parts) or "unknown identity (the token has no appid/oid claims)"


def convert_storage_error(
    error: StorageHttpError,
    *,
    account: str,
    container: str,
    operation: Operation,
    token: BearerToken,
    purpose: Operation | None = None,
) -> AmlIdentityError:
    """Return the aml-identity error for a failed Blob service call.

    Args:
        error: What the service answered.
        account: The storage account.
        container: The container.
        operation: What was attempted.
        token: The token holder the request used (its claims name the identity).
        purpose: What the caller is doing, when more than ``operation`` (an upload lists its destination
            first): the role named is the one ``purpose`` needs, so granting it fixes the whole call.

    Returns:
        :class:`DataAccessDeniedError` for a missing role, :class:`DatastoreError` for a missing container
        or a rejected token, :class:`TransferError` otherwise.
    """
    code = error.code or ""
    if error.status == 403 and code in _AUTHORIZATION_CODES:  # noqa: PLR2004 - HTTP status
        client_id, object_id, who = _identity(token)
        role = ROLE_FOR[purpose or operation]
        why = f" (to {purpose} there)" if purpose and purpose != operation else ""
        assignee = object_id or "<the identity's object id>"
        network = (
            " (AuthorizationFailure can also mean the account's firewall or private-endpoint rules block this network.)"
            if code == "AuthorizationFailure"
            else ""
        )
        return DataAccessDeniedError(
            f"Storage account {account!r} refused to let the identity ({who}) {_VERB[operation]} container "
            f"{container!r}{why}: HTTP 403 {code}.{network} Grant the identity the '{role}' role on the storage "
            f"account (or the container), for example\n"
            f"  az role assignment create --assignee-object-id {assignee} --assignee-principal-type "
            f'ServicePrincipal --role "{role}" --scope <the storage account resource id>\n'
            f"or aml_identity.provisioning.grant_data_access({assignee!r}, scope, role={role!r}). New role "
            "assignments can take a few minutes to apply.",
            identity=who,
            account=account,
            operation=operation,
            role=role,
            error_code=code,
            client_id=client_id,
            object_id=object_id,
        )
    if error.status == 403 and code == "AuthenticationFailed":  # noqa: PLR2004 - HTTP status
        _, _, who = _identity(token)
        return DatastoreError(
            f"Storage account {account!r} rejected the token of the identity ({who}): {error.detail or code}. "
            "The token must be for https://storage.azure.com (or the account's own blob URL) and not expired; "
            "check the identity endpoint and the clock."
        )
    if error.status == 404 and code == "ContainerNotFound":  # noqa: PLR2004 - HTTP status
        return DatastoreError(
            f"Container {container!r} does not exist in storage account {account!r}. Check the URI, or create "
            "the container first."
        )
    if error.status == 404 and code == "BlobNotFound":  # noqa: PLR2004 - HTTP status
        return DatastoreError(
            f"{error.resource!r} does not exist in storage account {account!r} (it was deleted during the "
            "transfer, or the URI is wrong)."
        )
    if error.status == 412:  # noqa: PLR2004 - If-Match failed: the blob changed under us
        return TransferError(
            f"{error.resource!r} in storage account {account!r} changed while it was being downloaded. Run the "
            "download again: it fetches the new version."
        )
    status = f"HTTP {error.status}" if error.status else "no response"
    return TransferError(
        f"{error.method} {error.resource!r} in storage account {account!r} failed after retries: {status} "
        f"{code} {error.detail}".rstrip()
    )
