"""The node's fetch service: one process keeps the identity endpoint's client loaded and fetches for the others.

Loading the endpoint client (msal and requests) costs 60-90 ms of CPU. A node-cache hit never needs it, so
a process loads it only when it fetches; but on a cold node the process that wins a token's node lock then
loaded it while every other rank on the node waited (see "Where the herd's time goes" in
docs/performance.md). So the first process on a node to create a credential takes ``fetch-service.lock``
in the node cache directory, loads the client in a background thread and listens on the Unix socket
``fetch-service.sock`` beside it. A process that wins a token's node lock without the client loaded asks
the service for the fetch while it keeps holding the lock: it stores the token, records a failure and wakes
the waiters exactly as if it had fetched itself. The service fetches with the asking process's identity and
retry policy, and refuses a process whose identity endpoint settings differ from its own (its msal reads
its own environment). When there is no service, or it refuses, died or does not answer, the asking process
fetches itself, as it always did.

Safety: the socket lives in the private node cache directory (0700, checked when the cache is opened), is
made 0600, and the service answers only its own user (``SO_PEERCRED``): the same boundary as the token
files. Nothing sent or received is logged. A forked child is never the service (the after-fork hook closes
the socket and lock it inherits, without touching the parent's), and a fork waits for the background load
to finish, so that no child inherits a module imported halfway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import socket
import struct
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aml_identity._cached_token import CachedToken, FetchFailure
from aml_identity._environment import MSAL_ENVIRONMENT, JobEnvironment
from aml_identity._fork import after_fork_in_child, before_fork
from aml_identity._retry import RetryPolicy
from aml_identity._tokens import TOKEN_FILE_PREFIX, NodeCache
from aml_identity.errors import AmlIdentityError
from aml_identity.identity import SOURCE_NAMES, ManagedIdentity

if TYPE_CHECKING:
    from aml_identity._fetch import Fetcher

__all__ = ["LOCK_NAME", "SOCKET_NAME", "ask", "offer", "serves"]

_log = logging.getLogger("aml_identity.fetch_service")

LOCK_NAME = "fetch-service.lock"
# The node lock held while a process becomes the service (NodeCache adds ".lock").
STARTING_LOCK = "fetch-service-starting"
SOCKET_NAME = "fetch-service.sock"
# A live service's kernel accepts a connection at once (the backlog); one that does not within this long is
# treated as absent, so that the asking process fetches itself instead of waiting.
CONNECT_TIMEOUT_S = 1.0
# How long, once connected, the asking process waits for the service to start its fetch. The service loads
# the client in well under a second even on a busy node; one that is stopped, or starved of the GIL by a long
# C call, is passed over and the asking process fetches itself.
START_TIMEOUT_S = 2.0
# The line the service sends when it starts a fetch.
STARTED = b'{"started": true}\n'
# How much longer than its retry budget the asking process waits for the service's answer: the service's
# fetch is bounded by that budget, the rest is scheduling.
REPLY_MARGIN_S = 5.0
# The longest request or answer either side reads: a token answer is a few KiB; this bounds what a broken
# peer can make the other hold in memory.
MAX_MESSAGE_BYTES = 1 << 20
# Pending connections the kernel queues for the service: at most one per token per process of the node.
BACKLOG = 128
# How long a fork waits for the background load of the endpoint client to finish (it takes well under a
# second; the bound only matters if the forking thread itself holds the import lock).
FORK_WAIT_S = 5.0
# The identity endpoint settings the service's own environment must share with the asking process's: what msal
# reads, and what decides where and how a request may go.
_ENDPOINT_FIELDS = (*MSAL_ENVIRONMENT, "cloud_shell", "allow_remote_identity_endpoint", "loopback_only", "ca_bundle")

_lock = threading.Lock()
# The services this process runs, by node cache directory.
_services: dict[Path, _Service] = {}


def environment_digest(env: JobEnvironment) -> str:
    """A digest of ``env``'s identity endpoint settings (compared, never shown: they include the secret)."""
    values = [getattr(env, name) for name in _ENDPOINT_FIELDS]
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()


