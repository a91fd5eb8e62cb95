"""Reading the identity endpoint's answer: a size-capped body and the expiry fields' many spellings.

:mod:`aml_identity._fetch` sends the requests (through msal) and retries; this module only reads what came
back, so the rules for an answer are in one place: a token response is never buffered beyond
:data:`MAX_RESPONSE_BYTES`, a body cut short is a transient failure, and ``expires_on``/``expires_in``/
``refresh_in`` are read whether they arrive as numbers, numeric strings or App Service's date strings.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests

__all__ = ["EXPIRES_ON_FORMATS", "MAX_RESPONSE_BYTES", "OversizedError", "Received", "parse_epoch", "read_capped"]

# A token response is a few kilobytes (a JWT of 1-3 KB plus five short fields). A body larger than this is
# not a token response (a misrouted proxy, a log dump, an attack): it is cut off, never buffered whole.
MAX_RESPONSE_BYTES = 1024 * 1024
# The body is read in pieces of this size, so an oversized answer costs at most one piece beyond the cap.
READ_CHUNK_BYTES = 64 * 1024
# App Service 2017 and Azure ML's async path send expires_on as a date string (Linux and Windows formats).
EXPIRES_ON_FORMATS = ("%m/%d/%Y %H:%M:%S %z", "%m/%d/%Y %I:%M:%S %p %z")


def parse_epoch(value: object) -> int | None:
    """Read an epoch-seconds field: an int, a finite float, a numeric string or a date string; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        # Python's json reads NaN and Infinity: a time that is no time is absent, not a crash.
        return int(value) if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            return int(number) if math.isfinite(number) else None
        for fmt in EXPIRES_ON_FORMATS:
            try:
                return int(dt.datetime.strptime(text, fmt).timestamp())  # noqa: DTZ007 - both formats end in %z
            except ValueError:  # noqa: PERF203 - two formats, parsed once per token
                continue
    return None


@dataclass(frozen=True)
class Received:
    """One complete response, its body read (at most :data:`MAX_RESPONSE_BYTES`) and the connection released."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    encoding: str | None

    @property
    def text(self) -> str:
        return self.content.decode(self.encoding or "utf-8", errors="replace")


class OversizedError(Exception):
    """The endpoint's answer is larger than :data:`MAX_RESPONSE_BYTES` (not retried)."""

    def __init__(self, status: int, declared: int | None) -> None:
        super().__init__(status, declared)
        self.status = status
        self.declared = declared


def read_capped(response: requests.Response) -> Received:
    """Read a streamed response's body, refusing one larger than :data:`MAX_RESPONSE_BYTES`.

    Raises:
        OversizedError: The body (declared or received) is over the cap; the connection is closed.
        requests.exceptions.ChunkedEncodingError: The connection closed before the declared length arrived.
    """
    try:
        declared_text = response.headers.get("Content-Length")
        declared = int(declared_text) if declared_text and declared_text.isdigit() else None
        if declared is not None and declared > MAX_RESPONSE_BYTES:
            raise OversizedError(response.status_code, declared)
        if response.raw is None:  # a transport adapter that built the body in memory
            content = response.content
            if len(content) > MAX_RESPONSE_BYTES:
                raise OversizedError(response.status_code, len(content))
            return Received(response.status_code, response.headers, content, response.encoding)
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(READ_CHUNK_BYTES):
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise OversizedError(response.status_code, declared)
            chunks.append(chunk)
        return Received(response.status_code, response.headers, b"".join(chunks), response.encoding)
    finally:
        response.close()  # an unread remainder closes the connection instead of being drained
