"""Emulated managed identities: the ids a real identity has, in the shapes Azure gives them."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Literal

from aml_identity._environment import is_guid
from aml_identity.errors import ConfigurationError

__all__ = [
    "DEFAULT_COMPUTE",
    "DEFAULT_RESOURCE_GROUP",
    "DEFAULT_STORAGE_ROLE",
    "DEFAULT_SUBSCRIPTION_ID",
    "DEFAULT_WORKSPACE",
    "EmulatedIdentity",
]

# The subscription every emulated resource lives in unless a test says otherwise: a fixed, recognisable GUID
# (never a real subscription), so resource ids in claims dumps and logs are stable from run to run.
DEFAULT_SUBSCRIPTION_ID = "5ab5c1e7-0000-4000-8000-00000000a11d"
DEFAULT_RESOURCE_GROUP = "rg-aml"
DEFAULT_WORKSPACE = "ws-aml"
DEFAULT_COMPUTE = "cpu-cluster"
# The data-plane role `Sandbox(arm=True)` grants the compute's identity on the storage account unless told
# otherwise: what a job that reads its inputs and writes its outputs needs (Reader alone cannot upload).
DEFAULT_STORAGE_ROLE = "Storage Blob Data Contributor"

# ARM names: letters, digits, '-', '_', '.', starting with a letter or digit. Deliberately looser than each
# resource provider's own rule (user-assigned identities allow 3-128 chars, computes 2-24): the emulator only
# refuses names that would break the resource id (a '/', whitespace, an empty name).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_USER_RESOURCE_ID = (
    "/subscriptions/{subscription}/resourcegroups/{group}"
    "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
)
_SYSTEM_RESOURCE_ID = (
    "/subscriptions/{subscription}/resourcegroups/{group}"
    "/providers/Microsoft.MachineLearningServices/workspaces/{workspace}/computes/{compute}"
)


def _check_name(value: str, what: str) -> None:
    if not _NAME_RE.match(value):
        raise ConfigurationError(
            f"{what} {value!r} is not a valid Azure resource name; use letters, digits, '-', '_' or '.', "
            "starting with a letter or digit.",
            name=what,
        )


def _check_guid(value: str, what: str) -> None:
    if not is_guid(value):
        raise ConfigurationError(
            f"{what} {value!r} is not a GUID; pass one like {uuid.uuid4()} (or None for a random one).",
            name=what,
        )


@dataclass(frozen=True)
class EmulatedIdentity:
    """A managed identity the emulator can mint tokens for.

    Build one with :meth:`user` or :meth:`system`; the constructor takes every id explicitly.

    Attributes:
        name: The user-assigned identity's name, or the compute's name for a system-assigned identity.
        client_id: The client (application) id: ``appid`` in tokens, ``clientid``/``client_id`` in requests.
        object_id: The service principal's object id (a.k.a. principal id): ``oid`` in tokens.
        resource_id: The ARM id: ``xms_mirid`` in tokens, ``msi_res_id``/``mi_res_id`` in requests.
        kind: ``"user"`` (user-assigned) or ``"system"`` (system-assigned, tied to a compute).
    """

    name: str
    client_id: str
    object_id: str
    resource_id: str
    kind: Literal["system", "user"]

    def __post_init__(self) -> None:
        """Validate the ids, so a typo fails where the identity is made, not in a token request."""
        _check_name(self.name, "identity name")
        _check_guid(self.client_id, "client_id")
        _check_guid(self.object_id, "object_id")
        if self.client_id.lower() == self.object_id.lower():
            raise ConfigurationError(
                f"client_id and object_id are both {self.client_id!r}; a real identity has two different ids "
                "(mixing them up is the mistake the emulator must be able to show).",
                name="object_id",
            )
        if self.kind not in ("system", "user"):
            raise ConfigurationError(f"kind {self.kind!r} is not 'system' or 'user'.", name="kind")
        if not self.resource_id.lower().startswith("/subscriptions/"):
            raise ConfigurationError(
                f"resource_id {self.resource_id!r} is not an ARM resource id (/subscriptions/...); "
                "build the identity with EmulatedIdentity.user() or .system().",
                name="resource_id",
            )

    @property
    def principal_id(self) -> str:
        """The object id under the name ARM and App Service use for it."""
        return self.object_id

    @classmethod
    def user(
        cls,
        name: str,
        *,
        subscription_id: str = DEFAULT_SUBSCRIPTION_ID,
        resource_group: str = DEFAULT_RESOURCE_GROUP,
        client_id: str | None = None,
        object_id: str | None = None,
    ) -> EmulatedIdentity:
        """Return a user-assigned identity (``Microsoft.ManagedIdentity/userAssignedIdentities/{name}``).

        Args:
            name: The identity's name.
            subscription_id: The subscription of its resource id.
            resource_group: The resource group of its resource id.
            client_id: Its client id; a random GUID when None.
            object_id: Its object (principal) id; a random GUID when None.

        Returns:
            The identity.

        Raises:
            ConfigurationError: A name or id is malformed.
        """
        _check_guid(subscription_id, "subscription_id")
        _check_name(resource_group, "resource_group")
        _check_name(name, "identity name")
        return cls(
            name=name,
            client_id=client_id or str(uuid.uuid4()),
            object_id=object_id or str(uuid.uuid4()),
            resource_id=_USER_RESOURCE_ID.format(subscription=subscription_id, group=resource_group, name=name),
            kind="user",
        )

    @classmethod
    def system(
        cls,
        compute: str = DEFAULT_COMPUTE,
        *,
        workspace: str = DEFAULT_WORKSPACE,
        subscription_id: str = DEFAULT_SUBSCRIPTION_ID,
        resource_group: str = DEFAULT_RESOURCE_GROUP,
        client_id: str | None = None,
        object_id: str | None = None,
    ) -> EmulatedIdentity:
        """Return the system-assigned identity of an Azure ML compute (``.../workspaces/{ws}/computes/{compute}``).

        Args:
            compute: The compute cluster's name (also the identity's name).
            workspace: The workspace the compute belongs to.
            subscription_id: The subscription of its resource id.
            resource_group: The resource group of its resource id.
            client_id: Its client id; a random GUID when None.
            object_id: Its object (principal) id; a random GUID when None.

        Returns:
            The identity.

        Raises:
            ConfigurationError: A name or id is malformed.
        """
        _check_guid(subscription_id, "subscription_id")
        _check_name(resource_group, "resource_group")
        _check_name(workspace, "workspace")
        _check_name(compute, "compute")
        return cls(
            name=compute,
            client_id=client_id or str(uuid.uuid4()),
            object_id=object_id or str(uuid.uuid4()),
            resource_id=_SYSTEM_RESOURCE_ID.format(
                subscription=subscription_id, group=resource_group, workspace=workspace, compute=compute
            ),
            kind="system",
        )
