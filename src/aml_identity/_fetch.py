"""Fetch one token from the identity endpoint: msal speaks the protocol, this module adds what it lacks.

``msal.ManagedIdentityClient`` builds each platform's request (Azure ML's ``clientid`` and ``secret``,
IMDS's ``Metadata`` header, App Service's ``X-IDENTITY-HEADER``, Arc's challenge, Service Fabric's pinned
certificate). It leaves retries to the caller, lets ``JSONDecodeError`` escape on a ``text/plain`` body,
reads expiry with the wall clock and drops a server's ``refresh_in``. So the ``http_client`` handed to msal
here (one :class:`_Exchange` per token request) retries the way Microsoft advises, turns every failure into
an :mod:`aml_identity.errors` type that names the identity, endpoint, status and fix, validates and
normalises a 200 body before msal parses it, and keeps the raw expiry fields for the cache's refresh policy.

msal reads the identity endpoint variables from ``os.environ`` when it sends; the credential resolves the
identity from its own (possibly injected) environment, so the two are compared before each request.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import msal
import requests

# The errors with azure-identity bases are named through the module (errors.TokenRequestError): loading
# azure.identity (~45 ms of CPU) only when one is raised keeps it off the first fetch, which a node's other
# ranks are waiting for.
from aml_identity import errors
from aml_identity._endpoint_response import MAX_RESPONSE_BYTES, OversizedError, Received, parse_epoch, read_capped
from aml_identity._environment import MSAL_ENVIRONMENT, JobEnvironment, check_outbound_url
from aml_identity._fork import after_fork_in_child
from aml_identity._retry import RETRYABLE_STATUS, RetryPolicy, call_with_retries
from aml_identity._tokens import CachedToken, new_token
from aml_identity.errors import AmlIdentityError, ConfigurationError, redact
from aml_identity.identity import SOURCE_NAMES, ManagedIdentity

__all__ = ["MAX_RESPONSE_BYTES", "Fetcher", "MsalFetcher", "WorkloadIdentityFetcher", "make_fetcher"]

_log = logging.getLogger("aml_identity.fetch")


class Fetcher:
    """Fetches one token for a resource from the identity endpoint (no caching)."""

    identity: ManagedIdentity

    def fetch(self, resource: str, *, claims: str | None = None) -> CachedToken:
        """Fetch a new token.

        Args:
            resource: The resource (audience), already normalised.
            claims: A claims challenge from a resource, if any.

        Returns:
            The token and its refresh schedule.
        """
        raise NotImplementedError

    def after_fork(self) -> None:
        """Drop connections inherited from a parent process."""


class _Session:
    """One ``requests.Session`` per process for the identity endpoint, recreated in a forked child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session: requests.Session | None = None
        after_fork_in_child(self._forget)

    def _forget(self) -> None:
        # The child must not reuse the parent's sockets; dropping the reference closes only the child's copies.
        self._lock = threading.Lock()
        self._session = None

    def get(self, ca_bundle: str | None) -> requests.Session:
        with self._lock:
            if self._session is None:
                session = requests.Session()
                # No proxies or .netrc from the environment: the endpoint is on this machine (or link-local IMDS),
                # and a corporate HTTP_PROXY must never see the identity secret.
                session.trust_env = False
                session.verify = ca_bundle or True
                self._session = session
            return self._session


_SESSION = _Session()


@dataclass
class _Answer:
    """What msal sees of a response (msal only reads these three attributes)."""

    status_code: int
    text: str
    headers: Mapping[str, str]

    def raise_for_status(self) -> None:
        if self.status_code >= 400:  # noqa: PLR2004 - HTTP error range
            msg = f"HTTP {self.status_code}"
            raise requests.HTTPError(msg)


def _is_transient(exc: Exception) -> bool:
    # ChunkedEncodingError: the connection closed before the whole body arrived (a truncated answer).
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError))


