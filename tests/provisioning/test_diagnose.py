"""diagnose(): names the lock that keeps a cluster resizing 0 -> 0, and nothing when there is none."""

from __future__ import annotations

import pytest

from aml_identity.provisioning import ClusterSpec, SystemAssigned, diagnose


def stuck_cluster(ws, **changes):
    values = {"name": "cpu", "vm_size": "Standard_DS3_v2", "max_nodes": 2, "identity": SystemAssigned()}
    values.update(changes)
    cluster = ws.clusters.ensure(ClusterSpec(**values))
    cluster.wait_for_completion()
    return cluster


class TestLocks:
    def test_names_the_lock_on_the_workspace_resource_group(self, arm, ws, seeded):
        lock = arm.add_lock(seeded.group, "protect-rg", "CanNotDelete", notes="set by policy")
        cluster = stuck_cluster(ws)
        report = diagnose(cluster)
        assert report.status.stuck_resizing
        (found,) = report.locks
        assert (found.id, found.name, found.level, found.scope) == (
            lock,
            "protect-rg",
            "CanNotDelete",
            seeded.group,
        )
        text = report.text
        assert "stuck resizing 0 -> 0" in text
        assert "lock 'protect-rg' (CanNotDelete) on the workspace's resource group (ml-rg)" in text
        assert seeded.group in text
        assert f"az lock delete --ids {lock}" in text
        assert not report.ok

    def test_reports_nothing_when_there_is_no_lock(self, arm, ws):
        report = diagnose(stuck_cluster(ws))
        assert report.locks == ()
        assert report.ok
        assert not report.status.stuck_resizing
        assert "No management lock blocks its scaling." in report.text

    def test_removing_the_lock_unsticks_the_cluster(self, arm, ws, seeded):
        lock = arm.add_lock(seeded.group, "protect-rg", "ReadOnly")
        cluster = stuck_cluster(ws)
        assert diagnose(cluster).status.stuck_resizing
        arm.remove_lock(lock)
        assert diagnose(cluster).ok

    def test_subscription_lock(self, arm, ws, seeded):
        arm.add_lock(f"/subscriptions/{seeded.sub}", "sub-lock", "CanNotDelete")
        (found,) = diagnose(stuck_cluster(ws)).locks
        assert found.where == "the subscription"

    def test_azure_batch_network_resource_lock(self, arm, ws, seeded):
        nsg = (
            f"{seeded.group}/providers/Microsoft.Network/networkSecurityGroups/"
            "0a1b-azurebatch-cloudservicenetworksecuritygroup"
        )
        arm.add_lock(nsg, "nsg-lock", "CanNotDelete")
        arm.add_lock(f"{seeded.group}/providers/Microsoft.KeyVault/vaults/kv1", "kv-lock", "CanNotDelete")
        (found,) = diagnose(stuck_cluster(ws)).locks
        assert found.name == "nsg-lock"
        assert found.where == "an Azure ML network resource in the workspace's resource group (ml-rg)"

    def test_virtual_network_resource_group_lock(self, arm, ws, seeded):
        network = f"/subscriptions/{seeded.sub}/resourceGroups/net-rg/providers/Microsoft.Network"
        subnet = f"{network}/virtualNetworks/v/subnets/s"
        arm.add_lock(f"/subscriptions/{seeded.sub}/resourceGroups/net-rg", "vnet-lock", "CanNotDelete")
        report = diagnose(stuck_cluster(ws, subnet=subnet))
        (found,) = report.locks
        assert found.where == "the virtual network's resource group (net-rg)"
        assert f"/subscriptions/{seeded.sub}/resourceGroups/net-rg" in report.checked

    @pytest.mark.parametrize(
        ("scope", "level"),
        [("/subscriptions/{sub}/resourceGroups/other-rg", "CanNotDelete"), ("{group}", "NotSpecified")],
    )
    def test_locks_that_do_not_block_are_not_reported(self, arm, ws, seeded, scope, level):
        arm.add_lock(scope.format(sub=seeded.sub, group=seeded.group), "harmless", level)
        report = diagnose(stuck_cluster(ws))
        assert report.locks == ()
        assert report.ok

    def test_json_form(self, arm, ws, seeded):
        arm.add_lock(seeded.group, "protect-rg", "CanNotDelete")
        data = diagnose(stuck_cluster(ws)).to_dict()
        assert data["stuckResizing"] is True
        assert data["blockingLocks"][0]["name"] == "protect-rg"
        assert data["ok"] is False


def test_every_page_of_locks_is_read(paged_arm, make_workspace):
    seeded = paged_arm.seeded
    paged_arm.add_lock(f"/subscriptions/{seeded.sub}/resourceGroups/other-rg", "elsewhere", "CanNotDelete")
    paged_arm.add_lock(f"/subscriptions/{seeded.sub}", "sub-lock", "ReadOnly")
    paged_arm.add_lock(seeded.group, "rg-lock", "CanNotDelete")
    report = diagnose(stuck_cluster(make_workspace(paged_arm)))
    assert sorted(lock.name for lock in report.locks) == ["rg-lock", "sub-lock"]
    pages = [r for r in paged_arm.requests if r.path.endswith("/locks") and "$skiptoken" in r.query]
    assert pages  # the lists came in several pages
