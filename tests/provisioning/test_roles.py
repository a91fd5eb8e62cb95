"""grant_data_access: deterministic, idempotent role assignments, AcrPull, clear refusals."""

from __future__ import annotations

import pytest

from aml_identity.errors import ConfigurationError, ProvisioningError
from aml_identity.provisioning import ClusterSpec, SystemAssigned, UserAssigned, grant_data_access
from aml_identity.provisioning.roles import BUILTIN_ROLES, assignment_name

READER = BUILTIN_ROLES["Storage Blob Data Reader"]
CREATE = "RoleAssignments_Create"


def cluster_with(ws, identity, name="cpu"):
    cluster = ws.clusters.ensure(ClusterSpec(name=name, vm_size="Standard_DS3_v2", max_nodes=2, identity=identity))
    cluster.wait_for_completion()
    return cluster


class TestIdempotence:
    def test_second_grant_adds_no_assignment(self, arm, ws, seeded):
        cluster = cluster_with(ws, SystemAssigned())
        first = grant_data_access(cluster, seeded.account, acr_pull=False)
        second = grant_data_access(cluster, seeded.account, acr_pull=False)
        assert [g.created for g in first] == [True]
        assert [g.created for g in second] == [False]
        assert first[0].assignment_name == second[0].assignment_name
        assert len(arm.role_assignments(principal_id=cluster.principal_id)) == 1
        assert len(arm.requests_for(CREATE)) == 1
        (put,) = arm.requests_for(CREATE)
        assert arm.specs.request_errors(CREATE, put.body) == []
        assert put.body["properties"]["principalType"] == "ServicePrincipal"

    def test_assignment_name_is_deterministic(self, arm, ws, seeded):
        cluster = cluster_with(ws, SystemAssigned())
        (grant,) = grant_data_access(cluster, seeded.account, acr_pull=False)
        expected = assignment_name(seeded.account, cluster.principal_id, READER)
        assert grant.assignment_name == expected
        assert expected == assignment_name(seeded.account.upper() + "/", cluster.principal_id.upper(), READER.upper())
        assert expected != assignment_name(seeded.account, cluster.principal_id, BUILTIN_ROLES["AcrPull"])
        (stored,) = arm.role_assignments(principal_id=cluster.principal_id)
        assert stored["name"] == expected

    def test_an_equal_assignment_made_elsewhere_is_success(self, arm, ws, seeded):
        cluster = cluster_with(ws, SystemAssigned())
        other = arm.add_role_assignment(seeded.account, cluster.principal_id, "Storage Blob Data Reader")
        (grant,) = grant_data_access(cluster, seeded.account, acr_pull=False)
        assert grant.created is False
        assert grant.assignment_name == other.rsplit("/", 1)[-1]
        assert len(arm.role_assignments(principal_id=cluster.principal_id)) == 1


class TestWhatIsGranted:
    def test_the_default_identity_can_read_after_the_grant(self, arm, ws, seeded):
        cluster = cluster_with(ws, UserAssigned([seeded.uai, seeded.uai2]))
        assert not arm.has_data_role(seeded.uai_principal, seeded.account_name, "read")
        grants = grant_data_access(cluster, seeded.account)
        assert grants[0].principal_id == seeded.uai_principal
        assert arm.has_data_role(seeded.uai_principal, seeded.account_name, "read")
        assert not arm.has_data_role(seeded.uai_principal, seeded.account_name, "write")

    def test_acr_pull_on_the_workspace_registry(self, arm, ws, seeded):
        cluster = cluster_with(ws, SystemAssigned())
        grants = grant_data_access(cluster, seeded.account, "Storage Blob Data Contributor")
        assert [(g.role, g.scope) for g in grants] == [
            ("Storage Blob Data Contributor", seeded.account),
            ("AcrPull", seeded.registry),
        ]
        assert arm.has_data_role(cluster.principal_id, seeded.account_name, "write")

    def test_another_credential_for_a_cluster_keeps_the_workspace_endpoint(self, arm, ws, seeded):
        cluster = cluster_with(ws, SystemAssigned())
        grants = grant_data_access(cluster, seeded.account, credential=arm.credential(), acr_pull=False)
        assert [g.created for g in grants] == [True]

    def test_principal_id_with_an_explicit_registry(self, arm, seeded):
        principal = "33333333-3333-4333-8333-333333333333"
        grants = grant_data_access(
            principal,
            seeded.account,
            credential=arm.credential(),
            container_registry=seeded.registry,
            environ={"AML_IDENTITY_ARM_ENDPOINT": arm.endpoint},
            connection_verify=str(arm.tls.cert),
        )
        assert [g.role for g in grants] == ["Storage Blob Data Reader", "AcrPull"]
        assert arm.has_data_role(principal, seeded.account_name, "list")


class TestRefusals:
    def test_cluster_without_identity(self, ws, seeded):
        cluster = cluster_with(ws, None)
        with pytest.raises(ConfigurationError, match="has no managed identity") as raised:
            grant_data_access(cluster, seeded.account)
        assert "add_identity(SystemAssigned())" in str(raised.value)

    @pytest.mark.parametrize("principal", ["my-cluster", "11111111-1111-1111-1111"])
    def test_principal_must_be_an_object_id(self, principal, seeded):
        with pytest.raises(ConfigurationError, match="not a principal \\(object\\) id GUID"):
            grant_data_access(principal, seeded.account, credential=object())

    def test_scope_and_role(self, seeded):
        principal = "33333333-3333-4333-8333-333333333333"
        with pytest.raises(ConfigurationError, match="is not an ARM scope"):
            grant_data_access(principal, "mystorageaccount", credential=object())
        with pytest.raises(ConfigurationError, match="Unknown role 'Blob Reader'"):
            grant_data_access(principal, seeded.account, "Blob Reader", credential=object(), acr_pull=False)

    def test_arm_refusal_names_the_code(self, arm, ws, seeded):
        cluster = cluster_with(ws, SystemAssigned())
        missing = seeded.account.replace(seeded.account_name, "nosuchaccount")
        with pytest.raises(ProvisioningError, match="ResourceNotFound") as raised:
            grant_data_access(cluster, missing)
        assert raised.value.status_code == 404
