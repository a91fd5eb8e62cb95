"""Read the process environment once into a frozen :class:`JobEnvironment`.

Everything aml-identity learns from environment variables is read here, validated, and kept in one
immutable object; the rest of the library takes a ``JobEnvironment`` (or an ``environ`` mapping that is
turned into one), never ``os.environ`` directly. Tests and the sandbox inject their own mapping.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import SplitResult, urlsplit

from aml_identity.errors import ConfigurationError

__all__ = [
    "DEFAULT_ARM_ENDPOINT",
    "MSAL_ENVIRONMENT",
    "JobEnvironment",
    "check_outbound_url",
    "is_guid",
    "is_loopback_host",
]

# Azure Resource Manager's public-cloud endpoint; AML_IDENTITY_ARM_ENDPOINT replaces it (emulator, sovereign cloud).
DEFAULT_ARM_ENDPOINT = "https://management.azure.com"
# IMDS, the token endpoint of every Azure VM; only ever used when no other identity endpoint is configured.
IMDS_HOST = "169.254.169.254"

_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# Where launchers put a process's rank on its node: torchrun and Azure ML, OpenMPI, MPICH/Intel MPI, Slurm.
_LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")
# The most digits a local rank may have: int() refuses strings over 4300 digits (sys.get_int_max_str_digits);
# any real rank on one node has a handful.
_MAX_RANK_DIGITS = 4300


def is_guid(value: str) -> bool:
    """Return whether ``value`` is a GUID in its canonical 8-4-4-4-12 hex form."""
    return bool(_GUID_RE.fullmatch(value))


def is_loopback_host(host: str) -> bool:
    """Return whether ``host`` (a name or an IP literal) is this machine's loopback interface."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in _TRUE


def _flag_off(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in _FALSE


def _get(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _url_parts(url: str) -> SplitResult | None:
    """``urlsplit(url)``, or None for what it cannot split (an unclosed ``[`` of an IPv6 host...)."""
    try:
        parts = urlsplit(url)
        _ = parts.hostname  # reading the host validates it too
    except ValueError:
        return None
    return parts


def _parse_http_url(value: str, name: str, *, https_only: bool = False) -> str:
    parts = _url_parts(value)
    schemes = ("https",) if https_only else ("http", "https")
    if parts is None or parts.scheme not in schemes or not parts.hostname:
        wanted = "an https:// URL" if https_only else "an http:// or https:// URL"
        raise ConfigurationError(
            f"{name}={value!r} is not {wanted}; set it to the endpoint's full URL "
            f"(for example {'https://management.azure.com' if https_only else 'http://127.0.0.1:46808/MSI/auth'}).",
            name=name,
        )
    return value


def _parse_blob_endpoints(raw: str | None) -> Mapping[str, str]:
    if raw is None:
        return MappingProxyType({})
    name = "AML_IDENTITY_BLOB_ENDPOINTS"
    example = '{"devstoreaccount1": "https://127.0.0.1:10443/devstoreaccount1"}'
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{name} is not valid JSON ({exc.msg} at character {exc.pos}); set it to a JSON object mapping "
            f"each storage account name to its blob endpoint URL, for example {example}.",
            name=name,
        ) from None
    if not isinstance(parsed, dict):
        raise ConfigurationError(
            f"{name} must be a JSON object mapping storage account names to blob endpoint URLs, "
            f"for example {example}; got a JSON {type(parsed).__name__}.",
            name=name,
        )
    endpoints: dict[str, str] = {}
    for account, url in parsed.items():
        if not isinstance(url, str):
            raise ConfigurationError(f"{name}[{account!r}] must be a URL string, for example {example}.", name=name)
        parts = _url_parts(url)
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"{name}[{account!r}]={url!r} is not an http:// or https:// URL; map each account to its blob "
                f"endpoint URL, for example {example}.",
                name=name,
            )
        endpoints[account] = url.rstrip("/")
    return MappingProxyType(endpoints)


