"""``aml-identity cluster ...``: create, inspect and fix compute clusters and their identities."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from aml_identity._environment import JobEnvironment
from aml_identity.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["EXIT_FINDINGS", "register"]

# `cluster diagnose` exits with this when it finds something blocking the cluster (0: nothing found).
EXIT_FINDINGS = 3


def _workspace_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("workspace (default: the job's, else config.json)")
    group.add_argument("-s", "--subscription", help="subscription id")
    group.add_argument("-g", "--resource-group", help="resource group of the workspace")
    group.add_argument("-w", "--workspace", help="workspace name")
    group.add_argument("--config", help="path of the workspace's config.json (or a folder holding it)")
    parent.add_argument("--json", action="store_true", help="print JSON on standard output")
    return parent


def _identity_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    kinds = parser.add_mutually_exclusive_group(required=required)
    kinds.add_argument("--system-assigned", action="store_true", help="a system-assigned identity")
    kinds.add_argument(
        "--user-assigned",
        nargs="+",
        metavar="ID",
        help="user-assigned identity resource id(s); the first is the default",
    )


def _spec_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("cluster")
    group.add_argument("-n", "--name", required=True, help="cluster name (3-24 letters, digits, hyphens)")
    group.add_argument("--vm-size", required=True, help="VM size, e.g. Standard_DS3_v2")
    group.add_argument("--max-nodes", type=int, required=True, help="most nodes it scales to")
    group.add_argument("--min-nodes", type=int, default=0, help="nodes kept when idle (billed; default 0)")
    group.add_argument("--vm-priority", choices=("dedicated", "lowpriority"), default="dedicated")
    group.add_argument("--idle-seconds", type=int, default=1800, help="idle time before a node is released")
    group.add_argument("--location", help="region (default: the workspace's)")
    group.add_argument("--subnet", help="subnet resource id")
    group.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="resource tag (repeatable)")
    group.add_argument("--description", help="description")
    group.add_argument("--remote-login", choices=("Enabled", "Disabled", "NotSpecified"), default="NotSpecified")
    group.add_argument("--no-node-public-ip", action="store_true", help="nodes get no public IP")
    _identity_options(parent, required=False)
    return parent


def _wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-preflight", action="store_true", help="skip the VM size and quota check")
    parser.add_argument("--no-wait", action="store_true", help="return once the request is accepted")
    parser.add_argument("--min-node-count", type=int, help="wait until this many nodes are up")
    parser.add_argument("--timeout", type=float, default=1500.0, help="seconds to wait (default 1500)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cluster`` and its subcommands to the ``aml-identity`` parser."""
    cluster = subparsers.add_parser(
        "cluster",
        help="create and manage compute clusters and their identities",
        description="Create, inspect and fix Azure ML compute clusters and their managed identities.",
    )
    sub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    ws, spec = _workspace_options(), _spec_options()

    create = sub.add_parser("create", parents=[ws, spec], help="create a cluster (fails if it exists)")
    _wait_options(create)
    create.set_defaults(handler=_create)
    ensure = sub.add_parser("ensure", parents=[ws, spec], help="create the cluster unless it exists; report drift")
    _wait_options(ensure)
    ensure.set_defaults(handler=_ensure)
    show = sub.add_parser("show", parents=[ws], help="show a cluster's state, nodes and identity")
    show.add_argument("-n", "--name", required=True)
    show.set_defaults(handler=_show)
    add = sub.add_parser("add-identity", parents=[ws], help="give a cluster an identity (GET, edit, PUT)")
    add.add_argument("-n", "--name", required=True)
    _identity_options(add, required=True)
    add.add_argument("--replace", action="store_true", help="replace the identity it has")
    add.set_defaults(handler=_add_identity)
    remove = sub.add_parser("remove-identity", parents=[ws], help="remove one user-assigned identity, or all")
    remove.add_argument("-n", "--name", required=True)
    remove.add_argument("--identity-id", help="the user-assigned identity to remove (default: every identity)")
    remove.set_defaults(handler=_remove_identity)
    grant = sub.add_parser("grant", parents=[ws], help="grant a cluster's identity a role (and AcrPull)")
    who = grant.add_mutually_exclusive_group(required=True)
    who.add_argument("-n", "--name", help="cluster whose default identity gets the role")
    who.add_argument("--principal-id", help="a principal (object) id instead of a cluster")
    grant.add_argument("--scope", required=True, help="resource id the role applies to (a storage account...)")
    grant.add_argument("--role", default="Storage Blob Data Reader", help="role name, GUID or definition id")
    grant.add_argument("--registry", help="container registry id for AcrPull (default: the workspace's)")
    grant.add_argument("--no-acr-pull", action="store_true", help="grant no AcrPull")
    grant.set_defaults(handler=_grant)
    diagnose = sub.add_parser(
        "diagnose", parents=[ws], help="find what keeps a cluster from scaling (exit 3 when something does)"
    )
    diagnose.add_argument("-n", "--name", required=True)
    diagnose.set_defaults(handler=_diagnose)
    template = sub.add_parser("template", parents=[ws, spec], help="print an ARM template that creates the cluster")
    template.set_defaults(handler=_template)


# --- helpers -----------------------------------------------------------------------------------------------


def _emit(text: str, stream: TextIO | None = None) -> None:
    """Write a line of the command's output (standard output unless told otherwise)."""
    out = stream or sys.stdout
    out.write(text + "\n")
    out.flush()


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    from aml_identity.provisioning.spec import ProvisioningWarning  # noqa: PLC0415

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProvisioningWarning)
        yield
    for warning in caught:
        _emit(f"warning: {warning.message}", sys.stderr)


