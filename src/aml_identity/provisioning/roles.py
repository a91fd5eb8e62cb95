"""Grant a cluster's identity (or any principal) data-plane access: idempotent role assignments."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aml_identity._arm import ArmClient
from aml_identity._environment import is_guid
from aml_identity.errors import ConfigurationError
from aml_identity.provisioning.workspace import arm_of

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from azure.core.credentials import TokenCredential

    from aml_identity.provisioning.clusters import Cluster

__all__ = [
    "BUILTIN_ROLES",
    "ROLE_ASSIGNMENTS_API_VERSION",
    "RoleGrant",
    "assignment_name",
    "grant_data_access",
]

ROLE_ASSIGNMENTS_API_VERSION = "2022-04-01"
_DEFINITIONS = "providers/Microsoft.Authorization/roleDefinitions"
# Built-in role definition GUIDs (learn.microsoft.com, "Azure built-in roles": storage and containers).
BUILTIN_ROLES: Mapping[str, str] = {
    "Storage Blob Data Reader": "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "AcrPull": "7f951dda-4ed3-4680-a7ca-43fe172d538d",
}
# The namespace of aml-identity's role assignment names: uuid5(namespace, scope|principal|role) is the same
# for the same grant on every run and every machine, so a second grant finds the first instead of adding one.
_ASSIGNMENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://pypi.org/project/aml-identity/role-assignments")
_ROLE_DEFINITION = re.compile(
    r"^(?:/subscriptions/[^/]+)?/providers/Microsoft\.Authorization/roleDefinitions/(?P<guid>[0-9a-fA-F-]{36})$",
    re.IGNORECASE,
)
_SCOPE = re.compile(r"^/subscriptions/[^/]+(?:/resourceGroups/[^/]+(?:/providers/.+)?)?$", re.IGNORECASE)
_EXISTING_ID = re.compile(r"existing role assignment is ([0-9a-fA-F-]{36})")


@dataclass(frozen=True)
class RoleGrant:
    """A role assignment that exists after :func:`grant_data_access`.

    Attributes:
        scope: Where the role applies.
        role: The role's name (or GUID when it is not a known built-in).
        principal_id: Who has it.
        assignment_name: The assignment's name (deterministic for aml-identity's own grants).
        created: True when this call created it; False when it was already there.
    """

    scope: str
    role: str
    principal_id: str
    assignment_name: str
    created: bool

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "scope": self.scope,
            "role": self.role,
            "principalId": self.principal_id,
            "assignmentName": self.assignment_name,
            "created": self.created,
        }


def _role_guid(role: str) -> tuple[str, str]:
    """Return (GUID, display name) for a built-in role name, a GUID or a role definition id."""
    for name, guid in BUILTIN_ROLES.items():
        if name.lower() == role.strip().lower():
            return guid, name
    match = _ROLE_DEFINITION.match(role.strip())
    guid = match.group("guid") if match else role.strip()
    if is_guid(guid):
        names = {g: n for n, g in BUILTIN_ROLES.items()}
        return guid.lower(), names.get(guid.lower(), guid.lower())
    msg = (
        f"Unknown role {role!r}: pass a built-in role name ({', '.join(BUILTIN_ROLES)}), a role definition "
        "GUID, "
        "or a role definition id."
    )
    raise ConfigurationError(msg, name="role")


def assignment_name(scope: str, principal_id: str, role_guid: str) -> str:
    """The deterministic name of aml-identity's grant of ``role_guid`` on ``scope`` to ``principal_id``."""
    key = f"{scope.rstrip('/').lower()}|{principal_id.lower()}|{role_guid.lower()}"
    return str(uuid.uuid5(_ASSIGNMENT_NAMESPACE, key))


def _check_scope(scope: str, label: str = "scope") -> str:
    scope = scope.strip().rstrip("/")
    if not _SCOPE.match(scope):
        msg = (
            f"{label} {scope!r} is not an ARM scope; pass a resource id such as "
            "/subscriptions/<sub>/resourceGroups/"
            "<rg>/providers/Microsoft.Storage/storageAccounts/<account> (`az storage account show --query "
            "id`)."
        )
        raise ConfigurationError(msg, name=label)
    return scope


