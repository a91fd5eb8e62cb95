"""The identity-endpoint fault matrix: every scripted misbehaviour, sync and async, 1 process and 16 processes.

For each fault the emulator (:class:`aml_identity.testing.IdentityEndpoint`) acts out, one row records what
the caller ends with (a token, or which :mod:`aml_identity.errors` class), how many requests reached the
endpoint, and the time to that outcome on the injected clock. Time is injected everywhere: the credential
and the emulator share a fake clock whose ``sleep`` advances it, so a row that retries for 90 s runs in
about a second. Two things cost real time and are charged to the clock by the harness:

* a hang: the harness's HTTP session waits :data:`REAL_HANG_WAIT_S` of real time for an answer that never
  comes, then charges the full read timeout the credential asked for (15 s by default) to the clock;
* the 16-process rows: real processes sharing one node cache directory and one clock in a memory-mapped
  file (:mod:`bench._shared_clock`); their wall time is in the table for information only.

Run: ``python -m bench faults`` (``--modes sync-1,async-1`` for the single-process rows only). Writes the
``faults`` section of ``docs/reliability.md``; ``tests/test_fault_matrix.py`` fails when a row's outcome
changes from what that page records.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests

from aml_identity import aio
from aml_identity._retry import DEFAULT_TOTAL_TIMEOUT_S, GONE_RETRY_FLOOR_S, MIN_ATTEMPT_S
from aml_identity._tokens import MANDATORY_WINDOW_S, SHORT_TOKEN_MANDATORY_FRACTION
from aml_identity.credential import default_credential
from aml_identity.errors import AmlIdentityError
from aml_identity.testing import FakeClock
from aml_identity.testing.identity_endpoint import Fault, IdentityEndpoint
from bench._report import machine, update_section, versions
from bench._shared_clock import SharedClock

ROOT = Path(__file__).resolve().parents[1]
RELIABILITY_MD = ROOT / "docs" / "reliability.md"
WORKER = Path(__file__).with_name("fault_worker.py")
SCOPE = "https://storage.azure.com/.default"
# The 16-process rows: as many ranks as a large GPU node runs.
PROCESSES = 16
MODES = ("sync-1", "async-1", "sync-16", "async-16")
# Real seconds the harness waits for an answer before treating an attempt as hung (see the module docstring);
# a normal answer from the emulator takes milliseconds even on a loaded 2-core machine.
REAL_HANG_WAIT_S = 1.0
# Five minutes: the clock skew between a node and its identity endpoint the matrix tolerates.
SKEW_S = 300
_HEADER = (
    "# Reliability\n\n"
    "What a job sees when the identity endpoint or storage misbehaves. Every table here is written by a script "
    "in `bench/` that anyone can re-run (the command is under each table); the tests fail when an outcome "
    "changes from what this page records.\n"
)


Arrange = Callable[[IdentityEndpoint, Callable[[], float]], None]


@dataclass(frozen=True)
class Scenario:
    """One row of the matrix.

    Attributes:
        key: A short id (used by the worker and the test).
        title: The fault, as the table shows it.
        arrange: Scripts the endpoint (given the endpoint and the clock at the start).
        at_least: The shortest time the row must retry for (410: 70 s).
    """

    key: str
    title: str
    arrange: Arrange
    at_least: float = 0.0


def _inject(*faults: Fault) -> Arrange:
    return lambda endpoint, _clock: endpoint.inject(*faults)


def _always(fault: Fault, *, for_seconds: float | None = None) -> Arrange:
    def arrange(endpoint: IdentityEndpoint, clock: Callable[[], float]) -> None:
        endpoint.fail_always(fault, until=None if for_seconds is None else clock() + for_seconds)

    return arrange


def _skew(seconds: float) -> Arrange:
    def arrange(endpoint: IdentityEndpoint, clock: Callable[[], float]) -> None:
        endpoint.clock = lambda: clock() + seconds

    return arrange


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("404-burst", "404 x 5, then 200", _inject(*[Fault.status(404)] * 5)),
    Scenario("404-always", "404 on every request", _always(Fault.status(404))),
    Scenario("410-75s", "410 for 75 s, then 200", _always(Fault.status(410), for_seconds=75),
             GONE_RETRY_FLOOR_S),
    Scenario("410-always", "410 on every request", _always(Fault.status(410)), GONE_RETRY_FLOOR_S),
    Scenario("429-retry-after", "429 + `Retry-After: 5` x 3, then 200",
             _inject(*[Fault.status(429, retry_after=5)] * 3)),
    Scenario("429-no-retry-after", "429 without `Retry-After` x 3, then 200", _inject(*[Fault.status(429)] * 3)),
    Scenario("429-always", "429 + `Retry-After: 5` on every request", _always(Fault.status(429, retry_after=5))),
    Scenario("500-streak", "500 x 4, then 200", _inject(*[Fault.status(500)] * 4)),
    Scenario("503-streak", "503 x 4, then 200", _inject(*[Fault.status(503)] * 4)),
    Scenario("503-always", "503 on every request", _always(Fault.status(503))),
    Scenario("hang-once", "hang longer than the 15 s attempt timeout, once", _inject(Fault.hang())),
    Scenario("hang-always", "hang on every request", _always(Fault.hang())),
    Scenario("reset-x2", "connection reset x 2, then 200", _inject(Fault.reset(), Fault.reset())),
    Scenario("truncated", "200 body cut off halfway (connection closed), once", _inject(Fault.truncated())),
    # Answers that are not retried are scripted on every request: with 16 processes, one that starts waiting only
    # after the first failure was recorded asks again (by design), and must meet the same fault.
    Scenario("malformed-json", "200 with malformed JSON", _always(Fault.malformed_json())),
    Scenario("text-plain-500", "500 `text/plain` x 2, then 200", _inject(*[Fault.text(500, "InternalError")] * 2)),
    Scenario("no-access-token", "200 without `access_token`", _always(Fault.missing_fields("access_token"))),
    Scenario("no-expiry", "200 without `expires_on` and `expires_in`",
             _always(Fault.missing_fields("expires_on", "expires_in"))),
    Scenario("date-expires-on", "`expires_on` as a date string (no `expires_in`)", _inject(Fault.expires_on_as_date())),
    Scenario("skew-plus-5min", "endpoint clock 5 min ahead", _skew(SKEW_S)),
    Scenario("skew-minus-5min", "endpoint clock 5 min behind", _skew(-SKEW_S)),
    Scenario("oversized", "200 with a 2 MiB body", _always(Fault.oversized())),
)  # fmt: skip
BY_KEY = {s.key: s for s in SCENARIOS}


@dataclass
class Row:
    """One measured row.

    Attributes:
        key: The scenario's key.
        mode: ``sync-1``, ``async-1``, ``sync-16`` or ``async-16``.
        outcome: ``token`` or an error class name; with 16 processes, counts such as ``16 x token``.
        requests: Requests that reached the endpoint.
        seconds: Time to the outcome on the injected clock (the slowest process with 16).
        wall: Wall-clock seconds (information only; never asserted).
        detail: The error's message (first sentence) or a note.
        within_bound: Whether the outcome came within the budget (and, for 410, after retrying 70 s).
        outcomes: Per-process outcome counts (16-process rows).
    """

    key: str
    mode: str
    outcome: str
    requests: int
    seconds: float
    wall: float
    detail: str = ""
    within_bound: bool = True
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """The scenario's title, as the table shows it."""
        return BY_KEY[self.key].title