def _workspace(args: argparse.Namespace) -> Any:
    from aml_identity.provisioning.workspace import Workspace  # noqa: PLC0415 - keep `--help` fast

    given = {
        "--subscription": args.subscription,
        "--resource-group": args.resource_group,
        "--workspace": args.workspace,
    }
    if any(given.values()):
        missing = [flag for flag, value in given.items() if not value]
        if missing:
            msg = f"Give {', '.join(missing)} too (or none: then config.json or the job's workspace is used)."
            raise ConfigurationError(msg, name=missing[0])
        return Workspace(args.subscription, args.resource_group, args.workspace)
    if args.config:
        return Workspace.from_config(args.config)
    env = JobEnvironment.from_environ()
    if env.subscription_id and env.resource_group and env.workspace_name:
        return Workspace.from_job_environment()
    return Workspace.from_config()


def _identity(args: argparse.Namespace) -> Any:
    from aml_identity.provisioning.spec import SystemAssigned, UserAssigned  # noqa: PLC0415

    if getattr(args, "system_assigned", False):
        return SystemAssigned()
    if getattr(args, "user_assigned", None):
        return UserAssigned(args.user_assigned)
    return None


def _spec(args: argparse.Namespace) -> Any:
    from aml_identity.provisioning.spec import ClusterSpec  # noqa: PLC0415

    tags = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"--tag {item!r} is not KEY=VALUE.", name="tag")
        tags[key] = value
    return ClusterSpec(
        name=args.name,
        vm_size=args.vm_size,
        max_nodes=args.max_nodes,
        min_nodes=args.min_nodes,
        vm_priority=args.vm_priority,
        idle_seconds_before_scaledown=args.idle_seconds,
        identity=_identity(args),
        location=args.location,
        tags=tags,
        description=args.description,
        remote_login_port_public_access=args.remote_login,
        subnet=args.subnet,
        enable_node_public_ip=not args.no_node_public_ip,
    )


def _print_cluster(args: argparse.Namespace, cluster: Any) -> None:
    summary = cluster.to_dict()
    if args.json:
        _emit(json.dumps(summary, indent=2))
        return
    identity = summary["identity"]
    status = summary["status"]
    _emit(f"cluster {summary['name']} ({summary['vmSize']}, {summary['vmPriority']}) in {summary['location']}")
    _emit(
        f"  state: provisioning {status['provisioningState']}, allocation {status['allocationState']}, nodes "
        f"{status['currentNodeCount']} -> {status['targetNodeCount']}"
    )
    _emit(f"  identity: {identity['type']}")
    for resource_id in identity["userAssignedIdentities"]:
        _emit(f"    {resource_id}")
    if identity["principalId"]:
        _emit(f"  default identity: principal id {identity['principalId']}, client id {identity['clientId'] or '-'}")
    for drift in summary["drift"]:
        _emit(f"  drift: {drift['field']} is {drift['actual']!r}, spec says {drift['wanted']!r} ({drift['fix']})")
    for error in status["errors"]:
        _emit(f"  error: {error}")


def _finish(args: argparse.Namespace, cluster: Any) -> int:
    if not getattr(args, "no_wait", False):
        cluster.wait_for_completion(
            show_output=True,
            min_node_count=getattr(args, "min_node_count", None),
            timeout=getattr(args, "timeout", 1500.0),
            output=sys.stderr,
        )
    _print_cluster(args, cluster.refresh())
    return 0


def _with_cluster(action: Callable[[argparse.Namespace, Any], Any]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        cluster = _workspace(args).clusters.get(args.name)
        with _warnings_to_stderr():
            result = action(args, cluster)
        _print_cluster(args, result)
        return 0

    return handler


# --- handlers ----------------------------------------------------------------------------------------------


def _create(args: argparse.Namespace) -> int:
    spec = _spec(args)
    with _warnings_to_stderr():
        cluster = _workspace(args).clusters.create(spec, preflight=not args.no_preflight)
    return _finish(args, cluster)


def _ensure(args: argparse.Namespace) -> int:
    spec = _spec(args)
    with _warnings_to_stderr():
        cluster = _workspace(args).clusters.ensure(spec, preflight=not args.no_preflight)
    return _finish(args, cluster)


_show = _with_cluster(lambda _args, cluster: cluster)
_add_identity = _with_cluster(lambda args, cluster: cluster.add_identity(_identity(args), replace=args.replace))
_remove_identity = _with_cluster(lambda args, cluster: cluster.remove_identity(args.identity_id))


def _grant(args: argparse.Namespace) -> int:
    from aml_identity.provisioning.roles import grant_data_access  # noqa: PLC0415

    workspace = None
    if args.name:
        workspace = _workspace(args)
        principal: Any = workspace.clusters.get(args.name)
    else:
        principal = args.principal_id
    grants = grant_data_access(
        principal, args.scope, args.role, container_registry=args.registry, acr_pull=not args.no_acr_pull
    )
    if args.json:
        _emit(json.dumps([grant.to_dict() for grant in grants], indent=2))
        return 0
    for grant in grants:
        verb = "granted" if grant.created else "already had"
        _emit(f"{verb} {grant.role} on {grant.scope} to {grant.principal_id} (assignment {grant.assignment_name})")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from aml_identity.provisioning.diagnose import diagnose  # noqa: PLC0415

    report = diagnose(_workspace(args).clusters.get(args.name))
    _emit(json.dumps(report.to_dict(), indent=2) if args.json else report.text)
    return 0 if not report.locks else EXIT_FINDINGS


def _template(args: argparse.Namespace) -> int:
    from aml_identity.provisioning.template import export_arm_template  # noqa: PLC0415

    _emit(json.dumps(export_arm_template(_spec(args), workspace_name=args.workspace), indent=2))
    return 0
