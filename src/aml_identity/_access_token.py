"""azure-core's token types with a ``repr`` that hides the token.

Imported by :class:`aml_identity._tokens.CachedToken` when the first token is made, so that importing
aml-identity does not import azure-core (whose package ``__init__`` loads its whole HTTP pipeline).
"""

from __future__ import annotations

from azure.core.credentials import AccessToken, AccessTokenInfo

__all__ = ["MaskedAccessToken", "MaskedAccessTokenInfo"]


class MaskedAccessToken(AccessToken):
    """An ``AccessToken`` whose ``repr`` does not show the token."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"AccessToken(token='****', expires_on={self.expires_on})"


class MaskedAccessTokenInfo(AccessTokenInfo):
    """An ``AccessTokenInfo`` whose ``repr`` does not show the token."""

    def __repr__(self) -> str:
        return (
            f"AccessTokenInfo(token='****', expires_on={self.expires_on}, token_type='{self.token_type}', "
            f"refresh_on={self.refresh_on})"
        )
