"""Every script in examples/ runs in CI exactly as its docstring tells a user to run it offline.

Each example documents one ``aml-identity sandbox ... -- python examples/NAME.py ...`` command (continued over
lines with ``\\`` when long); this test runs that command (with this interpreter, also for ``--setup`` steps) from
the repository root and expects exit code 0.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import aml_identity

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
SRC = str(Path(aml_identity.__file__).resolve().parents[1])
_COMMAND = re.compile(
    r"^\s*aml-identity sandbox (?P<options>.*?)\s*-- python (?P<script>examples/\S+\.py)(?P<args>.*)$", re.MULTILINE
)


def documented_command(example: Path) -> list[str]:
    text = re.sub(r"\\{1,2}\n\s*", " ", example.read_text())  # a command continued over lines with '\'
    match = _COMMAND.search(text)
    assert match, f"{example.name} must document how to run it: 'aml-identity sandbox ... -- python {example.name}'"
    options = shlex.split(match["options"])
    for index, option in enumerate(options[:-1]):
        if option == "--setup" and options[index + 1].startswith("python "):  # a setup step runs with us too
            options[index + 1] = shlex.quote(sys.executable) + options[index + 1][len("python") :]
    return [
        sys.executable, "-m", "aml_identity", "sandbox", *options, "--",
        sys.executable, match["script"], *shlex.split(match["args"]),
    ]  # fmt: skip


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.azurite
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_as_documented(example):
    # The job environment comes from the sandbox; where Azurite and the specs are installed stays the caller's.
    keep = ("AML_IDENTITY_AZURITE", "AML_IDENTITY_SPECS_DIR")
    environ = {k: v for k, v in os.environ.items() if k in keep or not k.startswith(("MSI_", "AML_IDENTITY_"))}
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, environ.get("PYTHONPATH")) if p)
    result = subprocess.run(
        documented_command(example), cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{example.name} failed:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip(), f"{example.name} printed nothing"


@pytest.mark.azurite
def test_the_demo_job_runs_as_the_clusters_identity_and_lands_its_outputs(tmp_path):
    """make demo's story: setup, then 4 ranks as the cluster's user-assigned identity, outputs landed, cheap."""
    command = documented_command(ROOT / "examples" / "train_job.py")
    command[command.index("outputs=demo-outputs")] = f"outputs={tmp_path / 'landed'}"
    keep = ("AML_IDENTITY_AZURITE", "AML_IDENTITY_SPECS_DIR")
    environ = {k: v for k, v in os.environ.items() if k in keep or not k.startswith(("MSI_", "AML_IDENTITY_"))}
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, environ.get("PYTHONPATH")) if p)
    result = subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    client_id = re.search(r"as its user-assigned identity uai-sandbox \(client id (\S+)\)", result.stderr)
    assert client_id, result.stderr
    assert f"client id    {client_id[1]}" in result.stdout  # whoami: DEFAULT_IDENTITY_CLIENT_ID is the cluster's
    assert "userAssignedIdentities/uai-sandbox" in result.stdout
    assert result.stdout.count(": downloaded ") == 1  # once for the node
    assert result.stdout.count(": waited for ") == 3
    model = json.loads((tmp_path / "landed" / "run-1" / "model.json").read_text())
    assert abs(model["x1"] - 2.0) < 0.1 and abs(model["x2"] + 1.5) < 0.1  # the data's true slopes
    metrics = json.loads((tmp_path / "landed" / "run-1" / "metrics.json").read_text())
    assert metrics["ranks"] == 4 and metrics["rows"] == 400
    # The whole run: one ARM token for the setup step, then one ARM and one storage token for all 4 ranks.
    assert "3 token request(s) (https://management.azure.com: 2, https://storage.azure.com: 1)" in result.stderr
