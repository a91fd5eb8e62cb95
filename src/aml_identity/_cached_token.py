"""One token and its refresh schedule, the refresh-policy constants, and the record of a failed fetch.

Pure data and arithmetic, no I/O: :mod:`aml_identity._tokens` keeps these in its in-process and node-wide
caches, and the node cache writes them to its files as JSON (``CachedToken.to_json``, ``FetchFailure.to_json``).
See :mod:`aml_identity._tokens` for the policy as a whole and the hand-out margin.
"""

from __future__ import annotations

import enum
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aml_identity.errors import AmlIdentityError

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, AccessTokenInfo

__all__ = [
    "ADVISORY_RETRY_DELAY_S",
    "CACHE_FORMAT",
    "HALF_LIFE_MIN_LIFETIME_S",
    "MANDATORY_WINDOW_S",
    "REFRESH_BEFORE_EXPIRY_S",
    "SHORT_TOKEN_MANDATORY_FRACTION",
    "SHORT_TOKEN_REFRESH_FRACTION",
    "CachedToken",
    "FetchFailure",
    "TokenState",
    "new_token",
]

# Tokens that live 2 h or more refresh at half their lifetime, as MSAL and Azure.Identity .NET do: a 24 h
# Azure ML token refreshes after ~12 h, leaving ~12 h to ride out an endpoint outage.
HALF_LIFE_MIN_LIFETIME_S = 2 * 3600
# Shorter tokens refresh 5 min before expiry (azure-identity's DEFAULT_REFRESH_OFFSET, MSAL's "expired" margin).
REFRESH_BEFORE_EXPIRY_S = 5 * 60
# The last 5 min of a token's life: callers block on a refresh and a failure raises. It is also the hand-out
# margin: no caller gets a token with less life left (the expiry callers see is the window's start), so a
# request signed with it cannot expire in flight, on a retry or on a slow upload of one block.
MANDATORY_WINDOW_S = 5 * 60
# A failed advisory refresh is retried no sooner than this (azure-identity's DEFAULT_TOKEN_REFRESH_RETRY_DELAY):
# the valid token keeps the job running and the endpoint is not hammered while it is unwell.
ADVISORY_RETRY_DELAY_S = 30
# For very short-lived tokens (tests, some emulators) the windows shrink to these fractions of the lifetime,
# so a 60 s token refreshes after 30 s instead of on every call, and a 30 s token is handed out with at least
# 7 s left (a request spends milliseconds in flight on loopback, seconds at worst on a loaded node).
SHORT_TOKEN_REFRESH_FRACTION = 0.5
SHORT_TOKEN_MANDATORY_FRACTION = 0.25
# Cache file format version; a file with another version is ignored (and overwritten on the next fetch).
CACHE_FORMAT = 1


class TokenState(enum.Enum):
    """Where a token is in its life, by the refresh policy."""

    FRESH = "fresh"
    ADVISORY = "advisory"
    MANDATORY = "mandatory"
    EXPIRED = "expired"


