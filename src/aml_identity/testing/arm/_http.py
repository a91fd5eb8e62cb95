"""A small threaded HTTPS server on loopback that hands each request to a Python callable."""

from __future__ import annotations

import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Mapping

__all__ = ["HttpsServer", "Request", "Response"]

# A client that opens a connection and never completes the TLS handshake must not pin a worker forever.
_HANDSHAKE_TIMEOUT_S = 10.0
# How often the serving loop checks for shutdown: stop() returns within this (the stdlib default is 0.5 s).
_SHUTDOWN_POLL_S = 0.02
# Bodies the emulator accepts are small JSON documents; anything bigger is a client bug.
_MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Request:
    """An HTTP request as the emulator sees it.

    Attributes:
        method: Upper-case method.
        path: The URL path, percent-decoding left to the router.
        query: Query parameters (the last value wins, as ARM reads them), keys as sent.
        headers: Header names lower-cased.
        body: The raw body.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """Return the body parsed as JSON (None when empty); raises ``ValueError`` when it is not JSON."""
        if not self.body:
            return None
        return json.loads(self.body)

    def param(self, name: str) -> str | None:
        """Return a query parameter, matching its name case-insensitively (as ARM does)."""
        wanted = name.lower()
        for key, value in self.query.items():
            if key.lower() == wanted:
                return value
        return None


@dataclass
class Response:
    """What to send back: a status, headers and a JSON body (or none)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        """Return the body bytes (empty for None)."""
        return b"" if self.body is None else json.dumps(self.body).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Azure SDKs' connection pools expect
    # Headers and body go out in separate writes; with Nagle's algorithm and the client's delayed ACKs each
    # response would wait ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        self.request.settimeout(_HANDSHAKE_TIMEOUT_S)
        try:
            self.request.do_handshake()
        except (OSError, ssl.SSLError):
            self.close_connection = True
        self.request.settimeout(None)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        """Stay quiet: the emulator records requests itself."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY_BYTES:
            self.send_error(413)
            return
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = Request(
            method=self.command.upper(),
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        response = self.server.app(request)
        payload = response.encode()
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if payload:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-ms-request-id", self.server.next_request_id())
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = do_HEAD = _serve  # noqa: N815 - stdlib names


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, context: ssl.SSLContext, app: Callable[[Request], Response]) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.context = context
        self.app = app
        self._counter = 0
        self._counter_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        # The handshake runs in the worker thread (see _Handler.setup), not in the accept loop.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def next_request_id(self) -> str:
        with self._counter_lock:
            self._counter += 1
            return f"00000000-0000-4000-8000-{self._counter:012d}"


class HttpsServer:
    """Serve ``app`` over HTTPS on ``127.0.0.1`` from a background thread."""

    def __init__(self, app: Callable[[Request], Response], context: ssl.SSLContext, port: int = 0) -> None:
        """Bind the socket (port 0 picks a free one); call :meth:`start` to serve."""
        self._server = _Server(port, context, app)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve from a daemon thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(_SHUTDOWN_POLL_S,), name="aml-arm-emulator", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
