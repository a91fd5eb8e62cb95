"""``IdentityEndpoint``: a local managed-identity token endpoint for tests, benchmarks and the sandbox.

One HTTP server on ``127.0.0.1`` answers the three token protocols a job may meet, exactly as
``notes/mi-protocol.md`` documents them (rules in :mod:`aml_identity.testing._mi_protocols`):

* **Azure ML** (``MSI_ENDPOINT`` + ``MSI_SECRET``): ``GET /MSI/auth?api-version=2017-09-01&resource=R&clientid=G``
  with a ``secret`` header; integer ``expires_on``. Without a GUID ``clientid`` it answers, like the real
  platform, with a token for the *user*, not for a managed identity.
* **IMDS** (reached by the real SDKs through ``AZURE_POD_IDENTITY_AUTHORITY_HOST``): ``Metadata: true``,
  ``client_id`` / ``object_id`` / ``msi_res_id``, string expiry fields.
* **App Service 2019-08-01** (``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``).

Tokens are RS256 JWTs shaped like Entra v1 managed-identity tokens, which Azurite (``--oauth basic``) accepts.
The endpoint can be scripted to misbehave (:class:`Fault`: error statuses, text bodies, malformed JSON,
missing fields, hangs, TCP resets), can enforce IMDS's rate limits, and records every token request.

Example::

    with IdentityEndpoint() as endpoint:
        os.environ.update(endpoint.azureml_environ())
        token = ManagedIdentityCredential(client_id=endpoint.identities[0].client_id).get_token(
            "https://storage.azure.com/.default"
        )
        assert endpoint.requests[0].params["clientid"] == endpoint.identities[0].client_id
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import select
import socket
import socketserver
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from aml_identity._environment import is_guid
from aml_identity.errors import AmlIdentityError, ConfigurationError, redact
from aml_identity.testing._identities import DEFAULT_SUBSCRIPTION_ID, EmulatedIdentity
from aml_identity.testing._jwt import DEFAULT_TENANT_ID
from aml_identity.testing._mi_protocols import (
    APP_SERVICE_TOKEN_PATH,
    DEFAULT_AML_PATH,
    EMULATED_USER_OBJECT_ID,
    EMULATED_USER_UPN,
    IMDS_TOKEN_PATH,
    Protocol,
    Reply,
    TokenSettings,
    answer,
    error_code_for,
    json_reply,
    method_not_allowed_reply,
    protocol_for_path,
    text_reply,
    throttled_reply,
)

__all__ = [
    "DEFAULT_SUBSCRIPTION_ID",
    "DEFAULT_TENANT_ID",
    "DEFAULT_TOKEN_LIFETIME_S",
    "EMULATED_USER_OBJECT_ID",
    "EMULATED_USER_UPN",
    "IMDS_MAX_CONCURRENT",
    "IMDS_REQUESTS_PER_SECOND",
    "EmulatedIdentity",
    "Fault",
    "IdentityEndpoint",
    "RecordedRequest",
]

_LOGGER = logging.getLogger(__name__)

# Real Azure ML tokens live about 24 h (a live recording shows expires_in 85702 s).
DEFAULT_TOKEN_LIFETIME_S = 86_400
# IMDS's published limits for the managed-identity category: "20 requests per second and 5 concurrent
# requests (on a per VM basis)" (instance-metadata-service.md, "Rate limiting"). Opt-in: pass them explicitly.
IMDS_REQUESTS_PER_SECOND = 20
IMDS_MAX_CONCURRENT = 5
# requests_per_second counts the requests admitted in the last second (a sliding window).
_RATE_WINDOW_S = 1.0
# The listen backlog. The herd benchmark opens 128+ connections at once; with the default of 5 the kernel
# would drop SYNs and clients would stall in connect retries that no real endpoint causes.
_LISTEN_BACKLOG = 1024
# An idle keep-alive connection is closed after this long (clients reconnect transparently), so a client
# that never closes its session cannot pin a server thread for the life of the process.
_IDLE_CONNECTION_TIMEOUT_S = 60.0
# serve_forever's shutdown poll: stop() returns within about this long (a fixture per test must be cheap).
_SHUTDOWN_POLL_S = 0.05
# stop() waits at most this long for each connection thread after shutting its socket down.
_STOP_JOIN_TIMEOUT_S = 5.0
# The body of Fault.malformed_json(): JSON cut off mid-object (no token-like text in it).
_MALFORMED_JSON = b'{"token_type": "Bearer", "expires_in": '
_MASK = "****"
# Request headers and query parameters whose values are secrets: recorded and logged as "****".
_SECRET_HEADERS = frozenset({"secret", "x-identity-header", "authorization"})
_SECRET_PARAMS = frozenset({"secret"})
_HTTP_STATUS_RANGE = range(100, 600)

FaultKind = Literal["status", "text", "malformed_json", "missing_fields", "hang", "reset"]


def _check_status(code: int) -> int:
    if isinstance(code, bool) or not isinstance(code, int) or code not in _HTTP_STATUS_RANGE:
        raise ConfigurationError(f"HTTP status {code!r} is not a status code (100-599).", name="code")
    return int(code)  # a plain int, also for HTTPStatus members


def _format_retry_after(value: float | str) -> str:
    if isinstance(value, str):
        if not value.strip():
            raise ConfigurationError("retry_after is empty; pass seconds (2 or 0.5) or an HTTP date.")
        return value.strip()
    if value < 0:
        raise ConfigurationError(f"retry_after={value!r} is negative; pass the seconds to wait (>= 0).")
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour of the endpoint, applied to one token request (see :meth:`IdentityEndpoint.inject`).

    Build faults with the class methods; the fields describe what the endpoint will do.

    Attributes:
        kind: What happens: ``status``/``text``/``malformed_json`` send a canned response, ``missing_fields``
            sends a normal token response without some keys, ``hang`` holds the request, ``reset`` aborts
            the TCP connection.
        code: The HTTP status of a canned response.
        body: The body of a canned response.
        content_type: Its Content-Type.
        retry_after: Its ``Retry-After`` header value, if any.
        fields: The keys ``missing_fields`` removes.
        seconds: How long ``hang`` holds the request (None: until :meth:`IdentityEndpoint.release_hangs`).
    """

    kind: FaultKind
    code: int | None = None
    body: bytes = b""
    content_type: str | None = None
    retry_after: str | None = None
    fields: tuple[str, ...] = ()
    seconds: float | None = None

    @classmethod
    def status(
        cls,
        code: int,
        *,
        body: Mapping[str, Any] | str | None = None,
        retry_after: float | str | None = None,
        content_type: str | None = None,
    ) -> Fault:
        """Answer with ``code`` and a JSON body (404, 410, 429 + ``Retry-After``, 500, 503...).

        Args:
            code: The HTTP status.
            body: A JSON object, or a string sent verbatim. Default: an IMDS-style OAuth error,
                ``{"error": "too_many_requests", "error_description": ...}`` for a 429 and so on.
            retry_after: Seconds (or an HTTP date) for a ``Retry-After`` header; no header when None.
            content_type: The Content-Type; ``application/json; charset=utf-8`` when None.

        Returns:
            The fault.

        Raises:
            ConfigurationError: ``code`` is not an HTTP status or ``retry_after`` is negative or empty.
        """
        code = _check_status(code)
        if body is None:
            try:
                phrase = HTTPStatus(code).phrase
            except ValueError:  # a status outside the registry, e.g. 599
                phrase = "Error"
            body = {"error": error_code_for(code), "error_description": f"{phrase} (injected fault)"}
        encoded = body.encode() if isinstance(body, str) else json.dumps(dict(body)).encode()
        return cls(
            kind="status",
            code=code,
            body=encoded,
            content_type=content_type or "application/json; charset=utf-8",
            retry_after=None if retry_after is None else _format_retry_after(retry_after),
        )

    @classmethod
    def text(cls, code: int, text: str) -> Fault:
        """Answer with ``code`` and a ``text/plain`` body, as Azure ML does for an unknown ``clientid``.

        Args:
            code: The HTTP status.
            text: The body.

        Returns:
            The fault.
        """
        return cls(
            kind="text",
            code=_check_status(code),
            body=text.encode(),
            content_type="text/plain; charset=utf-8",
        )

    @classmethod
    def malformed_json(cls, code: int = 200) -> Fault:
        """Answer with ``code``, ``Content-Type: application/json`` and a body that is not valid JSON.

        Args:
            code: The HTTP status (200 by default: a token response cut short).

        Returns:
            The fault.
        """
        return cls(
            kind="malformed_json",
            code=_check_status(code),
            body=_MALFORMED_JSON,
            content_type="application/json",
        )

    @classmethod
    def missing_fields(cls, *fields: str) -> Fault:
        """Answer with a normal 200 token response from which ``fields`` are removed.

        Args:
            *fields: Keys of the token response to drop (``"expires_on"``, ``"resource"``, ``"access_token"``...).

        Returns:
            The fault.

        Raises:
            ConfigurationError: No field was named.
        """
        if not fields:
            raise ConfigurationError("missing_fields() needs at least one field name, e.g. 'expires_on'.")
        return cls(kind="missing_fields", fields=tuple(fields))

    @classmethod
    def hang(cls, seconds: float | None = None) -> Fault:
        """Accept the request and send nothing until released, then answer it normally.

        The request is held until :meth:`IdentityEndpoint.release_hangs` (or ``seconds``, when given) and
        then answered as if no fault applied, unless the client has hung up by then: a client with a read
        timeout sees a timeout. A held request counts as in flight for ``max_concurrent``.

        Args:
            seconds: Hold at most this long; None holds until released (or the endpoint stops).

        Returns:
            The fault.

        Raises:
            ConfigurationError: ``seconds`` is negative.
        """
        if seconds is not None and seconds < 0:
            raise ConfigurationError(f"hang(seconds={seconds!r}) is negative; pass None or seconds >= 0.")
        return cls(kind="hang", seconds=seconds)

    @classmethod
    def reset(cls) -> Fault:
        """Read the request, then abort the connection with a TCP RST (``SO_LINGER`` 0, then close).

        Returns:
            The fault.
        """
        return cls(kind="reset")

    def reply(self) -> Reply:
        """Return the canned response of a ``status``/``text``/``malformed_json`` fault."""
        if self.code is None or self.content_type is None:
            msg = f"a {self.kind!r} fault has no canned response"
            raise AmlIdentityError(msg)
        headers = (("Retry-After", self.retry_after),) if self.retry_after is not None else ()
        return Reply(self.code, self.body, self.content_type, headers)


