"""An Azure ML workspace: its coordinates, where they come from (``config.json``, the job), its ARM client.

:class:`Workspace` is what provisioning starts from (``ws.clusters``, :func:`~aml_identity.provisioning.diagnose`).
Its requests go through the package's one ARM client, which stays private: :func:`arm_of` hands it to the
provisioning modules.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aml_identity._environment import JobEnvironment, is_guid
from aml_identity._job import job_credential
from aml_identity.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from azure.core.credentials import TokenCredential

    from aml_identity._arm import ArmClient as _ArmClient
    from aml_identity.provisioning.clusters import ClusterCollection

__all__ = ["WORKSPACES_API_VERSION", "Workspace"]

# The workspace API version (mfe.json, the newest stable MachineLearningServices version; computes use it too).
WORKSPACES_API_VERSION = "2025-12-01"
_RESOURCE_GROUP = re.compile(r"^[-\w._()]{1,90}$")
_WORKSPACE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{2,32}$")
_CONFIG_FILES = (Path(".azureml") / "config.json", Path("config.json"))
# How many searched paths an error message lists.
_SHOWN_PATHS = 4


def _default_credential() -> TokenCredential:
    from azure.identity import DefaultAzureCredential  # noqa: PLC0415 - only when no credential is given

    return DefaultAzureCredential()


class Workspace:
    """An Azure Machine Learning workspace, reached through Azure Resource Manager.

    Args:
        subscription_id: The subscription (a GUID).
        resource_group: The resource group.
        name: The workspace name.
        credential: Any ``TokenCredential``; azure-identity's ``DefaultAzureCredential`` when omitted.
        environ: Environment to read ``AML_IDENTITY_ARM_ENDPOINT`` (and the sandbox switches) from.
        connection_verify: TLS verification for ARM: True (``REQUESTS_CA_BUNDLE``), False, or a CA bundle.
        sleep: Waits between polls (``time.sleep``; tests inject a fake).
    """

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        name: str,
        *,
        credential: TokenCredential | None = None,
        environ: Mapping[str, str] | None = None,
        connection_verify: bool | str | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        """Validate the names (no request is sent until one is needed)."""
        if not isinstance(subscription_id, str) or not is_guid(subscription_id):
            msg = f"subscription_id {subscription_id!r} is not a GUID (`az account show --query id` prints it)."
            raise ConfigurationError(msg, name="subscription_id")
        if not isinstance(resource_group, str) or not _RESOURCE_GROUP.match(resource_group):
            msg = f"resource_group {resource_group!r} is not a valid name (1-90 letters, digits, -_.())."
            raise ConfigurationError(msg, name="resource_group")
        if not isinstance(name, str) or not _WORKSPACE_NAME.match(name):
            msg = f"workspace name {name!r} is invalid (3-33 letters, digits, - and _, not starting with -_)."
            raise ConfigurationError(msg, name="workspace_name")
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.name = name
        self._credential = credential
        self._arm_options: dict[str, Any] = {"environ": environ, "connection_verify": connection_verify, "sleep": sleep}
        self._arm: _ArmClient | None = None
        self._details: dict[str, Any] | None = None

    @classmethod
    def from_config(
        cls, path: str | Path | None = None, *, credential: TokenCredential | None = None, **options: Any
    ) -> Workspace:
        """Read the workspace from an Azure ML ``config.json``.

        Args:
            path: The file, or a folder to search; when omitted, ``.azureml/config.json`` or ``config.json``
                in the current folder or any parent.
            credential: As for the constructor.
            **options: ``environ``, ``connection_verify``, ``sleep`` (as for the constructor).

        Raises:
            ConfigurationError: No file found, or it lacks ``subscription_id``, ``resource_group`` or
                ``workspace_name``.
        """
        file = _find_config(Path(path) if path is not None else None)
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigurationError(f"Cannot read the workspace config {file}: {exc}.", name="config") from None
        if not isinstance(config, dict):
            raise ConfigurationError(f"The workspace config {file} is not a JSON object.", name="config")
        missing = [key for key in ("subscription_id", "resource_group", "workspace_name") if not config.get(key)]
        if missing:
            msg = (
                f"The workspace config {file} lacks {', '.join(missing)}; download config.json from the "
                "workspace's "
                "page in the Azure portal."
            )
            raise ConfigurationError(msg, name="config")
        return cls(
            config["subscription_id"],
            config["resource_group"],
            config["workspace_name"],
            credential=credential,
            **options,
        )

    @classmethod
    def from_job_environment(
        cls,
        *,
        credential: TokenCredential | None = None,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Workspace:
        """The workspace of the Azure ML job this runs in (from ``AZUREML_ARM_*``).

        Reads ``AZUREML_ARM_SUBSCRIPTION``, ``AZUREML_ARM_RESOURCEGROUP`` and ``AZUREML_ARM_WORKSPACE_NAME``.

        The credential defaults to the job's identity (aml-identity's job credential).

        Raises:
            ConfigurationError: Not in a job: the variables are missing (the message names them).
        """
        env = JobEnvironment.from_environ(environ)
        found = {
            "AZUREML_ARM_SUBSCRIPTION": env.subscription_id,
            "AZUREML_ARM_RESOURCEGROUP": env.resource_group,
            "AZUREML_ARM_WORKSPACE_NAME": env.workspace_name,
        }
        missing = [name for name, value in found.items() if not value]
        if missing:
            msg = (
                f"Not in an Azure ML job: {', '.join(missing)} not set. Outside a job use "
                "Workspace.from_config() "
                "or Workspace(subscription_id, resource_group, name)."
            )
            raise ConfigurationError(msg, name=missing[0])
        return cls(
            str(env.subscription_id),
            str(env.resource_group),
            str(env.workspace_name),
            credential=credential or job_credential(environ),
            environ=environ,
            **options,
        )

    @property
    def id(self) -> str:
        """The workspace's ARM id."""
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{self.name}"
        )

    def get_details(self, *, refresh: bool = False) -> dict[str, Any]:
        """The workspace's ARM body (GET, cached)."""
        if self._details is None or refresh:
            response = arm_of(self).call(
                "GET",
                self.id,
                api_version=WORKSPACES_API_VERSION,
                what=f"reading workspace {self.name!r}",
                ok=(200,),
            )
            self._details = dict(response.body)
        return self._details

    @property
    def location(self) -> str:
        """The workspace's region."""
        return str(self.get_details()["location"])

    @property
    def container_registry(self) -> str | None:
        """The ARM id of the workspace's container registry, if it has one yet."""
        registry = (self.get_details().get("properties") or {}).get("containerRegistry")
        return str(registry) if registry else None

    @property
    def clusters(self) -> ClusterCollection:
        """The workspace's compute clusters."""
        from aml_identity.provisioning.clusters import ClusterCollection  # noqa: PLC0415 - clusters imports this

        return ClusterCollection(self)

    def __repr__(self) -> str:
        """Show the workspace's coordinates."""
        return f"Workspace({self.subscription_id!r}, {self.resource_group!r}, {self.name!r})"


