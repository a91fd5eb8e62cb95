"""StorageAuthProxy: Azure's role checks in front of Azurite, answering as Azure does, seen by the real SDK."""

from __future__ import annotations

import time
import uuid

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.storage.blob import BlobServiceClient

from aml_identity.testing import FakeClock, StorageAuthProxy, mint_token
from aml_identity.testing.storage_proxy import DATA_ACTIONS, classify

pytestmark = pytest.mark.azurite


class Token:
    """A TokenCredential for one principal, minted on ``clock``."""

    def __init__(self, oid: str, clock=time.time, lifetime: int = 3600) -> None:
        self.oid, self.clock, self.lifetime = oid, clock, lifetime

    def get_token(self, *scopes, **kwargs):
        now = int(self.clock())
        token = mint_token(audience="https://storage.azure.com", issued_at=now, expires_on=now + self.lifetime,
                           object_id=self.oid, client_id=str(uuid.uuid4()))  # fmt: skip
        return AccessToken(token, now + self.lifetime)


class Grants:
    """A minimal authorizer: a set of (principal, account, action)."""

    def __init__(self) -> None:
        self.allowed: set[tuple[str, str, str]] = set()
        self.calls: list[tuple[str, str, str, str | None]] = []

    def __call__(self, principal_id, account_name, action, *, container=None) -> bool:
        self.calls.append((principal_id, account_name, action, container))
        return (principal_id, account_name, action) in self.allowed


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/acct/c/blob.bin", "", ("acct", "c", "read")),
        ("HEAD", "/acct/c/a/b/c.bin", "", ("acct", "c", "read")),
        ("GET", "/acct/c", "restype=container&comp=list&prefix=x", ("acct", "c", "list")),
        ("GET", "/acct/c/blob", "comp=blocklist", ("acct", "c", "read")),
        ("PUT", "/acct/c/blob", "", ("acct", "c", "write")),
        ("PUT", "/acct/c/blob", "comp=block&blockid=AAAA", ("acct", "c", "write")),
        ("PUT", "/acct/c/blob", "comp=blocklist", ("acct", "c", "write")),
        ("PUT", "/acct/c", "restype=container", ("acct", "c", "write")),
        ("DELETE", "/acct/c/blob", "", ("acct", "c", "delete")),
    ],
)
def test_requests_are_classified_by_the_data_action_they_need(method, path, query, expected):
    assert classify(method, path, query) == expected
    assert DATA_ACTIONS[expected[2]].startswith("Microsoft.Storage/storageAccounts/blobServices/containers/blobs/")


@pytest.fixture
def proxied(azurite):
    grants = Grants()
    with StorageAuthProxy(f"https://127.0.0.1:{azurite.port}", authorizer=grants, tls=azurite.tls) as proxy:
        yield proxy, grants


def _service(proxy, azurite, credential):
    return BlobServiceClient(proxy.blob_endpoint(), credential=credential, connection_verify=str(azurite.tls.cert))


def test_the_real_sdk_sees_azures_authorization_permission_mismatch_until_the_role_is_there(proxied, azurite):
    proxy, grants = proxied
    oid = str(uuid.uuid4())
    # Seed through the proxy with shared key: no bearer token, so no role check (as in Azure).
    keyed = BlobServiceClient.from_connection_string(
        azurite.connection_string().replace(azurite.blob_endpoint(), proxy.blob_endpoint()),
        connection_verify=str(azurite.tls.cert),
    )
    keyed.create_container("guarded")
    keyed.get_container_client("guarded").upload_blob("a.txt", b"secret")
    container = _service(proxy, azurite, Token(oid)).get_container_client("guarded")

    with pytest.raises(HttpResponseError) as caught:
        container.download_blob("a.txt").readall()
    assert caught.value.status_code == 403
    assert caught.value.error_code == "AuthorizationPermissionMismatch"
    assert "This request is not authorized to perform this operation using this permission." in str(caught.value)
    with pytest.raises(HttpResponseError) as caught:  # HEAD: no body, the code in the header
        container.get_blob_client("a.txt").get_blob_properties()
    assert caught.value.error_code == "AuthorizationPermissionMismatch"

    grants.allowed |= {(oid, "devstoreaccount1", "read"), (oid, "devstoreaccount1", "list")}
    assert container.download_blob("a.txt").readall() == b"secret"
    assert [b.name for b in container.list_blobs()] == ["a.txt"]
    with pytest.raises(HttpResponseError, match="not authorized"):
        container.upload_blob("b.txt", b"no write role")
    assert ("devstoreaccount1", "guarded") in {(c[1], c[3]) for c in grants.calls}
    assert proxy.statuses()[403] == 3


def test_with_a_clock_the_proxy_refuses_expired_tokens_as_storage_does(azurite):
    clock = FakeClock()
    oid = str(uuid.uuid4())
    with StorageAuthProxy(
        f"https://127.0.0.1:{azurite.port}", authorizer=lambda *_, **__: True, tls=azurite.tls, clock=clock
    ) as proxy:
        service = _service(proxy, azurite, Token(oid, clock=clock, lifetime=60))
        service.create_container("clocked")
        token = Token(oid, clock=clock, lifetime=60).get_token().token

        class Fixed:
            def get_token(self, *scopes, **kwargs):
                return AccessToken(token, int(clock()) + 60)

        stale = _service(proxy, azurite, Fixed()).get_container_client("clocked")
        stale.upload_blob("x", b"1")  # valid now
        clock.advance(61)  # the token's exp is behind the emulated storage clock now
        with pytest.raises(ClientAuthenticationError) as caught:
            stale.upload_blob("y", b"2")
        assert caught.value.error_code == "AuthenticationFailed"
        assert "Lifetime validation failed. The token is expired." in str(caught.value)
        # Azurite itself (real clock) never saw a token it would refuse: the proxy re-mints for it.
        assert [r.status for r in proxy.requests] == [201, 201, 403]
