"""The async job credential: an azure-core ``AsyncTokenCredential`` over the same caches as the sync one.

A cache hit is answered on the event loop (a dictionary read and a clock compare). A miss runs the sync
credential's fetch in a worker thread: msal has no async API, the node-wide lock is a file lock, and a token
is fetched once per lifetime per node, so a thread hop costs nothing that matters while keeping one
implementation of the refresh policy — including its rule that a failed advisory refresh never raises
while the cached token is valid (azure-identity's async credentials break that rule; see
``shared/notes/mi-protocol.md`` §4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions

from aml_identity._retry import RetryPolicy
from aml_identity._tokens import CachedToken
from aml_identity.credential import CacheMode, JobCredential
from aml_identity.credential import default_credential as _sync_default_credential
from aml_identity.identity import ManagedIdentity

if TYPE_CHECKING:
    import requests

__all__ = ["AsyncJobCredential", "default_credential"]


class AsyncJobCredential:
    """The compute's managed identity as an azure-core ``AsyncTokenCredential`` and ``AsyncSupportsTokenInfo``.

    Create it with :func:`default_credential`; it shares tokens with sync credentials of the same process
    and, with ``cache="node"``, with every process of the job on the node.
    """

    def __init__(self, sync: JobCredential) -> None:
        """Wrap a sync credential.

        Args:
            sync: The credential whose caches and fetcher to use.
        """
        self._sync = sync

    @property
    def identity(self) -> ManagedIdentity:
        """The resolved identity."""
        return self._sync.identity

    def __repr__(self) -> str:
        """Describe the identity and cache (no secret)."""
        return "Async" + repr(self._sync)

    async def _get(self, scopes: tuple[str, ...], claims: str | None, tenant_id: str | None) -> CachedToken:
        sync = self._sync
        if claims is None:
            key, _ = sync._key(scopes, tenant_id)  # noqa: SLF001 - the twin shares the sync credential's cache
            entry = sync._memory.get(key)  # noqa: SLF001
            if entry is not None and sync._clock() < entry.refresh_on:  # noqa: SLF001
                return entry
        return await asyncio.to_thread(sync._get, scopes, claims, tenant_id)  # noqa: SLF001

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,  # noqa: ARG002 - part of the AsyncTokenCredential protocol
        **kwargs: Any,  # noqa: ARG002 - the protocol allows extra keywords
    ) -> AccessToken:
        """Return a token for one scope (see :meth:`aml_identity.JobCredential.get_token`)."""
        return (await self._get(scopes, claims, tenant_id)).access_token

    async def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        """Return a token with its ``refresh_on`` (see :meth:`aml_identity.JobCredential.get_token_info`)."""
        opts = options or {}
        return (await self._get(scopes, opts.get("claims"), opts.get("tenant_id"))).info

    async def close(self) -> None:
        """Nothing to release: connections and caches are shared by the process."""

    async def __aenter__(self) -> AsyncJobCredential:
        """Use as an async context manager."""
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close (a no-op)."""
        await self.close()


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
) -> AsyncJobCredential:
    """Return the async credential of the compute's default managed identity (or the one named).

    Takes the same arguments as :func:`aml_identity.default_credential`.

    Returns:
        The credential; pass it to any async Azure SDK client.
    """
    return AsyncJobCredential(
        _sync_default_credential(
            client_id=client_id,
            object_id=object_id,
            resource_id=resource_id,
            environ=environ,
            cache=cache,
            retry=retry,
            clock=clock,
            sleep=sleep,
            session=session,
        )
    )
