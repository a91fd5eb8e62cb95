"""The Azure ML SDK v1 compute API (``azureml.core.compute``) over the supported REST API.

SDK v1 (``azureml-core``) left support on 2026-06-30. Scripts written for it run here with one import
changed::

    from aml_identity.provisioning.v1 import ComputeTarget, AmlCompute, ComputeTargetException

    try:
        cpu_cluster = ComputeTarget(workspace=ws, name="cpucluster")
    except ComputeTargetException:
        config = AmlCompute.provisioning_configuration(vm_size="STANDARD_D2_V2", max_nodes=4)
        cpu_cluster = ComputeTarget.create(ws, "cpucluster", config)
    cpu_cluster.wait_for_completion(show_output=True)

Every call goes through :mod:`aml_identity.provisioning` (computes api-version 2025-12-01, bodies that match
the official spec). Where v1 differed from the supported API, the shim keeps what v1 scripts rely on and
drops v1's bugs:

* ``add_identity`` **replaces** the cluster's identity, as v1 did (a cluster holds a system-assigned identity
  or user-assigned ones), and logs at WARNING which identity it removed; ``remove_identity()`` with no ids
  removes them all. Both are GET, edit, PUT of the whole cluster: the spec's PATCH carries only scale
  settings, and nothing is double-encoded.
* ``ComputeTarget.create`` refuses to overwrite an existing cluster (v1's PUT silently replaced it).
* Every error is a :class:`~aml_identity.errors.ComputeTargetException` with aml-identity's message; invalid
  settings are :class:`~aml_identity.errors.ComputeTargetConfigurationError`, also a
  :class:`~aml_identity.errors.ConfigurationError`.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from aml_identity import provisioning
from aml_identity.errors import (
    ClusterNotFoundError,
    ComputeTargetConfigurationError,
    ComputeTargetException,
    ConfigurationError,
)
from aml_identity.provisioning._v1_settings import (
    AmlComputeProvisioningConfiguration,
    AmlComputeStatus,
    ScaleSettings,
    v1_status,
)
from aml_identity.provisioning._v1_workspace import Workspace, WorkspaceLike, _supported, _v1_errors
from aml_identity.provisioning.spec import (
    ProvisioningConfiguration,
    SystemAssigned,
    UserAssigned,
    _duration_seconds,
    identity_from_v1,
    provisioning_configuration,
)
from aml_identity.provisioning.workspace import arm_of

if TYPE_CHECKING:
    from aml_identity.provisioning.spec import Identity

__all__ = [
    "AmlCompute",
    "AmlComputeProvisioningConfiguration",
    "AmlComputeStatus",
    "ComputeTarget",
    "ComputeTargetException",
    "ScaleSettings",
    "Workspace",
]

logger = logging.getLogger(__name__)

# The compute api-version the shim's own reads use (the one aml_identity.provisioning uses throughout).
COMPUTE_API_VERSION = "2025-12-01"
# azureml-core's wait_for_completion default: 25 minutes.
DEFAULT_TIMEOUT_MINUTES = 25
_SECONDS_PER_MINUTE = 60


class ComputeTarget:
    """A compute target of a workspace: ``ComputeTarget(workspace=ws, name=...)`` finds an existing one.

    Returns an :class:`AmlCompute` (the only compute type the shim manages).

    Raises:
        ComputeTargetException: No compute of that name, or it is not an AmlCompute cluster.
    """

    type: ClassVar[str] = ""

    def __new__(cls, workspace: WorkspaceLike, name: str) -> AmlCompute:  # noqa: ARG004 - read by __init__
        """Make the :class:`AmlCompute` that ``__init__`` fills in (v1 returned the compute type's class)."""
        return object.__new__(AmlCompute)

    def __init__(self, workspace: WorkspaceLike, name: str) -> None:
        """Find the compute ``name`` of ``workspace`` (GET)."""
        supported = _supported(workspace)
        with _v1_errors():
            try:
                cluster = supported.clusters.get(name)
            except ClusterNotFoundError as exc:
                msg = (
                    f"ComputeTargetNotFound: compute target {name!r} not found in workspace {supported.name!r}. "
                    f"Create it with ComputeTarget.create(ws, {name!r}, "
                    "AmlCompute.provisioning_configuration(vm_size=..., max_nodes=...))."
                )
                raise ComputeTargetException(msg, status_code=404, error_code=exc.error_code) from exc
        kind = (cluster.resource.get("properties") or {}).get("computeType")
        if kind != "AmlCompute":
            msg = (
                f"Compute {name!r} is a {kind} compute; aml_identity.provisioning.v1 manages AmlCompute clusters "
                "only. Use azure-ai-ml's MLClient.compute for other compute types."
            )
            raise ComputeTargetException(msg, error_code="UnsupportedComputeType")
        self._bind(workspace, cluster)

    def _bind(self, workspace: WorkspaceLike, cluster: provisioning.Cluster) -> None:
        self.workspace = workspace
        self.cluster = cluster

    @classmethod
    def _wrap(cls, workspace: WorkspaceLike, cluster: provisioning.Cluster) -> AmlCompute:
        target = object.__new__(AmlCompute)
        target._bind(workspace, cluster)
        return target

    @staticmethod
    def create(
        workspace: WorkspaceLike,
        name: str,
        provisioning_configuration: ProvisioningConfiguration,
    ) -> AmlCompute:
        """Create the cluster ``name`` (a PUT of the whole resource); wait with :meth:`wait_for_completion`.

        Args:
            workspace: The workspace.
            name: The cluster name (3-24 letters, digits and hyphens, starting with a letter).
            provisioning_configuration: What ``AmlCompute.provisioning_configuration(...)`` returned.

        Raises:
            ComputeTargetConfigurationError: The name is invalid, the configuration is not one, or a cluster
                of that name exists (v1 overwrote it; use ``ComputeTarget(workspace, name)`` to find it).
            ComputeTargetException: ARM refused (quota, VM size...).
        """
        supported = _supported(workspace)
        config: object = provisioning_configuration  # checked at run time: v1 scripts may pass anything
        if not isinstance(config, ProvisioningConfiguration):
            msg = (
                "provisioning_configuration must come from AmlCompute.provisioning_configuration(...), not "
                f"{type(config).__name__}."
            )
            raise ComputeTargetConfigurationError(msg, name="provisioning_configuration")
        with _v1_errors():
            spec = config.named(name)
            cluster = supported.clusters.create(spec)
        return ComputeTarget._wrap(workspace, cluster)

    @staticmethod
    def list(workspace: WorkspaceLike) -> list[AmlCompute]:
        """Every AmlCompute cluster of the workspace."""
        supported = _supported(workspace)
        with _v1_errors():
            clusters = supported.clusters.list()
        return [ComputeTarget._wrap(workspace, cluster) for cluster in clusters]

    # --- what v1 scripts read ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The compute name."""
        return self.cluster.name

    @property
    def id(self) -> str:
        """Its ARM id."""
        return self.cluster.id

    @property
    def location(self) -> str | None:
        """Its region."""
        value = self.cluster.resource.get("location")
        return str(value) if value else None

    @property
    def tags(self) -> dict[str, str]:
        """Its tags."""
        return dict(self.cluster.resource.get("tags") or {})

    @property
    def description(self) -> str | None:
        """Its description."""
        value = (self.cluster.resource.get("properties") or {}).get("description")
        return str(value) if value else None

    @property
    def provisioning_state(self) -> str | None:
        """``Creating``, ``Succeeded``, ``Failed``... as of the last GET (:meth:`refresh_state`)."""
        value = (self.cluster.resource.get("properties") or {}).get("provisioningState")
        return str(value) if value else None

    @property
    def provisioning_errors(self) -> builtins.list[Any]:
        """The provisioning errors of the last GET."""
        return list((self.cluster.resource.get("properties") or {}).get("provisioningErrors") or [])

    def refresh_state(self) -> None:
        """Re-read the compute (GET); the attributes, identity included, follow."""
        with _v1_errors():
            self.cluster.refresh()

    def get_status(self) -> AmlComputeStatus:
        """Its current state and node counts (GET)."""
        with _v1_errors():
            status = self.cluster.status()
        return v1_status(
            status,
            scale_settings=self._scale_settings(),
            vm_size=self._props().get("vmSize"),
            vm_priority=self._props().get("vmPriority"),
        )

    def wait_for_completion(
        self,
        show_output: bool = False,  # noqa: FBT001, FBT002 - v1's signature
        min_node_count: int | None = None,
        timeout_in_minutes: float = DEFAULT_TIMEOUT_MINUTES,
        is_delete_operation: bool = False,  # noqa: FBT001, FBT002
    ) -> None:
        """Wait for the pending operation, then until the cluster is provisioned with enough nodes.

        Args:
            show_output: Print the state and node counts as they change.
            min_node_count: Nodes to wait for; the cluster's minimum when None.
            timeout_in_minutes: How long to wait.
            is_delete_operation: Wait for a deletion instead (:meth:`delete` already waits, so this returns
                once the cluster is gone).

        Raises:
            ComputeTargetException: Provisioning ended ``Failed``/``Canceled`` (with the service's error), or
                the nodes did not come in time (the message says where it stopped and what to check).
        """
        if is_delete_operation:
            with _v1_errors():
                gone = not any(c.name == self.name for c in self.cluster.workspace.clusters.list())
            if show_output:
                print(f"{self.name}: {'deleted' if gone else 'still there'}")  # noqa: T201 - v1 printed progress
            if not gone:
                msg = f"Compute {self.name!r} still exists: call delete() first (it waits until the cluster is gone)."
                raise ComputeTargetException(msg)
            return
        with _v1_errors():
            self.cluster.wait_for_completion(
                show_output, min_node_count, timeout=timeout_in_minutes * _SECONDS_PER_MINUTE
            )

    def delete(self) -> None:
        """Delete the compute and its nodes, and wait until it is gone."""
        with _v1_errors():
            self.cluster.delete()

    def detach(self) -> None:
        """Refused, as v1 refused it for AmlCompute.

        Raises:
            ComputeTargetException: Always: an AmlCompute cluster is deleted, not detached.
        """
        msg = "Detach is not supported for AmlCompute object. Try to use delete instead."
        raise ComputeTargetException(msg, error_code="UnsupportedOperation")

    def serialize(self) -> dict[str, Any]:
        """The compute as a JSON-ready dict: its ARM body as the last GET returned it (no secrets in it)."""
        return {
            "id": self.id,
            "name": self.name,
            "location": self.location,
            "tags": self.tags,
            "identity": self.cluster.resource.get("identity"),
            "properties": dict(self.cluster.resource.get("properties") or {}),
        }

    def _props(self) -> dict[str, Any]:
        return dict((self.cluster.resource.get("properties") or {}).get("properties") or {})

    def _scale_settings(self) -> ScaleSettings | None:
        scale = self._props().get("scaleSettings")
        if not scale:
            return None
        return ScaleSettings(
            minimum_node_count=int(scale.get("minNodeCount") or 0),
            maximum_node_count=int(scale.get("maxNodeCount") or 0),
            idle_seconds_before_scaledown=_seconds(scale.get("nodeIdleTimeBeforeScaleDown")),
        )

    def __repr__(self) -> str:
        """Name, type and workspace."""
        return f"{type(self).__name__}(workspace={self.cluster.workspace.name!r}, name={self.name!r})"


def _seconds(duration: Any) -> int | None:
    return _duration_seconds(str(duration)) if duration else None


class AmlCompute(ComputeTarget):
    """An AmlCompute cluster, with SDK v1's methods and attributes.

    ``AmlCompute(workspace, name)`` finds an existing one, as ``ComputeTarget(workspace, name)`` does.
    """

    type: ClassVar[str] = "AmlCompute"

    @staticmethod
    def provisioning_configuration(  # noqa: PLR0917 - v1's signature takes its keywords positionally too
        vm_size: str = "",
        vm_priority: str = "dedicated",
        min_nodes: int | None = 0,
        max_nodes: int | None = None,
        idle_seconds_before_scaledown: int | None = None,
        admin_username: str | None = None,
        admin_user_password: str | None = None,
        admin_user_ssh_key: str | None = None,
        vnet_resourcegroup_name: str | None = None,
        vnet_name: str | None = None,
        subnet_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
        remote_login_port_public_access: str = "NotSpecified",
        identity_type: str | None = None,
        identity_id: str | Sequence[str] | None = None,
        location: str | None = None,
        enable_node_public_ip: bool = True,  # noqa: FBT001, FBT002 - v1's signature
    ) -> AmlComputeProvisioningConfiguration:
        """SDK v1's keywords and defaults, validated now (v1 waited for ``create``).

        Every keyword maps to the request body as in v1 (see the mapping in the v1 shim's documentation);
        the SSH user keywords are refused with the alternative. ``idle_seconds_before_scaledown=None`` is
        the service default, 1800 s.

        Raises:
            ComputeTargetConfigurationError: A value is invalid or no longer taken; the message names it
                and the alternative.
        """
        with _v1_errors():
            config = provisioning_configuration(
                vm_size=vm_size,
                vm_priority=vm_priority,
                min_nodes=min_nodes,
                max_nodes=max_nodes,
                idle_seconds_before_scaledown=idle_seconds_before_scaledown,
                admin_username=admin_username,
                admin_user_password=admin_user_password,
                admin_user_ssh_key=admin_user_ssh_key,
                vnet_resourcegroup_name=vnet_resourcegroup_name,
                vnet_name=vnet_name,
                subnet_name=subnet_name,
                tags=tags,
                description=description,
                remote_login_port_public_access=remote_login_port_public_access,
                identity_type=identity_type,
                identity_id=identity_id,
                location=location,
                enable_node_public_ip=enable_node_public_ip,
            )
            return AmlComputeProvisioningConfiguration(
                **{name: getattr(config, name) for name in ProvisioningConfiguration.__dataclass_fields__}
            )

    @staticmethod
    def supported_vmsizes(workspace: WorkspaceLike, location: str | None = None) -> list[dict[str, Any]]:
        """The VM sizes AmlCompute offers in ``location`` (the workspace's when None), as v1 listed them."""
        supported = _supported(workspace)
        with _v1_errors():
            where = location or supported.location
            path = (
                f"/subscriptions/{supported.subscription_id}/providers/Microsoft.MachineLearningServices/"
                f"locations/{where}/vmSizes"
            )
            body = arm_of(supported).call(
                "GET", path, api_version=COMPUTE_API_VERSION, what=f"listing VM sizes of {where}"
            )
        return [
            {
                "name": size.get("name"),
                "vCPUs": size.get("vCPUs"),
                "gpus": size.get("gpus"),
                "memoryGB": size.get("memoryGB"),
                "maxResourceVolumeMB": size.get("maxResourceVolumeMB"),
            }
            for size in (body.body or {}).get("value") or []
        ]

    # --- attributes --------------------------------------------------------------------------------------

    @property
    def vm_size(self) -> str | None:
        """The VM size."""
        value = self._props().get("vmSize")
        return str(value) if value else None

    @property
    def vm_priority(self) -> str | None:
        """``Dedicated`` or ``LowPriority``."""
        value = self._props().get("vmPriority")
        return str(value) if value else None

    @property
    def scale_settings(self) -> ScaleSettings | None:
        """Its scale settings."""
        return self._scale_settings()

    @property
    def cluster_location(self) -> str | None:
        """Its region (v1's name for it)."""
        return self.location

    @property
    def status(self) -> AmlComputeStatus:
        """The state of the last GET (call :meth:`refresh_state` first for a fresh one)."""
        status = provisioning.ClusterStatus.from_arm(self.cluster.resource)
        return v1_status(
            status, scale_settings=self._scale_settings(), vm_size=self.vm_size, vm_priority=self.vm_priority
        )

    @property
    def identity_type(self) -> str | None:
        """``SystemAssigned``, ``UserAssigned``, or None without an identity."""
        identity = self.cluster.identity
        return identity.kind if identity is not None else None

    @property
    def identity_id(self) -> list[str] | None:
        """The user-assigned identities' resource ids (None for a system-assigned identity or none)."""
        identity = self.cluster.identity
        return list(identity.resource_ids) if isinstance(identity, UserAssigned) else None

    @property
    def principal_id(self) -> str | None:
        """The principal (object) id of the default identity: the one to grant roles to."""
        return self.cluster.principal_id

    @property
    def client_id(self) -> str | None:
        """The client id of the default identity (``DEFAULT_IDENTITY_CLIENT_ID`` in jobs)."""
        return self.cluster.client_id

    # --- changes -----------------------------------------------------------------------------------------

    def add_identity(self, identity_type: str, identity_id: str | Sequence[str] | None = None) -> None:
        """Give the cluster this identity, **replacing** the one it has (v1's semantics): GET, edit, PUT, wait.

        A cluster holds a system-assigned identity or user-assigned ones; the identity it held before is
        logged at WARNING, named, when it goes.

        Args:
            identity_type: ``"SystemAssigned"`` or ``"UserAssigned"``.
            identity_id: With ``"UserAssigned"``: the identities' resource ids (a list, or one id).

        Raises:
            ComputeTargetConfigurationError: The type and ids do not fit together, or an id is malformed.
            ComputeTargetException: ARM refused (an identity that does not exist...).
        """
        with _v1_errors():
            wanted = identity_from_v1(identity_type, identity_id)
            if wanted is None:
                msg = "identity_type must be 'SystemAssigned' or 'UserAssigned' (got None)."
                raise ConfigurationError(msg, name="identity_type")
            current = self.cluster.refresh().identity
            removed = _removed(current, wanted)
            if removed:
                logger.warning(
                    "add_identity on cluster %r replaces its identity: removing %s, setting %s "
                    "(a cluster holds one system-assigned identity or user-assigned ones; SDK v1 replaced it too).",
                    self.name,
                    removed,
                    wanted,
                )
            self.cluster.add_identity(wanted, replace=True)

    def remove_identity(self, identity_id: str | Sequence[str] | None = None) -> None:
        """Remove the given user-assigned identities, or with no ids every identity: GET, edit, PUT, wait.

        Raises:
            ComputeTargetConfigurationError: The cluster has no identity, or not one of the ids given.
        """
        with _v1_errors():
            if identity_id is None:
                self.cluster.remove_identity()
                return
            ids = [identity_id] if isinstance(identity_id, str) else list(identity_id)
            current = self.cluster.refresh().identity
            held = list(current.resource_ids) if isinstance(current, UserAssigned) else []
            missing = [i for i in ids if i.lower() not in {h.lower() for h in held}]
            if current is None or missing:
                # The supported API's message for the first id it does not find (or for no identity at all).
                self.cluster.remove_identity((missing or ids)[0])
            remaining = [h for h in held if h.lower() not in {i.lower() for i in ids}]
            if remaining:
                self.cluster.add_identity(UserAssigned(remaining), replace=True)
            else:
                self.cluster.remove_identity()

    def update(
        self,
        min_nodes: int | None = None,
        max_nodes: int | None = None,
        idle_seconds_before_scaledown: int | None = None,
    ) -> None:
        """Change the scale settings (a PATCH), then wait.

        Raises:
            ComputeTargetConfigurationError: The new settings are invalid (``max_nodes >= min_nodes >= 0``).
        """
        with _v1_errors():
            self.cluster.update_scale(
                min_nodes=min_nodes, max_nodes=max_nodes, idle_seconds_before_scaledown=idle_seconds_before_scaledown
            )


def _removed(current: Identity | None, wanted: Identity) -> str | None:
    """Describe what replacing ``current`` with ``wanted`` removes (None when nothing goes)."""
    if current is None:
        return None
    if isinstance(current, SystemAssigned):
        return None if isinstance(wanted, SystemAssigned) else "the system-assigned identity"
    kept = {rid.lower() for rid in wanted.resource_ids} if isinstance(wanted, UserAssigned) else set()
    gone = [rid for rid in current.resource_ids if rid.lower() not in kept]
    return f"user-assigned identity {', '.join(gone)}" if gone else None
