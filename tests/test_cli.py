"""The aml-identity command: whoami, token, sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import aml_identity
from aml_identity.cli import main

SRC = str(Path(aml_identity.__file__).resolve().parents[1])


def test_whoami_shows_the_identity_and_claims_but_never_the_token(aml_job, capsys):
    assert main(["whoami", "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    identity = aml_job.identities[0]
    assert report["source"] == "azureml"
    assert report["client_id"] == identity.client_id
    assert report["selected_by"] == "DEFAULT_IDENTITY_CLIENT_ID"
    assert report["claims"]["oid"] == identity.object_id
    assert report["claims"]["appid"] == identity.client_id
    assert report["claims"]["xms_mirid"] == identity.resource_id
    assert report["claims"]["tid"]
    assert report["expires_in_seconds"] > 0
    assert "eyJ" not in out  # no token, not even its header


def test_whoami_text(aml_job, capsys):
    assert main(["whoami"]) == 0
    out = capsys.readouterr().out
    assert "DEFAULT_IDENTITY_CLIENT_ID" in out
    assert aml_job.identities[0].resource_id in out
    assert "eyJ" not in out


def test_token_prints_the_token_for_scripts(aml_job, capsys):
    assert main(["token", "--resource", "https://storage.azure.com"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("eyJ") and token.count(".") == 2
    assert main(["token", "--resource", "https://storage.azure.com/.default", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["accessToken"] == token  # the second call came from the cache
    assert data["tokenType"] == "Bearer"
    assert aml_job.request_count == 1


def test_errors_are_one_line_with_the_fix_and_exit_1(aml_job, clean_env, capsys):
    clean_env.setenv("DEFAULT_IDENTITY_CLIENT_ID", "clientid")
    assert main(["token", "--resource", "https://storage.azure.com"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aml-identity: error: This Azure ML compute has no managed identity")
    assert aml_job.request_count == 0


@pytest.mark.azurite
def test_sandbox_runs_a_job_with_the_platform_environment(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "rows.csv").write_text("a,b\n1,2\n")
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, os, sys, requests
            from azure.storage.blob import BlobServiceClient
            from aml_identity import default_credential
            from aml_identity.testing import LoopbackViolationError
            url = json.loads(os.environ["AML_IDENTITY_BLOB_ENDPOINTS"])["devstoreaccount1"]
            service = BlobServiceClient(url, credential=default_credential())
            print(service.get_container_client("training-data").download_blob("sub/rows.csv").readall().decode())
            try:
                requests.get("http://169.254.169.254/metadata/identity/oauth2/token", timeout=1)
            except LoopbackViolationError:
                print("guarded")
            sys.exit(3)
            """
        )
    )
    environ = {k: v for k, v in os.environ.items() if k not in ("MSI_ENDPOINT", "MSI_SECRET")}
    environ["PYTHONPATH"] = SRC
    result = subprocess.run(
        [sys.executable, "-m", "aml_identity", "sandbox", "--datastore", f"training_data={data}", "--",
         sys.executable, str(script)],
        env=environ, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "a,b\n1,2" in result.stdout
    assert "guarded" in result.stdout
    assert "1 token request(s)" in result.stderr


def test_sandbox_needs_a_command(capsys):
    assert main(["sandbox"]) == 1
    assert "Nothing to run" in capsys.readouterr().err


def test_sandbox_rejects_a_bad_datastore(tmp_path, capsys):
    assert main(["sandbox", "--datastore", "x=/nonexistent", "--", "true"]) == 1
    assert "--datastore" in capsys.readouterr().err
