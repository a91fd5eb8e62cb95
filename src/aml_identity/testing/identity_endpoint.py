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

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qsl, urlsplit

from aml_identity._environment import is_guid
from aml_identity.errors import AmlIdentityError, ConfigurationError
from aml_identity.testing._faults import Fault, FaultKind, FaultScript
from aml_identity.testing._http import BackgroundServer, RequestLog
from aml_identity.testing._identities import DEFAULT_SUBSCRIPTION_ID, EmulatedIdentity
from aml_identity.testing._identity_http import TokenHandler, TokenServer
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
    method_not_allowed_reply,
    protocol_for_path,
    text_reply,
    throttled_reply,
)
from aml_identity.testing._secrets import register_secret

if TYPE_CHECKING:
    from typing_extensions import Self

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
    "RecordedTokenRequest",
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
_MASK = "****"
# Request headers and query parameters whose values are secrets: recorded and logged as "****".
_SECRET_HEADERS = frozenset({"secret", "x-identity-header", "authorization"})
_SECRET_PARAMS = frozenset({"secret"})


@dataclass(frozen=True)
class RecordedTokenRequest:
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


class IdentityEndpoint(BackgroundServer):
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
            clock: Epoch seconds for ``iat``/``nbf``/``exp``/``expires_on`` and :attr:`RecordedTokenRequest.at`.
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
        self._log: RequestLog[RecordedTokenRequest] = RequestLog(self._lock)
        self._changed = self._log.changed  # the log grew, or hangs were released
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
        register_secret(self._secret)  # the test suite fails a test that shows it (testing._secrets)
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
        self._faults = FaultScript()
        self._in_flight = 0
        self._window: deque[float] = deque()
        self._hang_generation = 0
        self._stopping = threading.Event()

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

    def start(self) -> Self:
        """Start serving on a free port of ``127.0.0.1``.

        Returns:
            ``self``.

        Raises:
            AmlIdentityError: It is already running.
        """
        if self.running:
            msg = f"{self!r} is already running; stop() it first."
            raise AmlIdentityError(msg)
        self._stopping.clear()
        super().start()
        _LOGGER.debug("identity endpoint listening on %s", self.url)
        return self

    def _make_server(self) -> TokenServer:
        return TokenServer(self)

    def _before_stop(self) -> None:
        """Release hung requests before the connections close."""
        self._stopping.set()
        self.release_hangs()

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
        self._faults.inject(*faults)

    def fail_always(self, fault: Fault | None, *, until: float | None = None) -> None:
        """Answer every token request with ``fault`` (ahead of the :meth:`inject` queue) until called with None.

        Args:
            fault: The fault, or None to stop.
            until: When set, only requests arriving before this time by the endpoint's :attr:`clock` get the
                fault (``fail_always(Fault.status(410), until=clock() + 75)``: "410 for 75 s").
        """
        self._faults.fail_always(fault, until=until)

    def release_hangs(self) -> None:
        """Let every request held by a ``hang`` fault go on (it is then answered normally)."""
        with self._changed:
            self._hang_generation += 1
            self._changed.notify_all()

    # --- the request log ---------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedTokenRequest]:
        """A snapshot of the token requests received so far, oldest first."""
        return self._log.snapshot()

    @property
    def request_count(self) -> int:
        """How many token requests were received (including refused and faulted ones)."""
        return len(self._log)

    def reset_requests(self) -> None:
        """Forget the recorded requests."""
        self._log.clear()

    def wait_for_requests(self, count: int, *, timeout: float = 10.0) -> list[RecordedTokenRequest]:
        """Block until at least ``count`` requests are recorded (held ``hang`` requests count).

        Args:
            count: How many to wait for.
            timeout: Give up after this many seconds.

        Returns:
            A snapshot of the log.

        Raises:
            TimeoutError: Fewer than ``count`` arrived in time.
        """
        return self._log.wait_for(count, timeout=timeout, what="token requests reached the identity endpoint")

    def _record(self, request: RecordedTokenRequest, *, replacing: RecordedTokenRequest | None = None) -> None:
        self._log.append(request, replacing=replacing)

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

    def _serve(self, handler: TokenHandler) -> None:
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
        record = RecordedTokenRequest(
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
        handler: TokenHandler,
        protocol: Protocol,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        record: RecordedTokenRequest,
    ) -> None:
        fault = self._faults.take(record.at)
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
        if fault is not None and fault.canned:
            reply = fault.reply()
        else:
            reply = self._answer(protocol, handler.command, params, headers)
            if fault is not None:
                reply = fault.apply(reply)
        recorded = replace(_answered(record, reply), fault=fault.kind if fault else None)
        if fault is not None and fault.kind == "truncated":
            self._record(recorded)
            _LOGGER.debug("identity endpoint: %s answer cut short (injected fault)", protocol)
            handler.send_truncated(reply)
            return
        self._finish(handler, recorded, reply)

    def _finish(
        self,
        handler: TokenHandler,
        record: RecordedTokenRequest,
        reply: Reply,
        *,
        replacing: RecordedTokenRequest | None = None,
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


def _answered(record: RecordedTokenRequest, reply: Reply) -> RecordedTokenRequest:
    return replace(record, status=reply.status, identity=reply.identity, user_token=reply.user_token)
