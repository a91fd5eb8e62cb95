"""Fixtures for the azureml fsspec protocol: a job environment (identity endpoint, ARM emulator, Azurite) as a
mapping handed to the file system, so the many small tests of fsspec's abstract suite share one set of servers."""

from __future__ import annotations

import json
import uuid

import pytest
from azure.storage.blob import BlobServiceClient

from aml_identity.testing import IdentityEndpoint

ACCOUNT = "devstoreaccount1"
SUBSCRIPTION = "5ab5c1e7-0000-4000-8000-00000000f55e"
RESOURCE_GROUP = "rg-fsspec"
WORKSPACE = "ws-fsspec"
DATASTORE = "fsspec_data"


class JobEnv:
    """What the tests need: the environ of a job whose datastore DATASTORE is a fresh Azurite container."""

    def __init__(self, environ: dict[str, str], container: str, service: BlobServiceClient) -> None:
        self.environ = environ
        self.container = container
        self.service = service


@pytest.fixture(scope="module")
def job_env(azurite, aml_tls, tmp_path_factory):
    from aml_identity.datastore.resolve import clear_cache
    from aml_identity.testing.arm import ArmEmulator

    service = BlobServiceClient.from_connection_string(
        azurite.connection_string(ACCOUNT), connection_verify=str(azurite.tls.cert)
    )
    container = f"fs-{uuid.uuid4().hex[:16]}"
    service.create_container(container)
    with IdentityEndpoint() as endpoint, ArmEmulator(tls=aml_tls) as arm:
        workspace = arm.add_workspace(SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE)
        arm.add_datastore(workspace, DATASTORE, account_name=ACCOUNT, container_name=container)
        environ = {
            **endpoint.azureml_environ(),
            **arm.environ(),
            **azurite.tls.environ(),
            "AZUREML_ARM_SUBSCRIPTION": SUBSCRIPTION,
            "AZUREML_ARM_RESOURCEGROUP": RESOURCE_GROUP,
            "AZUREML_ARM_WORKSPACE_NAME": WORKSPACE,
            "AML_IDENTITY_BLOB_ENDPOINTS": json.dumps({ACCOUNT: azurite.blob_endpoint(ACCOUNT)}),
            "AML_IDENTITY_CACHE_DIR": str(tmp_path_factory.mktemp("token-cache")),
            "AML_IDENTITY_LOOPBACK_ONLY": "1",
        }
        clear_cache()
        with pytest.MonkeyPatch.context() as patch:  # msal reads the identity endpoint from os.environ
            for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "IDENTITY_ENDPOINT"):
                patch.delenv(name, raising=False)
            for name, value in environ.items():
                patch.setenv(name, value)
            yield JobEnv(environ, container, service)
        clear_cache()


@pytest.fixture(scope="module")
def azureml_fs(job_env):
    from aml_identity.fsspec import AzureMLFileSystem

    return AzureMLFileSystem(environ=job_env.environ, skip_instance_cache=True)


@pytest.fixture
def root(azureml_fs):
    """A fresh folder of the datastore, as a path of the file system."""
    return f"datastores/{DATASTORE}/paths/t-{uuid.uuid4().hex[:12]}"
