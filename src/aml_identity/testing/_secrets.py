"""Find the emulators' tokens and secrets in text a test produced (logs, output, exception messages).

Two things must never reach a log line, a message or a traceback: a bearer token and the secret that
obtains one. The emulators know both:

* every token :func:`~aml_identity.testing._jwt.mint_token` signs carries the same JWT header (``kid`` =
  ``aml-identity-emulator``), so a token minted by any emulator — in this process or a subprocess — is
  recognised by that header followed by a claims segment, without keeping a list of tokens;
* every :class:`~aml_identity.testing.IdentityEndpoint` registers its ``MSI_SECRET`` / ``IDENTITY_HEADER``
  value here when it is created (:func:`register_secret`).

:func:`find_leaks` returns descriptions of what it found, never the values themselves. The test suite's
``conftest.py`` fails every test whose captured output contains one.
"""

from __future__ import annotations

import re
import threading

from aml_identity._fork import after_fork_in_child

__all__ = ["EMULATOR_JWT_HEADER", "find_leaks", "register_secret", "registered_secret_count"]

# The base64url JWT header of every emulator token: {"alg":"RS256","kid":"aml-identity-emulator","typ":"JWT"}.
EMULATOR_JWT_HEADER = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImFtbC1pZGVudGl0eS1lbXVsYXRvciIsInR5cCI6IkpXVCJ9"
# The header, a dot, and at least this much of the claims segment: the claims of a token (who it is for,
# when it expires) are enough to matter even without the signature.
_MIN_CLAIMS_CHARS = 16
_TOKEN_RE = re.compile(re.escape(EMULATOR_JWT_HEADER) + rf"\.[A-Za-z0-9_-]{{{_MIN_CLAIMS_CHARS},}}")
# Secrets shorter than this are not searched for: a test may pass a short made-up secret ("s3cret") that
# also occurs in ordinary text. The emulators' own random secrets are 32 characters.
MIN_SECRET_CHARS = 12

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None  # every registered secret, as one alternation (rebuilt on change)


@after_fork_in_child
def _reset_lock() -> None:
    global _lock  # noqa: PLW0603 - a forked child must not inherit a lock held by a parent thread
    _lock = threading.Lock()


def register_secret(secret: str) -> None:
    """Remember a secret an emulator hands out (it must never appear in a log, message or output)."""
    global _pattern  # noqa: PLW0603 - the registry is process-wide by design
    if len(secret) >= MIN_SECRET_CHARS:
        with _lock:
            if secret not in _secrets:
                _secrets.add(secret)
                _pattern = None


def registered_secret_count() -> int:
    """How many secrets are registered (for tests of the checker)."""
    with _lock:
        return len(_secrets)


def find_leaks(text: str) -> list[str]:
    """Return what in ``text`` is an emulator token or a registered secret, described without the value.

    Args:
        text: Captured logs, output or an exception's text.

    Returns:
        One description per kind of leak found (empty when the text is clean).
    """
    found = []
    tokens = _TOKEN_RE.findall(text)
    if tokens:
        found.append(f"{len(tokens)} access token(s) minted by the aml-identity emulators")
    global _pattern  # noqa: PLW0603
    with _lock:
        if _pattern is None and _secrets:
            _pattern = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))
        pattern = _pattern
    leaked = len(set(pattern.findall(text))) if pattern is not None else 0
    if leaked:
        found.append(f"{leaked} identity-endpoint secret(s) (MSI_SECRET / IDENTITY_HEADER)")
    return found
