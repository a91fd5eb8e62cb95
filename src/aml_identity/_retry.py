"""Retries for the identity endpoint, the way Microsoft advises.

Source: "How to use managed identities on a VM to acquire an access token", *Error handling* and *Retry
guidance* (learn.microsoft.com), summarised in ``shared/notes/mi-protocol.md`` §3.1:

* 404 (the endpoint is updating), 408, 429 (throttled), 5xx, timeouts and connection errors: retry with
  exponential backoff; 410 (IMDS is updating): keep retrying for at least 70 seconds.
* Other 4xx: do not retry; ``Retry-After`` is honoured when the endpoint sends it.

No general-purpose retry library fits: the total-time cap with a 410 floor, ``Retry-After`` in three header
spellings, and — for tests — an injected clock, sleep and random source (azure-core's ``RetryPolicy`` reads
``time.time()`` directly) are the whole policy, so it is written here, small and fully tested.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol, TypeVar

__all__ = [
    "RETRYABLE_STATUS",
    "RetryOutcome",
    "RetryPolicy",
    "call_with_retries",
    "parse_retry_after",
]

_log = logging.getLogger("aml_identity.retry")

# Statuses Microsoft's guidance says to retry: 404 "endpoint is updating", 408 timeout, 410 "updating, available
# within 70 s", 429 throttled, and every 5xx ("safe to retry after waiting").
RETRYABLE_STATUS = frozenset({404, 408, 410, 429, *range(500, 600)})
# Total time one token request may spend retrying (DESIGN §3), overridable per credential or with
# AML_IDENTITY_TOKEN_TIMEOUT.
DEFAULT_TOTAL_TIMEOUT_S = 90.0
# IMDS 410 "will be available within 70 seconds": a 410 keeps being retried at least this long, whatever
# the total timeout (azure-identity 1.24 does the same).
GONE_RETRY_FLOOR_S = 70.0
# Microsoft's recommended schedule: delta 2 s, max 60 s -> waits of 0, ~2, ~6, ~14, ~30, 60, 60... seconds.
BACKOFF_DELTA_S = 2.0
BACKOFF_MAX_S = 60.0
# +/-20 % jitter so that the nodes of a cluster, throttled together, do not retry in lockstep.
JITTER_FRACTION = 0.2
# Connecting to a loopback or link-local endpoint takes well under a millisecond; 2 s is azure-identity's
# IMDS connection timeout and tolerates a loaded node.
CONNECT_TIMEOUT_S = 2.0
# A token request normally answers within a second; IMDS can take several on a cold node. An attempt that
# has not answered in 15 s is treated as hung and retried.
ATTEMPT_TIMEOUT_S = 15.0
# Never start an attempt with less time than this left in the budget: it could not complete.
MIN_ATTEMPT_S = 0.1
# Retry-After values above this are treated as "not within this request's budget" rather than slept on.
MAX_RETRY_AFTER_S = 3600.0


class _Response(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


R = TypeVar("R", bound=_Response)


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often to retry the identity endpoint.

    Attributes:
        total_timeout: Seconds one token request may take, retries included (410 gets at least 70 s).
        attempt_timeout: Seconds to wait for one response before treating the attempt as hung.
        connect_timeout: Seconds to wait for the TCP connection.
        backoff_delta: The exponential backoff's unit (waits are ``(2**n - 1) * delta``).
        backoff_max: The longest wait between two attempts.
        jitter: The fraction by which each wait is randomly stretched or shrunk.
        retryable: The HTTP statuses worth another attempt.
        max_attempts: The most attempts, the first included (None: the time budget alone decides).
        max_retry_after: The longest ``Retry-After`` honoured; a longer one is replaced by the backoff.
    """

    total_timeout: float = DEFAULT_TOTAL_TIMEOUT_S
    attempt_timeout: float = ATTEMPT_TIMEOUT_S
    connect_timeout: float = CONNECT_TIMEOUT_S
    backoff_delta: float = BACKOFF_DELTA_S
    backoff_max: float = BACKOFF_MAX_S
    jitter: float = JITTER_FRACTION
    retryable: frozenset[int] = RETRYABLE_STATUS
    max_attempts: int | None = None
    max_retry_after: float = MAX_RETRY_AFTER_S

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Return the wait before retry number ``retry`` (0 for the first retry, as Microsoft advises).

        Args:
            retry: 0 for the first retry, 1 for the second...
            rng: The random source for jitter.

        Returns:
            Seconds to wait.
        """
        base = min(self.backoff_max, float(2**retry - 1) * self.backoff_delta)
        if base <= 0:
            return 0.0
        return base * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Return the wait a response asks for, in seconds, or None when it asks for none.

    Understands ``retry-after-ms`` and ``x-ms-retry-after-ms`` (milliseconds, Azure's spellings) and
    ``Retry-After`` as delta-seconds or an HTTP date.

    Args:
        headers: The response headers (any case).
        now: The current time in epoch seconds, for HTTP dates.

    Returns:
        Seconds (>= 0), or None.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        if name in lower:
            try:
                return max(0.0, float(lower[name]) / 1000.0)
            except ValueError:
                continue
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # noqa: PLC0415 - rare (an HTTP-date Retry-After); email costs ~10 ms to import

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class RetryOutcome:
    """What :func:`call_with_retries` ended with.

    Attributes:
        response: The last response, or None when none came back.
        error: The last transport error (connection refused, timeout...), or None.
        attempts: How many requests were sent.
        elapsed: Seconds spent, by the injected clock.
        exhausted: True when the last response or error was retryable but the budget ran out.
    """

    response: _Response | None
    error: Exception | None
    attempts: int
    elapsed: float
    exhausted: bool


def call_with_retries(
    send: Callable[[float], R],
    *,
    policy: RetryPolicy,
    is_transient: Callable[[Exception], bool],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    rng: random.Random,
    on_retry: Callable[[int, R | None, Exception | None, float], None] | None = None,
    give_up_on_first_error: Callable[[Exception], bool] | None = None,
) -> RetryOutcome:
    """Call ``send`` until it returns a non-retryable response or the time budget is spent.

    The identity endpoint (:mod:`aml_identity._fetch`) and storage (:mod:`aml_identity.datastore._rest`)
    both retry through here, each with its own :class:`RetryPolicy` (statuses, attempts, time budget).

    Args:
        send: Sends one request; takes the read timeout for this attempt and returns the response, or
            raises a transport error.
        policy: The retry policy.
        is_transient: Whether a transport error is worth retrying (connection errors, timeouts).
        clock: Returns the current time in seconds.
        sleep: Waits the given number of seconds.
        rng: The random source for jitter.
        on_retry: Called before each wait with (attempt number, response or None, error or None, wait).
        give_up_on_first_error: When it returns True for the first attempt's transport error, stop at once
            (used for IMDS off Azure: nothing listening means "no identity here", not "retry for 90 s").

    Returns:
        The outcome; the caller turns it into a token or an error.
    """
    start = clock()
    deadline = start + policy.total_timeout
    attempt = 0
    while True:
        attempt += 1
        response: R | None = None
        error: Exception | None = None
        try:
            response = send(max(MIN_ATTEMPT_S, min(policy.attempt_timeout, deadline - clock())))
        except Exception as exc:
            if not is_transient(exc):
                raise
            error = exc
            if attempt == 1 and give_up_on_first_error is not None and give_up_on_first_error(exc):
                return RetryOutcome(None, exc, attempt, clock() - start, exhausted=False)
        now = clock()
        if response is not None and response.status_code not in policy.retryable:
            return RetryOutcome(response, None, attempt, now - start, exhausted=False)
        if response is not None and response.status_code == HTTPStatus.GONE:
            # The last attempt must start no earlier than 70 s after the first one.
            deadline = max(deadline, start + GONE_RETRY_FLOOR_S + MIN_ATTEMPT_S)
        wait = _next_wait(policy, rng=rng, attempt=attempt, response=response, now=now, deadline=deadline)
        if wait is None:
            return RetryOutcome(response, error, attempt, now - start, exhausted=True)
        if on_retry is not None:
            on_retry(attempt, response, error, wait)
        if wait > 0:
            sleep(wait)


def _next_wait(
    policy: RetryPolicy, *, rng: random.Random, attempt: int, response: _Response | None, now: float, deadline: float
) -> float | None:
    """Return how long to wait before the next attempt, or None when the budget does not allow one."""
    if policy.max_attempts is not None and attempt >= policy.max_attempts:
        return None
    wait = policy.backoff(attempt - 1, rng)
    asked = parse_retry_after(response.headers, now) if response is not None else None
    if asked is not None and asked <= policy.max_retry_after:
        wait = asked
    if now + wait + MIN_ATTEMPT_S <= deadline:
        return wait
    # Not enough budget for the full wait: wait what is left and try a last time, unless the endpoint asked
    # for more than that (honour Retry-After rather than hammer a throttled endpoint).
    left = deadline - now - MIN_ATTEMPT_S
    if left <= 0 or asked is not None:
        return None
    return left
