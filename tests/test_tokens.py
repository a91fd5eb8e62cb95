"""The token cache: refresh schedule, node-wide files and their safety rules, and the refresh windows."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import threading

import pytest

from aml_identity._tokens import (
    ADVISORY_RETRY_DELAY_S,
    CachedToken,
    NodeCache,
    TokenState,
    TokenStore,
    UnsafeCacheError,
    cache_key,
    new_token,
)
from aml_identity.errors import AmlIdentityError, TokenRequestError
from aml_identity.testing import FakeClock

T0 = 1_700_000_000
DAY = 86_400
KEY = cache_key("azureml", "http://127.0.0.1:1/MSI/auth", "uai", "https://storage.azure.com", "")


class TestSchedule:
    def test_a_24_hour_token_refreshes_at_half_life(self):
        token = new_token("t", expires_on=T0 + DAY, now=T0)
        assert token.refresh_on == T0 + DAY // 2
        assert token.mandatory_on == T0 + DAY - 300

    def test_a_one_hour_token_refreshes_five_minutes_before_expiry(self):
        token = new_token("t", expires_on=T0 + 3600, now=T0)
        assert token.refresh_on == T0 + 3600 - 300
        assert token.mandatory_on == T0 + 3600 - 300

    def test_the_servers_refresh_in_wins(self):
        assert new_token("t", expires_on=T0 + DAY, now=T0, refresh_in=600).refresh_on == T0 + 600

    def test_a_60_second_token_is_not_refetched_on_every_call(self):
        token = new_token("t", expires_on=T0 + 60, now=T0)
        assert token.refresh_on == T0 + 30
        assert token.mandatory_on == T0 + 45
        assert token.state(T0 + 29) is TokenState.FRESH

    def test_states(self):
        token = new_token("t", expires_on=T0 + DAY, now=T0)
        assert token.state(T0) is TokenState.FRESH
        assert token.state(T0 + DAY // 2) is TokenState.ADVISORY
        assert token.state(T0 + DAY - 200) is TokenState.MANDATORY
        assert token.state(T0 + DAY) is TokenState.EXPIRED

    def test_repr_hides_the_token(self):
        token = new_token("eyJsecret.token.text", expires_on=T0 + DAY, now=T0)
        for shown in (repr(token), repr(token.access_token), repr(token.info), str(token)):
            assert "eyJsecret" not in shown
        assert token.access_token.token == "eyJsecret.token.text"  # still the real token to SDKs

    def test_json_round_trip(self):
        token = new_token("t", expires_on=T0 + DAY, now=T0, refresh_in=10)
        assert CachedToken.from_json(token.to_json()) == token
        assert CachedToken.from_json("{") is None
        assert CachedToken.from_json('{"format": 99}') is None


class TestNodeCacheSafety:
    def test_created_private_and_files_are_0600(self, tmp_path):
        cache = NodeCache.open(tmp_path / "cache")
        assert stat.S_IMODE(cache.directory.stat().st_mode) == 0o700
        cache.write(KEY, new_token("t", expires_on=T0 + DAY, now=T0))
        files = list(cache.directory.iterdir())
        assert [f.name for f in files] == [f"{KEY}.json"]  # no temp file left behind
        assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
        assert cache.read(KEY).token == "t"

    def test_refuses_a_symlinked_directory(self, tmp_path):
        real = tmp_path / "real"
        real.mkdir(mode=0o700)
        (tmp_path / "link").symlink_to(real)
        with pytest.raises(UnsafeCacheError, match="is a symlink"):
            NodeCache.open(tmp_path / "link")

    @pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
    def test_refuses_a_group_or_world_writable_directory(self, tmp_path, mode):
        directory = tmp_path / "cache"
        directory.mkdir()
        directory.chmod(mode)
        with pytest.raises(UnsafeCacheError, match=f"has mode {mode:04o}"):
            NodeCache.open(directory)

    def test_refuses_a_directory_owned_by_another_user(self, tmp_path):
        directory = tmp_path / "cache"
        directory.mkdir(mode=0o700)
        with pytest.raises(UnsafeCacheError, match="is owned by uid"):
            NodeCache.open(directory, uid=os.getuid() + 4242)

    def test_refuses_a_file_owned_by_another_user(self, tmp_path):
        mine = NodeCache.open(tmp_path / "cache")
        mine.write(KEY, new_token("t", expires_on=T0 + DAY, now=T0))
        with pytest.raises(UnsafeCacheError, match=r"cache file .* is owned by uid"):
            NodeCache(mine.directory, uid=os.getuid() + 4242).read(KEY)

    def test_refuses_a_file_readable_by_others(self, tmp_path):
        cache = NodeCache.open(tmp_path / "cache")
        cache.write(KEY, new_token("t", expires_on=T0 + DAY, now=T0))
        (cache.directory / f"{KEY}.json").chmod(0o644)
        with pytest.raises(UnsafeCacheError, match="mode 0644; it must be mode 0600"):
            cache.read(KEY)

    def test_refuses_a_symlinked_file(self, tmp_path):
        cache = NodeCache.open(tmp_path / "cache")
        target = tmp_path / "elsewhere.json"
        target.write_text(new_token("planted", expires_on=T0 + DAY, now=T0).to_json())
        (cache.directory / f"{KEY}.json").symlink_to(target)
        with pytest.raises(UnsafeCacheError, match="is a symlink"):
            cache.read(KEY)

    def test_a_corrupt_file_is_a_miss(self, tmp_path):
        cache = NodeCache.open(tmp_path / "cache")
        path = cache.directory / f"{KEY}.json"
        path.write_text("{truncated")
        path.chmod(0o600)
        assert cache.read(KEY) is None


class Fetcher:
    """A scripted endpoint: counts fetches; can fail, or block until released."""

    def __init__(self, clock: FakeClock, lifetime: int = DAY) -> None:
        self.clock, self.lifetime = clock, lifetime
        self.calls = 0
        self.fail = False
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def __call__(self) -> CachedToken:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.fail:
            raise TokenRequestError("endpoint down", identity="uai", endpoint="http://127.0.0.1:1")
        now = self.clock()
        return new_token(f"token-{self.calls}", expires_on=int(now) + self.lifetime, now=now)


@pytest.fixture
def clock():
    return FakeClock(T0)


def make_store(clock, node=None):
    return TokenStore(node, clock, lock_timeout=5)


class TestWindows:
    def test_a_fresh_token_is_served_without_fetching(self, clock):
        store, fetch = make_store(clock), Fetcher(clock)
        first = store.get(KEY, fetch)
        clock.advance(DAY // 2 - 1)
        assert store.get(KEY, fetch) is first
        assert fetch.calls == 1

    def test_advisory_refresh_replaces_the_token(self, clock):
        store, fetch = make_store(clock), Fetcher(clock)
        store.get(KEY, fetch)
        clock.advance(DAY // 2 + 1)
        assert store.get(KEY, fetch).token == "token-2"

    def test_advisory_failure_keeps_the_valid_token_and_waits_30_s(self, clock, caplog):
        store, fetch = make_store(clock), Fetcher(clock)
        store.get(KEY, fetch)
        clock.advance(DAY // 2 + 1)
        fetch.fail = True
        with caplog.at_level(logging.WARNING, logger="aml_identity.tokens"):
            assert store.get(KEY, fetch).token == "token-1"
        assert fetch.calls == 2
        assert "Proactive token refresh failed" in caplog.text
        clock.advance(ADVISORY_RETRY_DELAY_S - 1)
        assert store.get(KEY, fetch).token == "token-1"
        assert fetch.calls == 2  # not retried within 30 s
        clock.advance(2)
        fetch.fail = False
        assert store.get(KEY, fetch).token == "token-3"

    def test_advisory_refresh_does_not_block_other_callers(self, clock):
        store, fetch = make_store(clock), Fetcher(clock)
        store.get(KEY, fetch)
        clock.advance(DAY // 2 + 1)
        fetch.gate = threading.Event()
        refresher = threading.Thread(target=store.get, args=(KEY, fetch))
        refresher.start()
        assert fetch.entered.wait(10)
        # While one caller is refreshing, another gets the still-valid token at once.
        assert store.get(KEY, fetch).token == "token-1"
        fetch.gate.set()
        refresher.join(10)
        assert store.get(KEY, fetch).token == "token-2"
        assert fetch.calls == 2

    def test_mandatory_window_failure_raises(self, clock):
        store, fetch = make_store(clock), Fetcher(clock)
        store.get(KEY, fetch)
        clock.advance(DAY - 200)  # 200 s before expiry: mandatory
        fetch.fail = True
        with pytest.raises(TokenRequestError, match="endpoint down"):
            store.get(KEY, fetch)

    def test_mandatory_window_callers_share_one_refresh(self, clock):
        store, fetch = make_store(clock), Fetcher(clock)
        store.get(KEY, fetch)
        clock.advance(DAY - 200)
        fetch.gate = threading.Event()
        results: list[str] = []
        callers = [threading.Thread(target=lambda: results.append(store.get(KEY, fetch).token)) for _ in range(8)]
        for caller in callers:
            caller.start()
        assert fetch.entered.wait(10)
        fetch.gate.set()
        for caller in callers:
            caller.join(10)
        assert results == ["token-2"] * 8
        assert fetch.calls == 2

    def test_missing_token_failure_raises(self, clock):
        fetch = Fetcher(clock)
        fetch.fail = True
        with pytest.raises(TokenRequestError):
            make_store(clock).get(KEY, fetch)

    def test_forced_refresh_for_a_claims_challenge(self, clock):
        store, fetch = make_store(clock), Fetcher(clock)
        store.get(KEY, fetch)
        assert store.get(KEY, fetch, force=True).token == "token-2"


class TestHandOutMargin:
    """No caller gets a token with less than its mandatory window left; the expiry callers see is that deadline."""

    def test_callers_see_the_start_of_the_mandatory_window_as_the_expiry(self, clock):
        short = new_token("t", expires_on=T0 + 30, now=T0)
        assert short.access_token.expires_on == short.info.expires_on == short.mandatory_on == T0 + 30 - 7
        day = new_token("t", expires_on=T0 + DAY, now=T0)
        assert day.access_token.expires_on == T0 + DAY - 5 * 60
        assert day.info.refresh_on == T0 + DAY // 2  # refresh_on is unchanged

    def test_a_30_s_token_comes_back_new_when_an_sdk_returns_at_its_reported_expiry(self, clock):
        store, fetch = make_store(clock), Fetcher(clock, lifetime=30)
        first = store.get(KEY, fetch)
        # azure-core keeps a token until min(refresh_on + up to 60 s of jitter, expires_on): the reported expiry.
        clock.advance(first.access_token.expires_on - clock())
        again = store.get(KEY, fetch)
        assert again.token == "token-2"
        assert again.expires_on - clock() == 30

    def test_an_advisory_refresh_that_fails_into_the_mandatory_window_refreshes_before_handing_out(self, clock):
        store, fetch = make_store(clock), Fetcher(clock, lifetime=30)
        store.get(KEY, fetch)
        clock.advance(16)  # advisory (refresh_on = 15 s, mandatory_on = 23 s)

        class SlowFailure:
            """The advisory fetch fails after retries that took 10 s; the next fetch works."""

            def __init__(self) -> None:
                self.calls = 0

            def __call__(self) -> CachedToken:
                self.calls += 1
                if self.calls == 1:
                    clock.advance(10)
                    raise TokenRequestError("endpoint down", identity="uai", endpoint="http://127.0.0.1:1")
                return new_token("token-new", expires_on=int(clock()) + 30, now=clock())

        slow = SlowFailure()
        token = store.get(KEY, slow)
        assert token.token == "token-new"  # not token-1, which has 4 s left
        assert slow.calls == 2

    def test_when_that_refresh_fails_too_the_error_is_raised(self, clock):
        store, fetch = make_store(clock), Fetcher(clock, lifetime=30)
        store.get(KEY, fetch)
        clock.advance(16)

        def failing() -> CachedToken:
            clock.advance(10)
            raise TokenRequestError("endpoint down", identity="uai", endpoint="http://127.0.0.1:1")

        with pytest.raises(TokenRequestError, match="endpoint down"):
            store.get(KEY, failing)


class TestNodeSharing:
    def test_a_second_process_reads_the_first_ones_token(self, clock, tmp_path):
        directory = tmp_path / "cache"
        first, second = make_store(clock, NodeCache.open(directory)), make_store(clock, NodeCache.open(directory))
        fetch = Fetcher(clock)
        assert first.get(KEY, fetch).token == "token-1"
        assert second.get(KEY, fetch).token == "token-1"
        assert fetch.calls == 1

    def test_an_advisory_failure_is_remembered_node_wide(self, clock, tmp_path):
        directory = tmp_path / "cache"
        first, second = make_store(clock, NodeCache.open(directory)), make_store(clock, NodeCache.open(directory))
        fetch = Fetcher(clock)
        first.get(KEY, fetch)
        clock.advance(DAY // 2 + 1)
        fetch.fail = True
        assert first.get(KEY, fetch).token == "token-1"
        assert second.get(KEY, fetch).token == "token-1"
        assert fetch.calls == 2  # the other process did not hammer the endpoint again

    def test_the_newest_token_on_the_node_is_used(self, clock, tmp_path):
        directory = tmp_path / "cache"
        first, second = make_store(clock, NodeCache.open(directory)), make_store(clock, NodeCache.open(directory))
        fetch = Fetcher(clock)
        first.get(KEY, fetch)
        second.get(KEY, fetch)
        clock.advance(DAY // 2 + 1)
        assert first.get(KEY, fetch).token == "token-2"  # first refreshed in the advisory window
        assert second.get(KEY, fetch).token == "token-2"  # second picks it up from the node cache
        assert fetch.calls == 2


class WatchedNodeCache(NodeCache):
    """A node cache that says when a caller starts waiting for another process's fetch."""

    def __init__(self, directory) -> None:
        super().__init__(directory)
        self.waiting = threading.Event()

    def wait_unlocked(self, name: str, timeout: float) -> bool:
        self.waiting.set()
        return super().wait_unlocked(name, timeout)


