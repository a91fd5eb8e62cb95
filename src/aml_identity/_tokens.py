"""The token cache: in-process and node-wide, with single-flight fetches and a two-window refresh policy.

* **In-process**: a hit is a dictionary read and a clock compare — no lock, no I/O.
* **Node-wide**: every process of the job on one node shares one directory of token files, so N ranks cost
  one endpoint request per (identity, resource, tenant) per token lifetime. On a miss one process fetches
  under an exclusive ``fcntl.flock`` (released by the kernel if the process dies) while the others block on a
  shared lock of the same file, so they all wake the moment the fetch ends and read what it wrote.
* **Refresh**: a token is *fresh* until ``refresh_on``; then, in the *advisory* window, one caller refreshes
  while the others keep using the valid token and a failure is only logged (and not retried for 30 s);
  in the *mandatory* window (the last 5 minutes) callers block on one refresh and a failure raises.
* **Hand-out margin**: a token is never handed out with less than its mandatory window left (5 min, or a
  quarter of the lifetime for tokens under 20 min). The ``expires_on`` that callers see (``AccessToken``,
  ``AccessTokenInfo``) is therefore the start of that window, not the JWT's ``exp``: azure-core's bearer
  policy keeps a token until ``min(refresh_on + up to 60 s of jitter, expires_on)``, so reporting the real
  expiry let it send a 30 s token in its last second, which storage rejected in flight (401/403, not
  retried). A caller that comes back at the reported expiry finds the token in its mandatory window and
  gets a new one first.

The directory is per user, in tmpfs when there is one, mode 0700; files are 0600 and written atomically.
A directory or file that another user owns, that is group/world-writable, or that is reached through a
symlink is refused: the store then keeps tokens in-process only and logs one warning naming the path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from aml_identity._cached_token import (
    ADVISORY_RETRY_DELAY_S,
    CACHE_FORMAT,
    HALF_LIFE_MIN_LIFETIME_S,
    MANDATORY_WINDOW_S,
    REFRESH_BEFORE_EXPIRY_S,
    SHORT_TOKEN_MANDATORY_FRACTION,
    SHORT_TOKEN_REFRESH_FRACTION,
    CachedToken,
    FetchFailure,
    TokenState,
    new_token,
)
from aml_identity._private import UnsafeCacheError, check_owned_private, ensure_private_dir
from aml_identity.errors import AmlIdentityError

# The token record and the policy constants live in _cached_token; they are re-exported here, where callers
# and tests have always imported them from.
__all__ = [
    "ADVISORY_RETRY_DELAY_S",
    "CACHE_FORMAT",
    "HALF_LIFE_MIN_LIFETIME_S",
    "MANDATORY_WINDOW_S",
    "NODE_LOCK_WAIT_MARGIN_S",
    "REFRESH_BEFORE_EXPIRY_S",
    "SHORT_TOKEN_MANDATORY_FRACTION",
    "SHORT_TOKEN_REFRESH_FRACTION",
    "TOKEN_FILE_PREFIX",
    "CachedToken",
    "FetchFailure",
    "NodeCache",
    "TokenState",
    "TokenStore",
    "UnsafeCacheError",
    "default_cache_dir",
    "new_token",
]

_log = logging.getLogger("aml_identity.tokens")

# How long a process waits for another process's fetch before giving up; longer than the identity endpoint's
# total retry budget (90 s by default), so a waiter never gives up on a fetch that is still retrying.
NODE_LOCK_WAIT_MARGIN_S = 30.0
# How every token file's name starts (then the key's digest, then ".json").
TOKEN_FILE_PREFIX = "tok-"  # noqa: S105 - a file name, not a secret
# The suffix of the file recording a node's last failed fetch of a token (see FetchFailure).
_FAILURE_SUFFIX = ".failed"


def default_cache_dir(cache_dir: str | None, xdg_runtime_dir: str | None) -> Path:
    """Return the node cache directory: the override, else tmpfs, else the user's runtime or cache dir.

    Args:
        cache_dir: ``AML_IDENTITY_CACHE_DIR``, if set.
        xdg_runtime_dir: ``XDG_RUNTIME_DIR``, if set.

    Returns:
        The directory (not created).
    """
    if cache_dir:
        return Path(cache_dir)
    uid = os.getuid()
    shm = Path("/dev/shm")  # noqa: S108 - tmpfs on Linux: tokens never touch a disk
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm / f"aml-identity-{uid}"
    if xdg_runtime_dir:
        return Path(xdg_runtime_dir) / "aml-identity"
    return Path.home() / ".cache" / "aml-identity"


class NodeCache:
    """Token files shared by the processes of one user on one node."""

    def __init__(self, directory: Path, *, uid: int | None = None) -> None:
        """Use ``directory`` (call :meth:`open` to create and check it).

        Args:
            directory: The cache directory.
            uid: The user who must own it and its files (this process's user when omitted).
        """
        self.directory = directory
        self.uid = os.getuid() if uid is None else uid
        self._lock_fds: set[int] = set()  # lock files open now (closed in a forked child)

    @classmethod
    def open(cls, directory: Path, *, uid: int | None = None) -> NodeCache:
        """Create ``directory`` if needed (0700) and check it is safe.

        Args:
            directory: The cache directory.
            uid: The user who must own it (this process's user when omitted).

        Returns:
            The cache.

        Raises:
            UnsafeCacheError: It is a symlink, owned by someone else, or group/world-writable.
        """
        cache = cls(directory, uid=uid)
        ensure_private_dir(directory, uid=cache.uid)
        return cache

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def read(self, name: str) -> CachedToken | None:
        """Return the token stored under ``name``, or None when there is none (or it is unreadable).

        Raises:
            UnsafeCacheError: The file is a symlink, someone else's, or readable by others.
        """
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if path.is_symlink():
                raise UnsafeCacheError(f"cache file {path} is a symlink") from None
            _log.debug("cannot read token cache file %s: %s", path, exc.strerror)
            return None
        with os.fdopen(fd, "r", encoding="utf-8") as f:
            check_owned_private(os.fstat(f.fileno()), path, is_dir=False, uid=self.uid)
            return CachedToken.from_json(f.read())

    def write(self, name: str, token: CachedToken) -> None:
        """Store ``token`` under ``name`` atomically (a 0600 temp file renamed into place)."""
        self._write_atomic(self._path(name), token.to_json())

    def _write_atomic(self, path: Path, text: str) -> None:
        """Write ``text`` to ``path`` through a 0600 temp file of this process and thread, renamed into place."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read_failure(self, name: str) -> FetchFailure | None:
        """Return the last failed fetch recorded for ``name``, or None (a symlink or foreign file is ignored)."""
        path = self.directory / f"{name}{_FAILURE_SUFFIX}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        with os.fdopen(fd, "r", encoding="utf-8") as f:
            try:
                check_owned_private(os.fstat(f.fileno()), path, is_dir=False, uid=self.uid)
            except UnsafeCacheError:
                return None
            return FetchFailure.from_json(f.read())

    def write_failure(self, name: str, failure: FetchFailure) -> None:
        """Record a failed fetch for ``name`` atomically (0600, like the token files)."""
        self._write_atomic(self.directory / f"{name}{_FAILURE_SUFFIX}", failure.to_json())

    def _open_lock(self, name: str) -> int:
        fd = os.open(self.directory / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._lock_fds.add(fd)
        return fd

    def _close_lock(self, fd: int) -> None:
        self._lock_fds.discard(fd)
        os.close(fd)

    @contextlib.contextmanager
    def try_lock(self, name: str) -> Iterator[bool]:
        """Hold the node-wide lock for ``name`` if no other process holds it; yields whether it was acquired.

        The lock is an exclusive ``flock`` on ``<name>.lock``: the kernel releases it if this process dies.
        """
        fd = self._open_lock(name)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)  # explicit: a child forked meanwhile shares the open file
        finally:
            self._close_lock(fd)

    def wait_unlocked(self, name: str, timeout: float) -> bool:
        """Block until no process holds the lock for ``name``; False if that takes longer than ``timeout``.

        A blocking shared ``flock`` wakes every waiter the moment the holder releases (or dies), instead of
        each polling. It runs in a helper thread so the wait is bounded; on timeout the helper stays blocked
        until the holder lets go (or this process exits) and then closes its file.
        """
        fd = self._open_lock(name)
        released = threading.Event()

        def wait() -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                self._close_lock(fd)
                released.set()

        threading.Thread(target=wait, name="aml-identity-node-lock-wait", daemon=True).start()
        return released.wait(timeout)

    def after_fork(self) -> None:
        """Close lock files inherited from the parent, so a lock held there is released when the parent lets go.

        A child keeping the parent's open lock file would keep a fetcher's lock held after the fetcher dies.
        Closing (never unlocking) leaves the parent's own lock alone.
        """
        fds, self._lock_fds = self._lock_fds, set()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


Fetch = Callable[[], CachedToken]


class TokenStore:
    """Tokens by key, in this process and (optionally) node-wide, with single-flight refreshes."""

    def __init__(self, node: NodeCache | None, clock: Callable[[], float], lock_timeout: float) -> None:
        """Create a store.

        Args:
            node: The node-wide cache, or None for an in-process store.
            clock: Returns the current time in epoch seconds.
            lock_timeout: The longest a process waits for another process's fetch.
        """
        self.node = node
        self.memory: dict[str, CachedToken] = {}
        self._clock = clock
        self._lock_timeout = lock_timeout
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._failed_at: dict[str, float] = {}
        self._failures: dict[str, FetchFailure] = {}

    def after_fork(self) -> None:
        """Drop locks inherited from the parent process; keep the tokens (they are still valid)."""
        self._guard = threading.Lock()
        self._locks = {}
        if self.node is not None:
            self.node.after_fork()

    def _lock_for(self, key: str) -> threading.Lock:
        lock = self._locks.get(key)
        if lock is None:
            with self._guard:
                lock = self._locks.setdefault(key, threading.Lock())
        return lock

    def _newest(self, key: str) -> CachedToken | None:
        """The newer of the in-memory and node-cache tokens for ``key``."""
        mem = self.memory.get(key)
        node = self.node
        if node is None:
            return mem
        try:
            disk = node.read(key)
        except UnsafeCacheError as exc:
            self._refuse_node(exc)
            return mem
        if disk is None:
            return mem
        if mem is None or disk.expires_on > mem.expires_on or disk.refresh_failed_at != mem.refresh_failed_at:
            self.memory[key] = disk
            return disk
        return mem

    def get(self, key: str, fetch: Fetch, *, force: bool = False) -> CachedToken:
        """Return a usable token for ``key``, fetching it when the policy says so.

        The hot path (an in-memory token before its ``refresh_on``) is handled by the caller; this is the
        slow path.

        Args:
            key: The cache key (a hex digest; also the node cache file name).
            fetch: Fetches a new token from the endpoint (raises on failure).
            force: Fetch a new token even if the cached one is fresh (a claims challenge).

        Returns:
            The token to use.

        Raises:
            AmlIdentityError: The fetch failed in the mandatory window or with no token at all.
        """
        seen = self.memory.get(key)
        current = self._newest(key)
        if not force and current is not None:
            state = current.state(self._clock())
            if state is TokenState.FRESH:
                return current
            if state is TokenState.ADVISORY:
                token = self._advisory(key, current, fetch)
                if token.state(self._clock()) in (TokenState.FRESH, TokenState.ADVISORY):
                    return token
                # A failed (or slow) advisory refresh ran into the mandatory window: never hand out a token
                # with less than the margin left; block on a refresh instead, as the mandatory window does.
        return self._mandatory(key, fetch, stale=seen if force else None)

    def _advisory(self, key: str, current: CachedToken, fetch: Fetch) -> CachedToken:
        now = self._clock()
        failed = max(current.refresh_failed_at or 0, self._failed_at.get(key, 0))
        if now < failed + ADVISORY_RETRY_DELAY_S:
            return current
        lock = self._lock_for(key)
        if not lock.acquire(blocking=False):
            return current  # another thread of this process is refreshing
        try:
            with self._node_lock(key) as acquired:
                if not acquired:
                    return current  # another process is refreshing
                latest = self._newest(key) or current
                if latest.state(self._clock()) is TokenState.FRESH:
                    return latest
                try:
                    token = fetch()
                except AmlIdentityError as exc:
                    failed_at = self._clock()
                    self._failed_at[key] = failed_at
                    marked = replace(latest, refresh_failed_at=int(failed_at))
                    self.memory[key] = marked
                    node = self.node
                    if node is not None:
                        node.write(key, marked)
                    _log.warning(
                        "Proactive token refresh failed; the current token is used until %d (in %d s) and the "
                        "refresh is retried in %d s. %s",
                        latest.mandatory_on, latest.mandatory_on - int(failed_at), ADVISORY_RETRY_DELAY_S, exc,
                    )  # fmt: skip
                    return latest
                self._store(key, token)
                return token
        finally:
            lock.release()

    def _mandatory(self, key: str, fetch: Fetch, *, stale: CachedToken | None) -> CachedToken:
        before = self._last_failure(key)  # a new failure while this caller waits is shared, not repeated
        with self._lock_for(key):
            current = self.memory.get(key)
            if self._usable(current, stale):
                assert current is not None  # noqa: S101 - narrowed by _usable
                return current
            self._raise_if_failed_since(key, before, node=False)
            deadline = time.monotonic() + self._lock_timeout
            while True:
                with self._node_lock(key) as acquired:
                    if acquired:
                        current = self._newest(key)
                        if self._usable(current, stale):
                            assert current is not None  # noqa: S101
                            return current
                        self._raise_if_failed_since(key, before, node=True)
                        try:
                            token = fetch()
                        except AmlIdentityError as exc:
                            self._record_failure(key, exc)
                            raise
                        self._store(key, token)
                        return token
                # Another process is fetching: sleep until it lets go, then read what it wrote. If it failed, its
                # error is this caller's too (not repeated); if it died, this process tries to fetch itself.
                assert self.node is not None  # noqa: S101 - an in-process store always acquires
                if not self.node.wait_unlocked(key, max(0.0, deadline - time.monotonic())):
                    msg = (
                        f"Waited {self._lock_timeout:.0f} s for another process on this node to fetch a token "
                        f"(lock {self.node.directory}/{key}.lock). Is a process stuck?"
                    )
                    raise AmlIdentityError(msg)
                current = self._newest(key)
                if self._usable(current, stale):
                    assert current is not None  # noqa: S101
                    return current
                self._raise_if_failed_since(key, before, node=True)

    def _last_failure(self, key: str) -> tuple[str | None, str | None]:
        """The ids of the newest failed fetches of ``key`` recorded in this process and on the node."""
        local = self._failures.get(key)
        cache = self.node
        node = cache.read_failure(key) if cache is not None else None
        return (local.failure_id if local else None, node.failure_id if node else None)

    def _raise_if_failed_since(self, key: str, before: tuple[str | None, str | None], *, node: bool) -> None:
        """Raise the failure of a fetch that ended while this caller waited (``before``: the ids it saw)."""
        if node:
            cache = self.node
            failure = cache.read_failure(key) if cache is not None else None
            seen = before[1]
        else:
            failure = self._failures.get(key)
            seen = before[0]
        if failure is not None and failure.failure_id != seen:
            raise failure.error()

    def _record_failure(self, key: str, exc: AmlIdentityError) -> None:
        failure = FetchFailure.of(exc)
        self._failures[key] = failure
        node = self.node
        if node is not None:
            try:
                node.write_failure(key, failure)
            except OSError as err:  # the waiters then repeat the fetch: slower, still correct
                _log.debug("cannot record the failed fetch in %s: %s", node.directory, err.strerror)

    def _usable(self, token: CachedToken | None, stale: CachedToken | None) -> bool:
        """Whether another thread or process already produced a token good enough for this caller."""
        if token is None:
            return False
        if stale is not None:  # forced refresh: anything newer than what the caller rejected will do
            return token.token != stale.token and token.state(self._clock()) is TokenState.FRESH
        return token.state(self._clock()) in (TokenState.FRESH, TokenState.ADVISORY)

    @contextlib.contextmanager
    def _node_lock(self, key: str) -> Iterator[bool]:
        """Hold the node lock for ``key`` if no other process does (always, for an in-process store)."""
        if self.node is None:
            yield True
            return
        with self.node.try_lock(key) as acquired:
            yield acquired

    def _store(self, key: str, token: CachedToken) -> None:
        self._failed_at.pop(key, None)
        self.memory[key] = token
        node = self.node
        if node is not None:
            node.write(key, token)

    def _refuse_node(self, exc: UnsafeCacheError) -> None:
        """Stop using the node cache after finding an unsafe file in it: keep tokens in this process only."""
        if self.node is None:
            return
        self.node = None
        _log.warning(
            "Node-wide token cache disabled: %s; token cache not used. Tokens are cached in this process only, so "
            "each process asks the identity endpoint itself. Remove the file, or set AML_IDENTITY_CACHE_DIR to a "
            "private directory.",
            exc.message,
        )


def cache_key(*parts: str) -> str:
    """Return the cache key (and node cache file name) for the given identity/resource/tenant parts."""
    return TOKEN_FILE_PREFIX + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]
