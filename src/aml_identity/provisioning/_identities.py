"""A cluster's managed identity as a spec names it: :class:`SystemAssigned` or :class:`UserAssigned`.

Pure, like the rest of :mod:`aml_identity.provisioning.spec`, which re-exports every name here; import them
from there. Read from an ARM body (:func:`identity_from_arm`) or from SDK v1's ``identity_type`` and
``identity_id`` keywords (:func:`identity_from_v1`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from aml_identity.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = ["Identity", "SystemAssigned", "UserAssigned", "identity_from_arm", "identity_from_v1"]

# A user-assigned identity's ARM resource id: what UserAssigned accepts (ARM ids compare case-insensitively).
_USER_ASSIGNED_ID = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+$",
    re.IGNORECASE,
)
# The shape of such an id, shown in every message that refuses one.
_UAI_EXAMPLE = (
    "/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>"
)


@dataclass(frozen=True)
class SystemAssigned:
    """The cluster's own system-assigned managed identity (created and deleted with the cluster)."""

    kind: ClassVar[str] = "SystemAssigned"

    def to_arm(self) -> dict[str, Any]:
        """Return the ``identity`` object of the ARM body."""
        return {"type": "SystemAssigned"}

    def __str__(self) -> str:
        """``SystemAssigned``."""
        return "SystemAssigned"


@dataclass(frozen=True, init=False)
class UserAssigned:
    """One or more user-assigned managed identities; the first is the cluster's default identity.

    Attributes:
        resource_ids: The identities' ARM resource ids, in order, without duplicates.
    """

    kind: ClassVar[str] = "UserAssigned"
    resource_ids: tuple[str, ...]

    def __init__(self, resource_ids: str | Iterable[str]) -> None:
        """Validate the ids.

        Args:
            resource_ids: One id or several
                (``/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>``).

        Raises:
            ConfigurationError: None given, or one is not a user-assigned identity resource id.
        """
        ids = [resource_ids] if isinstance(resource_ids, str) else list(resource_ids)
        unique: list[str] = []
        for value in ids:
            if not isinstance(value, str) or not _USER_ASSIGNED_ID.match(value.strip()):
                msg = (
                    f"identity_id {value!r} is not a user-assigned identity resource id; expected "
                    f"{_UAI_EXAMPLE} "
                    "(`az identity show -g <rg> -n <name> --query id` prints it)."
                )
                raise ConfigurationError(msg, name="identity_id")
            if value.strip().lower() not in {u.lower() for u in unique}:
                unique.append(value.strip())
        if not unique:
            msg = f"UserAssigned needs at least one identity resource id ({_UAI_EXAMPLE})."
            raise ConfigurationError(msg, name="identity_id")
        object.__setattr__(self, "resource_ids", tuple(unique))

    @property
    def default(self) -> str:
        """The default identity: the first one."""
        return self.resource_ids[0]

    def to_arm(self) -> dict[str, Any]:
        """Return the ``identity`` object: ``userAssignedIdentities`` keyed by resource id, values ``{}``."""
        return {"type": "UserAssigned", "userAssignedIdentities": {rid: {} for rid in self.resource_ids}}

    def same_as(self, other: UserAssigned) -> bool:
        """Whether both hold the same identities in the same order (ARM ids compare case-insensitively)."""
        return [r.lower() for r in self.resource_ids] == [r.lower() for r in other.resource_ids]

    def __str__(self) -> str:
        """``UserAssigned(<ids>)``."""
        return f"UserAssigned({', '.join(self.resource_ids)})"


Identity = SystemAssigned | UserAssigned


def identity_from_arm(identity: Mapping[str, Any] | None) -> Identity | None:
    """Read the ``identity`` of an ARM compute body."""
    if not identity:
        return None
    kind = str(identity.get("type") or "None").replace(" ", "").lower()
    if kind == "systemassigned":
        return SystemAssigned()
    if "userassigned" in kind and identity.get("userAssignedIdentities"):
        return UserAssigned(list(identity["userAssignedIdentities"]))
    return None


def identity_from_v1(identity_type: str | None, identity_id: str | Sequence[str] | None) -> Identity | None:
    """The identity of SDK v1's ``identity_type``/``identity_id`` keywords (None for neither).

    Raises:
        ConfigurationError: The combination is invalid (ids without ``"UserAssigned"``, ``"UserAssigned"``
            without ids, an unknown type, or an id that is not a user-assigned identity resource id).
    """
    identity: Identity | None = None
    if identity_type is None:
        if identity_id:
            msg = "identity_id needs identity_type='UserAssigned' (identity_id cannot be set without it)."
            raise ConfigurationError(msg, name="identity_id")
    else:
        kind = str(identity_type).replace("_", "").replace(" ", "").lower()
        if kind == "systemassigned":
            if identity_id:
                msg = (
                    "identity_id cannot be set when identity_type is 'SystemAssigned': a cluster holds a "
                    "system-assigned identity or user-assigned ones, not both. Use "
                    "identity_type='UserAssigned'."
                )
                raise ConfigurationError(msg, name="identity_id")
            identity = SystemAssigned()
        elif kind == "userassigned":
            if not identity_id:
                msg = f"identity_type='UserAssigned' needs identity_id, the identity's id ({_UAI_EXAMPLE})."
                raise ConfigurationError(msg, name="identity_id")
            identity = UserAssigned(identity_id)
        else:
            msg = f"identity_type must be 'SystemAssigned' or 'UserAssigned' (got {identity_type!r})."
            raise ConfigurationError(msg, name="identity_type")
    return identity
