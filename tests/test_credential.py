"""JobCredential end to end against the identity-endpoint emulator (msal on the wire, our cache and retries)."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import pickle

import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError

import aml_identity
from aml_identity import (
    ConfigurationError,
    IdentityNotConfiguredError,
    IdentityNotFoundError,
    RetryPolicy,
    TokenRequestError,
    default_credential,
)
from aml_identity import aio as aml_aio
from aml_identity.testing import FakeClock
from aml_identity.testing.identity_endpoint import EmulatedIdentity, Fault

STORAGE = "https://storage.azure.com/.default"
DAY = 86_400


def credential(clock, **kwargs):
    return default_credential(clock=clock, sleep=clock.sleep, **kwargs)


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


class TestIdentitySelection:
    def test_the_request_carries_default_identity_client_id(self, aml, clock):
        default = aml.identities[0]
        token = credential(clock).get_token(STORAGE)
        (request,) = aml.requests
        assert request.params["clientid"] == default.client_id
        assert request.params["resource"] == "https://storage.azure.com"
        assert not request.user_token
        assert claims(token.token)["appid"] == default.client_id
        assert claims(token.token)["xms_mirid"] == default.resource_id

    def test_an_explicit_client_id_wins(self, aml, clock):
        other = EmulatedIdentity.user("uai-other")
        aml.add_identity(other)
        token = credential(clock, client_id=other.client_id).get_token(STORAGE)
        assert aml.requests[0].params["clientid"] == other.client_id
        assert claims(token.token)["oid"] == other.object_id

    @pytest.mark.parametrize("value", ["clientid", "", None])
    def test_no_identity_configured_raises_and_sends_nothing(self, aml, clean_env, value):
        if value is None:
            clean_env.delenv("DEFAULT_IDENTITY_CLIENT_ID")
        else:
            clean_env.setenv("DEFAULT_IDENTITY_CLIENT_ID", value)
        with pytest.raises(IdentityNotConfiguredError):
            default_credential()
        assert aml.request_count == 0

    def test_an_object_id_passed_as_client_id_is_explained(self, aml, clock):
        default = aml.identities[0]
        aml.fail_always(None)
        cred = credential(clock, client_id=default.object_id, retry=RetryPolicy(total_timeout=10))
        with pytest.raises(IdentityNotFoundError) as info:
            cred.get_token(STORAGE)
        message = str(info.value)
        assert default.object_id in message
        assert "object (principal) id" in message and "client (application) id" in message
        assert isinstance(info.value, ConfigurationError)
        assert info.value.status_code == 404

    def test_tokens_are_cached_per_resource(self, aml, clock):
        cred = credential(clock)
        cred.get_token(STORAGE)
        cred.get_token(STORAGE)
        cred.get_token("https://management.azure.com/.default")
        assert [r.params["resource"] for r in aml.requests] == [
            "https://storage.azure.com",
            "https://management.azure.com",
        ]


class TestRetries:
    def test_404_and_410_are_retried(self, aml, clock):
        aml.inject(Fault.status(404), Fault.status(410))
        token = credential(clock).get_token(STORAGE)
        assert token.token
        assert [r.status for r in aml.requests] == [404, 410, 200]

    def test_410_is_retried_for_at_least_70_seconds(self, aml, clock):
        aml.fail_always(Fault.status(410))
        cred = credential(clock, retry=RetryPolicy(total_timeout=30))
        with pytest.raises(TokenRequestError) as info:
            cred.get_token(STORAGE)
        times = [r.at for r in aml.requests]
        assert times[-1] - times[0] >= 70
        assert info.value.status_code == 410
        assert info.value.retryable

    def test_429_honours_retry_after(self, aml, clock):
        aml.inject(Fault.status(429, retry_after=7))
        credential(clock).get_token(STORAGE)
        assert clock.sleeps == [7.0]
        assert [r.status for r in aml.requests] == [429, 200]

    def test_a_400_is_not_retried(self, aml, clock):
        aml.inject(Fault.status(400, body={"error": "invalid_request", "error_description": "bad resource"}))
        with pytest.raises(TokenRequestError) as info:
            credential(clock).get_token(STORAGE)
        assert aml.request_count == 1
        assert info.value.status_code == 400
        assert "bad resource" in str(info.value)

    def test_a_text_plain_body_is_a_token_request_error_not_json_decode_error(self, aml, clock):
        aml.inject(Fault.text(400, "InternalError"))
        with pytest.raises(TokenRequestError) as info:
            credential(clock).get_token(STORAGE)
        assert not isinstance(info.value, json.JSONDecodeError)
        assert "InternalError" in str(info.value)
        assert aml.identities[0].client_id in str(info.value)  # names the identity
        assert aml.url in str(info.value)  # names the endpoint

    def test_a_malformed_body_is_a_token_request_error(self, aml, clock):
        aml.inject(Fault.malformed_json())
        with pytest.raises(TokenRequestError, match="not a JSON object"):
            credential(clock).get_token(STORAGE)

    def test_a_body_without_expiry_is_a_token_request_error(self, aml, clock):
        aml.inject(Fault.missing_fields("expires_on", "expires_in"))
        with pytest.raises(TokenRequestError, match="without expires_on"):
            credential(clock).get_token(STORAGE)

    def test_a_connection_reset_is_retried(self, aml, clock):
        aml.inject(Fault.reset())
        assert credential(clock).get_token(STORAGE).token
        assert aml.request_count == 2

    def test_a_hung_endpoint_fails_within_the_configured_bound(self, aml, clock):
        aml.fail_always(Fault.hang())
        cred = credential(clock, retry=RetryPolicy(total_timeout=5, attempt_timeout=0.2))
        start = clock()
        with pytest.raises(TokenRequestError, match="timed out") as info:
            cred.get_token(STORAGE)
        assert clock() - start <= 5
        assert info.value.status_code is None
        assert 2 <= info.value.attempts <= 6

    def test_every_failure_is_a_client_authentication_error(self, aml, clock):
        aml.inject(Fault.status(403, body={"error": "invalid_request", "error_description": "bad secret"}))
        with pytest.raises(ClientAuthenticationError, match="MSI_SECRET"):
            credential(clock).get_token(STORAGE)


class TestRefreshWindows:
    def test_sync_advisory_failure_keeps_the_valid_token_mandatory_failure_raises(self, aml, clock, caplog):
        cred = credential(clock)
        first = cred.get_token(STORAGE)
        clock.advance(DAY // 2 + 10)
        aml.fail_always(Fault.status(503))
        with caplog.at_level(logging.WARNING):
            assert cred.get_token(STORAGE).token == first.token
        assert "Proactive token refresh failed" in caplog.text
        clock.advance(first.expires_on + 100 - clock())  # past the reported expiry: into the last 5 minutes
        with pytest.raises(TokenRequestError):
            cred.get_token(STORAGE)
        aml.fail_always(None)
        assert cred.get_token(STORAGE).token != first.token

    def test_async_advisory_failure_does_not_raise_while_the_token_is_valid(self, aml, clock):
        async def scenario():
            cred = aml_aio.default_credential(clock=clock, sleep=clock.sleep)
            first = await cred.get_token(STORAGE)
            clock.advance(DAY // 2 + 10)
            aml.fail_always(Fault.status(400, body={"error": "invalid_request"}))
            again = await cred.get_token(STORAGE)
            info = await cred.get_token_info(STORAGE)
            clock.advance(first.expires_on + 100 - clock())  # the reported expiry starts the last 5 minutes
            with pytest.raises(TokenRequestError):
                await cred.get_token(STORAGE)
            return first, again, info

        first, again, info = asyncio.run(scenario())
        assert again.token == first.token
        assert info.token == first.token and info.refresh_on is not None

    def test_refresh_happens_at_half_life(self, aml, clock):
        cred = credential(clock)
        first = cred.get_token_info(STORAGE)
        assert first.refresh_on - clock() == pytest.approx(DAY / 2, abs=2)
        clock.advance(DAY // 2 + 1)
        second = cred.get_token_info(STORAGE)
        assert second.token != first.token
        assert aml.request_count == 2


class TestHandOutMargin:
    def test_an_sdk_keeping_a_30_s_token_until_its_reported_expiry_never_sends_one_about_to_expire(self, aml, clock):
        """azure-core's bearer policy reuses a token until min(refresh_on + 0..60 s jitter, expires_on)."""
        aml.token_lifetime = 30
        cred = credential(clock)
        for jitter in (0, 5, 60, 60):
            info = cred.get_token_info(STORAGE)
            exp = claims(info.token)["exp"]
            clock.advance(min(info.refresh_on + jitter, info.expires_on) - clock())
            assert exp - clock() >= 7  # the last moment the SDK signs a request with it: 7 s still left
        assert aml.request_count == 4  # one token per round: each return finds the last one due for refresh


