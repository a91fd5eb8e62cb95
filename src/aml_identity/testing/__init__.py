"""Emulators, the local job sandbox and a pytest plugin, for running aml-identity offline.

Real servers wherever one exists (Azurite for blob storage); emulators only for what cannot run on a
laptop or in CI: the managed-identity endpoint, Azure Resource Manager and storage role checks.
Needs the ``testing`` extra: ``pip install aml-identity[testing]``.
"""

from __future__ import annotations

from aml_identity.testing._clock import FakeClock
from aml_identity.testing._guard import LoopbackViolationError
from aml_identity.testing._identities import EmulatedIdentity
from aml_identity.testing._jwt import mint_token
from aml_identity.testing._tls import TlsMaterial, make_tls_material
from aml_identity.testing.arm import ArmEmulator
from aml_identity.testing.azurite import Azurite, AzuriteNotFoundError
from aml_identity.testing.identity_endpoint import Fault, IdentityEndpoint, RecordedTokenRequest
from aml_identity.testing.storage_proxy import StorageAuthProxy

__all__ = [
    "ArmEmulator",
    "Azurite",
    "AzuriteNotFoundError",
    "EmulatedIdentity",
    "FakeClock",
    "Fault",
    "IdentityEndpoint",
    "LoopbackViolationError",
    "RecordedTokenRequest",
    "StorageAuthProxy",
    "TlsMaterial",
    "make_tls_material",
    "mint_token",
]
