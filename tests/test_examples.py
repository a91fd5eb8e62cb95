"""Every script in examples/ runs in CI exactly as its docstring tells a user to run it offline.

Each example documents one ``aml-identity sandbox ... -- python examples/NAME.py ...`` line; this test runs
that line (with this interpreter) from the repository root and expects exit code 0.
"""

from __future__ import annotations

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
    match = _COMMAND.search(example.read_text())
    assert match, f"{example.name} must document how to run it: 'aml-identity sandbox ... -- python {example.name}'"
    return [
        sys.executable, "-m", "aml_identity", "sandbox", *shlex.split(match["options"]), "--",
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