class TestNodeCache:
    def test_credentials_share_tokens_through_the_node_cache(self, aml, clock):
        first, second = credential(clock), credential(clock)
        assert first.get_token(STORAGE).token == second.get_token(STORAGE).token
        assert aml.request_count == 1

    def test_insecure_cache_falls_back_to_the_process_with_one_warning(self, aml, clean_env, clock, tmp_path, caplog):
        real = tmp_path / "real"
        real.mkdir(mode=0o700)
        link = tmp_path / "link"
        link.symlink_to(real)
        clean_env.setenv("AML_IDENTITY_CACHE_DIR", str(link))
        with caplog.at_level(logging.WARNING, logger="aml_identity"):
            creds = [credential(clock) for _ in range(3)]
            tokens = {c.get_token(STORAGE).token for c in creds}
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert str(link) in warnings[0].getMessage() and "symlink" in warnings[0].getMessage()
        assert "cache=process" in repr(creds[0])
        assert len(tokens) == 1  # the job keeps running, tokens shared in-process
        assert not list(real.iterdir())  # nothing written through the symlink

    def test_cache_files_are_private(self, aml, clock, tmp_path):
        credential(clock).get_token(STORAGE)
        cache = tmp_path / "token-cache"
        assert oct(cache.stat().st_mode & 0o777) == "0o700"
        for path in cache.glob("*.json"):
            assert oct(path.stat().st_mode & 0o777) == "0o600"


