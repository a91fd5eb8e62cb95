"""An Azure Resource Manager emulator for the APIs aml-identity uses, validated by the official specs.

See :class:`ArmEmulator`.
"""

from __future__ import annotations

from aml_identity.testing.arm._api import RecordedArmRequest
from aml_identity.testing.arm._emulator import ArmEmulator, SpecViolationError
from aml_identity.testing.arm._openapi import ArmSpecs, SpecFinding, SpecsNotFoundError, find_specs_dir
from aml_identity.testing.arm._vm_sizes import DEFAULT_VM_SIZES, VmSize

__all__ = [
    "DEFAULT_VM_SIZES",
    "ArmEmulator",
    "ArmSpecs",
    "RecordedArmRequest",
    "SpecFinding",
    "SpecViolationError",
    "SpecsNotFoundError",
    "VmSize",
    "find_specs_dir",
]
