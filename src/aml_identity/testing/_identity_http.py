"""The identity endpoint's connections: HTTP/1.1 on loopback, each request handed to :class:`IdentityEndpoint`.

What the endpoint answers lives in :mod:`aml_identity.testing.identity_endpoint` (and the protocols in
``_mi_protocols``, the faults in ``_faults``); this module is how it reads requests and writes replies,
including the TCP resets and hang detection the faults need.
"""

from __future__ import annotations

import logging
import select
import socket
from typing import TYPE_CHECKING, Any

from aml_identity.errors import redact
from aml_identity.testing._http import LoopbackHandler, LoopbackServer

if TYPE_CHECKING:
    from aml_identity.testing._mi_protocols import Reply
    from aml_identity.testing.identity_endpoint import IdentityEndpoint

__all__ = ["TokenHandler", "TokenServer"]

_LOGGER = logging.getLogger("aml_identity.testing.identity_endpoint")

# An idle keep-alive connection is closed after this long (clients reconnect transparently), so a client
# that never closes its session cannot pin a server thread for the life of the process.
IDLE_CONNECTION_TIMEOUT_S = 60.0


class TokenHandler(LoopbackHandler):
    """One connection: every method routed to :meth:`IdentityEndpoint._serve`."""

    server_version = "aml-identity-emulator"
    timeout = IDLE_CONNECTION_TIMEOUT_S
    server: TokenServer

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
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

    def send_truncated(self, reply: Reply) -> None:
        """Announce ``reply``'s full length, send half of its body, then close the connection."""
        self.close_connection = True
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body[: len(reply.body) // 2])
            self.wfile.flush()
        except OSError:
            return

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


class TokenServer(LoopbackServer):
    """The endpoint's HTTP server (plain HTTP on loopback, as the platforms' endpoints are)."""

    def __init__(self, endpoint: IdentityEndpoint) -> None:
        self.endpoint = endpoint
        self.secret = endpoint.secret
        super().__init__(TokenHandler, name="aml-identity-endpoint")
