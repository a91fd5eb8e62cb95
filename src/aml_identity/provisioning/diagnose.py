"""Explain a cluster stuck "resizing 0 -> 0": find the management locks that block its scaling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aml_identity.errors import ProvisioningError
from aml_identity.provisioning.workspace import arm_of

if TYPE_CHECKING:
    from aml_identity.provisioning.clusters import Cluster, ClusterStatus

__all__ = ["LOCKS_API_VERSION", "BlockingLock", "DiagnosisReport", "diagnose"]

LOCKS_API_VERSION = "2020-05-01"
# Lock levels that stop Azure ML from scaling: "locks such as 'Delete' or 'Read-only' ... can prevent
# operations like creation, scaling, or deletion" (Azure ML docs).
_BLOCKING_LEVELS = frozenset({"cannotdelete", "readonly"})
# The network resources Azure ML creates for a cluster; the docs warn never to lock them.
_BATCH_MARKER = "-azurebatch-cloudservice"
_FIX = (
    "remove it (`az lock delete --ids {id}`) and lock individual resources instead; never lock the "
    "workspace's "
    "resource group, the virtual network's resource group, or the *-azurebatch-cloudservice* network "
    "resources"
)


@dataclass(frozen=True)
class BlockingLock:
    """A management lock that keeps the cluster from scaling.

    Attributes:
        id: The lock's ARM id.
        name: The lock's name.
        level: ``CanNotDelete`` or ``ReadOnly``.
        scope: What it is on (subscription, resource group or resource id).
        where: Which scope that is for the cluster (``"the workspace's resource group"``...).
        notes: The lock's notes.
        fix: What to do about it.
    """

    id: str
    name: str
    level: str
    scope: str
    where: str
    notes: str | None
    fix: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "id": self.id,
            "name": self.name,
            "level": self.level,
            "scope": self.scope,
            "where": self.where,
            "notes": self.notes,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class DiagnosisReport:
    """What :func:`diagnose` found.

    Attributes:
        cluster: The cluster's name.
        status: Its state when diagnosed.
        locks: The locks that block scaling (empty when none).
        checked: The scopes whose locks were listed.
        unchecked: Scopes that could not be listed, with the reason.
    """

    cluster: str
    status: ClusterStatus
    locks: tuple[BlockingLock, ...]
    checked: tuple[str, ...]
    unchecked: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing blocks the cluster and it reports no errors."""
        return not self.locks and not self.status.errors

    @property
    def text(self) -> str:
        """The report as text: the state, each blocking lock with its scope and fix, what was checked."""
        lines = [f"Cluster {self.cluster!r}: {self.status.describe()}."]
        if self.status.stuck_resizing:
            lines.append('It is "stuck resizing 0 -> 0": Azure ML cannot scale it, which management locks cause.')
        if self.locks:
            lines.append(f"{len(self.locks)} management lock(s) block scaling:")
            lines.extend(
                f"  - lock {lock.name!r} ({lock.level}) on {lock.where}: {lock.scope}"
                + (f' (notes: "{lock.notes}")' if lock.notes else "")
                + f"\n    Fix: {lock.fix}."
                for lock in self.locks
            )
        else:
            lines.append("No management lock blocks its scaling.")
        if self.status.errors:
            lines.append("Errors reported by the cluster: " + "; ".join(self.status.errors))
        lines.append("Checked locks at: " + ", ".join(self.checked))
        lines.extend(f"Could not check {item}" for item in self.unchecked)
        return "\n".join(lines)

    def __str__(self) -> str:
        """The :attr:`text`."""
        return self.text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "cluster": self.cluster,
            "ok": self.ok,
            "stuckResizing": self.status.stuck_resizing,
            "status": self.status.to_dict(),
            "blockingLocks": [lock.to_dict() for lock in self.locks],
            "checked": list(self.checked),
            "unchecked": list(self.unchecked),
        }


def _lock_scope(lock_id: str) -> str:
    marker = "/providers/microsoft.authorization/locks/"
    index = lock_id.lower().rfind(marker)
    return lock_id[:index] if index >= 0 else lock_id


def _classify(scope: str, subscription: str, groups: dict[str, str]) -> str | None:
    """Say which of the cluster's scopes ``scope`` is, or None when a lock there does not block it."""
    lowered = scope.rstrip("/").lower()
    if lowered == f"/subscriptions/{subscription}".lower():
        return "the subscription"
    for group, label in groups.items():
        if lowered == group:
            return label
        resource_name = lowered.rsplit("/", 1)[-1]
        if lowered.startswith(group + "/providers/") and _BATCH_MARKER in resource_name:
            return f"an Azure ML network resource in {label}"
    return None


def diagnose(cluster: Cluster) -> DiagnosisReport:
    """Find what keeps ``cluster`` from scaling: management locks on the scopes Azure ML needs to change.

    Lists the locks of the subscription, the workspace's resource group and, when the cluster has a subnet,
    the virtual network's resource group, and reports each ``CanNotDelete``/``ReadOnly`` lock on one of
    them or on the ``<GUID>-azurebatch-cloudservice*`` network resources in them, naming the fix.

    Returns:
        The report; ``report.text`` is printable, ``report.ok`` is True when nothing was found.
    """
    workspace = cluster.workspace
    status = cluster.status()
    subscription = workspace.subscription_id
    group = f"/subscriptions/{subscription}/resourceGroups/{workspace.resource_group}"
    groups = {group.lower(): (group, f"the workspace's resource group ({workspace.resource_group})")}
    subnet = (((cluster.resource.get("properties") or {}).get("properties") or {}).get("subnet") or {}).get("id")
    parts = str(subnet or "").split("/")
    if len(parts) > 4 and parts[3].lower() == "resourcegroups":  # noqa: PLR2004 - /subscriptions/s/resourceGroups/g
        vnet_group = "/".join(parts[:5])
        groups.setdefault(vnet_group.lower(), (vnet_group, f"the virtual network's resource group ({parts[4]})"))
    labels = {key: label for key, (_, label) in groups.items()}
    scopes = [f"/subscriptions/{subscription}", *(original for original, _ in groups.values())]
    found: dict[str, BlockingLock] = {}
    checked: list[str] = []
    unchecked: list[str] = []
    for scope in scopes:
        try:
            locks = arm_of(workspace).list_all(
                f"{scope}/providers/Microsoft.Authorization/locks",
                api_version=LOCKS_API_VERSION,
                what=f"listing the locks of {scope}",
            )
        except ProvisioningError as error:
            unchecked.append(f"{scope}: {error} (listing locks needs Microsoft.Authorization/locks/read)")
            continue
        checked.append(scope)
        for lock in locks:
            level = str((lock.get("properties") or {}).get("level") or "")
            lock_id = str(lock.get("id") or "")
            where = _classify(_lock_scope(lock_id), subscription, labels)
            if level.lower() not in _BLOCKING_LEVELS or where is None or lock_id.lower() in found:
                continue
            found[lock_id.lower()] = BlockingLock(
                id=lock_id,
                name=str(lock.get("name") or lock_id.rsplit("/", 1)[-1]),
                level=level,
                scope=_lock_scope(lock_id),
                where=where,
                notes=(lock.get("properties") or {}).get("notes"),
                fix=_FIX.format(id=lock_id),
            )
    return DiagnosisReport(cluster.name, status, tuple(found.values()), tuple(checked), tuple(unchecked))
