"""The ``Authorization`` header of storage requests, under the one token-refresh policy of ``_tokens``.

The job credential applies that policy itself, so it is asked on every request (a cache hit is a dictionary
read). Any other ``TokenCredential`` is held in an in-process :class:`aml_identity._tokens.TokenStore`, so
it is refreshed by the same rules instead of a second schedule written here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jwt

from aml_identity._fork import after_fork_in_child_while_alive
from aml_identity._tokens import CachedToken, TokenStore, new_token
from aml_identity.errors import AmlIdentityError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = ["STORAGE_SCOPE", "BearerToken"]

# The audience of storage tokens; valid for every account in the cloud.
STORAGE_SCOPE = "https://storage.azure.com/.default"
# The key of the one token a holder keeps in its in-process store.
_TOKEN_KEY = "storage"  # noqa: S105 - a dictionary key, not a secret


class _CredentialFailedError(AmlIdentityError):
    """Carries another credential's exception through the token store (which logs advisory failures)."""

    def __init__(self, original: Exception) -> None:
        super().__init__(f"{type(original).__name__}: {original}")
        self.original = original


class BearerToken:
    """The current ``Authorization`` header for one credential and scope, refreshed ahead of expiry.

    With the job credential (:class:`aml_identity.credential.JobCredential`) every request asks it: its
    cache hit is a dictionary read and a clock compare (~1 us), and it alone decides - by its own clock and
    refresh policy - when a token is refreshed. Any other ``TokenCredential`` is held in an in-process
    :class:`aml_identity._tokens.TokenStore`, so it gets the same policy: asked again from its token's
    ``refresh_on`` (by one thread, while the others keep the still-valid token; a failure there is logged
    and retried 30 s later) and, in the last minutes, by every caller until one succeeds.
    """

    def __init__(
        self,
        credential: TokenCredential,
        scope: str = STORAGE_SCOPE,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Create the holder.

        Args:
            credential: Any azure-core ``TokenCredential`` (``get_token_info`` is used when it has one).
            scope: The scope to ask for.
            clock: The wall clock for the refresh schedule of other credentials (injected by tests).
        """
        self._credential = credential
        self._scope = scope
        self._clock = clock
        self._header = ""
        self._token = ""
        self._current: CachedToken | None = None
        self._force = False
        self._store = TokenStore(None, clock, lock_timeout=0.0)  # in-process: no node lock to wait for
        after_fork_in_child_while_alive(self._store.after_fork)  # its locks may be held by a parent thread
        self._per_call: Callable[[str], Any] | None = None
        try:
            from aml_identity.credential import JobCredential  # noqa: PLC0415 - avoid an import cycle

            if isinstance(credential, JobCredential):
                self._per_call = credential.get_token_info
        except ImportError:  # pragma: no cover - the runtime package is always there
            pass

    def header(self) -> str:
        """Return ``"Bearer <token>"``, refreshing the token first when it is due."""
        if self._per_call is not None:
            token = self._per_call(self._scope).token
            if token is not self._token:
                self._token = token
                self._header = "Bearer " + token
            return self._header
        current = self._current
        if current is not None and not self._force and self._clock() < current.refresh_on:
            return self._header
        force, self._force = self._force, False
        try:
            cached = self._store.get(_TOKEN_KEY, self._fetch, force=force)
        except _CredentialFailedError as exc:
            raise exc.original from None
        if cached is not current:
            self._current = cached
            self._token = cached.token
            self._header = "Bearer " + cached.token
        return self._header

    def invalidate(self) -> None:
        """Forget the token so the next request asks the credential again (after a 401)."""
        self._force = True

    def claims(self) -> dict[str, Any]:
        """Return the current token's claims, decoded without verification (to name the identity)."""
        token = self._token
        if not token:
            return {}
        try:
            claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return {}
        return claims

    def _fetch(self) -> CachedToken:
        now = self._clock()
        get_info = getattr(self._credential, "get_token_info", None)
        refresh_on: float | None = None
        try:
            if get_info is not None:
                info = get_info(self._scope)
                token, expires_on = info.token, float(info.expires_on)
                refresh_on = float(info.refresh_on) if getattr(info, "refresh_on", None) else None
            else:
                access = self._credential.get_token(self._scope)
                token, expires_on = access.token, float(access.expires_on)
        except Exception as exc:
            raise _CredentialFailedError(exc) from exc
        refresh_in = int(refresh_on - now) if refresh_on is not None else None
        return new_token(token, expires_on=int(expires_on), now=now, refresh_in=refresh_in)
