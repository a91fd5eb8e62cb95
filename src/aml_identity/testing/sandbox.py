"""Run a job as Azure ML would, on a laptop or in CI: ``aml-identity sandbox -- python train.py``.

The sandbox starts the pieces a job on an Azure ML compute cluster relies on — the managed-identity
endpoint (emulated), Azure Resource Manager (emulated, serving the workspace, its datastores and the
cluster's identities), blob storage (Azurite, over HTTPS with bearer tokens, behind a proxy that enforces the
identity's storage roles as Azure does) — seeds datastores from local folders, sets the job environment the
platform would set (``MSI_ENDPOINT``, ``MSI_SECRET``, ``DEFAULT_IDENTITY_CLIENT_ID``, ``AZUREML_ARM_*``, and
for several processes the distributed-job variables), points every client at the emulators through
aml-identity's endpoint overrides and a CA bundle, and runs the command. Every Python process the job starts
carries the loopback guard, so nothing can reach Azure by mistake. Everything it starts stops when it
returns.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from aml_identity.errors import ConfigurationError
from aml_identity.testing._identities import (
    DEFAULT_COMPUTE,
    DEFAULT_RESOURCE_GROUP,
    DEFAULT_STORAGE_ROLE,
    DEFAULT_SUBSCRIPTION_ID,
    DEFAULT_WORKSPACE,
    EmulatedIdentity,
)
from aml_identity.testing._tls import TlsMaterial, make_tls_material
from aml_identity.testing.arm import ArmEmulator
from aml_identity.testing.arm._ids import storage_account_id, workspace_id
from aml_identity.testing.azurite import DEVSTORE_ACCOUNT, Azurite
from aml_identity.testing.identity_endpoint import IdentityEndpoint
from aml_identity.testing.storage_proxy import StorageAuthProxy

__all__ = ["GRANT_ROLES", "DatastoreSeed", "Sandbox", "parse_identity"]

# Variables from the caller's environment that would make a job pick another identity or endpoint; the
# sandbox removes them so the job sees only what Azure ML would set.
_FOREIGN_VARIABLES = (
    "MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT", "AZURE_POD_IDENTITY_AUTHORITY_HOST", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "DEFAULT_IDENTITY_CLIENT_ID",
    "AML_IDENTITY_ALLOW_REMOTE_IDENTITY_ENDPOINT",
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
)  # fmt: skip
_SITECUSTOMIZE = '''"""Written by `aml-identity sandbox`: the job's Python processes refuse connections off loopback."""
try:
    from aml_identity.testing import _guard
except ImportError:  # the job runs an interpreter without aml-identity: the environment guard still applies
    pass
else:
    _guard.install()