def _grant(arm: ArmClient, scope: str, principal_id: str, role: str) -> RoleGrant:
    guid, role_name = _role_guid(role)
    subscription = scope.split("/")[2]
    name = assignment_name(scope, principal_id, guid)
    path = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
    what = f"granting {role_name} on {scope} to {principal_id}"
    existing = arm.send("GET", path, api_version=ROLE_ASSIGNMENTS_API_VERSION)
    if existing.status == 200:  # noqa: PLR2004 - HTTP status
        return RoleGrant(scope, role_name, principal_id, name, created=False)
    if existing.status != 404:  # noqa: PLR2004
        raise arm.error(existing, what)
    body = {
        "properties": {
            "roleDefinitionId": f"/subscriptions/{subscription}/{_DEFINITIONS}/{guid}",
            "principalId": principal_id,
            # Skips the directory lookup that fails for an identity created moments ago (replication delay).
            "principalType": "ServicePrincipal",
        }
    }
    response = arm.send("PUT", path, api_version=ROLE_ASSIGNMENTS_API_VERSION, body=body)
    if response.status in (200, 201):
        return RoleGrant(scope, role_name, principal_id, name, created=response.status == 201)  # noqa: PLR2004
    if response.status == 409 and response.error_code() == "RoleAssignmentExists":  # noqa: PLR2004
        match = _EXISTING_ID.search(response.error_message())
        return RoleGrant(scope, role_name, principal_id, match.group(1) if match else name, created=False)
    raise arm.error(response, what)


def grant_data_access(
    principal: str | Cluster,
    scope: str,
    role: str = "Storage Blob Data Reader",
    *,
    credential: TokenCredential | None = None,
    container_registry: str | None = None,
    acr_pull: bool = True,
    environ: Mapping[str, str] | None = None,
    connection_verify: bool | str | None = None,
    sleep: Callable[[float], None] | None = None,
) -> list[RoleGrant]:
    """Grant ``role`` on ``scope`` to a principal or a cluster's default identity; idempotent.

    The assignment's name is derived from (scope, principal, role), so granting again finds the first
    grant and adds nothing; an equal assignment made by someone else (``RoleAssignmentExists``) is success
    too. The default identity also pulls the job's images, so ``AcrPull`` is granted on a container
    registry as well: ``container_registry`` when given, else, for a cluster, its workspace's registry.

    Args:
        principal: A principal (object) id -- not a client id -- or a :class:`Cluster`, whose default
            identity (the system-assigned one, or the first user-assigned one) is used.
        scope: Where the role applies: a storage account, container, resource group or subscription id.
        role: A built-in role name (``Storage Blob Data Reader``/``Contributor``/``Owner``), a role
            definition GUID or id.
        credential: For ARM; the cluster's workspace credential, else azure-identity's
            ``DefaultAzureCredential``.
        container_registry: ARM id of a registry to grant ``AcrPull`` on.
        acr_pull: Set False to grant no ``AcrPull``.
        environ: Environment for the ARM endpoint (when no cluster is given).
        connection_verify: TLS verification for ARM (when no cluster is given).
        sleep: Waits between retries (when no cluster is given).

    Returns:
        The grants, the requested one first.

    Raises:
        ConfigurationError: A bad scope, role or principal id, or a cluster without an identity.
        ProvisioningError: ARM refused (for example 403: the caller needs Owner or User Access
            Administrator on the scope).
    """
    from aml_identity.provisioning.clusters import Cluster  # noqa: PLC0415 - avoid an import cycle

    scope = _check_scope(scope)
    registry = _check_scope(container_registry, "container_registry") if container_registry else None
    if isinstance(principal, Cluster):
        cluster = principal.refresh()
        principal_id = cluster.principal_id
        if principal_id is None:
            msg = (
                f"Cluster {cluster.name!r} has no managed identity to grant access to: give it one with "
                "cluster.add_identity(SystemAssigned()) (`aml-identity cluster add-identity "
                "--system-assigned`)."
            )
            raise ConfigurationError(msg, name="principal")
        arm = arm_of(cluster.workspace, credential)
        if registry is None and acr_pull:
            registry = cluster.workspace.container_registry
    else:
        principal_id = str(principal).strip()
        if not is_guid(principal_id):
            msg = (
                f"principal {principal!r} is not a principal (object) id GUID; pass the identity's "
                "principalId "
                "(`az identity show --query principalId`), not its client id or name, or pass a Cluster."
            )
            raise ConfigurationError(msg, name="principal")
        if credential is None:
            from azure.identity import DefaultAzureCredential  # noqa: PLC0415 - only when needed

            credential = DefaultAzureCredential()
        arm = ArmClient(credential, environ=environ, connection_verify=connection_verify, sleep=sleep)
    grants = [_grant(arm, scope, principal_id, role)]
    if registry and acr_pull:
        grants.append(_grant(arm, registry, principal_id, "AcrPull"))
    return grants
