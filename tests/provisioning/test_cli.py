"""``aml-identity cluster ...`` against the ARM emulator, with azure-identity's DefaultAzureCredential."""

from __future__ import annotations

import json

import pytest

from aml_identity.cli import main
from aml_identity.provisioning._cli import EXIT_FINDINGS
from aml_identity.testing.arm import ArmEmulator

SUB = "00000000-0000-0000-0000-0000000000aa"
WS = ["-s", SUB, "-g", "ml-rg", "-w", "ws-cli"]
SPEC = ["-n", "cpu", "--vm-size", "Standard_DS3_v2", "--max-nodes", "4", "--vm-priority", "lowpriority"]


@pytest.fixture
def arm(aml_tls, msi_environ, monkeypatch):
    """An emulator the CLI reaches through the environment, as a user's shell would."""
    # In-process, the CLI sleeps for real between polls: let each request move emulated time instead.
    with ArmEmulator(tls=aml_tls, retry_after=0.01, seconds_per_request=15) as emulator:
        for name in (
            "AZURE_CLIENT_ID",
            "AZURE_TENANT_ID",
            "AZURE_CLIENT_SECRET",
            "AZURE_FEDERATED_TOKEN_FILE",
        ):
            monkeypatch.delenv(name, raising=False)
        for name, value in {**msi_environ, **emulator.environ(), "AML_IDENTITY_LOOPBACK_ONLY": "1"}.items():
            monkeypatch.setenv(name, value)
        emulator.registry = emulator.add_container_registry(SUB, "ml-rg", "acr")
        emulator.add_workspace(SUB, "ml-rg", "ws-cli", container_registry=emulator.registry)
        emulator.uai = emulator.add_user_assigned_identity(SUB, "ml-rg", "uai")
        emulator.account = emulator.add_storage_account(SUB, "data-rg", "trainingdata")
        yield emulator
        assert emulator.rejected_requests == []


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ensure_show_and_json(arm, capsys):
    code, out, err = run(capsys, "cluster", "ensure", *WS, *SPEC, "--system-assigned")
    assert code == 0, err
    assert "cpu: creating cluster 'cpu': Succeeded" in err  # progress goes to stderr
    assert "cpu: provisioning Succeeded, allocation Steady, nodes 0 -> 0" in err
    assert "cluster cpu (Standard_DS3_v2, LowPriority) in eastus" in out
    assert "identity: SystemAssigned" in out
    code, out, _ = run(capsys, "cluster", "show", *WS, "-n", "cpu", "--json")
    shown = json.loads(out)
    assert (code, shown["identity"]["type"], shown["status"]["provisioningState"]) == (
        0,
        "SystemAssigned",
        "Succeeded",
    )
    code, out, err = run(capsys, "cluster", "ensure", *WS, *SPEC, "--max-nodes", "8", "--json")
    assert code == 0
    assert "warning: Cluster 'cpu' exists and differs from the spec" in err
    assert {d["field"] for d in json.loads(out)["drift"]} == {"max_nodes", "identity"}
    assert len(arm.requests_for("Compute_CreateOrUpdate")) == 1


def test_identity_grant_and_diagnose(arm, capsys):
    assert run(capsys, "cluster", "create", *WS, *SPEC, "--system-assigned")[0] == 0
    code, out, err = run(capsys, "cluster", "add-identity", *WS, "-n", "cpu", "--user-assigned", arm.uai)
    assert code == 1
    assert "not both" in err
    code, out, err = run(capsys, "cluster", "add-identity", *WS, "-n", "cpu", "--user-assigned", arm.uai, "--replace")
    assert code == 0, err
    assert arm.uai in out
    code, out, _ = run(capsys, "cluster", "grant", *WS, "-n", "cpu", "--scope", arm.account)
    assert code == 0
    assert out.splitlines()[0].startswith(f"granted Storage Blob Data Reader on {arm.account} to ")
    assert f"granted AcrPull on {arm.registry}" in out
    code, out, _ = run(capsys, "cluster", "grant", *WS, "-n", "cpu", "--scope", arm.account, "--json")
    assert [g["created"] for g in json.loads(out)] == [False, False]
    code, out, _ = run(capsys, "cluster", "diagnose", *WS, "-n", "cpu")
    assert (code, "No management lock blocks its scaling." in out) == (0, True)
    arm.add_lock(f"/subscriptions/{SUB}/resourceGroups/ml-rg", "freeze", "ReadOnly")
    code, out, _ = run(capsys, "cluster", "diagnose", *WS, "-n", "cpu")
    assert code == EXIT_FINDINGS
    assert "lock 'freeze' (ReadOnly) on the workspace's resource group (ml-rg)" in out
    code, out, _ = run(capsys, "cluster", "remove-identity", *WS, "-n", "cpu", "--json")
    assert (code, json.loads(out)["identity"]["type"]) == (0, "None")


def test_template_needs_no_workspace(capsys):
    code, out, _ = run(capsys, "cluster", "template", *SPEC, "--system-assigned", "-w", "ws-cli")
    template = json.loads(out)
    assert code == 0
    assert template["resources"][0]["identity"] == {"type": "SystemAssigned"}
    assert template["parameters"]["workspaceName"]["defaultValue"] == "ws-cli"


def test_errors_name_the_fix(arm, capsys, tmp_path):
    code, _, err = run(capsys, "cluster", "show", "-s", SUB, "-n", "cpu")
    assert code == 1
    assert "Give --resource-group, --workspace too" in err
    code, _, err = run(capsys, "cluster", "show", *WS, "-n", "nothere")
    assert code == 1
    assert "Cluster 'nothere' not found in workspace 'ws-cli'" in err
    code, _, err = run(capsys, "cluster", "show", "--config", str(tmp_path), "-n", "cpu")
    assert code == 1
    assert "No workspace config.json found" in err
    before = len(arm.requests)
    code, _, err = run(capsys, "cluster", "create", *WS, *SPEC[:4], "--max-nodes", "1", "--min-nodes", "2")
    assert code == 1
    assert "max_nodes (1) must be >= min_nodes (2)" in err
    assert len(arm.requests) == before  # refused before any request


def test_workspace_from_config_file(arm, capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"subscription_id": SUB, "resource_group": "ml-rg", "workspace_name": "ws-cli"}))
    code, out, err = run(capsys, "cluster", "create", "--config", str(config), *SPEC, "--no-wait")
    assert code == 0, err
    assert "cluster cpu" in out
