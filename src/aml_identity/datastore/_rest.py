"""A lean client for the handful of Blob service REST calls a bulk transfer makes.

Why not ``azure-storage-blob`` for these calls: measured on the project's 2-core benchmark machine against
Azurite, the SDK's pipeline costs 3-5 ms of client CPU per request and its listing ~450 us per blob, against
~0.3-0.5 ms and ~30-70 us here; for 20,000 small files that is the whole difference between the client and
the server being the bottleneck (see ``docs/performance.md``). So the hot calls - List Blobs, ranged Get
Blob, Put Blob, Put Block, Put Block List - are sent with the standard library's ``http.client`` over
pooled keep-alive TLS connections, reading bodies straight into the caller's buffer. The wire format follows
the Blob service REST reference; the test suite checks it against Azurite and the real SDK.

What this module owns: connection pooling, the ``Authorization`` header, and turning an error response into
:class:`StorageHttpError` (the answers' types and parsers are in :mod:`aml_identity.datastore._blob_answers`,
re-exported here). What it reuses: the token-refresh policy of :mod:`aml_identity._tokens` (the job
credential applies it itself; any other credential is wrapped in it, so no request ever carries a stale
token however long a transfer runs), and the retry loop and ``Retry-After`` parsing of
:mod:`aml_identity._retry`, with storage's own statuses, attempts and budget.
"""

from __future__ import annotations

import http.client
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, TypeVar, cast
from urllib.parse import quote, urlsplit

from aml_identity import __version__
from aml_identity._fork import after_fork_in_child
from aml_identity._retry import RetryPolicy, call_with_retries
from aml_identity.datastore._bearer import STORAGE_SCOPE, BearerToken
from aml_identity.datastore._blob_answers import (
    BlobItem,
    BlobProperties,
    FolderPage,
    StorageHttpError,
    _error_from,
    _properties_from,
    parse_folder_listing,
    parse_listing,
)
from aml_identity.datastore._blob_answers import _http_date as _http_date  # noqa: PLC0414 - the fsspec store's

# The answers' types and parsers live in _blob_answers; callers import them from here as well.
__all__ = [
    "STORAGE_API_VERSION",
    "STORAGE_SCOPE",
    "BearerToken",
    "BlobItem",
    "BlobProperties",
    "BlobRestClient",
    "FolderPage",
    "StorageHttpError",
    "parse_folder_listing",
    "parse_listing",
]

_log = logging.getLogger(__name__)
T = TypeVar("T")

# The Blob service REST version we speak: the newest that Azurite 3.35 implements, and GA in Azure.
STORAGE_API_VERSION = "2025-11-05"
_USER_AGENT = f"aml-identity/{__version__} Python-http.client"

# Statuses worth retrying: timeouts, throttling, and transient server errors (Azure Storage guidance). Not
# 404 or 410 as on the identity endpoint: from storage they are answers, not outages.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Attempts per request (first try included) before giving up: ~45 s of backoff in total.
MAX_ATTEMPTS = 7
# Exponential backoff (waits of 0, ~1, ~3, ~7, ~15, 20 s) with wide jitter: the workers of one transfer are
# throttled together and must not come back in lockstep.
BACKOFF_DELTA_S = 1.0
BACKOFF_MAX_S = 20.0
BACKOFF_JITTER = 0.5
# Longest Retry-After we honour; a longer one is replaced by the backoff so a transfer does not stall for
# minutes on one request.
RETRY_AFTER_MAX_S = 60.0
# Socket timeout for connecting and for each read: a stalled connection is dropped and the request retried.
SOCKET_TIMEOUT_S = 60.0
# Time one request may spend on all its attempts: the attempt count ends retries first; this only bounds
# the case of every attempt stalling until its socket timeout (7 x 60 s, plus the backoff).
RETRY_BUDGET_S = 600.0
# The storage retry policy, run by aml_identity._retry's loop (the one the identity endpoint uses).
STORAGE_RETRY_POLICY = RetryPolicy(
    total_timeout=RETRY_BUDGET_S,
    attempt_timeout=SOCKET_TIMEOUT_S,
    connect_timeout=SOCKET_TIMEOUT_S,
    backoff_delta=BACKOFF_DELTA_S,
    backoff_max=BACKOFF_MAX_S,
    jitter=BACKOFF_JITTER,
    retryable=RETRYABLE_STATUS,
    max_attempts=MAX_ATTEMPTS,
    max_retry_after=RETRY_AFTER_MAX_S,
)
# List Blobs page size: the service maximum, fewest round trips.
LIST_PAGE_SIZE = 5000
_RNG = random.Random()  # noqa: S311 - backoff jitter, not cryptography


@after_fork_in_child
def _reseed_jitter() -> None:
    """Give a forked child its own backoff jitter, so forked workers do not retry storage in lockstep."""
    _RNG.seed()


