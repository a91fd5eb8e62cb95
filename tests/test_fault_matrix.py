"""The identity-endpoint fault matrix (docs/reliability.md) still holds, and the fixes it found stay fixed.

The page is written by ``python -m bench faults``. These tests re-run the matrix and fail when a row's
outcome (a token, or which documented error) differs from what the page records, or when a row no longer
ends within DESIGN §3's bound. Request counts and times are on the page for readers; they vary with the
retry jitter, so only the outcome and the bound are compared.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from aml_identity import RetryPolicy, TokenRequestError, default_credential, errors
from aml_identity._fetch import MAX_RESPONSE_BYTES
from aml_identity._tokens import MANDATORY_WINDOW_S, NodeCache, TokenStore, new_token
from aml_identity.testing import FakeClock
from aml_identity.testing.identity_endpoint import Fault

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reliability.md"
STORAGE = "https://storage.azure.com/.default"
_HEADINGS = {
    "### 1 process, sync": "sync-1",
    "### 1 process, async": "async-1",
    "### 16 processes on one node cache, sync": "sync-16",
    "### 16 processes on one node cache, async": "async-16",
}


def recorded_rows() -> list[tuple[str, str, str, str]]:
    """(mode, fault, outcome, within bound) of every row of the page's fault matrix."""
    text = PAGE.read_text()
    section = text[text.index("<!-- bench:faults:start -->") : text.index("<!-- bench:faults:end -->")]
    rows, mode = [], None
    for line in section.splitlines():
        heading = next((m for h, m in _HEADINGS.items() if line.startswith(h)), None)
        if heading:
            mode = heading
        elif mode and line.startswith("| ") and not line.startswith(("| fault", "|---")):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows.append((mode, cells[0], cells[1], cells[-2]))
    return rows


ROWS = recorded_rows()
SINGLE = [r for r in ROWS if r[0].endswith("-1")]
HERD = [r for r in ROWS if r[0].endswith("-16")]


def run_matrix(run_bench, modes: str, tmp_path: Path) -> dict[tuple[str, str], dict]:
    out = tmp_path / "rows.json"
    result = run_bench("faults", "--modes", modes, "--no-write", "--json", str(out), timeout=900)
    assert out.exists(), result.stderr[-3000:]
    return {(r["mode"], r["title"]): r for r in json.loads(out.read_text())}


@pytest.fixture(scope="module")
def single(tmp_path_factory, run_bench):
    return run_matrix(run_bench, "sync-1,async-1", tmp_path_factory.mktemp("matrix"))


@pytest.fixture(scope="module")
def herd(tmp_path_factory, run_bench):
    return run_matrix(run_bench, "sync-16,async-16", tmp_path_factory.mktemp("herd"))


def test_the_page_covers_every_fault_in_every_mode_and_every_row_ends_within_the_bound():
    faults_by_mode = {mode: {r[1] for r in ROWS if r[0] == mode} for mode in _HEADINGS.values()}
    assert len(faults_by_mode["sync-1"]) >= 20
    assert all(faults == faults_by_mode["sync-1"] for faults in faults_by_mode.values()), faults_by_mode
    documented = set(errors.__all__)
    for mode, fault, outcome, within in ROWS:
        assert within == "yes", (mode, fault)
        for part in outcome.split(", "):
            name = re.sub(r"^\d+ x ", "", part)
            assert name == "token" or name in documented, (mode, fault, outcome)


@pytest.mark.parametrize(("mode", "fault", "outcome", "within"), SINGLE, ids=[f"{r[0]}:{r[1]}" for r in SINGLE])
def test_one_process_outcome_matches_the_page(single, mode, fault, outcome, within):
    row = single[mode, fault]
    assert row["outcome"] == outcome, row
    assert row["within_bound"], row
    assert within == "yes"


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "fault", "outcome", "within"), HERD, ids=[f"{r[0]}:{r[1]}" for r in HERD])
def test_sixteen_processes_outcome_matches_the_page(herd, mode, fault, outcome, within):
    row = herd[mode, fault]
    assert row["outcome"] == outcome, row
    assert row["within_bound"], row
    assert within == "yes"


