"""A workspace's compute clusters: get, ensure, create, wait, change identity and scale, delete."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from aml_identity.errors import (
    ClusterNotFoundError,
    ConfigurationError,
    OperationFailedError,
    ProvisioningTimeoutError,
    redact,
)
from aml_identity.provisioning._preflight import preflight as _preflight
from aml_identity.provisioning.spec import (
    ClusterSpec,
    Drift,
    Identity,
    ProvisioningWarning,
    SystemAssigned,
    UserAssigned,
    check_scale,
    identity_from_arm,
    scale_warnings,
)
from aml_identity.provisioning.workspace import Workspace, arm_of

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from aml_identity._arm import ArmOperation

__all__ = ["Cluster", "ClusterCollection", "ClusterStatus"]

COMPUTE_API_VERSION = "2025-12-01"
# Seconds between GETs while waiting for a cluster's nodes (azureml-core polls every 5 s too).
POLL_INTERVAL_S = 5.0
# How long wait_for_completion waits by default: azureml-core's 25 minutes.
DEFAULT_WAIT_TIMEOUT_S = 25 * 60.0
# Read-only parts of a compute that a PUT does not take back.
_READ_ONLY_TOP = ("id", "name", "type", "systemData")
_READ_ONLY_COMPUTE = (
    "provisioningState",
    "createdOn",
    "modifiedOn",
    "provisioningErrors",
    "isAttachedCompute",
)
_READ_ONLY_AML = (
    "allocationState",
    "allocationStateTransitionTime",
    "errors",
    "currentNodeCount",
    "targetNodeCount",
    "nodeStateCounts",
)


@dataclass(frozen=True)
class ClusterStatus:
    """Where a cluster is, from one GET.

    Attributes:
        provisioning_state: ``Creating``, ``Updating``, ``Succeeded``, ``Failed``...
        allocation_state: ``Steady`` or ``Resizing``.
        current_node_count: Nodes allocated now.
        target_node_count: Nodes the current (or last) resize aims at.
        node_state_counts: ``idle``, ``running``, ``preparing``, ``unusable``, ``leaving``, ``preempted``.
        errors: Provisioning and node errors as ``code: message``.
        allocation_state_transition_time: When the allocation state last changed.
    """

    provisioning_state: str
    allocation_state: str | None
    current_node_count: int
    target_node_count: int
    node_state_counts: Mapping[str, int] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    allocation_state_transition_time: str | None = None

    @classmethod
    def from_arm(cls, resource: Mapping[str, Any]) -> ClusterStatus:
        """Read the status out of a compute body."""
        compute = resource.get("properties") or {}
        props = compute.get("properties") or {}
        counts = {
            key.removesuffix("NodeCount"): int(value or 0)
            for key, value in (props.get("nodeStateCounts") or {}).items()
        }
        errors = [*(compute.get("provisioningErrors") or []), *(props.get("errors") or [])]
        return cls(
            provisioning_state=str(compute.get("provisioningState") or "Unknown"),
            allocation_state=props.get("allocationState"),
            current_node_count=int(props.get("currentNodeCount") or 0),
            target_node_count=int(props.get("targetNodeCount") or 0),
            node_state_counts=counts,
            errors=tuple(_error_text(e) for e in errors),
            allocation_state_transition_time=props.get("allocationStateTransitionTime"),
        )

    @property
    def stuck_resizing(self) -> bool:
        """Resizing with no nodes and a target of none: the "0 -> 0" that locks cause."""
        return self.allocation_state == "Resizing" and self.current_node_count == 0 and self.target_node_count == 0

    def describe(self) -> str:
        """One line: states and node counts."""
        counts = ", ".join(f"{k} {v}" for k, v in self.node_state_counts.items() if v)
        text = (
            f"provisioning {self.provisioning_state}, allocation {self.allocation_state or '-'}, nodes "
            f"{self.current_node_count} -> {self.target_node_count}"
        )
        return f"{text} ({counts})" if counts else text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "provisioningState": self.provisioning_state,
            "allocationState": self.allocation_state,
            "currentNodeCount": self.current_node_count,
            "targetNodeCount": self.target_node_count,
            "nodeStateCounts": dict(self.node_state_counts),
            "errors": list(self.errors),
            "allocationStateTransitionTime": self.allocation_state_transition_time,
        }


def _error_text(entry: Any) -> str:
    error = entry.get("error", entry) if isinstance(entry, dict) else {}
    if not isinstance(error, dict):
        return redact(str(entry))
    return redact(f"{error.get('code', 'Error')}: {error.get('message', '')}")


class ClusterCollection:
    """The compute clusters of a workspace (``ws.clusters``)."""

    def __init__(self, workspace: Workspace) -> None:
        """Wrap ``workspace``."""
        self.workspace = workspace

    def _path(self, name: str) -> str:
        return f"{self.workspace.id}/computes/{name}"

    def get(self, name: str) -> Cluster:
        """Return the cluster ``name``.

        Raises:
            ClusterNotFoundError: It does not exist (the message says how to create it).
        """
        response = arm_of(self.workspace).send("GET", self._path(name), api_version=COMPUTE_API_VERSION)
        if response.status == 404:  # noqa: PLR2004 - HTTP status
            msg = (
                f"Cluster {name!r} not found in workspace {self.workspace.name!r}: create it with "
                "ws.clusters.ensure(spec) or `aml-identity cluster ensure`."
            )
            raise ClusterNotFoundError(msg, status_code=404, error_code=response.error_code())
        if response.status != 200:  # noqa: PLR2004
            raise arm_of(self.workspace).error(response, f"reading cluster {name!r}")
        return Cluster(self.workspace, response.body)

    def list(self) -> list[Cluster]:
        """Every compute of the workspace that is an AmlCompute cluster."""
        items = arm_of(self.workspace).list_all(
            f"{self.workspace.id}/computes", api_version=COMPUTE_API_VERSION, what="listing clusters"
        )
        return [
            Cluster(self.workspace, item)
            for item in items
            if (item.get("properties") or {}).get("computeType") == "AmlCompute"
        ]

    def create(self, spec: ClusterSpec, *, preflight: bool = True) -> Cluster:
        """Create a cluster (a PUT of the whole resource); wait with :meth:`Cluster.wait_for_completion`.

        Args:
            spec: The cluster.
            preflight: Check the VM size and the core quota first (a shortfall raises before the PUT).

        Raises:
            ConfigurationError: The cluster exists (use :meth:`ensure`), or the VM size is not offered.
            QuotaExceededError: ``max_nodes`` would not fit the quota.
            ProvisioningError: ARM refused the request.
        """
        return self._create(spec, preflight=preflight, stacklevel=3)

    def _create(self, spec: ClusterSpec, *, preflight: bool, stacklevel: int) -> Cluster:
        existing = arm_of(self.workspace).send("GET", self._path(spec.name), api_version=COMPUTE_API_VERSION)
        if existing.status == 200:  # noqa: PLR2004 - HTTP status
            msg = (
                f"Cluster {spec.name!r} already exists in workspace {self.workspace.name!r}; a PUT would "
                "overwrite "
                "it. Use ws.clusters.ensure(spec) (reports drift) or the cluster's "
                "update_scale()/add_identity()."
            )
            raise ConfigurationError(msg, name="name")
        for text in spec.warnings():
            warnings.warn(text, ProvisioningWarning, stacklevel=stacklevel)
        location = spec.location or self.workspace.location
        if preflight:
            _preflight(arm_of(self.workspace), self.workspace.subscription_id, location, spec)
        body = spec.to_arm(location=location, subscription_id=self.workspace.subscription_id)
        operation = arm_of(self.workspace).begin(
            "PUT",
            self._path(spec.name),
            api_version=COMPUTE_API_VERSION,
            what=f"creating cluster {spec.name!r}",
            body=body,
        )
        return Cluster(self.workspace, operation.initial.body or {"name": spec.name}, operation=operation)

    def ensure(self, spec: ClusterSpec, *, preflight: bool = True) -> Cluster:
        """Return the cluster, creating it when it does not exist; never overwrite one that does.

        An existing cluster that differs from ``spec`` is returned as it is, with the differences in
        :attr:`Cluster.drift` and a :class:`ProvisioningWarning` naming each and its fix.
        """
        try:
            cluster = self.get(spec.name)
        except ClusterNotFoundError:
            return self._create(spec, preflight=preflight, stacklevel=3)
        cluster.drift = tuple(spec.drift(cluster.resource))
        if cluster.drift:
            listed = "; ".join(str(d) for d in cluster.drift)
            warnings.warn(
                f"Cluster {spec.name!r} exists and differs from the spec (left unchanged): {listed}",
                ProvisioningWarning,
                stacklevel=2,
            )
        return cluster


class Cluster:
    """An AmlCompute cluster of a workspace.

    Attributes:
        workspace: Its workspace.
        name: The cluster name.
        resource: The last ARM body seen.
        drift: How it differs from the spec given to :meth:`ClusterCollection.ensure` (empty otherwise).
    """

    def __init__(
        self, workspace: Workspace, resource: Mapping[str, Any], *, operation: ArmOperation | None = None
    ) -> None:
        """Wrap an ARM body (use ``ws.clusters.get`` or ``ensure`` rather than this)."""
        self.workspace = workspace
        self.resource: dict[str, Any] = dict(resource)
        self.name = str(resource.get("name") or "")
        self.drift: tuple[Drift, ...] = ()
        self._operation = operation

    @property
    def id(self) -> str:
        """The cluster's ARM id."""
        return f"{self.workspace.id}/computes/{self.name}"

    @property
    def identity(self) -> Identity | None:
        """Its identity: :class:`SystemAssigned`, :class:`UserAssigned` or None."""
        return identity_from_arm(self.resource.get("identity"))

    @property
    def principal_id(self) -> str | None:
        """The principal (object) id of its default identity (system-assigned, or the first user-assigned)."""
        return self._default_identity_field("principalId")

    @property
    def client_id(self) -> str | None:
        """The client id of its default identity (what jobs see as ``DEFAULT_IDENTITY_CLIENT_ID``)."""
        return self._default_identity_field("clientId")

    def _default_identity_field(self, key: str) -> str | None:
        identity = self.resource.get("identity") or {}
        kind = self.identity
        if isinstance(kind, SystemAssigned):
            value = identity.get(key)
            return str(value) if value else None
        if isinstance(kind, UserAssigned):
            value = (identity.get("userAssignedIdentities") or {}).get(kind.default, {}).get(key)
            return str(value) if value else None
        return None

    def refresh(self) -> Cluster:
        """Re-read the cluster (GET)."""
        self.resource = dict(self.workspace.clusters.get(self.name).resource)
        return self

    def status(self) -> ClusterStatus:
        """Its current state and node counts (GET)."""
        return ClusterStatus.from_arm(self.refresh().resource)

    def wait_for_completion(
        self,
        show_output: bool = False,  # noqa: FBT001, FBT002 - azureml-core's signature
        min_node_count: int | None = None,
        timeout: float = DEFAULT_WAIT_TIMEOUT_S,
        *,
        output: TextIO | None = None,
    ) -> ClusterStatus:
        """Wait for the pending operation, then until the cluster is provisioned with enough nodes.

        Args:
            show_output: Print the state and node counts each time they change.
            min_node_count: Nodes to wait for; the cluster's ``min_nodes`` when None.
            timeout: Seconds to wait between polls in total before giving up.
            output: Where progress goes (standard output by default).

        Returns:
            The final status.

        Raises:
            OperationFailedError: Provisioning ended ``Failed``/``Canceled``; carries the service's error.
            ProvisioningTimeoutError: The nodes did not come in time (a resize stuck at 0 -> 0 is
                usually a management lock: see :func:`~aml_identity.provisioning.diagnose`).
        """
        stream = output or sys.stdout
        last = ""

        def show(text: str) -> None:
            nonlocal last
            if show_output and text != last:
                print(f"{self.name}: {text}", file=stream, flush=True)
                last = text

        if self._operation is not None and not self._operation.done():
            operation, self._operation = self._operation, None
            show(f"{operation.what}: {operation.status()}")
            operation.wait(on_status=lambda status: show(f"{operation.what}: {status}"))
        waited = 0.0
        while True:
            status = self.status()
            show(status.describe())
            if status.provisioning_state in ("Failed", "Canceled"):
                detail = "; ".join(status.errors) or "no error details"
                code = status.errors[0].split(":", 1)[0] if status.errors else None
                msg = f"Cluster {self.name!r} provisioning ended {status.provisioning_state}: {detail}"
                raise OperationFailedError(msg, error_code=code)
            wanted = self._min_nodes() if min_node_count is None else min_node_count
            if status.provisioning_state == "Succeeded" and status.current_node_count >= wanted:
                return status
            if waited >= timeout:
                hint = (
                    " It is stuck resizing 0 -> 0, which management locks cause: run "
                    f"`aml-identity cluster diagnose --name {self.name}` or diagnose(cluster)."
                    if status.stuck_resizing
                    else ""
                )
                msg = (
                    f"Cluster {self.name!r} did not reach {wanted} node(s) in {timeout:.0f} s: "
                    f"{status.describe()}.{hint}"
                )
                raise ProvisioningTimeoutError(msg)
            arm_of(self.workspace).sleep(POLL_INTERVAL_S)
            waited += POLL_INTERVAL_S

    def _min_nodes(self) -> int:
        scale = ((self.resource.get("properties") or {}).get("properties") or {}).get("scaleSettings") or {}
        return int(scale.get("minNodeCount") or 0)

    def _put(self, resource: dict[str, Any], what: str) -> Cluster:
        operation = arm_of(self.workspace).begin(
            "PUT", self.id, api_version=COMPUTE_API_VERSION, what=what, body=_writable(resource)
        )
        final = operation.wait()
        self.resource = dict(final) if isinstance(final, dict) else self.refresh().resource
        return self

    def add_identity(
        self,
        identity: Identity | str | Sequence[str],
        *,
        replace: bool = False,
    ) -> Cluster:
        """Give the cluster an identity: GET, edit the identity, PUT the whole resource, wait.

        Args:
            identity: :class:`SystemAssigned`, :class:`UserAssigned`, or user-assigned identity id(s).
                User-assigned ones are added after those already there (the first stays the default).
            replace: Replace the identity the cluster has (system- or user-assigned) instead of refusing to
                mix kinds or adding to the list.

        Raises:
            ConfigurationError: The cluster holds the other kind of identity (remove it first, or pass
                ``replace=True``), or an id is not a user-assigned identity resource id.
        """
        wanted = identity if isinstance(identity, (SystemAssigned, UserAssigned)) else UserAssigned(identity)
        resource = self.refresh().resource
        current = identity_from_arm(resource.get("identity"))
        if current is not None and type(current) is not type(wanted) and not replace:
            msg = (
                f"Cluster {self.name!r} has a {current.kind} identity; a cluster holds a system-assigned "
                "identity or "
                f"user-assigned ones, not both. Remove it first with cluster.remove_identity() "
                "(`aml-identity cluster remove-identity`), or pass replace=True."
            )
            raise ConfigurationError(msg, name="identity")
        if isinstance(wanted, UserAssigned) and isinstance(current, UserAssigned) and not replace:
            wanted = UserAssigned([*current.resource_ids, *wanted.resource_ids])
        if _identity_equal(wanted, current):
            return self  # nothing to change: no PUT
        resource["identity"] = wanted.to_arm()
        return self._put(resource, f"setting identity {wanted} on cluster {self.name!r}")

    def remove_identity(self, identity_id: str | None = None) -> Cluster:
        """Remove one user-assigned identity, or (with no argument) every identity: GET, edit, PUT, wait.

        Raises:
            ConfigurationError: The cluster has no identity, or not the one named.
        """
        resource = self.refresh().resource
        current = identity_from_arm(resource.get("identity"))
        if current is None:
            raise ConfigurationError(f"Cannot remove identity: cluster {self.name!r} has no identity.", name="identity")
        if identity_id is None:
            resource["identity"] = {"type": "None"}
        else:
            held = current.resource_ids if isinstance(current, UserAssigned) else ()
            remaining = [r for r in held if r.lower() != identity_id.lower()]
            if len(remaining) == len(held):
                msg = f"Cluster {self.name!r} has no user-assigned identity {identity_id!r} (it has {current})."
                raise ConfigurationError(msg, name="identity_id")
            resource["identity"] = UserAssigned(remaining).to_arm() if remaining else {"type": "None"}
        return self._put(resource, f"removing identity from cluster {self.name!r}")

    def update_scale(
        self,
        *,
        min_nodes: int | None = None,
        max_nodes: int | None = None,
        idle_seconds_before_scaledown: int | None = None,
    ) -> Cluster:
        """Change the scale settings with a PATCH (the only change the spec's PATCH carries), then wait.

        Raises:
            ConfigurationError: The new settings are invalid (``max_nodes >= min_nodes >= 0``).
        """
        resource = self.refresh().resource
        scale = ((resource.get("properties") or {}).get("properties") or {}).get("scaleSettings") or {}
        new_min = scale.get("minNodeCount", 0) if min_nodes is None else min_nodes
        new_max = scale.get("maxNodeCount") if max_nodes is None else max_nodes
        check_scale(new_min, new_max, idle_seconds_before_scaledown)
        for text in scale_warnings(int(new_min or 0), int(new_max or 0)):
            warnings.warn(text, ProvisioningWarning, stacklevel=2)
        settings: dict[str, Any] = {"minNodeCount": new_min, "maxNodeCount": new_max}
        if idle_seconds_before_scaledown is not None:
            settings["nodeIdleTimeBeforeScaleDown"] = f"PT{idle_seconds_before_scaledown}S"
        elif scale.get("nodeIdleTimeBeforeScaleDown"):
            settings["nodeIdleTimeBeforeScaleDown"] = scale["nodeIdleTimeBeforeScaleDown"]
        operation = arm_of(self.workspace).begin(
            "PATCH",
            self.id,
            api_version=COMPUTE_API_VERSION,
            what=f"scaling cluster {self.name!r}",
            body={"properties": {"properties": {"scaleSettings": settings}}},
        )
        final = operation.wait()
        self.resource = dict(final) if isinstance(final, dict) and final.get("id") else self.refresh().resource
        return self

    def delete(self) -> None:
        """Delete the cluster (and its nodes) and wait until it is gone."""
        operation = arm_of(self.workspace).begin(
            "DELETE",
            self.id,
            api_version=COMPUTE_API_VERSION,
            what=f"deleting cluster {self.name!r}",
            params={"underlyingResourceAction": "Delete"},
        )
        operation.wait()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: name, id, identity, scale, status."""
        props = (self.resource.get("properties") or {}).get("properties") or {}
        identity = self.identity
        return {
            "name": self.name,
            "id": self.id,
            "location": self.resource.get("location"),
            "vmSize": props.get("vmSize"),
            "vmPriority": props.get("vmPriority"),
            "scaleSettings": props.get("scaleSettings"),
            "identity": {
                "type": identity.kind if identity else "None",
                "userAssignedIdentities": list(identity.resource_ids) if isinstance(identity, UserAssigned) else [],
                "principalId": self.principal_id,
                "clientId": self.client_id,
            },
            "status": ClusterStatus.from_arm(self.resource).to_dict(),
            "drift": [{"field": d.field, "wanted": d.wanted, "actual": d.actual, "fix": d.fix} for d in self.drift],
        }

    def __repr__(self) -> str:
        """Name and workspace."""
        return f"Cluster({self.name!r}, workspace={self.workspace.name!r})"


def _identity_equal(a: Identity | None, b: Identity | None) -> bool:
    if isinstance(a, UserAssigned) and isinstance(b, UserAssigned):
        return a.same_as(b)
    return type(a) is type(b)


def _writable(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The PUT body of a compute read with GET: read-only parts and ids filled in by ARM removed."""
    body = {k: v for k, v in resource.items() if k not in _READ_ONLY_TOP and v is not None}
    compute = {
        k: v for k, v in (resource.get("properties") or {}).items() if k not in _READ_ONLY_COMPUTE and v is not None
    }
    compute["properties"] = {
        k: v for k, v in (compute.get("properties") or {}).items() if k not in _READ_ONLY_AML and v is not None
    }
    body["properties"] = compute
    identity = body.get("identity")
    if isinstance(identity, dict):
        kept = {"type": identity.get("type", "None")}
        if identity.get("userAssignedIdentities"):
            kept["userAssignedIdentities"] = {rid: {} for rid in identity["userAssignedIdentities"]}
        body["identity"] = kept
    return body
