"""ARM resource ids: build them, take them apart, compare them (ARM ids are case-insensitive)."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BUILTIN_ROLES",
    "DATA_ROLE_ACTIONS",
    "ArmId",
    "covers",
    "registry_id",
    "resource_group_id",
    "role_definition_guid",
    "storage_account_id",
    "user_assigned_identity_id",
    "workspace_id",
]

# Built-in role definition GUIDs (learn.microsoft.com, built-in roles: storage and containers).
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
BUILTIN_ROLES = {
    STORAGE_BLOB_DATA_READER: "Storage Blob Data Reader",
    STORAGE_BLOB_DATA_CONTRIBUTOR: "Storage Blob Data Contributor",
    STORAGE_BLOB_DATA_OWNER: "Storage Blob Data Owner",
    ACR_PULL: "AcrPull",
}
# What each storage data role lets a principal do with blobs (Reader: read and list; the others: all).
DATA_ROLE_ACTIONS: dict[str, frozenset[str]] = {
    STORAGE_BLOB_DATA_READER: frozenset({"read", "list"}),
    STORAGE_BLOB_DATA_CONTRIBUTOR: frozenset({"read", "write", "delete", "list"}),
    STORAGE_BLOB_DATA_OWNER: frozenset({"read", "write", "delete", "list"}),
}

_ROLE_DEFINITION = re.compile(
    r"^(?:/subscriptions/[^/]+)?/providers/Microsoft\.Authorization/roleDefinitions/(?P<guid>[0-9a-fA-F-]{36})$",
    re.IGNORECASE,
)
_RESOURCE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)(?:/resourceGroups/(?P<rg>[^/]+)"
    r"(?:/providers/(?P<namespace>[^/]+)/(?P<rest>.+))?)?$",
    re.IGNORECASE | re.DOTALL,
)


def role_definition_guid(role_definition_id: str) -> str | None:
    """Return the GUID of a role definition id, or None when it is not one."""
    match = _ROLE_DEFINITION.fullmatch(role_definition_id)
    return match.group("guid").lower() if match else None


def resource_group_id(subscription_id: str, resource_group: str) -> str:
    """Return ``/subscriptions/{s}/resourceGroups/{rg}``."""
    return f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"


def workspace_id(subscription_id: str, resource_group: str, name: str) -> str:
    """Return a workspace's ARM id."""
    return (
        f"{resource_group_id(subscription_id, resource_group)}/providers/Microsoft.MachineLearningServices/"
        f"workspaces/{name}"
    )


def storage_account_id(subscription_id: str, resource_group: str, name: str) -> str:
    """Return a storage account's ARM id."""
    group = resource_group_id(subscription_id, resource_group)
    return f"{group}/providers/Microsoft.Storage/storageAccounts/{name}"


def registry_id(subscription_id: str, resource_group: str, name: str) -> str:
    """Return a container registry's ARM id."""
    return (
        f"{resource_group_id(subscription_id, resource_group)}/providers/Microsoft.ContainerRegistry/registries/{name}"
    )


def user_assigned_identity_id(subscription_id: str, resource_group: str, name: str) -> str:
    """Return a user-assigned identity's ARM id."""
    return (
        f"{resource_group_id(subscription_id, resource_group)}/providers/Microsoft.ManagedIdentity/"
        f"userAssignedIdentities/{name}"
    )


def covers(scope: str, resource: str) -> bool:
    """Return whether ``scope`` is ``resource`` or one of its ancestors (case-insensitively)."""
    scope, resource = scope.rstrip("/").lower(), resource.rstrip("/").lower()
    return resource == scope or resource.startswith(scope + "/")


@dataclass(frozen=True)
class ArmId:
    """The parts of a scope or resource id.

    Attributes:
        subscription: The subscription id.
        resource_group: The resource group, when the id is inside one.
        namespace: The provider namespace (``Microsoft.Storage``), for a resource.
        types: The resource type segments (``("storageAccounts",)``, ``("virtualNetworks", "subnets")``).
        names: The names matching ``types``.
    """

    subscription: str
    resource_group: str | None = None
    namespace: str | None = None
    types: tuple[str, ...] = ()
    names: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str) -> ArmId | None:
        """Parse ``value``; None when it is not a subscription, group or resource id."""
        match = _RESOURCE.fullmatch(value.rstrip("/"))
        if not match:
            return None
        rest = match.group("rest")
        types: tuple[str, ...] = ()
        names: tuple[str, ...] = ()
        if rest:
            parts = rest.split("/")
            if len(parts) % 2 or not all(parts):  # a type without a name, or an empty segment (`//`)
                return None
            types, names = tuple(parts[0::2]), tuple(parts[1::2])
        return cls(match.group("sub"), match.group("rg"), match.group("namespace"), types, names)

    @property
    def kind(self) -> str:
        """``"subscription"``, ``"resourceGroup"`` or ``"resource"``."""
        if self.resource_group is None:
            return "subscription"
        return "resourceGroup" if self.namespace is None else "resource"

    @property
    def type(self) -> str:
        """The full resource type (``Microsoft.Storage/storageAccounts``), or ``""``."""
        return "/".join((self.namespace or "", *self.types)) if self.namespace else ""

    @property
    def name(self) -> str:
        """The last name segment (the resource's own name), or ``""``."""
        return self.names[-1] if self.names else ""
