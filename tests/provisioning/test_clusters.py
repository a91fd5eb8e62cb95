"""Workspaces and clusters against the ARM emulator: create, ensure, identity, scale, polling, preflight."""

from __future__ import annotations

import json
import warnings

import pytest
from azure.core.exceptions import ResourceNotFoundError

from aml_identity.errors import (
    ClusterNotFoundError,
    ConfigurationError,
    OperationFailedError,
    ProvisioningTimeoutError,
    QuotaExceededError,
)
from aml_identity.provisioning import (
    ClusterSpec,
    ProvisioningWarning,
    SystemAssigned,
    UserAssigned,
    Workspace,
)
from aml_identity.testing import EmulatedIdentity, IdentityEndpoint
from aml_identity.testing.arm import ArmEmulator

PUT, PATCH, GET = "Compute_CreateOrUpdate", "Compute_Update", "Compute_Get"


def spec(**changes) -> ClusterSpec:
    values = {"name": "cpu", "vm_size": "Standard_DS3_v2", "max_nodes": 4, "vm_priority": "lowpriority"}
    values.update(changes)
    return ClusterSpec(**values)


def compute_calls(arm: ArmEmulator) -> list[str]:
    return [r.operation_id for r in arm.requests if r.operation_id and r.operation_id.startswith("Compute_")]


class TestCreate:
    def test_bodies_validate_and_identity_has_the_spec_shape(self, arm, ws):
        cluster = ws.clusters.create(spec(identity=SystemAssigned()))
        status = cluster.wait_for_completion()
        (put,) = arm.requests_for(PUT)
        assert put.body["identity"] == {"type": "SystemAssigned"}
        assert arm.specs.request_errors(PUT, put.body) == []
        assert status.provisioning_state == "Succeeded"
        assert cluster.identity == SystemAssigned()
        assert len(cluster.principal_id) == 36

    def test_user_assigned_identities_keyed_by_resource_id(self, arm, ws, seeded):
        cluster = ws.clusters.create(spec(identity=UserAssigned([seeded.uai, seeded.uai2])))
        cluster.wait_for_completion()
        (put,) = arm.requests_for(PUT)
        assert put.body["identity"] == {
            "type": "UserAssigned",
            "userAssignedIdentities": {seeded.uai: {}, seeded.uai2: {}},
        }
        assert (cluster.principal_id, cluster.client_id) == (seeded.uai_principal, seeded.uai_client)

    def test_create_refuses_to_overwrite(self, arm, ws):
        ws.clusters.create(spec()).wait_for_completion()
        with pytest.raises(ConfigurationError, match="already exists"):
            ws.clusters.create(spec(max_nodes=2))
        assert len(arm.requests_for(PUT)) == 1

    def test_get_missing_cluster(self, ws):
        with pytest.raises(ClusterNotFoundError, match="ensure") as raised:
            ws.clusters.get("nothere")
        assert isinstance(raised.value, ResourceNotFoundError)
        assert raised.value.status_code == 404

    def test_list(self, ws):
        ws.clusters.create(spec()).wait_for_completion()
        ws.clusters.create(spec(name="cpu2")).wait_for_completion()
        assert sorted(c.name for c in ws.clusters.list()) == ["cpu", "cpu2"]

    def test_list_reads_every_page(self, paged_arm, make_workspace):
        ws = make_workspace(paged_arm)
        for name in ("cpu1", "cpu2", "cpu3"):
            ws.clusters.create(spec(name=name)).wait_for_completion()
        assert sorted(c.name for c in ws.clusters.list()) == ["cpu1", "cpu2", "cpu3"]
        assert len(paged_arm.requests_for("Compute_List")) == 3

    def test_min_nodes_warning_on_create(self, ws):
        with pytest.warns(ProvisioningWarning, match="billed even while idle"):
            ws.clusters.create(spec(min_nodes=1))


class TestEnsure:
    def test_twice_sends_one_put(self, arm, ws):
        first = ws.clusters.ensure(spec(identity=SystemAssigned()))
        first.wait_for_completion()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            second = ws.clusters.ensure(spec(identity=SystemAssigned()))
        assert len(arm.requests_for(PUT)) == 1
        assert second.drift == ()
        assert second.principal_id == first.principal_id

    def test_drift_is_reported_not_overwritten(self, arm, ws):
        ws.clusters.ensure(spec()).wait_for_completion()
        with pytest.warns(ProvisioningWarning, match="differs from the spec") as caught:
            cluster = ws.clusters.ensure(spec(max_nodes=8, identity=SystemAssigned()))
        assert {d.field for d in cluster.drift} == {"max_nodes", "identity"}
        assert "max_nodes: is 4, spec says 8" in str(caught[0].message)
        assert len(arm.requests_for(PUT)) == 1
        assert arm.requests_for(PATCH) == []
        assert ws.clusters.get("cpu").to_dict()["scaleSettings"]["maxNodeCount"] == 4