def _parse_local_rank(environ: Mapping[str, str]) -> int | None:
    """The process's rank on its node, from the first launcher variable set (None outside a launcher)."""
    for name in _LOCAL_RANK_VARIABLES:
        raw = _get(environ, name)
        if raw is None:
            continue
        # str.isdigit() also accepts '²' and other Unicode digits that int() refuses: ASCII digits only, and
        # no more of them than int() converts (a rank that long is a mistaken value anyway).
        if not (raw.isascii() and raw.isdigit()) or len(raw) > _MAX_RANK_DIGITS:
            raise ConfigurationError(
                f"{name}={raw!r} is not a process rank: it must be a whole number of ASCII digits (0, 1, 2, ...). "
                f"It is set by the launcher (torchrun, mpirun, srun, Azure ML); unset {name} or set it to the "
                "process's rank on its node.",
                name=name,
            )
        return int(raw)
    return None


# Variables msal reads from os.environ to choose and reach the endpoint (JobEnvironment field -> variable);
# they must agree with the environment the identity was resolved from.
MSAL_ENVIRONMENT = {
    "msi_endpoint": "MSI_ENDPOINT",
    "msi_secret": "MSI_SECRET",
    "identity_endpoint": "IDENTITY_ENDPOINT",
    "identity_header": "IDENTITY_HEADER",
    "identity_server_thumbprint": "IDENTITY_SERVER_THUMBPRINT",
    "imds_endpoint": "IMDS_ENDPOINT",
    "pod_identity_authority_host": "AZURE_POD_IDENTITY_AUTHORITY_HOST",
}


@dataclass(frozen=True)
class JobEnvironment:
    """What the process environment says about the job, read once and validated.

    Secrets (``MSI_SECRET``, ``IDENTITY_HEADER``) are kept out of the ``repr``.
    """

    msi_endpoint: str | None = None
    msi_secret: str | None = field(default=None, repr=False)
    identity_endpoint: str | None = None
    identity_header: str | None = field(default=None, repr=False)
    identity_server_thumbprint: str | None = None
    imds_endpoint: str | None = None
    pod_identity_authority_host: str | None = None
    cloud_shell: bool = False
    federated_token_file: str | None = None
    authority_host: str | None = None
    tenant_id: str | None = None
    default_identity_client_id: str | None = None
    azure_client_id: str | None = None
    cache_dir: str | None = None
    xdg_runtime_dir: str | None = None
    token_timeout: float | None = None
    blob_endpoints: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    arm_endpoint: str = DEFAULT_ARM_ENDPOINT
    arm_endpoint_overridden: bool = False
    allow_remote_identity_endpoint: bool = False
    loopback_only: bool = False
    # AML_IDENTITY_FETCH_SERVICE=0 turns off the node's fetch service (aml_identity._fetch_service).
    fetch_service: bool = True
    subscription_id: str | None = None
    resource_group: str | None = None
    workspace_name: str | None = None
    # The process's rank on its node (LOCAL_RANK, ...): transfers show a progress bar on local rank 0 only.
    local_rank: int | None = None
    ca_bundle: str | None = None
    run_id: str | None = None
    # FUSE_LIBRARY_NAME / FUSE_LIBRARY_PATH (read by mfusepy itself): when set, `aml-identity mount` keeps them.
    fuse_library_configured: bool = False
    from_process: bool = field(default=False, compare=False)
    specs_dir: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> JobEnvironment:
        """Read and validate the variables aml-identity uses.

        Args:
            environ: The environment to read; ``os.environ`` when omitted.

        Returns:
            The frozen environment.

        Raises:
            ConfigurationError: A variable is malformed; the message names it and the fix.
        """
        env: Mapping[str, str] = os.environ if environ is None else environ
        arm_raw = _get(env, "AML_IDENTITY_ARM_ENDPOINT")
        arm = (
            _parse_http_url(arm_raw, "AML_IDENTITY_ARM_ENDPOINT", https_only=True).rstrip("/")
            if arm_raw
            else DEFAULT_ARM_ENDPOINT
        )
        timeout_raw = _get(env, "AML_IDENTITY_TOKEN_TIMEOUT")
        token_timeout: float | None = None
        if timeout_raw is not None:
            try:
                token_timeout = float(timeout_raw)
            except ValueError:
                token_timeout = -1.0
            if not token_timeout > 0:
                raise ConfigurationError(
                    f"AML_IDENTITY_TOKEN_TIMEOUT={timeout_raw!r} must be a positive number of seconds "
                    "(the total time to keep retrying the identity endpoint, default 90).",
                    name="AML_IDENTITY_TOKEN_TIMEOUT",
                )
        local_rank = _parse_local_rank(env)
        return cls(
            msi_endpoint=_get(env, "MSI_ENDPOINT"),
            msi_secret=_get(env, "MSI_SECRET"),
            identity_endpoint=_get(env, "IDENTITY_ENDPOINT"),
            identity_header=_get(env, "IDENTITY_HEADER"),
            identity_server_thumbprint=_get(env, "IDENTITY_SERVER_THUMBPRINT"),
            imds_endpoint=_get(env, "IMDS_ENDPOINT"),
            pod_identity_authority_host=_get(env, "AZURE_POD_IDENTITY_AUTHORITY_HOST"),
            cloud_shell=env.get("AZUREPS_HOST_ENVIRONMENT", "").lower().startswith("cloud-shell"),
            federated_token_file=_get(env, "AZURE_FEDERATED_TOKEN_FILE"),
            authority_host=_get(env, "AZURE_AUTHORITY_HOST"),
            tenant_id=_get(env, "AZURE_TENANT_ID"),
            default_identity_client_id=env.get("DEFAULT_IDENTITY_CLIENT_ID"),
            azure_client_id=_get(env, "AZURE_CLIENT_ID"),
            cache_dir=_get(env, "AML_IDENTITY_CACHE_DIR"),
            xdg_runtime_dir=_get(env, "XDG_RUNTIME_DIR"),
            token_timeout=token_timeout,
            blob_endpoints=_parse_blob_endpoints(_get(env, "AML_IDENTITY_BLOB_ENDPOINTS")),
            arm_endpoint=arm,
            arm_endpoint_overridden=arm_raw is not None,
            allow_remote_identity_endpoint=_flag(env, "AML_IDENTITY_ALLOW_REMOTE_IDENTITY_ENDPOINT"),
            loopback_only=_flag(env, "AML_IDENTITY_LOOPBACK_ONLY"),
            fetch_service=not _flag_off(env, "AML_IDENTITY_FETCH_SERVICE"),
            subscription_id=_get(env, "AZUREML_ARM_SUBSCRIPTION"),
            resource_group=_get(env, "AZUREML_ARM_RESOURCEGROUP"),
            workspace_name=_get(env, "AZUREML_ARM_WORKSPACE_NAME"),
            local_rank=local_rank,
            ca_bundle=_get(env, "REQUESTS_CA_BUNDLE") or _get(env, "CURL_CA_BUNDLE"),
            run_id=_get(env, "AZUREML_RUN_ID"),
            fuse_library_configured=bool(_get(env, "FUSE_LIBRARY_NAME") or _get(env, "FUSE_LIBRARY_PATH")),
            from_process=env is os.environ,
            specs_dir=_get(env, "AML_IDENTITY_SPECS_DIR"),
        )


