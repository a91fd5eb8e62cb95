"""The environment a benchmark's job processes run in: the emulated identity endpoint, storage, and a token cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

from aml_identity.testing import IdentityEndpoint
from aml_identity.testing.azurite import DEVSTORE_ACCOUNT, Azurite

ROOT = Path(__file__).resolve().parents[1]
# Variables of the outer environment that would pick another identity source; a job never inherits them.
_IDENTITY_PREFIXES = ("MSI_", "IDENTITY_", "AZURE_", "DEFAULT_IDENTITY")


def job_environ(azurite: Azurite, endpoint: IdentityEndpoint, blob_endpoint: str, cache: Path) -> dict[str, str]:
    """Return the environment of an Azure ML job on the emulators, its storage at ``blob_endpoint``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(_IDENTITY_PREFIXES)}
    environ.update(endpoint.azureml_environ())
    environ.update(azurite.tls.environ())
    environ.update(
        AML_IDENTITY_BLOB_ENDPOINTS=json.dumps({DEVSTORE_ACCOUNT: blob_endpoint}),
        AML_IDENTITY_CACHE_DIR=str(cache),
        AML_IDENTITY_LOOPBACK_ONLY="1",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    return environ
