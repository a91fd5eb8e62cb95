"""The identity endpoint retry policy: Microsoft's guidance, with an injected clock, sleep and random source."""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass, field

import pytest
import requests

from aml_identity._retry import RetryPolicy, call_with_retries, parse_retry_after
from aml_identity.testing import FakeClock


@dataclass
class Reply:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)


class Script:
    """Answers each attempt with the next scripted reply (or raises it), recording when attempts started."""

    def __init__(self, clock: FakeClock, *replies: Reply | Exception) -> None:
        self.clock = clock
        self.replies = list(replies)
        self.started: list[float] = []
        self.timeouts: list[float] = []

    def __call__(self, timeout: float) -> Reply:
        self.started.append(self.clock())
        self.timeouts.append(timeout)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply


def run(script: Script, policy: RetryPolicy | None = None):
    clock = script.clock
    return call_with_retries(
        script,
        policy=policy or RetryPolicy(),
        is_transient=lambda exc: isinstance(exc, (requests.ConnectionError, requests.Timeout)),
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(7),
    )


@pytest.fixture
def clock():
    return FakeClock(1_700_000_000.0)


def test_404_is_retried_on_microsofts_schedule(clock):
    script = Script(clock, Reply(404), Reply(404), Reply(404), Reply(200))
    outcome = run(script)
    assert outcome.response.status_code == 200
    assert outcome.attempts == 4
    # first retry at once, then after ~2 s, then after ~6 s (delta 2 s, +/-20 % jitter)
    gaps = [b - a for a, b in zip(script.started, script.started[1:], strict=False)]
    assert gaps[0] == 0
    assert 1.6 <= gaps[1] <= 2.4
    assert 4.8 <= gaps[2] <= 7.2


def test_backoff_schedule_matches_the_guidance():
    policy, rng = RetryPolicy(jitter=0), random.Random(0)
    assert [policy.backoff(n, rng) for n in range(7)] == [0, 2, 6, 14, 30, 60, 60]


def test_410_is_retried_for_at_least_70_seconds_even_with_a_shorter_budget(clock):
    script = Script(clock, Reply(410))
    outcome = run(script, RetryPolicy(total_timeout=20))
    assert outcome.exhausted
    assert outcome.response.status_code == 410
    assert script.started[-1] - script.started[0] >= 70
    assert outcome.elapsed < 90  # not beyond the floor by more than the last wait


def test_410_then_success_within_the_window(clock):
    outcome = run(Script(clock, Reply(410), Reply(410), Reply(410), Reply(410), Reply(410), Reply(200)))
    assert outcome.response.status_code == 200
    assert outcome.attempts == 6


def test_429_honours_retry_after_seconds(clock):
    script = Script(clock, Reply(429, {"Retry-After": "7"}), Reply(200))
    outcome = run(script)
    assert outcome.response.status_code == 200
    assert clock.sleeps == [7.0]


def test_429_honours_retry_after_as_an_http_date(clock):
    when = email.utils.formatdate(clock() + 12, usegmt=True)
    run(Script(clock, Reply(429, {"retry-after": when}), Reply(200)))
    assert 11 <= clock.sleeps[0] <= 12


def test_retry_after_ms_spellings():
    assert parse_retry_after({"retry-after-ms": "1500"}, 0) == 1.5
    assert parse_retry_after({"x-ms-retry-after-ms": "250"}, 0) == 0.25
    assert parse_retry_after({"Retry-After": "garbage"}, 0) is None
    assert parse_retry_after({}, 0) is None


def test_retry_after_beyond_the_budget_stops_instead_of_hammering(clock):
    script = Script(clock, Reply(429, {"Retry-After": "600"}))
    outcome = run(script)
    assert outcome.exhausted
    assert outcome.attempts == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("status", [400, 401, 403, 405, 409])
def test_other_4xx_are_not_retried(clock, status):
    outcome = run(Script(clock, Reply(status), Reply(200)))
    assert outcome.response.status_code == status
    assert outcome.attempts == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_5xx_and_408_are_retried(clock, status):
    outcome = run(Script(clock, Reply(status), Reply(200)))
    assert outcome.response.status_code == 200
    assert outcome.attempts == 2


def test_the_total_budget_caps_a_persistent_outage(clock):
    script = Script(clock, Reply(503))
    outcome = run(script, RetryPolicy(total_timeout=90))
    assert outcome.exhausted
    assert outcome.elapsed <= 90
    assert script.started[-1] - script.started[0] >= 60  # it did use the budget
    assert 5 <= outcome.attempts <= 8


def test_connection_errors_and_timeouts_are_retried(clock):
    script = Script(clock, requests.ConnectionError("refused"), requests.Timeout("slow"), Reply(200))
    outcome = run(script)
    assert outcome.response.status_code == 200
    assert outcome.attempts == 3


def test_a_hung_endpoint_fails_within_the_budget(clock):
    script = Script(clock, requests.ReadTimeout("no answer"))
    outcome = run(script, RetryPolicy(total_timeout=30, attempt_timeout=5))
    assert outcome.response is None
    assert isinstance(outcome.error, requests.ReadTimeout)
    assert outcome.exhausted
    assert outcome.elapsed <= 30
    # each attempt's read timeout never exceeds the per-attempt bound or the budget left
    assert max(script.timeouts) <= 5


def test_non_transient_errors_propagate(clock):
    with pytest.raises(ValueError, match="bug"):
        run(Script(clock, ValueError("bug")))
