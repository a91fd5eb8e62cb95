"""The ARM emulator's time: a manual clock, and a credential minting management tokens on it.

Part of :class:`~aml_identity.testing.arm.ArmEmulator` (its ``credential()`` and default clock).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from azure.core.credentials import AccessToken

from aml_identity.testing._clock import FakeClock

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ARM_AUDIENCE"]

# The audience of the management tokens the emulator's credential mints (ARM's own).
ARM_AUDIENCE = "https://management.azure.com"


class _EmulatorCredential:
    """An azure-core ``TokenCredential`` minting management tokens on the emulator's clock."""

    def __init__(self, clock: Callable[[], float], object_id: str, client_id: str, lifetime: int) -> None:
        self._clock = clock
        self.object_id = object_id
        self.client_id = client_id
        self._lifetime = lifetime

    def get_token(self, *scopes: str, **_kwargs: Any) -> AccessToken:
        """Return a token for ARM (any scope is accepted; the audience is always ARM's)."""
        from aml_identity.testing._jwt import mint_token  # noqa: PLC0415

        del scopes
        now = int(self._clock())
        token = mint_token(
            audience=ARM_AUDIENCE,
            issued_at=now,
            expires_on=now + self._lifetime,
            object_id=self.object_id,
            client_id=self.client_id,
        )
        return AccessToken(token, now + self._lifetime)

    def __repr__(self) -> str:
        """Show the identity, never a token."""
        return f"_EmulatorCredential(object_id={self.object_id!r})"


class _ManualClock(FakeClock):
    """Emulated time: starts at the wall clock, then moves only when told to (never backwards)."""

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (a negative step is ignored) and return the new time."""
        return super().advance(max(0.0, seconds))
