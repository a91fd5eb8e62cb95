"""``Sandbox(arm=True)``: the ARM emulator joins the sandbox, seeded with the sandbox's workspace and datastores."""

from __future__ import annotations

import pytest
import requests

from aml_identity.testing.sandbox import ARM_SEEDED_IDENTITY, DatastoreSeed, Sandbox


@pytest.mark.azurite
def test_sandbox_with_arm_seeds_the_workspace_and_datastores(tmp_path):
    with Sandbox(arm=True, datastores=[DatastoreSeed("training_data", tmp_path)]) as sandbox:
        environ = sandbox.environ()
        arm = sandbox.arm
        assert arm is not None
        assert environ["AML_IDENTITY_ARM_ENDPOINT"] == arm.endpoint
        workspace = (
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.MachineLearningServices/workspaces/{}".format(
                environ["AZUREML_ARM_SUBSCRIPTION"],
                environ["AZUREML_ARM_RESOURCEGROUP"],
                environ["AZUREML_ARM_WORKSPACE_NAME"],
            )
        )
        token = arm.credential().get_token("https://management.azure.com/.default").token
        response = requests.get(
            f"{arm.endpoint}{workspace}/datastores/training_data",
            params={"api-version": "2025-12-01"},
            headers={"Authorization": f"Bearer {token}"},
            verify=str(sandbox.tls.cert),
            timeout=30,
        )
        store = response.json()["properties"]
        assert (store["accountName"], store["containerName"], store["isDefault"]) == (
            "devstoreaccount1",
            "training-data",
            True,
        )
        group = workspace.split("/providers/")[0]
        identity = requests.get(
            f"{arm.endpoint}{group}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{ARM_SEEDED_IDENTITY}",
            params={"api-version": "2026-05-31"},
            headers={"Authorization": f"Bearer {token}"},
            verify=str(sandbox.tls.cert),
            timeout=30,
        )
        assert identity.status_code == 200
        assert "ARM emulator: " in sandbox.summary()