def check_outbound_url(url: str, env: JobEnvironment, *, what: str) -> None:
    """Refuse a URL off loopback when the environment is sandboxed (``AML_IDENTITY_LOOPBACK_ONLY``).

    The sandbox and the test suite set ``AML_IDENTITY_LOOPBACK_ONLY=1`` so that a misconfiguration (a missing
    endpoint override, a fall-through to IMDS) fails loudly here instead of sending a request to Azure.

    Args:
        url: The URL about to be requested.
        env: The job environment.
        what: What the URL is for, to name in the error (for example ``"identity endpoint"``).

    Raises:
        ConfigurationError: The environment is loopback-only and ``url`` is not on loopback.
    """
    if not env.loopback_only:
        return
    parts = _url_parts(url)
    host = (parts.hostname if parts is not None else None) or ""
    if not is_loopback_host(host):
        hint = (
            " (that is IMDS: set MSI_ENDPOINT/MSI_SECRET or AZURE_POD_IDENTITY_AUTHORITY_HOST to the emulator)"
            if host == IMDS_HOST
            else " (set AML_IDENTITY_BLOB_ENDPOINTS / AML_IDENTITY_ARM_ENDPOINT to the emulators)"
        )
        raise ConfigurationError(
            f"Refusing to send a request to the {what} {url!r}: AML_IDENTITY_LOOPBACK_ONLY is set and "
            f"{host!r} is not a loopback address{hint}.",
            name="AML_IDENTITY_LOOPBACK_ONLY",
        )
