"""The suite-wide leak check fails a test that shows an emulator token or secret, and only such a test."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from aml_identity.errors import redact
from aml_identity.testing._jwt import mint_token
from aml_identity.testing._secrets import EMULATOR_JWT_HEADER, find_leaks, register_secret
from aml_identity.testing.identity_endpoint import IdentityEndpoint

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def a_token() -> str:
    return mint_token(audience="https://storage.azure.com", issued_at=1_700_000_000, expires_on=1_700_003_600,
                      object_id="o", client_id="c")  # fmt: skip


class TestChecker:
    def test_every_emulator_token_is_recognised_by_its_header(self):
        token = a_token()
        assert token.startswith(EMULATOR_JWT_HEADER + ".")
        assert find_leaks(f"Authorization: Bearer {token}")
        assert find_leaks(f"claims only: {token.rsplit('.', 1)[0]}")  # no signature: still who and until when

    def test_a_registered_secret_is_recognised_and_not_quoted(self):
        secret = "a-made-up-secret-for-this-test-0123456789"
        register_secret(secret)
        leaks = find_leaks(f"header secret: {secret}")
        assert leaks and secret not in " ".join(leaks)

    def test_an_identity_endpoints_secret_is_registered_when_it_is_created(self):
        endpoint = IdentityEndpoint()
        assert find_leaks(f"MSI_SECRET={endpoint.secret}")

    def test_redacted_text_and_ordinary_text_are_clean(self):
        token = a_token()
        assert find_leaks(redact(f'{{"access_token": "{token}"}}')) == []
        assert find_leaks("GET /MSI/auth?resource=https://storage.azure.com 200 eyJhbGciOiJIUzI1NiJ9.e30.x") == []

    def test_short_made_up_secrets_are_not_searched_for(self):
        register_secret("s3cret")
        assert find_leaks("the word s3cret in a sentence") == []


@pytest.mark.leaks_on_purpose  # the inner run's output, captured here, shows what it leaked
def test_a_test_that_leaks_fails_and_one_that_does_not_passes(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        """
        import logging, sys
        import pytest
        from aml_identity.testing._jwt import mint_token
        from aml_identity.testing.identity_endpoint import IdentityEndpoint

        def token():
            return mint_token(audience="https://storage.azure.com", issued_at=1, expires_on=2, object_id="o",
                              client_id="c")

        def test_prints_a_token():
            print("got", token())

        def test_logs_a_token():
            logging.getLogger("job").warning("token %s", token())

        def test_writes_the_secret_to_stderr():
            sys.stderr.write(IdentityEndpoint().secret + "\\n")

        def test_fails_with_the_token_in_its_message():
            raise RuntimeError("bad token " + token())

        def test_clean():
            print("nothing to see")
            logging.getLogger("job").warning("token ****")

        @pytest.mark.leaks_on_purpose
        def test_exempt():
            print(token())
        """
    )
    # -rN: no short summary, whose lines pytest leaves untruncated under CI=true (the message would count twice).
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "-rN")
    result.assert_outcomes(passed=2, failed=4)  # no errors: each leak fails the phase it happened in, once
    output = result.stdout.str()
    assert output.count("Secret leak in call") == 4
    assert "identity-endpoint secret(s)" in output
    assert "access token(s) minted by the aml-identity emulators" in output


def test_a_clean_test_with_emulator_logs_at_debug_passes(caplog, aml_job):
    """The emulator's own debug logging (request lines, masked headers) shows neither tokens nor the secret."""
    from aml_identity import default_credential

    with caplog.at_level(logging.DEBUG):
        token = default_credential().get_token("https://storage.azure.com/.default")
    assert token.token
    assert find_leaks(caplog.text) == []