class _Service:
    """This process's fetch service for one node cache directory."""

    def __init__(self, directory: Path, lock_fd: int) -> None:
        """Listen on the node's socket and load the endpoint client in a background thread.

        Listening comes first, here: a process that asks while the client loads waits in the kernel's
        backlog and then for the "started" line, instead of finding no socket and loading the client itself.

        Raises:
            OSError: The socket cannot be made (a path too long for one, a full disk): no service.
        """
        self.directory = directory
        self.socket_path = directory / SOCKET_NAME
        self.owners = 0
        self.closed = False
        self._lock_fd = lock_fd
        self._state = threading.Lock()
        self._loaded = threading.Event()
        self._fetchers: dict[tuple[ManagedIdentity, RetryPolicy, str], Fetcher] = {}
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.socket_path.unlink(missing_ok=True)  # a dead service's: this process holds the lock now
            listener.bind(str(self.socket_path))
            self.socket_path.chmod(0o600)
            listener.listen(BACKLOG)
        except OSError:
            listener.close()
            raise
        self._listener: socket.socket | None = listener
        threading.Thread(target=self._run, args=(listener,), name="aml-identity-fetch-service", daemon=True).start()

    def _run(self, listener: socket.socket) -> None:
        try:
            import aml_identity._fetch  # noqa: F401, PLC0415 - the load this service takes off the critical path
        except ImportError as exc:  # the asking processes then meet the same error themselves
            _log.debug("node fetch service stopped: %s", exc)
            self.stop()
            return
        finally:
            self._loaded.set()
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # stopped
                return
            threading.Thread(target=self._serve, args=(conn,), name="aml-identity-fetch-service-request",
                             daemon=True).start()  # fmt: skip

    def wait_loaded(self) -> None:
        """Wait (bounded) until the background load of the endpoint client has finished."""
        self._loaded.wait(FORK_WAIT_S)

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(CONNECT_TIMEOUT_S)  # the request follows the connection at once
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _, uid, _ = struct.unpack("3i", creds)
            if uid != os.getuid():
                return
            with conn.makefile("rb") as stream:
                request = stream.readline(MAX_MESSAGE_BYTES)
            conn.settimeout(None)
            conn.sendall(json.dumps(self._answer(request, conn)).encode() + b"\n")

    def _answer(self, request: bytes, conn: socket.socket) -> dict[str, str]:
        try:
            asked = json.loads(request)
            identity = _identity_from(asked["identity"])
            policy = _policy_from(asked["retry"])
            resource, claims, digest = _strings(asked["resource"], asked.get("claims"), asked["environment"])
        except (ValueError, KeyError, TypeError, AmlIdentityError):
            return {"refused": "malformed request"}
        fetcher = self._fetcher_for(identity, policy, digest)
        if fetcher is None:
            return {"refused": "different identity endpoint settings, or a setting this service refuses"}
        if _hung_up(conn):  # it gave up waiting for the start (a slow load) and fetches itself: do not fetch twice
            return {"refused": "the asking process hung up"}
        conn.sendall(STARTED)
        try:
            token: CachedToken = fetcher.fetch(resource, claims=claims)
        except AmlIdentityError as exc:
            return {"failure": FetchFailure.of(exc).to_json()}
        except Exception as exc:  # noqa: BLE001 - the asking process fetches itself and meets it with its context
            return {"refused": type(exc).__name__}
        return {"token": token.to_json()}

    def _fetcher_for(self, identity: ManagedIdentity, policy: RetryPolicy, digest: str) -> Fetcher | None:
        """This process's fetcher for ``identity``; None if its endpoint settings are not ``digest``'s or refused."""
        try:
            env = JobEnvironment.from_environ()  # read now: msal reads os.environ when it sends
        except AmlIdentityError:
            return None
        if environment_digest(env) != digest:
            return None
        from aml_identity._fetch import make_fetcher  # noqa: PLC0415 - loaded by _run already

        key = (identity, policy, digest)
        fetcher = self._fetchers.get(key)
        if fetcher is None:
            try:
                made = make_fetcher(identity, env, policy=policy, clock=time.time, sleep=time.sleep)
            except AmlIdentityError:  # the asking process meets the same error itself, with its context
                return None
            fetcher = self._fetchers.setdefault(key, made)
        return fetcher

    def stop(self) -> None:
        """Stop listening, remove the socket and give up the lock (nothing, in a forked child)."""
        with self._state:
            if self.closed:
                return
            self.closed = True
            listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            listener.close()
            self.socket_path.unlink(missing_ok=True)
        os.close(self._lock_fd)

    def forget_in_child(self) -> None:
        """In a forked child: close the inherited socket and lock without affecting the parent's service."""
        self.closed = True
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()  # close, never shut down: the socket is the parent's too
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


