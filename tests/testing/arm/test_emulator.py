"""The ARM emulator, driven by the real azure-mgmt-core pipeline and polling."""

from __future__ import annotations

import json
import time

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline import policies
from azure.core.pipeline.transport import RequestsTransport
from azure.core.polling import LROPoller
from azure.core.rest import HttpRequest
from azure.mgmt.core import ARMPipelineClient
from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy
from azure.mgmt.core.polling.arm_polling import ARMPolling

from aml_identity.testing import mint_token
from aml_identity.testing.arm import ArmEmulator, SpecViolationError, VmSize

SUB = "00000000-0000-0000-0000-0000000000aa"
ML = "2025-12-01"
READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
DEFINITIONS = f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions"
ASSIGNMENTS = "providers/Microsoft.Authorization/roleAssignments"


class _Transport(RequestsTransport):
    """A requests transport whose waits move the emulator's clock instead of sleeping."""

    def __init__(self, arm: ArmEmulator) -> None:
        super().__init__(connection_verify=str(arm.tls.cert), timeout=30)
        self._arm = arm

    def sleep(self, duration: float) -> None:
        self._arm.sleep(duration)


def _client(arm: ArmEmulator) -> ARMPipelineClient:
    pipeline_policies = [
        policies.RequestIdPolicy(),
        policies.HeadersPolicy(),
        policies.UserAgentPolicy("aml-identity-tests"),
        policies.RetryPolicy(retry_total=0),
        ARMChallengeAuthenticationPolicy(arm.credential(), "https://management.azure.com/.default"),
    ]
    return ARMPipelineClient(base_url=arm.endpoint, policies=pipeline_policies, transport=_Transport(arm))


def _body(*, min_nodes: int = 0, identity: dict | None = None, vm_size: str = "STANDARD_DS3_V2") -> dict:
    body: dict = {
        "location": "eastus",
        "properties": {
            "computeType": "AmlCompute",
            "properties": {
                "vmSize": vm_size,
                "vmPriority": "dedicated",
                "scaleSettings": {
                    "minNodeCount": min_nodes,
                    "maxNodeCount": 4,
                    "nodeIdleTimeBeforeScaleDown": "PT120S",
                },
            },
        },
    }
    if identity is not None:
        body["identity"] = identity
    return body


@pytest.fixture
def arm(aml_tls):
    with ArmEmulator(tls=aml_tls) as emulator:
        yield emulator


@pytest.fixture
def ws(arm):
    return arm.add_workspace(SUB, "rg", "ws")


def _send(client: ARMPipelineClient, method: str, url: str, api: str = ML, body=None, **params):
    request = HttpRequest(method, client.format_url(url), params={"api-version": api, **params}, json=body)
    return client.send_request(request)


def _begin(client: ARMPipelineClient, method: str, url: str, body=None, **params) -> LROPoller:
    request = HttpRequest(method, client.format_url(url), params={"api-version": ML, **params}, json=body)
    initial = client.send_request(request, _return_pipeline_response=True)
    if initial.http_response.status_code >= 400:
        raise HttpResponseError(response=initial.http_response)

    def deserialize(pipeline_response):
        text = pipeline_response.http_response.text()
        return json.loads(text) if text else None

    return LROPoller(client, initial, deserialize, ARMPolling(timeout=30))