class TestSecrets:
    def test_no_token_or_secret_in_logs_reprs_or_errors_at_debug(self, aml, clock, caplog):
        secret = aml.secret
        cred = credential(clock)
        with caplog.at_level(logging.DEBUG):
            token = cred.get_token(STORAGE)
            info = cred.get_token_info(STORAGE)
            aml.inject(Fault.status(400, body={"error": "x", "access_token": token.token}))
            try:
                cred.get_token(STORAGE, claims='{"access_token": {"nbf": {"essential": true}}}')
            except TokenRequestError as exc:
                error = exc
        texts = [r.getMessage() for r in caplog.records] + [str(error), repr(error), repr(cred), repr(token),
                                                             repr(info), repr(aml.requests)]  # fmt: skip
        for text in texts:
            assert token.token not in text
            assert secret not in text
        assert caplog.records  # DEBUG logging really was on

    def test_pickling_carries_no_secret_and_re_resolves(self, aml, clock):
        cred = default_credential()
        data = pickle.dumps(cred)
        assert aml.secret.encode() not in data
        clone = pickle.loads(data)
        assert clone.identity == cred.identity
        assert clone.get_token(STORAGE).token


class TestEnvironmentAndInput:
    @pytest.mark.parametrize("scopes", [(), (STORAGE, "https://management.azure.com/.default"), ("",), ("a b",)])
    def test_bad_scopes(self, aml, clock, scopes):
        with pytest.raises(ConfigurationError):
            credential(clock).get_token(*scopes)
        assert aml.request_count == 0

    def test_an_injected_environment_that_differs_from_the_process_is_refused(self, aml):
        environ = {**aml.azureml_environ(), "MSI_SECRET": "another-secret"}
        cred = default_credential(environ=environ)
        with pytest.raises(ConfigurationError, match="MSI_SECRET") as info:
            cred.get_token(STORAGE)
        assert "another-secret" not in str(info.value)
        assert aml.request_count == 0

    def test_module_level_get_token(self, aml, monkeypatch):
        monkeypatch.setattr(aml_identity.credential, "_shared", None)
        assert aml_identity.get_token("https://storage.azure.com").token
        assert aml_identity.get_token(STORAGE).token
        assert aml.request_count == 1


