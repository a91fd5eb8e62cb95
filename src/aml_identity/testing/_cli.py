"""``aml-identity sandbox``: run a command as an Azure ML job would run, against local emulators."""

from __future__ import annotations

import argparse
import sys

from aml_identity.errors import ConfigurationError
from aml_identity.testing._identities import DEFAULT_STORAGE_ROLE

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sandbox`` to the ``aml-identity`` parser."""
    sandbox = subparsers.add_parser(
        "sandbox",
        help="run a command as an Azure ML job, against local emulators (offline)",
        description="Start the managed-identity endpoint emulator and Azurite, seed datastores from local folders, "
        "set the job environment Azure ML sets, and run COMMAND. Nothing leaves this machine. Needs the testing "
        "extra (pip install aml-identity[testing]) and Azurite (npm install azurite).",
    )
    sandbox.add_argument(
        "--datastore",
        action="append",
        default=[],
        metavar="NAME[=DIR]",
        help="create datastore NAME (a blob container), filled with the files of DIR; repeatable",
    )
    sandbox.add_argument(
        "--identity",
        choices=("system", "user"),
        default="system",
        help="the compute's managed identity: system-assigned (default) or user-assigned",
    )
    sandbox.add_argument(
        "--token-lifetime", type=int, default=86_400, metavar="SECONDS", help="lifetime of minted tokens"
    )
    sandbox.add_argument(
        "--arm",
        action="store_true",
        help="also run the ARM emulator (workspace, datastores, identity uai-sandbox; needs the official specs) "
        "and enforce its storage role assignments as Azure storage does",
    )
    sandbox.add_argument(
        "--storage-role",
        default=DEFAULT_STORAGE_ROLE,
        metavar="ROLE",
        help=f"with --arm, the data role the identity holds on the storage account (default: {DEFAULT_STORAGE_ROLE}; "
        "`none` for no role, to see what a job without one gets)",
    )
    sandbox.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the job to run")
    sandbox.set_defaults(handler=_sandbox)


def _sandbox(args: argparse.Namespace) -> int:
    from aml_identity.testing.sandbox import DatastoreSeed, Sandbox  # noqa: PLC0415 - needs the testing extra

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ConfigurationError("Nothing to run: give the job's command after `--`, e.g. "
                                 "`aml-identity sandbox -- python train.py`.", name="command")  # fmt: skip
    if args.token_lifetime <= 0:
        raise ConfigurationError("--token-lifetime must be a positive number of seconds.", name="--token-lifetime")
    seeds = [DatastoreSeed.parse(text) for text in args.datastore]
    if args.storage_role != DEFAULT_STORAGE_ROLE and not args.arm:
        raise ConfigurationError("--storage-role needs --arm (roles live in the ARM emulator).", name="--storage-role")
    role = None if args.storage_role.lower() == "none" else args.storage_role
    with Sandbox(
        identity=args.identity, datastores=seeds, token_lifetime=args.token_lifetime, arm=args.arm, storage_role=role
    ) as sandbox:
        print(
            f"aml-identity sandbox: {sandbox.identity.kind}-assigned identity {sandbox.identity.client_id}, "
            f"identity endpoint {sandbox.endpoint.url}, storage {sandbox.blob_endpoint()}"
            + (f" ({role or 'no role'} enforced)" if args.arm else ""),
            file=sys.stderr,
        )
        code = sandbox.run(command)
        print(f"aml-identity sandbox: job exited with {code}; {sandbox.summary()}", file=sys.stderr)
    return code
