"""The job credential: an azure-core ``TokenCredential`` that is the compute's managed identity.

>>> from azure.storage.blob import BlobServiceClient
>>> from aml_identity import default_credential
>>> client = BlobServiceClient(account_url, credential=default_credential())  # doctest: +SKIP

Every process of the job on a node shares one cache of tokens (``cache="node"``), so a job of N ranks
costs one request to the identity endpoint per token lifetime instead of N — and no 429s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from aml_identity import _fetch_service
from aml_identity._environment import JobEnvironment
from aml_identity._fork import after_fork_in_child, after_fork_in_child_while_alive
from aml_identity._retry import RetryPolicy
from aml_identity._tokens import (
    NODE_LOCK_WAIT_MARGIN_S,
    CachedToken,
    NodeCache,
    TokenStore,
    UnsafeCacheError,
    cache_key,
    default_cache_dir,
)
from aml_identity.errors import ConfigurationError
from aml_identity.identity import ManagedIdentity, default_identity

if TYPE_CHECKING:
    import requests
    from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions

    from aml_identity._fetch import Fetcher

__all__ = ["CacheMode", "JobCredential", "default_credential", "get_token", "scope_to_resource"]

_log = logging.getLogger("aml_identity.credential")

CacheMode = Literal["node", "process"]
_DEFAULT_SUFFIX = "/.default"

_stores_lock = threading.Lock()
_stores: dict[tuple[str, Callable[[], float]], TokenStore] = {}
_warned: set[str] = set()


@after_fork_in_child
def _after_fork_in_child() -> None:
    global _stores_lock, _shared_lock  # noqa: PLW0603 - a forked child must not inherit locks held by parent threads
    _stores_lock = threading.Lock()
    _shared_lock = threading.Lock()
    for store in _stores.values():
        store.after_fork()


def scope_to_resource(scopes: tuple[str, ...]) -> str:
    """Turn the scopes an SDK asks for into the single resource the identity endpoint wants.

    Exactly one scope is accepted and a trailing ``/.default`` is stripped (as azure-identity does):
    ``https://storage.azure.com/.default`` -> ``https://storage.azure.com``.

    Args:
        scopes: The scopes passed to ``get_token``.

    Returns:
        The resource.

    Raises:
        ConfigurationError: No scope, several scopes, or an empty one.
    """
    example = "'https://storage.azure.com/.default'"
    if len(scopes) != 1:
        got = "none" if not scopes else f"{len(scopes)}: {', '.join(map(repr, scopes))}"
        raise ConfigurationError(
            f"A managed identity token is for exactly one scope (resource); got {got}. Request one token per "
            f"resource, for example get_token({example}).",
            name="scopes",
        )
    scope = scopes[0]
    if not isinstance(scope, str) or not scope.strip():
        raise ConfigurationError(
            f"The scope {scope!r} is empty; pass the resource's scope, for example {example}.", name="scopes"
        )
    if any(ch.isspace() for ch in scope):
        raise ConfigurationError(
            f"The scope {scope!r} contains white space; several scopes in one string are not supported. "
            f"Pass one scope, for example {example}.",
            name="scopes",
        )
    resource = scope.removesuffix(_DEFAULT_SUFFIX)
    if not resource:
        raise ConfigurationError(f"The scope {scope!r} names no resource; pass for example {example}.", name="scopes")
    return resource


def _warn_once(path: object, problem: str) -> None:
    message = f"{problem}; token cache at {path} not used"
    if message not in _warned:
        _warned.add(message)
        _log.warning(
            "Node-wide token cache disabled: %s. Tokens are cached in this process only, so each process asks the "
            "identity endpoint itself. Fix the directory or set AML_IDENTITY_CACHE_DIR to a private one.",
            problem,
        )


def _store_for(mode: CacheMode, env: JobEnvironment, clock: Callable[[], float], lock_timeout: float) -> TokenStore:
    """Return the process-wide store for ``mode`` (shared by every credential with the same clock)."""
    if mode == "node":
        directory = default_cache_dir(env.cache_dir, env.xdg_runtime_dir)
        key = (f"node:{directory}", clock)
        with _stores_lock:
            store = _stores.get(key)
            if store is not None:
                return store
            try:
                node: NodeCache | None = NodeCache.open(directory)
            except UnsafeCacheError as exc:
                _warn_once(directory, exc.message)
                node = None
            except OSError as exc:
                _warn_once(directory, f"cannot create {directory}: {exc.strerror}")
                node = None
            store = TokenStore(node, clock, lock_timeout)
            _stores[key] = store
            return store
    if mode != "process":
        raise ConfigurationError(f"cache={mode!r} is not 'node' or 'process'.", name="cache")
    key = ("process", clock)
    with _stores_lock:
        return _stores.setdefault(key, TokenStore(None, clock, lock_timeout))


class JobCredential:
    """The compute's managed identity as an azure-core ``TokenCredential`` and ``SupportsTokenInfo``.

    Create it with :func:`default_credential`. It is thread-safe, fork-safe and picklable (a pickled
    credential re-resolves its identity from the receiving process's environment: no secret travels).

    Attributes:
        identity: The resolved identity.
        cache: ``"node"`` (shared by the node's processes) or ``"process"``.
    """

    def __init__(
        self,
        identity: ManagedIdentity,
        *,
        environ: Mapping[str, str] | None = None,
        cache: CacheMode = "node",
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        """Create a credential for an already resolved identity.

        Args:
            identity: The identity (from :func:`~aml_identity.default_identity`).
            environ: The environment it was resolved from; ``os.environ`` when omitted.
            cache: ``"node"`` to share tokens with the node's other processes, ``"process"`` to keep them here.
            retry: How to retry the identity endpoint (default: Microsoft's guidance, 90 s budget).
            clock: Returns the current time in epoch seconds (tests inject one).
            sleep: Waits between retries (tests inject one).
            session: The ``requests.Session`` to reach the identity endpoint with (mount an adapter on it to
                swap the HTTP layer); by default one per process, without proxies, recreated after a fork.
        """
        self.identity = identity
        self.cache = cache
        self._env = JobEnvironment.from_environ(environ)
        self._retry = retry or RetryPolicy(total_timeout=self._env.token_timeout or RetryPolicy().total_timeout)
        self._clock = clock or time.time
        self._sleep = sleep or time.sleep
        # Made on the first fetch: it imports msal and requests, which a node-cache hit never needs.
        self._fetcher: Fetcher | None = None
        self._session = session
        self._store = _store_for(cache, self._env, self._clock, self._retry.total_timeout + NODE_LOCK_WAIT_MARGIN_S)
        # The node's fetch service (see _fetch_service) fetches with the real clock and this process's endpoint
        # settings: not for a credential with an injected clock, sleep or HTTP session, nor for workload identity.
        self._uses_fetch_service = (
            self._env.fetch_service and clock is None and sleep is None and session is None
            and identity.source != "workload_identity"
        )  # fmt: skip
        node = self._store.node
        if node is not None and self._uses_fetch_service:
            _fetch_service.offer(node, self)
        self._memory = self._store.memory
        self._keys: dict[tuple[tuple[str, ...], str | None], tuple[str, str]] = {}
        # scope -> cache key for the common call (one scope, no tenant): a str key hashes once, a tuple every time
        self._scope_keys: dict[str, str] = {}
        # azure-core's token types, which every get_token returns: imported here rather than with the first token,
        # so that when a node's ranks ask at once, the one fetch is not slowed by every process importing
        # azure-core (~15-50 ms of CPU each) on the same few cores. `import aml_identity` stays light.
        import aml_identity._access_token  # noqa: F401, PLC0415

        after_fork_in_child_while_alive(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        # The fetcher holds the parent's jitter state (forked workers would retry in lockstep) and, for workload
        # identity, azure-identity's client with its own locks: a child makes its own on its first fetch.
        self._fetcher = None

    def __repr__(self) -> str:
        """Describe the identity and cache (no secret)."""
        where = f"node:{self._store.node.directory}" if self._store.node else "process"
        return f"JobCredential({self.identity.describe()}, cache={where})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the arguments to re-resolve in the receiving process (never the secret or tokens)."""
        chosen = {}
        if self.identity.selected_by == "argument":
            chosen = {"client_id": self.identity.client_id, "object_id": self.identity.object_id,
                      "resource_id": self.identity.resource_id}  # fmt: skip
        return (_rebuild, (chosen, self.cache, self._retry))

    def _key(self, scopes: tuple[str, ...], tenant_id: str | None) -> tuple[str, str]:
        found = self._keys.get((scopes, tenant_id))
        if found is None:
            resource = scope_to_resource(scopes)
            ident = self.identity
            key = cache_key(ident.source, ident.endpoint, ident.selector, resource, tenant_id or "")
            found = (key, resource)
            self._keys[(scopes, tenant_id)] = found
            if tenant_id is None:
                self._scope_keys[scopes[0]] = key
        return found

    def _get(self, scopes: tuple[str, ...], claims: str | None, tenant_id: str | None) -> CachedToken:
        key, resource = self._key(scopes, tenant_id)
        if claims is None:
            entry = self._memory.get(key)
            if entry is not None and self._clock() < entry.refresh_on:
                return entry  # the hot path: a dict read and a clock compare
        return self._store.get(key, lambda: self._fetch(resource, claims), force=claims is not None)

    def _fetch(self, resource: str, claims: str | None) -> CachedToken:
        """Fetch from the identity endpoint, making the fetcher (and importing msal) the first time."""
        fetcher = self._fetcher
        # This process has not loaded the endpoint client: the node's fetch service has (unless it is this
        # process). None: there is none, or it cannot; fetch here.
        node = self._store.node
        if (
            fetcher is None and self._uses_fetch_service and node is not None
            and not _fetch_service.serves(node.directory)
        ):  # fmt: skip
            token = _fetch_service.ask(node, self.identity, self._env, self._retry, resource, claims)
            if token is not None:
                return token
        if fetcher is None:
            # No lock: two threads racing here make two equivalent fetchers, and one is dropped (a lock held
            # across a fork would outlive it in the child).
            from aml_identity._fetch import make_fetcher  # noqa: PLC0415 - msal and requests, on the first fetch

            fetcher = make_fetcher(self.identity, self._env, policy=self._retry, clock=self._clock, sleep=self._sleep,
                                   session=self._session)  # fmt: skip
            self._fetcher = fetcher
        return fetcher.fetch(resource, claims=claims)

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,  # noqa: ARG002 - part of the TokenCredential protocol; managed identity has no CAE opt-in
        **kwargs: Any,  # noqa: ARG002 - the protocol allows extra keywords
    ) -> AccessToken:
        """Return a token for one scope, from the cache when it is fresh.

        Args:
            *scopes: Exactly one scope, for example ``https://storage.azure.com/.default``.
            claims: A claims challenge from the resource: forces a new token.
            tenant_id: Kept in the cache key; a managed identity always gets tokens from its own tenant.
            enable_cae: Accepted for the protocol.
            **kwargs: Accepted for the protocol.

        Returns:
            The token (its ``repr`` hides the token text).

        Raises:
            ConfigurationError: The scopes are malformed.
            TokenRequestError: The endpoint failed and no valid token is cached.
            IdentityUnavailableError: No identity endpoint exists here.
        """
        if claims is None and tenant_id is None and len(scopes) == 1:
            # The hot path, inlined: two dictionary reads and a clock compare.
            key = self._scope_keys.get(scopes[0])
            if key is not None:
                entry = self._memory.get(key)
                if entry is not None and self._clock() < entry.refresh_on:
                    return entry.access_token
        return self._get(scopes, claims, tenant_id).access_token

    def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        """Return a token with its ``refresh_on`` (the ``SupportsTokenInfo`` protocol).

        Args:
            *scopes: Exactly one scope.
            options: ``claims`` and ``tenant_id`` as for :meth:`get_token`.

        Returns:
            The token info.
        """
        if options is None and len(scopes) == 1:
            key = self._scope_keys.get(scopes[0])
            if key is not None:
                entry = self._memory.get(key)
                if entry is not None and self._clock() < entry.refresh_on:
                    return entry.info
        opts = options or {}
        return self._get(scopes, opts.get("claims"), opts.get("tenant_id")).info

    def close(self) -> None:
        """Nothing to release: connections and the cache are shared by the process."""

    def __enter__(self) -> JobCredential:
        """Use as a context manager (for symmetry with azure-identity credentials)."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close (a no-op)."""
        self.close()


def _rebuild(chosen: Mapping[str, str | None], cache: CacheMode, retry: RetryPolicy) -> JobCredential:
    return default_credential(
        client_id=chosen.get("client_id"),
        object_id=chosen.get("object_id"),
        resource_id=chosen.get("resource_id"),
        cache=cache,
        retry=retry,
    )


def default_credential(
    *,
    client_id: str | None = None,
    object_id: str | None = None,
    resource_id: str | None = None,
    environ: Mapping[str, str] | None = None,
    cache: CacheMode = "node",
    retry: RetryPolicy | None = None,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    session: requests.Session | None = None,
) -> JobCredential:
    """Return the credential of the compute's default managed identity (or the one named).

    Args:
        client_id: Use this user-assigned identity instead of the default (see
            :func:`~aml_identity.default_identity` for the rules).
        object_id: Select it by object id instead (not on Azure ML).
        resource_id: Select it by ARM resource id instead (not on Azure ML).
        environ: The environment to resolve from; ``os.environ`` when omitted.
        cache: ``"node"`` (default) shares tokens with every process of the job on this node; ``"process"``
            keeps them in this process.
        retry: How to retry the identity endpoint; ``AML_IDENTITY_TOKEN_TIMEOUT`` sets the total budget.
        clock: Returns the current time (tests inject one).
        sleep: Waits between retries (tests inject one).
        session: The ``requests.Session`` for the identity endpoint, to swap the HTTP layer (an adapter, a
            proxy-free session of your own); one per process by default. A pickled credential uses the
            default in the receiving process.

    Returns:
        The credential; pass it to any Azure SDK client.

    Raises:
        ConfigurationError: An id, endpoint variable or option is malformed.
        IdentityNotConfiguredError: On Azure ML compute with no managed identity.
    """
    env = JobEnvironment.from_environ(environ)
    identity = default_identity(client_id=client_id, object_id=object_id, resource_id=resource_id, environ=env)
    _log.info("Using managed identity %s (selected by %s).", identity.describe(), identity.selected_by)
    return JobCredential(identity, environ=environ, cache=cache, retry=retry, clock=clock, sleep=sleep, session=session)


_shared_lock = threading.Lock()
_shared: JobCredential | None = None


def get_token(resource_or_scope: str) -> AccessToken:
    """Return a token for a resource or scope from the process's shared default credential.

    Args:
        resource_or_scope: ``https://storage.azure.com`` or ``https://storage.azure.com/.default``.

    Returns:
        The token.
    """
    global _shared  # noqa: PLW0603 - one lazily created credential per process
    credential = _shared
    if credential is None:
        with _shared_lock:
            if _shared is None:
                _shared = default_credential()
            credential = _shared
    return credential.get_token(resource_or_scope)
