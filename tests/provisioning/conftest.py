"""Provisioning test fixtures: a seeded ARM emulator, a workspace bound to it, a managed-identity endpoint."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from aml_identity.provisioning import Workspace
from aml_identity.testing import mint_token
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
        self.uai = arm.add_user_assigned_identity(
            SUB, RG, "uai-main", client_id=UAI_CLIENT, principal_id=UAI_PRINCIPAL
        )
        self.uai2 = arm.add_user_assigned_identity(SUB, RG, "uai-second")
        self.group = f"/subscriptions/{SUB}/resourceGroups/{RG}"


@pytest.fixture
def arm(aml_tls):
    with ArmEmulator(tls=aml_tls) as emulator:
        emulator.seeded = Seeded(emulator)
        yield emulator
        assert emulator.rejected_requests == [], "a request body did not match the official spec"


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


class _MsiHandler(BaseHTTPRequestHandler):
    """The Azure ML managed-identity protocol (``MSI_ENDPOINT`` + ``secret`` header) for azure-identity."""

    secret = ""
    lifetime = 24 * 3600  # managed-identity tokens last about a day

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        if self.headers.get("secret") != self.secret:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        now = int(time.time())
        resource = query.get("resource", "").removesuffix("/.default")
        token = mint_token(
            audience=resource,
            issued_at=now,
            expires_on=now + self.lifetime,
            object_id=UAI_PRINCIPAL,
            client_id=query.get("clientid", UAI_CLIENT),
        )
        body = json.dumps(
            {
                "access_token": token,
                "expires_on": str(now + self.lifetime),
                "resource": resource,
                "token_type": "Bearer",
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def msi_environ():
    """A local managed-identity endpoint (Azure ML flavour) for azure-identity's DefaultAzureCredential.

    Stands in until the project's IdentityEndpoint emulator is available to this branch.
    """
    handler = type("Handler", (_MsiHandler,), {"secret": uuid.uuid4().hex})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield {
            "MSI_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}/MSI/auth",
            "MSI_SECRET": handler.secret,
        }
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
