"""Mint access tokens shaped like Microsoft Entra v1 managed-identity tokens, which Azurite accepts."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from typing import Any

import jwt

from aml_identity._fork import after_fork_in_child

__all__ = ["DEFAULT_TENANT_ID", "mint_token"]

# The tenant every emulated identity lives in (any GUID works; this one is recognisable in claims dumps).
DEFAULT_TENANT_ID = "72f988bf-0000-4000-8000-00000000a11d"

_key_lock = threading.Lock()
_signing_key: Any = None
# A fixed key id lets a reader tell emulator tokens apart from anything else in a claims dump.
_KEY_ID = "aml-identity-emulator"


@after_fork_in_child
def _reset_key_lock() -> None:
    global _key_lock  # noqa: PLW0603 - a forked child must not inherit a lock held by a parent thread
    _key_lock = threading.Lock()


def _key() -> Any:
    """Return the process's RSA signing key, created on first use (RS256, as Entra signs)."""
    global _signing_key  # noqa: PLW0603 - one key per process, created lazily (it takes ~50 ms)
    with _key_lock:
        if _signing_key is None:
            from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415 - [testing] extra

            _signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _signing_key


def mint_token(
    *,
    audience: str,
    issued_at: int,
    expires_on: int,
    object_id: str,
    client_id: str,
    tenant_id: str = DEFAULT_TENANT_ID,
    mi_resource_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Return an RS256 JWT with the claims of a v1 managed-identity access token.

    Azurite's ``--oauth basic`` mode checks ``iss`` (a v1 ``sts.windows.net`` issuer), ``aud``, ``iat``,
    ``nbf`` and ``exp`` but not the signature; the token is signed anyway so that it is shaped like the
    real thing end to end.

    Args:
        audience: The resource the token is for (``aud``), without ``/.default``.
        issued_at: ``iat`` and ``nbf`` in epoch seconds.
        expires_on: ``exp`` in epoch seconds.
        object_id: ``oid``/``sub``: the identity's service principal object id.
        client_id: ``appid``: the identity's client (application) id.
        tenant_id: ``tid``.
        mi_resource_id: ``xms_mirid``: the ARM id of the user-assigned identity or the compute.
        extra: More claims to add or override.

    Returns:
        The encoded token.
    """
    claims: dict[str, Any] = {
        "aud": audience,
        "iss": f"https://sts.windows.net/{tenant_id}/",
        "iat": issued_at,
        "nbf": issued_at,
        "exp": expires_on,
        "aio": uuid.uuid4().hex,
        "appid": client_id,
        "appidacr": "2",
        "idp": f"https://sts.windows.net/{tenant_id}/",
        "idtyp": "app",
        "oid": object_id,
        "sub": object_id,
        "tid": tenant_id,
        "uti": uuid.uuid4().hex[:22],
        "ver": "1.0",
    }
    if mi_resource_id:
        claims["xms_mirid"] = mi_resource_id
    if extra:
        claims.update(extra)
    return jwt.encode(claims, _key(), algorithm="RS256", headers={"kid": _KEY_ID})
