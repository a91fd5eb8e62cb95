"""End to end with the real storage client: azure-storage-blob reads and writes Azurite (HTTPS, bearer tokens)
with tokens the job credential gets from the identity-endpoint emulator."""

from __future__ import annotations

import asyncio

import jwt
import pytest
from azure.storage.blob import BlobServiceClient
from azure.storage.blob.aio import BlobServiceClient as AsyncBlobServiceClient

from aml_identity import aio, default_credential

pytestmark = pytest.mark.azurite


def test_blob_client_reads_and_writes_azurite_with_the_job_identity(aml_job, azurite):
    credential = default_credential()
    service = BlobServiceClient(azurite.blob_endpoint(), credential=credential, connection_verify=str(azurite.tls.cert))
    container = service.get_container_client("e2e-sync")
    container.create_container()
    for i in range(5):
        container.upload_blob(f"data/part-{i}.txt", f"row {i}\n".encode())
    assert sorted(b.name for b in container.list_blobs(name_starts_with="data/")) == [
        f"data/part-{i}.txt" for i in range(5)
    ]
    assert container.download_blob("data/part-3.txt").readall() == b"row 3\n"
    # Every request of the client, and a second client, used one token from one endpoint request.
    again = BlobServiceClient(azurite.blob_endpoint(), credential=default_credential(),
                              connection_verify=str(azurite.tls.cert))  # fmt: skip
    assert again.get_container_client("e2e-sync").download_blob("data/part-0.txt").readall() == b"row 0\n"
    (request,) = aml_job.requests
    assert request.params["resource"] == "https://storage.azure.com"
    assert request.params["clientid"] == aml_job.identities[0].client_id
    token = credential.get_token("https://storage.azure.com/.default").token
    assert jwt.decode(token, options={"verify_signature": False})["oid"] == aml_job.identities[0].object_id


def test_async_blob_client_with_the_async_job_credential(aml_job, azurite):
    async def scenario() -> bytes:
        async with (
            aio.default_credential() as credential,
            AsyncBlobServiceClient(
                azurite.blob_endpoint(), credential=credential, connection_verify=str(azurite.tls.cert)
            ) as service,
        ):
            container = service.get_container_client("e2e-async")
            await container.create_container()
            await container.upload_blob("model.bin", b"\x00weights\x01")
            stream = await container.download_blob("model.bin")
            return await stream.readall()

    assert asyncio.run(scenario()) == b"\x00weights\x01"
    assert aml_job.request_count == 1
