"""Datastore URIs: every form a job is handed, parsed into what it names and printed back unchanged.

Accepted forms (DESIGN section 4)::

    azureml://subscriptions/<sub>/resourcegroups/<rg>/workspaces/<ws>/datastores/<name>/paths/<path>
    azureml://datastores/<name>/paths/<path>          (workspace from AZUREML_ARM_* in a job)
    wasbs://<container>@<account>.blob.<suffix>/<path>   (and wasb://)
    abfss://<filesystem>@<account>.dfs.<suffix>/<path>   (and abfs://)
    https://<account>.blob.<suffix>/<container>/<path>   (and .dfs.)

``<suffix>`` is the cloud's storage suffix and is kept as given: ``core.windows.net`` (public),
``core.chinacloudapi.cn``, ``core.usgovcloudapi.net``... A path ending in ``/`` names a folder (a prefix).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import quote, unquote

from aml_identity.errors import ConfigurationError

__all__ = ["DatastoreUri", "UriScheme"]

UriScheme = Literal["azureml", "wasbs", "wasb", "abfss", "abfs", "https"]

# The forms, as shown in every parse error so that the fix is on the screen.
ACCEPTED_FORMS = (
    "azureml://subscriptions/<sub>/resourcegroups/<rg>/workspaces/<ws>/datastores/<name>/paths/<path>",
    "azureml://datastores/<name>/paths/<path>",
    "wasbs://<container>@<account>.blob.core.windows.net/<path>",
    "abfss://<filesystem>@<account>.dfs.core.windows.net/<path>",
    "https://<account>.blob.core.windows.net/<container>/<path>",
)

# Storage account names: 3-24 lowercase letters and digits (Azure's rule).
_ACCOUNT = r"[a-z0-9]{3,24}"
# Container names: 3-63 lowercase letters, digits and single hyphens, or the special $root / $web.
_CONTAINER_RE = re.compile(r"^(?:[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]|\$root|\$web)$")
# A cloud's storage DNS suffix, e.g. core.windows.net or core.chinacloudapi.cn.
_SUFFIX = r"[a-z0-9-]+(?:\.[a-z0-9-]+)+"
_HOST_RE = re.compile(rf"^(?P<account>{_ACCOUNT})\.(?P<service>blob|dfs)\.(?P<suffix>{_SUFFIX})$")
_AZUREML_RE = re.compile(
    r"^azureml://"
    r"(?:subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/workspaces/(?P<ws>[^/]+)/)?"
    r"datastores/(?P<name>[^/]+)/paths(?:/(?P<path>.*))?$",
    re.IGNORECASE,
)
_STORAGE_RE = re.compile(
    r"^(?P<scheme>wasbs|wasb|abfss|abfs)://(?P<container>[^@/]+)@(?P<host>[^/]+)(?:/(?P<path>.*))?$"
)
_HTTPS_RE = re.compile(r"^https://(?P<host>[^/]+)(?:/(?P<container>[^/]*)(?:/(?P<path>.*))?)?$")
# Which host service each storage scheme addresses.
_SCHEME_SERVICE = {"wasbs": "blob", "wasb": "blob", "abfss": "dfs", "abfs": "dfs"}


def _fail(value: str, why: str) -> ConfigurationError:
    forms = "\n  ".join(ACCEPTED_FORMS)
    return ConfigurationError(
        f"{value!r} is not a datastore URI ({why}). Use one of:\n  {forms}\n"
        "(sovereign clouds: replace core.windows.net with the cloud's storage suffix).",
        name="uri",
    )


def _check_path(value: str, path: str) -> str:
    if "\x00" in path:
        raise _fail(value, "the path contains a NUL character")
    return path


@dataclass(frozen=True)
class DatastoreUri:
    """A parsed datastore URI.

    Build one with :meth:`parse`; ``str(uri)`` gives the URI back (``parse(str(uri)) == uri``, and the text
    is unchanged for the canonical spellings shown in the module docstring).

    Attributes:
        scheme: The form it was written in.
        path: The blob path inside the container (no leading ``/``); ``""`` is the whole container and a
            trailing ``/`` marks a folder.
        account: The storage account (``None`` for ``azureml://`` URIs until resolved).
        container: The container or ADLS Gen2 filesystem (``None`` for ``azureml://`` URIs).
        endpoint_suffix: The storage DNS suffix, e.g. ``core.windows.net`` (``None`` for ``azureml://``).
        service: The host service named in the URI, ``"blob"`` or ``"dfs"`` (``None`` for ``azureml://``).
        datastore: The datastore name of an ``azureml://`` URI.
        subscription_id: The subscription of the long ``azureml://`` form.
        resource_group: The resource group of the long ``azureml://`` form.
        workspace_name: The workspace of the long ``azureml://`` form.
    """

    scheme: UriScheme
    path: str
    account: str | None = None
    container: str | None = None
    endpoint_suffix: str | None = None
    service: Literal["blob", "dfs"] | None = None
    datastore: str | None = None
    subscription_id: str | None = None
    resource_group: str | None = None
    workspace_name: str | None = None

    @classmethod
    def parse(cls, value: str | DatastoreUri) -> DatastoreUri:
        """Parse a datastore URI.

        Args:
            value: The URI (a :class:`DatastoreUri` is returned unchanged).

        Returns:
            What the URI names.

        Raises:
            ConfigurationError: ``value`` is not one of the accepted forms; the message lists them.
        """
        if isinstance(value, DatastoreUri):
            return value
        if not isinstance(value, str):
            raise _fail(repr(value), f"expected a string, got {type(value).__name__}")
        text = value.strip()
        lowered = text[: text.find("://") + 3].lower() if "://" in text else ""
        if lowered == "azureml://":
            return cls._parse_azureml(value, text)
        if lowered in ("wasbs://", "wasb://", "abfss://", "abfs://"):
            return cls._parse_storage(value, lowered + text[len(lowered) :])
        if lowered == "https://":
            return cls._parse_https(value, "https://" + text[len(lowered) :])
        if lowered == "http://":
            raise _fail(value, "plain http:// is refused: storage tokens are only sent over HTTPS")
        raise _fail(value, "unknown scheme")

    @classmethod
    def _parse_azureml(cls, value: str, text: str) -> DatastoreUri:
        match = _AZUREML_RE.fullmatch(text)
        if not match:
            raise _fail(value, "an azureml:// URI needs datastores/<name>/paths/<path>")
        sub, rg, ws = match["sub"], match["rg"], match["ws"]
        return cls(
            scheme="azureml",
            path=_check_path(value, match["path"] or ""),
            datastore=match["name"],
            subscription_id=sub,
            resource_group=rg,
            workspace_name=ws,
        )

    @classmethod
    def _parse_storage(cls, value: str, text: str) -> DatastoreUri:
        match = _STORAGE_RE.fullmatch(text)
        if not match:
            raise _fail(value, "expected <container>@<account>.<service>.<suffix>")
        scheme = match["scheme"]
        host = _HOST_RE.fullmatch(match["host"].lower())
        if not host:
            raise _fail(value, f"{match['host']!r} is not <account>.blob.<suffix> or <account>.dfs.<suffix>")
        if host["service"] != _SCHEME_SERVICE[scheme]:
            wanted = _SCHEME_SERVICE[scheme]
            raise _fail(
                value, f"{scheme}:// addresses the {wanted} endpoint, so the host must be <account>.{wanted}.<suffix>"
            )
        container = match["container"]
        if not _CONTAINER_RE.fullmatch(container):
            raise _fail(value, f"{container!r} is not a valid container name (3-63 lowercase letters, digits, hyphens)")
        return cls(
            scheme=scheme,  # type: ignore[arg-type]  # the regex admits only the four storage schemes
            path=_check_path(value, match["path"] or ""),
            account=host["account"],
            container=container,
            endpoint_suffix=host["suffix"],
            service=host["service"],  # type: ignore[arg-type]
        )

    @classmethod
    def _parse_https(cls, value: str, text: str) -> DatastoreUri:
        match = _HTTPS_RE.fullmatch(text.split("?", 1)[0].split("#", 1)[0])
        if not match:
            raise _fail(value, "expected https://<account>.blob.<suffix>/<container>/<path>")
        host = _HOST_RE.fullmatch(match["host"].lower())
        if not host:
            raise _fail(
                value,
                f"{match['host']!r} is not <account>.blob.<suffix>; for an emulator or a private endpoint keep the "
                "public URI and map the account with AML_IDENTITY_BLOB_ENDPOINTS",
            )
        container = match["container"]
        if not container or not _CONTAINER_RE.fullmatch(container):
            raise _fail(value, "the URL names no valid container after the host")
        if "?" in text:
            raise _fail(value, "a query string (SAS token?) is not accepted: the job identity authenticates")
        return cls(
            scheme="https",
            path=_check_path(value, unquote(match["path"] or "")),
            account=host["account"],
            container=container,
            endpoint_suffix=host["suffix"],
            service=host["service"],  # type: ignore[arg-type]
        )

    @property
    def is_named(self) -> bool:
        """Whether the URI names an Azure ML datastore that must be resolved to an account and container."""
        return self.scheme == "azureml"

    @property
    def is_folder(self) -> bool:
        """Whether the path names a folder explicitly (empty, or ending in ``/``)."""
        return self.path == "" or self.path.endswith("/")

    def default_blob_endpoint(self) -> str:
        """Return the public blob endpoint of the account, ``https://<account>.blob.<suffix>``.

        Raises:
            ConfigurationError: The URI is an ``azureml://`` one, which names no account until resolved.
        """
        if self.account is None or self.endpoint_suffix is None:
            raise ConfigurationError(
                f"{self} names a datastore, not a storage account: resolve it first (aml_identity.datastore.resolve).",
                name="uri",
            )
        return f"https://{self.account}.blob.{self.endpoint_suffix}"

    def joinpath(self, relative: str) -> DatastoreUri:
        """Return the URI of ``relative`` below this URI's path (treated as a folder)."""
        base = self.path if self.is_folder else self.path + "/"
        return replace(self, path=base + relative.lstrip("/"))

    def __str__(self) -> str:
        """Return the URI in the form it was parsed from."""
        if self.scheme == "azureml":
            workspace = ""
            if self.subscription_id is not None:
                workspace = (
                    f"subscriptions/{self.subscription_id}/resourcegroups/{self.resource_group}/"
                    f"workspaces/{self.workspace_name}/"
                )
            return f"azureml://{workspace}datastores/{self.datastore}/paths/{self.path}"
        host = f"{self.account}.{self.service}.{self.endpoint_suffix}"
        if self.scheme == "https":
            return f"https://{host}/{self.container}/{quote(self.path, safe='/~!$&()*+,;=:@')}"
        return f"{self.scheme}://{self.container}@{host}/{self.path}"
