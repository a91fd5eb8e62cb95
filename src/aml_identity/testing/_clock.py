"""A fake clock for tests: time moves only when the test (or an injected ``sleep``) moves it."""

from __future__ import annotations

import threading
import time

from aml_identity._fork import after_fork_in_child_while_alive

__all__ = ["FakeClock"]


class FakeClock:
    """A thread-safe fake of ``time.time`` whose :meth:`sleep` advances it instead of waiting.

    Pass ``clock=fake`` and ``sleep=fake.sleep`` to anything in aml-identity that takes them::

        clock = FakeClock()
        credential = default_credential(clock=clock, sleep=clock.sleep)
        clock.advance(12 * 3600)   # half a day later, instantly

    Attributes:
        sleeps: Every duration passed to :meth:`sleep`, in order.
    """

    def __init__(self, start: float | None = None) -> None:
        """Start at ``start`` (epoch seconds; the real current time when omitted)."""
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []
        after_fork_in_child_while_alive(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a credential in a forked child keeps reading its clock

    def __call__(self) -> float:
        """Return the fake current time."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` and return the new time."""
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds: float) -> None:
        """Record ``seconds`` and advance the clock by it (no real waiting)."""
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(0.0, seconds)

    def __repr__(self) -> str:
        """Show the fake time."""
        return f"FakeClock({self._now:.3f})"