def _hung_up(conn: socket.socket) -> bool:
    """Whether the peer has closed its end (it sends nothing after its request, so readable means closed)."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _identity_from(data: Any) -> ManagedIdentity:
    if not isinstance(data, dict) or data.get("source") not in SOURCE_NAMES:
        raise TypeError
    fields = {f.name for f in dataclasses.fields(ManagedIdentity)}
    if set(data) != fields or not all(isinstance(v, (str, type(None))) for v in data.values()):
        raise TypeError
    return ManagedIdentity(**data)


def _policy_from(data: Any) -> RetryPolicy:
    if not isinstance(data, dict) or not isinstance(data.get("retryable"), list):
        raise TypeError
    return RetryPolicy(**{**data, "retryable": frozenset(int(s) for s in data["retryable"])})


def _strings(resource: object, claims: object, digest: object) -> tuple[str, str | None, str]:
    if not isinstance(resource, str) or not isinstance(claims, (str, type(None))) or not isinstance(digest, str):
        raise TypeError
    return resource, claims, digest


def _policy_json(policy: RetryPolicy) -> dict[str, Any]:
    return {**dataclasses.asdict(policy), "retryable": sorted(policy.retryable)}


def offer(node: NodeCache, owner: object) -> None:
    """Run the node's fetch service in this process for as long as ``owner`` lives, if no process does yet.

    Only on a cold node (no token in the cache yet): that is when the node's processes are about to fetch at
    once. A process started later, such as a spawned DataLoader worker, finds the cache filled and never
    loads the endpoint client for a cache hit.

    Args:
        node: The node cache (its directory private, already checked).
        owner: The credential this is for; the service stops when the last such credential is gone.
    """
    with _lock:
        service = _services.get(node.directory)
        if service is None:
            if not _cold(node.directory):
                return
            # Held from taking the service's lock until it listens: a process that finds no socket meanwhile
            # waits for it (see ask) instead of loading the client itself.
            try:
                with node.try_lock(STARTING_LOCK) as starting:
                    service = _start(node.directory) if starting else None
            except OSError:  # the lock file cannot be made: no service, the processes fetch themselves
                return
            if service is None:
                return
            _services[node.directory] = service
        service.owners += 1
    weakref.finalize(owner, _release, service)


def _start(directory: Path) -> _Service | None:
    """Become the node's service, unless another process is (or the socket cannot be made)."""
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another process of the node serves it (or the lock is unusable)
        os.close(fd)
        return None
    try:
        return _Service(directory, fd)
    except OSError as exc:  # the processes fetch themselves, as without a service
        os.close(fd)
        _log.debug("node fetch service not started in %s: %s", directory, exc.strerror)
        return None


