"""Fixtures for the datastore tests: a job whose storage account is Azurite, and a fresh container per test."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

import aml_identity

ACCOUNT = "devstoreaccount1"
SRC = str(Path(aml_identity.__file__).resolve().parents[1])


@pytest.fixture
def storage_job(aml_job, azurite, clean_env):
    """An Azure ML job (identity endpoint emulator) whose account ``devstoreaccount1`` is Azurite.

    Datastore URIs keep their production form (``https://devstoreaccount1.blob.core.windows.net/...``);
    ``AML_IDENTITY_BLOB_ENDPOINTS`` maps the account to Azurite, as the sandbox does. Child processes
    inherit all of it (and import this checkout's aml_identity).
    """
    clean_env.setenv("AML_IDENTITY_BLOB_ENDPOINTS", json.dumps({ACCOUNT: azurite.blob_endpoint(ACCOUNT)}))
    for name, value in azurite.tls.environ().items():
        clean_env.setenv(name, value)
    clean_env.setenv("PYTHONPATH", SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return aml_job


class Store:
    """A container in Azurite, read and written with the real azure-storage-blob client (shared key)."""

    def __init__(self, client: ContainerClient) -> None:
        self.client = client
        self.name = client.container_name

    def uri(self, path: str = "") -> str:
        """The production-form URI of ``path`` in this container."""
        return f"https://{ACCOUNT}.blob.core.windows.net/{self.name}/{path}"

    def seed(self, files: dict[str, bytes]) -> None:
        """Upload ``files`` (name -> content); big ones go in blocks, so without a Content-MD5."""

        def put(item: tuple[str, bytes]) -> None:
            self.client.upload_blob(item[0], item[1], overwrite=True, max_concurrency=4)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, files.items()))

    def read(self, name: str) -> bytes:
        return self.client.download_blob(name).readall()

    def contents(self, prefix: str = "") -> dict[str, bytes]:
        """Every blob under ``prefix`` (name relative to it -> content)."""
        return {b.name[len(prefix) :]: self.read(b.name) for b in self.client.list_blobs(name_starts_with=prefix)}

    def matches(self, prefix: str, files: dict[str, bytes]) -> bool:
        """Whether the blobs under ``prefix`` are exactly ``files`` (relative name -> content).

        Compares the Content-MD5 the service computed on upload (one listing); blobs without one (committed
        from blocks) are read and compared whole.
        """
        listed = {b.name[len(prefix) :]: b for b in self.client.list_blobs(name_starts_with=prefix)}
        if set(listed) != set(files):
            return False
        for name, blob in listed.items():
            md5 = blob.content_settings.content_md5
            if md5 is not None:
                if bytes(md5) != hashlib.md5(files[name], usedforsecurity=False).digest():
                    return False
            elif self.read(blob.name) != files[name]:
                return False
        return True


@pytest.fixture
def store(azurite) -> Store:
    """A fresh container."""
    service = BlobServiceClient.from_connection_string(
        azurite.connection_string(ACCOUNT), connection_verify=str(azurite.tls.cert)
    )
    client = service.get_container_client(f"t-{uuid.uuid4().hex[:20]}")
    client.create_container()
    return Store(client)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".aml-partial" not in p.name
    }


@pytest.fixture
def tree():
    """``tree(folder)``: every regular file below it (relative posix name -> content), partial files left out."""
    return _tree


@pytest.fixture
def open_proxy(azurite):
    """A StorageAuthProxy in front of Azurite that allows everything: it only records what clients send."""
    from aml_identity.testing import StorageAuthProxy

    with StorageAuthProxy(
        f"https://127.0.0.1:{azurite.port}", authorizer=lambda *_, **__: True, tls=azurite.tls
    ) as proxy:
        yield proxy


@pytest.fixture
def via(storage_job):
    """``via(proxy)``: the job environment with the storage account routed through ``proxy``."""

    def environ(proxy) -> dict[str, str]:
        env = dict(os.environ)
        env["AML_IDENTITY_BLOB_ENDPOINTS"] = json.dumps({ACCOUNT: proxy.blob_endpoint(ACCOUNT)})
        return env

    return environ


SUBSCRIPTION = "5ab5c1e7-0000-4000-8000-00000000da7a"
RESOURCE_GROUP = "rg-data"
WORKSPACE = "ws-data"


@pytest.fixture
def workspace_job(storage_job, arm_emulator, clean_env):
    """The storage job inside a workspace served by the ARM emulator (AZUREML_ARM_* and the ARM endpoint set)."""
    arm_emulator.add_workspace(SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE)
    for name, value in arm_emulator.environ().items():
        clean_env.setenv(name, value)
    clean_env.setenv("AZUREML_ARM_SUBSCRIPTION", SUBSCRIPTION)
    clean_env.setenv("AZUREML_ARM_RESOURCEGROUP", RESOURCE_GROUP)
    clean_env.setenv("AZUREML_ARM_WORKSPACE_NAME", WORKSPACE)
    from aml_identity.datastore.resolve import clear_cache

    clear_cache()
    yield arm_emulator
    clear_cache()
