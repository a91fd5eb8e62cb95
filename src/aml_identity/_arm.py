"""Talk to Azure Resource Manager through ``azure-mgmt-core``'s pipeline and long-running-operation polling.

The one ARM client of the package: provisioning (clusters, roles, locks) and datastore resolution
(``Datastores_Get``) both send their requests through :class:`ArmClient`, and :func:`arm_scope` is the one
rule for the token audience. Private: ``aml_identity.provisioning.arm`` re-exports what provisioning uses.

:class:`ArmClient` builds an ``ARMPipelineClient`` with ARM's challenge authentication, retries (which
honour ``Retry-After``), resource-provider auto-registration and a guard that refuses off-loopback URLs
in a sandbox. Long-running operations use ``ARMPolling`` (``Azure-AsyncOperation`` first, then
``Location``), driven synchronously so the caller sees each status change and tests can inject ``sleep``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from azure.core.exceptions import HttpResponseError
from azure.core.pipeline import Pipeline, PipelineRequest, PipelineResponse, policies
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest
from azure.mgmt.core import ARMPipelineClient
from azure.mgmt.core.policies import (
    ARMAutoResourceProviderRegistrationPolicy,
    ARMChallengeAuthenticationPolicy,
    ARMHttpLoggingPolicy,
)
from azure.mgmt.core.polling.arm_polling import ARMPolling

from aml_identity import __version__
from aml_identity._environment import (
    DEFAULT_ARM_ENDPOINT,
    JobEnvironment,
    check_outbound_url,
    is_loopback_host,
)
from aml_identity.errors import OperationFailedError, ProvisioningError, redact

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from azure.core.credentials import TokenCredential

__all__ = ["ARM_SCOPE", "RETRY_TOTAL", "ArmClient", "ArmOperation", "ArmResponse", "arm_scope"]

_LOG = logging.getLogger(__name__)

# The token scope of Azure Resource Manager (public cloud, and the emulator, which accepts its audience).
ARM_SCOPE = f"{DEFAULT_ARM_ENDPOINT}/.default"
# Retries of failed requests (408, 429, 5xx, connection errors) with exponential backoff; azure-core's
# RetryPolicy honours Retry-After. Management calls are few, so a handful of retries is cheap insurance.
RETRY_TOTAL = 5
# Seconds between polls of a long-running operation when ARM sends no Retry-After (azure-mgmt-core's default).
DEFAULT_POLL_INTERVAL_S = 30.0
# A list that keeps paging past this many pages is a loop, not data (ARM pages hold 100s of items).
MAX_PAGES = 1000


def arm_scope(endpoint: str) -> str:
    """Return the token scope for requests to the ARM ``endpoint``.

    The public cloud's endpoint, and an emulator on loopback (which stands in for it and accepts its
    audience), get public ARM tokens; a sovereign cloud's ARM endpoint is its own audience.

    Args:
        endpoint: The ARM endpoint URL, without a trailing slash.

    Returns:
        The scope, ``<audience>/.default``.
    """
    host = urlsplit(endpoint).hostname or ""
    if is_loopback_host(host) or endpoint == DEFAULT_ARM_ENDPOINT:
        return ARM_SCOPE
    return f"{endpoint}/.default"


class _Transport(RequestsTransport):  # type: ignore[misc]  # azure-core types it as Any
    """azure-core's requests transport with an injectable ``sleep`` (retry backoff and LRO polling use it)."""

    def __init__(self, *, sleep: Callable[[float], None] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sleep = sleep or time.sleep

    def sleep(self, duration: float) -> None:
        self._sleep(duration)


class _LoopbackGuardPolicy(policies.SansIOHTTPPolicy[Any, Any]):
    """Refuse off-loopback URLs when ``AML_IDENTITY_LOOPBACK_ONLY`` is set (covers polling URLs too)."""

    def __init__(self, env: JobEnvironment) -> None:
        self._env = env

    def on_request(self, request: PipelineRequest[Any]) -> None:
        check_outbound_url(request.http_request.url, self._env, what="Azure Resource Manager endpoint")


@dataclass(frozen=True)
class ArmResponse:
    """A response from ARM.

    Attributes:
        status: The HTTP status.
        headers: The response headers.
        body: The parsed JSON body (None when empty or not JSON).
        pipeline_response: azure-core's pipeline response (for polling).
    """

    status: int
    headers: Mapping[str, str]
    body: Any
    pipeline_response: PipelineResponse[Any, Any]

    def error_code(self) -> str | None:
        """ARM's ``error.code``, when the body carries one."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("code")) if isinstance(error, dict) and error.get("code") else None

    def error_message(self) -> str:
        """ARM's ``error.message`` (masked), or the status."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return redact(str(error["message"]))
        return f"HTTP {self.status}"


def _parse_body(response: Any) -> Any:
    try:
        text = response.text()
    except (UnicodeDecodeError, ValueError):
        return None
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _hint(status: int) -> str:
    if status == 401:  # noqa: PLR2004 - HTTP status
        return (
            " The credential's token was refused: check that it is for the right tenant and for "
            "https://management.azure.com."
        )
    if status == 403:  # noqa: PLR2004 - HTTP status
        return (
            " The identity lacks permission: clusters need Contributor (or AzureML Compute Operator) on the "
            "workspace; role assignments need Owner or User Access Administrator on the scope."
        )
    return ""


class ArmOperation:
    """A long-running ARM operation, polled with ``azure-mgmt-core``'s ``ARMPolling``."""

    def __init__(self, client: ArmClient, initial: ArmResponse, what: str) -> None:
        """Prepare polling from the initial response (nothing is sent until :meth:`wait`)."""
        self.what = what
        self.initial = initial
        self._polling = _StatusPolling(timeout=DEFAULT_POLL_INTERVAL_S)
        self._polling.initialize(client.pipeline_client, initial.pipeline_response, _deserialize)
        self._done = self._polling.finished()

    def status(self) -> str:
        """The last status seen (``InProgress``, ``Succeeded``, ``Failed``...)."""
        return str(self._polling.status())

    def done(self) -> bool:
        """Whether the operation has finished (successfully or not)."""
        return self._done

    def wait(self, on_status: Callable[[str], None] | None = None) -> Any:
        """Poll until the operation ends; return the final resource body (None for a delete).

        Args:
            on_status: Called with each new status as polling sees it.

        Raises:
            OperationFailedError: The operation ended ``Failed`` or ``Canceled``; carries ARM's error code
                and message.
            ProvisioningError: A poll failed.
        """
        self._polling.on_status = on_status
        try:
            self._polling.run()
        except HttpResponseError as exc:
            self._done = True
            raise self._failure(exc) from None
        finally:
            self._polling.on_status = None
        self._done = True
        return self._polling.resource()

    def _failure(self, exc: HttpResponseError) -> ProvisioningError:
        body = _parse_body(exc.response) if exc.response is not None else None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("code"):
            code, message = str(error["code"]), redact(str(error.get("message") or ""))
            return OperationFailedError(
                f"{self.what} ended {self._polling.status()}: {code}: {message}",
                error_code=code,
                status_code=exc.status_code,
            )
        status = exc.status_code
        return ProvisioningError(
            f"{self.what}: polling the operation failed (HTTP {status}): {redact(str(exc.message or ''))}",
            status_code=status,
        )


class _StatusPolling(ARMPolling):
    """``ARMPolling`` that reports each status change to a callback."""

    on_status: Callable[[str], None] | None = None

    def update_status(self) -> None:
        previous = self.status()
        super().update_status()
        if self.on_status is not None and self.status() != previous:
            self.on_status(str(self.status()))


def _deserialize(pipeline_response: PipelineResponse[Any, Any]) -> Any:
    return _parse_body(pipeline_response.http_response)


class ArmClient:
    """Send requests to Azure Resource Manager with a credential.

    Args:
        credential: Any azure-core ``TokenCredential``.
        environ: The environment for ``AML_IDENTITY_ARM_ENDPOINT`` and ``AML_IDENTITY_LOOPBACK_ONLY``.
        endpoint: The ARM endpoint; ``JobEnvironment.arm_endpoint`` (``AML_IDENTITY_ARM_ENDPOINT`` or
            ``https://management.azure.com``) when omitted.
        connection_verify: TLS verification: a CA bundle path, True (the system store) or False; when
            omitted, ``REQUESTS_CA_BUNDLE`` of ``environ`` (or of the process), else the system store.
        sleep: Waits between polls and retries (``time.sleep`` by default; tests inject a fake).
        transport: An azure-core transport to use instead of the default requests one.
        env: An already-read environment (instead of ``environ``).
        retry_total: How many times a failed request is retried (:data:`RETRY_TOTAL` by default).
    """

    def __init__(
        self,
        credential: TokenCredential,
        *,
        environ: Mapping[str, str] | None = None,
        endpoint: str | None = None,
        connection_verify: bool | str | None = None,
        sleep: Callable[[float], None] | None = None,
        transport: Any = None,
        env: JobEnvironment | None = None,
        retry_total: int = RETRY_TOTAL,
    ) -> None:
        """Build the pipeline (no request is sent yet)."""
        self.env = env if env is not None else JobEnvironment.from_environ(environ)
        self.endpoint = (endpoint or self.env.arm_endpoint).rstrip("/")
        self.credential = credential
        self.sleep = sleep or time.sleep
        scope = arm_scope(self.endpoint)
        options: dict[str, Any] = {}
        # An explicit setting wins; else the environment's REQUESTS_CA_BUNDLE (also when the environment is
        # injected rather than the process's, which requests itself would not read).
        verify = connection_verify if connection_verify is not None else self.env.ca_bundle
        if verify is not None:
            options["connection_verify"] = verify
        self._transport = transport or _Transport(sleep=self.sleep, **options)
        pipeline_policies: list[Any] = [
            policies.RequestIdPolicy(),
            policies.HeadersPolicy(),
            policies.UserAgentPolicy(f"aml-identity/{__version__}"),
            policies.ProxyPolicy(),
            policies.ContentDecodePolicy(),
            _LoopbackGuardPolicy(self.env),
            ARMAutoResourceProviderRegistrationPolicy(),
            policies.RedirectPolicy(),
            policies.RetryPolicy(retry_total=retry_total),
            ARMChallengeAuthenticationPolicy(credential, scope),
            policies.CustomHookPolicy(),
            policies.NetworkTraceLoggingPolicy(),
            policies.DistributedTracingPolicy(),
            ARMHttpLoggingPolicy(),
        ]
        self._pipeline: Pipeline[Any, Any] = Pipeline(self._transport, pipeline_policies)
        self.pipeline_client: ARMPipelineClient[Any, Any] = ARMPipelineClient(
            self.endpoint, pipeline=self._pipeline, policies=pipeline_policies
        )

    def send(
        self,
        method: str,
        path: str,
        *,
        api_version: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> ArmResponse:
        """Send one request; return the response whatever its status."""
        url = self.pipeline_client.format_url(path)
        check_outbound_url(url, self.env, what="Azure Resource Manager endpoint")
        request = HttpRequest(method, url, params={"api-version": api_version, **(params or {})}, json=body)
        _LOG.debug("ARM %s %s", method, path)
        pipeline_response = self._pipeline.run(request)
        response = pipeline_response.http_response
        return ArmResponse(response.status_code, dict(response.headers), _parse_body(response), pipeline_response)

    def call(
        self,
        method: str,
        path: str,
        *,
        api_version: str,
        what: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201, 202, 204),
    ) -> ArmResponse:
        """Send a request and raise :class:`ProvisioningError` unless its status is in ``ok``.

        Args:
            method: HTTP method.
            path: The resource path (``/subscriptions/...``).
            api_version: The ``api-version``.
            what: What the request does, for the error message (``"creating cluster 'cpu'"``).
            body: The JSON body.
            params: More query parameters.
            ok: Statuses that are not errors.
        """
        response = self.send(method, path, api_version=api_version, body=body, params=params)
        if response.status not in ok:
            raise self.error(response, what)
        return response

    def list_all(self, path: str, *, api_version: str, what: str, params: Mapping[str, str] | None = None) -> list[Any]:
        """GET a list and every further page its ``nextLink`` points to; return all the ``value`` items.

        Raises:
            ProvisioningError: A page was refused, or the list does not end.
        """
        response = self.call("GET", path, api_version=api_version, what=what, params=params, ok=(200,))
        items = list((response.body or {}).get("value") or [])
        next_link = (response.body or {}).get("nextLink")
        pages = 1
        while next_link:
            if pages >= MAX_PAGES:
                msg = f"{what}: ARM kept returning more pages (over {MAX_PAGES}); giving up."
                raise ProvisioningError(msg)
            check_outbound_url(next_link, self.env, what="Azure Resource Manager endpoint")
            page = self._pipeline.run(HttpRequest("GET", next_link)).http_response  # the link carries its query
            body = _parse_body(page)
            if page.status_code != 200:  # noqa: PLR2004 - HTTP status
                arm_response = ArmResponse(page.status_code, dict(page.headers), body, self._pipeline_response(page))
                raise self.error(arm_response, what)
            items.extend((body or {}).get("value") or [])
            next_link = (body or {}).get("nextLink")
            pages += 1
        return items

    @staticmethod
    def _pipeline_response(response: Any) -> Any:
        return PipelineResponse(response.request, response, None)  # type: ignore[arg-type]

    def error(self, response: ArmResponse, what: str) -> ProvisioningError:
        """The :class:`ProvisioningError` for a refused request, with ARM's code and message."""
        code = response.error_code()
        detail = f"{code}: {response.error_message()}" if code else response.error_message()
        return ProvisioningError(
            f"{what} failed (HTTP {response.status}) {detail}.{_hint(response.status)}",
            status_code=response.status,
            error_code=code,
            response=response.pipeline_response.http_response,
        )

    def begin(
        self,
        method: str,
        path: str,
        *,
        api_version: str,
        what: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> ArmOperation:
        """Start a long-running operation; poll it with :meth:`ArmOperation.wait`."""
        initial = self.call(method, path, api_version=api_version, what=what, body=body, params=params)
        return ArmOperation(self, initial, what)

    def close(self) -> None:
        """Close the HTTP session."""
        self._transport.close()

    def __enter__(self) -> ArmClient:
        """Use the client in a ``with`` block; it is closed at the end."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the HTTP session."""
        self.close()
