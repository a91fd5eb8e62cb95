# ruff: noqa: ARG005, E501 - tables of cases, one per line
"""The SDK v1 shim: the seed's snippets, unchanged but for the import, against the ARM emulator."""

from __future__ import annotations

import inspect
import json
import logging
import textwrap

import pytest

from aml_identity.errors import AmlIdentityError, ComputeTargetException, ConfigurationError
from aml_identity.provisioning import (
    ProvisioningConfiguration,
    SystemAssigned,
    UserAssigned,
    provisioning_configuration,
)
from aml_identity.provisioning import Workspace as SupportedWorkspace
from aml_identity.provisioning.v1 import AmlCompute, ComputeTarget, Workspace

from .conftest import RG, SUB, WS

PUT, PATCH = "Compute_CreateOrUpdate", "Compute_Update"
IMPORT = "from aml_identity.provisioning.v1 import ComputeTarget, AmlCompute, ComputeTargetException\n"

# The seed's snippets, as the seed writes them; only the import line is ours, and the seed's <placeholders>
# are filled in with the emulator's identity.
FIND_OR_CREATE = """
cpu_cluster_name = "cpucluster"
try:
    cpu_cluster = ComputeTarget(workspace=ws, name=cpu_cluster_name)
    print('Found existing cluster, use it.')
except ComputeTargetException:
    compute_config = AmlCompute.provisioning_configuration(vm_size='STANDARD_D2_V2', max_nodes=4)
    cpu_cluster = ComputeTarget.create(ws, cpu_cluster_name, compute_config)
cpu_cluster.wait_for_completion(show_output=True)
"""
LOW_PRIORITY = """
compute_config = AmlCompute.provisioning_configuration(vm_size='STANDARD_D2_V2',
                                                       vm_priority='lowpriority',
                                                       max_nodes=4)
cpu_cluster = ComputeTarget.create(ws, "cpucluster", compute_config)
cpu_cluster.wait_for_completion(show_output=True)
"""
SYSTEM_ASSIGNED = """
# configure cluster with a system-assigned managed identity
compute_config = AmlCompute.provisioning_configuration(vm_size='STANDARD_D2_V2',
                                                       max_nodes=5,
                                                       identity_type="SystemAssigned",
                                                       )
cpu_cluster_name = "cpu-cluster"
cpu_cluster = ComputeTarget.create(ws, cpu_cluster_name, compute_config)
"""
USER_ASSIGNED = """
# configure cluster with a user-assigned managed identity
compute_config = AmlCompute.provisioning_configuration(vm_size='STANDARD_D2_V2',
                                                       max_nodes=5,
                                                       identity_type="UserAssigned",
                                                       identity_id=['{uai}'])

cpu_cluster_name = "cpu-cluster"
cpu_cluster = ComputeTarget.create(ws, cpu_cluster_name, compute_config)
"""
ADD_SYSTEM_ASSIGNED = """
# add a system-assigned managed identity
cpu_cluster.add_identity(identity_type="SystemAssigned")
"""
ADD_USER_ASSIGNED = """
# add a user-assigned managed identity
cpu_cluster.add_identity(identity_type="UserAssigned",
                                identity_id=['{uai}'])
"""


def seed_uai_id() -> str:
    """The seed's placeholder id, filled in (lower-case ``resourcegroups`` as the seed writes it)."""
    return (
        f"/subscriptions/{SUB}/resourcegroups/{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-main"
    )


def v1_workspace(arm) -> Workspace:
    return Workspace(
        SUB,
        RG,
        WS,
        auth=arm.credential(),
        environ={"AML_IDENTITY_ARM_ENDPOINT": arm.endpoint, "AML_IDENTITY_LOOPBACK_ONLY": "1"},
        connection_verify=str(arm.tls.cert),
        sleep=arm.sleep,
    )


def run(snippet: str, namespace: dict) -> dict:
    exec(compile(IMPORT + textwrap.dedent(snippet).format(uai=seed_uai_id()), "<seed snippet>", "exec"), namespace)  # noqa: S102 - the snippets are ours
    return namespace


def assert_bodies_validate(arm) -> None:
    assert arm.rejected_requests == []
    for request in arm.requests:
        if request.method in ("PUT", "PATCH") and request.operation_id:
            assert arm.specs.request_errors(request.operation_id, request.body) == []
    # The only refusals are the 404s of looking for a cluster that does not exist yet.
    refused = [(r.operation_id, r.status) for r in arm.requests if r.status >= 400]
    assert set(refused) <= {("Compute_Get", 404)}, refused


