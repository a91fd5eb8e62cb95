"""Named datastores resolve through the workspace's datastore API (the ARM emulator), once per process."""

from __future__ import annotations

import pytest

from aml_identity.datastore import download, resolve
from aml_identity.datastore.resolve import DATASTORES_API_VERSION
from aml_identity.errors import ConfigurationError, DatastoreError

pytestmark = pytest.mark.azurite

SUBSCRIPTION = "5ab5c1e7-0000-4000-8000-00000000da7a"
RESOURCE_GROUP = "rg-data"
WORKSPACE = "ws-data"
WS = (SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE)


def test_short_and_long_forms_resolve_to_the_datastores_account_and_container_once(workspace_job, store, azurite):
    workspace_job.add_datastore(WS, "training", account_name="devstoreaccount1", container_name=store.name)

    short = resolve("azureml://datastores/training/paths/images/train/")
    long = resolve(
        f"azureml://subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}/workspaces/{WORKSPACE}"
        "/datastores/training/paths/images/train/"
    )

    for location in (short, long):
        assert (location.account, location.container, location.path) == (
            "devstoreaccount1",
            store.name,
            "images/train/",
        )
        assert location.endpoint == azurite.blob_endpoint("devstoreaccount1")  # AML_IDENTITY_BLOB_ENDPOINTS
    (request,) = workspace_job.requests_for("Datastores_Get")  # cached for the process after the first
    assert request.query["api-version"] == DATASTORES_API_VERSION == "2025-12-01"
    assert request.status == 200


def test_a_named_datastore_downloads_end_to_end_with_the_job_identity(workspace_job, store, tree, tmp_path):
    workspace_job.add_datastore(WS, "training_data", account_name="devstoreaccount1", container_name=store.name)
    store.seed({"mnist/a.bin": b"a" * 10, "mnist/b/c.bin": b"c" * 20})
    result = download("azureml://datastores/training_data/paths/mnist/", tmp_path / "mnist", progress=False)
    assert tree(tmp_path / "mnist") == {"a.bin": b"a" * 10, "b/c.bin": b"c" * 20}
    assert result.source == "azureml://datastores/training_data/paths/mnist/"


def test_a_sovereign_cloud_datastore_keeps_its_suffix(workspace_job):
    workspace_job.add_datastore(
        WS, "china", account_name="cnaccount", container_name="data", endpoint="core.chinacloudapi.cn"
    )
    location = resolve("azureml://datastores/china/paths/x")
    assert location.endpoint == "https://cnaccount.blob.core.chinacloudapi.cn"
    assert location.uri.datastore == "china"


def test_a_missing_datastore_is_named(workspace_job):
    with pytest.raises(DatastoreError, match=r"datastore 'nope' of workspace 'ws-data'.*does not exist"):
        resolve("azureml://datastores/nope/paths/x")


def test_the_short_form_outside_a_job_says_which_variables_are_missing(storage_job):
    with pytest.raises(ConfigurationError, match="AZUREML_ARM_SUBSCRIPTION") as caught:
        resolve("azureml://datastores/training/paths/x")
    assert "azureml://subscriptions/<sub>/resourcegroups/<rg>/workspaces/<ws>" in str(caught.value)
