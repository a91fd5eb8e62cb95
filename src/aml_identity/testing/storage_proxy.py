"""``StorageAuthProxy``: Azure's data-plane role checks in front of Azurite.

Azurite checks a bearer token's issuer, audience and lifetime but no roles: any valid token may read and
write everything. Real storage also checks that the token's identity holds a role granting the request's
data action (``.../containers/blobs/read`` to read or list, ``.../blobs/write`` to write...), and answers
``403 AuthorizationPermissionMismatch`` otherwise. This HTTPS proxy adds that check: it works out what
each request does (read, list, write, delete), asks an ``authorizer`` whether the token's principal (its
``oid`` claim) may do it on the account and container, and either forwards the request to Azurite or
answers exactly as Azure does.

The authorizer is normally the ARM emulator's ``has_data_role``, so that granting a role through the
emulator (or with ``aml_identity.provisioning.grant_data_access``) takes effect at once. Requests without a bearer token
(shared key, SAS) pass through unchecked, as they do in Azure.

It also records every request (method, path, range, status, principal, token) so tests can count what a
client really sent.

**Time**: with ``clock=`` (for example the :class:`~aml_identity.testing.FakeClock` shared with the identity
endpoint emulator), the proxy also checks each bearer token's lifetime against that clock, as storage does
against its own, answering 403 ``AuthenticationFailed`` "Lifetime validation failed. The token is expired."
Then tokens can expire mid-transfer in a test that moves time instead of waiting. Since Azurite checks
lifetimes against the real clock, the proxy forwards such requests with a token re-minted for the same
identity on the real clock.

**Faults**: :meth:`StorageAuthProxy.inject` queues :class:`StorageFault` s, each acted out on one later request
(of a given kind, when it names one): an error status as storage sends it (``503 ServerBusy`` by default,
optionally with ``Retry-After``), a TCP reset before any answer, or a response cut off half-way through its
body. The requests that met a fault are recorded with it (:attr:`ProxiedRequest.fault`, and counted by kind in
:attr:`StorageAuthProxy.faults_acted`), so a test can check that a client really met, and rode out, each one::

    proxy.inject(StorageFault.status(503), StorageFault.reset(), StorageFault.cut(action="read"))
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import jwt

from aml_identity.testing._http import BackgroundServer, LoopbackHandler, LoopbackServer, RequestLog
from aml_identity.testing._jwt import DEFAULT_TENANT_ID, mint_token
from aml_identity.testing._tls import TlsMaterial

__all__ = [
    "DATA_ACTIONS",
    "Action",
    "Authorizer",
    "ProxiedRequest",
    "StorageAuthProxy",
    "StorageFault",
    "StorageFaultKind",
    "classify",
]

Action = Literal["read", "write", "delete", "list"]

# The RBAC permission each kind of request needs, as Azure's built-in role definitions spell it: Storage
# Blob Data Reader grants read and list; Contributor and Owner grant all four.
DATA_ACTIONS: dict[str, str] = {
    "read": "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
    "list": "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
    "write": "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
    "delete": "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
}


class Authorizer(Protocol):
    """``authorizer(principal_id, account_name, action, container=...) -> bool`` (``ArmEmulator.has_data_role``)."""

    def __call__(self, principal_id: str, account_name: str, action: Action, *, container: str | None = None) -> bool:
        """Return whether the principal may do ``action`` on blobs of the account (and container)."""
        ...


# Azure's answer to a request whose identity lacks the role (status reason, code and message verbatim).
_DENIED_REASON = "This request is not authorized to perform this operation using this permission."
_DENIED_CODE = "AuthorizationPermissionMismatch"
_AUTH_FAILED_REASON = (
    "Server failed to authenticate the request. Make sure the value of Authorization header is formed "
    "correctly including the signature."
)
# Lifetime of the tokens the proxy re-mints for Azurite (only with an injected clock): any test's length.
_REMINT_LIFETIME_S = 3600
# Bytes copied per read while streaming bodies through.
_CHUNK = 256 * 1024
# Upstream socket timeout; Azurite answers in milliseconds, so this only bounds a hung test.
_UPSTREAM_TIMEOUT_S = 60.0
# What storage says when it sheds load (code and message as Azure sends them for 503 and 500).
_FAULT_ERRORS: dict[int, tuple[str, str]] = {
    503: ("ServerBusy", "The server is busy."),
    500: ("InternalError", "The server encountered an internal error. Please retry the request."),
}
# Hop-by-hop headers, never forwarded (RFC 9110 section 7.6.1).
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
)


def classify(method: str, path: str, query: str) -> tuple[str, str | None, Action]:
    """Return ``(account, container, action)`` for a path-style Blob service request.

    Args:
        method: The HTTP method.
        path: ``/<account>[/<container>[/<blob>]]`` (percent-decoded).
        query: The query string (``comp=list``, ``restype=container``...).

    Returns:
        The account and container named in the path, and what the request does to blobs: ``list`` (List
        Blobs), ``read`` (Get Blob, properties, block lists; container reads), ``write`` (Put Blob/Block/
        Block List, metadata; creating a container) or ``delete``.
    """
    parts = path.lstrip("/").split("/", 2)
    account = parts[0]
    container = parts[1] if len(parts) > 1 and parts[1] else None
    params = parse_qs(query)
    method = method.upper()
    if method in ("GET", "HEAD"):
        is_listing = params.get("restype") == ["container"] and params.get("comp") == ["list"]
        return account, container, "list" if is_listing else "read"
    if method == "DELETE":
        return account, container, "delete"
    return account, container, "write"


StorageFaultKind = Literal["status", "reset", "cut"]


@dataclass(frozen=True)
class StorageFault:
    """One scripted misbehaviour of storage, acted out by the proxy on one request (:meth:`StorageAuthProxy.inject`).

    Build faults with the class methods.

    Attributes:
        kind: ``status`` answers an error instead of forwarding; ``reset`` aborts the TCP connection before
            answering; ``cut`` forwards, relays the headers and half the body, then aborts the connection.
        code: The status of a ``status`` fault.
        retry_after: Its ``Retry-After`` header (seconds), if any.
        action: Only a request of this kind (``read``, ``list``, ``write``, ``delete``) takes the fault; any
            request when None.
    """

    kind: StorageFaultKind
    code: int = 503
    retry_after: int | None = None
    action: Action | None = None

    @classmethod
    def status(cls, code: int = 503, *, retry_after: int | None = None, action: Action | None = None) -> StorageFault:
        """Answer ``code`` (503 ``ServerBusy`` by default, as storage does when it sheds load)."""
        return cls("status", code=code, retry_after=retry_after, action=action)

    @classmethod
    def reset(cls, *, action: Action | None = None) -> StorageFault:
        """Abort the connection with a TCP RST before answering (the request never reaches Azurite)."""
        return cls("reset", action=action)

    @classmethod
    def cut(cls, *, action: Action | None = "read") -> StorageFault:
        """Forward the request, relay the headers and half the body, then abort the connection."""
        return cls("cut", action=action)


@dataclass(frozen=True)
class ProxiedRequest:
    """One request seen by the proxy.

    Attributes:
        method: The HTTP method.
        path: The URL path (percent-decoded).
        query: The query string.
        range: The ``x-ms-range``/``Range`` header, if any.
        principal: The token's ``oid``, or ``None`` without a bearer token.
        action: What it does to blobs (``read``, ``list``, ``write``, ``delete``).
        status: The status returned to the client.
        token_id: The token's ``uti`` claim (which token was used), if any.
        fault: The injected fault acted out on it, if any.
    """

    method: str
    path: str
    query: str
    range: str | None
    principal: str | None
    action: Action
    status: int
    token_id: str | None = None
    fault: StorageFaultKind | None = None


def _claims(authorization: str | None) -> dict[str, Any] | None:
    """Return the bearer token's claims (unverified), ``{}`` for a malformed one, None without one."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    try:
        claims: dict[str, Any] = jwt.decode(authorization[7:].strip(), options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}  # malformed: let Azurite reject it with its own error
    return claims


