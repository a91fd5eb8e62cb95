"""The official SDKs, unmodified and at their default api-versions, against the ARM emulator.

azure-ai-ml and azure-mgmt-machinelearningservices are imported inside the tests (azure-ai-ml takes about a
second to import), never at collection.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from aml_identity.provisioning import ClusterSpec, SystemAssigned, UserAssigned, Workspace
from aml_identity.testing.arm import DEFAULT_VM_SIZES, ArmEmulator, VmSize
from aml_identity.testing.arm._api import API_VERSIONS

SUB = "00000000-0000-0000-0000-0000000000ab"
RG, WS = "ml-rg", "ws-sdk"
# azure-ai-ml's schemas use deprecated marshmallow options; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
DOCS = Path(__file__).resolve().parents[3] / "docs" / "testing.md"


@pytest.fixture
def sdk_arm(aml_tls):
    # The SDKs poll on the wall clock: every request moves emulated time by 30 s, and Retry-After 0 together
    # with polling_interval=0 on the clients makes them poll without waiting.
    with ArmEmulator(tls=aml_tls, seconds_per_request=30, retry_after=0) as arm:
        arm.add_workspace(SUB, RG, WS)
        arm.uai = arm.add_user_assigned_identity(SUB, RG, "uai-sdk")
        yield arm
        assert arm.rejected_requests == []


def ours(arm) -> Workspace:
    return Workspace(
        SUB, RG, WS, credential=arm.credential(), environ={"AML_IDENTITY_ARM_ENDPOINT": arm.endpoint},
        connection_verify=str(arm.tls.cert), sleep=arm.sleep,
    )  # fmt: skip


def mgmt_client(arm):
    from azure.mgmt.machinelearningservices import MachineLearningServicesMgmtClient

    return MachineLearningServicesMgmtClient(
        arm.credential(), SUB, base_url=arm.endpoint, connection_verify=str(arm.tls.cert), polling_interval=0
    )


def ml_client(arm, monkeypatch):
    from azure.ai.ml import MLClient

    monkeypatch.delenv("AZUREML_CURRENT_CLOUD", raising=False)  # MLClient sets it; restored after the test
    metadata = {
        "azure_portal": "https://portal.azure.com/",
        "resource_manager": f"{arm.endpoint}/",
        "active_directory": "https://login.microsoftonline.com/",
        "aml_resource_id": "https://ml.azure.com/",
        "storage_endpoint": "core.windows.net",
        "registry_discovery_endpoint": "https://eastus.api.azureml.ms/",
    }
    return MLClient(
        arm.credential(), SUB, RG, WS,
        cloud=f"AmlIdentityArmEmulator-{arm.endpoint.rsplit(':', 1)[1]}",  # one cloud name per emulator
        cloud_metadata=metadata, connection_verify=str(arm.tls.cert), polling_interval=0,
        enable_telemetry=False, show_progress=False,
    )  # fmt: skip


def test_ml_client_writes_a_user_assigned_cluster_that_aml_identity_reads(sdk_arm, monkeypatch):
    from azure.ai.ml.entities import AmlCompute, IdentityConfiguration, ManagedIdentityConfiguration

    client = ml_client(sdk_arm, monkeypatch)
    compute = AmlCompute(
        name="v2-cluster", size="STANDARD_D2_V2", max_instances=4,
        identity=IdentityConfiguration(type="user_assigned",
                                       user_assigned_identities=[ManagedIdentityConfiguration(resource_id=sdk_arm.uai)]),
    )  # fmt: skip
    created = client.compute.begin_create_or_update(compute).result()
    assert created.provisioning_state == "Succeeded"
    (put,) = sdk_arm.requests_for("Compute_CreateOrUpdate")
    assert put.query["api-version"] == client.compute._operation._config.api_version == "2023-08-01-preview"
    cluster = ours(sdk_arm).clusters.get("v2-cluster")
    assert cluster.identity == UserAssigned([sdk_arm.uai])
    assert cluster.resource["properties"]["properties"]["vmSize"] == "STANDARD_D2_V2"
    assert cluster.client_id is not None


def test_aml_identity_writes_a_cluster_that_ml_client_reads(sdk_arm, monkeypatch):
    ours(sdk_arm).clusters.create(
        ClusterSpec(name="ours", vm_size="Standard_NC6s_v3", max_nodes=2, identity=SystemAssigned())
    ).wait_for_completion()
    found = ml_client(sdk_arm, monkeypatch).compute.get("ours")
    assert (found.type, found.size, found.max_instances) == ("amlcompute", "Standard_NC6s_v3", 2)
    assert found.identity.type == "system_assigned"
    assert found.identity.principal_id


def test_mgmt_client_writes_and_reads_at_its_default_api_version(sdk_arm):
    from azure.mgmt.machinelearningservices import models

    client = mgmt_client(sdk_arm)
    uai_value = models.ComponentsSgqdofSchemasIdentityPropertiesUserassignedidentitiesAdditionalproperties()
    body = models.ComputeResource(
        location="eastus",
        identity=models.Identity(type="UserAssigned", user_assigned_identities={sdk_arm.uai: uai_value}),
        properties=models.AmlCompute(properties=models.AmlComputeProperties(
            vm_size="Standard_DS3_v2", scale_settings=models.ScaleSettings(max_node_count=4))),
    )  # fmt: skip
    client.machine_learning_compute.begin_create_or_update(RG, WS, "mgmt-cluster", body).result()
    (put,) = sdk_arm.requests_for("Compute_CreateOrUpdate")
    assert put.query["api-version"] == client._config.api_version == "2020-08-01"
    assert ours(sdk_arm).clusters.get("mgmt-cluster").identity == UserAssigned([sdk_arm.uai])

    ours(sdk_arm).clusters.create(
        ClusterSpec(name="ours", vm_size="STANDARD_D2_V2", max_nodes=3, vm_priority="lowpriority")
    ).wait_for_completion()
    read = client.machine_learning_compute.get(RG, WS, "ours")
    assert (read.properties.properties.vm_priority, read.properties.properties.scale_settings.max_node_count) == (
        "LowPriority", 3,
    )  # fmt: skip


def test_unknown_api_version_gets_arms_error_body(sdk_arm):
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.machinelearningservices import MachineLearningServicesMgmtClient

    client = MachineLearningServicesMgmtClient(
        sdk_arm.credential(), SUB, base_url=sdk_arm.endpoint, connection_verify=str(sdk_arm.tls.cert),
        api_version="2099-01-01",
    )  # fmt: skip
    with pytest.raises(HttpResponseError) as caught:
        client.workspaces.get(RG, WS)
    assert caught.value.status_code == 400
    assert caught.value.error.code == "InvalidApiVersionParameter"
    supported = ",".join(API_VERSIONS["ml"])
    assert caught.value.error.message == (
        f"The api-version '2099-01-01' is invalid. The supported versions are '{supported}'."
    )


def installed_sdk_api_versions() -> set[str]:
    """Every api-version the installed SDKs send to Microsoft.MachineLearningServices by default."""
    import azure.ai.ml._ml_client as ml_client_module
    from azure.mgmt.machinelearningservices._configuration import MachineLearningServicesMgmtClientConfiguration

    found = {MachineLearningServicesMgmtClientConfiguration(credential=object(), subscription_id=SUB).api_version}
    for value in vars(ml_client_module).values():
        if isinstance(value, functools.partial) and "api_version" in value.keywords:
            found.add(value.keywords["api_version"])
    return found


def test_the_emulator_accepts_every_version_the_installed_sdks_send():
    versions = installed_sdk_api_versions()
    assert {"2020-08-01", "2023-08-01-preview"} <= versions
    assert versions <= set(API_VERSIONS["ml"])
    assert set(API_VERSIONS["ml"]) == versions | {"2025-12-01"}  # no version accepted without a reason


def test_the_testing_docs_list_the_accepted_versions():
    text = DOCS.read_text()
    listed = re.search(r"<!-- api-versions -->(.*?)<!-- /api-versions -->", text, re.DOTALL)
    assert listed, "docs/testing.md lacks the api-version list"
    assert re.findall(r"`(\d{4}-\d{2}-\d{2}(?:-preview)?)`", listed.group(1)) == list(API_VERSIONS["ml"])


def test_vm_size_catalogue_is_public_and_replaceable(aml_tls):
    names = {size.name.lower() for size in DEFAULT_VM_SIZES}
    assert {"standard_d2_v2", "standard_ds3_v2", "standard_nc6s_v3", "standard_nc24ads_a100_v4"} <= names
    only = [VmSize("Standard_HB120rs_v3", "standardHBrsv3Family", 120, memory_gb=456.0)]
    with ArmEmulator(tls=aml_tls, vm_sizes=only) as arm:
        arm.add_workspace(SUB, RG, WS)
        assert arm.vm_sizes == tuple(only)
        ws = ours(arm)
        with pytest.raises(Exception, match="not offered"):
            ws.clusters.create(ClusterSpec(name="cpu", vm_size="STANDARD_D2_V2", max_nodes=1))
        arm.set_quota("eastus", limit=240, family="standardHBrsv3Family")
        arm.set_quota("eastus", limit=240)
        ws.clusters.create(ClusterSpec(name="hpc", vm_size="standard_hb120rs_v3", max_nodes=1)).wait_for_completion()
    with pytest.raises(ValueError, match="twice"):
        ArmEmulator(tls=aml_tls, vm_sizes=[*only, *only])
    with pytest.raises(ValueError, match="VmSize"):
        ArmEmulator(tls=aml_tls, vm_sizes=["Standard_D2_v2"])


def test_the_docs_name_the_fields_2020_08_01_lacks():
    """What the testing docs say about 2020-08-01's shape, checked against the installed models and the spec."""
    import json

    from azure.mgmt.machinelearningservices import models

    from aml_identity.testing.arm import find_specs_dir

    spec_file = (
        find_specs_dir() / "specification/machinelearningservices/resource-manager/Microsoft.MachineLearningServices"
        "/stable/2025-12-01/machineLearningServices.json"
    )
    definitions = json.loads(spec_file.read_text())["definitions"]

    def lacks(model, definition):
        sent = {entry["key"].split(".")[0] for entry in model._attribute_map.values()}
        return sorted(set(definitions[definition]["properties"]) - sent)

    assert lacks(models.AmlComputeProperties, "AmlComputeProperties") == [
        "enableNodePublicIp", "isolatedNetwork", "propertyBag", "virtualMachineImage",
    ]  # fmt: skip
    assert lacks(models.Compute, "Compute") == ["disableLocalAuth"]
    text = " ".join(DOCS.read_text().split())
    assert (
        "the 2020-08-01 models lack `systemData` on the resource, `disableLocalAuth` on the compute and "
        "`isolatedNetwork`, `enableNodePublicIp`, `propertyBag` and `virtualMachineImage` on `AmlComputeProperties`"
    ) in text
