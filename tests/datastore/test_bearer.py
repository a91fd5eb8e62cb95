"""Storage tokens from a credential other than the job credential follow ``_tokens``' one refresh policy."""

from __future__ import annotations

import pytest
from azure.core.credentials import AccessTokenInfo

from aml_identity.datastore._bearer import BearerToken
from aml_identity.testing import FakeClock

LIFETIME_S = 3600  # a 1 h token: refreshed 5 min before expiry, as the job credential does


class ScriptedCredential:
    """A SupportsTokenInfo credential whose tokens and failures the test decides."""

    def __init__(self, clock: FakeClock, lifetime: int = LIFETIME_S) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.fail: Exception | None = None

    def get_token_info(self, *scopes: str, **kwargs: object) -> AccessTokenInfo:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return AccessTokenInfo(f"token-{self.calls}", int(self.clock()) + self.lifetime)

    def get_token(self, *scopes: str, **kwargs: object):  # pragma: no cover - the info path is used
        raise AssertionError("get_token_info is preferred")


@pytest.fixture
def clock():
    return FakeClock()


def test_the_credential_is_asked_again_only_from_the_refresh_time_on(clock):
    credential = ScriptedCredential(clock)
    holder = BearerToken(credential, clock=clock)

    assert holder.header() == "Bearer token-1"
    clock.advance(LIFETIME_S - 301)
    assert holder.header() == "Bearer token-1"  # still fresh: not asked
    assert credential.calls == 1
    clock.advance(2)  # now within 5 min of expiry
    assert holder.header() == "Bearer token-2"
    assert credential.calls == 2


def test_a_failed_early_refresh_keeps_the_valid_token_and_waits_30_s_before_asking_again(clock, caplog):
    day = 86_400  # a 24 h token refreshes at half its life; the last 5 min are mandatory
    credential = ScriptedCredential(clock, lifetime=day)
    holder = BearerToken(credential, clock=clock)
    holder.header()
    clock.advance(day // 2 + 1)
    credential.fail = RuntimeError("endpoint down")

    assert holder.header() == "Bearer token-1"  # the advisory refresh failed: the valid token is kept
    assert "Proactive token refresh failed" in caplog.text
    calls = credential.calls
    clock.advance(10)
    assert holder.header() == "Bearer token-1"
    assert credential.calls == calls  # not asked again within 30 s
    credential.fail = None
    clock.advance(25)
    assert holder.header() == "Bearer token-3"  # asked again after 30 s, and it worked


def test_a_failure_with_no_usable_token_raises_the_credentials_own_error(clock):
    credential = ScriptedCredential(clock)
    credential.fail = RuntimeError("endpoint down")
    holder = BearerToken(credential, clock=clock)

    with pytest.raises(RuntimeError, match="endpoint down"):
        holder.header()


def test_invalidate_after_a_401_asks_the_credential_again(clock):
    credential = ScriptedCredential(clock)
    holder = BearerToken(credential, clock=clock)
    holder.header()

    holder.invalidate()

    assert holder.header() == "Bearer token-2"
