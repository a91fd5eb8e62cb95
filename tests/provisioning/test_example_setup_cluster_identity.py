"""examples/setup_cluster_identity.py runs end to end against the ARM emulator, as a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aml_identity.testing.arm import ArmEmulator

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "setup_cluster_identity.py"
SUB = "00000000-0000-0000-0000-0000000000aa"
# The example's process has its own clock: every request moves the emulator 15 s on, and the emulator asks
# for 10 ms between polls, so operations finish after a fixed number of polls without real waiting.
SECONDS_PER_REQUEST = 15
RETRY_AFTER = 0.01


@pytest.fixture
def arm(aml_tls):
    with ArmEmulator(tls=aml_tls, retry_after=RETRY_AFTER, seconds_per_request=SECONDS_PER_REQUEST) as emulator:
        yield emulator


def run_example(arm: ArmEmulator, msi_environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    keep = ("PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.update(msi_environ)
    env.update(arm.environ())  # AML_IDENTITY_ARM_ENDPOINT and the CA bundle
    env["AML_IDENTITY_LOOPBACK_ONLY"] = "1"
    env["PYTHONPATH"] = str(ROOT / "src")
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )


def test_example_sets_up_the_cluster_identity(arm, msi_environ):
    workspace = arm.add_workspace(
        SUB, "ml-rg", "ws-example", container_registry=arm.add_container_registry(SUB, "ml-rg", "acr")
    )
    identity = arm.add_user_assigned_identity(SUB, "ml-rg", "training-identity")
    account = arm.add_storage_account(SUB, "data-rg", "trainingdata")
    args = ("--subscription", SUB, "--resource-group", "ml-rg", "--workspace", "ws-example",
            "--identity", identity, "--storage-account", account)  # fmt: skip

    first = run_example(arm, msi_environ, *args)
    assert first.returncode == 0, first.stderr
    assert "cpu-cluster: creating cluster 'cpu-cluster': Succeeded" in first.stdout
    assert "granted: Storage Blob Data Reader on " + account in first.stdout
    assert "granted: AcrPull on " in first.stdout
    assert "No management lock blocks its scaling." in first.stdout
    cluster = arm.compute(f"{workspace}/computes/cpu-cluster")
    assert cluster is not None
    assert list(cluster["identity"]["userAssignedIdentities"]) == [identity]
    props = cluster["properties"]["properties"]
    assert (props["vmPriority"], props["scaleSettings"]["minNodeCount"]) == ("LowPriority", 0)
    principal = cluster["identity"]["userAssignedIdentities"][identity]["principalId"]
    assert arm.has_data_role(principal, "trainingdata", "read")

    lock = arm.add_lock(f"/subscriptions/{SUB}/resourceGroups/ml-rg", "keep", "CanNotDelete")
    second = run_example(arm, msi_environ, *args)
    assert second.returncode == 3, second.stderr
    assert "already granted: Storage Blob Data Reader" in second.stdout
    assert "lock 'keep' (CanNotDelete) on the workspace's resource group (ml-rg)" in second.stdout
    assert f"az lock delete --ids {lock}" in second.stdout
    assert len(arm.requests_for("Compute_CreateOrUpdate")) == 1  # created with its user-assigned identity, once
    assert len(arm.requests_for("RoleAssignments_Create")) == 2  # reader + AcrPull, once each
    assert arm.rejected_requests == []