def _remint(claims: dict[str, Any]) -> str:
    """Return a token for the same identity and audience, valid now on the real clock (for Azurite)."""
    now = int(time.time())
    return mint_token(
        audience=str(claims.get("aud", "https://storage.azure.com")),
        issued_at=now - 60,
        expires_on=now + _REMINT_LIFETIME_S,
        object_id=str(claims.get("oid", "")),
        client_id=str(claims.get("appid", "")),
        tenant_id=str(claims.get("tid") or DEFAULT_TENANT_ID),
    )


class _Handler(LoopbackHandler):
    server: _Server

    def setup(self) -> None:
        self._upstream: http.client.HTTPSConnection | None = None
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return None

    def _handle(self) -> None:
        proxy = self.server.proxy
        url = urlsplit(self.path)
        path = unquote(url.path)
        account, container, action = classify(self.command, path, url.query)
        claims = _claims(self.headers.get("Authorization"))
        principal = None if claims is None else str(claims.get("oid") or "")
        token_id = None if claims is None else str(claims.get("uti") or "")
        rng = self.headers.get("x-ms-range") or self.headers.get("Range")
        chunked_body = self._read_body()
        fault = proxy.take_fault(action)
        if fault is not None and fault.kind != "cut":
            self._act_out(fault, ProxiedRequest(self.command, path, url.query, rng, principal, action, 0, token_id))
            return
        refusal: tuple[str, str] | None = None
        if claims and proxy.clock is not None and not claims.get("nbf", 0) <= proxy.clock() < claims.get("exp", 0):
            refusal = ("AuthenticationFailed", "Lifetime validation failed. The token is expired.")
        elif principal and not proxy.authorizer(principal, account, action, container=container):
            refusal = (_DENIED_CODE, "")
        if refusal is not None:
            length = int(self.headers.get("Content-Length") or 0)
            while length > 0:  # drain the refused request's body to keep the connection usable
                length -= len(self.rfile.read(min(_CHUNK, length)))
            # Recorded before the client can see the answer, so a test reading `requests` after its call returns
            # sees every request of that call.
            proxy.record(ProxiedRequest(self.command, path, url.query, rng, principal, action, 403, token_id))
            self._deny(*refusal)
            return
        if claims and proxy.clock is not None:
            self.headers.replace_header("Authorization", "Bearer " + _remint(claims))
        response = self._forward(chunked_body)
        cut = fault is not None and response.status < 300 and self.command != "HEAD"  # noqa: PLR2004 - success
        proxy.record(
            ProxiedRequest(self.command, path, url.query, rng, principal, action, response.status, token_id,
                           fault="cut" if cut else None)
        )  # fmt: skip
        if cut:
            self._relay_half_and_abort(response)
            return
        if fault is not None:  # nothing to cut (an error or no body): the fault waits for the next request
            proxy.put_back(fault)
        self._relay(response)

    def _drain(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:
            data = self.rfile.read(min(_CHUNK, length))
            if not data:
                return
            length -= len(data)

    def _act_out(self, fault: StorageFault, seen: ProxiedRequest) -> None:
        """Answer an error status, or reset the connection, instead of forwarding."""
        proxy = self.server.proxy
        if fault.kind == "reset":
            proxy.record(ProxiedRequest(**{**seen.__dict__, "status": 0, "fault": "reset"}))
            self.reset_connection()
            return
        self._drain()
        proxy.record(ProxiedRequest(**{**seen.__dict__, "status": fault.code, "fault": "status"}))
        code, message = _FAULT_ERRORS.get(fault.code, ("InternalError", "Injected fault."))
        request_id = str(uuid.uuid4())
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}\n'
            f"RequestId:{request_id}\nTime:{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}.0000000Z</Message>"
            "</Error>"
        ).encode()
        self.send_response_only(fault.code, message)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-ms-request-id", request_id)
        self.send_header("x-ms-error-code", code)
        if fault.retry_after is not None:
            self.send_header("Retry-After", str(fault.retry_after))
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _relay_half_and_abort(self, response: http.client.HTTPResponse) -> None:
        """Relay the headers and half the body (at most), then reset the connection."""
        self.send_response_only(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.end_headers()
        half = int(response.getheader("Content-Length") or 0) // 2
        while half > 0 and (chunk := response.read(min(_CHUNK, half))):
            self.wfile.write(chunk)
            half -= len(chunk)
        self.wfile.flush()
        response.close()
        if self._upstream is not None:  # the rest of the body is still on that connection: drop it
            self._upstream.close()
            self._upstream = None
        self.reset_connection()

    def _deny(self, code: str, auth_detail: str) -> None:
        request_id = str(uuid.uuid4())
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e7):07d}Z"
        reason = _DENIED_REASON if code == _DENIED_CODE else _AUTH_FAILED_REASON
        detail = f"<AuthenticationErrorDetail>{auth_detail}</AuthenticationErrorDetail>" if auth_detail else ""
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{reason}\n'
            f"RequestId:{request_id}\nTime:{stamp}</Message>{detail}</Error>"
        ).encode()
        self.send_response_only(403, reason)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Server", "Windows-Azure-Blob/1.0 Microsoft-HTTPAPI/2.0")
        self.send_header("x-ms-request-id", request_id)
        self.send_header("x-ms-version", self.headers.get("x-ms-version", "2025-11-05"))
        self.send_header("x-ms-error-code", code)
        self.send_header("Date", formatdate(now, usegmt=True))
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _connection(self) -> http.client.HTTPSConnection:
        if self._upstream is None:
            proxy = self.server.proxy
            self._upstream = http.client.HTTPSConnection(
                proxy.upstream_host, proxy.upstream_port, timeout=_UPSTREAM_TIMEOUT_S, context=proxy.upstream_context
            )
        return self._upstream

    def _forward(self, chunked_body: bytes | None) -> http.client.HTTPResponse:
        proxy = self.server.proxy
        for attempt in range(2):
            conn = self._connection()
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in self.headers.items():
                    if key.lower() in _HOP_BY_HOP or key.lower() in ("host", "content-length"):
                        continue
                    conn.putheader(key, value)
                conn.putheader("Host", proxy.upstream_netloc)
                if chunked_body is not None:
                    conn.putheader("Content-Length", str(len(chunked_body)))
                    conn.endheaders(chunked_body)
                else:
                    length = int(self.headers.get("Content-Length") or 0)
                    if length or self.command in ("PUT", "POST"):
                        conn.putheader("Content-Length", str(length))
                    conn.endheaders()
                    while length > 0:
                        data = self.rfile.read(min(_CHUNK, length))
                        if not data:
                            raise ConnectionError("client closed mid-body")
                        conn.send(data)
                        length -= len(data)
                response = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._upstream = None
                if attempt or (chunked_body is None and int(self.headers.get("Content-Length") or 0)):
                    raise  # a streamed body cannot be sent twice
        return response

    def _relay(self, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
        length_header = response.getheader("Content-Length")
        body: bytes | None = None
        if length_header is None and self.command != "HEAD" and response.status not in (204, 304):
            body = response.read()
            headers.append(("Content-Length", str(len(body))))
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        if body is not None:
            self.wfile.write(body)
        elif self.command != "HEAD":
            while chunk := response.read(_CHUNK):
                self.wfile.write(chunk)
        if response.will_close:
            self._upstream = None

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = do_OPTIONS = _handle  # noqa: N815 - stdlib names


class _Server(LoopbackServer):
    def __init__(self, proxy: StorageAuthProxy, port: int) -> None:
        self.proxy = proxy
        super().__init__(_Handler, port=port, tls=proxy.server_context, name="storage-auth-proxy")


class StorageAuthProxy(BackgroundServer):
    """An HTTPS proxy in front of Azurite that enforces data-plane role assignments.

    Args:
        upstream: Azurite's base URL (``https://127.0.0.1:<port>``; an account path is ignored).
        authorizer: Whether a principal may do an action on an account's blobs (normally
            ``ArmEmulator.has_data_role``; see :class:`Authorizer`).
        tls: The certificate the proxy presents (clients must trust it, as they trust Azurite's).
        upstream_ca: The CA file to verify Azurite with (``tls.cert`` when omitted: the usual case of
            both sharing one certificate).
        port: The port to listen on (a free one when omitted).
        clock: Check token lifetimes against this clock too (see the module docstring).
    """

    def __init__(
        self,
        upstream: str,
        authorizer: Authorizer,
        *,
        tls: TlsMaterial,
        upstream_ca: str | None = None,
        port: int = 0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Configure (not start) the proxy."""
        parts = urlsplit(upstream)
        if parts.scheme != "https" or not parts.hostname:
            msg = f"upstream {upstream!r} must be Azurite's https:// URL"
            raise ValueError(msg)
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 443
        self.upstream_netloc = parts.netloc
        self.upstream_context = ssl.create_default_context(cafile=upstream_ca or str(tls.cert))
        self.server_context = tls.server_context()
        self.authorizer = authorizer
        self.clock = clock
        self._port = port
        self._log: RequestLog[ProxiedRequest] = RequestLog()
        self._faults_lock = threading.Lock()
        self._faults: deque[StorageFault] = deque()

    @property
    def port(self) -> int:
        """The port the proxy listens on (after :meth:`start`)."""
        if self._server is None:
            msg = "the proxy is not started"
            raise RuntimeError(msg)
        return self._server.port

    def blob_endpoint(self, account: str = "devstoreaccount1") -> str:
        """Return the path-style blob endpoint of ``account`` through the proxy."""
        return f"https://127.0.0.1:{self.port}/{account}"

    @property
    def requests(self) -> list[ProxiedRequest]:
        """A snapshot of the requests seen so far, oldest first."""
        return self._log.snapshot()

    def record(self, request: ProxiedRequest) -> None:
        """Remember a request (called by the handler threads)."""
        self._log.append(request)

    def statuses(self) -> Counter[int]:
        """Return how many responses of each status were sent."""
        return Counter(r.status for r in self._log.snapshot())

    def inject(self, *faults: StorageFault) -> None:
        """Queue faults; each is acted out on one later request (the first of its ``action``, if it names one).

        Args:
            *faults: The faults, in order.
        """
        with self._faults_lock:
            self._faults.extend(faults)

    @property
    def faults_pending(self) -> int:
        """How many injected faults have not been acted out yet."""
        with self._faults_lock:
            return len(self._faults)

    def take_fault(self, action: Action) -> StorageFault | None:
        """Remove and return the first queued fault that applies to a request doing ``action`` (handler threads)."""
        with self._faults_lock:
            for fault in self._faults:
                if fault.action is None or fault.action == action:
                    self._faults.remove(fault)
                    return fault
        return None

    def put_back(self, fault: StorageFault) -> None:
        """Return a fault that could not be acted out to the front of the queue (handler threads)."""
        with self._faults_lock:
            self._faults.appendleft(fault)

    @property
    def faults_acted(self) -> Counter[StorageFaultKind]:
        """How many injected faults of each kind were acted out so far."""
        return Counter(r.fault for r in self._log.snapshot() if r.fault is not None)

    def clear(self) -> None:
        """Forget the recorded requests."""
        self._log.clear()

    def _make_server(self) -> _Server:
        return _Server(self, self._port)
