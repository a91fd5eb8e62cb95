"""Provision Azure ML compute clusters with managed identities, grant them access, diagnose them.

Built on ``azure-mgmt-core``'s ARM pipeline and polling; credentials default to azure-identity's
``DefaultAzureCredential`` and any ``TokenCredential`` works (the job credential inside a job)::

    from aml_identity.provisioning import ClusterSpec, SystemAssigned, Workspace, grant_data_access

    ws = Workspace.from_config()
    cluster = ws.clusters.ensure(
        ClusterSpec(name="cpu", vm_size="Standard_DS3_v2", max_nodes=4, vm_priority="lowpriority",
                    identity=SystemAssigned())
    )
    cluster.wait_for_completion(show_output=True)
    grant_data_access(cluster, "/subscriptions/.../storageAccounts/mydata")

Each name is imported on first use (so ``aml-identity``'s command line stays light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aml_identity._lazy import exports

if TYPE_CHECKING:
    from aml_identity.provisioning.clusters import Cluster, ClusterCollection, ClusterStatus
    from aml_identity.provisioning.diagnose import BlockingLock, DiagnosisReport, diagnose
    from aml_identity.provisioning.roles import RoleGrant, grant_data_access
    from aml_identity.provisioning.spec import (
        ClusterSpec,
        Drift,
        ProvisioningConfiguration,
        ProvisioningWarning,
        SystemAssigned,
        UserAssigned,
        provisioning_configuration,
    )
    from aml_identity.provisioning.template import export_arm_template
    from aml_identity.provisioning.workspace import Workspace

__all__ = [
    "BlockingLock",
    "Cluster",
    "ClusterCollection",
    "ClusterSpec",
    "ClusterStatus",
    "DiagnosisReport",
    "Drift",
    "ProvisioningConfiguration",
    "ProvisioningWarning",
    "RoleGrant",
    "SystemAssigned",
    "UserAssigned",
    "Workspace",
    "diagnose",
    "export_arm_template",
    "grant_data_access",
    "provisioning_configuration",
]

_CLUSTERS, _SPEC = "aml_identity.provisioning.clusters", "aml_identity.provisioning.spec"
__getattr__, __dir__ = exports(
    __name__,
    {
        "BlockingLock": "aml_identity.provisioning.diagnose",
        "Cluster": _CLUSTERS,
        "ClusterCollection": _CLUSTERS,
        "ClusterSpec": _SPEC,
        "ClusterStatus": _CLUSTERS,
        "DiagnosisReport": "aml_identity.provisioning.diagnose",
        "Drift": _SPEC,
        "ProvisioningConfiguration": _SPEC,
        "ProvisioningWarning": _SPEC,
        "RoleGrant": "aml_identity.provisioning.roles",
        "SystemAssigned": _SPEC,
        "UserAssigned": _SPEC,
        "Workspace": "aml_identity.provisioning.workspace",
        "diagnose": "aml_identity.provisioning.diagnose",
        "export_arm_template": "aml_identity.provisioning.template",
        "grant_data_access": "aml_identity.provisioning.roles",
        "provisioning_configuration": _SPEC,
    },
)