def _starting(node: NodeCache) -> bool:
    """Whether a process of the node is starting its service now (and wait, bounded, until it listens)."""
    try:
        fd = os.open(node.directory / f"{STARTING_LOCK}.lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return node.wait_unlocked(STARTING_LOCK, START_TIMEOUT_S)
    except OSError:
        return False
    finally:
        os.close(fd)  # (closing releases the shared lock, when it was taken)
    return False


def _cold(directory: Path) -> bool:
    """Whether the node cache holds no token file yet."""
    try:
        return not any(p.name.startswith(TOKEN_FILE_PREFIX) and p.suffix == ".json" for p in directory.iterdir())
    except OSError:
        return False


def _release(service: _Service) -> None:
    with _lock:
        service.owners -= 1
        if service.owners > 0 or service.closed:
            return
        if _services.get(service.directory) is service:
            del _services[service.directory]
    service.stop()


def serves(directory: Path) -> bool:
    """Whether this process runs the fetch service for ``directory`` (then it fetches itself)."""
    return directory in _services


def _exchange(path: Path, request: bytes, policy: RetryPolicy) -> bytes:
    """Send ``request`` to the service at ``path``; return its answer line (after the "started" line, if any)."""
    budget = policy.total_timeout + REPLY_MARGIN_S
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect(str(path))
        sock.sendall(request)
        with sock.makefile("rb") as stream:
            sock.settimeout(START_TIMEOUT_S)
            line = stream.readline(MAX_MESSAGE_BYTES)
            if line == STARTED:
                sock.settimeout(budget if budget < float("inf") else None)
                line = stream.readline(MAX_MESSAGE_BYTES)
    return line


def request_line(
    identity: ManagedIdentity, env: JobEnvironment, policy: RetryPolicy, resource: str, claims: str | None
) -> bytes:
    """The request :func:`ask` sends: one JSON line (the endpoint settings as a digest, never the secret)."""
    request = {
        "identity": dataclasses.asdict(identity),
        "retry": _policy_json(policy),
        "environment": environment_digest(env),
        "resource": resource,
        "claims": claims,
    }
    return json.dumps(request).encode() + b"\n"


def ask(  # noqa: PLR0917 - one argument per part of the request
    node: NodeCache,
    identity: ManagedIdentity,
    env: JobEnvironment,
    policy: RetryPolicy,
    resource: str,
    claims: str | None,
) -> CachedToken | None:
    """Have the node's fetch service fetch a token; None when there is none or it cannot (fetch yourself).

    Args:
        node: The node cache.
        identity: The identity to fetch for.
        env: This process's environment (the service must share its identity endpoint settings).
        policy: How long and how often to retry.
        resource: The resource (audience), already normalised.
        claims: A claims challenge, if any.

    Returns:
        The token, or None when this process should fetch itself.

    Raises:
        AmlIdentityError: The service's fetch failed (the same error this process's own fetch would raise).
    """
    line = _answer_from_service(node, request_line(identity, env, policy, resource, claims), policy)
    try:
        answer = json.loads(line) if line is not None else None
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    if isinstance(answer.get("token"), str):
        return CachedToken.from_json(answer["token"])
    if isinstance(answer.get("failure"), str):
        failure = FetchFailure.from_json(answer["failure"])
        if failure is not None:
            raise failure.error(asked=True)
    _log.debug("node fetch service refused: %s", answer.get("refused"))
    return None


def _answer_from_service(node: NodeCache, request: bytes, policy: RetryPolicy) -> bytes | None:
    """The service's answer line to ``request``, or None when there is no service or it did not answer."""
    try:
        return _exchange(node.directory / SOCKET_NAME, request, policy)
    except (FileNotFoundError, ConnectionRefusedError):
        # No service, or one that is starting right now (it took its lock, it does not listen yet): wait for it.
        if not _starting(node):
            return None
        try:
            return _exchange(node.directory / SOCKET_NAME, request, policy)
        except OSError:
            return None
    except OSError as exc:  # a service that died or hung mid-fetch, a full backlog
        _log.debug("node fetch service not used: %s", exc.strerror or type(exc).__name__)
        return None


@before_fork
def _wait_for_loads() -> None:
    # A child forked while the service thread imports would inherit that module's import lock, held by a thread
    # it does not have, and hang on its own import of it.
    for service in list(_services.values()):
        service.wait_loaded()


@after_fork_in_child
def _forget_services() -> None:
    global _lock  # noqa: PLW0603 - the parent may have held it when it forked
    _lock = threading.Lock()
    for service in _services.values():
        service.forget_in_child()
    _services.clear()
