"""Read the identity facts out of an access token's claims (for ``whoami``), never the token itself."""

from __future__ import annotations

from typing import Any

import jwt

__all__ = ["IDENTITY_CLAIMS", "identity_claims"]

# The claims that say whose token it is: object id, client (application) id, tenant, the managed identity's
# ARM resource id (a userAssignedIdentities/NAME or .../computes/NAME id), audience and lifetime.
IDENTITY_CLAIMS = ("oid", "appid", "tid", "xms_mirid", "aud", "iss", "iat", "exp", "idtyp", "upn")


def identity_claims(token: str) -> dict[str, Any]:
    """Return the identity claims of a JWT access token, decoded without verifying its signature.

    The signature is not checked because nothing is trusted on the strength of these claims: they only
    show which identity the endpoint issued the token for.

    Args:
        token: The access token.

    Returns:
        The subset of :data:`IDENTITY_CLAIMS` present; empty when the token is not a JWT.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return {name: claims[name] for name in IDENTITY_CLAIMS if name in claims}
