"""Give an Azure ML compute cluster a user-assigned managed identity and data access, end to end.

1. Find or create a low-priority cluster with ``min_nodes=0`` (billed only while jobs run) whose identity is a
   user-assigned identity (one you manage, reusable across clusters; the first is the cluster's default).
2. Grant that identity Storage Blob Data Reader on the input datastore's storage account and Storage Blob
   Data Contributor on the output datastore's (and AcrPull on the workspace's container registry, from which
   the cluster pulls job images).
3. Wait for the cluster, then diagnose it (management locks that would keep it from scaling).

Against Azure (signed in with ``az login``; any azure-identity credential works)::

    python examples/setup_cluster_identity.py --subscription <sub> --resource-group <rg> --workspace <ws> \
        --identity <identity> --input-datastore <name> --output-datastore <name>

``--identity`` takes a resource id, or a name in the workspace's resource group. Each datastore's storage account
is read from the workspace's datastore (``--storage-account`` / ``--output-storage-account`` name an account
directly; with neither, the workspace's own account gets the Reader role). Leave out
``--subscription/--resource-group/--workspace`` to use the job's workspace (inside an Azure ML job, with the
job's identity) or the workspace's ``config.json``. Re-running is safe: the cluster is not recreated
(differences from the spec are reported) and grants are not repeated.

Offline, against aml-identity's ARM emulator in the sandbox (which has a user-assigned identity ``uai-sandbox``)::

    aml-identity sandbox --datastore training_data=examples/data --datastore outputs \\
        -- python examples/setup_cluster_identity.py --identity uai-sandbox --input-datastore training_data \\
        --output-datastore outputs

``make demo`` runs it as the sandbox's ``--setup`` step, then a training job as the cluster's identity.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from azure.identity import DefaultAzureCredential

from aml_identity.datastore.resolve import resolve
from aml_identity.errors import ConfigurationError
from aml_identity.provisioning import (
    ClusterSpec,
    ProvisioningWarning,
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
    parser.add_argument("--input-datastore", help="the datastore the jobs read (its account gets the Reader role)")
    parser.add_argument("--output-datastore", help="the datastore the jobs write (its account gets Contributor)")
    parser.add_argument("--storage-account", help="the storage account to read (id or name; default: the input "
                        "datastore's, else the workspace's)")  # fmt: skip
    parser.add_argument("--output-storage-account", help="the storage account to write (id or name; default: the "
                        "output datastore's)")  # fmt: skip
    return parser.parse_args(argv)


def resource_id(ws: Workspace, value: str, provider: str) -> str:
    """A resource id as given, or the id of the resource of that name in the workspace's resource group."""
    if value.startswith("/subscriptions/"):
        return value
    return f"/subscriptions/{ws.subscription_id}/resourceGroups/{ws.resource_group}/providers/{provider}/{value}"


def datastore_account(ws: Workspace, name: str) -> str:
    """The ARM id of the storage account behind datastore ``name`` (read through the workspace's datastore API)."""
    uri = (f"azureml://subscriptions/{ws.subscription_id}/resourcegroups/{ws.resource_group}/workspaces/{ws.name}"
           f"/datastores/{name}/paths/")  # fmt: skip
    credential = None if os.environ.get("MSI_ENDPOINT") else DefaultAzureCredential()  # in a job: the job's identity
    account = resolve(uri, credential=credential).account
    return resource_id(ws, account, "Microsoft.Storage/storageAccounts")  # the account in the workspace's group


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
        reads = resource_id(ws, args.storage_account, "Microsoft.Storage/storageAccounts")
    elif args.input_datastore:
        reads = datastore_account(ws, args.input_datastore)
    else:
        reads = ws.get_details()["properties"]["storageAccount"]
    writes = None
    if args.output_storage_account:
        writes = resource_id(ws, args.output_storage_account, "Microsoft.Storage/storageAccounts")
    elif args.output_datastore:
        writes = datastore_account(ws, args.output_datastore)

    # 1. Find or create the cluster. ensure() never overwrites an existing cluster; it reports differences.
    spec = ClusterSpec(
        name=args.cluster,
        vm_size=args.vm_size,
        max_nodes=args.max_nodes,
        min_nodes=0,
        vm_priority="lowpriority",
        identity=UserAssigned([identity]),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProvisioningWarning)
        cluster = ws.clusters.ensure(spec)
    for warning in caught:
        print(f"note: {warning.message}")
    cluster.wait_for_completion(show_output=True)
    print(f"{cluster.name}: default identity principal id {cluster.principal_id}, client id {cluster.client_id}")

    # 2. Let that identity read the inputs and write the outputs (and pull the workspace's images). Idempotent.
    grants = [(reads, "Storage Blob Data Reader")] + ([(writes, "Storage Blob Data Contributor")] if writes else [])
    for index, (scope, role) in enumerate(grants):
        for grant in grant_data_access(cluster, scope, role, acr_pull=index == 0):
            state = "granted" if grant.created else "already granted"
            print(f"{state}: {grant.role} on {grant.scope}")

    # 3. Wait, then look for anything that would keep the cluster from scaling.
    cluster.wait_for_completion(show_output=True)
    report = diagnose(cluster)
    print(report.text)
    return 0 if report.ok else 3


if __name__ == "__main__":
    sys.exit(main())