def watched(directory) -> WatchedNodeCache:
    NodeCache.open(directory)
    return WatchedNodeCache(directory)


# A process that takes the node lock of one token and holds it until it is killed (a fetcher that dies).
HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


class TestWaitingForAnotherProcess:
    """A cold miss in several processes: one fetches, the others sleep until it is done and read its token."""

    def test_a_waiting_process_wakes_when_the_fetch_ends_and_reads_its_token(self, clock, tmp_path):
        directory = tmp_path / "cache"
        node = watched(directory)
        fetcher, waiter = make_store(clock, NodeCache.open(directory)), make_store(clock, node)
        fetch = Fetcher(clock)
        fetch.gate = threading.Event()
        results: dict[str, str] = {}
        first = threading.Thread(target=lambda: results.update(first=fetcher.get(KEY, fetch).token))
        first.start()
        assert fetch.entered.wait(10)
        second = threading.Thread(target=lambda: results.update(second=waiter.get(KEY, fetch).token))
        second.start()
        assert node.waiting.wait(10)  # the second process found the lock taken and sleeps on it
        fetch.gate.set()
        first.join(10)
        second.join(10)
        assert results == {"first": "token-1", "second": "token-1"}
        assert fetch.calls == 1

    def test_a_waiter_fetches_itself_when_the_fetching_process_dies(self, clock, tmp_path):
        directory = tmp_path / "cache"
        node = watched(directory)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(directory / f"{KEY}.lock")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert holder.stdout.readline().strip() == "locked"
            store, fetch = make_store(clock, node), Fetcher(clock)
            result: list[str] = []
            waiter = threading.Thread(target=lambda: result.append(store.get(KEY, fetch).token))
            waiter.start()
            assert node.waiting.wait(10)
            holder.send_signal(signal.SIGKILL)  # the kernel releases a dead process's lock
            waiter.join(10)
        finally:
            holder.kill()
            holder.wait(10)
        assert result == ["token-1"]
        assert fetch.calls == 1

    def test_a_waiter_gives_up_after_the_lock_timeout_and_names_the_lock(self, clock, tmp_path):
        directory = tmp_path / "cache"
        other = NodeCache.open(directory)
        store = TokenStore(NodeCache.open(directory), clock, lock_timeout=0.05)
        fetch = Fetcher(clock)
        with other.try_lock(KEY) as acquired:
            assert acquired
            with pytest.raises(AmlIdentityError, match=rf"{KEY}\.lock\). Is a process stuck"):
                store.get(KEY, fetch)
        assert fetch.calls == 0
        assert store.get(KEY, fetch).token == "token-1"  # once the holder lets go, the next call fetches