class HangChargingSession(requests.Session):
    """A ``requests.Session`` that waits at most :data:`REAL_HANG_WAIT_S` for an answer and charges a hang's
    full read timeout to the injected clock (see the module docstring)."""

    def __init__(self, advance: Callable[[float], object]) -> None:
        """Create the session.

        Args:
            advance: Moves the injected clock forward by the given seconds.
        """
        super().__init__()
        self.trust_env = False
        self._advance = advance

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        """Send, waiting at most :data:`REAL_HANG_WAIT_S` of real time for the answer."""
        timeout = kwargs.get("timeout")
        if isinstance(timeout, tuple):
            connect, read = timeout
            kwargs["timeout"] = (connect, min(float(read), REAL_HANG_WAIT_S))
            try:
                return super().request(method, url, *args, **kwargs)
            except requests.ReadTimeout:
                self._advance(float(read))
                raise
        return super().request(method, url, *args, **kwargs)


_GUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PORT_RE = re.compile(r"127\.0\.0\.1:\d+")
_PID_RE = re.compile(r"process \d+")
# The table quotes this much of an error message (the cause; the fix is in the library's docs).
_DETAIL_CHARS = 150


def first_sentence(text: str) -> str:
    """The first sentence of an error message, for the table (ids, ports and pids made run-independent)."""
    end = text.find(". ")
    sentence = (text if end < 0 else text[: end + 1]).replace("|", "/").replace("\n", " ")
    sentence = _PID_RE.sub("process N", _PORT_RE.sub("127.0.0.1:PORT", _GUID_RE.sub("GUID", sentence)))
    return sentence if len(sentence) <= _DETAIL_CHARS else sentence[: _DETAIL_CHARS - 3] + "..."


