"""``aml-identity doctor``: passes in a healthy job, names the role to grant, fails with a fix outside a job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import aml_identity
from aml_identity.cli import main
from aml_identity.testing.sandbox import DatastoreSeed, Sandbox

SRC = str(Path(aml_identity.__file__).resolve().parents[1])
CHECK_KEYS = {"name", "status", "detail", "fix"}


def assert_shape(document: dict) -> None:
    """Exactly {"ok": bool, "checks": [{"name": str, "status": pass|warn|fail, "detail": str, "fix": str}]}."""
    assert set(document) == {"ok", "checks"}
    assert isinstance(document["ok"], bool)
    assert document["checks"]
    for check in document["checks"]:
        assert set(check) == CHECK_KEYS
        assert check["status"] in ("pass", "warn", "fail")
        assert all(isinstance(check[key], str) for key in CHECK_KEYS)
        assert (check["fix"] == "") == (check["status"] == "pass")
    assert document["ok"] == all(c["status"] != "fail" for c in document["checks"])


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    data = tmp_path_factory.mktemp("doctor-data")
    (data / "rows.csv").write_text("a,b\n1,2\n")
    seeds = [DatastoreSeed("inputs", data), DatastoreSeed("locked", data)]
    with Sandbox(datastores=seeds, grants={"locked": None}) as box:
        yield box


def doctor_in_job(sandbox: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    environ = sandbox.job_environment()
    environ["PYTHONPATH"] = os.pathsep.join([environ["PYTHONPATH"], SRC])
    return subprocess.run(
        [sys.executable, "-m", "aml_identity", "doctor", *args], env=environ, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.azurite
def test_doctor_passes_in_a_healthy_sandbox_job(sandbox):
    result = doctor_in_job(sandbox, "--json", "--datastore", "azureml://datastores/inputs/paths/")
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert_shape(document)
    checks = {c["name"]: c for c in document["checks"]}
    assert [c["status"] for c in document["checks"]] == ["pass"] * len(checks)
    assert {"identity source", "endpoint", "node cache", "token", "clock", "datastore resolve", "datastore list",
            "datastore read"} <= set(checks)  # fmt: skip
    assert "MSI_SECRET=(set)" in checks["identity source"]["detail"]  # the variables that decided, not the secret
    assert sandbox.endpoint.secret not in result.stdout
    assert f"appid={sandbox.identity.client_id}" in checks["token"]["detail"]
    assert f"oid={sandbox.identity.object_id}" in checks["token"]["detail"]
    assert "eyJ" not in result.stdout  # never the token
    assert "mode 0700" in checks["node cache"]["detail"]
    assert "read rows.csv" in checks["datastore read"]["detail"]


@pytest.mark.azurite
def test_the_second_run_is_a_node_cache_hit(sandbox):
    doctor_in_job(sandbox, "--json")
    document = json.loads(doctor_in_job(sandbox, "--json").stdout)
    (cache,) = [c for c in document["checks"] if c["name"] == "node cache"]
    assert ": hit (" in cache["detail"]


@pytest.mark.azurite
def test_doctor_fails_with_the_role_to_grant_when_the_role_is_missing(sandbox):
    result = doctor_in_job(sandbox, "--json", "--datastore", "azureml://datastores/locked/paths/")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert_shape(document)
    (failed,) = [c for c in document["checks"] if c["status"] == "fail"]
    assert failed["name"] == "datastore list"
    assert "'Storage Blob Data Reader' role on storage account 'devstoreaccount1'" in failed["fix"]
    assert sandbox.identity.client_id in failed["fix"]
    assert sandbox.identity.object_id in failed["fix"]


@pytest.mark.azurite
def test_doctor_text_output_shows_each_fix(sandbox):
    result = doctor_in_job(sandbox, "--datastore", "azureml://datastores/locked/paths/")
    assert result.returncode == 1
    assert "FAIL  datastore list" in result.stdout
    assert "fix: Grant the identity" in result.stdout
    assert "problems found: 1 failed" in result.stdout


def test_doctor_outside_any_job_fails_with_the_fix_and_no_traceback(clean_env, capsys):
    assert main(["doctor", "--json"]) == 1  # clean_env: no job variables, AML_IDENTITY_LOOPBACK_ONLY=1
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert_shape(document)
    assert document["ok"] is False
    (check,) = document["checks"]
    assert check["name"] == "identity source"
    assert check["status"] == "fail"
    assert check["detail"].startswith("not in an Azure ML job")
    assert "inside the Azure ML job" in check["fix"]
    assert "aml-identity sandbox -- aml-identity doctor" in check["fix"]
    assert "Traceback" not in err


def test_doctor_never_connects_off_loopback_when_told_not_to(clean_env, monkeypatch):
    import socket

    from aml_identity import _doctor

    attempts = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **_: attempts.append(a))
    clean_env.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://169.254.169.254")  # an IMDS lookalike
    checks = _doctor.run_checks()
    assert attempts == []
    assert checks[-1].status == "fail"
    assert "AML_IDENTITY_LOOPBACK_ONLY" in checks[-1].detail


def test_a_malformed_environment_is_a_failed_check_with_a_fix(clean_env):
    from aml_identity import _doctor

    clean_env.setenv("LOCAL_RANK", "²")
    (check,) = _doctor.run_checks()
    assert (check.name, check.status) == ("environment", "fail")
    assert "LOCAL_RANK='²'" in check.detail


@pytest.mark.azurite
def test_doctor_imports_only_runtime_dependencies(sandbox):
    environ = sandbox.job_environment()
    environ["PYTHONPATH"] = SRC  # without the sandbox's guard, which imports the testing extra itself
    probe = (
        "import json, sys\n"
        "from aml_identity import _doctor\n"
        "checks = _doctor.run_checks(datastore='azureml://datastores/inputs/paths/')\n"
        "extras = ('jsonschema', 'referencing', 'azure.storage', 'aml_identity.testing', 'mfusepy')\n"
        "print(json.dumps({'ok': _doctor.report(checks)['ok'],\n"
        "                  'extras': sorted(m for m in sys.modules if m.startswith(extras))}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=environ, capture_output=True, text=True, timeout=120,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"ok": True, "extras": []}
