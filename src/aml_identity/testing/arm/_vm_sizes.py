"""The VM sizes the ARM emulator offers to AmlCompute: :class:`VmSize` and the default catalogue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_VM_SIZES", "VmSize"]

# The spec's VirtualMachineSize reports these for every size; the values are Azure's for the D/DS v2 series
# (a 1 TiB OS disk, 7 GiB of temporary disk per vCPU); nothing in aml-identity depends on them.
_OS_VHD_SIZE_MB = 1047552
_RESOURCE_VOLUME_MB_PER_VCPU = 7168


@dataclass(frozen=True)
class VmSize:
    """A VM size offered to AmlCompute in a location (an entry of ``vmSizes``).

    Attributes:
        name: The size as Azure spells it (``Standard_DS3_v2``); requests match it in any casing
            (``STANDARD_DS3_V2``), as the service does.
        family: The quota family (``standardDSv2Family``): ``usages`` reports one line per family and
            priority, and a cluster's cores count against its family's line.
        vcpus: vCPUs per node (what the quota counts).
        gpus: GPUs per node.
        memory_gb: Memory per node.
        low_priority_capable: Whether low-priority (spot) nodes of this size exist.
    """

    name: str
    family: str
    vcpus: int
    gpus: int = 0
    memory_gb: float = 7.0
    low_priority_capable: bool = True

    def to_arm(self) -> dict[str, Any]:
        """Return the spec's ``VirtualMachineSize`` body."""
        return {
            "name": self.name,
            "family": self.family,
            "vCPUs": self.vcpus,
            "gpus": self.gpus,
            "osVhdSizeMB": _OS_VHD_SIZE_MB,
            "maxResourceVolumeMB": _RESOURCE_VOLUME_MB_PER_VCPU * max(1, self.vcpus),
            "memoryGB": self.memory_gb,
            "lowPriorityCapable": self.low_priority_capable,
            "premiumIO": True,
            "supportedComputeTypes": ["AmlCompute", "ComputeInstance"],
        }


def _series(family: str, *sizes: tuple[str, int, float, int]) -> tuple[VmSize, ...]:
    return tuple(VmSize(name, family, vcpus, gpus=gpus, memory_gb=memory) for name, vcpus, memory, gpus in sizes)


# The sizes Azure ML's documentation and samples use (SDK v1 and v2, CLI, the seed's STANDARD_D2_V2), with
# Azure's vCPU, memory and GPU counts. A size outside this list is refused as the service refuses a size it
# does not offer; pass ArmEmulator(vm_sizes=...) to offer others.
DEFAULT_VM_SIZES: tuple[VmSize, ...] = (
    *_series(
        "standardDv2Family",
        ("Standard_D1_v2", 1, 3.5, 0),
        ("Standard_D2_v2", 2, 7.0, 0),
        ("Standard_D3_v2", 4, 14.0, 0),
        ("Standard_D4_v2", 8, 28.0, 0),
        ("Standard_D5_v2", 16, 56.0, 0),
        ("Standard_D11_v2", 2, 14.0, 0),
        ("Standard_D12_v2", 4, 28.0, 0),
        ("Standard_D13_v2", 8, 56.0, 0),
        ("Standard_D14_v2", 16, 112.0, 0),
    ),
    *_series(
        "standardDSv2Family",
        ("Standard_DS1_v2", 1, 3.5, 0),
        ("Standard_DS2_v2", 2, 7.0, 0),
        ("Standard_DS3_v2", 4, 14.0, 0),
        ("Standard_DS4_v2", 8, 28.0, 0),
        ("Standard_DS5_v2", 16, 56.0, 0),
        ("Standard_DS11_v2", 2, 14.0, 0),
        ("Standard_DS12_v2", 4, 28.0, 0),
    ),
    *_series(
        "standardDSv3Family",
        ("Standard_D2s_v3", 2, 8.0, 0),
        ("Standard_D4s_v3", 4, 16.0, 0),
        ("Standard_D8s_v3", 8, 32.0, 0),
        ("Standard_D16s_v3", 16, 64.0, 0),
    ),
    *_series("standardESv3Family", ("Standard_E4s_v3", 4, 32.0, 0), ("Standard_E8s_v3", 8, 64.0, 0)),
    *_series("standardFSv2Family", ("Standard_F4s_v2", 4, 8.0, 0), ("Standard_F8s_v2", 8, 16.0, 0)),
    *_series(
        "standardNCSv3Family",
        ("Standard_NC6s_v3", 6, 112.0, 1),
        ("Standard_NC12s_v3", 12, 224.0, 2),
        ("Standard_NC24s_v3", 24, 448.0, 4),
    ),
    *_series(
        "standardNCASv3_T4Family",
        ("Standard_NC4as_T4_v3", 4, 28.0, 1),
        ("Standard_NC8as_T4_v3", 8, 56.0, 1),
        ("Standard_NC16as_T4_v3", 16, 110.0, 1),
        ("Standard_NC64as_T4_v3", 64, 440.0, 4),
    ),
    *_series(
        "standardNCADSA100v4Family",
        ("Standard_NC24ads_A100_v4", 24, 220.0, 1),
        ("Standard_NC48ads_A100_v4", 48, 440.0, 2),
        ("Standard_NC96ads_A100_v4", 96, 880.0, 4),
    ),
    *_series("standardNDSv2Family", ("Standard_ND40rs_v2", 40, 672.0, 8)),
    *_series("standardNDASv4_A100Family", ("Standard_ND96asr_v4", 96, 900.0, 8)),
)
