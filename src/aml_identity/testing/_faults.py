"""The identity endpoint's scripted misbehaviours: :class:`Fault` and the queue that hands them out.

:class:`IdentityEndpoint <aml_identity.testing.IdentityEndpoint>` takes one fault per token request from
its :class:`FaultScript` (``inject`` queues them, ``fail_always`` applies one to every request) and acts it
out; what each fault sends is decided here.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import deque
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal

from aml_identity.errors import AmlIdentityError, ConfigurationError
from aml_identity.testing._mi_protocols import Reply, error_code_for, json_reply

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Fault", "FaultKind", "FaultScript"]

FaultKind = Literal[
    "status", "text", "malformed_json", "missing_fields", "hang", "reset", "truncated", "oversized", "date_expiry"
]

# The body of Fault.malformed_json(): JSON cut off mid-object (no token-like text in it).
_MALFORMED_JSON = b'{"token_type": "Bearer", "expires_in": '
_HTTP_STATUS_RANGE = range(100, 600)
# Fault.oversized()'s default size: twice the 1 MiB a client should ever read from a token endpoint.
OVERSIZED_DEFAULT_BYTES = 2 * 1024 * 1024
# App Service 2017's expires_on date format on Linux (mi-protocol.md §1.2), what Fault.expires_on_as_date sends.
_DATE_EXPIRES_ON_FORMAT = "%m/%d/%Y %H:%M:%S +00:00"
# The faults that replace the answer with a canned response.
_CANNED = frozenset({"status", "text", "malformed_json"})


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
        size: The body size an ``oversized`` answer is padded to, in bytes.
    """

    kind: FaultKind
    code: int | None = None
    body: bytes = b""
    content_type: str | None = None
    retry_after: str | None = None
    fields: tuple[str, ...] = ()
    seconds: float | None = None
    size: int = 0

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

    @classmethod
    def truncated(cls) -> Fault:
        """Answer a normal token response whose connection closes halfway through the body.

        The ``Content-Length`` header announces the whole body; the client sees the connection end early
        (as when the endpoint restarts mid-answer).

        Returns:
            The fault.
        """
        return cls(kind="truncated")

    @classmethod
    def oversized(cls, size: int = OVERSIZED_DEFAULT_BYTES) -> Fault:
        """Answer a normal token response padded (an extra ``padding`` field) to at least ``size`` bytes.

        Args:
            size: The body size in bytes (2 MiB by default).

        Returns:
            The fault.

        Raises:
            ConfigurationError: ``size`` is not a positive integer.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ConfigurationError(f"oversized(size={size!r}) must be a positive number of bytes.", name="size")
        return cls(kind="oversized", size=size)

    @classmethod
    def expires_on_as_date(cls) -> Fault:
        """Answer a normal token response whose ``expires_on`` is a date string and that has no ``expires_in``.

        The string is App Service 2017's format (``"06/20/2019 02:57:58 +00:00"``), which Azure ML's async
        clients also accept.

        Returns:
            The fault.
        """
        return cls(kind="date_expiry")

    def reply(self) -> Reply:
        """Return the canned response of a ``status``/``text``/``malformed_json`` fault."""
        if self.code is None or self.content_type is None:
            msg = f"a {self.kind!r} fault has no canned response"
            raise AmlIdentityError(msg)
        headers = (("Retry-After", self.retry_after),) if self.retry_after is not None else ()
        return Reply(self.code, self.body, self.content_type, headers)

    @property
    def canned(self) -> bool:
        """Whether it replaces the answer with a canned response (``status``, ``text``, ``malformed_json``)."""
        return self.kind in _CANNED

    def apply(self, reply: Reply) -> Reply:
        """Return what the endpoint sends instead of ``reply`` (the canned response, or fields removed)."""
        if self.canned:
            return self.reply()
        if reply.payload is None:  # the rest change token responses only
            return reply
        payload: dict[str, Any] | None = None
        if self.kind == "missing_fields":
            payload = {k: v for k, v in reply.payload.items() if k not in self.fields}
        elif self.kind == "date_expiry":
            payload = {k: v for k, v in reply.payload.items() if k != "expires_in"}
            when = dt.datetime.fromtimestamp(int(payload["expires_on"]), tz=dt.timezone.utc)
            payload["expires_on"] = when.strftime(_DATE_EXPIRES_ON_FORMAT)
        elif self.kind == "oversized":
            payload = dict(reply.payload)
            payload["padding"] = "x" * max(0, self.size - len(json.dumps(payload)))
        if payload is not None:
            return replace(
                json_reply(reply.status, payload, content_type=reply.content_type),
                identity=reply.identity,
                user_token=reply.user_token,
            )
        return reply


class FaultScript:
    """The faults queued for the next requests, and the one applied to all of them (thread-safe)."""

    def __init__(self) -> None:
        """Start with no fault."""
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()
        self._always: Fault | None = None
        self._until: float | None = None

    def inject(self, *faults: Fault) -> None:
        """Queue faults: each following request consumes the next one.

        Raises:
            ConfigurationError: One of them is not a :class:`Fault`.
        """
        for fault in faults:
            if not isinstance(fault, Fault):
                raise ConfigurationError(f"{fault!r} is not a Fault; build one with Fault.status(...) etc.")
        with self._lock:
            self._queue.extend(faults)

    def fail_always(self, fault: Fault | None, *, until: float | None = None) -> None:
        """Apply ``fault`` to every request (ahead of the queue) until called with None, or until ``until``.

        Args:
            fault: The fault, or None to stop.
            until: When set, the fault applies only to requests that arrive before this time (by the clock
                passed to :meth:`take`), for example "410 for 75 s".

        Raises:
            ConfigurationError: ``fault`` is neither a :class:`Fault` nor None.
        """
        if fault is not None and not isinstance(fault, Fault):
            raise ConfigurationError(f"{fault!r} is not a Fault or None.")
        with self._lock:
            self._always = fault
            self._until = until

    def take(self, now: float | None = None) -> Fault | None:
        """Return the fault for the request being answered at ``now``, if any."""
        with self._lock:
            if self._always is not None and (self._until is None or now is None or now < self._until):
                return self._always
            return self._queue.popleft() if self._queue else None