class _Answer:
    """One response as the retry loop sees it: the status and headers, and what was read or the error."""

    __slots__ = ("_headers", "error", "result", "status")

    def __init__(
        self,
        status: int,
        headers: http.client.HTTPMessage,
        *,
        result: object = None,
        error: StorageHttpError | None = None,
    ) -> None:
        self.status = status
        self._headers = headers
        self.result = result
        self.error = error

    @property
    def status_code(self) -> int:
        """The HTTP status (the name :mod:`aml_identity._retry` reads)."""
        return self.status

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers (read only on a retry, for ``Retry-After``)."""
        return cast("Mapping[str, str]", self._headers)


# How a kept-alive connection that the server has closed (idle timeout, restart) fails when it is used again:
# a request written over TLS to a closed peer fails with SSLEOFError, over plain TCP with a reset or broken pipe,
# and a response never comes (RemoteDisconnected). After a server restart every idle connection of the pool
# fails so; each is dropped and the request resent at once, without spending an attempt on each.
_CLOSED_BY_SERVER = (http.client.RemoteDisconnected, ConnectionError, ssl.SSLEOFError)


def _is_transient(exc: Exception) -> bool:
    """Whether a transport error is worth another attempt (dropped connections, timeouts, TLS errors)."""
    return isinstance(exc, (OSError, http.client.HTTPException))


ConnectionFactory = Callable[[str, int, ssl.SSLContext], http.client.HTTPConnection]
"""Opens a connection to ``(host, port)`` with a TLS context: the HTTP layer storage requests go through."""


def https_connection(host: str, port: int, context: ssl.SSLContext) -> http.client.HTTPConnection:
    """The default :data:`ConnectionFactory`: a keep-alive ``http.client`` HTTPS connection."""
    return http.client.HTTPSConnection(host, port, timeout=SOCKET_TIMEOUT_S, context=context)


class BlobRestClient:
    """Blob service calls against one account endpoint, over a pool of keep-alive connections.

    Thread-safe: every worker thread takes a connection from the pool for one request and returns it.
    """

    def __init__(
        self,
        endpoint: str,
        token: BearerToken,
        *,
        ssl_context: ssl.SSLContext | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = MAX_ATTEMPTS,
        on_request: Callable[[], None] | None = None,
        connection_factory: ConnectionFactory | None = None,
    ) -> None:
        """Create the client.

        Args:
            endpoint: The account's blob endpoint, ``https://<account>.blob.<suffix>`` or path-style
                ``https://127.0.0.1:10000/<account>``.
            token: The bearer token holder.
            ssl_context: TLS settings (default: the system trust store).
            sleep: How to wait between retries (injected by tests).
            max_attempts: Attempts per request, the first included.
            on_request: Called once per response received (counts requests for the transfer's result).
            connection_factory: Opens the connections (:func:`https_connection` by default); swap it to put
                another HTTP layer under the client (a test double, a proxy tunnel, other socket options).
        """
        parts = urlsplit(endpoint)
        if parts.scheme != "https" or not parts.hostname:
            msg = f"blob endpoint {endpoint!r} must be an https:// URL (bearer tokens are never sent in clear)"
            raise ValueError(msg)
        self.endpoint = endpoint.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or 443
        self._base = parts.path.rstrip("/")
        self._host_header = parts.netloc
        self._token = token
        self._ssl = ssl_context or ssl.create_default_context()
        self._sleep = sleep
        self._policy = (
            STORAGE_RETRY_POLICY
            if max_attempts == STORAGE_RETRY_POLICY.max_attempts
            else replace(STORAGE_RETRY_POLICY, max_attempts=max_attempts)
        )
        self._on_request = on_request
        self._connect = connection_factory or https_connection
        self._idle: deque[http.client.HTTPConnection] = deque()
        self._closed = False

    @property
    def token(self) -> BearerToken:
        """The bearer token holder this client authenticates with."""
        return self._token

    def close(self) -> None:
        """Close every pooled connection."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    def blob_path(self, container: str, name: str | None = None) -> str:
        """Return the URL path of a container or blob (percent-encoded, dot segments kept verbatim)."""
        path = f"{self._base}/{container}"
        if name is not None:
            path += "/" + quote(name, safe="/~!$'()*+,;=:@")
        return path

    # -- the request loop ------------------------------------------------------------------------------

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """Return a pooled connection (it has carried a request: ``True``), or a new one (``False``)."""
        try:
            return self._idle.pop(), True
        except IndexError:
            return self._connect(self._host, self._port, self._ssl), False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        if self._closed:
            conn.close()
        else:
            self._idle.append(conn)

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | memoryview | Callable[[Callable[[Any], None]], None] | None = None,
        body_length: int | None = None,
        ok: Iterable[int] = (200,),
        on_response: Callable[[http.client.HTTPResponse], T] | None = None,
        resource: str = "",
    ) -> T | bytes:
        """Send one request, retrying what is worth retrying, and hand a successful response to a reader.

        Retries follow :data:`STORAGE_RETRY_POLICY` through :func:`aml_identity._retry.call_with_retries`
        (``Retry-After`` in seconds or as an HTTP date, and ``x-ms-retry-after-ms``, are honoured).

        Args:
            method: The HTTP method.
            path: The URL path and query (from :meth:`blob_path`).
            headers: Extra request headers.
            body: The request body: bytes, or a function that sends it through the ``send`` callable it is
                given (called again on a retry, so it must be repeatable).
            body_length: The body's length when ``body`` is a function.
            ok: The statuses that mean success.
            on_response: Reads the successful response (it may be called again on a retry, so it must be
                idempotent); by default the body is returned as bytes.
            resource: What the request addresses, for error messages.

        Returns:
            What ``on_response`` returned, or the body.

        Raises:
            StorageHttpError: The service answered an error that is not worth retrying, or retries ran out.
        """
        ok_set = frozenset(ok)
        refreshed = False

        def attempt(_timeout: float) -> _Answer:
            nonlocal refreshed
            while True:
                answer = self._attempt(method, path, headers, body, body_length, ok_set, on_response, resource)
                if answer.status == 401 and not refreshed:  # noqa: PLR2004 - token rejected: ask once more
                    refreshed = True
                    self._token.invalidate()
                    continue
                return answer

        def on_retry(number: int, answer: _Answer | None, error: Exception | None, wait: float) -> None:
            why = f"HTTP {answer.status}" if answer is not None else type(error).__name__
            _log.debug("%s %s failed (%s, attempt %d); retrying in %.1f s", method, resource, why, number, wait)

        outcome = call_with_retries(
            attempt, policy=self._policy, is_transient=_is_transient, clock=time.time, sleep=self._sleep, rng=_RNG,
            on_retry=on_retry,
        )  # fmt: skip
        answer = cast("_Answer | None", outcome.response)
        if answer is None:
            exc = outcome.error
            raise StorageHttpError(0, type(exc).__name__, str(exc), method, resource) from None
        if answer.error is not None:
            raise answer.error
        return cast("T | bytes", answer.result)

    def _attempt(  # noqa: PLR0917 - private, one caller
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None,
        body: bytes | memoryview | Callable[[Callable[[Any], None]], None] | None,
        body_length: int | None,
        ok: frozenset[int],
        on_response: Callable[[http.client.HTTPResponse], Any] | None,
        resource: str,
    ) -> _Answer:
        """Send the request once (again at once on a fresh connection if a kept-alive one was closed)."""
        while True:
            conn, reused = self._take()
            try:
                self._send(conn, method, path, headers, body, body_length)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and isinstance(exc, _CLOSED_BY_SERVER):
                    continue  # the server closed an idle keep-alive connection: resend at once on another one
                raise
            break
        if self._on_request is not None:
            self._on_request()
        status = response.status
        if status in ok:
            try:
                result = on_response(response) if on_response is not None else response.read()
                if not response.isclosed():
                    response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                raise
            self._release(conn, response)
            return _Answer(status, response.headers, result=result)
        try:
            payload = response.read() if method != "HEAD" else b""
        except (OSError, http.client.HTTPException):
            payload = b""
            conn.close()
        else:
            self._release(conn, response)
        return _Answer(status, response.headers, error=_error_from(status, response.headers, payload, method, resource))

    def _release(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        if response.will_close:
            conn.close()
        else:
            self._give_back(conn)

    def _send(  # noqa: PLR0917 - private, one caller
        self,
        conn: http.client.HTTPConnection,
        method: str,
        path: str,
        headers: Mapping[str, str] | None,
        body: bytes | memoryview | Callable[[Callable[[Any], None]], None] | None,
        body_length: int | None,
    ) -> None:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", self._host_header)
        conn.putheader("Authorization", self._token.header())
        conn.putheader("x-ms-version", STORAGE_API_VERSION)
        conn.putheader("User-Agent", _USER_AGENT)
        if headers:
            for key, value in headers.items():
                conn.putheader(key, value)
        if body is None:
            if method in ("PUT", "POST"):
                conn.putheader("Content-Length", "0")
            conn.endheaders()
        elif callable(body):
            conn.putheader("Content-Length", str(body_length))
            conn.endheaders()
            body(conn.send)
        else:
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            conn.send(body)

    # -- operations --------------------------------------------------------------------------------------

    def list_page(self, container: str, prefix: str, marker: str | None) -> tuple[list[BlobItem], str | None]:
        """List one page of blobs under ``prefix`` (flat, with metadata).

        Returns:
            The blobs and the marker of the next page (``None`` after the last page).
        """
        return parse_listing(self._list(container, prefix, marker, delimited=False))

    def get_into(
        self,
        container: str,
        name: str,
        *,
        offset: int,
        length: int,
        etag: str | None,
        sink: Callable[[http.client.HTTPResponse], T],
    ) -> T:
        """Get ``length`` bytes of a blob from ``offset`` and let ``sink`` read them from the response.

        ``If-Match`` pins the ETag, so a blob replaced during the transfer fails with 412 instead of
        mixing two versions in one file.
        """
        headers = {"x-ms-range": f"bytes={offset}-{offset + length - 1}"}
        if etag:
            headers["If-Match"] = f'"{etag}"'
        return self.request(  # type: ignore[return-value]  # on_response given, so its result
            "GET", self.blob_path(container, name), headers=headers, ok=(200, 206), on_response=sink,
            resource=f"{container}/{name}",
        )  # fmt: skip

    def put_blob(
        self,
        container: str,
        name: str,
        body: bytes | memoryview | Callable[[Callable[[Any], None]], None],
        *,
        length: int,
        metadata: Mapping[str, str],
        overwrite: bool,
    ) -> None:
        """Create or replace a block blob in one request (atomic: readers see all of it or none)."""
        headers = {"x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream"}
        headers.update({f"x-ms-meta-{key}": value for key, value in metadata.items()})
        if not overwrite:
            headers["If-None-Match"] = "*"
        self.request(
            "PUT", self.blob_path(container, name), headers=headers, body=body, body_length=length, ok=(201,),
            resource=f"{container}/{name}",
        )  # fmt: skip

    def put_block(
        self,
        container: str,
        name: str,
        block_id: str,
        body: bytes | memoryview | Callable[[Callable[[Any], None]], None],
        *,
        length: int,
    ) -> None:
        """Stage one uncommitted block (invisible to readers until :meth:`put_block_list`)."""
        query = "?comp=block&blockid=" + quote(block_id, safe="")
        self.request(
            "PUT", self.blob_path(container, name) + query, body=body, body_length=length, ok=(201,),
            resource=f"{container}/{name}",
        )  # fmt: skip

    def put_block_list(
        self,
        container: str,
        name: str,
        block_ids: list[str],
        *,
        metadata: Mapping[str, str],
        overwrite: bool,
    ) -> None:
        """Commit staged blocks as the blob's content, atomically."""
        xml = "".join(f"<Latest>{block_id}</Latest>" for block_id in block_ids)
        body = f'<?xml version="1.0" encoding="utf-8"?><BlockList>{xml}</BlockList>'.encode()
        headers = {"Content-Type": "application/xml", "x-ms-blob-content-type": "application/octet-stream"}
        headers.update({f"x-ms-meta-{key}": value for key, value in metadata.items()})
        if not overwrite:
            headers["If-None-Match"] = "*"
        self.request(
            "PUT", self.blob_path(container, name) + "?comp=blocklist", headers=headers, body=body, ok=(201,),
            resource=f"{container}/{name}",
        )  # fmt: skip

    def list_folder_page(self, container: str, prefix: str, marker: str | None) -> FolderPage:
        """List one page of what is directly in the folder ``prefix`` (delimited by ``/``, with metadata)."""
        return parse_folder_listing(self._list(container, prefix, marker, delimited=True))

    def _list(self, container: str, prefix: str, marker: str | None, *, delimited: bool) -> bytes:
        """Send one List Blobs request (with metadata; delimited by ``/`` or flat) and return its XML."""
        delimiter = "&delimiter=%2F" if delimited else ""
        query = f"?restype=container&comp=list{delimiter}&include=metadata&maxresults={LIST_PAGE_SIZE}"
        if prefix:
            query += "&prefix=" + quote(prefix, safe="")
        if marker:
            query += "&marker=" + quote(marker, safe="")
        body = self.request("GET", self.blob_path(container) + query, resource=f"{container}/{prefix}")
        assert isinstance(body, bytes)  # noqa: S101 - no reader given, so the body
        return body

    def get_properties(self, container: str, name: str) -> BlobProperties:
        """Return a blob's ETag, size, time and metadata (Get Blob Properties)."""
        return self.request(  # type: ignore[return-value]  # on_response given, so its result
            "HEAD", self.blob_path(container, name), on_response=_properties_from, resource=f"{container}/{name}"
        )

    def get_blob(self, container: str, name: str) -> bytes:
        """Return a (small) blob's whole content."""
        body = self.request("GET", self.blob_path(container, name), resource=f"{container}/{name}")
        assert isinstance(body, bytes)  # noqa: S101 - no reader given, so the body
        return body

    def delete_blob(self, container: str, name: str) -> None:
        """Delete a blob (404 if there is none)."""
        self.request("DELETE", self.blob_path(container, name), ok=(202,), resource=f"{container}/{name}")
