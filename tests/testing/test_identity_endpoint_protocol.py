"""The emulator's protocol rules, configuration and lifecycle, checked over raw HTTP.

The fidelity tests with the real SDKs are in ``test_identity_endpoint.py``; here each rule the SDKs never
exercise (a wrong secret, a missing ``Metadata`` header, URL-encoded values, keep-alive...) is shown directly.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import jwt
import pytest
import requests

from aml_identity.errors import AmlIdentityError, ConfigurationError
from aml_identity.testing import EmulatedIdentity, Fault, IdentityEndpoint
from aml_identity.testing.identity_endpoint import DEFAULT_SUBSCRIPTION_ID, EMULATED_USER_OBJECT_ID

STORAGE = "https://storage.azure.com"
IMDS_PATH = "/metadata/identity/oauth2/token"
REPO = Path(__file__).resolve().parents[2]


def claims(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


@pytest.fixture
def uai() -> EmulatedIdentity:
    return EmulatedIdentity.user("uai-proto")


@pytest.fixture
def endpoint(uai: EmulatedIdentity):
    with IdentityEndpoint(identities=[uai], clock=lambda: 1_700_000_000.0, token_lifetime=3600) as server:
        yield server


def aml(endpoint: IdentityEndpoint, *, secret: str | None = "", headers: dict[str, str] | None = None, **params: str):
    query = {"api-version": "2017-09-01", "resource": STORAGE, **params}
    sent = {"secret": endpoint.secret if secret == "" else secret} if secret is not None else {}
    return requests.get(endpoint.url + "/MSI/auth", params=query, headers={**sent, **(headers or {})}, timeout=10)


def imds(endpoint: IdentityEndpoint, *, metadata: str | None = "true", **params: str):
    query = {"api-version": "2018-02-01", "resource": STORAGE, **params}
    headers = {"Metadata": metadata} if metadata is not None else {}
    return requests.get(endpoint.url + IMDS_PATH, params=query, headers=headers, timeout=10)


def app_service(endpoint: IdentityEndpoint, *, header: str | None = "", **params: str):
    query = {"api-version": "2019-08-01", "resource": STORAGE, **params}
    headers = {"X-IDENTITY-HEADER": endpoint.secret if header == "" else header} if header is not None else {}
    return requests.get(endpoint.url + "/msi/token", params=query, headers=headers, timeout=10)


def drain(connection: socket.socket) -> None:
    while connection.recv(1024):
        pass


class TestEmulatedIdentity:
    def test_user_assigned_resource_id_and_random_ids(self):
        first, second = EmulatedIdentity.user("uai-a"), EmulatedIdentity.user("uai-a")
        assert first.resource_id == (
            f"/subscriptions/{DEFAULT_SUBSCRIPTION_ID}/resourcegroups/rg-aml"
            "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-a"
        )
        assert first.kind == "user"
        assert first.client_id != second.client_id
        assert first.object_id != second.object_id
        assert first.principal_id == first.object_id

    def test_system_assigned_is_the_computes(self):
        sub = "11111111-2222-4333-8444-555555555555"
        identity = EmulatedIdentity.system(
            "gpu", workspace="ws1", subscription_id=sub, resource_group="rg1", client_id=sub.replace("1", "a")
        )
        assert identity.resource_id == (
            f"/subscriptions/{sub}/resourcegroups/rg1/providers/Microsoft.MachineLearningServices/workspaces/ws1/computes/gpu"
        )
        assert (identity.kind, identity.name, identity.client_id) == ("system", "gpu", sub.replace("1", "a"))

    @pytest.mark.parametrize(
        ("make", "named"),
        [
            (lambda: EmulatedIdentity.user("uai", client_id="not-a-guid"), "client_id"),
            (lambda: EmulatedIdentity.user("uai/evil"), "identity name"),
            (lambda: EmulatedIdentity.user("uai", subscription_id="sub"), "subscription_id"),
            (lambda: EmulatedIdentity.system("", workspace="ws"), "compute"),
        ],
    )
    def test_bad_input_names_the_argument(self, make, named):
        with pytest.raises(ConfigurationError) as raised:
            make()
        assert raised.value.name == named

    def test_client_id_equal_to_object_id_is_refused(self):
        same = "0c0c0c0c-0000-4000-8000-000000000000"
        with pytest.raises(ConfigurationError, match="two different ids"):
            EmulatedIdentity.user("uai", client_id=same, object_id=same)


class TestConfiguration:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"token_lifetime": 0}, "token_lifetime"),
            ({"refresh_in": -5}, "refresh_in"),
            ({"requests_per_second": 0}, "requests_per_second"),
            ({"max_concurrent": 0}, "max_concurrent"),
            ({"latency": -1}, "latency"),
            ({"secret": ""}, "secret is empty"),
            ({"aml_path": "MSI/auth"}, "aml_path"),
            ({"aml_path": "/msi/token"}, "aml_path"),
            ({"tenant_id": "contoso"}, "tenant_id"),
        ],
    )
    def test_out_of_range_arguments_are_refused(self, kwargs, message):
        with pytest.raises(ConfigurationError, match=message):
            IdentityEndpoint(**kwargs)

    def test_duplicate_and_second_system_identities_are_refused(self, uai):
        with pytest.raises(ConfigurationError, match="same client_id"):
            IdentityEndpoint(identities=[uai, uai])
        with pytest.raises(ConfigurationError, match="at most one system-assigned"):
            IdentityEndpoint(identities=[EmulatedIdentity.system("a"), EmulatedIdentity.system("b")])

    def test_faults_validate_their_arguments(self):
        with pytest.raises(ConfigurationError, match="not a status code"):
            Fault.status(99)
        with pytest.raises(ConfigurationError, match="negative"):
            Fault.status(429, retry_after=-1)
        with pytest.raises(ConfigurationError, match="at least one field"):
            Fault.missing_fields()
        with pytest.raises(ConfigurationError, match="negative"):
            Fault.hang(-1)
        assert Fault.status(429, retry_after=2.0).retry_after == "2"
        assert Fault.status(429, retry_after=0.5).retry_after == "0.5"
        with pytest.raises(ConfigurationError, match="not a Fault"):
            IdentityEndpoint().inject("500")  # type: ignore[arg-type]

    def test_default_is_one_user_assigned_identity(self, identity_endpoint):
        (default,) = identity_endpoint.identities
        assert (default.name, default.kind) == ("uai-default", "user")
        environ = identity_endpoint.azureml_environ()
        assert environ == {
            "MSI_ENDPOINT": identity_endpoint.url + "/MSI/auth",
            "MSI_SECRET": identity_endpoint.secret,
            "DEFAULT_IDENTITY_CLIENT_ID": default.client_id,
        }
        assert identity_endpoint.imds_environ() == {"AZURE_POD_IDENTITY_AUTHORITY_HOST": identity_endpoint.url}
        assert identity_endpoint.app_service_environ() == {
            "IDENTITY_ENDPOINT": identity_endpoint.url + "/msi/token",
            "IDENTITY_HEADER": identity_endpoint.secret,
        }


class TestAzureMLRules:
    def test_token_response_shape_and_claims_follow_the_clock(self, endpoint, uai):
        response = aml(endpoint, clientid=uai.client_id)
        assert response.headers["Content-Type"] == "application/json"
        body = response.json()
        assert set(body) == {"access_token", "expires_in", "expires_on", "resource", "token_type"}
        assert (body["expires_in"], body["expires_on"]) == (3600, 1_700_003_600)  # integers, from the clock
        assert (body["resource"], body["token_type"]) == (STORAGE, "Bearer")
        minted = claims(body["access_token"])
        assert (minted["iat"], minted["nbf"], minted["exp"]) == (1_700_000_000, 1_700_000_000, 1_700_003_600)
        assert minted["iss"] == f"https://sts.windows.net/{minted['tid']}/"
        assert endpoint.requests[0].at == 1_700_000_000.0

    def test_clock_lifetime_and_refresh_in_are_settable(self, endpoint, uai):
        endpoint.clock = lambda: 1_800_000_000.0
        endpoint.token_lifetime = 600
        endpoint.refresh_in = 300
        body = aml(endpoint, clientid=uai.client_id).json()
        assert (body["expires_on"], body["expires_in"], body["refresh_in"]) == (1_800_000_600, 600, 300)
        assert claims(body["access_token"])["iat"] == 1_800_000_000

    @pytest.mark.parametrize("secret", [None, "wrong"])
    def test_missing_or_wrong_secret_is_401_text(self, endpoint, uai, secret):
        response = aml(endpoint, secret=secret, clientid=uai.client_id)
        assert response.status_code == 401
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.text == "Invalid secret token header: "
        assert endpoint.requests[0].status == 401

    def test_metadata_header_is_tolerated(self, endpoint, uai):
        assert aml(endpoint, headers={"Metadata": "true"}, clientid=uai.client_id).status_code == 200

    def test_bad_api_version_or_missing_resource_is_400(self, endpoint):
        assert aml(endpoint, **{"api-version": "2019-08-01"}).status_code == 400
        response = requests.get(
            endpoint.url + "/MSI/auth?api-version=2017-09-01", headers={"secret": endpoint.secret}, timeout=10
        )
        assert (response.status_code, response.text) == (400, "Required query parameter 'resource' is missing.")

    @pytest.mark.parametrize("params", [{}, {"clientid": "clientid"}, {"clientid": ""}, {"client_id": "x"}])
    def test_no_guid_clientid_gets_a_user_token(self, endpoint, params):
        body = aml(endpoint, **params).json()
        minted = claims(body["access_token"])
        assert (minted["oid"], minted["idtyp"]) == (EMULATED_USER_OBJECT_ID, "user")
        assert endpoint.requests[0].user_token

    def test_unknown_clientid_is_404_text(self, endpoint, uai):
        response = aml(endpoint, clientid=uai.object_id)
        assert response.status_code == 404
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert response.text.startswith("InternalError - :{")

    def test_query_values_are_url_decoded_and_echoed(self, endpoint, uai):
        # Go's client encodes ':' and '/', Python's requests does not: both must mean the same resource.
        raw = (
            f"{endpoint.url}/MSI/auth/?api-version=2017-09-01&clientid={uai.client_id.upper()}"
            "&resource=https%3A%2F%2Fmanagement.core.windows.net%2F"
        )
        body = requests.get(raw, headers={"secret": endpoint.secret}, timeout=10).json()
        assert body["resource"] == "https://management.core.windows.net/"
        assert claims(body["access_token"])["aud"] == "https://management.core.windows.net/"
        assert endpoint.requests[0].params["resource"] == "https://management.core.windows.net/"
        assert endpoint.requests[0].identity == uai  # GUIDs compare case-insensitively


class TestImdsRules:
    @pytest.mark.parametrize("metadata", [None, "True", "false"])
    def test_metadata_header_must_be_lower_case_true(self, endpoint, uai, metadata):
        response = imds(endpoint, metadata=metadata, client_id=uai.client_id)
        assert response.status_code == 400
        assert response.json() == {
            "error": "bad_request_102",
            "error_description": "Required metadata header not specified",
        }

    def test_token_response_has_string_expiry_fields(self, endpoint, uai):
        body = imds(endpoint, client_id=uai.client_id).json()
        assert (body["expires_in"], body["expires_on"], body["not_before"]) == ("3600", "1700003600", "1700000000")
        assert (body["client_id"], body["resource"], body["token_type"]) == (uai.client_id, STORAGE, "Bearer")

    def test_selectors_are_mutually_exclusive(self, endpoint, uai):
        response = imds(endpoint, client_id=uai.client_id, object_id=uai.object_id)
        assert response.status_code == 400
        assert "mutually exclusive" in response.json()["error_description"]

    def test_object_id_selector_is_echoed(self, endpoint, uai):
        body = imds(endpoint, object_id=uai.object_id).json()
        assert (body["object_id"], body["client_id"]) == (uai.object_id, uai.client_id)

    def test_no_identity_at_all_is_identity_not_found(self):
        with IdentityEndpoint(identities=[]) as endpoint:
            response = imds(endpoint)
        assert (response.status_code, response.json()["error_description"]) == (400, "Identity not found")

    def test_single_user_assigned_answers_a_request_without_selector(self, endpoint, uai):
        assert claims(imds(endpoint).json()["access_token"])["oid"] == uai.object_id


class TestAppServiceRules:
    def test_wrong_header_is_401_with_app_service_error_shape(self, endpoint, uai):
        response = app_service(endpoint, header="nope", client_id=uai.client_id)
        assert response.status_code == 401
        assert set(response.json()) == {"statusCode", "message", "correlationId"}

    def test_token_response_shape(self, endpoint, uai):
        body = app_service(endpoint, principal_id=uai.object_id).json()
        assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
        assert (body["expires_on"], body["client_id"]) == ("1700003600", uai.client_id)


class TestServer:
    def test_post_is_405_and_unknown_paths_are_404_and_not_recorded(self, endpoint):
        post = requests.post(endpoint.url + IMDS_PATH, data={"resource": STORAGE}, timeout=10)
        assert (post.status_code, post.headers["Allow"]) == (405, "GET")
        assert requests.get(endpoint.url + "/metadata/instance", timeout=10).status_code == 404
        assert [r.status for r in endpoint.requests] == [405]

    def test_keep_alive_serves_several_requests_on_one_connection(self, endpoint, uai):
        connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=10)
        path = f"{IMDS_PATH}?api-version=2018-02-01&resource={STORAGE}&client_id={uai.client_id}"
        try:
            connection.request("GET", path, headers={"Metadata": "true"})
            first_socket = connection.sock
            first = connection.getresponse()
            first.read()
            connection.request("GET", path, headers={"Metadata": "true"})
            second = connection.getresponse()
            second.read()
            assert connection.sock is first_socket  # not reconnected
        finally:
            connection.close()
        assert (first.status, second.status, first.version) == (200, 200, 11)
        assert endpoint.request_count == 2

    def test_serves_many_concurrent_connections(self, endpoint, uai):
        callers = 64
        endpoint.fail_always(Fault.hang())  # every request is held until all are in flight at once
        statuses: list[int] = []

        def call() -> None:
            statuses.append(imds(endpoint, client_id=uai.client_id).status_code)

        threads = [threading.Thread(target=call) for _ in range(callers)]
        for thread in threads:
            thread.start()
        assert len(endpoint.wait_for_requests(callers)) == callers
        endpoint.fail_always(None)
        endpoint.release_hangs()
        for thread in threads:
            thread.join()
        assert statuses == [200] * callers

    def test_reset_aborts_the_connection(self, endpoint):
        endpoint.inject(Fault.reset())
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as raw:
            raw.sendall(f"GET {IMDS_PATH}?api-version=2018-02-01&resource=x HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            with pytest.raises(ConnectionResetError):
                drain(raw)

    def test_hang_with_seconds_then_answers(self, endpoint, uai):
        endpoint.inject(Fault.hang(seconds=0.05))
        assert imds(endpoint, client_id=uai.client_id).status_code == 200
        assert [(r.status, r.fault) for r in endpoint.requests] == [(200, "hang")]

    def test_injected_faults_are_consumed_in_order_and_fail_always_wins(self, endpoint, uai):
        endpoint.inject(Fault.status(500), Fault.text(404, "gone"), Fault.status(503, body="busy"))
        assert imds(endpoint, client_id=uai.client_id).status_code == 500
        endpoint.fail_always(Fault.status(418, body={"error": "teapot"}))
        assert imds(endpoint, client_id=uai.client_id).json() == {"error": "teapot"}
        endpoint.fail_always(None)
        text = imds(endpoint, client_id=uai.client_id)
        assert (text.status_code, text.headers["Content-Type"], text.text) == (404, "text/plain; charset=utf-8", "gone")
        busy = imds(endpoint, client_id=uai.client_id)
        assert (busy.status_code, busy.text) == (503, "busy")
        assert imds(endpoint, client_id=uai.client_id).status_code == 200
        assert [r.fault for r in endpoint.requests] == ["status", "status", "text", "status", None]

    def test_missing_fields_leaves_error_responses_alone(self, endpoint):
        endpoint.inject(Fault.missing_fields("access_token"))
        response = imds(endpoint, metadata=None)
        assert response.json()["error"] == "bad_request_102"

    def test_an_emulator_bug_is_a_500_and_an_error_log(self, endpoint, uai, monkeypatch, caplog):
        def broken(*_args, **_kwargs):
            raise RuntimeError("boom")

        monkeypatch.setattr("aml_identity.testing.identity_endpoint.answer", broken)
        response = imds(endpoint, client_id=uai.client_id)
        assert (response.status_code, response.text) == (500, "identity endpoint emulator error")
        assert any(r.levelname == "ERROR" and "internal error" in r.getMessage() for r in caplog.records)
        monkeypatch.undo()
        assert imds(endpoint, client_id=uai.client_id).status_code == 200  # the endpoint keeps serving

    def test_add_identity_while_running(self, endpoint):
        late = EmulatedIdentity.user("uai-late")
        assert imds(endpoint, client_id=late.client_id).status_code == 400
        endpoint.add_identity(late)
        assert imds(endpoint, client_id=late.client_id).status_code == 200
        assert endpoint.identities[-1] == late

    def test_reset_requests_and_wait_for_requests(self, endpoint, uai):
        imds(endpoint, client_id=uai.client_id)
        endpoint.reset_requests()
        assert endpoint.requests == []
        with pytest.raises(TimeoutError, match="0 of 1"):
            endpoint.wait_for_requests(1, timeout=0.01)

    def test_lifecycle(self, uai):
        endpoint = IdentityEndpoint(identities=[uai])
        with pytest.raises(AmlIdentityError, match="not running"):
            _ = endpoint.url
        assert "not running" in repr(endpoint)
        with endpoint:
            with pytest.raises(AmlIdentityError, match="already running"):
                endpoint.start()
            # An idle keep-alive connection must not keep stop() or the server's threads waiting.
            idle = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=10)
            idle.request("GET", f"{IMDS_PATH}?api-version=2018-02-01&resource=x", headers={"Metadata": "true"})
            idle.getresponse().read()
            endpoint.inject(Fault.hang())  # and a request held by a hang: stop() drops it unanswered
            dropped: list[Exception] = []

            def held_call() -> None:
                try:
                    imds(endpoint, client_id=uai.client_id)
                except requests.ConnectionError as error:
                    dropped.append(error)

            held = threading.Thread(target=held_call)
            held.start()
            endpoint.wait_for_requests(2)
        held.join()
        assert len(dropped) == 1
        idle.close()
        assert not [t for t in threading.enumerate() if t.name.startswith("aml-identity-endpoint")]
        endpoint.stop()  # idempotent
        with endpoint:  # restartable
            assert imds(endpoint, client_id=uai.client_id).status_code == 200


def test_docs_example_runs():
    """The runnable example of docs/testing.md's "Identity endpoint emulator" section works as written."""
    text = (REPO / "docs" / "testing.md").read_text()
    section = text.split("## Identity endpoint emulator", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MSI_", "IDENTITY_", "AZURE_"))}
    env["PYTHONPATH"] = str(REPO / "src")
    guarded = "from aml_identity.testing import _guard\n_guard.install()\n" + code.group(1)  # loopback only
    done = subprocess.run(
        [sys.executable, "-c", guarded], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "token requests served by http://127.0.0.1:" in done.stdout
