"""The v1 shim's value types: scale settings, cluster status and the provisioning configuration.

Part of :mod:`aml_identity.provisioning.v1`, which re-exports them; import them from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aml_identity.provisioning.spec import ProvisioningConfiguration

if TYPE_CHECKING:
    from aml_identity.provisioning.clusters import ClusterStatus

__all__ = ["AmlComputeProvisioningConfiguration", "AmlComputeStatus", "ScaleSettings", "v1_status"]


@dataclass(frozen=True)
class ScaleSettings:
    """A cluster's scale settings, with v1's attribute names.

    Attributes:
        minimum_node_count: Nodes kept even when idle.
        maximum_node_count: The most nodes it scales to.
        idle_seconds_before_scaledown: How long a node idles before it is released.
    """

    minimum_node_count: int
    maximum_node_count: int
    idle_seconds_before_scaledown: int | None

    def serialize(self) -> dict[str, Any]:
        """v1's dict form."""
        return {
            "minNodeCount": self.minimum_node_count,
            "maxNodeCount": self.maximum_node_count,
            "nodeIdleTimeBeforeScaleDown": self.idle_seconds_before_scaledown,
        }


@dataclass(frozen=True)
class AmlComputeStatus:
    """What ``get_status()`` returns: the cluster's state from one GET, with v1's attribute names.

    Attributes:
        provisioning_state: ``Creating``, ``Succeeded``, ``Failed``...
        allocation_state: ``Steady`` or ``Resizing``.
        allocation_state_transition_time: When the allocation state last changed.
        current_node_count: Nodes allocated now.
        target_node_count: Nodes the current (or last) resize aims at.
        node_state_counts: ``idle``, ``running``, ``preparing``, ``unusable``, ``leaving``, ``preempted``.
        errors: Provisioning and node errors as ``code: message``.
        scale_settings: The scale settings.
        vm_size: The VM size.
        vm_priority: ``Dedicated`` or ``LowPriority``.
    """

    provisioning_state: str
    allocation_state: str | None
    allocation_state_transition_time: str | None
    current_node_count: int
    target_node_count: int
    node_state_counts: Mapping[str, int] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    scale_settings: ScaleSettings | None = None
    vm_size: str | None = None
    vm_priority: str | None = None

    def serialize(self) -> dict[str, Any]:
        """v1's dict form (camelCase keys)."""
        return {
            "provisioningState": self.provisioning_state,
            "allocationState": self.allocation_state,
            "allocationStateTransitionTime": self.allocation_state_transition_time,
            "currentNodeCount": self.current_node_count,
            "targetNodeCount": self.target_node_count,
            "nodeStateCounts": dict(self.node_state_counts),
            "errors": list(self.errors),
            "scaleSettings": self.scale_settings.serialize() if self.scale_settings else None,
            "vmSize": self.vm_size,
            "vmPriority": self.vm_priority,
        }


@dataclass(frozen=True)
class AmlComputeProvisioningConfiguration(ProvisioningConfiguration):
    """What ``AmlCompute.provisioning_configuration(...)`` returns: the settings, validated, without a name."""

    def validate_configuration(self) -> None:
        """Nothing left to check: the settings were validated when they were made (v1 checked here)."""


def v1_status(
    status: ClusterStatus, *, scale_settings: ScaleSettings | None, vm_size: str | None, vm_priority: str | None
) -> AmlComputeStatus:
    """The :class:`AmlComputeStatus` of a cluster status, with the settings v1 reported beside it."""
    return AmlComputeStatus(
        provisioning_state=status.provisioning_state,
        allocation_state=status.allocation_state,
        allocation_state_transition_time=status.allocation_state_transition_time,
        current_node_count=status.current_node_count,
        target_node_count=status.target_node_count,
        node_state_counts=dict(status.node_state_counts),
        errors=status.errors,
        scale_settings=scale_settings,
        vm_size=vm_size,
        vm_priority=vm_priority,
    )