def observe(get: Callable[[], Any], clock: Callable[[], float], count: Callable[[], int]) -> dict[str, Any]:
    """Ask for a token; report the outcome, the injected time it took, and whether a second call is cached."""
    start = clock()
    try:
        token = get()
    except AmlIdentityError as exc:
        return {"outcome": type(exc).__name__, "seconds": clock() - start, "detail": first_sentence(str(exc))}
    except Exception as exc:
        return {"outcome": f"undocumented {type(exc).__name__}", "seconds": clock() - start, "detail": str(exc)[:200]}
    seconds = clock() - start
    claims = jwt.decode(token.token, options={"verify_signature": False})
    exp = int(claims["exp"])
    # The credential reports the hand-out deadline, the start of the token's mandatory window, as its expiry
    # (aml_identity._tokens: an SDK that keeps the token until then never sends it in its last moments).
    lifetime = exp - int(claims.get("iat", exp))
    use_by = exp - min(MANDATORY_WINDOW_S, int(lifetime * SHORT_TOKEN_MANDATORY_FRACTION))
    before = count()
    again = get()
    outcome = "token"
    detail = ""
    if token.expires_on != use_by:
        outcome, detail = "token with a wrong expiry", f"expires_on {token.expires_on} != {use_by} (exp {exp})"
    elif count() != before or again.token != token.token:
        outcome, detail = "token, fetched again on the next call", ""
    return {"outcome": outcome, "seconds": seconds, "detail": detail}