class _Exchange:
    """The ``http_client`` msal uses for one token request: retries, validation, error mapping."""

    def __init__(self, fetcher: MsalFetcher) -> None:
        self._f = fetcher
        self.expires_on: int | None = None
        self.refresh_in: int | None = None

    def __getattr__(self, name: str) -> Any:
        # msal's Service Fabric path copies session settings (adapters, headers...) from its http_client.
        return getattr(self._f.session(), name)

    def close(self) -> None:
        """Nothing to close: the session is shared by the process."""

    def post(self, url: str, **kwargs: Any) -> _Answer:
        """Send msal's POST (msal posts only for Cloud Shell, not a managed identity here)."""
        return self._send("POST", url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> _Answer:
        """Send msal's GET with retries; return only what msal should parse."""
        return self._send("GET", url, **kwargs)

    def _send(self, method: str, url: str, **kwargs: Any) -> _Answer:
        f = self._f
        check_outbound_url(url, f.env, what="identity endpoint")
        session = f.session()
        headers = dict(kwargs.pop("headers", None) or {})
        params = kwargs.pop("params", None)
        data = kwargs.pop("data", None)
        policy = f.policy

        def send(read_timeout: float) -> Received:
            return read_capped(
                session.request(
                    method, url, params=params, data=data, headers=headers,
                    timeout=(policy.connect_timeout, read_timeout), allow_redirects=False, stream=True,
                )
            )  # fmt: skip

        def on_retry(attempt: int, resp: Received | None, err: Exception | None, wait: float) -> None:
            what = f"answered {resp.status_code}" if resp is not None else f"did not answer ({type(err).__name__})"
            if resp is not None and resp.status_code == HTTPStatus.NOT_FOUND and f.identity.selected_by == "argument":
                _log.warning(
                    "The %s %s for %s; retrying as Microsoft advises for 404. If %s is an object (principal) id, "
                    "pass the identity's client (application) id instead.",
                    f.source_name, what, f.identity.selector, f.identity.selector,
                )  # fmt: skip
            else:
                _log.info("The %s %s; retry %d in %.1f s.", f.source_name, what, attempt, wait)

        try:
            outcome = call_with_retries(
                send,
                policy=policy,
                is_transient=_is_transient,
                clock=f.clock,
                sleep=f.sleep,
                rng=f.rng,
                on_retry=on_retry,
                give_up_on_first_error=f.unavailable_if_silent,
            )
        except OversizedError as exc:
            raise self._oversized(exc) from None
        response = outcome.response
        if not isinstance(response, Received):
            raise self._no_response(outcome.error, outcome.attempts, outcome.elapsed, exhausted=outcome.exhausted)
        return self._interpret(response, outcome.attempts, outcome.elapsed)

    def _no_response(self, error: Exception | None, attempts: int, elapsed: float, *, exhausted: bool) -> Exception:
        f = self._f
        reason = "timed out" if isinstance(error, requests.Timeout) else "refused or dropped the connection"
        if not exhausted and error is not None and f.unavailable_if_silent(error):
            return errors.IdentityUnavailableError(
                f"No managed identity endpoint answered at {f.identity.endpoint} ({reason}): this does not look like "
                "an Azure VM or Azure ML compute. Off Azure, use azure.identity.AzureCliCredential or another "
                "credential; in the aml-identity sandbox the job environment provides the endpoint.",
                source="imds",
            )
        return errors.TokenRequestError(
            f"The {f.source_name} {reason} for {f.identity.describe()}: {attempts} attempt(s) over {elapsed:.0f} s "
            f"(budget {f.policy.total_timeout:.0f} s). The endpoint may be restarting; retry later, or raise the "
            "budget with AML_IDENTITY_TOKEN_TIMEOUT.",
            identity=f.identity.selector,
            endpoint=f.identity.endpoint,
            attempts=attempts,
            retryable=True,
        )

    def _oversized(self, exc: OversizedError) -> errors.TokenRequestError:
        f = self._f
        size = f"{exc.declared} bytes" if exc.declared is not None else "more than that"
        return errors.TokenRequestError(
            f"The {f.source_name} answered {exc.status} with a body of {size} for {f.identity.describe()}; a token "
            f"response is a few kilobytes, so aml-identity stopped reading at {MAX_RESPONSE_BYTES} bytes. Something "
            "other than the identity endpoint is answering at this address (a proxy, another service): check "
            "MSI_ENDPOINT / IDENTITY_ENDPOINT.",
            identity=f.identity.selector,
            endpoint=f.identity.endpoint,
            status_code=exc.status,
        )

    def _interpret(self, response: Received, attempts: int, elapsed: float) -> _Answer:
        """Return a 200 (normalised) or Arc's challenge to msal; raise our error for anything else."""
        f = self._f
        status = response.status_code
        text = response.text
        try:
            body: Any = json.loads(text) if text else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = None
        if status == HTTPStatus.OK and body is not None:
            return self._normalised(body, response)
        challenged = "www-authenticate" in {k.lower() for k in response.headers}
        if status == HTTPStatus.UNAUTHORIZED and f.identity.source == "azure_arc" and challenged:
            return _Answer(status, text, dict(response.headers))  # Arc's challenge: msal answers it
        raise self._failure(
            status=status,
            body=body,
            text=text,
            content_type=response.headers.get("Content-Type", ""),
            attempts=attempts,
            elapsed=elapsed,
        )

    def _failure(  # noqa: PLR0911 - one return per kind of failure, each with its own fix
        self,
        *,
        status: int,
        body: dict[str, Any] | None,
        text: str,
        content_type: str,
        attempts: int,
        elapsed: float,
    ) -> errors.TokenRequestError:
        f = self._f
        excerpt = redact(text.strip() or "(empty body)", f.secret)

        def error(message: str, *, retryable: bool = False) -> errors.TokenRequestError:
            return errors.TokenRequestError(
                message, identity=f.identity.selector, endpoint=f.identity.endpoint, status_code=status,
                attempts=attempts, retryable=retryable,
            )  # fmt: skip

        if status == HTTPStatus.OK:
            return error(
                f"The {f.source_name} answered 200 with a body that is not a JSON object (Content-Type "
                f"{content_type or 'missing'}): {excerpt!r}. The endpoint is misbehaving; retry later."
            )
        said = excerpt
        if body is not None and ("error" in body or "error_description" in body or "message" in body):
            said = redact(
                f"{body.get('error', '')}: {body.get('error_description', body.get('message', ''))}", f.secret
            )
        has_id = f.identity.selector != "system-assigned"
        if status in RETRYABLE_STATUS:
            if status == HTTPStatus.NOT_FOUND and has_id:
                return self._not_found(status, said, attempts)
            return error(
                f"The {f.source_name} kept answering {status} ({said}) for {f.identity.describe()}: {attempts} "
                f"attempt(s) over {elapsed:.0f} s. It is throttled or unavailable; retry later, or raise the budget "
                "with AML_IDENTITY_TOKEN_TIMEOUT.",
                retryable=True,
            )
        if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN) and f.identity.source == "imds":
            return error(  # IMDS takes no secret: a refusal means something other than the VM's IMDS answered
                f"The {f.source_name} refused the request with {status} ({said}) for {f.identity.describe()}. IMDS "
                "takes no secret, so this is not a credential problem: the request did not reach the VM's instance "
                "metadata service. Either an HTTP proxy answered (add 169.254.169.254 to NO_PROXY), or this machine "
                "is not an Azure VM with a managed identity (a container network or Docker Desktop answers this "
                "address): run on the Azure compute, or point AZURE_POD_IDENTITY_AUTHORITY_HOST at your endpoint."
            )
        if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            name = "IDENTITY_HEADER" if f.identity.source in ("app_service", "service_fabric") else "MSI_SECRET"
            return error(
                f"The {f.source_name} refused the request with {status} ({said}) for {f.identity.describe()}. The "
                f"{name} in this process's environment is not the one the endpoint expects: do not copy MSI_* or "
                "IDENTITY_* variables between jobs or shells; run inside the job."
            )
        lowered = said.lower()
        if "multiple user assigned" in lowered:
            return error(
                f"The {f.source_name} has several user-assigned identities and none was chosen ({said}). Pass "
                "client_id=, or set DEFAULT_IDENTITY_CLIENT_ID or AZURE_CLIENT_ID to the one to use."
            )
        if has_id and ("not found" in lowered or "identity" in lowered):
            return self._not_found(status, said, attempts)
        return error(
            f"The {f.source_name} refused to issue a token for {f.identity.describe()}: {status} ({said}). "
            "This is not retried (Microsoft: do not retry 4xx other than 404, 408, 410, 429)."
        )

    def _not_found(self, status: int, said: str, attempts: int) -> errors.IdentityNotFoundError:
        f = self._f
        name = {"argument": "client_id", "DEFAULT_IDENTITY_CLIENT_ID": "DEFAULT_IDENTITY_CLIENT_ID",
                "AZURE_CLIENT_ID": "AZURE_CLIENT_ID"}.get(f.identity.selected_by)  # fmt: skip
        return errors.IdentityNotFoundError(
            f"The {f.source_name} has no identity {f.identity.selector} ({status}: {said}). If this GUID is the "
            "identity's object (principal) id, pass its client (application) id instead; also check the identity "
            "is assigned to this compute (a user-assigned identity must be added to the cluster).",
            identity=f.identity.selector,
            endpoint=f.identity.endpoint,
            status_code=status,
            attempts=attempts,
            name=name,
        )

    def _normalised(self, body: dict[str, Any], response: Received) -> _Answer:
        f = self._f
        token = body.get("access_token")
        expires_on = parse_epoch(body.get("expires_on"))
        expires_in = parse_epoch(body.get("expires_in"))
        now = f.clock()
        if expires_on is None and expires_in is not None:
            expires_on = int(now) + expires_in
        if not isinstance(token, str) or not token or expires_on is None:
            missing = [k for k, ok in (("access_token", isinstance(token, str) and bool(token)),
                                       ("expires_on", expires_on is not None)) if not ok]  # fmt: skip
            raise errors.TokenRequestError(
                f"The {f.source_name} answered 200 without {' and '.join(missing)} for {f.identity.describe()} "
                f"(fields present: {', '.join(sorted(body)) or 'none'}). The endpoint is misbehaving; retry later.",
                identity=f.identity.selector,
                endpoint=f.identity.endpoint,
                status_code=200,
            )
        refresh_in = parse_epoch(body.get("refresh_in"))
        self.expires_on = expires_on
        self.refresh_in = refresh_in
        normalised = dict(body)
        normalised["expires_on"] = expires_on
        normalised["expires_in"] = max(0, expires_on - int(now))
        return _Answer(200, json.dumps(normalised), dict(response.headers))


