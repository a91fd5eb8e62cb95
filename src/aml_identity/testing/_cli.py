"""``aml-identity sandbox``: run a command as an Azure ML job would run, against local emulators."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from aml_identity.errors import ConfigurationError

__all__ = ["register"]

_EPILOG = """\
examples:
  aml-identity sandbox --datastore inputs=./data -- python job.py
      the job reads azureml://datastores/inputs/paths/... as the cluster's identity
  aml-identity sandbox --datastore inputs=./data --grant inputs=none -- python job.py
      see the DataAccessDeniedError (with the role to grant) a job without a storage role gets
  aml-identity sandbox --processes 4 --datastore inputs=./data --datastore outputs --output outputs=./out \\
      -- python train.py
      4 ranks (RANK, LOCAL_RANK, WORLD_SIZE, ...); the outputs datastore is copied to ./out afterwards
  aml-identity sandbox --setup "python examples/setup_cluster_identity.py --identity uai-sandbox" \\
      --cluster cpu-cluster -- python train.py
      the setup step creates the cluster and its identity; the job then runs as that cluster's identity

Everything the sandbox starts (emulators, Azurite, the job's processes and whatever they leave running) stops
when it returns, also on Ctrl-C and when the job is killed.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sandbox`` to the ``aml-identity`` parser."""
    sandbox = subparsers.add_parser(
        "sandbox",
        help="run a command as an Azure ML job, against local emulators (offline)",
        description="Start the managed-identity endpoint and ARM emulators and Azurite (behind a proxy that "
        "enforces storage roles as Azure does), seed datastores from local folders, set the job environment Azure "
        "ML sets, and run COMMAND. Nothing leaves this machine. Needs the testing extra "
        "(pip install 'aml-identity[testing]'), Azurite (npm install azurite) and the official Azure API specs "
        "(AML_IDENTITY_SPECS_DIR).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sandbox.add_argument(
        "--datastore",
        action="append",
        default=[],
        metavar="NAME[=DIR]",
        help="create datastore NAME (a blob container), filled with the files of DIR; the job reads it as "
        "azureml://datastores/NAME/paths/...; repeatable",
    )
    sandbox.add_argument(
        "--identity",
        default="system",
        metavar="system|user[:N]",
        help="the cluster's managed identity: system-assigned (default), or N user-assigned ones "
        "(uai-sandbox, uai-sandbox-2, ...), the first the default: DEFAULT_IDENTITY_CLIENT_ID is its client id",
    )
    sandbox.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="NAME=reader|contributor|none",
        help="the storage role the identity holds on datastore NAME (Storage Blob Data Reader / Contributor; "
        "default contributor; none: no role, to see the error a job without one gets); repeatable",
    )
    sandbox.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="run N ranks of COMMAND on the one node, with the variables Azure ML's distributed jobs set: RANK, "
        "LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR, MASTER_PORT (default 1, none set)",
    )
    sandbox.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="after the job, copy the content of datastore NAME into folder DIR; repeatable",
    )
    sandbox.add_argument(
        "--token-lifetime",
        type=int,
        default=86_400,
        metavar="SECONDS",
        help="lifetime of the tokens the identity endpoint mints (default 86400, as on Azure ML)",
    )
    sandbox.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="COMMAND",
        help="run COMMAND (a shell-quoted string) once before the job, in the same sandbox and environment, for "
        "example to create the cluster and grant its identity roles; repeatable, a failure stops the sandbox",
    )
    sandbox.add_argument(
        "--cluster",
        metavar="NAME",
        help="run the job as compute cluster NAME's default identity, read from the ARM emulator after the "
        "--setup steps (its first user-assigned identity, else its system-assigned one)",
    )
    sandbox.add_argument("--arm", action="store_true", help=argparse.SUPPRESS)  # a no-op for one release
    sandbox.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the job to run")
    sandbox.set_defaults(handler=_sandbox)


def _pairs(values: list[str], option: str, example: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for text in values:
        name, sep, value = text.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigurationError(f"{option} {text!r} is not NAME=VALUE; for example {option} {example}.",
                                     name=option)  # fmt: skip
        pairs[name.strip()] = value.strip()
    return pairs


def _grants(values: list[str]) -> dict[str, str | None]:
    from aml_identity.testing.sandbox import GRANT_ROLES  # noqa: PLC0415 - needs the testing extra

    grants: dict[str, str | None] = {}
    for name, role in _pairs(values, "--grant", "inputs=reader").items():
        if role.lower() not in GRANT_ROLES:
            raise ConfigurationError(
                f"--grant {name}={role}: the role must be reader (Storage Blob Data Reader), contributor (Storage "
                "Blob Data Contributor) or none.",
                name="--grant",
            )
        grants[name] = GRANT_ROLES[role.lower()]
    return grants


def _sandbox(args: argparse.Namespace) -> int:
    from aml_identity.testing.sandbox import DatastoreSeed, Sandbox  # noqa: PLC0415 - needs the testing extra

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ConfigurationError("Nothing to run: give the job's command after `--`, e.g. "
                                 "`aml-identity sandbox -- python train.py`.", name="command")  # fmt: skip
    if args.token_lifetime <= 0:
        raise ConfigurationError("--token-lifetime must be a positive number of seconds.", name="--token-lifetime")
    seeds = [DatastoreSeed.parse(text) for text in args.datastore]
    outputs = {name: Path(folder) for name, folder in _pairs(args.output, "--output", "outputs=./out").items()}
    unknown = sorted(set(outputs) - {seed.name for seed in seeds})
    if unknown:
        raise ConfigurationError(f"--output {unknown[0]}=...: there is no datastore {unknown[0]!r}; seed it with "
                                 f"--datastore {unknown[0]}.", name="--output")  # fmt: skip
    setups = [shlex.split(text) for text in args.setup]
    with Sandbox(
        identity=args.identity,
        datastores=seeds,
        token_lifetime=args.token_lifetime,
        grants=_grants(args.grant),
        processes=args.processes,
    ) as sandbox:
        roles = ", ".join(f"{name}: {role or 'no role'}" for name, role in sandbox.grants.items())
        print(
            f"aml-identity sandbox: {sandbox.identity.kind}-assigned identity {sandbox.identity.client_id}, "
            f"identity endpoint {sandbox.endpoint.url}, ARM {sandbox.arm.endpoint}, storage "
            f"{sandbox.blob_endpoint()}" + (f" (roles enforced: {roles})" if roles else ""),
            file=sys.stderr,
        )
        for step in setups:
            code = sandbox.run(step, processes=1)
            if code:
                print(f"aml-identity sandbox: setup step {shlex.join(step)!r} exited with {code}", file=sys.stderr)
                return code
        if args.cluster:
            identity = sandbox.use_cluster_identity(args.cluster)
            print(f"aml-identity sandbox: the job runs on cluster {args.cluster} as its {identity.kind}-assigned "
                  f"identity {identity.name} (client id {identity.client_id})", file=sys.stderr)  # fmt: skip
        code = sandbox.run(command)
        for name, folder in outputs.items():
            files = sandbox.copy_out(name, folder)
            print(f"aml-identity sandbox: datastore {name} -> {folder} ({files} file(s))", file=sys.stderr)
        print(f"aml-identity sandbox: job exited with {code}; {sandbox.summary()}", file=sys.stderr)
    return code
