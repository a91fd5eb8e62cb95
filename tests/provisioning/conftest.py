"""Provisioning test fixtures: a seeded ARM emulator, a workspace bound to it, a managed-identity endpoint."""

from __future__ import annotations

import pytest

from aml_identity.provisioning import Workspace
from aml_identity.testing import EmulatedIdentity, IdentityEndpoint
from aml_identity.testing.arm import ArmEmulator

SUB = "00000000-0000-0000-0000-0000000000aa"
RG = "ml-rg"
WS = "ws-test"
DATA_RG = "data-rg"
ACCOUNT = "trainingdata"
UAI_CLIENT = "11111111-1111-4111-8111-111111111111"
UAI_PRINCIPAL = "22222222-2222-4222-8222-222222222222"


class Seeded:
    """What the ``arm`` fixture seeded."""

    sub, rg, ws_name, data_rg, account_name = SUB, RG, WS, DATA_RG, ACCOUNT
    uai_client, uai_principal = UAI_CLIENT, UAI_PRINCIPAL

    def __init__(self, arm: ArmEmulator) -> None:
        self.registry = arm.add_container_registry(SUB, RG, "acrtest")
        self.workspace = arm.add_workspace(SUB, RG, WS, container_registry=self.registry)
        self.account = arm.add_storage_account(SUB, DATA_RG, ACCOUNT)
        self.uai = arm.add_user_assigned_identity(SUB, RG, "uai-main", client_id=UAI_CLIENT, principal_id=UAI_PRINCIPAL)
        self.uai2 = arm.add_user_assigned_identity(SUB, RG, "uai-second")
        self.group = f"/subscriptions/{SUB}/resourceGroups/{RG}"


@pytest.fixture
def arm(aml_tls):
    with ArmEmulator(tls=aml_tls) as emulator:
        emulator.seeded = Seeded(emulator)
        yield emulator
        assert emulator.rejected_requests == [], "a request body did not match the official spec"


@pytest.fixture
def paged_arm(aml_tls):
    """An emulator that splits every list into pages of one item (``nextLink`` after each)."""
    with ArmEmulator(tls=aml_tls, page_size=1) as emulator:
        emulator.seeded = Seeded(emulator)
        yield emulator
        assert emulator.rejected_requests == []


@pytest.fixture
def seeded(arm) -> Seeded:
    return arm.seeded


def workspace_for(arm: ArmEmulator) -> Workspace:
    """A Workspace bound to the emulator, its clock and its certificate, in a loopback-only environment."""
    environ = {"AML_IDENTITY_ARM_ENDPOINT": arm.endpoint, "AML_IDENTITY_LOOPBACK_ONLY": "1"}
    return Workspace(
        SUB,
        RG,
        WS,
        credential=arm.credential(),
        environ=environ,
        connection_verify=str(arm.tls.cert),
        sleep=arm.sleep,
    )


@pytest.fixture
def ws(arm) -> Workspace:
    return workspace_for(arm)


@pytest.fixture
def make_workspace():
    """Build a workspace for an emulator (for tests that start their own)."""
    return workspace_for


@pytest.fixture
def msi_environ():
    """An Azure ML managed-identity endpoint (the IdentityEndpoint emulator) for DefaultAzureCredential.

    ``AZURE_CLIENT_ID`` names the identity, as on a compute with a user-assigned identity: azure-identity's
    managed-identity credential then asks for it by client id.
    """
    identity = EmulatedIdentity.user("setup-identity", client_id=UAI_CLIENT, object_id=UAI_PRINCIPAL)
    with IdentityEndpoint(identities=[identity]) as endpoint:
        yield {**endpoint.azureml_environ(identity), "AZURE_CLIENT_ID": identity.client_id}
