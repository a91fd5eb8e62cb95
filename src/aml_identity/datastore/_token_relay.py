"""Hand any ``TokenCredential``'s tokens to a child process: a loopback token endpoint in the parent.

A mount runs in its own process, so a credential object cannot cross over; a job credential is re-created
there from its identity, but any other credential (azure-identity's, a user's own) has no such recipe. The
relay serves that credential's tokens to the child over the App Service managed-identity protocol
(``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``, api-version 2019-08-01), which the child's own job credential
already speaks: the child asks, the parent's credential answers, and its secrets never leave the parent.

Only this process's children can use it: it listens on ``127.0.0.1`` only and wants a random header secret
that only the child's environment carries.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from aml_identity.errors import redact

if TYPE_CHECKING:
    import subprocess
    from collections.abc import MutableMapping

    from azure.core.credentials import TokenCredential

__all__ = ["CREDENTIAL_FAILED_STATUS", "TokenRelay"]

_log = logging.getLogger(__name__)

# The App Service protocol's token path (any path works for the child; this one reads well in logs).
_TOKEN_PATH = "/msi/token"  # noqa: S105 - a URL path, not a secret
# Variables that would make the child pick another identity source or identity than the relay's.
_OTHER_SOURCES = (
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "DEFAULT_IDENTITY_CLIENT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
)
# The status a credential's failure is answered with: a 4xx, which the child does not retry. The credential
# has already retried by its own policy; retrying its failure again would multiply the waits (90 s per try).
CREDENTIAL_FAILED_STATUS = 400
# How often serve_forever checks for shutdown: the relay stops within this after its child exits.
_SHUTDOWN_POLL_S = 0.1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall
    server: _Server

    def do_GET(self) -> None:
        relay = self.server.relay
        split = urlsplit(self.path)
        params = dict(parse_qsl(split.query))
        given = self.headers.get("X-IDENTITY-HEADER") or ""
        if split.path != _TOKEN_PATH or not hmac.compare_digest(given.encode(), relay.secret.encode()):
            self._reply(401, {"error": "unauthorized", "error_description": "Missing or invalid X-IDENTITY-HEADER."})
            return
        resource = params.get("resource") or ""
        if not resource:
            self._reply(400, {"error": "invalid_request", "error_description": "The resource parameter is missing."})
            return
        try:
            token = relay.credential.get_token(resource.rstrip("/") + "/.default")
        except Exception as exc:  # noqa: BLE001 - any credential failure is the endpoint's error, as on a platform
            _log.warning("token relay: the credential failed for %s: %s", resource, redact(str(exc)))
            description = f"{type(exc).__name__}: {redact(str(exc))}"
            self._reply(CREDENTIAL_FAILED_STATUS, {"error": "credential_failed", "error_description": description})
            return
        self._reply(
            200,
            {
                "access_token": token.token,
                "expires_on": str(int(token.expires_on)),
                "resource": resource,
                "token_type": "Bearer",
            },
        )

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        """Stay quiet: a token request is logged by the child that made it."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, relay: TokenRelay) -> None:
        self.relay = relay
        super().__init__(("127.0.0.1", 0), _Handler)


class TokenRelay:
    """Serves ``credential``'s tokens to child processes over the App Service protocol, on loopback.

    Args:
        credential: Any azure-core ``TokenCredential``.
    """

    def __init__(self, credential: TokenCredential) -> None:
        """Start serving on a free loopback port."""
        self.credential = credential
        self.secret = secrets.token_urlsafe(24)
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(_SHUTDOWN_POLL_S,), name="aml-token-relay", daemon=True
        )
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """The ``IDENTITY_ENDPOINT`` URL of the relay."""
        return f"http://127.0.0.1:{self._server.server_address[1]}{_TOKEN_PATH}"

    def point(self, environ: MutableMapping[str, str]) -> None:
        """Make ``environ`` (a child's environment) take its identity from the relay, and from nowhere else."""
        for name in _OTHER_SOURCES:
            environ.pop(name, None)
        environ["IDENTITY_ENDPOINT"] = self.endpoint
        environ["IDENTITY_HEADER"] = self.secret

    def stop_with(self, process: subprocess.Popen[bytes]) -> None:
        """Stop serving when ``process`` ends (from a daemon thread)."""

        def wait() -> None:
            process.wait()
            self.stop()

        threading.Thread(target=wait, name="aml-token-relay-wait", daemon=True).start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def __repr__(self) -> str:
        """Name the endpoint and the credential, never the secret."""
        return f"TokenRelay({self.endpoint}, credential={type(self.credential).__name__})"
