"""``mount(credential=)`` takes any ``TokenCredential``, as its type says, not only a job credential.

The mount runs in its own process; a credential that cannot be re-created there (here azure-identity's own
``ManagedIdentityCredential``, unmodified) serves its tokens to it from this process, through a loopback
endpoint only the mount process knows the secret of.
"""

from __future__ import annotations

import pytest
from azure.identity import ManagedIdentityCredential

from aml_identity.datastore import mount

pytestmark = [pytest.mark.azurite, pytest.mark.fuse]


class CountingCredential:
    """Any TokenCredential: wraps azure-identity's and counts what the mount process asked for."""

    def __init__(self, inner: ManagedIdentityCredential) -> None:
        self.inner = inner
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: object):
        self.scopes.extend(scopes)
        return self.inner.get_token(*scopes, **kwargs)


def test_a_mount_with_an_azure_identity_credential_reads_with_that_credentials_tokens(storage_job, store):
    store.seed({"data/a.txt": b"from azure-identity"})
    identity = storage_job.identities[0]
    credential = CountingCredential(ManagedIdentityCredential(client_id=identity.client_id))

    with mount(store.uri("data/"), credential=credential) as m:
        assert (m.path / "a.txt").read_bytes() == b"from azure-identity"

    assert "https://storage.azure.com/.default" in credential.scopes  # the mount process asked this credential
    assert all(r.identity == identity for r in storage_job.requests if r.status == 200)


def test_a_failing_credential_fails_the_mount_with_its_reason(storage_job, store):
    from aml_identity.errors import DatastoreError

    class Broken:
        def get_token(self, *scopes: str, **kwargs: object):
            raise RuntimeError("no tokens today")

    store.seed({"data/a.txt": b"a"})
    with pytest.raises(DatastoreError, match="no tokens today"):
        mount(store.uri("data/"), credential=Broken())