@dataclass(frozen=True)
class CachedToken:
    """One token and its refresh schedule, in epoch seconds.

    Attributes:
        token: The bearer token (never shown by ``repr``).
        expires_on: When it expires.
        refresh_on: When the advisory window starts.
        mandatory_on: When the mandatory window starts.
        fetched_at: When it was fetched.
        refresh_failed_at: When an advisory refresh last failed (node-wide), or None.
        token_type: The token type (``Bearer``).
    """

    token: str = field(repr=False)
    expires_on: int
    refresh_on: int
    mandatory_on: int
    fetched_at: int
    refresh_failed_at: int | None = None
    token_type: str = "Bearer"  # noqa: S105 - the token type, not a secret
    access_token: AccessToken = field(init=False, repr=False, compare=False)
    info: AccessTokenInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Prebuild the azure-core objects so the cache hit path allocates nothing."""
        # azure-core is imported with the first token, not with aml_identity (its package imports the pipeline).
        from aml_identity._access_token import MaskedAccessToken, MaskedAccessTokenInfo  # noqa: PLC0415

        # Callers see the hand-out deadline as the expiry (see the module docstring): an SDK that caches the
        # token stops using it while it still has its mandatory window left, and asks again.
        use_by = self.mandatory_on
        object.__setattr__(self, "access_token", MaskedAccessToken(self.token, use_by))
        object.__setattr__(
            self,
            "info",
            MaskedAccessTokenInfo(self.token, use_by, token_type=self.token_type, refresh_on=self.refresh_on),
        )

    def state(self, now: float) -> TokenState:
        """Return where the token is in its life at ``now``."""
        if now < self.refresh_on:
            return TokenState.FRESH
        if now < self.mandatory_on:
            return TokenState.ADVISORY
        if now < self.expires_on:
            return TokenState.MANDATORY
        return TokenState.EXPIRED

    def to_json(self) -> str:
        """Serialise for the node cache file."""
        return json.dumps(
            {
                "format": CACHE_FORMAT,
                "token": self.token,
                "token_type": self.token_type,
                "expires_on": self.expires_on,
                "refresh_on": self.refresh_on,
                "mandatory_on": self.mandatory_on,
                "fetched_at": self.fetched_at,
                "refresh_failed_at": self.refresh_failed_at,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> CachedToken | None:
        """Parse a node cache file; None when it is not one this version understands."""
        try:
            data = json.loads(text)
            if data.get("format") != CACHE_FORMAT:
                return None
            failed = data.get("refresh_failed_at")
            return cls(
                token=str(data["token"]),
                token_type=str(data.get("token_type", "Bearer")),
                expires_on=int(data["expires_on"]),
                refresh_on=int(data["refresh_on"]),
                mandatory_on=int(data["mandatory_on"]),
                fetched_at=int(data["fetched_at"]),
                refresh_failed_at=int(failed) if failed is not None else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def new_token(
    token: str,
    *,
    expires_on: int,
    now: float,
    refresh_in: int | None = None,
    token_type: str = "Bearer",  # noqa: S107 - a type name
) -> CachedToken:
    """Build a :class:`CachedToken` and its refresh schedule from an endpoint's answer.

    ``refresh_on`` is the server's ``refresh_in`` when it sent one; else half the lifetime for tokens of 2 h
    or more; else 5 min before expiry. Both windows shrink for tokens too short for them.

    Args:
        token: The access token.
        expires_on: Its expiry, in epoch seconds.
        now: The time it was received.
        refresh_in: The server's ``refresh_in`` (seconds), if it sent one.
        token_type: The token type.

    Returns:
        The token with its schedule.
    """
    issued = int(now)
    lifetime = max(0, expires_on - issued)
    mandatory_window = min(MANDATORY_WINDOW_S, int(lifetime * SHORT_TOKEN_MANDATORY_FRACTION))
    mandatory_on = expires_on - mandatory_window
    if refresh_in is not None and refresh_in > 0:
        refresh_on = issued + refresh_in
    elif lifetime >= HALF_LIFE_MIN_LIFETIME_S:
        refresh_on = issued + lifetime // 2
    else:
        refresh_on = expires_on - min(REFRESH_BEFORE_EXPIRY_S, int(lifetime * SHORT_TOKEN_REFRESH_FRACTION))
    return CachedToken(
        token=token,
        token_type=token_type,
        expires_on=expires_on,
        refresh_on=min(refresh_on, mandatory_on),
        mandatory_on=mandatory_on,
        fetched_at=issued,
    )


@dataclass(frozen=True)
class FetchFailure:
    """A fetch that failed while other callers waited for it; they raise it instead of repeating it.

    A mandatory fetch can spend the identity endpoint's whole retry budget (90 s by default). The threads
    and processes that waited on the lock meanwhile asked for the same token at the same time: repeating
    the budget one after another would turn one outage of 90 s into 90 s per waiting process. Each
    waiter notes the failure record before it waits; if a new one appears while it waits, it raises that
    failure at once. A caller that arrives after the failure tries again itself.

    Attributes:
        failure_id: Unique per failure (a record changes exactly when a new fetch fails).
        kind: The error class name (``TokenRequestError``, ``IdentityNotFoundError``...).
        message: The error's message (messages never hold a token or secret).
        identity: The identity asked for.
        endpoint: The endpoint asked.
        status_code: The last HTTP status, if any.
        attempts: How many requests the failed fetch sent.
        retryable: Whether trying again later may succeed.
        name: The setting at fault (an :class:`~aml_identity.errors.IdentityNotFoundError`'s ``name``).
        pid: The process that fetched.
    """

    failure_id: str
    kind: str
    message: str
    identity: str = ""
    endpoint: str = ""
    status_code: int | None = None
    attempts: int = 1
    retryable: bool = False
    name: str | None = None
    pid: int = 0

    @classmethod
    def of(cls, exc: AmlIdentityError) -> FetchFailure:
        """Record ``exc`` (a failed fetch) with a new id."""
        status = getattr(exc, "status_code", None)
        name = getattr(exc, "name", None)
        return cls(
            failure_id=uuid.uuid4().hex,
            kind=type(exc).__name__,
            message=str(getattr(exc, "message", None) or exc),
            identity=str(getattr(exc, "identity", "") or ""),
            endpoint=str(getattr(exc, "endpoint", "") or ""),
            status_code=status if isinstance(status, int) else None,
            attempts=int(getattr(exc, "attempts", 1) or 1),
            retryable=bool(getattr(exc, "retryable", False)),
            name=name if isinstance(name, str) else None,
            pid=os.getpid(),
        )

    def to_json(self) -> str:
        """Serialise for the node cache."""
        return json.dumps({"format": CACHE_FORMAT, **self.__dict__})

    @classmethod
    def from_json(cls, text: str) -> FetchFailure | None:
        """Parse a failure record; None when it is not one this version understands."""
        try:
            data = json.loads(text)
            if data.pop("format") != CACHE_FORMAT:
                return None
            return cls(**data)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def error(self, *, asked: bool = False) -> AmlIdentityError:
        """Return the error for a caller that waited on this failed fetch (a new instance per caller).

        Args:
            asked: The caller asked the node's fetch service for this fetch (rather than waiting on another
                caller's); the message then says so.
        """
        from aml_identity import errors  # noqa: PLC0415 - the Azure-based errors load on first use

        who = "this process" if self.pid == os.getpid() else f"process {self.pid} on this node"
        if asked:
            message = f"{self.message} (Fetched for this process by the node's fetch service, {who}.)"
        else:
            message = (
                f"{self.message} (This caller waited while {who} fetched the same token; that fetch failed after "
                f"{self.attempts} request(s), so it was not repeated.)"
            )
        if self.kind == "IdentityNotFoundError":
            return errors.IdentityNotFoundError(
                message, identity=self.identity, endpoint=self.endpoint, status_code=self.status_code,
                attempts=self.attempts, name=self.name,
            )  # fmt: skip
        if self.kind == "TokenRequestError":
            return errors.TokenRequestError(
                message, identity=self.identity, endpoint=self.endpoint, status_code=self.status_code,
                attempts=self.attempts, retryable=self.retryable,
            )  # fmt: skip
        if self.kind in ("IdentityUnavailableError", "IdentityNotConfiguredError"):
            return errors.IdentityUnavailableError(message)
        return AmlIdentityError(message)
