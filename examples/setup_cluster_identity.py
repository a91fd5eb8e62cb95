"""Give an Azure ML compute cluster a managed identity and data access, end to end.

1. Find or create a low-priority cluster with ``min_nodes=0`` (billed only while jobs run) and a
   system-assigned identity.
2. Switch it to a user-assigned identity (an identity you manage, reusable across clusters).
3. Grant that identity Storage Blob Data Reader on a storage account (and AcrPull on the workspace's
   container registry, from which the cluster pulls job images).
4. Wait for the cluster, then diagnose it (management locks that would keep it from scaling).

Against Azure (signed in with ``az login``; any azure-identity credential works)::

    python examples/setup_cluster_identity.py \
        --subscription <sub> --resource-group <rg> --workspace <ws> \
        --identity "$(az identity show -g <rg> -n <identity> --query id -o tsv)" \
        --storage-account "$(az storage account show -g <rg> -n <account> --query id -o tsv)"

Leave out ``--subscription/--resource-group/--workspace`` to read the workspace's ``config.json``. Re-running
is safe: the cluster is not recreated (differences from the spec are reported) and grants are not repeated.
The test suite runs it against aml-identity's ARM emulator (``AML_IDENTITY_ARM_ENDPOINT``).
"""

from __future__ import annotations

import argparse
import sys
import warnings

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
    parser.add_argument(
        "--identity", required=True, help="resource id of the user-assigned identity to switch to"
    )
    parser.add_argument("--storage-account", required=True, help="resource id of the storage account to read")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.subscription:
        ws = Workspace(args.subscription, args.resource_group, args.workspace)
    else:
        ws = Workspace.from_config()

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
    cluster.add_identity(UserAssigned([args.identity]), replace=True)
    print(
        f"{cluster.name}: default identity principal id {cluster.principal_id}, client id {cluster.client_id}"
    )

    # 3. Let that identity read the data (and pull the workspace's images). Idempotent.
    for grant in grant_data_access(cluster, args.storage_account, "Storage Blob Data Reader"):
        state = "granted" if grant.created else "already granted"
        print(f"{state}: {grant.role} on {grant.scope}")

    # 4. Wait, then look for anything that would keep the cluster from scaling.
    cluster.wait_for_completion(show_output=True)
    report = diagnose(cluster)
    print(report.text)
    return 0 if report.ok else 3


if __name__ == "__main__":
    sys.exit(main())