class MsalFetcher(Fetcher):
    """Fetch with ``msal.ManagedIdentityClient`` (every source but workload identity)."""

    def __init__(
        self,
        identity: ManagedIdentity,
        env: JobEnvironment,
        *,
        policy: RetryPolicy,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        rng: random.Random | None = None,
        session: requests.Session | None = None,
    ) -> None:
        """Create the fetcher.

        Args:
            identity: The resolved identity.
            env: The environment it was resolved from.
            policy: The retry policy.
            clock: Returns the current time.
            sleep: Waits.
            rng: The random source for backoff jitter.
            session: The HTTP session to send with; the process's own (see ``_Session``) when None.
        """
        self._session = session
        self.identity = identity
        self.env = env
        self.policy = policy
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.source_name = SOURCE_NAMES[identity.source]
        self.secret = env.msi_secret if identity.source == "azureml" else env.identity_header
        if identity.client_id:
            self._mi: dict[str, Any] = msal.UserAssignedManagedIdentity(client_id=identity.client_id)
        elif identity.object_id:
            self._mi = msal.UserAssignedManagedIdentity(object_id=identity.object_id)
        elif identity.resource_id:
            self._mi = msal.UserAssignedManagedIdentity(resource_id=identity.resource_id)
        else:
            self._mi = msal.SystemAssignedManagedIdentity()

    def session(self) -> requests.Session:
        """The injected session, else the process's session for the identity endpoint."""
        return self._session if self._session is not None else _SESSION.get(self.env.ca_bundle)

    def unavailable_if_silent(self, exc: Exception) -> bool:
        """Whether a first-attempt failure means "no managed identity here" rather than "retry".

        Only for IMDS at its default address (no identity variable at all) when the connection itself failed:
        every Azure VM answers there, so nothing listening means this is not one. A configured endpoint, or one
        that accepted the connection and is slow, is retried as Microsoft advises.
        """
        return (
            self.identity.source == "imds"
            and self.env.pod_identity_authority_host is None
            and self.identity.selected_by != "argument"
            and isinstance(exc, requests.ConnectionError)
        )

    def _check_process_environment(self) -> None:
        if self.env.from_process:
            return
        process = JobEnvironment.from_environ(os.environ)
        differing = [
            var for field, var in MSAL_ENVIRONMENT.items() if getattr(self.env, field) != getattr(process, field)
        ]
        if differing:
            raise ConfigurationError(
                f"The environment this credential was created from differs from the process environment in "
                f"{', '.join(differing)}. msal, which sends the token request, reads the process environment: set "
                "those variables in os.environ (or create the credential without environ=).",
                name="environ",
            )

    def fetch(self, resource: str, *, claims: str | None = None) -> CachedToken:
        """Fetch a new token through msal.

        Args:
            resource: The resource (audience).
            claims: A claims challenge, if any.

        Returns:
            The token.

        Raises:
            TokenRequestError: The endpoint failed; the message names identity, endpoint, status and fix.
            IdentityUnavailableError: No endpoint answered (IMDS off Azure).
            ConfigurationError: The process environment disagrees with the credential's.
        """
        self._check_process_environment()
        exchange = _Exchange(self)
        client = msal.ManagedIdentityClient(self._mi, http_client=exchange, token_cache=msal.TokenCache())
        try:
            result = client.acquire_token_for_client(resource=resource, claims_challenge=claims)
        except AmlIdentityError:
            raise
        except (msal.ManagedIdentityError, ValueError, KeyError, TypeError) as exc:
            raise errors.TokenRequestError(
                f"msal could not get a token from the {self.source_name} for {self.identity.describe()}: "
                f"{redact(str(exc), self.secret)}",
                identity=self.identity.selector,
                endpoint=self.identity.endpoint,
            ) from None
        if "access_token" not in result or exchange.expires_on is None:
            said = redact(f"{result.get('error', '')}: {result.get('error_description', '')}", self.secret)
            raise errors.TokenRequestError(
                f"The {self.source_name} gave no token for {self.identity.describe()} ({said}).",
                identity=self.identity.selector,
                endpoint=self.identity.endpoint,
            )
        _log.debug("Fetched a token for %s from the %s.", resource, self.source_name)
        return new_token(
            str(result["access_token"]),
            expires_on=exchange.expires_on,
            now=self.clock(),
            refresh_in=exchange.refresh_in,
            token_type=str(result.get("token_type", "Bearer")),
        )