class TestLongRunningOperations:
    def test_create_polls_async_operation_to_succeeded(self, arm, ws):
        """PUT -> 201 + Azure-AsyncOperation; ARMPolling honours Retry-After and ends with the GET."""
        client = _client(arm)
        result = _begin(client, "PUT", f"{ws}/computes/c1", _body()).result()
        assert result["properties"]["provisioningState"] == "Succeeded"
        assert arm.sleeps == [10, 10, 10, 10, 10, 10]  # 60 emulated seconds at Retry-After: 10
        polled = [r for r in arm.requests if "computeOperationsStatus" in r.path]
        assert len(polled) == 7  # one right away, then one after each Retry-After
        assert [r.operation_id for r in arm.requests][-1] == "Compute_Get"  # the final GET
        assert arm.rejected_requests == []

    def test_failed_operation_carries_the_service_error(self, arm, ws):
        arm.fail_next_operation(code="QuotaExceeded", message="Operation results in exceeding quota limits")
        client = _client(arm)
        with pytest.raises(HttpResponseError) as raised:
            _begin(client, "PUT", f"{ws}/computes/c1", _body()).result()
        assert "QuotaExceeded" in str(raised.value)
        compute = arm.compute(f"{ws}/computes/c1")
        assert compute is not None
        assert compute["properties"]["provisioningState"] == "Failed"
        assert compute["properties"]["provisioningErrors"][0]["error"]["code"] == "QuotaExceeded"

    def test_patch_scales_and_nodes_move_toward_the_target(self, arm, ws):
        client = _client(arm)
        _begin(client, "PUT", f"{ws}/computes/c1", _body()).result()
        patch = {"properties": {"properties": {"scaleSettings": {"minNodeCount": 2, "maxNodeCount": 4}}}}
        result = _begin(client, "PATCH", f"{ws}/computes/c1", patch).result()
        props = result["properties"]["properties"]
        assert (props["allocationState"], props["currentNodeCount"], props["targetNodeCount"]) == (
            "Resizing",
            0,
            2,
        )
        arm.advance(30)
        props = _send(client, "GET", f"{ws}/computes/c1").json()["properties"]["properties"]
        assert (props["allocationState"], props["currentNodeCount"]) == ("Resizing", 1)
        arm.advance(30)
        props = _send(client, "GET", f"{ws}/computes/c1").json()["properties"]["properties"]
        assert (props["allocationState"], props["currentNodeCount"], props["targetNodeCount"]) == (
            "Steady",
            2,
            2,
        )
        assert props["nodeStateCounts"]["idleNodeCount"] == 2

    def test_patch_without_change_starts_no_operation(self, arm, ws):
        client = _client(arm)
        _begin(client, "PUT", f"{ws}/computes/c1", _body()).result()
        same = {"properties": {"properties": {"scaleSettings": {"maxNodeCount": 4}}}}
        response = _send(client, "PATCH", f"{ws}/computes/c1", body=same)
        assert response.status_code == 200
        assert "Azure-AsyncOperation" not in response.headers

    def test_delete_then_gone(self, arm, ws):
        client = _client(arm)
        _begin(client, "PUT", f"{ws}/computes/c1", _body()).result()
        assert _send(client, "DELETE", f"{ws}/computes/c1").status_code == 400  # underlyingResourceAction
        poller = _begin(client, "DELETE", f"{ws}/computes/c1", underlyingResourceAction="Delete")
        poller.result()
        assert _send(client, "GET", f"{ws}/computes/c1").status_code == 404
        missing = _send(client, "DELETE", f"{ws}/computes/c1", underlyingResourceAction="Delete")
        assert missing.status_code == 204

    def test_busy_compute_refuses_another_operation(self, arm, ws):
        client = _client(arm)
        _send(client, "PUT", f"{ws}/computes/c1", body=_body())
        response = _send(client, "PUT", f"{ws}/computes/c1", body=_body())
        assert response.status_code == 409


