"""What a compute cluster should be: :class:`ClusterSpec`, validated before any request is sent.

Pure: nothing here talks to Azure. A spec turns into the ARM request body (``to_arm``), compares itself
with an existing cluster (``drift``), and names the warnings worth showing before it is created.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, overload

from aml_identity.errors import ConfigurationError
from aml_identity.provisioning._identities import (
    Identity,
    SystemAssigned,
    UserAssigned,
    identity_from_arm,
    identity_from_v1,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "DEFAULT_IDLE_SECONDS",
    "MAX_NODES_WITHOUT_SUPPORT_REQUEST",
    "ClusterSpec",
    "Drift",
    "Identity",
    "ProvisioningConfiguration",
    "ProvisioningWarning",
    "SystemAssigned",
    "UserAssigned",
    "check_scale",
    "identity_from_arm",
    "identity_from_v1",
    "provisioning_configuration",
    "scale_warnings",
]

# The service's default idle time before idle nodes are released (azureml-core and azure-ai-ml use it too).
DEFAULT_IDLE_SECONDS = 1800
# "Clusters can generally scale up to 100 nodes as long as you have enough quota"; more needs a support
# request, and such clusters have inter-node communication disabled (no MPI) (Azure ML docs).
MAX_NODES_WITHOUT_SUPPORT_REQUEST = 100
# Names the service (and azureml-core) reserves for its own compute targets.
RESERVED_NAMES = frozenset({"amlcompute", "local", "containerinstance"})
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{2,23}$")
_SUBNET_ID = re.compile(
    r"^(?:/subscriptions/[^/]+)?/resourceGroups/[^/]+/providers/Microsoft\.Network/virtualNetworks/[^/]+"
    r"/subnets/[^/]+$",
    re.IGNORECASE,
)
_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$", re.IGNORECASE)
_PRIORITIES = {"dedicated": "Dedicated", "lowpriority": "LowPriority"}
_REMOTE_LOGIN = {"enabled": "Enabled", "disabled": "Disabled", "notspecified": "NotSpecified"}
# The name a nameless configuration is validated under (provisioning_configuration() without name=); it never
# reaches ARM: ProvisioningConfiguration.named() gives the real one.
_UNNAMED = "unnamed-cluster"


class ProvisioningWarning(UserWarning):
    """A cluster setting that works but costs money or limits what the cluster can do."""


def _duration_seconds(value: str | None) -> int | None:
    match = _DURATION.match(value or "")
    if not value or not match:
        return None
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return round(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


@dataclass(frozen=True)
class Drift:
    """How an existing cluster differs from the spec asked for.

    Attributes:
        field: The spec field (``max_nodes``, ``identity``...).
        wanted: The spec's value.
        actual: The cluster's value.
        fix: How to bring the cluster in line (aml-identity never overwrites it silently).
    """

    field: str
    wanted: Any
    actual: Any
    fix: str

    def __str__(self) -> str:
        """``field: actual -> wanted (fix)``."""
        return f"{self.field}: is {self.actual!r}, spec says {self.wanted!r} ({self.fix})"


@dataclass(frozen=True)
class ClusterSpec:
    """An AmlCompute cluster, validated on construction.

    Attributes:
        name: 3-24 letters, digits and hyphens, starting with a letter.
        vm_size: The VM size (``Standard_DS3_v2``).
        max_nodes: The most nodes it scales to (required; at least ``min_nodes``).
        min_nodes: Nodes kept even when idle (billed while idle).
        vm_priority: ``"dedicated"`` or ``"lowpriority"`` (cheaper, can be preempted).
        idle_seconds_before_scaledown: How long a node idles before it is released.
        identity: :class:`SystemAssigned`, :class:`UserAssigned` or None.
        location: The region; the workspace's when None.
        tags: Resource tags.
        description: A description.
        remote_login_port_public_access: ``"Enabled"``, ``"Disabled"`` or ``"NotSpecified"``.
        subnet: A subnet resource id (the subscription may be left out: the workspace's is used).
        enable_node_public_ip: Whether nodes get public IPs.
    """

    name: str
    vm_size: str
    max_nodes: int
    min_nodes: int = 0
    vm_priority: Literal["dedicated", "lowpriority"] = "dedicated"
    idle_seconds_before_scaledown: int = DEFAULT_IDLE_SECONDS
    identity: SystemAssigned | UserAssigned | None = None
    location: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)
    description: str | None = None
    remote_login_port_public_access: str = "NotSpecified"
    subnet: str | None = None
    enable_node_public_ip: bool = True

    def __post_init__(self) -> None:
        """Validate every field; the messages name the field and the fix."""
        _check_name(self.name)
        if not isinstance(self.vm_size, str) or not self.vm_size.strip():
            msg = "vm_size is required: pass a VM size such as 'Standard_DS3_v2' (`az ml compute list-sizes`)."
            raise ConfigurationError(msg, name="vm_size")
        check_scale(self.min_nodes, self.max_nodes, self.idle_seconds_before_scaledown)
        object.__setattr__(self, "vm_priority", _priority(self.vm_priority))
        identity: object = self.identity  # checked at run time: callers may pass anything
        if identity is not None and not isinstance(identity, (SystemAssigned, UserAssigned)):
            msg = f"identity must be SystemAssigned(), UserAssigned([...]) or None, not {identity!r}."
            raise ConfigurationError(msg, name="identity")
        remote = _REMOTE_LOGIN.get(str(self.remote_login_port_public_access).lower())
        if remote is None:
            msg = (
                f"remote_login_port_public_access must be 'Enabled', 'Disabled' or 'NotSpecified' "
                f"(got {self.remote_login_port_public_access!r})."
            )
            raise ConfigurationError(msg, name="remote_login_port_public_access")
        object.__setattr__(self, "remote_login_port_public_access", remote)
        if self.subnet is not None and not _SUBNET_ID.match(self.subnet):
            msg = (
                f"subnet {self.subnet!r} is not a subnet resource id; expected "
                "/subscriptions/<sub>/resourceGroups/"
                "<rg>/providers/Microsoft.Network/virtualNetworks/<vnet>/subnets/<subnet> (the "
                "/subscriptions/<sub> "
                "part may be left out to use the workspace's subscription)."
            )
            raise ConfigurationError(msg, name="subnet")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in dict(self.tags).items()):
            raise ConfigurationError("tags must map strings to strings.", name="tags")
        object.__setattr__(self, "tags", MappingProxyType(dict(self.tags)))

    def replace(self, **changes: Any) -> ClusterSpec:
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def warnings(self) -> list[str]:
        """Return what is worth knowing before creating this cluster (cost, scale limits)."""
        return scale_warnings(self.min_nodes, self.max_nodes)

    def subnet_id(self, subscription_id: str) -> str | None:
        """The full subnet id (the workspace's subscription filled in when it was left out)."""
        if self.subnet is None:
            return None
        return (
            self.subnet
            if self.subnet.lower().startswith("/subscriptions/")
            else f"/subscriptions/{subscription_id}{self.subnet}"
        )

    def to_arm(self, *, location: str, subscription_id: str) -> dict[str, Any]:
        """Return the ``ComputeResource`` body that creates this cluster.

        Args:
            location: The resource location (the spec's, else the workspace's).
            subscription_id: The workspace's subscription (for a subnet given without one).
        """
        aml: dict[str, Any] = {
            "osType": "Linux",
            "vmSize": self.vm_size,
            "vmPriority": _PRIORITIES[self.vm_priority],
            "scaleSettings": {
                "minNodeCount": self.min_nodes,
                "maxNodeCount": self.max_nodes,
                "nodeIdleTimeBeforeScaleDown": f"PT{self.idle_seconds_before_scaledown}S",
            },
            "remoteLoginPortPublicAccess": self.remote_login_port_public_access,
            "enableNodePublicIp": self.enable_node_public_ip,
        }
        subnet = self.subnet_id(subscription_id)
        if subnet:
            aml["subnet"] = {"id": subnet}
        properties: dict[str, Any] = {"computeType": "AmlCompute", "properties": aml}
        if self.location:
            properties["computeLocation"] = self.location
        if self.description:
            properties["description"] = self.description
        body: dict[str, Any] = {"location": self.location or location, "properties": properties}
        if self.tags:
            body["tags"] = dict(self.tags)
        if self.identity is not None:
            body["identity"] = self.identity.to_arm()
        return body

    def drift(self, resource: Mapping[str, Any]) -> list[Drift]:
        """Compare with an existing cluster's ARM body; return every difference and its fix."""
        props = (resource.get("properties") or {}).get("properties") or {}
        scale = props.get("scaleSettings") or {}
        recreate = "cannot change after creation: delete the cluster and create it again"
        found: list[Drift] = []

        def compare(name: str, wanted: Any, actual: Any, fix: str, *, fold: bool = False) -> None:
            same = str(wanted).lower() == str(actual).lower() if fold else wanted == actual
            if not same:
                found.append(Drift(name, wanted, actual, fix))

        compare("vm_size", self.vm_size, props.get("vmSize"), recreate, fold=True)
        actual_priority = str(props.get("vmPriority") or "Dedicated").lower()
        compare("vm_priority", self.vm_priority, actual_priority, recreate)
        for name, wanted, actual in (
            ("min_nodes", self.min_nodes, scale.get("minNodeCount", 0)),
            ("max_nodes", self.max_nodes, scale.get("maxNodeCount")),
            (
                "idle_seconds_before_scaledown",
                self.idle_seconds_before_scaledown,
                _duration_seconds(scale.get("nodeIdleTimeBeforeScaleDown")),
            ),
        ):
            compare(name, wanted, actual, f"apply it with cluster.update_scale({name}={wanted})")
        actual_identity = identity_from_arm(resource.get("identity"))
        if not _same_identity(self.identity, actual_identity):
            found.append(
                Drift(
                    "identity",
                    str(self.identity) if self.identity else None,
                    str(actual_identity) if actual_identity else None,
                    "cluster.add_identity(...) / cluster.remove_identity(...) (`aml-identity cluster add-identity`)",
                )
            )
        subnet = ((props.get("subnet") or {}).get("id")) or None
        if not _same_subnet(self.subnet, subnet):
            found.append(Drift("subnet", self.subnet, subnet, recreate))
        if self.remote_login_port_public_access != "NotSpecified":
            actual_remote = props.get("remoteLoginPortPublicAccess")
            compare(
                "remote_login_port_public_access",
                self.remote_login_port_public_access,
                actual_remote,
                recreate,
            )
        return found


def _same_subnet(wanted: str | None, actual: str | None) -> bool:
    if not wanted or not actual:
        return not wanted and not actual
    if wanted.lower().startswith("/subscriptions/"):
        return wanted.lower() == actual.lower()
    return actual.lower().endswith(wanted.lower())  # given without the subscription


def _same_identity(wanted: Identity | None, actual: Identity | None) -> bool:
    if isinstance(wanted, UserAssigned) and isinstance(actual, UserAssigned):
        return wanted.same_as(actual)
    return type(wanted) is type(actual)


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        msg = (
            f"Cluster name {name!r} is invalid: use 3 to 24 characters, letters, digits and hyphens, "
            "starting with "
            "a letter (for example 'cpu-cluster')."
        )
        raise ConfigurationError(msg, name="name")
    if name.lower() in RESERVED_NAMES:
        msg = f"Cluster name {name!r} is reserved by Azure ML; pick another name (for example 'cpu-cluster')."
        raise ConfigurationError(msg, name="name")


def scale_warnings(min_nodes: int, max_nodes: int) -> list[str]:
    """Return the warnings scale settings deserve: idle nodes billed, clusters past the 100-node mark."""
    found = []
    if min_nodes > 0:
        found.append(
            f"min_nodes={min_nodes}: those {min_nodes} node(s) stay allocated and are billed even while "
            "idle; "
            "use min_nodes=0 to pay only while jobs run."
        )
    if max_nodes > MAX_NODES_WITHOUT_SUPPORT_REQUEST:
        found.append(
            f"max_nodes={max_nodes} is above {MAX_NODES_WITHOUT_SUPPORT_REQUEST}: clusters that large need a "
            "support request, and beyond that size inter-node communication is disabled, so MPI (and other "
            "multi-node jobs that talk between nodes) will not work."
        )
    return found


def check_scale(min_nodes: object, max_nodes: object, idle_seconds_before_scaledown: object = None) -> None:
    """Validate scale settings: ``max_nodes`` required, ``max_nodes >= min_nodes >= 0``, idle seconds >= 0.

    Raises:
        ConfigurationError: A setting is invalid; the message names it and the fix.
    """
    _check_nodes(min_nodes, max_nodes)
    idle = idle_seconds_before_scaledown
    if idle is not None and (isinstance(idle, bool) or not isinstance(idle, int) or idle < 0):
        msg = f"idle_seconds_before_scaledown must be a whole number of seconds >= 0 (got {idle!r}), e.g. 1800."
        raise ConfigurationError(msg, name="idle_seconds_before_scaledown")


def _check_nodes(min_nodes: object, max_nodes: object) -> None:
    for label, value in (("min_nodes", min_nodes), ("max_nodes", max_nodes)):
        if value is None and label == "max_nodes":
            msg = "max_nodes is required: the most nodes the cluster may scale to (for example max_nodes=4)."
            raise ConfigurationError(msg, name="max_nodes")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"{label} must be a whole number (got {value!r}).", name=label)
    assert isinstance(min_nodes, int)  # noqa: S101 - narrowed above, for the type checker
    assert isinstance(max_nodes, int)  # noqa: S101
    if min_nodes < 0:
        raise ConfigurationError(f"min_nodes must be >= 0 (got {min_nodes}).", name="min_nodes")
    if max_nodes < min_nodes:
        msg = f"max_nodes ({max_nodes}) must be >= min_nodes ({min_nodes}): raise max_nodes or lower min_nodes."
        raise ConfigurationError(msg, name="max_nodes")


def _priority(value: object) -> Literal["dedicated", "lowpriority"]:
    key = str(value).replace("_", "").replace("-", "").lower()
    if key not in _PRIORITIES:
        msg = f"vm_priority must be 'dedicated' or 'lowpriority' (got {value!r})."
        raise ConfigurationError(msg, name="vm_priority")
    return "dedicated" if key == "dedicated" else "lowpriority"


@dataclass(frozen=True)
class ProvisioningConfiguration:
    """A cluster's settings without its name, validated: :func:`provisioning_configuration` without ``name``.

    SDK v1 took the name at ``ComputeTarget.create(workspace, name, configuration)``; give it here with
    :meth:`named`, which returns the :class:`ClusterSpec` (``ws.clusters.ensure(config.named("cpu"))``).
    The fields are those of :class:`ClusterSpec`, already checked and in their canonical form.
    """

    vm_size: str
    max_nodes: int
    min_nodes: int = 0
    vm_priority: Literal["dedicated", "lowpriority"] = "dedicated"
    idle_seconds_before_scaledown: int = DEFAULT_IDLE_SECONDS
    identity: SystemAssigned | UserAssigned | None = None
    location: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)
    description: str | None = None
    remote_login_port_public_access: str = "NotSpecified"
    subnet: str | None = None
    enable_node_public_ip: bool = True

    def __post_init__(self) -> None:
        """Validate every field as :class:`ClusterSpec` does, and keep the canonical forms it gives them."""
        spec = self.named(_UNNAMED)
        for item in dataclasses.fields(self):
            object.__setattr__(self, item.name, getattr(spec, item.name))

    @classmethod
    def from_spec(cls, spec: ClusterSpec) -> ProvisioningConfiguration:
        """The settings of ``spec`` without its name."""
        values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "name"}
        return cls(**values)

    def named(self, name: str) -> ClusterSpec:
        """Return the :class:`ClusterSpec` of these settings named ``name``.

        Raises:
            ConfigurationError: The name is invalid or reserved.
        """
        return ClusterSpec(name=name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def warnings(self) -> list[str]:
        """Return what is worth knowing before creating such a cluster (cost, scale limits)."""
        return scale_warnings(self.min_nodes, self.max_nodes)


@overload
def provisioning_configuration(
    *,
    name: str,
    vm_size: str = ...,
    vm_priority: str = ...,
    min_nodes: int | None = ...,
    max_nodes: int | None = ...,
    idle_seconds_before_scaledown: int | None = ...,
    vnet_resourcegroup_name: str | None = ...,
    vnet_name: str | None = ...,
    subnet_name: str | None = ...,
    tags: Mapping[str, str] | None = ...,
    description: str | None = ...,
    remote_login_port_public_access: str = ...,
    identity_type: str | None = ...,
    identity_id: str | Sequence[str] | None = ...,
    location: str | None = ...,
    enable_node_public_ip: bool = ...,
    admin_username: str | None = ...,
    admin_user_password: str | None = ...,
    admin_user_ssh_key: str | None = ...,
) -> ClusterSpec: ...


@overload
def provisioning_configuration(
    *,
    name: None = ...,
    vm_size: str = ...,
    vm_priority: str = ...,
    min_nodes: int | None = ...,
    max_nodes: int | None = ...,
    idle_seconds_before_scaledown: int | None = ...,
    vnet_resourcegroup_name: str | None = ...,
    vnet_name: str | None = ...,
    subnet_name: str | None = ...,
    tags: Mapping[str, str] | None = ...,
    description: str | None = ...,
    remote_login_port_public_access: str = ...,
    identity_type: str | None = ...,
    identity_id: str | Sequence[str] | None = ...,
    location: str | None = ...,
    enable_node_public_ip: bool = ...,
    admin_username: str | None = ...,
    admin_user_password: str | None = ...,
    admin_user_ssh_key: str | None = ...,
) -> ProvisioningConfiguration: ...


def provisioning_configuration(
    *,
    name: str | None = None,
    vm_size: str = "",
    vm_priority: str = "dedicated",
    min_nodes: int | None = 0,
    max_nodes: int | None = None,
    idle_seconds_before_scaledown: int | None = DEFAULT_IDLE_SECONDS,
    vnet_resourcegroup_name: str | None = None,
    vnet_name: str | None = None,
    subnet_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
    remote_login_port_public_access: str = "NotSpecified",
    identity_type: str | None = None,
    identity_id: str | Sequence[str] | None = None,
    location: str | None = None,
    enable_node_public_ip: bool = True,
    admin_username: str | None = None,
    admin_user_password: str | None = None,
    admin_user_ssh_key: str | None = None,
) -> ClusterSpec | ProvisioningConfiguration:
    """Build a :class:`ClusterSpec` from Azure ML SDK v1 ``AmlCompute.provisioning_configuration`` keywords.

    ``name`` is optional, as v1 took it at ``ComputeTarget.create``: without it the result is a
    :class:`ProvisioningConfiguration` (``.named(name)`` gives the spec), validated all the same, with the same
    errors. SSH users (``admin_username``, ``admin_user_password``, ``admin_user_ssh_key``) are refused with
    the alternative. ``identity_type`` is ``"SystemAssigned"`` or
    ``"UserAssigned"`` (any casing); ``identity_id`` is one user-assigned identity id or a list of them, only
    with ``"UserAssigned"``. A virtual network is given by ``vnet_resourcegroup_name``, ``vnet_name`` and
    ``subnet_name`` together (in the workspace's subscription).

    Returns:
        The :class:`ClusterSpec` when ``name`` is given, else the :class:`ProvisioningConfiguration`.

    Raises:
        ConfigurationError: A value is invalid; the message names it and the fix.
    """
    if admin_username or admin_user_password or admin_user_ssh_key:
        msg = (
            "aml-identity does not set up SSH users (admin_username, admin_user_password, "
            "admin_user_ssh_key); "
            "create the cluster with the Azure ML SDK or CLI if it needs one, then manage its identity here."
        )
        raise ConfigurationError(msg, name="admin_username")
    identity = identity_from_v1(identity_type, identity_id)
    vnet = (vnet_resourcegroup_name, vnet_name, subnet_name)
    subnet = None
    if any(vnet):
        if not all(vnet):
            msg = (
                "To use a virtual network, give vnet_resourcegroup_name, vnet_name and subnet_name together "
                f"(got {vnet_resourcegroup_name!r}, {vnet_name!r}, {subnet_name!r})."
            )
            raise ConfigurationError(msg, name="subnet_name")
        subnet = (
            f"/resourceGroups/{vnet_resourcegroup_name}/providers/Microsoft.Network/virtualNetworks/{vnet_name}"
            f"/subnets/{subnet_name}"
        )
    if max_nodes is None:
        msg = "max_nodes is required: the most nodes the cluster may scale to (for example max_nodes=4)."
        raise ConfigurationError(msg, name="max_nodes")
    spec = ClusterSpec(
        name=_UNNAMED if name is None else name,
        vm_size=vm_size,
        max_nodes=max_nodes,
        min_nodes=min_nodes or 0,
        vm_priority=_priority(vm_priority),
        idle_seconds_before_scaledown=DEFAULT_IDLE_SECONDS
        if idle_seconds_before_scaledown is None
        else idle_seconds_before_scaledown,
        identity=identity,
        location=location,
        tags=dict(tags or {}),
        description=description,
        remote_login_port_public_access=remote_login_port_public_access,
        subnet=subnet,
        enable_node_public_ip=enable_node_public_ip,
    )
    return spec if name is not None else ProvisioningConfiguration.from_spec(spec)
