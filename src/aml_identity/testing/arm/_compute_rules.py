"""The service-side rules the ARM emulator applies to a compute PUT beyond the schema.

Each rule is one the service (or its documentation) states: what cannot change after creation, the
identity combinations AmlCompute supports, that a cluster must fit at least one node in the quota, that
user-assigned identities must exist.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from aml_identity.testing.arm._state import ArmError, ArmState, Compute, _canonical, family_usage_name

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["accept_compute", "check_scale"]

_IDENTITY_TYPES = ("None", "SystemAssigned", "UserAssigned", "SystemAssigned,UserAssigned")
# Properties the docs say cannot change after creation (VM size and priority, SSH access, the network).
_IMMUTABLE = ("vmSize", "vmPriority", "remoteLoginPortPublicAccess", "subnet", "osType")
_DEFAULT_IDLE = "PT30M"  # the service default, 1800 s


def check_scale(scale: Mapping[str, Any]) -> None:
    """Refuse scale settings the service refuses (``0 <= minNodeCount <= maxNodeCount``)."""
    minimum, maximum = scale.get("minNodeCount", 0), scale.get("maxNodeCount")
    if not isinstance(maximum, int) or not isinstance(minimum, int) or not 0 <= minimum <= maximum:
        raise ArmError(
            400,
            "InvalidScaleSettings",
            f"Invalid scale settings: minNodeCount ({minimum}) must be between 0 and maxNodeCount ({maximum}).",
            target="properties.properties.scaleSettings",
        )


def _remote_login(value: Any, subnet: Any) -> str:
    resolved = _canonical(value or "NotSpecified", ("Enabled", "Disabled", "NotSpecified"))
    if resolved == "NotSpecified":
        # The spec: NotSpecified closes the port when a VNet is set, else opens it; after creation the service
        # reports Enabled or Disabled.
        return "Disabled" if subnet else "Enabled"
    return str(resolved)


def _identity(state: ArmState, body: Any, existing: Compute | None) -> tuple[dict[str, Any], tuple[str, str] | None]:
    if not body:
        return {"type": "None"}, None
    kind = _canonical(body.get("type"), _IDENTITY_TYPES)
    assigned = body.get("userAssignedIdentities") or {}
    if kind == "SystemAssigned,UserAssigned":
        raise ArmError(
            400,
            "BadRequest",
            "AmlCompute clusters support one system-assigned identity or user-assigned identities, not both "
            "(https://learn.microsoft.com/azure/machine-learning/how-to-identity-based-service-authentication).",
            target="identity.type",
        )
    if kind != "UserAssigned" and assigned:
        raise ArmError(
            400,
            "BadRequest",
            f"userAssignedIdentities can only be set when identity.type is UserAssigned, not {kind}.",
        )
    if kind == "UserAssigned":
        if not assigned:
            raise ArmError(
                400,
                "BadRequest",
                "identity.type UserAssigned needs at least one entry in userAssignedIdentities.",
            )
        keys = []
        for key in assigned:
            record = state.identities.get(key.lower())
            if record is None:
                raise ArmError(
                    400,
                    "FailedIdentityOperation",
                    f"Identity operation failed: the user-assigned identity '{key}' does not exist (NotFound).",
                    target="identity.userAssignedIdentities",
                )
            keys.append(record["body"]["id"])
        return {"type": "UserAssigned", "userAssignedIdentities": {k: {} for k in keys}}, None
    if kind == "SystemAssigned":
        keep = existing.system_identity if existing is not None else None
        return {"type": "SystemAssigned"}, keep or (state.new_principal(), state.tenant_id)
    return {"type": "None"}, None


def _check_quota(state: ArmState, subscription: str, location: str, props: Mapping[str, Any]) -> None:
    size = state.size(location, str(props["vmSize"]))
    if size is None:
        return
    priority = str(props.get("vmPriority") or "Dedicated")
    lines = [("", "Total Cluster Dedicated Regional vCPUs")] if priority == "Dedicated" else []
    lines.append((size.family, family_usage_name(size.family, priority)))
    if priority == "LowPriority":
        lines.append(("", "Total Cluster LowPriority Regional vCPUs"))
    for family, name in lines:
        free = state.free_cores(subscription, location, family, priority)
        if free is not None and free < size.vcpus:
            limit = state.quota(location, family, priority).limit
            raise ArmError(
                400,
                "BadRequest",
                f"The specified subscription has a {name} quota of {limit} ({max(free, 0)} available) and "
                "cannot accommodate at least 1 requested managed compute node which maps to "
                f"{size.vcpus} vCPUs.",
            )


def _aml_properties(aml_in: dict[str, Any]) -> dict[str, Any]:
    """The AmlCompute properties to keep from a request: canonical casing, defaults, no secrets."""
    if not aml_in.get("vmSize"):
        raise ArmError(400, "BadRequest", "properties.properties.vmSize is required.", target="properties.properties")
    scale = dict(aml_in.get("scaleSettings") or {})
    scale.setdefault("minNodeCount", 0)
    scale.setdefault("nodeIdleTimeBeforeScaleDown", _DEFAULT_IDLE)
    check_scale(scale)
    aml: dict[str, Any] = {
        "osType": _canonical(aml_in.get("osType") or "Linux", ("Linux", "Windows")),
        "vmSize": aml_in["vmSize"],
        "vmPriority": _canonical(aml_in.get("vmPriority") or "Dedicated", ("Dedicated", "LowPriority")),
        "isolatedNetwork": bool(aml_in.get("isolatedNetwork", False)),
        "scaleSettings": scale,
        "remoteLoginPortPublicAccess": _remote_login(aml_in.get("remoteLoginPortPublicAccess"), aml_in.get("subnet")),
        "enableNodePublicIp": aml_in.get("enableNodePublicIp", True),
    }
    for key in ("subnet", "virtualMachineImage", "propertyBag"):
        if aml_in.get(key) is not None:
            aml[key] = aml_in[key]
    credentials = aml_in.get("userAccountCredentials")
    if credentials:
        aml["userAccountCredentials"] = {k: v for k, v in credentials.items() if k != "adminUserPassword"}
    return aml


def accept_compute(
    state: ArmState, workspace: Mapping[str, Any], name: str, body: Any, existing: Compute | None
) -> Compute:
    """Apply a schema-valid PUT body; return the created or updated compute (not yet started).

    Raises:
        ArmError: A rule of the service refuses the body.
    """
    location = str(body.get("location") or workspace["location"])
    props_in = body.get("properties") or {}
    if _canonical(props_in.get("computeType"), ("AmlCompute",)) != "AmlCompute":
        raise ArmError(
            400,
            "BadRequest",
            f"The aml-identity ARM emulator models AmlCompute clusters only, not {props_in.get('computeType')!r}.",
            target="properties.computeType",
        )
    aml = _aml_properties(copy.deepcopy(props_in.get("properties") or {}))
    size = state.size(location, str(aml["vmSize"]))
    if size is None:
        offered = ", ".join(s.name for s in state.sizes(location))
        raise ArmError(
            400,
            "BadRequest",
            f"The VM size '{aml['vmSize']}' is not offered for AmlCompute in {location} ({offered}).",
        )
    if aml["vmPriority"] == "LowPriority" and not size.low_priority_capable:
        raise ArmError(400, "BadRequest", f"The VM size '{size.name}' cannot run low-priority nodes.")
    identity, system = _identity(state, body.get("identity"), existing)
    inner: dict[str, Any] = {"computeType": "AmlCompute", "properties": aml}
    for key in ("description", "disableLocalAuth", "computeLocation"):
        if props_in.get(key) is not None:
            inner[key] = props_in[key]
    spec = {"identity": identity, "tags": dict(body.get("tags") or {}), "properties": inner}
    if body.get("sku"):
        spec["sku"] = body["sku"]
    ws_parts = workspace["id"].split("/")
    if existing is not None:
        _check_unchanged(existing, aml, location)
        existing.spec = spec
        existing.system_identity = system
        return existing
    _check_quota(state, ws_parts[2], location, aml)
    now = state.now()
    compute = Compute(
        id=f"{workspace['id']}/computes/{name}",
        name=name,
        workspace=workspace["id"],
        location=location,
        spec=spec,
        created_on=now,
        modified_on=now,
        allocation_since=now,
        system_identity=system,
    )
    state.computes[compute.id.lower()] = compute
    return compute


def _check_unchanged(existing: Compute, aml: Mapping[str, Any], location: str) -> None:
    if location.lower() != existing.location.lower():
        raise ArmError(400, "BadRequest", f"The location of compute '{existing.name}' cannot be changed.")
    for key in _IMMUTABLE:
        before, after = existing.props.get(key), aml.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            before, after = before.get("id"), after.get("id")
        if str(before or "").lower() != str(after or "").lower():
            raise ArmError(
                400,
                "BadRequest",
                f"Property '{key}' of compute '{existing.name}' cannot be changed after creation "
                f"({before!r} -> {after!r}); delete the cluster and create it again.",
                target=f"properties.properties.{key}",
            )
