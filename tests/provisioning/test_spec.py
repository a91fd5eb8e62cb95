"""ClusterSpec: every validation rule with its message, the warnings, the request body, drift."""

from __future__ import annotations

import pytest

from aml_identity.errors import ConfigurationError
from aml_identity.provisioning import ClusterSpec, SystemAssigned, UserAssigned, provisioning_configuration
from aml_identity.testing.arm import ArmSpecs

SUB = "00000000-0000-0000-0000-0000000000aa"
UAI = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai1"
UAI2 = f"/subscriptions/{SUB}/resourcegroups/rg/providers/microsoft.managedidentity/userassignedidentities/uai2"
SUBNET = f"/subscriptions/{SUB}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/train"


def spec(**changes) -> ClusterSpec:
    values = {"name": "cpu-cluster", "vm_size": "Standard_DS3_v2", "max_nodes": 4}
    values.update(changes)
    return ClusterSpec(**values)


class TestValidation:
    @pytest.mark.parametrize("name", ["ab", "a" * 25, "1cluster", "cpu_cluster", "cpu.cluster", "-cpu"])
    def test_cluster_name_rule(self, name):
        with pytest.raises(ConfigurationError, match="3 to 24 characters, letters, digits and hyphens") as raised:
            spec(name=name)
        assert raised.value.name == "name"
        assert "starting with a letter" in str(raised.value)

    @pytest.mark.parametrize("name", ["abc", "a" * 24, "cpu-Cluster-01"])
    def test_valid_cluster_names(self, name):
        assert spec(name=name).name == name

    def test_specs_are_values(self):
        first, second = spec(tags={"team": "ml"}), spec(tags={"team": "ml"})
        assert first == second
        assert hash(first) == hash(second)
        with pytest.raises(TypeError):
            first.tags["team"] = "other"  # frozen, tags included

    def test_reserved_name(self):
        with pytest.raises(ConfigurationError, match="reserved"):
            spec(name="AmlCompute")

    def test_max_nodes_is_required(self):
        with pytest.raises(ConfigurationError, match="max_nodes is required") as raised:
            provisioning_configuration(name="cpu", vm_size="Standard_DS3_v2")
        assert raised.value.name == "max_nodes"
        with pytest.raises(ConfigurationError, match="max_nodes is required"):
            spec(max_nodes=None)

    def test_max_nodes_at_least_min_nodes(self):
        with pytest.raises(ConfigurationError, match=r"max_nodes \(2\) must be >= min_nodes \(3\)") as raised:
            spec(min_nodes=3, max_nodes=2)
        assert "raise max_nodes or lower min_nodes" in str(raised.value)

    def test_min_nodes_not_negative(self):
        with pytest.raises(ConfigurationError, match=r"min_nodes must be >= 0 \(got -1\)"):
            spec(min_nodes=-1)

    def test_node_counts_are_whole_numbers(self):
        with pytest.raises(ConfigurationError, match="max_nodes must be a whole number"):
            spec(max_nodes=2.5)
        with pytest.raises(ConfigurationError, match="min_nodes must be a whole number"):
            spec(min_nodes=True)

    @pytest.mark.parametrize(("given", "kept"), [("dedicated", "dedicated"), ("LowPriority", "lowpriority"),
                                                 ("low_priority", "lowpriority")])  # fmt: skip
    def test_vm_priority_accepted(self, given, kept):
        assert spec(vm_priority=given).vm_priority == kept

    def test_vm_priority_rule(self):
        with pytest.raises(ConfigurationError, match="vm_priority must be 'dedicated' or 'lowpriority'"):
            spec(vm_priority="spot")

    def test_vm_size_required(self):
        with pytest.raises(ConfigurationError, match="vm_size is required"):
            spec(vm_size=" ")

    def test_idle_seconds(self):
        with pytest.raises(ConfigurationError, match="idle_seconds_before_scaledown must be a whole number"):
            spec(idle_seconds_before_scaledown=-5)

    @pytest.mark.parametrize(
        "bad",
        [
            "uai1",
            "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/a",
            f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities",
            "11111111-1111-1111-1111-111111111111",
        ],
    )
    def test_identity_ids_must_be_user_assigned_identity_resource_ids(self, bad):
        with pytest.raises(ConfigurationError, match="is not a user-assigned identity resource id") as raised:
            UserAssigned([bad])
        assert "userAssignedIdentities/<name>" in str(raised.value)
        assert "az identity show" in str(raised.value)

    def test_user_assigned_needs_one(self):
        with pytest.raises(ConfigurationError, match="at least one identity"):
            UserAssigned([])

    def test_identity_id_only_with_user_assigned(self):
        with pytest.raises(ConfigurationError, match="identity_id needs identity_type='UserAssigned'"):
            provisioning_configuration(name="cpu", vm_size="Standard_DS3_v2", max_nodes=2, identity_id=[UAI])
        with pytest.raises(ConfigurationError, match="not both") as raised:
            provisioning_configuration(
                name="cpu",
                vm_size="Standard_DS3_v2",
                max_nodes=2,
                identity_type="SystemAssigned",
                identity_id=[UAI],
            )
        assert "identity_type='UserAssigned'" in str(raised.value)

    def test_user_assigned_type_needs_ids(self):
        with pytest.raises(ConfigurationError, match="needs identity_id"):
            provisioning_configuration(name="cpu", vm_size="Standard_DS3_v2", max_nodes=2, identity_type="UserAssigned")

    def test_identity_type_values(self):
        with pytest.raises(ConfigurationError, match="identity_type must be 'SystemAssigned' or 'UserAssigned'"):
            provisioning_configuration(name="cpu", vm_size="Standard_DS3_v2", max_nodes=2, identity_type="Both")

    def test_identity_object_type(self):
        with pytest.raises(ConfigurationError, match="identity must be SystemAssigned"):
            spec(identity="SystemAssigned")

    def test_subnet_must_be_a_subnet_id(self):
        with pytest.raises(ConfigurationError, match="is not a subnet resource id"):
            spec(subnet="train")

    def test_virtual_network_needs_all_three_parts(self):
        with pytest.raises(ConfigurationError, match="vnet_resourcegroup_name, vnet_name and subnet_name together"):
            provisioning_configuration(name="cpu", vm_size="Standard_DS3_v2", max_nodes=2, vnet_name="vnet")

    def test_remote_login_values(self):
        with pytest.raises(ConfigurationError, match="'Enabled', 'Disabled' or 'NotSpecified'"):
            spec(remote_login_port_public_access="Open")

    def test_ssh_users_are_refused_with_the_alternative(self):
        with pytest.raises(ConfigurationError, match="does not set up SSH users"):
            provisioning_configuration(name="cpu", vm_size="Standard_DS3_v2", max_nodes=2, admin_username="me")


