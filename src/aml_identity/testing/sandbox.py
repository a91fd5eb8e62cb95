"""Run a job as Azure ML would, on a laptop or in CI: ``aml-identity sandbox -- python train.py``.

The sandbox starts the pieces a job on an Azure ML compute cluster relies on — the managed-identity
endpoint (emulated), blob storage (Azurite, over HTTPS with bearer tokens) — seeds datastores from local
folders, sets the job environment the platform would set (``MSI_ENDPOINT``, ``MSI_SECRET``,
``DEFAULT_IDENTITY_CLIENT_ID``, ``AZUREML_ARM_*``), points every client at the emulators through
aml-identity's endpoint overrides and a CA bundle, and runs the command. Every Python process the job starts
carries the loopback guard, so nothing can reach Azure by mistake.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Literal

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
from aml_identity.testing.arm._ids import storage_account_id
from aml_identity.testing.azurite import DEVSTORE_ACCOUNT, Azurite
from aml_identity.testing.identity_endpoint import IdentityEndpoint

if TYPE_CHECKING:
    from aml_identity.testing.arm import ArmEmulator
    from aml_identity.testing.storage_proxy import StorageAuthProxy

__all__ = ["DatastoreSeed", "Sandbox"]

# Variables from the caller's environment that would make a job pick another identity or endpoint; the
# sandbox removes them so the job sees only what Azure ML would set.
_FOREIGN_VARIABLES = (
    "MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT", "AZURE_POD_IDENTITY_AUTHORITY_HOST", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "DEFAULT_IDENTITY_CLIENT_ID",
    "AML_IDENTITY_ALLOW_REMOTE_IDENTITY_ENDPOINT",
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
# What --arm seeds besides the workspace and its datastores: a user-assigned identity and a container registry.
ARM_SEEDED_IDENTITY = "uai-sandbox"
ARM_SEEDED_REGISTRY = "acrsandbox"


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


class Sandbox:
    """The emulated Azure ML job environment.

    Use it as a context manager, then :meth:`run` commands or read :meth:`environ`::

        with Sandbox(datastores=[DatastoreSeed("training_data", Path("data"))]) as sandbox:
            exit_code = sandbox.run(["python", "train.py"])

    Attributes:
        identity: The compute's default managed identity.
        endpoint: The identity-endpoint emulator.
        azurite: The storage emulator.
    """

    def __init__(
        self,
        *,
        identity: Literal["system", "user"] = "system",
        datastores: Sequence[DatastoreSeed] = (),
        token_lifetime: int = 86_400,
        workdir: Path | None = None,
        arm: bool = False,
        storage_role: str | None = DEFAULT_STORAGE_ROLE,
    ) -> None:
        """Configure (not start) the sandbox.

        Args:
            identity: Give the compute a system-assigned identity, or a user-assigned one.
            datastores: Datastores to create and fill.
            token_lifetime: Lifetime of minted tokens, in seconds (Azure ML's are ~24 h).
            workdir: Where to keep certificates, storage data and the token cache; a temporary folder when
                omitted (deleted on exit).
            arm: Also run the ARM emulator (needs the official specs, see
                :class:`~aml_identity.testing.ArmEmulator`), seeded with the workspace, its datastores, the
                ``devstoreaccount1`` storage account, a user-assigned identity ``uai-sandbox`` and a container
                registry, and point ``AML_IDENTITY_ARM_ENDPOINT`` at it. Storage then sits behind a
                :class:`~aml_identity.testing.StorageAuthProxy` that enforces the emulator's role assignments, as
                Azure storage does: a request without a data role gets Azure's 403 ``AuthorizationPermissionMismatch``.
            storage_role: With ``arm``, the role granted to the compute's identity on the storage account
                (``None``: no role, to see what a job without one gets). Roles can also be granted while the job
                runs, through the ARM emulator (``grant_data_access``).
        """
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="aml-identity-sandbox-"))
        self.identity = (
            EmulatedIdentity.system(DEFAULT_COMPUTE)
            if identity == "system"
            else EmulatedIdentity.user("uai-sandbox", resource_group=DEFAULT_RESOURCE_GROUP)
        )
        self.datastores = tuple(datastores)
        self.tls: TlsMaterial = make_tls_material(self.workdir / "tls")
        self.endpoint = IdentityEndpoint(identities=[self.identity], token_lifetime=token_lifetime)
        self.azurite = Azurite(workdir=self.workdir / "azurite", tls=self.tls)
        self.run_id = f"sandbox_{uuid.uuid4().hex[:12]}"
        self.arm: ArmEmulator | None = None
        self.storage_role = storage_role
        self.storage_proxy: StorageAuthProxy | None = None
        if arm:
            from aml_identity.testing.arm import ArmEmulator  # noqa: PLC0415 - loads the specs only when asked

            self.arm = ArmEmulator(
                tls=self.tls, retry_after=ARM_RETRY_AFTER_S, seconds_per_request=ARM_SECONDS_PER_REQUEST
            )
        self._started = False

    def start(self) -> Sandbox:
        """Start the emulators and seed the datastores."""
        self.endpoint.start()
        try:
            self.azurite.start()
            self._seed()
            if self.arm is not None:
                self.arm.start()
                self._seed_arm(self.arm)
                self.storage_proxy = self._start_storage_proxy(self.arm)
        except BaseException:
            self.stop()
            raise
        self._started = True
        return self

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
        arm.add_user_assigned_identity(sub, group, ARM_SEEDED_IDENTITY)
        if self.identity.kind == "user" and self.identity.name != ARM_SEEDED_IDENTITY:
            arm.add_user_assigned_identity(
                sub, group, self.identity.name, client_id=self.identity.client_id, principal_id=self.identity.object_id
            )
        for index, seed in enumerate(self.datastores):
            arm.add_datastore(
                workspace, seed.name, account_name=DEVSTORE_ACCOUNT, container_name=seed.container_name,
                is_default=index == 0,
            )  # fmt: skip

    def _start_storage_proxy(self, arm: ArmEmulator) -> StorageAuthProxy:
        from aml_identity.testing.storage_proxy import StorageAuthProxy  # noqa: PLC0415 - with --arm only

        if self.storage_role is not None:
            arm.add_role_assignment(self.storage_account_id, self.identity.object_id, self.storage_role)
        upstream = f"https://127.0.0.1:{self.azurite.port}"
        return StorageAuthProxy(upstream, authorizer=arm.has_data_role, tls=self.tls).start()

    @property
    def storage_account_id(self) -> str:
        """The ARM id of the sandbox's storage account (``devstoreaccount1``): the scope of its data roles."""
        return storage_account_id(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP, DEVSTORE_ACCOUNT)

    def blob_endpoint(self) -> str:
        """Return the blob endpoint jobs use: the role-checking proxy with ``arm``, else Azurite itself."""
        if self.storage_proxy is not None:
            return self.storage_proxy.blob_endpoint(DEVSTORE_ACCOUNT)
        return self.azurite.blob_endpoint()

    def environ(self) -> dict[str, str]:
        """Return the variables a job sees (on top of the caller's environment, minus foreign identity ones)."""
        guard_dir = self.workdir / "guard"
        guard_dir.mkdir(exist_ok=True)
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
                "AML_IDENTITY_CACHE_DIR": str(self.workdir / "token-cache"),
                "AML_IDENTITY_LOOPBACK_ONLY": "1",
                "PYTHONPATH": python_path,
                **self.tls.environ(),
            }
        )
        if self.arm is not None:
            environ["AML_IDENTITY_ARM_ENDPOINT"] = self.arm.endpoint
        return environ

    def job_environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Return the full environment of a job process: ``base`` (default ``os.environ``) plus :meth:`environ`."""
        merged = {k: v for k, v in (os.environ if base is None else base).items() if k not in _FOREIGN_VARIABLES}
        merged.update(self.environ())
        return merged

    def run(self, command: Sequence[str], *, cwd: Path | None = None) -> int:
        """Run ``command`` as the job and return its exit code (SIGTERM/SIGINT are passed on to it).

        Raises:
            ConfigurationError: The command is empty or cannot be started.
        """
        if not command:
            raise ConfigurationError("Nothing to run: give the job's command after `--`.", name="command")
        executable = shutil.which(command[0]) or command[0]
        try:
            child = subprocess.Popen([executable, *command[1:]], env=self.job_environment(), cwd=cwd)  # noqa: S603
        except OSError as exc:
            raise ConfigurationError(f"Cannot start {command[0]!r}: {exc.strerror}.", name="command") from None

        def forward(signum: int, _frame: FrameType | None) -> None:
            child.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def summary(self) -> str:
        """Describe what the job did against the emulators (for the end of a sandbox run)."""
        requests = self.endpoint.requests
        minted = sum(1 for r in requests if r.status == 200)  # noqa: PLR2004 - HTTP 200
        per_resource = Counter(r.params.get("resource", "?") for r in requests)
        breakdown = ", ".join(f"{resource}: {count}" for resource, count in sorted(per_resource.items()))
        text = (
            f"identity endpoint: {len(requests)} token request(s){f' ({breakdown})' if breakdown else ''}, "
            f"{minted} token(s) minted for {self.identity.kind}-assigned identity {self.identity.client_id}"
        )
        if self.arm is not None:
            text += f"; ARM emulator: {len(self.arm.requests)} request(s)"
        if self.storage_proxy is not None:
            statuses = self.storage_proxy.statuses()
            text += f"; storage: {sum(statuses.values())} request(s), {statuses[403]} denied"  # 403: no role
        return text

    def stop(self) -> None:
        """Stop the emulators and delete the temporary work folder."""
        self.endpoint.release_hangs()
        self.endpoint.stop()
        if self.storage_proxy is not None:
            self.storage_proxy.stop()
        self.azurite.stop()
        if self.arm is not None:
            self.arm.stop()
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
