"""A missing storage role gives DataAccessDeniedError naming the identity and the fix; granting it works."""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError

from aml_identity import default_credential
from aml_identity.datastore import download, upload
from aml_identity.errors import DataAccessDeniedError
from aml_identity.provisioning import grant_data_access

pytestmark = pytest.mark.azurite

SUBSCRIPTION = "5ab5c1e7-0000-4000-8000-00000000da7a"
RESOURCE_GROUP = "rg-data"


@pytest.fixture
def guarded(workspace_job, storage_auth_proxy, via):
    """Azurite behind the StorageAuthProxy fixture, which enforces the role assignments the ARM emulator holds."""
    account = workspace_job.add_storage_account(SUBSCRIPTION, RESOURCE_GROUP, "devstoreaccount1")
    return storage_auth_proxy, via(storage_auth_proxy), account, workspace_job


def _grant(arm, scope: str, principal_id: str, role: str) -> None:
    """Grant through the ARM emulator's REST API, as a setup script would (api-version 2022-04-01)."""
    grants = grant_data_access(principal_id, scope, role, credential=arm.credential(), acr_pull=False,
                               connection_verify=str(arm.tls.cert))  # fmt: skip
    assert [g.role for g in grants] == [role]


def test_no_role_gives_the_identity_the_account_and_the_fix_and_granting_it_works(guarded, store, tmp_path):
    proxy, env, account_id, arm = guarded
    identity = default_credential(environ=env).identity
    store.seed({"data/x.bin": b"x" * 100})

    with pytest.raises(DataAccessDeniedError) as caught:
        download(store.uri("data/"), tmp_path / "d", progress=False, environ=env)

    error = caught.value
    object_id = error.object_id
    assert error.client_id == identity.client_id
    assert error.object_id and error.object_id != error.client_id
    assert (error.account, error.operation, error.role) == ("devstoreaccount1", "list", "Storage Blob Data Reader")
    assert error.error_code == "AuthorizationPermissionMismatch"
    assert error.status_code == 403
    message = str(error)
    for fact in (identity.client_id, object_id, "devstoreaccount1", "Storage Blob Data Reader",
                 "az role assignment create", "grant_data_access"):  # fmt: skip
        assert fact in message
    assert isinstance(error, HttpResponseError)
    assert "eyJ" not in message + repr(error)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())

    _grant(arm, account_id, object_id, "Storage Blob Data Reader")
    assert arm.has_data_role(object_id, "devstoreaccount1", "read")

    result = download(store.uri("data/"), tmp_path / "d", progress=False, environ=env)
    assert (tmp_path / "d" / "x.bin").read_bytes() == b"x" * 100
    assert result.transferred_files == 1

    # Reading is not writing: the reader role does not let it upload, and the error says which role does.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "y.txt").write_text("y")
    with pytest.raises(DataAccessDeniedError) as caught:
        upload(tmp_path / "out", store.uri("results/"), progress=False, environ=env)
    assert (caught.value.operation, caught.value.role) == ("write", "Storage Blob Data Contributor")
    _grant(arm, account_id, object_id, "Storage Blob Data Contributor")
    assert len(arm.requests_for("RoleAssignments_Create")) == 2
    upload(tmp_path / "out", store.uri("results/"), progress=False, environ=env)
    assert store.read("results/y.txt") == b"y"
    assert proxy.statuses()[403] == 2


def test_an_upload_without_any_role_names_the_write_role_even_when_its_listing_is_refused(guarded, tmp_path):
    proxy, env, _, _ = guarded
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "y.txt").write_text("y")

    with pytest.raises(DataAccessDeniedError) as caught:
        upload(tmp_path / "out", "wasbs://outputs@devstoreaccount1.blob.core.windows.net/run/", progress=False,
               environ=env)  # fmt: skip

    # The upload lists its destination first; Reader would fix that request and fail the next one.
    assert (caught.value.operation, caught.value.role) == ("list", "Storage Blob Data Contributor")
    assert "(to write there)" in str(caught.value)
    assert proxy.statuses() == {403: 1}
