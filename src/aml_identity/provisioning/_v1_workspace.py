"""SDK v1's ``Workspace`` and the error translation every call of the v1 shim goes through.

Part of :mod:`aml_identity.provisioning.v1`, which re-exports :class:`Workspace`; import it from there.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import AzureError

from aml_identity import provisioning
from aml_identity.errors import (
    AmlIdentityError,
    ComputeTargetConfigurationError,
    ComputeTargetException,
    ConfigurationError,
    ProvisioningError,
    redact,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from azure.core.credentials import TokenCredential

    from aml_identity.provisioning.v1 import AmlCompute

__all__ = ["Workspace", "WorkspaceLike"]


@contextmanager
def _v1_errors() -> Iterator[None]:
    """Turn aml-identity's (and azure-core's) errors into SDK v1's, keeping the message and the cause."""
    try:
        yield
    except ComputeTargetException:
        raise
    except ConfigurationError as exc:
        raise ComputeTargetConfigurationError(exc.message, name=exc.name) from exc
    except ProvisioningError as exc:
        raise ComputeTargetException(exc.message, status_code=exc.status_code, error_code=exc.error_code) from exc
    except AmlIdentityError as exc:
        raise ComputeTargetException(exc.message) from exc
    except AzureError as exc:
        msg = f"Azure Resource Manager could not be reached or answered unexpectedly: {redact(str(exc))}"
        raise ComputeTargetException(msg) from exc


class Workspace:
    """An Azure ML workspace, with SDK v1's constructor (``azureml.core.Workspace``).

    Args:
        subscription_id: The subscription (a GUID).
        resource_group: The resource group.
        workspace_name: The workspace name.
        auth: Any ``TokenCredential``; azure-identity's ``DefaultAzureCredential`` when None (v1's
            ``InteractiveLoginAuthentication`` and friends are not taken: pass an azure-identity credential).
        environ: Environment to read ``AML_IDENTITY_ARM_ENDPOINT`` from (``os.environ`` by default).
        connection_verify: TLS verification for ARM: True, False or a CA bundle.
        sleep: Waits between polls (``time.sleep``; tests inject a fake).

    Raises:
        ComputeTargetConfigurationError: A name is malformed.
    """

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        workspace_name: str,
        auth: TokenCredential | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        connection_verify: bool | str | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        """Validate the names (nothing is sent until a request is needed)."""
        with _v1_errors():
            self.supported = provisioning.Workspace(
                subscription_id,
                resource_group,
                workspace_name,
                credential=auth,
                environ=environ,
                connection_verify=connection_verify,
                sleep=sleep,
            )

    @classmethod
    def from_config(
        cls, path: str | Path | None = None, auth: TokenCredential | None = None, **options: Any
    ) -> Workspace:
        """Read the workspace from an Azure ML ``config.json`` (as v1's ``Workspace.from_config``).

        Args:
            path: The file or a folder; ``.azureml/config.json`` or ``config.json`` here or in a parent when None.
            auth: As for the constructor.
            **options: ``environ``, ``connection_verify``, ``sleep`` (as for the constructor).

        Raises:
            ComputeTargetConfigurationError: No config found, or it lacks a field.
        """
        with _v1_errors():
            found = provisioning.Workspace.from_config(path, environ=options.get("environ"))
        return cls(found.subscription_id, found.resource_group, found.name, auth, **options)

    @property
    def name(self) -> str:
        """The workspace name."""
        return self.supported.name

    @property
    def subscription_id(self) -> str:
        """The subscription."""
        return self.supported.subscription_id

    @property
    def resource_group(self) -> str:
        """The resource group."""
        return self.supported.resource_group

    @property
    def location(self) -> str:
        """The workspace's region (GET, cached)."""
        with _v1_errors():
            return self.supported.location

    def get_details(self) -> dict[str, Any]:
        """The workspace's ARM body."""
        with _v1_errors():
            return dict(self.supported.get_details())

    @property
    def compute_targets(self) -> dict[str, AmlCompute]:
        """The workspace's AmlCompute clusters by name (v1 listed every compute type; the shim manages clusters)."""
        from aml_identity.provisioning.v1 import ComputeTarget  # noqa: PLC0415 - v1 builds on this module

        return {target.name: target for target in ComputeTarget.list(self)}

    def __repr__(self) -> str:
        """v1's repr: the coordinates."""
        return (
            f"Workspace.create(name={self.name!r}, subscription_id={self.subscription_id!r}, "
            f"resource_group={self.resource_group!r})"
        )


WorkspaceLike = Workspace | provisioning.Workspace


def _supported(workspace: object) -> provisioning.Workspace:
    if isinstance(workspace, Workspace):
        return workspace.supported
    if isinstance(workspace, provisioning.Workspace):
        return workspace
    msg = (
        f"workspace must be an aml_identity.provisioning.v1.Workspace or aml_identity.provisioning.Workspace, not "
        f"{type(workspace).__name__}: build it with Workspace(subscription_id, resource_group, workspace_name) or "
        "Workspace.from_config()."
    )
    raise ComputeTargetConfigurationError(msg, name="workspace")
