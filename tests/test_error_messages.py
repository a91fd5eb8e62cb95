"""Error messages that fit their cause (issue #9 item 5): each test shows the message a user now gets."""

from __future__ import annotations

import errno
import time

import pytest
from azure.core.credentials import AccessToken

from aml_identity import default_credential
from aml_identity._environment import JobEnvironment
from aml_identity.datastore.resolve import clear_cache, resolve
from aml_identity.errors import ConfigurationError, DatastoreError, TokenRequestError
from aml_identity.testing._jwt import mint_token
from aml_identity.testing.identity_endpoint import Fault

STORAGE = "https://storage.azure.com/.default"


def test_a_403_from_plain_imds_does_not_blame_a_secret_it_never_takes(identity_endpoint, clean_env):
    for name, value in identity_endpoint.imds_environ().items():
        clean_env.setenv(name, value)
    identity_endpoint.inject(Fault.status(403, body={"error": "forbidden", "error_description": "Forbidden"}))
    with pytest.raises(TokenRequestError) as caught:
        default_credential(cache="process").get_token(STORAGE)
    message = str(caught.value)
    assert "MSI_SECRET" not in message
    assert "IMDS takes no secret" in message
    assert "NO_PROXY" in message  # the fix: a proxy answered, or this is not an Azure VM
    assert caught.value.status_code == 403


def test_a_403_from_azure_ml_still_names_the_secret(aml_job):
    aml_job.inject(Fault.status(403))
    with pytest.raises(TokenRequestError, match="MSI_SECRET in this process's environment is not the one"):
        default_credential(cache="process").get_token(STORAGE)


class _ExpiredArmToken:
    """A credential that hands out one ARM token which expired an hour ago (as a token copied from elsewhere)."""

    def get_token(self, *_scopes: str, **_kwargs: object) -> AccessToken:
        now = int(time.time())
        token = mint_token(audience="https://management.azure.com", issued_at=now - 7200, expires_on=now - 3600,
                           object_id="6f1b8a52-0000-4000-8000-000000000001",
                           client_id="6f1b8a52-0000-4000-8000-000000000002")  # fmt: skip
        return AccessToken(token, now + 3600)  # claims to be valid, so the pipeline sends it


def test_a_401_from_arm_is_an_authentication_problem_not_a_missing_role(arm_emulator, clean_env):
    sub, group, ws = "5ab5c1e7-0000-4000-8000-00000000a11d", "rg-aml", "ws-aml"
    workspace = arm_emulator.add_workspace(sub, group, ws)
    arm_emulator.add_datastore(workspace, "inputs", account_name="devstoreaccount1", container_name="inputs")
    environ = {
        "AZUREML_ARM_SUBSCRIPTION": sub, "AZUREML_ARM_RESOURCEGROUP": group, "AZUREML_ARM_WORKSPACE_NAME": ws,
        **arm_emulator.environ(), "AML_IDENTITY_LOOPBACK_ONLY": "1",
    }  # fmt: skip
    clear_cache()
    with pytest.raises(DatastoreError) as caught:
        resolve("azureml://datastores/inputs/paths/", credential=_ExpiredArmToken(), environ=environ)
    message = str(caught.value)
    assert "HTTP 401 ExpiredAuthenticationToken" in message
    assert "authentication problem, not a missing role" in message
    assert "datastores/read" not in message  # the old, wrong fix
    assert "clock" in message


@pytest.mark.parametrize("variable", ["LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"])
def test_a_non_ascii_local_rank_is_a_configuration_error_naming_variable_value_and_fix(variable):
    with pytest.raises(ConfigurationError) as caught:
        JobEnvironment.from_environ({variable: "²"})  # str.isdigit() says yes, int() says no
    message = str(caught.value)
    assert f"{variable}='²'" in message
    assert "ASCII digits" in message
    assert f"unset {variable}" in message
    assert caught.value.name == variable


def test_a_local_rank_is_read_from_the_first_launcher_variable():
    assert JobEnvironment.from_environ({"LOCAL_RANK": "3", "SLURM_LOCALID": "1"}).local_rank == 3
    assert JobEnvironment.from_environ({}).local_rank is None


def test_a_refused_storage_request_is_caught_as_a_permission_error_and_as_before():
    from azure.core.exceptions import HttpResponseError

    from aml_identity.errors import DataAccessDeniedError

    def refuse() -> None:
        raise DataAccessDeniedError(
            "Storage account 'acct' refused to let the identity (client id c) read blobs in container 'data'.",
            identity="client id c", account="acct", operation="read", role="Storage Blob Data Reader",
        )  # fmt: skip

    with pytest.raises(PermissionError) as caught:  # what pandas/PyArrow/fsspec callers catch for a refusal
        refuse()
    assert caught.value.errno == errno.EACCES
    assert str(caught.value).startswith("Storage account 'acct' refused")  # the message alone, no "[Errno 13]"
    assert caught.value.role == "Storage Blob Data Reader"
    for base in (HttpResponseError, DatastoreError):  # existing except clauses keep working
        with pytest.raises(base):
            refuse()