class TestComputeRules:
    def test_identity_ids_are_filled_in(self, arm, ws):
        uai = arm.add_user_assigned_identity(
            SUB,
            "rg",
            "uai1",
            client_id="11111111-1111-1111-1111-111111111111",
            principal_id="22222222-2222-2222-2222-222222222222",
        )
        client = _client(arm)
        system = _begin(client, "PUT", f"{ws}/computes/sa", _body(identity={"type": "SystemAssigned"})).result()
        assert system["identity"]["type"] == "SystemAssigned"
        assert len(system["identity"]["principalId"]) == 36
        user = _begin(
            client,
            "PUT",
            f"{ws}/computes/ua",
            _body(identity={"type": "userassigned", "userAssignedIdentities": {uai.lower(): {}}}),
        ).result()
        assert user["identity"] == {
            "type": "UserAssigned",
            "userAssignedIdentities": {
                uai: {
                    "principalId": "22222222-2222-2222-2222-222222222222",
                    "clientId": "11111111-1111-1111-1111-111111111111",
                }
            },
        }

    def test_unknown_user_assigned_identity_is_refused(self, arm, ws):
        body = _body(identity={"type": "UserAssigned", "userAssignedIdentities": {f"/subscriptions/{SUB}/x": {}}})
        response = _send(_client(arm), "PUT", f"{ws}/computes/c1", body=body)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "FailedIdentityOperation"

    def test_both_identity_kinds_are_refused(self, arm, ws):
        uai = arm.add_user_assigned_identity(SUB, "rg", "uai1")
        body = _body(identity={"type": "SystemAssigned,UserAssigned", "userAssignedIdentities": {uai: {}}})
        response = _send(_client(arm), "PUT", f"{ws}/computes/c1", body=body)
        assert response.status_code == 400
        assert "not both" in response.json()["error"]["message"]

    def test_vm_size_cannot_change_after_creation(self, arm, ws):
        client = _client(arm)
        _begin(client, "PUT", f"{ws}/computes/c1", _body()).result()
        response = _send(client, "PUT", f"{ws}/computes/c1", body=_body(vm_size="Standard_DS4_v2"))
        assert response.status_code == 400
        assert response.json()["error"]["target"] == "properties.properties.vmSize"

    def test_invalid_body_gets_400_with_the_path(self, arm, ws):
        body = _body()
        del body["properties"]["properties"]["scaleSettings"]["maxNodeCount"]
        response = _send(_client(arm), "PUT", f"{ws}/computes/c1", body=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "InvalidRequestContent"
        assert error["target"] == "$.properties.properties.scaleSettings"
        assert "maxNodeCount" in error["message"]
        ((recorded, errors),) = arm.rejected_requests
        assert recorded.operation_id == "Compute_CreateOrUpdate"
        assert errors[0].path == "$.properties.properties.scaleSettings"

    def test_wrong_api_version(self, arm, ws):
        response = _send(_client(arm), "GET", f"{ws}/computes", api="2019-05-01")
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "InvalidApiVersionParameter"
        assert (
            "The api-version '2019-05-01' is invalid. The supported versions are '2025-12-01,"
            in (response.json()["error"]["message"])
        )

    def test_one_node_must_fit_the_quota(self, arm, ws):
        arm.set_quota("eastus", family="standardDSv2Family", limit=2)
        response = _send(_client(arm), "PUT", f"{ws}/computes/c1", body=_body())
        assert response.status_code == 400
        assert "Standard DSv2 Family Cluster Dedicated vCPUs quota of 2" in response.json()["error"]["message"]


class TestLocks:
    def test_resource_group_lock_keeps_the_cluster_resizing_0_to_0(self, arm, ws):
        client = _client(arm)
        lock = arm.add_lock(f"/subscriptions/{SUB}/resourceGroups/rg", "no-delete", "CanNotDelete", notes="keep")
        result = _begin(client, "PUT", f"{ws}/computes/c1", _body(min_nodes=1)).result()
        arm.advance(600)
        props = _send(client, "GET", f"{ws}/computes/c1").json()["properties"]["properties"]
        assert result["properties"]["provisioningState"] == "Succeeded"
        assert (props["allocationState"], props["currentNodeCount"], props["targetNodeCount"]) == (
            "Resizing",
            0,
            0,
        )
        arm.remove_lock(lock)
        arm.advance(30)
        props = _send(client, "GET", f"{ws}/computes/c1").json()["properties"]["properties"]
        assert (props["allocationState"], props["currentNodeCount"]) == ("Steady", 1)

    def test_locks_are_listed_and_created_over_http(self, arm, ws):
        client = _client(arm)
        group = f"/subscriptions/{SUB}/resourceGroups/rg"
        created = _send(
            client,
            "PUT",
            f"{group}/providers/Microsoft.Authorization/locks/ro",
            api="2020-05-01",
            body={"properties": {"level": "readonly", "notes": "n"}},
        )
        assert created.status_code == 201
        assert created.json()["properties"]["level"] == "ReadOnly"
        nsg = (
            f"{group}/providers/Microsoft.Network/networkSecurityGroups/abc-azurebatch-cloudservicenetworksecuritygroup"
        )
        arm.add_lock(nsg, "nsg-lock", "CanNotDelete")
        listed = _send(client, "GET", f"{group}/providers/Microsoft.Authorization/locks", api="2020-05-01").json()
        assert sorted(lock["name"] for lock in listed["value"]) == ["nsg-lock", "ro"]
        at_sub = _send(client, "GET", f"/subscriptions/{SUB}/providers/Microsoft.Authorization/locks", api="2020-05-01")
        assert len(at_sub.json()["value"]) == 2

    def test_a_lock_elsewhere_does_not_block(self, arm, ws):
        client = _client(arm)
        arm.add_lock(f"/subscriptions/{SUB}/resourceGroups/other", "elsewhere", "CanNotDelete")
        _begin(client, "PUT", f"{ws}/computes/c1", _body(min_nodes=1)).result()
        arm.advance(30)
        props = _send(client, "GET", f"{ws}/computes/c1").json()["properties"]["properties"]
        assert (props["allocationState"], props["currentNodeCount"]) == ("Steady", 1)


class TestRoleAssignments:
    def test_create_get_list_delete_and_exists(self, arm):
        client = _client(arm)
        account = arm.add_storage_account(SUB, "data", "acct")
        principal = "33333333-3333-3333-3333-333333333333"
        arm.add_principal(principal)
        body = {
            "properties": {
                "roleDefinitionId": f"{DEFINITIONS}/{READER}",
                "principalId": principal,
            }
        }
        url = f"{account}/{ASSIGNMENTS}/44444444-4444-4444-4444-444444444444"
        assert _send(client, "PUT", url, api="2022-04-01", body=body).status_code == 201
        assert _send(client, "PUT", url, api="2022-04-01", body=body).status_code == 200  # same again
        other = url.replace("44444444-4444-4444-4444-444444444444", "55555555-5555-5555-5555-555555555555")
        exists = _send(client, "PUT", other, api="2022-04-01", body=body)
        assert exists.status_code == 409
        assert exists.json()["error"]["code"] == "RoleAssignmentExists"
        assert _send(client, "GET", url, api="2022-04-01").json()["properties"]["principalId"] == principal
        listed = _send(
            client,
            "GET",
            f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleAssignments",
            api="2022-04-01",
            **{"$filter": f"principalId eq '{principal}'"},
        ).json()["value"]
        assert len(listed) == 1
        assert _send(client, "DELETE", url, api="2022-04-01").status_code == 200
        assert _send(client, "GET", url, api="2022-04-01").status_code == 404

    def test_unknown_principal_without_principal_type(self, arm):
        account = arm.add_storage_account(SUB, "data", "acct")
        body = {
            "properties": {
                "roleDefinitionId": f"/providers/Microsoft.Authorization/roleDefinitions/{READER}",
                "principalId": "66666666-6666-6666-6666-666666666666",
            }
        }
        url = f"{account}/{ASSIGNMENTS}/77777777-7777-7777-7777-777777777777"
        response = _send(_client(arm), "PUT", url, api="2022-04-01", body=body)
        assert response.json()["error"]["code"] == "PrincipalNotFound"
        body["properties"]["principalType"] = "ServicePrincipal"
        assert _send(_client(arm), "PUT", url, api="2022-04-01", body=body).status_code == 201

    def test_has_data_role_by_scope_and_action(self, arm):
        arm.add_storage_account(SUB, "data", "acct")
        reader, writer, scoped = (
            "a0000000-0000-0000-0000-000000000001",
            "a0000000-0000-0000-0000-000000000002",
            "a0000000-0000-0000-0000-000000000003",
        )
        arm.add_role_assignment(f"/subscriptions/{SUB}/resourceGroups/data", reader, "Storage Blob Data Reader")
        arm.add_role_assignment(f"/subscriptions/{SUB}", writer, CONTRIBUTOR)
        container = f"/subscriptions/{SUB}/resourceGroups/data/providers/Microsoft.Storage/storageAccounts/acct"
        arm.add_role_assignment(f"{container}/blobServices/default/containers/train", scoped, "Storage Blob Data Owner")
        assert arm.has_data_role(reader, "acct", "read")
        assert arm.has_data_role(reader, "ACCT", "list")
        assert not arm.has_data_role(reader, "acct", "write")
        assert arm.has_data_role(writer, "acct", "delete")
        assert not arm.has_data_role(writer, "otheracct", "read")
        assert arm.has_data_role(scoped, "acct", "write", container="train")
        assert not arm.has_data_role(scoped, "acct", "write", container="eval")
        assert not arm.has_data_role(scoped, "acct", "read")


class TestOtherResources:
    def test_workspace_identity_datastores_sizes_usages(self, arm, ws):
        client = _client(arm)
        assert _send(client, "GET", ws).json()["location"] == "eastus"
        uai = arm.add_user_assigned_identity(SUB, "rg", "uai1", client_id="11111111-1111-1111-1111-111111111111")
        assert _send(client, "GET", uai, api="2026-05-31").json()["properties"]["clientId"].startswith("1111")
        arm.add_datastore(ws, "training", account_name="acct", container_name="data", is_default=True)
        arm.add_datastore((SUB, "rg", "ws"), "other", account_name="acct2", container_name="c")
        store = _send(client, "GET", f"{ws}/datastores/training").json()
        assert (store["properties"]["accountName"], store["properties"]["credentials"]) == (
            "acct",
            {"credentialsType": "None"},
        )
        assert len(_send(client, "GET", f"{ws}/datastores").json()["value"]) == 2
        assert len(_send(client, "GET", f"{ws}/datastores", isDefault="true").json()["value"]) == 1
        loc = f"/subscriptions/{SUB}/providers/Microsoft.MachineLearningServices/locations/eastus"
        arm.set_vm_sizes("eastus", [VmSize("Standard_D2_v2", "standardDv2Family", 2)])
        sizes = _send(client, "GET", f"{loc}/vmSizes").json()["value"]
        assert [s["name"] for s in sizes] == ["Standard_D2_v2"]
        arm.set_quota("eastus", limit=6, family="standardDv2Family", current=2)
        usages = {u["name"]["value"]: u for u in _send(client, "GET", f"{loc}/usages").json()["value"]}
        line = usages["Standard Dv2 Family Cluster Dedicated vCPUs"]
        assert (line["limit"], line["currentValue"]) == (6, 2)
        assert usages["Total Cluster LowPriority Regional vCPUs"]["limit"] == 100
        assert arm.spec_violations == []


class TestAuthentication:
    def test_missing_token(self, arm, ws):
        response = requests.get(f"{arm.endpoint}{ws}", params={"api-version": ML}, verify=str(arm.tls.cert), timeout=30)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "AuthenticationFailed"
        assert response.headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")

    def test_wrong_audience_and_expired(self, arm, ws):
        now = int(arm.now())
        storage_token = mint_token(
            audience="https://storage.azure.com",
            issued_at=now,
            expires_on=now + 3600,
            object_id="o",
            client_id="c",
        )
        response = requests.get(
            f"{arm.endpoint}{ws}",
            params={"api-version": ML},
            headers={"Authorization": f"Bearer {storage_token}"},
            verify=str(arm.tls.cert),
            timeout=30,
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "InvalidAuthenticationTokenAudience"
        token = arm.credential(lifetime=60).get_token("https://management.azure.com/.default").token
        arm.advance(3600)
        response = requests.get(
            f"{arm.endpoint}{ws}",
            params={"api-version": ML},
            headers={"Authorization": f"Bearer {token}"},
            verify=str(arm.tls.cert),
            timeout=30,
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "ExpiredAuthenticationToken"
        assert "invalid_token" in response.headers["WWW-Authenticate"]


class TestSpecViolations:
    def test_an_invalid_response_is_a_500_and_fails_the_test(self, aml_tls):
        arm = ArmEmulator(tls=aml_tls)
        with pytest.raises(SpecViolationError, match="Workspaces_Get"), arm:  # noqa: PT012 - the exit raises
            ws = arm.add_workspace(SUB, "rg", "ws")
            arm._state.workspaces[ws.lower()]["properties"]["hbiWorkspace"] = "yes"  # an emulator bug
            response = _send(_client(arm), "GET", ws)
            assert response.status_code == 500
            assert response.json()["error"]["code"] == "EmulatorSpecViolation"


def test_emulated_time_does_not_follow_the_wall_clock(arm):
    before = arm.now()
    time.sleep(0)  # yield only; the emulated clock must not move on its own
    assert arm.now() == before
    arm.advance(90)
    assert arm.now() == before + 90


def test_the_pytest_plugin_fixture_serves(arm_emulator):
    """The plugin's ``arm_emulator`` fixture is running and answers with its own credential."""
    ws = arm_emulator.add_workspace(SUB, "rg", "ws")
    assert _send(_client(arm_emulator), "GET", ws).json()["id"] == ws
