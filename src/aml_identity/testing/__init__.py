"""Emulators, the local job sandbox and a pytest plugin, for running aml-identity offline.

Real servers wherever one exists (Azurite for blob storage); emulators only for what cannot run on a
laptop or in CI: the managed-identity endpoint, Azure Resource Manager and storage role checks.
Needs the ``testing`` extra: ``pip install 'aml-identity[testing]'``. Each name is imported on first use;
without the extra, that use raises :class:`~aml_identity.errors.MissingExtraError` naming the install line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aml_identity._lazy import exports

if TYPE_CHECKING:
    from aml_identity.testing._clock import FakeClock
    from aml_identity.testing._guard import LoopbackViolationError
    from aml_identity.testing._identities import EmulatedIdentity
    from aml_identity.testing._jwt import mint_token
    from aml_identity.testing._tls import TlsMaterial, make_tls_material
    from aml_identity.testing.arm import ArmEmulator
    from aml_identity.testing.azurite import Azurite, AzuriteNotFoundError
    from aml_identity.testing.identity_endpoint import Fault, IdentityEndpoint, RecordedTokenRequest
    from aml_identity.testing.sandbox import DatastoreSeed, Sandbox
    from aml_identity.testing.storage_proxy import StorageAuthProxy, StorageFault

__all__ = [
    "ArmEmulator",
    "Azurite",
    "AzuriteNotFoundError",
    "DatastoreSeed",
    "EmulatedIdentity",
    "FakeClock",
    "Fault",
    "IdentityEndpoint",
    "LoopbackViolationError",
    "RecordedTokenRequest",
    "Sandbox",
    "StorageAuthProxy",
    "StorageFault",
    "TlsMaterial",
    "make_tls_material",
    "mint_token",
]

_ENDPOINT, _TLS = "aml_identity.testing.identity_endpoint", "aml_identity.testing._tls"
__getattr__, __dir__ = exports(
    __name__,
    {
        "ArmEmulator": "aml_identity.testing.arm",
        "Azurite": "aml_identity.testing.azurite",
        "AzuriteNotFoundError": "aml_identity.testing.azurite",
        "DatastoreSeed": "aml_identity.testing.sandbox",
        "EmulatedIdentity": "aml_identity.testing._identities",
        "FakeClock": "aml_identity.testing._clock",
        "Fault": _ENDPOINT,
        "IdentityEndpoint": _ENDPOINT,
        "LoopbackViolationError": "aml_identity.testing._guard",
        "RecordedTokenRequest": _ENDPOINT,
        "Sandbox": "aml_identity.testing.sandbox",
        "StorageAuthProxy": "aml_identity.testing.storage_proxy",
        "StorageFault": "aml_identity.testing.storage_proxy",
        "TlsMaterial": _TLS,
        "make_tls_material": _TLS,
        "mint_token": "aml_identity.testing._jwt",
    },
    extra="testing",
)