'''
# Azure's container-name rule (Azurite enforces it): 3-63 lower-case letters, digits and single hyphens, starting
# and ending with a letter or digit.
_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
# The job's processes cannot share the ARM emulator's clock: every request moves emulated time on by this
# much, and clients are asked to wait only this long between polls, so long-running operations finish after a
# fixed number of polls without real waiting.
ARM_SECONDS_PER_REQUEST = 15.0
ARM_RETRY_AFTER_S = 0.05
# The first user-assigned identity the sandbox creates (always, so scripts can assign it to a cluster: in
# ``--identity system`` mode it exists in ARM and the identity endpoint but is not the default), and the
# container registry of the workspace.
ARM_SEEDED_IDENTITY = "uai-sandbox"
ARM_SEEDED_REGISTRY = "acrsandbox"
# --grant's short names -> the built-in data roles (None: no role, to see what a job without one gets).
GRANT_ROLES: Mapping[str, str | None] = {
    "reader": "Storage Blob Data Reader",
    "contributor": "Storage Blob Data Contributor",
    "none": None,
}
# Most user-assigned identities `--identity user:N` makes (Azure allows far more; a sandbox needs a few).
MAX_USER_IDENTITIES = 16
# Most ranks `--processes N` starts on the one emulated node (Azure ML nodes have at most a few dozen GPUs/cores).
MAX_PROCESSES = 64
# The rank-0 address Azure ML gives a distributed job; on the sandbox's single node, this machine.
MASTER_ADDR = "127.0.0.1"
# Seconds a stopped job's process group gets between SIGTERM and SIGKILL (upload_on_exit flushes in this time).
STOP_GRACE_S = 10.0
# Exit status of a process killed by a signal, as a shell reports it (128 + the signal number).
SIGNAL_EXIT_BASE = 128


def parse_identity(text: str) -> tuple[str, int]:
    """Parse ``--identity``: ``system``, ``user`` or ``user:N``, returned as ``(kind, count)``.

    Raises:
        ConfigurationError: Not one of those forms, or N outside 1..MAX_USER_IDENTITIES.
    """
    kind, _, count = text.strip().lower().partition(":")
    if kind == "system" and not count:
        return "system", 1
    if kind == "user" and (not count or (count.isascii() and count.isdigit())):
        n = int(count) if count else 1
        if 1 <= n <= MAX_USER_IDENTITIES:
            return "user", n
    raise ConfigurationError(
        f"--identity {text!r} is not 'system', 'user' or 'user:N' with N from 1 to {MAX_USER_IDENTITIES}; "
        "for example --identity user:2 for a cluster with two user-assigned identities (the first the default).",
        name="--identity",
    )


@dataclass(frozen=True)
class DatastoreSeed:
    """A datastore to create in the sandbox, filled from a local folder.

    Attributes:
        name: The datastore's name (``azureml://datastores/<name>/...``); also the container's, by default.
        directory: The folder whose files are uploaded (None for an empty datastore).
        container: The blob container (defaults to ``name`` lower-cased, ``_`` replaced by ``-``).
    """

    name: str
    directory: Path | None = None
    container: str | None = None

    @property
    def container_name(self) -> str:
        """The container the datastore points at."""
        return self.container or self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, text: str) -> DatastoreSeed:
        """Parse the command line form ``NAME=DIR`` (or just ``NAME`` for an empty datastore).

        Raises:
            ConfigurationError: The name or folder is invalid.
        """
        name, _, folder = text.partition("=")
        seed = cls(name.strip(), Path(folder).expanduser() if folder else None)
        if not _CONTAINER_RE.match(seed.container_name):
            raise ConfigurationError(
                f"--datastore {text!r}: {name!r} does not make a valid container name (3-63 lower-case letters, "
                "digits and hyphens). Use for example --datastore training_data=./data.",
                name="--datastore",
            )
        if seed.directory is not None and not seed.directory.is_dir():
            raise ConfigurationError(
                f"--datastore {text!r}: {seed.directory} is not a folder; give NAME=FOLDER.", name="--datastore"
            )
        return seed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((MASTER_ADDR, 0))
        return int(probe.getsockname()[1])


def _report_exit(child: subprocess.Popen[bytes], finished: queue.SimpleQueue[subprocess.Popen[bytes]]) -> None:
    child.wait()
    finished.put(child)


def _exit_status(code: int) -> int:
    """A child's return code as a shell reports it: a signal N becomes 128 + N."""
    return SIGNAL_EXIT_BASE - code if code < 0 else code


class Sandbox:
    """The emulated Azure ML job environment.

    Use it as a context manager, then :meth:`run` commands or read :meth:`environ`::

        with Sandbox(datastores=[DatastoreSeed("training_data", Path("data"))]) as sandbox:
            exit_code = sandbox.run(["python", "train.py"])

    Attributes:
        identity: The compute's default managed identity (the job's; see :meth:`use_cluster_identity`).
        identities: Every identity the sandbox created for the compute (one system-assigned, or N user-assigned).
        endpoint: The identity-endpoint emulator.
        azurite: The storage emulator.
        arm: The ARM emulator (workspace, datastores, identities, role assignments, clusters).
        storage_proxy: The proxy in front of Azurite that enforces the ARM emulator's data roles.
    """

    def __init__(
        self,
        *,
        identity: str = "system",
        datastores: Sequence[DatastoreSeed] = (),
        token_lifetime: int = 86_400,
        workdir: Path | None = None,
        arm: bool = True,  # noqa: ARG002 - accepted for a release: the ARM emulator always runs now
        storage_role: str | None = DEFAULT_STORAGE_ROLE,
        grants: Mapping[str, str | None] | None = None,
        processes: int = 1,
    ) -> None:
        """Configure (not start) the sandbox.

        Args:
            identity: ``"system"`` (the compute has a system-assigned identity), ``"user"`` or ``"user:N"`` (N
                user-assigned identities ``uai-sandbox``, ``uai-sandbox-2``...; the first is the default, as
                on a cluster). ``uai-sandbox`` exists in every mode, for scripts that assign it to a cluster.
            datastores: Datastores to create and fill.
            token_lifetime: Lifetime of minted tokens, in seconds (Azure ML's are ~24 h).
            workdir: Where to keep certificates, storage data and the token cache; a temporary folder when
                omitted (deleted on exit).
            arm: Ignored (the ARM emulator always runs); kept for a release so older callers keep working.
            storage_role: The data role the compute's identity holds on each datastore that ``grants`` does not
                name (``None``: no role).
            grants: Per datastore name, the role its identity holds on that datastore's container (a role name,
                ``reader``/``contributor``, or None/``none`` for no role, to see what a job without one gets).
            processes: How many ranks :meth:`run` starts (with ``RANK``, ``WORLD_SIZE``... as Azure ML sets them).

        Raises:
            ConfigurationError: An option is invalid, or names a datastore that is not seeded.
            SpecsNotFoundError: The official API specs the ARM emulator validates against are not found.
        """
        kind, count = parse_identity(identity)
        if not 1 <= processes <= MAX_PROCESSES:
            raise ConfigurationError(
                f"processes={processes} must be from 1 to {MAX_PROCESSES} (the ranks of one node).", name="processes"
            )
        self.datastores = tuple(datastores)
        names = {seed.name for seed in self.datastores}
        self.grants: dict[str, str | None] = {seed.name: storage_role for seed in self.datastores}
        for name, role in (grants or {}).items():
            if name not in names:
                raise ConfigurationError(
                    f"--grant {name}=...: there is no datastore {name!r}; seed it with --datastore {name}=DIR "
                    f"(seeded: {', '.join(sorted(names)) or 'none'}).",
                    name="--grant",
                )
            self.grants[name] = GRANT_ROLES.get(role.lower(), role) if role is not None else None
        self.processes = processes
        user_names = [ARM_SEEDED_IDENTITY] + [f"{ARM_SEEDED_IDENTITY}-{i}" for i in range(2, count + 1)]
        users = [EmulatedIdentity.user(name, resource_group=DEFAULT_RESOURCE_GROUP) for name in user_names]
        if kind == "system":
            system = EmulatedIdentity.system(DEFAULT_COMPUTE)
            self.identities: tuple[EmulatedIdentity, ...] = (system,)
            served = [system, users[0]]
        else:
            self.identities = tuple(users)
            served = list(users)
        self.identity = self.identities[0]
        self.run_id = f"sandbox_{uuid.uuid4().hex[:12]}"
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="aml-identity-sandbox-"))
        try:
            self.tls: TlsMaterial = make_tls_material(self.workdir / "tls")
            self.endpoint = IdentityEndpoint(identities=served, token_lifetime=token_lifetime)
            self.azurite = Azurite(workdir=self.workdir / "azurite", tls=self.tls)
            self.arm = ArmEmulator(  # its workdir inside ours: given tls, it would leave a temporary folder behind
                tls=self.tls, workdir=self.workdir / "arm", retry_after=ARM_RETRY_AFTER_S,
                seconds_per_request=ARM_SECONDS_PER_REQUEST,
            )  # fmt: skip
        except BaseException:
            self._remove_workdir()
            raise
        self.storage_proxy: StorageAuthProxy | None = None
        self._children: list[subprocess.Popen[bytes]] = []

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Start the emulators and seed the workspace, its datastores, identities and role assignments."""
        try:
            self.endpoint.start()
            self.azurite.start()
            self._seed()
            self.arm.start()
            self._seed_arm(self.arm)
            upstream = f"https://127.0.0.1:{self.azurite.port}"
            self.storage_proxy = StorageAuthProxy(upstream, authorizer=self.arm.has_data_role, tls=self.tls).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every job process still running, the emulators, and delete the temporary work folder."""
        self._stop_children()
        self.endpoint.release_hangs()
        self.endpoint.stop()
        if self.storage_proxy is not None:
            self.storage_proxy.stop()
        self.azurite.stop()
        self.arm.stop()
        self._remove_workdir()

    def _remove_workdir(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        """Start the sandbox."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the sandbox."""
        self.stop()

    # --- seeding -------------------------------------------------------------------------------------------

    def _seed(self) -> None:
        from azure.storage.blob import BlobServiceClient  # noqa: PLC0415 - only when the sandbox starts

        service = BlobServiceClient.from_connection_string(
            self.azurite.connection_string(), connection_verify=str(self.tls.cert)
        )
        for seed in self.datastores:
            container = service.get_container_client(seed.container_name)
            if not container.exists():
                container.create_container()
            if seed.directory is None:
                continue
            for path in sorted(seed.directory.rglob("*")):
                if path.is_file():
                    with path.open("rb") as data:
                        container.upload_blob(path.relative_to(seed.directory).as_posix(), data, overwrite=True)

    def _seed_arm(self, arm: ArmEmulator) -> None:
        sub, group = DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP
        workspace = arm.add_workspace(
            sub,
            group,
            DEFAULT_WORKSPACE,
            storage_account=arm.add_storage_account(sub, group, DEVSTORE_ACCOUNT),
            container_registry=arm.add_container_registry(sub, group, ARM_SEEDED_REGISTRY),
        )
        for served in self.endpoint.identities:
            if served.kind == "user":
                arm.add_user_assigned_identity(
                    sub, group, served.name, client_id=served.client_id, principal_id=served.object_id
                )
            else:
                arm.add_principal(served.object_id)
        for index, seed in enumerate(self.datastores):
            arm.add_datastore(
                workspace, seed.name, account_name=DEVSTORE_ACCOUNT, container_name=seed.container_name,
                is_default=index == 0,
            )  # fmt: skip
            role = self.grants.get(seed.name)
            if role is not None:
                arm.add_role_assignment(self.container_id(seed), self.identity.object_id, role)

    @property
    def storage_account_id(self) -> str:
        """The ARM id of the sandbox's storage account (``devstoreaccount1``): the scope of its data roles."""
        return storage_account_id(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP, DEVSTORE_ACCOUNT)

    def container_id(self, seed: DatastoreSeed) -> str:
        """The ARM id of a datastore's container: the scope ``--grant`` assigns its role at."""
        return f"{self.storage_account_id}/blobServices/default/containers/{seed.container_name}"

    def blob_endpoint(self) -> str:
        """Return the blob endpoint jobs use: the role-checking proxy in front of Azurite."""
        if self.storage_proxy is None:
            msg = "the sandbox is not running; use it as a context manager or call start()"
            raise ConfigurationError(msg)
        return self.storage_proxy.blob_endpoint(DEVSTORE_ACCOUNT)

    # --- the cluster the job runs on -----------------------------------------------------------------------

    def use_cluster_identity(self, cluster: str) -> EmulatedIdentity:
        """Make the job run as the default identity of ``cluster``, as the ARM emulator holds it now.

        A setup step (``--setup``) may create the cluster or switch its identity; call this after it and before
        the job, as Azure ML gives a job its cluster's identity. The first user-assigned identity is the
        default; the identity endpoint starts serving it if it did not already.

        Args:
            cluster: The compute's name in the sandbox's workspace.

        Returns:
            The identity the job now runs as.

        Raises:
            ConfigurationError: The cluster does not exist or has no identity.
        """
        compute_id = (
            f"{workspace_id(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP, DEFAULT_WORKSPACE)}/computes/{cluster}"
        )
        body = self.arm.compute(compute_id)
        if body is None:
            raise ConfigurationError(
                f"--cluster {cluster}: there is no compute {cluster!r} in workspace {DEFAULT_WORKSPACE!r} of the ARM "
                "emulator; create it in the --setup step (examples/setup_cluster_identity.py does) or drop --cluster.",
                name="--cluster",
            )
        identity: dict[str, Any] = body.get("identity") or {}
        users: dict[str, Any] = identity.get("userAssignedIdentities") or {}
        served = {i.client_id.lower(): i for i in self.endpoint.identities}
        chosen: EmulatedIdentity
        if users:
            resource_id, ids = next(iter(users.items()))
            chosen = served.get(str(ids["clientId"]).lower()) or EmulatedIdentity.user(
                resource_id.rsplit("/", 1)[-1], client_id=ids["clientId"], object_id=ids["principalId"]
            )
        elif identity.get("principalId"):
            by_object = {i.object_id.lower(): i for i in self.endpoint.identities}
            chosen = by_object.get(str(identity["principalId"]).lower()) or EmulatedIdentity.system(
                cluster, object_id=identity["principalId"]
            )
        else:
            raise ConfigurationError(
                f"--cluster {cluster}: the compute has no managed identity, so a job on it cannot get tokens; assign "
                "one in the --setup step (ClusterSpec(identity=UserAssigned([...]))).",
                name="--cluster",
            )
        if chosen not in self.endpoint.identities:
            self.endpoint.add_identity(chosen)
        self.identity = chosen
        return chosen

    # --- the job -------------------------------------------------------------------------------------------

    def environ(self) -> dict[str, str]:
        """Return the variables a job sees (on top of the caller's environment, minus foreign identity ones)."""
        guard_dir = self.workdir / "guard"
        guard_dir.mkdir(exist_ok=True)
        scratch = self.workdir / "tmp"  # the node's local disk: it goes when the sandbox does, as a node's does
        scratch.mkdir(exist_ok=True)
        (guard_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        python_path = os.pathsep.join(p for p in (str(guard_dir), os.environ.get("PYTHONPATH", "")) if p)
        environ = dict(self.endpoint.azureml_environ(self.identity))
        environ.update(
            {
                "AZUREML_ARM_SUBSCRIPTION": DEFAULT_SUBSCRIPTION_ID,
                "AZUREML_ARM_RESOURCEGROUP": DEFAULT_RESOURCE_GROUP,
                "AZUREML_ARM_WORKSPACE_NAME": DEFAULT_WORKSPACE,
                "AZUREML_RUN_ID": self.run_id,
                "AML_IDENTITY_BLOB_ENDPOINTS": json.dumps({DEVSTORE_ACCOUNT: self.blob_endpoint()}),
                "AML_IDENTITY_ARM_ENDPOINT": self.arm.endpoint,
                "AML_IDENTITY_CACHE_DIR": str(self.workdir / "token-cache"),
                "AML_IDENTITY_LOOPBACK_ONLY": "1",
                "PYTHONPATH": python_path,
                "TMPDIR": str(scratch),
                **self.tls.environ(),
            }
        )
        return environ

    def job_environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Return the full environment of a job process: ``base`` (default ``os.environ``) plus :meth:`environ`."""
        merged = {k: v for k, v in (os.environ if base is None else base).items() if k not in _FOREIGN_VARIABLES}
        merged.update(self.environ())
        return merged

    def rank_environment(self, rank: int, master_port: int) -> dict[str, str]:
        """The variables Azure ML sets for rank ``rank`` of a distributed job on one node of :attr:`processes`."""
        return {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(self.processes),
            "LOCAL_WORLD_SIZE": str(self.processes),
            "NODE_RANK": "0",
            "MASTER_ADDR": MASTER_ADDR,
            "MASTER_PORT": str(master_port),
        }

    def run(self, command: Sequence[str], *, cwd: Path | None = None, processes: int | None = None) -> int:
        """Run ``command`` as the job (``processes`` ranks, default :attr:`processes`) and return its exit code.

        Each rank runs in its own process group; SIGTERM and SIGINT are passed on to every rank (so
        ``upload_on_exit`` sees what it would on a preempted node). When a rank fails the others are stopped,
        and when the job ends whatever it left running in its process groups is killed. A rank killed by signal
        N counts as exit code 128 + N; the job's code is the first failing rank's, else 0.

        Raises:
            ConfigurationError: The command is empty or cannot be started.
        """
        if not command:
            raise ConfigurationError("Nothing to run: give the job's command after `--`.", name="command")
        count = self.processes if processes is None else processes
        executable = shutil.which(command[0]) or command[0]
        base = self.job_environment()
        port = _free_port()
        finished: queue.SimpleQueue[subprocess.Popen[bytes]] = queue.SimpleQueue()
        with self._forwarding_signals():
            try:
                for rank in range(count):
                    environ = {**base, **self.rank_environment(rank, port)} if count > 1 else base
                    try:
                        child = subprocess.Popen(  # noqa: S603 - the user's own command
                            [executable, *command[1:]], env=environ, cwd=cwd, start_new_session=True
                        )
                    except OSError as exc:
                        raise ConfigurationError(
                            f"Cannot start {command[0]!r}: {exc.strerror}.", name="command"
                        ) from None
                    self._children.append(child)
                    threading.Thread(target=_report_exit, args=(child, finished), daemon=True).start()
                return self._wait_all(finished, count)
            finally:
                self._stop_children()

    def _wait_all(self, finished: queue.SimpleQueue[subprocess.Popen[bytes]], count: int) -> int:
        failed = 0
        for _ in range(count):
            child = finished.get()  # the first rank to finish, so a failed rank stops the others promptly
            code = _exit_status(child.returncode)
            if code and not failed:
                failed = code
                for other in self._children:
                    if other.returncode is None:
                        self._signal_group(other, signal.SIGTERM)
        return failed

    @staticmethod
    def _signal_group(child: subprocess.Popen[bytes], signum: int) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signum)

    def _stop_children(self) -> None:
        """Stop the job's ranks and anything they left in their process groups (TERM, a grace period, KILL)."""
        for child in self._children:
            self._signal_group(child, signal.SIGTERM)
        for child in self._children:
            with suppress(subprocess.TimeoutExpired):
                child.wait(timeout=STOP_GRACE_S)
            self._signal_group(child, signal.SIGKILL)
            child.wait()
        self._children.clear()

    @contextmanager
    def _forwarding_signals(self) -> Iterator[None]:
        def forward(signum: int, _frame: FrameType | None) -> None:
            for child in self._children:
                self._signal_group(child, signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # --- after the job -------------------------------------------------------------------------------------

    def copy_out(self, name: str, dest: Path) -> int:
        """Copy the content of datastore ``name`` into folder ``dest`` (``--output``); return the file count.

        Raises:
            ConfigurationError: There is no such datastore.
        """
        from azure.storage.blob import BlobServiceClient  # noqa: PLC0415 - only when the sandbox runs

        seed = next((s for s in self.datastores if s.name == name), None)
        if seed is None:
            raise ConfigurationError(
                f"--output {name}=...: there is no datastore {name!r}; seed it with --datastore {name}.",
                name="--output",
            )
        service = BlobServiceClient.from_connection_string(
            self.azurite.connection_string(), connection_verify=str(self.tls.cert)
        )
        container = service.get_container_client(seed.container_name)
        copied = 0
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for blob in container.list_blobs():
            target = (root / blob.name).resolve()
            if not target.is_relative_to(root):
                continue  # a blob name with '..' would escape DIR
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                container.download_blob(blob.name).readinto(out)
            copied += 1
        return copied

    def summary(self) -> str:
        """Describe what the job did against the emulators (for the end of a sandbox run)."""
        requests = self.endpoint.requests
        per_resource = Counter(r.params.get("resource", "?") for r in requests)
        breakdown = ", ".join(f"{resource}: {count}" for resource, count in sorted(per_resource.items()))
        per_identity = Counter(r.identity for r in requests if r.identity is not None)
        minted = ", ".join(
            f"{count} for {i.kind}-assigned {i.name} ({i.client_id})" for i, count in per_identity.items()
        )
        text = (
            f"identity endpoint: {len(requests)} token request(s){f' ({breakdown})' if breakdown else ''}, "
            f"token(s) minted: {minted or 'none'}; ARM emulator: {len(self.arm.requests)} request(s)"
        )
        if self.storage_proxy is not None:
            statuses = self.storage_proxy.statuses()
            text += f"; storage: {sum(statuses.values())} request(s), {statuses[403]} denied"  # 403: no role
        return text