class TestV1Keywords:
    def test_provisioning_configuration_maps_the_familiar_keywords(self):
        made = provisioning_configuration(
            name="gpu",
            vm_size="Standard_NC6s_v3",
            vm_priority="lowpriority",
            min_nodes=None,
            max_nodes=8,
            idle_seconds_before_scaledown=600,
            identity_type="userassigned",
            identity_id=UAI,
            vnet_resourcegroup_name="net",
            vnet_name="vnet",
            subnet_name="train",
            tags={"team": "ml"},
        )
        assert made == ClusterSpec(
            name="gpu",
            vm_size="Standard_NC6s_v3",
            vm_priority="lowpriority",
            max_nodes=8,
            idle_seconds_before_scaledown=600,
            identity=UserAssigned([UAI]),
            subnet="/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/train",
            tags={"team": "ml"},
        )


class TestWarnings:
    def test_none_for_an_ordinary_cluster(self):
        assert spec().warnings() == []

    def test_idle_nodes_are_billed(self):
        (text,) = spec(min_nodes=2).warnings()
        assert "billed even while idle" in text

    def test_more_than_100_nodes(self):
        (text,) = spec(max_nodes=101).warnings()
        assert "support request" in text
        assert "MPI" in text
        assert spec(max_nodes=100).warnings() == []


@pytest.fixture(scope="module")
def specs():
    return ArmSpecs.load()


class TestRequestBody:
    def test_system_assigned_body_validates_and_has_the_spec_shape(self, specs):
        body = spec(identity=SystemAssigned(), vm_priority="lowpriority").to_arm(location="eastus", subscription_id=SUB)
        assert specs.request_errors("Compute_CreateOrUpdate", body) == []
        assert body["identity"] == {"type": "SystemAssigned"}
        aml = body["properties"]["properties"]
        assert aml["vmPriority"] == "LowPriority"
        assert aml["scaleSettings"] == {
            "minNodeCount": 0,
            "maxNodeCount": 4,
            "nodeIdleTimeBeforeScaleDown": "PT1800S",
        }

    def test_user_assigned_keyed_by_resource_id(self, specs):
        body = spec(identity=UserAssigned([UAI, UAI2, UAI.upper()])).to_arm(location="eastus", subscription_id=SUB)
        assert specs.request_errors("Compute_CreateOrUpdate", body) == []
        assert body["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {UAI: {}, UAI2: {}}}

    def test_no_identity_sends_none(self, specs):
        body = spec().to_arm(location="eastus", subscription_id=SUB)
        assert "identity" not in body
        assert specs.request_errors("Compute_CreateOrUpdate", body) == []

    def test_subnet_without_subscription_takes_the_workspaces(self, specs):
        relative = "/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/train"
        body = spec(subnet=relative, location="westus").to_arm(location="eastus", subscription_id=SUB)
        assert specs.request_errors("Compute_CreateOrUpdate", body) == []
        assert body["properties"]["properties"]["subnet"] == {"id": SUBNET}
        assert (body["location"], body["properties"]["computeLocation"]) == ("westus", "westus")


class TestDrift:
    def _resource(self, **scale) -> dict:
        body = spec(identity=UserAssigned([UAI])).to_arm(location="eastus", subscription_id=SUB)
        body["properties"]["properties"]["scaleSettings"].update(scale)
        body["properties"]["properties"]["vmPriority"] = "Dedicated"
        return body

    def test_same_cluster_has_no_drift(self):
        resource = self._resource()
        resource["identity"]["userAssignedIdentities"] = {UAI.lower(): {"principalId": "p", "clientId": "c"}}
        assert spec(identity=UserAssigned([UAI]), vm_size="STANDARD_DS3_V2").drift(resource) == []

    def test_each_difference_is_named_with_its_fix(self):
        resource = self._resource(maxNodeCount=2, nodeIdleTimeBeforeScaleDown="PT30M")
        found = {d.field: d for d in spec(identity=SystemAssigned(), idle_seconds_before_scaledown=600).drift(resource)}
        assert set(found) == {"max_nodes", "identity", "idle_seconds_before_scaledown"}
        assert (found["max_nodes"].wanted, found["max_nodes"].actual) == (4, 2)
        assert "update_scale(max_nodes=4)" in found["max_nodes"].fix
        assert found["idle_seconds_before_scaledown"].actual == 1800
        assert "add_identity" in found["identity"].fix

    def test_immutable_fields_say_recreate(self):
        found = spec(identity=UserAssigned([UAI]), vm_size="Standard_DS4_v2").drift(self._resource())
        assert [d.field for d in found] == ["vm_size"]
        assert "delete the cluster and create it again" in found[0].fix
