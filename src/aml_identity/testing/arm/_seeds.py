"""The resources the ARM emulator is seeded with, as ARM returns them, and the checks its seeding runs.

Part of :class:`~aml_identity.testing.arm.ArmEmulator`, whose ``add_*`` methods validate their arguments
and store these bodies in its state.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from aml_identity._environment import is_guid
from aml_identity.errors import ConfigurationError
from aml_identity.testing.arm._ids import BUILTIN_ROLES, role_definition_guid
from aml_identity.testing.arm._vm_sizes import VmSize

if TYPE_CHECKING:
    from collections.abc import Iterable

    from aml_identity.testing.arm._ids import ArmId

__all__ = ["checked_sizes", "datastore_body", "identity_body", "role_guid", "workspace_body"]


def workspace_body(
    ws_id: str,
    group: str,
    name: str,
    *,
    location: str,
    storage_account: str,
    container_registry: str | None,
    principal_id: str,
    tenant_id: str,
) -> dict[str, Any]:
    """A workspace's ARM body: its own key vault and insights made up, a system-assigned identity."""
    suffix = uuid.uuid4().hex[:12]
    properties: dict[str, Any] = {
        "friendlyName": name,
        "workspaceId": str(uuid.uuid4()),
        "storageAccount": storage_account,
        "keyVault": f"{group}/providers/Microsoft.KeyVault/vaults/kv{suffix}",
        "applicationInsights": f"{group}/providers/Microsoft.Insights/components/ai{suffix}",
        "provisioningState": "Succeeded",
        "discoveryUrl": f"https://{location}.api.azureml.ms/discovery",
        "hbiWorkspace": False,
        "publicNetworkAccess": "Enabled",
        "v1LegacyMode": False,
    }
    if container_registry:
        properties["containerRegistry"] = container_registry
    return {
        "id": ws_id,
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces",
        "location": location,
        "tags": {},
        "kind": "Default",
        "sku": {"name": "Basic", "tier": "Basic"},
        "identity": {"type": "SystemAssigned", "principalId": principal_id, "tenantId": tenant_id},
        "properties": properties,
    }


def identity_body(
    identity_id: str, name: str, *, location: str, tenant_id: str, principal_id: str, client_id: str
) -> dict[str, Any]:
    """A user-assigned identity's ARM body."""
    return {
        "id": identity_id,
        "name": name,
        "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
        "location": location,
        "tags": {},
        "properties": {"tenantId": tenant_id, "principalId": principal_id, "clientId": client_id},
    }


def datastore_body(
    store_id: str,
    name: str,
    workspace: ArmId,
    *,
    account_name: str,
    container_name: str,
    endpoint: str,
    protocol: str,
    is_default: bool,
    description: str | None,
    service_data_access_auth_identity: str,
) -> dict[str, Any]:
    """An identity-based Azure Blob datastore's ARM body (credentials type ``None``)."""
    return {
        "id": store_id,
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces/datastores",
        "properties": {
            "datastoreType": "AzureBlob",
            "accountName": account_name,
            "containerName": container_name,
            "endpoint": endpoint,
            "protocol": protocol,
            "credentials": {"credentialsType": "None"},
            "serviceDataAccessAuthIdentity": service_data_access_auth_identity,
            "isDefault": is_default,
            "subscriptionId": workspace.subscription,
            "resourceGroup": workspace.resource_group,
            "description": description,
            "tags": {},
            "properties": {},
        },
    }


def checked_sizes(sizes: Iterable[VmSize]) -> list[VmSize]:
    """The VM sizes, checked: each a :class:`VmSize`, no name twice (ConfigurationError otherwise)."""
    checked: list[VmSize] = []
    entries: Iterable[object] = sizes  # checked at run time: callers may pass anything
    for size in entries:
        if not isinstance(size, VmSize):
            msg = f"vm_sizes must hold VmSize(name, family, vcpus, ...) entries, not {size!r}."
            raise ConfigurationError(msg, name="vm_sizes")
        if any(other.name.lower() == size.name.lower() for other in checked):
            raise ConfigurationError(f"vm_sizes lists {size.name!r} twice; keep one entry.", name="vm_sizes")
        checked.append(size)
    return checked


def role_guid(role: str) -> str:
    """The GUID of a built-in role name, a GUID or a role definition id (ConfigurationError otherwise)."""
    by_name = {name.lower(): guid for guid, name in BUILTIN_ROLES.items()}
    if role.lower() in by_name:
        return by_name[role.lower()]
    if is_guid(role):
        return role.lower()
    guid = role_definition_guid(role)
    if guid:
        return guid
    names = ", ".join(sorted(BUILTIN_ROLES.values()))
    msg = f"Unknown role {role!r}: pass a built-in role name ({names}), a GUID or a role definition id."
    raise ConfigurationError(msg, name="role")