class WorkloadIdentityFetcher(Fetcher):
    """Fetch with azure-identity's ``WorkloadIdentityCredential`` (Kubernetes federated tokens)."""

    def __init__(self, identity: ManagedIdentity, env: JobEnvironment, *, clock: Callable[[], float]) -> None:
        """Create the fetcher.

        Args:
            identity: The resolved identity (``source == "workload_identity"``).
            env: The environment it was resolved from.
            clock: Returns the current time.
        """
        from azure.identity import WorkloadIdentityCredential  # noqa: PLC0415 - only on Kubernetes

        self.identity = identity
        self._clock = clock
        self._credential = WorkloadIdentityCredential(
            tenant_id=env.tenant_id or "",
            client_id=identity.client_id or "",
            token_file_path=env.federated_token_file or "",
            authority=env.authority_host,
        )

    def fetch(self, resource: str, *, claims: str | None = None) -> CachedToken:
        """Fetch a token with the federated credential (msal's client-credentials flow)."""
        from azure.core.exceptions import ClientAuthenticationError  # noqa: PLC0415

        try:
            info = self._credential.get_token_info(
                resource.rstrip("/") + "/.default", options={"claims": claims} if claims else None
            )
        except ClientAuthenticationError as exc:
            raise errors.TokenRequestError(
                f"Workload identity token request failed for {self.identity.describe()}: {redact(exc.message)}",
                identity=self.identity.selector,
                endpoint=self.identity.endpoint,
                status_code=exc.status_code,
            ) from None
        now = self._clock()
        refresh_in = int(info.refresh_on - now) if info.refresh_on else None
        return new_token(info.token, expires_on=info.expires_on, now=now, refresh_in=refresh_in)


def make_fetcher(
    identity: ManagedIdentity,
    env: JobEnvironment,
    *,
    policy: RetryPolicy,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    session: requests.Session | None = None,
) -> Fetcher:
    """Return the fetcher for ``identity``'s source (``session``: the HTTP session, for the msal sources)."""
    if identity.source == "workload_identity":
        return WorkloadIdentityFetcher(identity, env, clock=clock)
    return MsalFetcher(identity, env, policy=policy, clock=clock, sleep=sleep, session=session)
