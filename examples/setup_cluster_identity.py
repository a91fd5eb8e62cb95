"""Give an Azure ML compute cluster a managed identity and data access, end to end.

1. Find or create a low-priority cluster with ``min_nodes=0`` (billed only while jobs run) and a
   system-assigned identity.
2. Switch it to a user-assigned identity (an identity you manage, reusable across clusters).
3. Grant that identity Storage Blob Data Reader on a storage account (and AcrPull on the workspace's
   container registry, from which the cluster pulls job images).
4. Wait for the cluster, then diagnose it (management locks that would keep it from scaling).

Against Azure (signed in with ``az login``; any azure-identity credential works)::

    python examples/setup_cluster_identity.py --subscription <sub> --resource-group <rg> --workspace <ws> \
        --identity <identity> [--storage-account <account>]

``--identity`` and ``--storage-account`` take a resource id, or a name in the workspace's resource group; the
storage account defaults to the workspace's own. Leave out ``--subscription/--resource-group/--workspace`` to
use the job's workspace (inside an Azure ML job, with the job's identity) or the workspace's ``config.json``.
Re-running is safe: the cluster is not recreated (differences from the spec are reported) and grants are not
repeated.

Offline, against aml-identity's ARM emulator in the sandbox::

    aml-identity sandbox --arm -- python examples/setup_cluster_identity.py --identity uai-sandbox
"""

from __future__ import annotations

import argparse
import sys
import warnings

from aml_identity.errors import ConfigurationError
from aml_identity.provisioning import (
    ClusterSpec,
    ProvisioningWarning,
    SystemAssigned,
    UserAssigned,
    Workspace,
    diagnose,
    grant_data_access,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscription", help="subscription id (default: from config.json)")
    parser.add_argument("--resource-group", help="the workspace's resource group")
    parser.add_argument("--workspace", help="the workspace name")
    parser.add_argument("--cluster", default="cpu-cluster", help="cluster name (default cpu-cluster)")
    parser.add_argument("--vm-size", default="Standard_DS3_v2", help="VM size (default Standard_DS3_v2)")
    parser.add_argument("--max-nodes", type=int, default=4, help="most nodes (default 4)")
    parser.add_argument("--identity", required=True, help="the user-assigned identity to switch to (id or name)")
    parser.add_argument("--storage-account", help="the storage account to read (id or name; default: the workspace's)")
    return parser.parse_args(argv)


def resource_id(ws: Workspace, value: str, provider: str) -> str:
    """A resource id as given, or the id of the resource of that name in the workspace's resource group."""
    if value.startswith("/subscriptions/"):
        return value
    return f"/subscriptions/{ws.subscription_id}/resourceGroups/{ws.resource_group}/providers/{provider}/{value}"


def find_workspace(args: argparse.Namespace) -> Workspace:
    if args.subscription:
        return Workspace(args.subscription, args.resource_group, args.workspace)  # DefaultAzureCredential
    try:
        return Workspace.from_job_environment()  # inside an Azure ML job: its workspace, with its identity
    except ConfigurationError:
        return Workspace.from_config()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ws = find_workspace(args)
    identity = resource_id(ws, args.identity, "Microsoft.ManagedIdentity/userAssignedIdentities")
    if args.storage_account:
        account = resource_id(ws, args.storage_account, "Microsoft.Storage/storageAccounts")
    else:
        account = ws.get_details()["properties"]["storageAccount"]

    # 1. Find or create the cluster. ensure() never overwrites an existing cluster; it reports differences.
    spec = ClusterSpec(
        name=args.cluster,
        vm_size=args.vm_size,
        max_nodes=args.max_nodes,
        min_nodes=0,
        vm_priority="lowpriority",
        identity=SystemAssigned(),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProvisioningWarning)
        cluster = ws.clusters.ensure(spec)
    for warning in caught:
        print(f"note: {warning.message}")
    cluster.wait_for_completion(show_output=True)

    # 2. Switch to the user-assigned identity (GET, edit the identity, PUT the whole cluster).
    cluster.add_identity(UserAssigned([identity]), replace=True)
    print(f"{cluster.name}: default identity principal id {cluster.principal_id}, client id {cluster.client_id}")

    # 3. Let that identity read the data (and pull the workspace's images). Idempotent.
    for grant in grant_data_access(cluster, account, "Storage Blob Data Reader"):
        state = "granted" if grant.created else "already granted"
        print(f"{state}: {grant.role} on {grant.scope}")

    # 4. Wait, then look for anything that would keep the cluster from scaling.
    cluster.wait_for_completion(show_output=True)
    report = diagnose(cluster)
    print(report.text)
    return 0 if report.ok else 3


if __name__ == "__main__":
    sys.exit(main())
