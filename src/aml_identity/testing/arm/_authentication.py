"""Who may call the ARM emulator: the bearer token checks, and the 401 challenge ARM answers with.

Part of :class:`~aml_identity.testing.arm._api.ArmApi`, which authenticates every request here before
routing it; the emulated clock the token times are checked against is its state's.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import NoReturn

import jwt

from aml_identity.testing.arm._http import Request, Response
from aml_identity.testing.arm._state import ArmError

__all__ = ["ARM_AUDIENCES", "TOKEN_SKEW_SECONDS", "authenticate", "error_response"]

# The audiences ARM accepts for a management token.
ARM_AUDIENCES = frozenset(
    {
        "https://management.azure.com",
        "https://management.azure.com/",
        "https://management.core.windows.net",
        "https://management.core.windows.net/",
    }
)
# ARM tolerates a few minutes of clock skew on nbf/exp; the emulator does the same, which also lets a
# token minted from the wall clock pass against an emulated clock that started a moment earlier.
TOKEN_SKEW_SECONDS = 300


class _UnauthorizedError(ArmError):
    def __init__(self, code: str, message: str, tenant_id: str) -> None:
        super().__init__(401, code, message)
        self.tenant_id = tenant_id


def error_response(exc: ArmError) -> Response:
    """ARM's answer to an error: its body, and for a 401 the ``WWW-Authenticate`` challenge."""
    headers: dict[str, str] = {}
    if isinstance(exc, _UnauthorizedError):
        # ARM's challenge: where to get a token, and why this one was refused.
        headers["WWW-Authenticate"] = (
            f'Bearer authorization_uri="https://login.microsoftonline.com/{exc.tenant_id}", '
            f'error="invalid_token", error_description="{exc.message.replace(chr(34), chr(39))}"'
        )
    return Response(exc.status, exc.body(), headers)


def _arm_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%m/%d/%Y %H:%M:%S")


def authenticate(request: Request, *, now: float, tenant_id: str) -> None:
    """Check the request's bearer token as ARM does: a JWT for ARM's audience, valid at ``now``.

    Signatures are not checked (the emulator trusts any issuer).

    Raises:
        ArmError: A 401 (``AuthenticationFailed``, ``InvalidAuthenticationToken``,
            ``InvalidAuthenticationTokenAudience`` or ``ExpiredAuthenticationToken``) that
            :func:`error_response` answers with ARM's challenge.
    """

    def refuse(code: str, message: str) -> NoReturn:
        raise _UnauthorizedError(code, message, tenant_id)

    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header or scheme.lower() != "bearer" or not token.strip():
        refuse("AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing or malformed.")
    try:
        claims = jwt.decode(token.strip(), options={"verify_signature": False})
    except jwt.PyJWTError:
        refuse("InvalidAuthenticationToken", "The access token is invalid (not a JWT).")
    audience = claims.get("aud")
    if audience not in ARM_AUDIENCES:
        refuse(
            "InvalidAuthenticationTokenAudience",
            f"The access token has been obtained for wrong audience or resource '{audience}'. It should "
            f"exactly match with one of the allowed audiences {sorted(ARM_AUDIENCES)}.",
        )
    expires = claims.get("exp")
    if not isinstance(expires, (int, float)) or expires + TOKEN_SKEW_SECONDS < now:
        refuse(
            "ExpiredAuthenticationToken",
            f"The access token expiry UTC time '{_arm_time(float(expires or 0))}' is earlier than "
            f"current UTC time '{_arm_time(now)}'.",
        )
    not_before = claims.get("nbf")
    if isinstance(not_before, (int, float)) and not_before - TOKEN_SKEW_SECONDS > now:
        refuse("InvalidAuthenticationToken", "The access token is not yet valid (nbf).")