class TestOtherPlatforms:
    def test_imds(self, identity_endpoint, clean_env, clock):
        identity_endpoint.clock = clock
        for name, value in identity_endpoint.imds_environ().items():
            clean_env.setenv(name, value)
        token = credential(clock).get_token(STORAGE)
        (request,) = identity_endpoint.requests
        assert request.protocol == "imds"
        assert claims(token.token)["appid"] == identity_endpoint.identities[0].client_id

    def test_app_service(self, identity_endpoint, clean_env, clock):
        identity_endpoint.clock = clock
        for name, value in identity_endpoint.app_service_environ().items():
            clean_env.setenv(name, value)
        other = identity_endpoint.identities[0]
        credential(clock, client_id=other.client_id).get_token(STORAGE)
        (request,) = identity_endpoint.requests
        assert (request.protocol, request.params["client_id"]) == ("app_service", other.client_id)


def _child_gets_token(queue):  # runs in a forked child
    try:
        cred = aml_identity.default_credential()
        queue.put(("ok", cred.get_token(STORAGE).token[-16:], cred.get_token(STORAGE, claims="{}").token[-16:]))
    except Exception as exc:
        queue.put(("error", repr(exc), ""))


class TestForkSafety:
    def test_a_forked_child_neither_deadlocks_nor_reuses_the_parents_lock(self, aml):
        parent = default_credential()
        parent.get_token(STORAGE)
        key, _ = parent._key((STORAGE,), None)
        held = parent._store._lock_for(key)
        held.acquire()  # a parent thread is mid-refresh when the DataLoader forks
        try:
            context = multiprocessing.get_context("fork")
            queue = context.Queue()
            child = context.Process(target=_child_gets_token, args=(queue,))
            child.start()
            status, cached, forced = queue.get(timeout=60)
            child.join(60)
        finally:
            held.release()
        assert status == "ok", cached
        assert cached and forced and cached != forced  # cached token, then a fresh fetch on the child's own socket
        assert child.exitcode == 0
        assert aml.request_count == 2


class TestOffAzure:
    """Off Azure, IMDS's default address has nothing listening: say 'unavailable' at once, don't retry 90 s."""

    @staticmethod
    def fetcher(environ):
        from aml_identity._environment import JobEnvironment
        from aml_identity._fetch import MsalFetcher
        from aml_identity.identity import default_identity

        env = JobEnvironment.from_environ(environ)
        return MsalFetcher(default_identity(environ=env), env, policy=RetryPolicy(), clock=FakeClock(), sleep=None)

    def test_a_refused_connection_to_default_imds_means_no_identity_here(self):
        import requests

        fetcher = self.fetcher({})
        assert fetcher.identity.endpoint == "http://169.254.169.254/metadata/identity/oauth2/token"
        assert fetcher.unavailable_if_silent(requests.ConnectionError("refused"))
        assert fetcher.unavailable_if_silent(requests.ConnectTimeout("no route"))
        assert not fetcher.unavailable_if_silent(requests.ReadTimeout("slow"))  # it answered: retry

    def test_a_configured_endpoint_is_retried(self):
        import requests

        fetcher = self.fetcher({"AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:9"})
        assert not fetcher.unavailable_if_silent(requests.ConnectionError("refused"))
