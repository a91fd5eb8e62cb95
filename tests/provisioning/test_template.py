"""export_arm_template: a create-only template whose compute resource matches the official spec."""

from __future__ import annotations

from aml_identity.provisioning import ClusterSpec, SystemAssigned, UserAssigned, export_arm_template
from aml_identity.testing.arm import ArmSpecs

SUB = "00000000-0000-0000-0000-0000000000aa"
UAI = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai1"


def test_system_assigned_template():
    spec = ClusterSpec(
        name="cpu",
        vm_size="Standard_DS3_v2",
        max_nodes=4,
        vm_priority="lowpriority",
        identity=SystemAssigned(),
    )
    template = export_arm_template(spec, workspace_name="ws-test")
    (resource,) = template["resources"]
    assert resource["type"] == "Microsoft.MachineLearningServices/workspaces/computes"
    assert resource["apiVersion"] == "2025-12-01"
    assert resource["name"] == "[format('{0}/{1}', parameters('workspaceName'), 'cpu')]"
    assert resource["location"] == "[parameters('location')]"
    assert resource["identity"] == {"type": "SystemAssigned"}
    assert template["parameters"]["workspaceName"]["defaultValue"] == "ws-test"
    assert template["parameters"]["location"]["defaultValue"] == "[resourceGroup().location]"
    assert "principalId" in template["outputs"]
    assert "only creation" in template["metadata"]["description"]
    body = {k: v for k, v in resource.items() if k not in ("apiVersion", "type", "name")}
    assert ArmSpecs.load().request_errors("Compute_CreateOrUpdate", body) == []


def test_user_assigned_with_subnet():
    relative = "/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/train"
    spec = ClusterSpec(
        name="gpu", vm_size="Standard_NC6s_v3", max_nodes=2, identity=UserAssigned([UAI]), subnet=relative,
        location="westus2",
    )  # fmt: skip
    template = export_arm_template(spec)
    (resource,) = template["resources"]
    assert resource["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {UAI: {}}}
    assert resource["properties"]["properties"]["subnet"]["id"] == f"[concat(subscription().id, '{relative}')]"
    assert resource["location"] == "westus2"
    assert "defaultValue" not in template["parameters"]["workspaceName"]
    assert "outputs" not in template
    body = {k: v for k, v in resource.items() if k not in ("apiVersion", "type", "name")}
    assert ArmSpecs.load().request_errors("Compute_CreateOrUpdate", body) == []
