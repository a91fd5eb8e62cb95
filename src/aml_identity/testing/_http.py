"""The HTTP server plumbing every emulator shares: loopback, threads, TLS, Nagle, records, start/stop.

:class:`IdentityEndpoint <aml_identity.testing.IdentityEndpoint>`, the ARM emulator and
:class:`StorageAuthProxy <aml_identity.testing.StorageAuthProxy>` differ in what they answer, not in how
they serve: each is a :class:`LoopbackServer` (``127.0.0.1``, a daemon thread per connection, every
connection tracked so that stopping closes it, TLS handshakes in the connection's thread), answered by a
:class:`LoopbackHandler` (HTTP/1.1 keep-alive without Nagle's delay, quiet logs), run by a
:class:`BackgroundServer` (``start``/``stop``/``with``), and each keeps what it saw in a :class:`RequestLog`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from typing_extensions import Self

__all__ = ["BackgroundServer", "LoopbackHandler", "LoopbackServer", "RequestLog"]

_LOGGER = logging.getLogger("aml_identity.testing")

# The listen backlog. The herd benchmark opens 128+ connections at once; with the default of 5 the kernel
# would drop SYNs and clients would stall in connect retries that no real endpoint causes.
LISTEN_BACKLOG = 1024
# A client that opens a connection and never completes the TLS handshake must not pin a worker forever.
HANDSHAKE_TIMEOUT_S = 10.0
# serve_forever's shutdown poll: stop() returns within about this long (the stdlib default is 0.5 s; a
# fixture per test must be cheap).
SHUTDOWN_POLL_S = 0.02
# stop() waits at most this long for each connection thread after shutting its socket down.
STOP_JOIN_TIMEOUT_S = 5.0

R = TypeVar("R")


class LoopbackHandler(BaseHTTPRequestHandler):
    """One connection to an emulator: HTTP/1.1 keep-alive, no Nagle delay, TLS handshake here, quiet."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the Azure SDKs' connection pools expect
    # Headers and body go out in separate writes; with Nagle's algorithm and the client's delayed ACKs each
    # response on a kept-alive connection would wait ~40 ms.
    disable_nagle_algorithm = True
    server: LoopbackServer

    def setup(self) -> None:
        """Finish the TLS handshake (in this thread, not the accept loop), then track the connection."""
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(HANDSHAKE_TIMEOUT_S)
            try:
                self.request.do_handshake()
            except (OSError, ssl.SSLError):
                self.close_connection = True
            self.request.settimeout(None)
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        """Flush and close the connection's files, and stop tracking it."""
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        """Stay quiet: the emulators record requests themselves."""

    def reset_connection(self) -> None:
        """Abort the connection with a TCP RST (a scripted fault): ``SO_LINGER`` on with 0 s, close, no shutdown."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # drop the makefile references so close() below really closes the descriptor
        self.wfile.close()
        self.connection.close()


class LoopbackServer(ThreadingHTTPServer):
    """A threaded HTTP(S) server on ``127.0.0.1`` whose connections and threads :meth:`close` ends.

    Args:
        handler: The request handler class (a :class:`LoopbackHandler`).
        port: The port; a free one when 0.
        tls: The server-side TLS context, or None for plain HTTP.
        name: The name of its threads (shown in thread dumps).
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self, handler: type[LoopbackHandler], *, port: int = 0, tls: ssl.SSLContext | None = None, name: str
    ) -> None:
        """Bind and listen (nothing is served until :meth:`serve_forever`)."""
        self.tls = tls
        self.name = name
        self._tracked_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        super().__init__(("127.0.0.1", port), handler)

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server_address[1])

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host (a loopback server needs none)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection; with TLS, wrap it (the handshake runs in the connection's thread)."""
        sock, address = self.socket.accept()
        if self.tls is None:
            return sock, address
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a daemon thread that :meth:`close` can join."""
        thread = threading.Thread(
            target=self._process_and_forget, args=(request, client_address), name=f"{self.name}-conn", daemon=True
        )
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
        """Log at debug level: a client that vanished is routine in tests, not a traceback on stderr."""
        _LOGGER.debug("%s: connection from %s failed", self.name, client_address, exc_info=True)  # noqa: LOG014

    def track(self, connection: socket.socket) -> None:
        """Remember an open connection."""
        with self._tracked_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        """Forget a closed connection."""
        with self._tracked_lock:
            self._connections.discard(connection)

    def close(self, timeout: float = STOP_JOIN_TIMEOUT_S) -> None:
        """Close the listening socket, shut every open connection down and wait for their threads."""
        self.server_close()
        with self._tracked_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its client
                connection.shutdown(socket.SHUT_RDWR)
        with self._tracked_lock:
            threads = list(self._handler_threads)
        for thread in threads:
            thread.join(timeout)


class BackgroundServer:
    """Runs a :class:`LoopbackServer` in a daemon thread: ``start``, ``stop``, ``port`` and ``with``.

    Subclasses build their server in :meth:`_make_server` and may add work before the server stops
    (:meth:`_before_stop`, e.g. releasing held requests) and after (:meth:`_after_stop`).
    """

    _server: LoopbackServer | None = None
    _thread: threading.Thread | None = None

    def _make_server(self) -> LoopbackServer:
        """Create the bound server (called by :meth:`start`)."""
        raise NotImplementedError

    def _before_stop(self) -> None:
        """Called by :meth:`stop` before the server stops."""

    def _after_stop(self) -> None:
        """Called by :meth:`stop` after the server has stopped (also when it was not running)."""

    @property
    def running(self) -> bool:
        """Whether it is serving."""
        return self._server is not None

    def start(self) -> Self:
        """Start serving from a daemon thread (nothing happens when it already is); return ``self``."""
        if self._server is None:
            server = self._make_server()
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, args=(SHUTDOWN_POLL_S,), name=server.name, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: close every connection and wait for the server's threads."""
        server, thread = self._server, self._thread
        if server is not None:
            self._before_stop()
            server.shutdown()
            server.close()
            if thread is not None:
                thread.join(STOP_JOIN_TIMEOUT_S)
            self._server = self._thread = None
        self._after_stop()

    def __enter__(self) -> Self:
        """Start serving."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop serving."""
        self.stop()


class RequestLog(Generic[R]):
    """What an emulator saw, in order; safe to append from many handler threads and to wait on.

    Args:
        lock: The lock to guard it with (an emulator may share its own); a new one when omitted.
    """

    def __init__(self, lock: threading.Lock | None = None) -> None:
        """Create an empty log."""
        self.lock = lock or threading.Lock()
        self.changed = threading.Condition(self.lock)  # notified on every change
        self._items: list[R] = []

    def append(self, item: R, *, replacing: R | None = None) -> None:
        """Record ``item`` (in the place of ``replacing``, the same object, when given)."""
        with self.changed:
            if replacing is not None:
                for index, old in enumerate(self._items):
                    if old is replacing:
                        self._items[index] = item
                        break
            else:
                self._items.append(item)
            self.changed.notify_all()

    def snapshot(self) -> list[R]:
        """A copy of the items, oldest first."""
        with self.lock:
            return list(self._items)

    def clear(self) -> None:
        """Forget every item."""
        with self.lock:
            self._items.clear()

    def __len__(self) -> int:
        """How many items were recorded."""
        with self.lock:
            return len(self._items)

    def count(self, predicate: Callable[[R], bool]) -> int:
        """How many items match ``predicate``."""
        with self.lock:
            return sum(1 for item in self._items if predicate(item))

    def wait_for(self, count: int, *, timeout: float, what: str) -> list[R]:
        """Block until at least ``count`` items are recorded; return a snapshot.

        Raises:
            TimeoutError: Fewer than ``count`` arrived within ``timeout`` seconds; ``what`` names them.
        """
        with self.changed:
            if not self.changed.wait_for(lambda: len(self._items) >= count, timeout):
                msg = f"{len(self._items)} of {count} {what} arrived in {timeout} s."
                raise TimeoutError(msg)
            return list(self._items)