@pytest.fixture
def v1ws(arm) -> Workspace:
    return v1_workspace(arm)


class TestSeedSnippets:
    def test_find_or_create_creates_then_finds_without_a_put(self, arm, v1ws, capsys):
        namespace = run(FIND_OR_CREATE, {"ws": v1ws})
        first = capsys.readouterr().out
        assert "Found existing cluster" not in first
        assert "Succeeded" in first
        assert len(arm.requests_for(PUT)) == 1
        assert namespace["cpu_cluster"].provisioning_state == "Succeeded"

        run(FIND_OR_CREATE, {"ws": v1ws})
        assert "Found existing cluster, use it." in capsys.readouterr().out
        assert len(arm.requests_for(PUT)) == 1  # the second run sent no PUT
        assert_bodies_validate(arm)

    def test_low_priority(self, arm, v1ws):
        cluster = run(LOW_PRIORITY, {"ws": v1ws})["cpu_cluster"]
        (put,) = arm.requests_for(PUT)
        assert put.body["properties"]["properties"]["vmPriority"] == "LowPriority"
        assert cluster.vm_priority == "LowPriority"
        assert_bodies_validate(arm)

    def test_system_assigned(self, arm, v1ws):
        cluster = run(SYSTEM_ASSIGNED, {"ws": v1ws})["cpu_cluster"]
        cluster.wait_for_completion()
        (put,) = arm.requests_for(PUT)
        assert put.body["identity"] == {"type": "SystemAssigned"}
        assert cluster.identity_type == "SystemAssigned"
        assert cluster.identity_id is None
        assert len(cluster.principal_id) == 36
        assert_bodies_validate(arm)

    def test_user_assigned(self, arm, v1ws, seeded):
        cluster = run(USER_ASSIGNED, {"ws": v1ws})["cpu_cluster"]
        cluster.wait_for_completion()
        (put,) = arm.requests_for(PUT)
        assert put.body["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {seed_uai_id(): {}}}
        assert cluster.identity_type == "UserAssigned"
        assert [i.lower() for i in cluster.identity_id] == [seeded.uai.lower()]
        assert (cluster.principal_id, cluster.client_id) == (seeded.uai_principal, seeded.uai_client)
        assert_bodies_validate(arm)

    def test_add_system_then_user_assigned_replaces_and_warns(self, arm, v1ws, seeded, caplog):
        namespace = run(FIND_OR_CREATE, {"ws": v1ws})
        run(ADD_SYSTEM_ASSIGNED, namespace)
        cluster = namespace["cpu_cluster"]
        assert cluster.identity_type == "SystemAssigned"
        with caplog.at_level(logging.WARNING, logger="aml_identity.provisioning.v1"):
            run(ADD_USER_ASSIGNED, namespace)
        assert cluster.identity_type == "UserAssigned"
        assert [i.lower() for i in cluster.identity_id] == [seeded.uai.lower()]
        (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert "removing the system-assigned identity" in warning.getMessage()
        # What ARM holds, read back by the supported API.
        assert SupportedWorkspace.clusters  # the supported API is the shim's base
        on_arm = arm.compute(cluster.id)
        assert on_arm["identity"]["type"] == "UserAssigned"
        assert "principalId" not in on_arm["identity"]
        # identity changes are GET-edit-PUT: no PATCH carries an identity
        assert all("identity" not in (r.body or {}) for r in arm.requests_for(PATCH))
        assert_bodies_validate(arm)

    def test_replacing_user_assigned_names_the_removed_one(self, arm, v1ws, seeded, caplog):
        namespace = run(FIND_OR_CREATE, {"ws": v1ws})
        run(ADD_USER_ASSIGNED, namespace)
        cluster = namespace["cpu_cluster"]
        with caplog.at_level(logging.WARNING, logger="aml_identity.provisioning.v1"):
            cluster.add_identity(identity_type="UserAssigned", identity_id=[seeded.uai2])
        assert cluster.identity_id == [seeded.uai2]
        (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert seeded.uai.lower() in warning.getMessage().lower()

    def test_first_identity_is_no_replacement(self, arm, v1ws, caplog):
        namespace = run(FIND_OR_CREATE, {"ws": v1ws})
        with caplog.at_level(logging.WARNING, logger="aml_identity.provisioning.v1"):
            run(ADD_SYSTEM_ASSIGNED, namespace)
            run(ADD_SYSTEM_ASSIGNED, namespace)  # the same again: nothing removed, no PUT
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(arm.requests_for(PUT)) == 2

    def test_remove_identity_without_ids_removes_all(self, arm, v1ws, seeded):
        cluster = run(USER_ASSIGNED, {"ws": v1ws})["cpu_cluster"]
        cluster.wait_for_completion()
        cluster.add_identity(identity_type="UserAssigned", identity_id=[seeded.uai, seeded.uai2])
        cluster.remove_identity()
        assert cluster.identity_type is None
        assert cluster.identity_id is None
        assert "identity" not in arm.compute(cluster.id)
        assert_bodies_validate(arm)

    def test_remove_one_user_assigned_identity(self, arm, v1ws, seeded):
        cluster = run(USER_ASSIGNED, {"ws": v1ws})["cpu_cluster"]
        cluster.wait_for_completion()
        cluster.add_identity(identity_type="UserAssigned", identity_id=[seeded.uai, seeded.uai2])
        cluster.remove_identity(identity_id=[seeded.uai])
        assert cluster.identity_id == [seeded.uai2]
        cluster.remove_identity(seeded.uai2)
        assert cluster.identity_type is None


class TestV1Surface:
    def test_compute_targets_maps_names_to_clusters(self, v1ws):
        run(FIND_OR_CREATE, {"ws": v1ws})
        targets = v1ws.compute_targets
        assert list(targets) == ["cpucluster"]
        assert isinstance(targets["cpucluster"], AmlCompute)
        assert targets["cpucluster"].vm_size.lower() == "standard_d2_v2"

    def test_compute_target_is_an_aml_compute_and_reads_the_v1_attributes(self, v1ws):
        run(FIND_OR_CREATE, {"ws": v1ws})
        found = ComputeTarget(workspace=v1ws, name="cpucluster")
        assert type(found) is AmlCompute
        assert found.type == "AmlCompute"
        assert (found.name, found.location, found.provisioning_state) == ("cpucluster", "eastus", "Succeeded")
        assert found.scale_settings.maximum_node_count == 4
        assert found.scale_settings.minimum_node_count == 0
        assert found.scale_settings.idle_seconds_before_scaledown == 1800
        assert AmlCompute(v1ws, "cpucluster").id == found.id
        assert json.loads(json.dumps(found.serialize()))["name"] == "cpucluster"

    def test_get_status_update_refresh_delete(self, arm, v1ws):
        cluster = run(FIND_OR_CREATE, {"ws": v1ws})["cpu_cluster"]
        status = cluster.get_status()
        assert (status.provisioning_state, status.allocation_state, status.current_node_count) == (
            "Succeeded",
            "Steady",
            0,
        )
        assert status.serialize()["scaleSettings"]["maxNodeCount"] == 4
        cluster.update(max_nodes=8, idle_seconds_before_scaledown=600)
        (patch,) = arm.requests_for(PATCH)
        assert patch.body == {
            "properties": {"properties": {"scaleSettings": {"minNodeCount": 0, "maxNodeCount": 8,
                                                            "nodeIdleTimeBeforeScaleDown": "PT600S"}}}
        }  # fmt: skip
        cluster.refresh_state()
        assert cluster.scale_settings.maximum_node_count == 8
        cluster.delete()
        cluster.wait_for_completion(is_delete_operation=True)
        assert v1ws.compute_targets == {}

    def test_wait_for_min_nodes(self, v1ws, capsys):
        cluster = run(FIND_OR_CREATE, {"ws": v1ws})["cpu_cluster"]
        cluster.update(min_nodes=2)
        cluster.wait_for_completion(show_output=True, min_node_count=2)
        assert cluster.get_status().current_node_count == 2
        assert "nodes 1 -> 2" in capsys.readouterr().out

    def test_supported_vmsizes_lists_the_catalogue(self, v1ws):
        names = {size["name"] for size in AmlCompute.supported_vmsizes(workspace=v1ws)}
        assert {"Standard_D2_v2", "Standard_DS3_v2", "Standard_NC6s_v3"} <= names

    def test_from_config(self, arm, tmp_path):
        (tmp_path / "config.json").write_text(
            json.dumps({"subscription_id": SUB, "resource_group": RG, "workspace_name": WS})
        )
        ws = Workspace.from_config(
            path=tmp_path,
            auth=arm.credential(),
            environ={"AML_IDENTITY_ARM_ENDPOINT": arm.endpoint},
            connection_verify=str(arm.tls.cert),
            sleep=arm.sleep,
        )
        assert (ws.subscription_id, ws.resource_group, ws.name, ws.location) == (SUB, RG, WS, "eastus")

    def test_the_supported_workspace_works_too(self, ws):
        run(FIND_OR_CREATE, {"ws": ws})
        assert ComputeTarget(workspace=ws, name="cpucluster").name == "cpucluster"


# Every keyword of v1's AmlCompute.provisioning_configuration: where it lands in the PUT body, or the
# alternative its refusal names.
def _body_of(arm, v1ws, **keywords):
    ComputeTarget.create(v1ws, "mapped", AmlCompute.provisioning_configuration(**keywords))
    return arm.requests_for(PUT)[-1].body


BASE = {"vm_size": "STANDARD_D2_V2", "max_nodes": 4}
MAPPED = {
    "vm_size": ({"vm_size": "Standard_DS3_v2"}, lambda b: b["properties"]["properties"]["vmSize"] == "Standard_DS3_v2"),
    "vm_priority": (
        {"vm_priority": "lowpriority"},
        lambda b: b["properties"]["properties"]["vmPriority"] == "LowPriority",
    ),
    "min_nodes": ({"min_nodes": 1}, lambda b: b["properties"]["properties"]["scaleSettings"]["minNodeCount"] == 1),
    "max_nodes": ({"max_nodes": 3}, lambda b: b["properties"]["properties"]["scaleSettings"]["maxNodeCount"] == 3),
    "idle_seconds_before_scaledown": (
        {"idle_seconds_before_scaledown": 300},
        lambda b: b["properties"]["properties"]["scaleSettings"]["nodeIdleTimeBeforeScaleDown"] == "PT300S",
    ),
    "vnet_resourcegroup_name": (
        {"vnet_resourcegroup_name": "net-rg", "vnet_name": "vnet", "subnet_name": "default"},
        lambda b: (
            b["properties"]["properties"]["subnet"]["id"]
            == f"/subscriptions/{SUB}/resourceGroups/net-rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default"
        ),
    ),
    "tags": ({"tags": {"team": "vision"}}, lambda b: b["tags"] == {"team": "vision"}),
    "description": ({"description": "for training"}, lambda b: b["properties"]["description"] == "for training"),
    "remote_login_port_public_access": (
        {"remote_login_port_public_access": "Disabled"},
        lambda b: b["properties"]["properties"]["remoteLoginPortPublicAccess"] == "Disabled",
    ),
    "identity_type": ({"identity_type": "SystemAssigned"}, lambda b: b["identity"] == {"type": "SystemAssigned"}),
    "identity_id": (
        {"identity_type": "UserAssigned", "identity_id": [seed_uai_id()]},
        lambda b: b["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {seed_uai_id(): {}}},
    ),
    "location": (
        {"location": "westeurope"},
        lambda b: b["location"] == "westeurope" and b["properties"]["computeLocation"] == "westeurope",
    ),
    "enable_node_public_ip": (
        {"enable_node_public_ip": False},
        lambda b: b["properties"]["properties"]["enableNodePublicIp"] is False,
    ),
}
MAPPED["vnet_name"] = MAPPED["subnet_name"] = MAPPED["vnet_resourcegroup_name"]
REFUSED = {
    "admin_username": (
        {"admin_username": "azureuser", "admin_user_ssh_key": "ssh-rsa AAAA"},
        "create the cluster with",
    ),
    "admin_user_password": (
        {"admin_username": "azureuser", "admin_user_password": "P4ss!word"},
        "create the cluster with",
    ),
    "admin_user_ssh_key": ({"admin_user_ssh_key": "ssh-rsa AAAA"}, "create the cluster with"),
}


def test_every_v1_keyword_is_mapped_or_refused():
    keywords = set(inspect.signature(AmlCompute.provisioning_configuration).parameters)
    assert keywords == set(MAPPED) | set(REFUSED)
    assert len(keywords) == 18  # v1's AmlCompute.provisioning_configuration keywords


@pytest.mark.parametrize("keyword", sorted(MAPPED))
def test_v1_keyword_maps_to_the_spec_body(keyword, arm, v1ws):
    given, check = MAPPED[keyword]
    body = _body_of(arm, v1ws, **{**BASE, **given})
    assert check(body), body
    assert arm.specs.request_errors(PUT, body) == []


@pytest.mark.parametrize("keyword", sorted(REFUSED))
def test_v1_keyword_refused_names_the_alternative(keyword):
    given, alternative = REFUSED[keyword]
    with pytest.raises(ComputeTargetException, match=alternative) as caught:
        AmlCompute.provisioning_configuration(**{**BASE, **given})
    assert isinstance(caught.value, ConfigurationError)


# Invalid settings: the same message from provisioning_configuration with a name, without one, and from the
# v1 shim (where the error is both a ComputeTargetException and a ConfigurationError).
INVALID = [
    {"vm_size": "STANDARD_D2_V2"},
    {"vm_size": "", "max_nodes": 4},
    {"vm_size": "STANDARD_D2_V2", "max_nodes": 2, "min_nodes": 3},
    {"vm_size": "STANDARD_D2_V2", "max_nodes": 4, "min_nodes": -1},
    {"vm_size": "STANDARD_D2_V2", "max_nodes": 4, "vm_priority": "spot"},
    {"vm_size": "STANDARD_D2_V2", "max_nodes": 4, "idle_seconds_before_scaledown": -5},
    {"vm_size": "STANDARD_D2_V2", "max_nodes": 4, "identity_type": "Both"},
    {"vm_size": "STANDARD_D2_V2", "max_nodes": 4, "identity_type": "UserAssigned"},
    {"vm_size": "STANDARD_D2_V2", "max_nodes": 4, "identity_id": [seed_uai_id()]},
    {"vm_size": "STANDARD_D2_V2", "max_nodes": 4, "identity_type": "SystemAssigned", "identity_id": [seed_uai_id()]},
    {"vm_size": "STANDARD_D2_V2", "max_nodes": 4, "identity_type": "UserAssigned", "identity_id": ["uai-main"]},
    {"vm_size": "STANDARD_D2_V2", "max_nodes": 4, "vnet_name": "vnet"},
    {"vm_size": "STANDARD_D2_V2", "max_nodes": 4, "remote_login_port_public_access": "Sometimes"},
    {"vm_size": "STANDARD_D2_V2", "max_nodes": 4, "tags": {"n": 1}},
]


@pytest.mark.parametrize("keywords", INVALID, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_validation_errors_are_the_same_with_or_without_a_name_and_in_v1(keywords):
    with pytest.raises(ConfigurationError) as named:
        provisioning_configuration(name="cpu", **keywords)
    with pytest.raises(ConfigurationError) as nameless:
        provisioning_configuration(**keywords)
    with pytest.raises(ComputeTargetException) as v1:
        AmlCompute.provisioning_configuration(**keywords)
    assert type(named.value) is type(nameless.value) is ConfigurationError
    assert str(named.value) == str(nameless.value) == str(v1.value)
    assert named.value.name == nameless.value.name == v1.value.name
    assert isinstance(v1.value, ConfigurationError)
    assert isinstance(v1.value, AmlIdentityError)


def test_nameless_configuration_takes_its_name_later():
    config = provisioning_configuration(vm_size="STANDARD_D2_V2", max_nodes=4, vm_priority="LowPriority")
    assert isinstance(config, ProvisioningConfiguration)
    assert config.vm_priority == "lowpriority"
    named = config.named("cpucluster")
    assert named == provisioning_configuration(name="cpucluster", vm_size="STANDARD_D2_V2", max_nodes=4,
                                               vm_priority="lowpriority")  # fmt: skip
    with pytest.raises(ConfigurationError, match="reserved"):
        config.named("local")
    with pytest.raises(ConfigurationError, match="max_nodes"):
        ProvisioningConfiguration(vm_size="STANDARD_D2_V2", max_nodes=0, min_nodes=1)


# Every way a v1 call can fail raises ComputeTargetException (with aml-identity's message).
def _create(v1ws, name="cpucluster", **keywords):
    return ComputeTarget.create(v1ws, name, AmlCompute.provisioning_configuration(**{**BASE, **keywords}))


def _failed_create(arm, v1ws):
    arm.fail_next_operation(code="InternalServerError", message="allocation failed", kind="create")
    _create(v1ws).wait_for_completion()


def _stuck(arm, v1ws):
    arm.add_lock(f"/subscriptions/{SUB}/resourceGroups/{RG}", "no-delete", "CanNotDelete")
    _create(v1ws, min_nodes=1).wait_for_completion(timeout_in_minutes=1)


def _quota(arm, v1ws):
    arm.set_quota("eastus", limit=4, family="standardDv2Family")
    _create(v1ws, max_nodes=10)


def _remove_missing(arm, v1ws):
    cluster = _create(v1ws, identity_type="UserAssigned", identity_id=[seed_uai_id()])
    cluster.wait_for_completion()
    cluster.remove_identity(identity_id=[seed_uai_id().replace("uai-main", "uai-second")])


def _unknown_identity(arm, v1ws):
    missing = seed_uai_id().replace("uai-main", "nobody")
    cluster = _create(v1ws)
    cluster.wait_for_completion()
    cluster.add_identity(identity_type="UserAssigned", identity_id=[missing])


ERROR_CASES = {
    "not found": (lambda arm, ws: ComputeTarget(workspace=ws, name="nothere"), "ComputeTargetNotFound"),
    "invalid name": (lambda arm, ws: _create(ws, name="x"), "3 to 24 characters"),
    "reserved name": (lambda arm, ws: _create(ws, name="local"), "reserved"),
    "not a configuration": (
        lambda arm, ws: ComputeTarget.create(ws, "cpu", {"vm_size": "x"}),
        "provisioning_configuration",
    ),
    "exists already": (lambda arm, ws: (_create(ws), _create(ws)), "already exists"),
    "vm size not offered": (lambda arm, ws: _create(ws, vm_size="Standard_Imaginary_v9"), "Standard_Imaginary_v9"),
    "quota": (_quota, "quota"),
    "provisioning failed": (_failed_create, "allocation failed"),
    "stuck resizing": (_stuck, "diagnose"),
    "remove from no identity": (lambda arm, ws: _create(ws).remove_identity(), "has no identity"),
    "remove an identity not held": (_remove_missing, "has no user-assigned identity"),
    "add an identity that does not exist": (_unknown_identity, "does not exist"),
    "add without type": (lambda arm, ws: _create(ws).add_identity(identity_type=None), "identity_type"),
    "bad scale update": (lambda arm, ws: _create(ws).update(min_nodes=9), "max_nodes"),
    "detach": (lambda arm, ws: _create(ws).detach(), "delete instead"),
    "wait for a delete not made": (
        lambda arm, ws: _create(ws).wait_for_completion(is_delete_operation=True),
        "delete()",
    ),
    "not a workspace": (lambda arm, ws: ComputeTarget(workspace="my-workspace", name="cpu"), "Workspace"),
    "bad subscription": (lambda arm, ws: Workspace("not-a-guid", RG, WS), "GUID"),
    "no config": (lambda arm, ws: Workspace.from_config(path="/nonexistent/config.json"), "config.json"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_every_v1_error_is_a_compute_target_exception(case, arm, v1ws, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    action, message = ERROR_CASES[case]
    with pytest.raises(ComputeTargetException, match=message) as caught:
        action(arm, v1ws)
    assert isinstance(caught.value, AmlIdentityError)
    assert "eyJ" not in str(caught.value)


def test_a_cluster_of_another_compute_type_is_refused(arm, v1ws, seeded, monkeypatch):
    # A ComputeInstance exists beside the clusters: the shim says what it manages instead of misreading it.
    from aml_identity.provisioning import Cluster

    instance = {"name": "notebook", "properties": {"computeType": "ComputeInstance"}}
    monkeypatch.setattr(type(v1ws.supported.clusters), "get", lambda self, name: Cluster(self.workspace, instance))
    with pytest.raises(ComputeTargetException, match="ComputeInstance compute"):
        ComputeTarget(workspace=v1ws, name="notebook")


def test_system_assigned_class_is_the_supported_one(v1ws):
    cluster = run(SYSTEM_ASSIGNED, {"ws": v1ws})["cpu_cluster"]
    assert cluster.cluster.identity == SystemAssigned()
    assert not isinstance(cluster.cluster.identity, UserAssigned)