@dataclass(frozen=True)
class RecordedRequest:
    """One token request as the endpoint saw and answered it. Secret headers are recorded as ``****``.

    Attributes:
        protocol: ``"azureml"``, ``"imds"`` or ``"app_service"``.
        method: The HTTP method.
        path: The URL path (no query).
        params: The URL-decoded query parameters (the first value of each).
        headers: The request headers; ``secret``, ``X-IDENTITY-HEADER`` and ``Authorization`` masked.
        status: The HTTP status answered; None while a ``hang`` holds it or when a ``reset`` aborted it.
        identity: The identity a token was minted for (None for errors and user tokens).
        user_token: Whether a *user* token was minted (Azure ML without a GUID ``clientid``).
        at: When it arrived, by the endpoint's ``clock``.
        fault: The kind of the :class:`Fault` applied to it, if any.
        throttled: Whether it was refused with 429 by ``requests_per_second`` / ``max_concurrent``.
    """

    protocol: Protocol
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    status: int | None
    identity: EmulatedIdentity | None
    user_token: bool
    at: float
    fault: FaultKind | None = None
    throttled: bool = False


def _positive(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(f"{name}={value!r} must be a positive number.", name=name)


class IdentityEndpoint:
    """A managed-identity token endpoint on ``127.0.0.1`` (Azure ML, IMDS and App Service protocols).

    A context manager: ``with IdentityEndpoint() as endpoint:`` starts it and stops it. Point clients at it
    with :meth:`azureml_environ`, :meth:`imds_environ` or :meth:`app_service_environ`.
    """

    def __init__(
        self,
        *,
        identities: Sequence[EmulatedIdentity] | None = None,
        token_lifetime: int = DEFAULT_TOKEN_LIFETIME_S,
        refresh_in: int | None = None,
        clock: Callable[[], float] = time.time,
        requests_per_second: float | None = None,
        max_concurrent: int | None = None,
        latency: float = 0.0,
        secret: str | None = None,
        aml_path: str = DEFAULT_AML_PATH,
        tenant_id: str = DEFAULT_TENANT_ID,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Configure (not start) the endpoint.

        Args:
            identities: The identities it serves; one user-assigned ``uai-default`` when None. At most one
                may be system-assigned.
            token_lifetime: Seconds each token lives (``exp - iat``).
            refresh_in: When set, token responses carry ``refresh_in`` (Azure ML and IMDS don't).
            clock: Epoch seconds for ``iat``/``nbf``/``exp``/``expires_on`` and :attr:`RecordedRequest.at`.
            requests_per_second: Answer 429 beyond this many requests in any 1 s window (IMDS: 20).
            max_concurrent: Answer 429 beyond this many requests in flight (IMDS: 5).
            latency: Seconds the server waits before answering each admitted request (a real endpoint's
                delay; the server's own wait, never the client's).
            secret: The ``MSI_SECRET`` / ``IDENTITY_HEADER`` value; random when None.
            aml_path: The Azure ML endpoint's path.
            tenant_id: The tenant of every token.
            monotonic: The clock of the rate-limit window (real monotonic time; tests may inject one).

        Raises:
            ConfigurationError: An argument is out of range, an identity is duplicated, or several
                identities are system-assigned.
        """
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # the log grew, or hangs were released
        self._identities: list[EmulatedIdentity] = []
        for identity in [EmulatedIdentity.user("uai-default")] if identities is None else identities:
            self._add(identity)
        self.token_lifetime = token_lifetime
        self.refresh_in = refresh_in
        self.clock = clock
        self.requests_per_second = requests_per_second
        self.max_concurrent = max_concurrent
        self.latency = latency
        if secret is not None and not secret:
            raise ConfigurationError("secret is empty; pass a non-empty string or None for a random one.")
        self._secret = secret or secrets.token_urlsafe(24)
        if not aml_path.startswith("/") or protocol_for_path(aml_path, "/\0") is not None:
            raise ConfigurationError(
                f"aml_path={aml_path!r} must be a path starting with '/' other than {IMDS_TOKEN_PATH} and "
                f"{APP_SERVICE_TOKEN_PATH}.",
                name="aml_path",
            )
        self._aml_path = aml_path
        if not is_guid(tenant_id):
            raise ConfigurationError(f"tenant_id={tenant_id!r} is not a GUID.", name="tenant_id")
        self._tenant_id = tenant_id
        self._monotonic = monotonic
        self._log: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        self._always: Fault | None = None
        self._in_flight = 0
        self._window: deque[float] = deque()
        self._hang_generation = 0
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- configuration ----------------------------------------------------------------------------------

    @property
    def token_lifetime(self) -> int:
        """Seconds each new token lives; settable (for example to test expiry)."""
        return self._token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, value: int) -> None:
        _positive(value, "token_lifetime")
        self._token_lifetime = int(value)

    @property
    def refresh_in(self) -> int | None:
        """The ``refresh_in`` seconds new responses carry, or None (the platforms' default); settable."""
        return self._refresh_in

    @refresh_in.setter
    def refresh_in(self, value: int | None) -> None:
        if value is not None:
            _positive(value, "refresh_in")
        self._refresh_in = None if value is None else int(value)

    @property
    def clock(self) -> Callable[[], float]:
        """The clock tokens are minted by (epoch seconds); settable, so tests can move time."""
        return self._clock

    @clock.setter
    def clock(self, value: Callable[[], float]) -> None:
        if not callable(value):
            raise ConfigurationError(f"clock={value!r} is not callable; pass e.g. time.time.", name="clock")
        self._clock = value

    @property
    def requests_per_second(self) -> float | None:
        """The request-rate limit (429 beyond it), or None for no limit; settable."""
        return self._rps

    @requests_per_second.setter
    def requests_per_second(self, value: float | None) -> None:
        if value is not None:
            _positive(value, "requests_per_second")
        self._rps = value

    @property
    def max_concurrent(self) -> int | None:
        """The limit on requests in flight (429 beyond it), or None for no limit; settable."""
        return self._max_concurrent

    @max_concurrent.setter
    def max_concurrent(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigurationError(f"max_concurrent={value!r} must be an integer >= 1 or None.")
        self._max_concurrent = value

    @property
    def latency(self) -> float:
        """Seconds the server waits before answering each admitted request; settable."""
        return self._latency

    @latency.setter
    def latency(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigurationError(f"latency={value!r} must be a number of seconds >= 0.", name="latency")
        self._latency = float(value)

    @property
    def identities(self) -> tuple[EmulatedIdentity, ...]:
        """The identities served, in the order given (the first is the default for :meth:`azureml_environ`)."""
        with self._lock:
            return tuple(self._identities)

    def add_identity(self, identity: EmulatedIdentity) -> None:
        """Serve one more identity (as when one is assigned to a running cluster).

        Raises:
            ConfigurationError: One of its ids is already served, or it is a second system-assigned one.
        """
        with self._lock:
            self._add(identity)

    def _add(self, identity: EmulatedIdentity) -> None:
        if not isinstance(identity, EmulatedIdentity):
            raise ConfigurationError(f"{identity!r} is not an EmulatedIdentity.", name="identities")
        for other in self._identities:
            for what in ("client_id", "object_id", "resource_id"):
                if getattr(other, what).lower() == getattr(identity, what).lower():
                    raise ConfigurationError(
                        f"Identity {identity.name!r} has the same {what} as {other.name!r}; each must be unique.",
                        name="identities",
                    )
        if identity.kind == "system" and any(i.kind == "system" for i in self._identities):
            raise ConfigurationError(
                "A resource has at most one system-assigned identity; pass one EmulatedIdentity.system().",
                name="identities",
            )
        self._identities.append(identity)

    @property
    def secret(self) -> str:
        """The ``MSI_SECRET`` / ``IDENTITY_HEADER`` value clients must send (never in a repr or a log)."""
        return self._secret

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> IdentityEndpoint:
        """Start serving on a free port of ``127.0.0.1``.

        Returns:
            ``self``.

        Raises:
            AmlIdentityError: It is already running.
        """
        if self._server is not None:
            msg = f"{self!r} is already running; stop() it first."
            raise AmlIdentityError(msg)
        self._stopping.clear()
        server = _Server(self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _SHUTDOWN_POLL_S},
            name=f"aml-identity-endpoint:{server.server_port}",
            daemon=True,
        )
        self._thread.start()
        _LOGGER.debug("identity endpoint listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving: release hung requests, close every connection and wait for the server's threads."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        self.release_hangs()
        server.shutdown()
        server.server_close()
        server.close_connections()
        server.join_handlers(_STOP_JOIN_TIMEOUT_S)
        if thread is not None:
            thread.join(_STOP_JOIN_TIMEOUT_S)
        self._server = self._thread = None
        _LOGGER.debug("identity endpoint on port %s stopped", server.server_port)

    def __enter__(self) -> IdentityEndpoint:
        """Start the endpoint."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the endpoint."""
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port it listens on.

        Raises:
            AmlIdentityError: It is not running.
        """
        if self._server is None:
            msg = "The identity endpoint is not running; call start() or use it as a context manager."
            raise AmlIdentityError(msg)
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (raises :class:`AmlIdentityError` when not running)."""
        return f"http://127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        """Describe the endpoint without its secret."""
        where = self.url if self._server is not None else "not running"
        names = [i.name for i in self.identities]
        return f"IdentityEndpoint({where}, identities={names}, requests={self.request_count})"

    # --- client environments ------------------------------------------------------------------------------

    def azureml_environ(self, default: EmulatedIdentity | Literal["first"] | None = "first") -> dict[str, str]:
        """Return what Azure ML sets in a job: ``MSI_ENDPOINT``, ``MSI_SECRET``, ``DEFAULT_IDENTITY_CLIENT_ID``.

        Args:
            default: The compute's default identity: ``"first"`` (the first served identity), an identity,
                or None for a compute with no identity (``DEFAULT_IDENTITY_CLIENT_ID`` is then the literal
                ``clientid``, as Azure ML sets it).

        Returns:
            The variables.
        """
        chosen: EmulatedIdentity | None
        if default == "first":
            served = self.identities
            chosen = served[0] if served else None
        else:
            chosen = default
        return {
            "MSI_ENDPOINT": self.url + self._aml_path,
            "MSI_SECRET": self._secret,
            "DEFAULT_IDENTITY_CLIENT_ID": chosen.client_id if chosen is not None else "clientid",
        }

    def imds_environ(self) -> dict[str, str]:
        """Return ``AZURE_POD_IDENTITY_AUTHORITY_HOST``, which azure-identity and MSAL use instead of IMDS's address."""
        return {"AZURE_POD_IDENTITY_AUTHORITY_HOST": self.url}

    def app_service_environ(self) -> dict[str, str]:
        """Return ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` (App Service, api-version 2019-08-01)."""
        return {"IDENTITY_ENDPOINT": self.url + APP_SERVICE_TOKEN_PATH, "IDENTITY_HEADER": self._secret}

    # --- faults ---------------------------------------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Queue faults: each following token request consumes the next one.

        Requests refused by a rate limit consume none; :meth:`fail_always` takes precedence over the queue.
        """
        for fault in faults:
            if not isinstance(fault, Fault):
                raise ConfigurationError(f"{fault!r} is not a Fault; build one with Fault.status(...) etc.")
        with self._lock:
            self._faults.extend(faults)

    def fail_always(self, fault: Fault | None) -> None:
        """Answer every token request with ``fault`` (ahead of the :meth:`inject` queue) until called with None."""
        if fault is not None and not isinstance(fault, Fault):
            raise ConfigurationError(f"{fault!r} is not a Fault or None.")
        with self._lock:
            self._always = fault

    def release_hangs(self) -> None:
        """Let every request held by a ``hang`` fault go on (it is then answered normally)."""
        with self._changed:
            self._hang_generation += 1
            self._changed.notify_all()

    # --- the request log ---------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the token requests received so far, oldest first."""
        with self._lock:
            return list(self._log)

    @property
    def request_count(self) -> int:
        """How many token requests were received (including refused and faulted ones)."""
        with self._lock:
            return len(self._log)

    def reset_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._log.clear()

    def wait_for_requests(self, count: int, *, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until at least ``count`` requests are recorded (held ``hang`` requests count).

        Args:
            count: How many to wait for.
            timeout: Give up after this many seconds.

        Returns:
            A snapshot of the log.

        Raises:
            TimeoutError: Fewer than ``count`` arrived in time.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._log) >= count, timeout):
                msg = f"{len(self._log)} of {count} token requests reached the identity endpoint in {timeout} s."
                raise TimeoutError(msg)
            return list(self._log)

    def _record(self, request: RecordedRequest, *, replacing: RecordedRequest | None = None) -> None:
        with self._changed:
            if replacing is not None:
                for index, old in enumerate(self._log):
                    if old is replacing:
                        self._log[index] = request
                        break
            else:
                self._log.append(request)
            self._changed.notify_all()

    # --- serving ------------------------------------------------------------------------------------------

    def _admit(self, protocol: Protocol) -> Reply | None:
        """Count the request in, or return the 429 of a limit it is over."""
        with self._lock:
            now = self._monotonic()
            reason = None
            if self._max_concurrent is not None and self._in_flight >= self._max_concurrent:
                reason = f"Too many requests: more than {self._max_concurrent} concurrent token requests."
            elif self._rps is not None:
                while self._window and self._window[0] <= now - _RATE_WINDOW_S:
                    self._window.popleft()
                if len(self._window) >= self._rps:
                    reason = f"Too many requests: more than {self._rps:g} token requests per second."
            if reason is None:
                self._in_flight += 1
                if self._rps is not None:
                    self._window.append(now)
                return None
        return throttled_reply(protocol, reason)

    def _take_fault(self) -> Fault | None:
        with self._lock:
            if self._always is not None:
                return self._always
            return self._faults.popleft() if self._faults else None

    def _hold(self, seconds: float | None) -> None:
        with self._changed:
            generation = self._hang_generation
            self._changed.wait_for(
                lambda: self._hang_generation != generation or self._stopping.is_set(), timeout=seconds
            )

    def _answer(self, protocol: Protocol, method: str, params: Mapping[str, str], headers: Mapping[str, str]) -> Reply:
        if method != "GET":
            return method_not_allowed_reply(protocol, method)
        settings = TokenSettings(
            now=int(self._clock()),
            lifetime=self._token_lifetime,
            refresh_in=self._refresh_in,
            tenant_id=self._tenant_id,
        )
        return answer(protocol, params, headers, identities=self.identities, secret=self._secret, settings=settings)

    def _serve(self, handler: _Handler) -> None:
        split = urlsplit(handler.path)
        handler.drain_body()
        protocol = protocol_for_path(split.path, self._aml_path)
        if protocol is None:
            _LOGGER.warning("identity endpoint: %s %s is not a token path; answered 404", handler.command, split.path)
            handler.send_reply(text_reply(HTTPStatus.NOT_FOUND, f"No token endpoint at {split.path}."))
            return
        params: dict[str, str] = {}
        for name, value in parse_qsl(split.query, keep_blank_values=True):
            params.setdefault(name, value)
        headers = {name.lower(): value for name, value in handler.headers.items()}
        record = RecordedRequest(
            protocol=protocol,
            method=handler.command,
            path=split.path,
            params={k: _MASK if k.lower() in _SECRET_PARAMS else v for k, v in params.items()},
            headers={k: _MASK if k.lower() in _SECRET_HEADERS else v for k, v in handler.headers.items()},
            status=None,
            identity=None,
            user_token=False,
            at=self._clock(),
        )
        refused = self._admit(protocol)
        if refused is not None:
            self._finish(handler, replace(record, status=refused.status, throttled=True), refused)
            return
        try:
            self._serve_admitted(handler, protocol, params, headers, record)
        except Exception:  # a bug in the emulator must show as one, not as a silently dropped connection
            _LOGGER.exception("identity endpoint: internal error answering a %s token request", protocol)
            handler.send_reply(text_reply(HTTPStatus.INTERNAL_SERVER_ERROR, "identity endpoint emulator error"))
            handler.close_connection = True
        finally:
            with self._lock:
                self._in_flight -= 1

    def _serve_admitted(
        self,
        handler: _Handler,
        protocol: Protocol,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        record: RecordedRequest,
    ) -> None:
        fault = self._take_fault()
        if fault is not None and fault.kind == "reset":
            self._record(replace(record, fault="reset"))
            _LOGGER.debug("identity endpoint: %s request reset (injected fault)", protocol)
            handler.reset_connection()
            return
        if fault is not None and fault.kind == "hang":
            held = replace(record, fault="hang")
            self._record(held)
            _LOGGER.debug("identity endpoint: %s request held (injected fault)", protocol)
            self._hold(fault.seconds)
            if self._stopping.is_set() or handler.peer_closed():
                handler.close_connection = True
                return
            reply = self._answer(protocol, handler.command, params, headers)
            self._finish(handler, _answered(held, reply), reply, replacing=held)
            return
        if self._latency:
            self._stopping.wait(self._latency)
        if fault is not None and fault.kind in ("status", "text", "malformed_json"):
            reply = fault.reply()
        else:
            reply = self._answer(protocol, handler.command, params, headers)
            if fault is not None and reply.payload is not None:  # missing_fields, on a token response
                payload = {k: v for k, v in reply.payload.items() if k not in fault.fields}
                reply = replace(
                    json_reply(reply.status, payload, content_type=reply.content_type),
                    identity=reply.identity,
                    user_token=reply.user_token,
                )
        self._finish(handler, replace(_answered(record, reply), fault=fault.kind if fault else None), reply)

    def _finish(
        self,
        handler: _Handler,
        record: RecordedRequest,
        reply: Reply,
        *,
        replacing: RecordedRequest | None = None,
    ) -> None:
        # Record first: a client that has its answer must find its request in the log.
        self._record(record, replacing=replacing)
        _LOGGER.debug(
            "identity endpoint: %s token request for %r -> %s (identity=%s%s%s%s)",
            record.protocol,
            record.params.get("resource"),
            reply.status,
            record.identity.name if record.identity else None,
            ", user token" if record.user_token else "",
            f", fault={record.fault}" if record.fault else "",
            ", throttled" if record.throttled else "",
        )
        handler.send_reply(reply)


def _answered(record: RecordedRequest, reply: Reply) -> RecordedRequest:
    return replace(record, status=reply.status, identity=reply.identity, user_token=reply.user_token)


class _Handler(BaseHTTPRequestHandler):
    """One connection: HTTP/1.1 keep-alive, every method routed to :meth:`IdentityEndpoint._serve`."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm and the client's delayed ACKs each
    # response on a kept-alive connection would wait ~40 ms.
    disable_nagle_algorithm = True
    server_version = "aml-identity-emulator"
    timeout = _IDLE_CONNECTION_TIMEOUT_S
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_GET(self) -> None:
        self.server.endpoint._serve(self)  # noqa: SLF001 - the handler is the endpoint's own

    # Other methods reach the same code, which answers 405 on a token path (as IMDS's spec lists).
    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET  # noqa: N815 - http.server's naming

    def drain_body(self) -> None:
        """Read and drop a request body, so the next request on this connection starts where it should."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)

    def send_reply(self, reply: Reply) -> None:
        """Write ``reply``; a client that has gone away only ends this connection."""
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def reset_connection(self) -> None:
        """Abort the connection with a TCP RST: ``SO_LINGER`` on with 0 s, then close without a shutdown."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # drop the makefile reference so close() below really closes the descriptor
        self.wfile.close()
        self.connection.close()

    def peer_closed(self) -> bool:
        """Return whether the client has hung up (EOF or reset waiting on the socket)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return bool(self.connection.recv(1, socket.MSG_PEEK) == b"")
        except OSError:
            return True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        _LOGGER.debug("identity endpoint %s: %s", self.address_string(), redact(format % args, self.server.secret))


class _Server(ThreadingHTTPServer):
    """The HTTP server: a daemon thread per connection, every connection tracked so stop() can close it."""

    daemon_threads = True
    request_queue_size = _LISTEN_BACKLOG

    def __init__(self, endpoint: IdentityEndpoint) -> None:
        self.endpoint = endpoint
        self.secret = endpoint.secret
        self._tracked_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a reverse DNS lookup); a loopback server needs none.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._process_and_forget, args=(request, client_address), name="aml-identity-endpoint-conn"
        )
        thread.daemon = True
        with self._tracked_lock:
            self._handler_threads.add(thread)
        thread.start()

    def _process_and_forget(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._tracked_lock:
                self._handler_threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002 - socketserver's signature
        # Called from socketserver's except clause: a client that vanished is routine, not a traceback on stderr.
        _LOGGER.debug("identity endpoint: connection from %s failed", client_address, exc_info=True)  # noqa: LOG014

    def track(self, connection: socket.socket) -> None:
        with self._tracked_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._tracked_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut every open connection down, which ends the threads waiting on keep-alive reads."""
        with self._tracked_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its client
                connection.shutdown(socket.SHUT_RDWR)

    def join_handlers(self, timeout: float) -> None:
        with self._tracked_lock:
            threads = list(self._handler_threads)
        for thread in threads:
            thread.join(timeout)
