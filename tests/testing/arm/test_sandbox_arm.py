"""The sandbox's ARM emulator (always running), seeded with the sandbox's workspace, datastores and identities."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

import aml_identity
from aml_identity.cli import main
from aml_identity.testing.sandbox import ARM_SEEDED_IDENTITY, DatastoreSeed, Sandbox

SRC = str(Path(aml_identity.__file__).resolve().parents[1])


@pytest.mark.azurite
def test_sandbox_with_arm_seeds_the_workspace_and_datastores(tmp_path):
    with Sandbox(datastores=[DatastoreSeed("training_data", tmp_path)]) as sandbox:
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


JOB = """
import sys
from aml_identity.datastore import download
from aml_identity.errors import DataAccessDeniedError
try:
    result = download("azureml://datastores/training_data/paths/", sys.argv[1], progress=False)
except DataAccessDeniedError as error:
    print("denied:", error.role)
    sys.exit(4)
print("files:", result.files)
"""


def _sandbox(tmp_path, *options: str) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "rows.csv").write_text("a,b\n")
    script = tmp_path / "job.py"
    script.write_text(JOB)
    environ = {k: v for k, v in os.environ.items() if k not in ("MSI_ENDPOINT", "MSI_SECRET")}
    environ["PYTHONPATH"] = SRC
    return subprocess.run(
        [sys.executable, "-m", "aml_identity", "sandbox", *options, "--datastore", f"training_data={data}",
         "--", sys.executable, str(script), str(tmp_path / "out")],
        env=environ, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.azurite
def test_sandbox_with_arm_enforces_storage_roles_as_azure_does(tmp_path):
    granted = _sandbox(tmp_path)
    assert granted.returncode == 0, granted.stderr
    assert "files: 1" in granted.stdout
    assert "(roles enforced: training_data: Storage Blob Data Contributor)" in granted.stderr
    assert ", 0 denied" in granted.stderr

    refused = _sandbox(tmp_path, "--grant", "training_data=none")
    assert refused.returncode == 4, refused.stderr
    assert "denied: Storage Blob Data Reader" in refused.stdout
    assert ", 1 denied" in refused.stderr


def test_grant_names_a_seeded_datastore_and_a_known_role(capsys):
    assert main(["sandbox", "--grant", "training_data=owner", "--", "true"]) == 1
    assert "must be reader (Storage Blob Data Reader), contributor" in capsys.readouterr().err
