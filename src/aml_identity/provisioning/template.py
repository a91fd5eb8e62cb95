"""Export a :class:`ClusterSpec` as an ARM template (create-only, which is what ARM supports for clusters)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aml_identity import __version__
from aml_identity.provisioning.spec import SystemAssigned

if TYPE_CHECKING:
    from aml_identity.provisioning.spec import ClusterSpec

__all__ = ["export_arm_template"]

COMPUTE_API_VERSION = "2025-12-01"
_SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
_NOTE = (
    "Creates the cluster. Azure ML supports only creation (not updating) of clusters through ARM templates: "
    "to "
    "change an existing cluster's identity or scale use aml-identity (cluster add-identity, update_scale) "
    "or the "
    "Azure ML SDK/CLI."
)


def export_arm_template(spec: ClusterSpec, *, workspace_name: str | None = None) -> dict[str, Any]:
    """Return an ARM deployment template that creates the cluster of ``spec`` in a workspace.

    Deploy it into the workspace's resource group (``az deployment group create -g <rg> --template-file
    cluster.json --parameters workspaceName=<ws>``). ``location`` defaults to the resource group's. With a
    system-assigned identity, the template outputs its ``principalId`` (to grant it roles next).

    Args:
        spec: The cluster.
        workspace_name: Default for the ``workspaceName`` parameter (required at deployment when omitted).
    """
    workspace: dict[str, Any] = {"type": "string", "metadata": {"description": "The Azure ML workspace."}}
    if workspace_name:
        workspace["defaultValue"] = workspace_name
    location: dict[str, Any] = {
        "type": "string",
        "defaultValue": spec.location or "[resourceGroup().location]",
        "metadata": {"description": "The cluster's region."},
    }
    body = spec.to_arm(location="[parameters('location')]", subscription_id="SUBSCRIPTION")
    subnet = (body["properties"]["properties"].get("subnet") or {}).get("id")
    if subnet and subnet.startswith("/subscriptions/SUBSCRIPTION/"):
        relative = subnet[len("/subscriptions/SUBSCRIPTION") :]
        body["properties"]["properties"]["subnet"]["id"] = f"[concat(subscription().id, '{relative}')]"
    if spec.location is None:
        body["location"] = "[parameters('location')]"
    resource: dict[str, Any] = {
        "type": "Microsoft.MachineLearningServices/workspaces/computes",
        "apiVersion": COMPUTE_API_VERSION,
        "name": f"[format('{{0}}/{{1}}', parameters('workspaceName'), '{spec.name}')]",
        **body,
    }
    template: dict[str, Any] = {
        "$schema": _SCHEMA,
        "contentVersion": "1.0.0.0",
        "metadata": {"description": _NOTE, "_generator": {"name": "aml-identity", "version": __version__}},
        "parameters": {"workspaceName": workspace, "location": location},
        "resources": [resource],
    }
    if isinstance(spec.identity, SystemAssigned):
        reference = (
            "[reference(resourceId('Microsoft.MachineLearningServices/workspaces/computes', "
            f"parameters('workspaceName'), '{spec.name}'), '{COMPUTE_API_VERSION}', "
            "'full').identity.principalId]"
        )
        template["outputs"] = {"principalId": {"type": "string", "value": reference}}
    return template
