"""Resolve a datastore URI to the storage account, container and endpoint it stands for.

Storage URIs (``wasbs://``, ``abfss://``, ``https://``) name their account and container directly. Named
datastores (``azureml://...datastores/<name>/...``) are looked up once per process through the workspace's
datastore API (``Datastores_Get``, api-version 2025-12-01) with the job identity, through
the package's one ARM client (:mod:`aml_identity._arm`: ``azure-mgmt-core``'s pipeline, retries,
challenge authentication).

The blob endpoint is ``https://<account>.blob.<suffix>`` unless ``AML_IDENTITY_BLOB_ENDPOINTS`` maps the
account elsewhere (an emulator, a private endpoint).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aml_identity._environment import JobEnvironment
from aml_identity._fork import after_fork_in_child
from aml_identity._job import job_credential
from aml_identity.datastore.uri import DatastoreUri
from aml_identity.errors import ConfigurationError, DatastoreError, redact

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = ["DATASTORES_API_VERSION", "BlobLocation", "clear_cache", "resolve"]

_log = logging.getLogger(__name__)

# The workspace datastore API version (mfe.json, the newest stable MachineLearningServices version).
DATASTORES_API_VERSION = "2025-12-01"
# The public cloud's storage suffix: what a datastore without an explicit endpoint uses.
DEFAULT_ENDPOINT_SUFFIX = "core.windows.net"
# Datastore types that are blob containers underneath (the others - file shares, Data Lake Gen1, OneLake -
# are not blob storage and cannot be read with the blob API).
_BLOB_TYPES = {"AzureBlob": "containerName", "AzureDataLakeGen2": "filesystem"}
# Retries of a datastore lookup (azure-core's RetryPolicy default): one GET per datastore per job, made
# before any data moves, so riding out a longer ARM hiccup is worth more than failing fast.
LOOKUP_RETRY_TOTAL = 10

_cache_lock = threading.Lock()
_cache: dict[tuple[str, str, str, str, str], tuple[str, str, str]] = {}


@after_fork_in_child
def _reset_cache_lock() -> None:
    global _cache_lock  # noqa: PLW0603 - a forked child must not inherit a lock held by a parent thread
    _cache_lock = threading.Lock()


@dataclass(frozen=True)
class BlobLocation:
    """Where a datastore URI points in blob storage.

    Attributes:
        account: The storage account name.
        container: The container (an ADLS Gen2 filesystem is a container to the blob API).
        path: The blob path or prefix inside the container.
        endpoint: The blob endpoint URL to send requests to (public, or the configured override).
        uri: The URI this was resolved from.
    """

    account: str
    container: str
    path: str
    endpoint: str
    uri: DatastoreUri

    @property
    def is_folder(self) -> bool:
        """Whether the path names a folder explicitly (empty or ending in ``/``)."""
        return self.path == "" or self.path.endswith("/")


def clear_cache() -> None:
    """Forget every datastore resolved so far in this process."""
    with _cache_lock:
        _cache.clear()


def blob_endpoint(account: str, suffix: str, env: JobEnvironment) -> str:
    """Return the blob endpoint of ``account``: the configured override or the public URL."""
    override = env.blob_endpoints.get(account)
    return override or f"https://{account}.blob.{suffix}"


def resolve(
    uri: str | DatastoreUri,
    *,
    credential: TokenCredential | None = None,
    environ: Mapping[str, str] | None = None,
) -> BlobLocation:
    """Resolve ``uri`` to its storage account, container, path and blob endpoint.

    Args:
        uri: A datastore URI in any accepted form.
        credential: The identity used to read a named datastore's definition; the job's default
            credential when omitted (only needed for ``azureml://`` URIs).
        environ: The environment to read (``os.environ`` when omitted).

    Returns:
        The location.

    Raises:
        ConfigurationError: The URI is malformed, or a short ``azureml://`` URI is used outside a job
            (``AZUREML_ARM_*`` missing).
        DatastoreError: The datastore does not exist, is not blob storage, or could not be read.
    """
    parsed = DatastoreUri.parse(uri)
    env = JobEnvironment.from_environ(environ)
    if not parsed.is_named:
        assert parsed.account is not None  # noqa: S101 - parse guarantees these for storage URIs
        assert parsed.container is not None  # noqa: S101
        assert parsed.endpoint_suffix is not None  # noqa: S101
        endpoint = blob_endpoint(parsed.account, parsed.endpoint_suffix, env)
        return BlobLocation(parsed.account, parsed.container, parsed.path, endpoint, parsed)
    sub = parsed.subscription_id or env.subscription_id
    rg = parsed.resource_group or env.resource_group
    ws = parsed.workspace_name or env.workspace_name
    if not (sub and rg and ws):
        raise ConfigurationError(
            f"{parsed} names a datastore without its workspace, and AZUREML_ARM_SUBSCRIPTION, "
            "AZUREML_ARM_RESOURCEGROUP and AZUREML_ARM_WORKSPACE_NAME are not all set (Azure ML sets them in a "
            "job). Outside a job use the long form azureml://subscriptions/<sub>/resourcegroups/<rg>/"
            "workspaces/<ws>/datastores/<name>/paths/<path>.",
            name="uri",
        )
    assert parsed.datastore is not None  # noqa: S101 - the azureml form always has a name
    key = (env.arm_endpoint, sub.lower(), rg.lower(), ws.lower(), parsed.datastore.lower())
    with _cache_lock:
        hit = _cache.get(key)
    if hit is None:
        hit = _fetch_datastore(env, sub, rg, ws, parsed.datastore, credential or job_credential(environ))
        with _cache_lock:
            _cache[key] = hit
    account, container, suffix = hit
    return BlobLocation(account, container, parsed.path, blob_endpoint(account, suffix, env), parsed)


def arm_scope(env: JobEnvironment) -> str:
    """Return the token scope for the ARM endpoint in use (the one rule, :func:`aml_identity._arm.arm_scope`)."""
    from aml_identity._arm import arm_scope as scope_of  # noqa: PLC0415 - keep `import aml_identity` light

    return scope_of(env.arm_endpoint)


def _fetch_datastore(  # noqa: PLR0917 - private, one caller
    env: JobEnvironment,
    sub: str,
    rg: str,
    ws: str,
    name: str,
    credential: TokenCredential,
) -> tuple[str, str, str]:
    from azure.core.exceptions import HttpResponseError  # noqa: PLC0415 - keep `import aml_identity` light

    from aml_identity._arm import ArmClient  # noqa: PLC0415

    path = (
        f"/subscriptions/{quote(sub, safe='')}/resourceGroups/{quote(rg, safe='')}"
        f"/providers/Microsoft.MachineLearningServices/workspaces/{quote(ws, safe='')}"
        f"/datastores/{quote(name, safe='')}"
    )
    where = f"datastore {name!r} of workspace {ws!r} (resource group {rg!r}, subscription {sub})"
    try:
        with ArmClient(credential, env=env, retry_total=LOOKUP_RETRY_TOTAL) as client:
            response = client.send("GET", path, api_version=DATASTORES_API_VERSION)
    except HttpResponseError as exc:
        raise DatastoreError(f"Could not read {where} from {env.arm_endpoint}: {redact(str(exc))}") from None
    status = response.status
    if status == 404:  # noqa: PLR2004 - HTTP status
        raise DatastoreError(
            f"The {where} does not exist ({env.arm_endpoint} answered 404). Check the name in the URI "
            "against the workspace's datastores (Azure ML studio > Data > Datastores)."
        )
    if status == 401:  # noqa: PLR2004 - HTTP status: ARM did not accept the token at all (a role is not the issue)
        raise DatastoreError(
            f"Azure Resource Manager ({env.arm_endpoint}) did not accept the job identity's token while reading the "
            f"{where} (HTTP 401 {_arm_error_code(response)}): the token is expired, not yet valid, or for another "
            "audience or tenant. This is an authentication problem, not a missing role: check the machine's clock, "
            "that AML_IDENTITY_ARM_ENDPOINT (if set) is the cloud the identity belongs to, and run inside the job "
            "(a token copied from elsewhere expires); `aml-identity doctor` shows the token's claims and expiry."
        )
    if status == 403:  # noqa: PLR2004 - HTTP status
        raise DatastoreError(
            f"The job identity may not read the {where} (HTTP {status}). Grant it a role that includes "
            "Microsoft.MachineLearningServices/workspaces/datastores/read on the workspace, for example "
            "'AzureML Data Scientist' or 'Reader', or use the storage URI (wasbs://, abfss://, https://) "
            "instead of the datastore name."
        )
    text = response.pipeline_response.http_response.text()
    if status != 200:  # noqa: PLR2004 - HTTP status
        raise DatastoreError(f"Could not read the {where}: {env.arm_endpoint} answered HTTP {status}: {redact(text)}")
    if response.body is None:
        raise DatastoreError(f"The answer for the {where} is not JSON: {redact(text)}")
    return _location_from_body(response.body, where)


def _arm_error_code(response: Any) -> str:
    """ARM's error code of a failed response (``ExpiredAuthenticationToken``...), or ``"(no code)"``."""
    body = response.body
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return str(code) if code else "(no code)"


def _location_from_body(body: Any, where: str) -> tuple[str, str, str]:
    """Return (account, container, suffix) from a ``DatastoreResource`` body (mfe.json)."""
    props = body.get("properties") if isinstance(body, dict) else None
    if not isinstance(props, dict):
        raise DatastoreError(f"The answer for the {where} has no 'properties' object.")
    kind = props.get("datastoreType")
    if kind not in _BLOB_TYPES:
        raise DatastoreError(
            f"The {where} is of type {kind!r}; aml-identity reads blob storage datastores only "
            f"({', '.join(_BLOB_TYPES)})."
        )
    account, container = props.get("accountName"), props.get(_BLOB_TYPES[kind])
    if not isinstance(account, str) or not account or not isinstance(container, str) or not container:
        raise DatastoreError(f"The {where} does not name its storage account and container.")
    suffix = props.get("endpoint") or DEFAULT_ENDPOINT_SUFFIX
    _log.info("Resolved %s to account %s, container %s (%s)", where, account, container, suffix)
    return account, container, str(suffix)