class TestWhatTheMatrixFound:
    def test_a_body_cut_off_by_a_closed_connection_is_retried(self, aml, clock):
        aml.inject(Fault.truncated())
        token = default_credential(clock=clock, sleep=clock.sleep).get_token(STORAGE)
        assert token.token
        assert [r.fault for r in aml.requests] == ["truncated", None]

    def test_an_oversized_answer_is_cut_off_with_an_error_naming_the_cause(self, aml, clock):
        aml.inject(Fault.oversized(4 * MAX_RESPONSE_BYTES))
        with pytest.raises(TokenRequestError) as info:
            default_credential(clock=clock, sleep=clock.sleep).get_token(STORAGE)
        message = str(info.value)
        assert f"stopped reading at {MAX_RESPONSE_BYTES} bytes" in message
        assert aml.url in message and "MSI_ENDPOINT" in message
        assert aml.request_count == 1  # not retried: an oversized answer is not an outage

    def test_a_body_just_under_the_cap_is_a_token(self, aml, clock):
        aml.inject(Fault.oversized(MAX_RESPONSE_BYTES - 1024))
        assert default_credential(clock=clock, sleep=clock.sleep).get_token(STORAGE).token

    def test_expires_on_as_a_date_string_gives_the_right_expiry(self, aml, clock):
        aml.inject(Fault.expires_on_as_date())
        token = default_credential(clock=clock, sleep=clock.sleep).get_token(STORAGE)
        # The credential reports the start of the mandatory window (5 min before the JWT's exp) as the expiry.
        assert token.expires_on == int(clock()) + aml.token_lifetime - MANDATORY_WINDOW_S

    def test_410_for_75_seconds_ends_in_a_token(self, aml, clock):
        aml.fail_always(Fault.status(410), until=clock() + 75)
        start = clock()
        assert default_credential(clock=clock, sleep=clock.sleep).get_token(STORAGE).token
        assert 75 <= clock() - start <= 90
        assert aml.requests[-1].status == 200


class TestWaitersShareAFailedFetch:
    """Callers that waited on a fetch that failed raise its error instead of repeating the whole retry budget."""

    def failing_fetch(self, started, release, calls):
        def fetch():
            calls.append(1)
            started.set()
            release.wait(10)
            raise TokenRequestError(
                "The Azure ML identity endpoint kept answering 503.", identity="x", endpoint="http://127.0.0.1:1",
                status_code=503, attempts=7, retryable=True,
            )  # fmt: skip

        return fetch

    @pytest.mark.parametrize("node", [True, False], ids=["node-cache", "process-cache"])
    def test_threads_waiting_on_a_failed_fetch_raise_its_error_without_fetching(self, tmp_path, node):
        clock = FakeClock()
        store = TokenStore(NodeCache.open(tmp_path / "c") if node else None, clock, lock_timeout=30)
        started, release, calls = threading.Event(), threading.Event(), []
        fetch = self.failing_fetch(started, release, calls)
        errors_seen: list[BaseException] = []
        entered = threading.Semaphore(0)
        look = store._last_failure

        def spy(key):  # every caller notes the failure record before it waits: count them in
            seen = look(key)
            entered.release()
            return seen

        store._last_failure = spy

        def call():
            try:
                store.get("k", fetch)
            except TokenRequestError as exc:
                errors_seen.append(exc)

        first = threading.Thread(target=call)
        first.start()
        started.wait(10)
        waiters = [threading.Thread(target=call) for _ in range(4)]
        for thread in waiters:
            thread.start()
        for _ in range(5):
            assert entered.acquire(timeout=10)
        release.set()
        for thread in [first, *waiters]:
            thread.join(10)
        assert len(calls) == 1
        assert len(errors_seen) == 5
        shared = [e for e in errors_seen if "it was not repeated" in str(e)]
        assert len(shared) == 4
        assert all(e.status_code == 503 and e.retryable and e.attempts == 7 for e in shared)

    def test_a_process_that_waited_on_another_processes_failed_fetch_raises_its_error(self, tmp_path):
        clock = FakeClock()
        waiter = TokenStore(NodeCache.open(tmp_path / "c"), clock, lock_timeout=30)
        fetcher = TokenStore(NodeCache.open(tmp_path / "c"), clock, lock_timeout=30)  # "another process"
        before = waiter._last_failure("k")  # what the waiter saw when it started waiting
        with pytest.raises(TokenRequestError):
            fetcher.get("k", self.failing_fetch(threading.Event(), threading.Event(), []))
        with pytest.raises(TokenRequestError, match="it was not repeated"):
            waiter._raise_if_failed_since("k", before, node=True)

    def test_a_caller_arriving_after_the_failure_tries_again(self, tmp_path):
        clock = FakeClock()
        store = TokenStore(NodeCache.open(tmp_path / "c"), clock, lock_timeout=30)
        release = threading.Event()
        release.set()
        with pytest.raises(TokenRequestError):
            store.get("k", self.failing_fetch(threading.Event(), release, []))
        token = new_token("t", expires_on=int(clock()) + 3600, now=clock())
        assert store.get("k", lambda: token) is token

    def test_a_failed_fetch_is_recorded_privately_on_the_node(self, aml, clock, tmp_path):
        aml.fail_always(Fault.status(503))
        with pytest.raises(TokenRequestError):
            default_credential(clock=clock, sleep=clock.sleep, retry=RetryPolicy(total_timeout=10)).get_token(STORAGE)
        failures = list((tmp_path / "token-cache").glob("*.failed"))
        assert len(failures) == 1
        assert oct(failures[0].stat().st_mode & 0o777) == "0o600"
        assert aml.secret not in failures[0].read_text()
