"""The ARM emulator's HTTPS server: hands each request to a Python callable (plumbing: ``testing/_http.py``)."""

from __future__ import annotations

import json
import ssl
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from aml_identity.testing._http import LoopbackHandler, LoopbackServer

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["ArmServer", "Request", "Response"]

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


class _Handler(LoopbackHandler):
    server: ArmServer

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


class ArmServer(LoopbackServer):
    """The emulator's HTTPS server on loopback: each request goes to ``app``."""

    def __init__(self, port: int, context: ssl.SSLContext, app: Callable[[Request], Response]) -> None:
        """Bind ``127.0.0.1:port`` (a free port when 0) with TLS ``context``."""
        super().__init__(_Handler, port=port, tls=context, name="aml-arm-emulator")
        self.app = app
        self._counter = 0
        self._counter_lock = threading.Lock()

    def next_request_id(self) -> str:
        """A fresh ``x-ms-request-id``."""
        with self._counter_lock:
            self._counter += 1
            return f"00000000-0000-4000-8000-{self._counter:012d}"
