"""``aml-identity doctor``: check, from inside a job, everything the job's identity relies on.

Each check is ``pass``, ``warn`` or ``fail`` with a one-line ``detail`` and, when it is not ``pass``, a ``fix``
that says what to do. The checks run in order and a failed one skips the checks that need it (a token needs an
identity; a datastore needs a token). Nothing here prints or returns a token or a secret: only the token's
decoded identity claims. With ``AML_IDENTITY_LOOPBACK_ONLY`` set nothing is sent, nor connected to, off
loopback. Only the runtime dependencies are imported (doctor must work on the base install).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from aml_identity._claims import identity_claims
from aml_identity._environment import JobEnvironment, check_outbound_url
from aml_identity.errors import (
    AmlIdentityError,
    DataAccessDeniedError,
    IdentityNotConfiguredError,
    IdentityNotFoundError,
)

__all__ = ["Check", "Status", "report", "run_checks"]

Status = Literal["pass", "warn", "fail"]

# doctor's token is for Azure Resource Manager, as whoami's: every identity can get one, roles or not.
DOCTOR_RESOURCE = "https://management.azure.com"
# Seconds to wait for a TCP connection to the identity endpoint (a local endpoint answers in milliseconds;
# IMDS on a VM in well under a second; 2 s tells "unreachable" apart without stalling the report).
ENDPOINT_CONNECT_TIMEOUT_S = 2.0
# Entra ID and ARM accept tokens up to 5 minutes outside their validity window; beyond that a skewed clock
# makes fresh tokens look expired or not yet valid. Half of it is worth a warning.
MAX_CLOCK_SKEW_S = 300
WARN_CLOCK_SKEW_S = 60
# A token closer than this to expiry is worth a warning (the cache refreshes well before; seeing it means the
# refresh keeps failing).
WARN_EXPIRES_WITHIN_S = 300
# The variables that decide the identity source and which identity is used (DESIGN §2); their values are shown
# except for the secrets, whose presence only is reported.
_SOURCE_VARIABLES = (
    "MSI_ENDPOINT", "MSI_SECRET", "DEFAULT_IDENTITY_CLIENT_ID", "IDENTITY_ENDPOINT", "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "AZURE_POD_IDENTITY_AUTHORITY_HOST", "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_CLIENT_ID", "AZURE_TENANT_ID",
)  # fmt: skip
_SECRET_VARIABLES = frozenset({"MSI_SECRET", "IDENTITY_HEADER"})
_JOB_VARIABLES = (
    "MSI_ENDPOINT",
    "IDENTITY_ENDPOINT",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
)
_RUN_IN_JOB = (
    "Run `aml-identity doctor` inside the Azure ML job (add it to the job's command), or offline in the sandbox: "
    "`aml-identity sandbox -- aml-identity doctor`."
)


@dataclass(frozen=True)
class Check:
    """One check's outcome.

    Attributes:
        name: What was checked (``identity source``, ``endpoint``, ``token``...).
        status: ``pass``, ``warn`` or ``fail``.
        detail: What was found.
        fix: What to do, when the status is not ``pass`` (empty otherwise).
    """

    name: str
    status: Status
    detail: str
    fix: str = ""


def report(checks: list[Check]) -> dict[str, Any]:
    """The ``--json`` document: ``{"ok": bool, "checks": [{"name", "status", "detail", "fix"}]}``."""
    return {"ok": all(c.status != "fail" for c in checks), "checks": [asdict(c) for c in checks]}


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc).isoformat(timespec="seconds")


def _fix_for(exc: AmlIdentityError) -> str:
    if isinstance(exc, IdentityNotConfiguredError):
        return ("Assign a managed identity to the compute cluster (`aml-identity cluster add-identity`, or the "
                "cluster's Identity tab in Azure ML studio), then resubmit the job.")  # fmt: skip
    if isinstance(exc, IdentityNotFoundError):
        return ("Use the identity's client (application) id, and check the identity is assigned to this cluster "
                "(`aml-identity cluster show NAME`).")  # fmt: skip
    return "See the detail: it names the cause and the fix."


class _Doctor:
    def __init__(self, environ: Mapping[str, str] | None, clock: Callable[[], float]) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.clock = clock
        self.checks: list[Check] = []

    def add(self, name: str, status: Status, detail: str, fix: str = "") -> Status:
        self.checks.append(Check(name, status, detail, "" if status == "pass" else fix))
        return status

    def run(self, datastore: str | None) -> list[Check]:
        try:
            env = JobEnvironment.from_environ(self.environ)
        except AmlIdentityError as exc:
            self.add("environment", "fail", str(exc), "Fix the variable named in the detail.")
            return self.checks
        identity = self.identity_source(env)
        if identity is None:
            return self.checks
        if self.endpoint(identity, env) == "fail":
            return self.checks
        credential, cached = self.node_cache(identity, env)
        if credential is None:
            return self.checks
        if not self.token(identity, credential, cached) or datastore is None:
            return self.checks
        self.datastore(datastore, credential, env)
        return self.checks

    # --- identity and endpoint -------------------------------------------------------------------------------

    def identity_source(self, env: JobEnvironment) -> Any:
        from aml_identity.identity import default_identity  # noqa: PLC0415 - after the environment check

        shown = []
        for name in _SOURCE_VARIABLES:
            value = self.environ.get(name)
            if value is not None:
                shown.append(f"{name}=(set)" if name in _SECRET_VARIABLES else f"{name}={value}")
        decided = ", ".join(shown) or "none of " + ", ".join(_SOURCE_VARIABLES[:4]) + "... is set"
        rank = f"; LOCAL_RANK {env.local_rank}" if env.local_rank is not None else ""
        in_job = any(self.environ.get(name) for name in _JOB_VARIABLES)
        try:
            identity = default_identity(environ=env)
        except AmlIdentityError as exc:
            if not in_job:
                self.add("identity source", "fail", f"not in an Azure ML job ({decided}): {exc}", _RUN_IN_JOB)
            else:
                self.add("identity source", "fail", f"{exc} (variables: {decided})", _fix_for(exc))
            return None
        detail = (f"{identity.source}: {identity.describe()}; selected by {identity.selected_by}; decided by "
                  f"{decided}{rank}")  # fmt: skip
        if identity.source == "imds" and not in_job:
            if env.loopback_only:
                self.add("identity source", "fail", f"not in an Azure ML job: {detail}", _RUN_IN_JOB)
                return None
            self.add("identity source", "warn", f"no job environment, trying the VM's IMDS: {detail}", _RUN_IN_JOB)
        else:
            self.add("identity source", "pass", detail)
        return identity

    def endpoint(self, identity: Any, env: JobEnvironment) -> Status:
        url = identity.endpoint
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            check_outbound_url(url, env, what="identity endpoint")
        except AmlIdentityError as exc:
            return self.add("endpoint", "fail", str(exc), _RUN_IN_JOB)
        try:
            with socket.create_connection((host, port), timeout=ENDPOINT_CONNECT_TIMEOUT_S):
                pass
        except OSError as exc:
            fix = (_RUN_IN_JOB if identity.source == "imds" else
                   f"The endpoint in the job's environment does not answer: run doctor in the job's own container "
                   f"(not an SSH session or a copied environment), and check nothing unset or changed "
                   f"{'MSI_ENDPOINT' if identity.source == 'azureml' else 'the endpoint variable'}.")  # fmt: skip
            return self.add("endpoint", "fail", f"cannot connect to {host}:{port} ({url}): {exc.strerror or exc}",
                            fix)  # fmt: skip
        return self.add("endpoint", "pass", f"{url} accepts connections")

    # --- node cache and token --------------------------------------------------------------------------------

    def node_cache(self, identity: Any, env: JobEnvironment) -> tuple[Any, Any]:
        from aml_identity._tokens import NodeCache, UnsafeCacheError, cache_key, default_cache_dir  # noqa: PLC0415
        from aml_identity.credential import JobCredential  # noqa: PLC0415

        directory = default_cache_dir(env.cache_dir, env.xdg_runtime_dir)
        key = cache_key(identity.source, identity.endpoint, identity.selector, DOCTOR_RESOURCE, "")
        cached = None
        try:
            cache = NodeCache.open(directory)
            cached = cache.read(key)
        except UnsafeCacheError as exc:
            self.add("node cache", "warn", f"{exc.message}: tokens are cached per process only, so every process "
                     "asks the endpoint itself", f"Remove {directory} or set AML_IDENTITY_CACHE_DIR to a private "
                     "directory (mode 0700, owned by you).")  # fmt: skip
        except OSError as exc:
            self.add("node cache", "warn", f"cannot create {directory}: {exc.strerror}",
                     "Set AML_IDENTITY_CACHE_DIR to a writable private directory.")  # fmt: skip
        else:
            st = directory.stat()
            owner = "you" if st.st_uid == os.getuid() else f"uid {st.st_uid}"
            usable = cached is not None and self.clock() < cached.expires_on
            state = (f"hit (a token for {DOCTOR_RESOURCE} valid until {_iso(cached.expires_on)})" if usable and cached
                     else f"miss (no valid token for {DOCTOR_RESOURCE} yet: this check fetches one)")  # fmt: skip
            self.add("node cache", "pass", f"{directory} (owned by {owner}, mode {stat.S_IMODE(st.st_mode):04o}): "
                     f"{state}")  # fmt: skip
            if not usable:
                cached = None
        try:
            credential = JobCredential(identity, environ=self.environ)
        except AmlIdentityError as exc:
            self.add("token", "fail", str(exc), _fix_for(exc))
            return None, None
        return credential, cached

    def token(self, identity: Any, credential: Any, cached: Any) -> bool:
        requested = self.clock()
        try:
            info = credential.get_token_info(DOCTOR_RESOURCE)
        except AmlIdentityError as exc:
            self.add("token", "fail", str(exc), _fix_for(exc))
            return False
        received = self.clock()
        claims = identity_claims(info.token)
        shown = ", ".join(f"{name}={claims.get(name, '(absent)')}" for name in ("oid", "appid", "tid", "xms_mirid"))
        left = info.expires_on - received
        detail = f"for {DOCTOR_RESOURCE}: {shown}; expires {_iso(info.expires_on)} (in {int(left)} s)"
        appid = str(claims.get("appid") or claims.get("azp") or "")
        if identity.client_id and appid and appid.lower() != identity.client_id.lower():
            fix = (
                "The endpoint issued a token for another identity: check DEFAULT_IDENTITY_CLIENT_ID is the client "
                "id of an identity assigned to this cluster."
            )
            self.add("token", "fail", f"{detail}; it belongs to {appid}, not the selected identity "
                     f"{identity.client_id}", fix)  # fmt: skip
            return False
        if left < WARN_EXPIRES_WITHIN_S:
            self.add("token", "warn", f"{detail}: close to expiry", "Token refreshes are failing; run with -v to see "
                     "why, and check the endpoint.")  # fmt: skip
        else:
            self.add("token", "pass", detail)
        self.clock_skew(claims, cached, requested, received)
        return True

    def clock_skew(self, claims: Mapping[str, Any], cached: Any, requested: float, received: float) -> None:
        iat = claims.get("iat")
        if not isinstance(iat, int | float):
            fix = "Nothing to do unless tokens are refused as expired; then check the machine's time (NTP)."
            self.add("clock", "warn", "the token has no iat claim; the clock skew cannot be measured", fix)
            return
        # A token from the cache was issued when it was fetched; a fresh one between request and answer.
        local = float(cached.fetched_at) if cached is not None else (requested + received) / 2
        skew = local - float(iat)
        detail = f"this machine's clock is {abs(skew):.0f} s {'ahead of' if skew >= 0 else 'behind'} the issuer's (iat)"
        fix = "Synchronise the clock (NTP: `timedatectl set-ntp true`, or chrony); tokens are judged on time."
        if abs(skew) > MAX_CLOCK_SKEW_S:
            self.add("clock", "fail", f"{detail}: beyond the {MAX_CLOCK_SKEW_S} s services accept", fix)
        elif abs(skew) > WARN_CLOCK_SKEW_S:
            self.add("clock", "warn", detail, fix)
        else:
            self.add("clock", "pass", detail)

    # --- datastore -------------------------------------------------------------------------------------------

    def datastore(self, uri: str, credential: Any, env: JobEnvironment) -> None:
        from aml_identity.datastore._errors import convert_storage_error  # noqa: PLC0415 - with --datastore only
        from aml_identity.datastore._rest import BearerToken, BlobRestClient, StorageHttpError  # noqa: PLC0415
        from aml_identity.datastore.resolve import resolve  # noqa: PLC0415

        try:
            location = resolve(uri, credential=credential, environ=self.environ)
        except AmlIdentityError as exc:
            self.add("datastore resolve", "fail", str(exc), "Check the URI (the datastore's name) and, for an "
                     "azureml:// name, that the identity may read the workspace's datastores (Reader or AzureML "
                     "Data Scientist on the workspace).")  # fmt: skip
            return
        where = f"account {location.account}, container {location.container}, path {location.path or '/'!r}"
        self.add("datastore resolve", "pass", f"{uri} -> {where} at {location.endpoint}")
        token = BearerToken(credential)
        try:
            check_outbound_url(location.endpoint, env, what="blob endpoint")
            context = ssl.create_default_context(cafile=env.ca_bundle) if env.ca_bundle else None
            client = BlobRestClient(location.endpoint, token, ssl_context=context)
        except (AmlIdentityError, ValueError) as exc:
            self.add("datastore list", "fail", str(exc), "Set AML_IDENTITY_BLOB_ENDPOINTS to the account's https "
                     "endpoint, or use the account's public name.")  # fmt: skip
            return
        operation: Literal["list", "read"] = "list"
        try:
            items, _ = client.list_page(location.container, location.path, None)
            blobs = [item for item in items if not item.is_directory_marker]
            self.add("datastore list", "pass", f"{len(blobs)} blob(s) in the first page under {location.path or '/'}")
            if not blobs:
                self.add("datastore read", "warn", "nothing to read: the path holds no blob",
                         "Check the path, or upload data there first.")  # fmt: skip
                return
            first = blobs[0]
            operation = "read"
            length = min(first.size, 1) if first.size else 0
            if length:
                client.get_into(location.container, first.name, offset=0, length=length, etag=None,
                                sink=lambda response: response.read())  # fmt: skip
            self.add("datastore read", "pass", f"read {first.name} ({first.size} bytes)")
        except StorageHttpError as exc:
            error = convert_storage_error(
                exc, account=location.account, container=location.container, operation=operation, token=token
            )
            fix = "See the detail."
            if isinstance(error, DataAccessDeniedError):
                fix = (f"Grant the identity ({error.identity}) the '{error.role}' role on storage account "
                       f"{error.account!r} (or its container {location.container!r}): az role assignment create "
                       f"--assignee-object-id {error.object_id or '<object id>'} --assignee-principal-type "
                       f"ServicePrincipal --role \"{error.role}\" --scope <the account's resource id>.")  # fmt: skip
            self.add(f"datastore {operation}", "fail", str(error), fix)
        except AmlIdentityError as exc:
            self.add(f"datastore {operation}", "fail", str(exc), "See the detail.")
        finally:
            client.close()


def run_checks(
    *, datastore: str | None = None, environ: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time
) -> list[Check]:
    """Run doctor's checks.

    Args:
        datastore: A datastore URI to resolve, list and read the first blob of.
        environ: The environment to check (``os.environ`` when omitted).
        clock: The current time in epoch seconds (tests inject one).

    Returns:
        The checks, in order.
    """
    return _Doctor(environ, clock).run(datastore)


def print_text(checks: list[Check], write: Callable[[str], Any]) -> None:
    """Print the checks for a terminal: one line each, the fix below a check that is not a pass."""
    width = max(len(c.name) for c in checks)
    for c in checks:
        write(f"{c.status.upper():<4}  {c.name:<{width}}  {c.detail}\n")
        if c.fix:
            write(f"{'':<4}  {'':<{width}}  fix: {c.fix}\n")
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    write(f"{'ok' if not failed else 'problems found'}: {failed} failed, {warned} warning(s)\n")
