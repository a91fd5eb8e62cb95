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
"""

from __future__ import annotations

from aml_identity.provisioning.clusters import Cluster, ClusterCollection, ClusterStatus, Workspace
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
