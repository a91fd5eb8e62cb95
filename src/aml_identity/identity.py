"""Which managed identity this process is, and through which endpoint it gets tokens.

:func:`default_identity` applies DESIGN §2's rules to the environment: an explicit id wins; on Azure ML the
platform's ``DEFAULT_IDENTITY_CLIENT_ID`` is sent even for a system-assigned identity (the endpoint wants a
``clientid``, and without one it returns a token for the *user* who submitted the job); elsewhere
``DEFAULT_IDENTITY_CLIENT_ID``, then ``AZURE_CLIENT_ID``, then the platform's default identity.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from aml_identity import errors
from aml_identity._environment import JobEnvironment, check_outbound_url, is_guid, is_loopback_host
from aml_identity.errors import ConfigurationError

__all__ = [
    "SOURCES",
    "SOURCE_NAMES",
    "IdentitySource",
    "ManagedIdentity",
    "SelectedBy",
    "SourceRule",
    "default_identity",
    "sources_markdown",
]

_log = logging.getLogger("aml_identity.identity")

IdentitySource = Literal["azureml", "imds", "app_service", "service_fabric", "azure_arc", "workload_identity"]
SelectedBy = Literal["argument", "DEFAULT_IDENTITY_CLIENT_ID", "AZURE_CLIENT_ID", "platform default"]

# What Azure ML puts in DEFAULT_IDENTITY_CLIENT_ID on compute that has no managed identity (observed by the
# Azure SDK team, azure-sdk-for-python PR #36047): a placeholder, not an id.
NO_IDENTITY_PLACEHOLDER = "clientid"
# IMDS, the managed-identity endpoint of every Azure VM (link-local, no secret).
IMDS_AUTHORITY = "http://169.254.169.254"
IMDS_TOKEN_PATH = "/metadata/identity/oauth2/token"  # noqa: S105 - a URL path, not a secret
# The Azure Arc agent's local endpoint and the file whose presence means the agent is installed (as msal checks).
ARC_DEFAULT_ENDPOINT = "http://localhost:40342/metadata/identity/oauth2/token"
ARC_AGENT_FILE = Path("/opt/azcmagent/bin/himds")
# Entra's public-cloud authority, for workload identity when AZURE_AUTHORITY_HOST is not set.
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"

_UAI_ID_RE = re.compile(
    r"^/subscriptions/[0-9a-fA-F-]{36}/resourcegroups/[-\w._()]{1,90}"
    r"/providers/microsoft\.managedidentity/userassignedidentities/[-\w]{3,128}$",
    re.IGNORECASE,
)
_HOW_TO_FIND_CLIENT_ID = (
    "find it with `az identity show --ids <identity resource id> --query clientId -o tsv`, "
    "or in the portal under the identity's Overview as 'Client ID'"
)
SOURCE_NAMES: Mapping[str, str] = {
    "azureml": "Azure ML identity endpoint",
    "imds": "IMDS endpoint",
    "app_service": "App Service identity endpoint",
    "service_fabric": "Service Fabric identity endpoint",
    "azure_arc": "Azure Arc identity endpoint",
    "workload_identity": "workload identity (federated token) endpoint",
}


@dataclass(frozen=True)
class ManagedIdentity:
    """A resolved managed identity: where its tokens come from and how it was chosen.

    Attributes:
        source: The platform protocol (``"azureml"``, ``"imds"``, ``"app_service"``, ``"service_fabric"``,
            ``"azure_arc"`` or ``"workload_identity"``).
        client_id: The client (application) id sent to the endpoint, or None for the platform's default.
        selected_by: Where the id came from: ``"argument"``, ``"DEFAULT_IDENTITY_CLIENT_ID"``,
            ``"AZURE_CLIENT_ID"`` or ``"platform default"``.
        endpoint: The token endpoint URL (never holds a secret).
        object_id: The object (principal) id, when the identity was chosen by it (IMDS, App Service, Arc).
        resource_id: The ARM resource id, when the identity was chosen by it (IMDS, App Service, Arc).
    """

    source: IdentitySource
    client_id: str | None
    selected_by: SelectedBy
    endpoint: str
    object_id: str | None = None
    resource_id: str | None = None

    @property
    def selector(self) -> str:
        """The id that selects this identity at the endpoint, or ``"system-assigned"`` when none does."""
        return self.client_id or self.object_id or self.resource_id or "system-assigned"

    def describe(self) -> str:
        """Return a one-line, secret-free description for messages and logs."""
        if self.client_id:
            who = f"client id {self.client_id}"
        elif self.object_id:
            who = f"object id {self.object_id}"
        elif self.resource_id:
            who = f"resource id {self.resource_id}"
        else:
            who = "the system-assigned identity"
        via = "" if self.selected_by in ("argument", "platform default") else f" (from {self.selected_by})"
        return f"{who}{via} via the {SOURCE_NAMES[self.source]} {self.endpoint}"


def _validate_endpoint(url: str, name: str, env: JobEnvironment, *, carries_secret: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{name}={url!r} is not an http:// or https:// URL. On Azure ML the platform sets it "
            "(for example http://127.0.0.1:46808/MSI/auth); unset it, or point it at the identity endpoint.",
            name=name,
        )
    if carries_secret and not is_loopback_host(parts.hostname) and not env.allow_remote_identity_endpoint:
        raise ConfigurationError(
            f"{name}={url!r} is not on this machine; the identity endpoint's secret would be sent to "
            f"{parts.hostname!r}. Azure ML's endpoint is always on 127.0.0.1 or localhost: fix {name}, or set "
            "AML_IDENTITY_ALLOW_REMOTE_IDENTITY_ENDPOINT=1 if you really run a remote endpoint you trust.",
            name=name,
        )
    check_outbound_url(url, env, what="identity endpoint")
    return url


def _check_guid(value: str, name: str) -> str:
    value = value.strip()
    if not is_guid(value):
        kind = "object (principal) id" if name == "object_id" else "client (application) id"
        raise ConfigurationError(
            f"{name}={value!r} is not a GUID. Pass the identity's {kind}, a GUID like "
            f"'0b5ad7e4-3c2f-4d1e-9a8b-7c6d5e4f3a2b'; {_HOW_TO_FIND_CLIENT_ID}.",
            name=name,
        )
    return value.lower()


def _check_resource_id(value: str) -> str:
    value = value.strip()
    if not _UAI_ID_RE.match(value):
        raise ConfigurationError(
            f"resource_id={value!r} is not a user-assigned identity's ARM id; it must look like "
            "/subscriptions/<subscription id>/resourceGroups/<group>/providers/"
            "Microsoft.ManagedIdentity/userAssignedIdentities/<name>.",
            name="resource_id",
        )
    return value


@dataclass(frozen=True)
class SourceRule:
    """One row of :data:`SOURCES`: when a source applies and where its token endpoint is.

    Attributes:
        source: The identity source, or ``"cloud_shell"`` for the environment that is refused.
        applies: Whether the environment selects this source.
        endpoint: The token endpoint URL and the setting it came from (None: the source is refused).
        carries_secret: Whether requests to the endpoint carry a secret (then it must be on this machine).
        when: The condition, for the documentation.
        where: The endpoint, for the documentation.
    """

    source: IdentitySource | Literal["cloud_shell"]
    applies: Callable[[JobEnvironment], bool]
    endpoint: Callable[[JobEnvironment], tuple[str, str] | None]
    carries_secret: bool
    when: str
    where: str


def _workload_endpoint(env: JobEnvironment) -> tuple[str, str]:
    authority = (env.authority_host or DEFAULT_AUTHORITY).rstrip("/")
    return f"{authority}/{env.tenant_id}/oauth2/v2.0/token", "AZURE_AUTHORITY_HOST"


def _imds_endpoint(env: JobEnvironment) -> tuple[str, str]:
    authority = (env.pod_identity_authority_host or IMDS_AUTHORITY).rstrip("/")
    name = "AZURE_POD_IDENTITY_AUTHORITY_HOST" if env.pod_identity_authority_host else "IMDS endpoint"
    return authority + IMDS_TOKEN_PATH, name


# The identity sources in msal's order of detection (msal sends the request, so it must agree): the first row
# whose condition holds is the source. `aml-identity`'s docs render this table (sources_markdown()).
SOURCES: tuple[SourceRule, ...] = (
    SourceRule(
        "service_fabric",
        lambda env: bool(env.identity_endpoint and env.identity_header and env.identity_server_thumbprint),
        lambda env: (str(env.identity_endpoint), "IDENTITY_ENDPOINT"),
        carries_secret=False,
        when="`IDENTITY_ENDPOINT`, `IDENTITY_HEADER` and `IDENTITY_SERVER_THUMBPRINT` are set",
        where="`IDENTITY_ENDPOINT`",
    ),
    SourceRule(
        "app_service",
        lambda env: bool(env.identity_endpoint and env.identity_header),
        lambda env: (str(env.identity_endpoint), "IDENTITY_ENDPOINT"),
        carries_secret=True,
        when="`IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set",
        where="`IDENTITY_ENDPOINT` (on this machine: it receives the secret)",
    ),
    SourceRule(
        "azureml",
        lambda env: bool(env.msi_endpoint and env.msi_secret),
        lambda env: (str(env.msi_endpoint), "MSI_ENDPOINT"),
        carries_secret=True,
        when="`MSI_ENDPOINT` and `MSI_SECRET` are set (Azure ML compute)",
        where="`MSI_ENDPOINT` (on this machine: it receives the secret)",
    ),
    SourceRule(
        "azure_arc",
        lambda env: bool(env.identity_endpoint and env.imds_endpoint),
        lambda env: (str(env.identity_endpoint), "IDENTITY_ENDPOINT"),
        carries_secret=False,
        when="`IDENTITY_ENDPOINT` and `IMDS_ENDPOINT` are set",
        where="`IDENTITY_ENDPOINT`",
    ),
    SourceRule(
        "azure_arc",
        lambda _env: ARC_AGENT_FILE.exists(),
        lambda _env: (ARC_DEFAULT_ENDPOINT, "IDENTITY_ENDPOINT"),
        carries_secret=False,
        when=f"the Azure Arc agent is installed (`{ARC_AGENT_FILE}` exists)",
        where=f"`{ARC_DEFAULT_ENDPOINT}`",
    ),
    SourceRule(
        "cloud_shell",
        lambda env: bool(env.cloud_shell or (env.msi_endpoint and not env.msi_secret)),
        lambda _env: None,
        carries_secret=False,
        when="Azure Cloud Shell (`AZUREPS_HOST_ENVIRONMENT=cloud-shell...`, or `MSI_ENDPOINT` without `MSI_SECRET`)",
        where="refused: its endpoint gives the signed-in user's tokens (`IdentityUnavailableError`)",
    ),
    SourceRule(
        "workload_identity",
        lambda env: bool(env.federated_token_file and env.tenant_id),
        _workload_endpoint,
        carries_secret=False,
        when="`AZURE_FEDERATED_TOKEN_FILE` and `AZURE_TENANT_ID` are set (Kubernetes workload identity)",
        where=f"`AZURE_AUTHORITY_HOST` (default `{DEFAULT_AUTHORITY}`) + `/<tenant>/oauth2/v2.0/token`",
    ),
    SourceRule(
        "imds",
        lambda _env: True,
        _imds_endpoint,
        carries_secret=False,
        when="none of the above (Azure VMs, Kubernetes compute)",
        where=f"`AZURE_POD_IDENTITY_AUTHORITY_HOST`, else `{IMDS_AUTHORITY}`, + `{IMDS_TOKEN_PATH}`",
    ),
)


def sources_markdown() -> str:
    """Return :data:`SOURCES` as a Markdown table (the identity-selection section of ``docs/runtime.md``)."""
    rows = ["| Order | Source | When | Token endpoint |", "|---|---|---|---|"]
    for number, rule in enumerate(SOURCES, start=1):
        rows.append(f"| {number} | `{rule.source}` | {rule.when} | {rule.where} |")
    return "\n".join(rows) + "\n"


def _detect_source(env: JobEnvironment) -> tuple[IdentitySource, str]:
    """Pick the identity source: the first row of :data:`SOURCES` that applies."""
    for rule in SOURCES:
        if not rule.applies(env):
            continue
        found = rule.endpoint(env)
        if found is None or rule.source == "cloud_shell":
            raise errors.IdentityUnavailableError(
                "This looks like Azure Cloud Shell (MSI_ENDPOINT without MSI_SECRET), whose endpoint gives tokens "
                "for the signed-in user, not a managed identity. Use azure.identity.AzureCliCredential there; on "
                "Azure ML compute both MSI_ENDPOINT and MSI_SECRET are set by the platform.",
                source="cloud_shell",
            )
        url, name = found
        source: IdentitySource = rule.source
        return source, _validate_endpoint(url, name, env, carries_secret=rule.carries_secret)
    msg = "the last identity source (IMDS) applies to every environment"  # pragma: no cover - unreachable
    raise AssertionError(msg)  # pragma: no cover


def default_identity(
    *,
    client_id: str | None = None,
    object_id: str | None = None,
    resource_id: str | None = None,
    environ: Mapping[str, str] | JobEnvironment | None = None,
) -> ManagedIdentity:
    """Resolve the managed identity this process should use.

    Rules, in order (DESIGN §2):

    1. An explicit ``client_id`` (or ``object_id`` / ``resource_id`` where the endpoint supports them) wins.
    2. On Azure ML (``MSI_ENDPOINT`` + ``MSI_SECRET``) the endpoint wants a ``clientid`` even for the
       system-assigned identity: ``DEFAULT_IDENTITY_CLIENT_ID`` is used. When it is missing, empty or the
       placeholder ``clientid`` (compute with no identity), :class:`IdentityNotConfiguredError` is raised —
       the endpoint would otherwise return a token for the user who submitted the job.
    3. Elsewhere (IMDS, Kubernetes compute, App Service, Arc): ``DEFAULT_IDENTITY_CLIENT_ID``, else
       ``AZURE_CLIENT_ID``, else the platform's default (system-assigned) identity.

    Args:
        client_id: The client (application) id of a user-assigned identity to use instead of the default.
        object_id: Its object (principal) id instead (not on Azure ML, whose endpoint selects by client id).
        resource_id: Its ARM resource id instead (not on Azure ML).
        environ: The environment to resolve from: a mapping, a :class:`JobEnvironment`, or ``os.environ``
            when omitted.

    Returns:
        The resolved identity.

    Raises:
        ConfigurationError: An id or endpoint variable is malformed; the message names it and the fix.
        IdentityNotConfiguredError: On Azure ML compute with no managed identity assigned.
        IdentityUnavailableError: No managed-identity endpoint exists here (Cloud Shell).
    """
    env = environ if isinstance(environ, JobEnvironment) else JobEnvironment.from_environ(environ)
    explicit = _explicit_selector(client_id, object_id, resource_id)
    source, endpoint = _detect_source(env)
    if source == "service_fabric":
        if explicit:
            raise ConfigurationError(
                f"{explicit.name} cannot be used on Service Fabric: its managed identity is configured in the "
                "cluster, not per request. Remove the argument.",
                name=explicit.name,
            )
        return ManagedIdentity(source, None, "platform default", endpoint)
    if source == "azureml":
        return _resolve_azureml(env, endpoint, explicit)
    if explicit:
        return ManagedIdentity(
            source, explicit.client_id, "argument", endpoint, object_id=explicit.object_id,
            resource_id=explicit.resource_id,
        )  # fmt: skip
    raw_default = (env.default_identity_client_id or "").strip()
    if raw_default and raw_default.lower() != NO_IDENTITY_PLACEHOLDER:
        return ManagedIdentity(
            source, _check_guid(raw_default, "DEFAULT_IDENTITY_CLIENT_ID"), "DEFAULT_IDENTITY_CLIENT_ID", endpoint
        )
    if env.azure_client_id:
        return ManagedIdentity(source, _check_guid(env.azure_client_id, "AZURE_CLIENT_ID"), "AZURE_CLIENT_ID", endpoint)
    if source == "workload_identity":
        raise ConfigurationError(
            "Workload identity needs the identity's client id: set AZURE_CLIENT_ID (the federated identity's "
            "client id) or pass client_id=.",
            name="AZURE_CLIENT_ID",
        )
    return ManagedIdentity(source, None, "platform default", endpoint)


@dataclass(frozen=True)
class _Explicit:
    """The one id the caller passed, validated."""

    name: str
    client_id: str | None = None
    object_id: str | None = None
    resource_id: str | None = None


def _explicit_selector(client_id: str | None, object_id: str | None, resource_id: str | None) -> _Explicit | None:
    given = [n for n, v in (("client_id", client_id), ("object_id", object_id), ("resource_id", resource_id)) if v]
    if len(given) > 1:
        raise ConfigurationError(
            f"Pass one of client_id, object_id or resource_id, not {' and '.join(given)}: each alone selects an "
            "identity.",
            name=given[0],
        )
    if client_id is not None:
        return _Explicit("client_id", client_id=_check_guid(client_id, "client_id"))
    if object_id is not None:
        return _Explicit("object_id", object_id=_check_guid(object_id, "object_id"))
    if resource_id is not None:
        return _Explicit("resource_id", resource_id=_check_resource_id(resource_id))
    return None


def _resolve_azureml(env: JobEnvironment, endpoint: str, explicit: _Explicit | None) -> ManagedIdentity:
    if explicit and not explicit.client_id:
        raise ConfigurationError(
            f"{explicit.name} cannot select an identity on Azure ML: its identity endpoint selects identities by "
            f"client id only. Pass client_id= instead ({_HOW_TO_FIND_CLIENT_ID}).",
            name=explicit.name,
        )
    if explicit:
        return ManagedIdentity("azureml", explicit.client_id, "argument", endpoint)
    raw = (env.default_identity_client_id or "").strip()
    if not raw or raw.lower() == NO_IDENTITY_PLACEHOLDER:
        shown = "is not set" if env.default_identity_client_id is None else f"is {raw!r}"
        raise errors.IdentityNotConfiguredError(
            f"This Azure ML compute has no managed identity: DEFAULT_IDENTITY_CLIENT_ID {shown}. Assign one "
            "(`az ml compute update --name <cluster> --identity-type SystemAssigned`, or "
            "aml_identity.provisioning's cluster.add_identity()), or pass client_id= for a user-assigned "
            "identity attached to it. No token was requested: without a client id the endpoint answers with "
            "a token for the user who submitted the job, not for the compute.",
            source="azureml",
        )
    return ManagedIdentity(
        "azureml", _check_guid(raw, "DEFAULT_IDENTITY_CLIENT_ID"), "DEFAULT_IDENTITY_CLIENT_ID", endpoint
    )