class TestIdentityChanges:
    def test_get_edit_put_of_the_whole_resource(self, arm, ws, seeded):
        cluster = ws.clusters.ensure(spec(identity=SystemAssigned(), min_nodes=0))
        cluster.wait_for_completion()
        before = len(arm.requests)
        cluster.add_identity(UserAssigned([seeded.uai]), replace=True)
        calls = [
            r.operation_id for r in arm.requests[before:] if r.operation_id and r.operation_id.startswith("Compute_")
        ]
        assert calls[:2] == [GET, PUT]
        assert PATCH not in calls
        put = arm.requests_for(PUT)[-1]
        assert put.body["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {seeded.uai: {}}}
        whole = put.body["properties"]["properties"]
        assert (whole["vmSize"], whole["vmPriority"], whole["scaleSettings"]["maxNodeCount"]) == (
            "Standard_DS3_v2",
            "LowPriority",
            4,
        )
        assert "currentNodeCount" not in whole
        assert "provisioningState" not in put.body["properties"]
        assert cluster.principal_id == seeded.uai_principal

    def test_mixing_kinds_needs_remove_or_replace(self, arm, ws, seeded):
        cluster = ws.clusters.ensure(spec(identity=SystemAssigned()))
        cluster.wait_for_completion()
        with pytest.raises(ConfigurationError, match="not both") as raised:
            cluster.add_identity(UserAssigned([seeded.uai]))
        assert "remove_identity()" in str(raised.value)
        assert "replace=True" in str(raised.value)
        assert len(arm.requests_for(PUT)) == 1
        user = ws.clusters.ensure(spec(name="cpu2", identity=UserAssigned([seeded.uai])))
        user.wait_for_completion()
        with pytest.raises(ConfigurationError, match="Remove it first"):
            user.add_identity(SystemAssigned())

    def test_user_assigned_ones_accumulate_first_stays_default(self, ws, seeded):
        cluster = ws.clusters.ensure(spec(identity=UserAssigned([seeded.uai])))
        cluster.wait_for_completion()
        cluster.add_identity(seeded.uai2)
        assert cluster.identity == UserAssigned([seeded.uai, seeded.uai2])
        assert cluster.principal_id == seeded.uai_principal

    def test_adding_what_is_there_sends_nothing(self, arm, ws):
        cluster = ws.clusters.ensure(spec(identity=SystemAssigned()))
        cluster.wait_for_completion()
        cluster.add_identity(SystemAssigned())
        assert len(arm.requests_for(PUT)) == 1

    def test_remove_one_then_all(self, ws, seeded):
        cluster = ws.clusters.ensure(spec(identity=UserAssigned([seeded.uai, seeded.uai2])))
        cluster.wait_for_completion()
        cluster.remove_identity(seeded.uai.lower())
        assert cluster.identity == UserAssigned([seeded.uai2])
        with pytest.raises(ConfigurationError, match="has no user-assigned identity"):
            cluster.remove_identity(seeded.uai)
        cluster.remove_identity()
        assert cluster.identity is None
        with pytest.raises(ConfigurationError, match="has no identity"):
            cluster.remove_identity()


class TestScale:
    def test_scale_changes_use_patch(self, arm, ws):
        cluster = ws.clusters.ensure(spec())
        cluster.wait_for_completion()
        with pytest.warns(ProvisioningWarning, match="billed"):
            cluster.update_scale(min_nodes=2, max_nodes=6, idle_seconds_before_scaledown=300)
        (patch,) = arm.requests_for(PATCH)
        assert patch.body == {
            "properties": {
                "properties": {
                    "scaleSettings": {
                        "minNodeCount": 2,
                        "maxNodeCount": 6,
                        "nodeIdleTimeBeforeScaleDown": "PT300S",
                    }
                }
            }
        }
        assert len(arm.requests_for(PUT)) == 1

    def test_invalid_scale_is_refused_before_any_request(self, arm, ws):
        cluster = ws.clusters.ensure(spec())
        cluster.wait_for_completion()
        with pytest.raises(ConfigurationError, match=r"max_nodes \(1\) must be >= min_nodes \(2\)"):
            cluster.update_scale(min_nodes=2, max_nodes=1)
        assert arm.requests_for(PATCH) == []

    def test_progress_shows_node_counts_as_they_change(self, ws, capsys):
        cluster = ws.clusters.ensure(spec())
        cluster.wait_for_completion()
        with pytest.warns(ProvisioningWarning):
            cluster.update_scale(min_nodes=2)
        status = cluster.wait_for_completion(show_output=True)
        lines = capsys.readouterr().out.splitlines()
        assert lines == [
            "cpu: provisioning Succeeded, allocation Resizing, nodes 0 -> 2",
            "cpu: provisioning Succeeded, allocation Resizing, nodes 1 -> 2 (idle 1)",
            "cpu: provisioning Succeeded, allocation Steady, nodes 2 -> 2 (idle 2)",
        ]
        assert status.current_node_count == 2


class TestLongRunningOperations:
    def test_polls_async_operation_and_honours_retry_after(self, aml_tls, make_workspace):
        with ArmEmulator(tls=aml_tls, retry_after=7) as arm:
            arm.add_workspace("00000000-0000-0000-0000-0000000000aa", "ml-rg", "ws-test")
            ws = make_workspace(arm)
            cluster = ws.clusters.create(spec())
            cluster.wait_for_completion(show_output=False)
            polls = [r for r in arm.requests if "computeOperationsStatus" in r.path]
            assert len(polls) == 10  # one at once, then one per 7 s over the 60 s a create takes
            assert arm.sleeps == [7] * 9
            assert all(r.status == 200 for r in polls)

    def test_failed_operation_surfaces_code_and_message(self, arm, ws):
        arm.fail_next_operation(code="ClusterCreationFailed", message="Subnet has no free addresses")
        cluster = ws.clusters.create(spec())
        with pytest.raises(OperationFailedError) as raised:
            cluster.wait_for_completion()
        assert raised.value.error_code == "ClusterCreationFailed"
        assert "Subnet has no free addresses" in str(raised.value)
        assert "ended Failed" in str(raised.value)

    def test_failed_update_from_status(self, arm, ws):
        cluster = ws.clusters.ensure(spec())
        cluster.wait_for_completion()
        arm.fail_next_operation(code="InternalServerError", message="try later", kind="scale")
        with pytest.raises(OperationFailedError, match="InternalServerError: try later"):
            cluster.update_scale(max_nodes=2)

    def test_timeout_names_the_stuck_resize_and_diagnose(self, arm, ws, seeded):
        arm.add_lock(seeded.group, "freeze", "CanNotDelete")
        with pytest.warns(ProvisioningWarning):
            cluster = ws.clusters.ensure(spec(min_nodes=1))
        with pytest.raises(ProvisioningTimeoutError, match="stuck resizing 0 -> 0") as raised:
            cluster.wait_for_completion(timeout=60)
        assert "aml-identity cluster diagnose" in str(raised.value)
        assert isinstance(raised.value, TimeoutError)

    def test_delete(self, arm, ws):
        cluster = ws.clusters.ensure(spec())
        cluster.wait_for_completion()
        cluster.delete()
        with pytest.raises(ClusterNotFoundError):
            ws.clusters.get("cpu")
        assert [r.status for r in arm.requests_for("Compute_Delete")] == [202]


class TestPreflight:
    def test_quota_shortfall_is_caught_before_the_put(self, arm, ws):
        arm.set_quota("eastus", limit=20, low_priority=True)
        with pytest.raises(QuotaExceededError) as raised:
            ws.clusters.create(spec(max_nodes=8))  # 8 x 4 vCPUs = 32 > 20
        text = str(raised.value)
        assert "'Total Cluster LowPriority Regional vCPUs' quota in eastus has 20 of 20 free" in text
        assert "support request" in text
        assert "lower max_nodes to 5" in text
        assert raised.value.error_code == "QuotaExceeded"
        assert arm.requests_for(PUT) == []

    def test_dedicated_family_quota(self, arm, ws):
        arm.set_quota("eastus", family="standardDSv2Family", limit=24, current=12)
        with pytest.raises(QuotaExceededError, match="Standard DSv2 Family Cluster Dedicated vCPUs") as raised:
            ws.clusters.create(spec(vm_priority="dedicated"))  # 16 > 12 free
        assert "vm_priority='lowpriority'" in str(raised.value)
        assert arm.requests_for(PUT) == []

    def test_preflight_false_skips_the_check(self, arm, ws):
        arm.set_quota("eastus", limit=20, low_priority=True)
        ws.clusters.create(spec(max_nodes=8), preflight=False).wait_for_completion()
        assert len(arm.requests_for(PUT)) == 1

    def test_vm_size_not_offered(self, arm, ws):
        with pytest.raises(ConfigurationError, match="not offered for AmlCompute in eastus") as raised:
            ws.clusters.create(spec(vm_size="Standard_DS3_v3"))
        assert "Standard_DS3_v2" in str(raised.value)
        assert arm.requests_for(PUT) == []


class TestWorkspaces:
    def test_from_config_searches_upward(self, tmp_path, monkeypatch, seeded):
        config = {
            "subscription_id": seeded.sub,
            "resource_group": seeded.rg,
            "workspace_name": seeded.ws_name,
        }
        (tmp_path / ".azureml").mkdir()
        (tmp_path / ".azureml" / "config.json").write_text(json.dumps(config))
        nested = tmp_path / "a" / "b"
        nested.mkdir(parents=True)
        monkeypatch.chdir(nested)
        found = Workspace.from_config(credential=object())
        assert (found.subscription_id, found.resource_group, found.name) == (
            seeded.sub,
            seeded.rg,
            seeded.ws_name,
        )
        assert Workspace.from_config(tmp_path / ".azureml" / "config.json", credential=object()).name == seeded.ws_name

    def test_from_config_errors(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ConfigurationError, match=r"No workspace config\.json found"):
            Workspace.from_config(tmp_path)
        (tmp_path / "config.json").write_text(json.dumps({"subscription_id": "x"}))
        with pytest.raises(ConfigurationError, match="lacks resource_group, workspace_name"):
            Workspace.from_config()

    def test_from_job_environment(self, arm, seeded):
        environ = {
            "AZUREML_ARM_SUBSCRIPTION": seeded.sub,
            "AZUREML_ARM_RESOURCEGROUP": seeded.rg,
            "AZUREML_ARM_WORKSPACE_NAME": seeded.ws_name,
            "AML_IDENTITY_ARM_ENDPOINT": arm.endpoint,
        }
        ws = Workspace.from_job_environment(
            credential=arm.credential(), environ=environ, connection_verify=str(arm.tls.cert)
        )
        assert ws.id == seeded.workspace
        assert ws.location == "eastus"
        with pytest.raises(ConfigurationError, match="AZUREML_ARM_WORKSPACE_NAME not set") as raised:
            Workspace.from_job_environment(
                environ={"AZUREML_ARM_SUBSCRIPTION": seeded.sub, "AZUREML_ARM_RESOURCEGROUP": "r"}
            )
        assert "Workspace.from_config()" in str(raised.value)

    def test_from_job_environment_uses_the_job_identity(self, arm, seeded, tmp_path, monkeypatch):
        identity = EmulatedIdentity.user("job-identity")
        with IdentityEndpoint(identities=[identity]) as endpoint:
            environ = {
                **endpoint.azureml_environ(identity),
                "AZUREML_ARM_SUBSCRIPTION": seeded.sub,
                "AZUREML_ARM_RESOURCEGROUP": seeded.rg,
                "AZUREML_ARM_WORKSPACE_NAME": seeded.ws_name,
                "AML_IDENTITY_ARM_ENDPOINT": arm.endpoint,
                "AML_IDENTITY_CACHE_DIR": str(tmp_path / "cache"),
                "REQUESTS_CA_BUNDLE": str(arm.tls.cert),
            }
            for name, value in environ.items():  # as a job sees them: msal reads the process environment
                monkeypatch.setenv(name, value)
            ws = Workspace.from_job_environment()
            assert ws.location == "eastus"
            (token_request,) = endpoint.requests
        assert token_request.identity == identity
        assert token_request.params["resource"] == "https://management.azure.com"

    def test_names_are_validated(self):
        with pytest.raises(ConfigurationError, match="subscription_id 'my-sub' is not a GUID"):
            Workspace("my-sub", "rg", "workspace")
        with pytest.raises(ConfigurationError, match="workspace name 'w' is invalid"):
            Workspace("00000000-0000-0000-0000-0000000000aa", "rg", "w")

    def test_loopback_only_refuses_a_remote_endpoint(self, arm):
        ws = Workspace(
            "00000000-0000-0000-0000-0000000000aa",
            "rg",
            "workspace",
            credential=arm.credential(),
            environ={"AML_IDENTITY_LOOPBACK_ONLY": "1"},
        )
        with pytest.raises(ConfigurationError, match=r"management\.azure\.com"):
            ws.get_details()