@contextlib.contextmanager
def job_environ(endpoint: IdentityEndpoint, cache_dir: Path) -> Iterator[dict[str, str]]:
    """Set the Azure ML job environment in ``os.environ`` (msal reads it there), restoring it afterwards."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("MSI_", "IDENTITY_", "AZURE_", "DEFAULT_IDENTITY", "AML_IDENTITY_")):
            del os.environ[name]
    environ = {
        **endpoint.azureml_environ(),
        "AML_IDENTITY_CACHE_DIR": str(cache_dir),
        "AML_IDENTITY_LOOPBACK_ONLY": "1",
    }
    os.environ.update(environ)
    try:
        yield environ
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_single(scenario: Scenario, mode: str) -> Row:
    """Run one scenario in this process, sync or async."""
    clock = FakeClock()
    wall = time.perf_counter()
    with (
        IdentityEndpoint(clock=clock) as endpoint,
        tempfile.TemporaryDirectory() as tmp,
        job_environ(endpoint, Path(tmp) / "cache"),
    ):
        scenario.arrange(endpoint, clock)
        session = HangChargingSession(clock.advance)
        if mode == "sync-1":
            credential = default_credential(clock=clock, sleep=clock.sleep, session=session)
            result = observe(lambda: credential.get_token(SCOPE), clock, lambda: endpoint.request_count)
        else:
            async_credential = aio.default_credential(clock=clock, sleep=clock.sleep, session=session)

            async def get() -> Any:
                return await async_credential.get_token(SCOPE)

            result = observe(lambda: asyncio.run(get()), clock, lambda: endpoint.request_count)
        endpoint.fail_always(None)
        endpoint.release_hangs()
        requests_sent = endpoint.request_count
    row = Row(scenario.key, mode, requests=requests_sent, wall=time.perf_counter() - wall, **result)
    row.within_bound = within_bound(scenario, row.outcome, row.seconds)
    return row


def within_bound(scenario: Scenario, outcome: str, seconds: float) -> bool:
    """Whether the outcome is documented and came within DESIGN §3's bound (and 410's 70 s floor)."""
    budget = max(DEFAULT_TOTAL_TIMEOUT_S, scenario.at_least + MIN_ATTEMPT_S)
    documented = "undocumented" not in outcome and "wrong" not in outcome
    floor_ok = "token" in outcome or seconds >= scenario.at_least
    return documented and floor_ok and seconds <= budget + MIN_ATTEMPT_S


def _send(worker: subprocess.Popen[str], line: str) -> None:
    if worker.stdin is None:
        raise RuntimeError("fault worker has no stdin pipe")
    worker.stdin.write(line + "\n")
    worker.stdin.flush()


def _receive(worker: subprocess.Popen[str]) -> str:
    if worker.stdout is None:
        raise RuntimeError("fault worker has no stdout pipe")
    return worker.stdout.readline().strip()


def run_herd(scenario: Scenario, mode: str, workers: list[subprocess.Popen[str]], tmp: Path) -> Row:
    """Run one scenario in every worker process at once, sharing one node cache and one clock."""
    clock_file = tmp / f"{scenario.key}-{mode}.clock"
    clock = SharedClock(clock_file, start=time.time())
    clock.expect(len(workers))
    wall = time.perf_counter()
    try:
        with IdentityEndpoint(clock=clock) as endpoint:
            scenario.arrange(endpoint, clock)
            environ = {
                **endpoint.azureml_environ(),
                "AML_IDENTITY_CACHE_DIR": str(tmp / f"{scenario.key}-{mode}.cache"),
                "AML_IDENTITY_LOOPBACK_ONLY": "1",
            }
            command = {"mode": mode.split("-", maxsplit=1)[0], "clock": str(clock_file), "environ": environ}
            for worker in workers:
                _send(worker, json.dumps(command))
            for worker in workers:
                line = _receive(worker)
                if line != "ready":
                    raise RuntimeError(f"fault worker said {line!r} instead of 'ready'")
            for worker in workers:
                _send(worker, "go")
            results = [json.loads(_receive(worker)) for worker in workers]
            endpoint.fail_always(None)
            endpoint.release_hangs()
            requests_sent = endpoint.request_count
    finally:
        clock.close()
    counts = Counter(r["outcome"] for r in results)
    outcome = ", ".join(f"{n} x {name}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    seconds = max(r["seconds"] for r in results)
    details = sorted({r["detail"] for r in results if r["detail"]}, key=len)
    row = Row(scenario.key, mode, outcome, requests_sent, seconds, time.perf_counter() - wall,
              details[0] if details else "", outcomes=dict(counts))  # fmt: skip
    row.within_bound = all(within_bound(scenario, r["outcome"], r["seconds"]) for r in results)
    return row


def start_workers(count: int) -> list[subprocess.Popen[str]]:
    """Start the worker processes (they import aml-identity once and run one scenario per command)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MSI_", "IDENTITY_", "AZURE_"))}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER)], env=environ, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]


def run(modes: tuple[str, ...], keys: tuple[str, ...] | None = None) -> list[Row]:
    """Run the matrix for ``modes`` (and only the scenarios ``keys``, when given)."""
    scenarios = [s for s in SCENARIOS if keys is None or s.key in keys]
    rows: list[Row] = []
    for mode in modes:
        if mode.endswith("-1"):
            rows.extend(run_single(s, mode) for s in scenarios)
            continue
        workers = start_workers(PROCESSES)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                rows.extend(run_herd(s, mode, workers, Path(tmp)) for s in scenarios)
        finally:
            for worker in workers:
                if worker.stdin is not None:
                    worker.stdin.close()
            for worker in workers:
                worker.wait(timeout=60)
    return rows