def _find_config(path: Path | None) -> Path:
    if path is not None and path.is_file():
        return path
    start = (path or Path.cwd()).resolve()
    searched = []
    for folder in (start, *start.parents) if path is None else (start,):
        for candidate in _CONFIG_FILES:
            searched.append(str(folder / candidate))
            if (folder / candidate).is_file():
                return folder / candidate
    shown = ", ".join(searched[:_SHOWN_PATHS]) + (" ..." if len(searched) > _SHOWN_PATHS else "")
    msg = (
        f"No workspace config.json found (looked for {shown}). "
        "Download it from the workspace's page in the Azure portal, or pass --subscription, "
        "--resource-group and "
        "--workspace."
    )
    raise ConfigurationError(msg, name="config")


def arm_of(workspace: Workspace, credential: TokenCredential | None = None) -> _ArmClient:
    """Return the ARM client of ``workspace``, or one with ``credential`` and the workspace's other settings.

    The workspace's own client is built on first use, with the default credential when none was given.
    """
    from aml_identity._arm import ArmClient  # noqa: PLC0415 - azure-mgmt-core only when a request is sent

    options = workspace._arm_options  # noqa: SLF001 - this module's own class
    if credential is not None:
        return ArmClient(credential, **options)
    if workspace._arm is None:  # noqa: SLF001
        workspace._arm = ArmClient(workspace._credential or _default_credential(), **options)  # noqa: SLF001
    return workspace._arm  # noqa: SLF001