def _requests_cell(row: Row) -> str:
    return str(row.requests)


def render(rows: list[Row]) -> str:
    """The markdown section: one table per mode."""
    lines = [
        "## Identity endpoint faults",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; {versions('msal', 'requests', 'azure-core')}.",
        (
            "Command: `python -m bench faults` (`bench/faults.py`). Emulator: `aml_identity.testing.IdentityEndpoint`, "
            "Azure ML protocol; default policy (90 s budget, 15 s per attempt, 410 retried at least 70 s)."
        ),
        "",
        (
            "Time to outcome is on the injected clock shared by the credential and the emulator (retry waits advance "
            f"it; a hang's 15 s read timeout is charged to it after {REAL_HANG_WAIT_S:g} s of real waiting). "
            '"token" means the reported expiry is the one its `exp` claim implies (`exp` less the mandatory '
            "window, the hand-out margin) and the next call is served from the cache without a request. Every row "
            "must end in a token or an `aml_identity.errors` class within 90 s "
            "(410: after at least 70 s); the last column says whether it did."
        ),
        "",
    ]
    titles = {
        "sync-1": "### 1 process, sync (`default_credential`)",
        "async-1": "### 1 process, async (`aml_identity.aio.default_credential`)",
        "sync-16": f"### {PROCESSES} processes on one node cache, sync",
        "async-16": f"### {PROCESSES} processes on one node cache, async",
    }
    for mode in MODES:
        mode_rows = [r for r in rows if r.mode == mode]
        if not mode_rows:
            continue
        lines += [titles[mode], ""]
        if mode.endswith("-16"):
            lines += [
                (
                    "Real processes started together on a cold cache, sharing the injected clock through a file; "
                    "time is the slowest process's, wall time is for information only. Processes that were waiting "
                    "while another one fetched share its token or its error; a failure that comes without retries "
                    "(malformed, incomplete or oversized answers) can end before a late process starts waiting, "
                    "and that process asks once more, so those rows show 1 or 2 requests."
                ),
                "",
                "| fault | outcome | endpoint requests | time to outcome (s) | wall (s) | within bound | detail |",
                "|---|---|---:|---:|---:|---|---|",
            ]
            lines += [
                f"| {BY_KEY[r.key].title} | {r.outcome} | {_requests_cell(r)} | {r.seconds:.1f} | {r.wall:.1f} | "
                f"{'yes' if r.within_bound else '**no**'} | {r.detail} |"
                for r in mode_rows
            ]
        else:
            lines += [
                "| fault | outcome | endpoint requests | time to outcome (s) | within bound | detail |",
                "|---|---|---:|---:|---|---|",
            ]
            lines += [
                f"| {BY_KEY[r.key].title} | {r.outcome} | {_requests_cell(r)} | {r.seconds:.1f} | "
                f"{'yes' if r.within_bound else '**no**'} | {r.detail} |"
                for r in mode_rows
            ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Run the matrix and write its section of ``docs/reliability.md``."""
    parser = argparse.ArgumentParser(prog="python -m bench faults", description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--only", default="", help="comma-separated scenario keys (default: all)")
    parser.add_argument("--output", type=Path, default=RELIABILITY_MD, help="the page to update")
    parser.add_argument("--no-write", action="store_true", help="do not update the page")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {MODES}")
    keys = tuple(k for k in args.only.split(",") if k) or None
    rows = run(modes, keys)
    for row in rows:
        print(f"{row.mode:8} {row.key:20} {row.outcome:40} requests={row.requests:3} t={row.seconds:6.1f}s "
              f"wall={row.wall:5.1f}s {'' if row.within_bound else 'OUT OF BOUND'}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([{**asdict(r), "title": r.title} for r in rows], indent=1))
    if not args.no_write:
        update_section("faults", render(rows), path=args.output, header=_HEADER)
    return 0 if all(r.within_bound for r in rows) else 1
