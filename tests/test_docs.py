"""Every ```python block in docs/ runs, as written, inside the sandbox (one script per page).

Illustrative snippets that cannot run offline use another info string (```text, ```pycon, ```bash).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import aml_identity
from aml_identity.testing.sandbox import DatastoreSeed, Sandbox

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
SRC = str(Path(aml_identity.__file__).resolve().parents[1])
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(path: Path) -> list[str]:
    return _BLOCK.findall(path.read_text())


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    data = tmp_path_factory.mktemp("docs-data")
    (data / "images").mkdir()
    for i in range(3):
        (data / "images" / f"{i}.txt").write_text(f"image {i}\n")
    with Sandbox(datastores=[DatastoreSeed("training_data", data), DatastoreSeed("outputs")]) as box:
        yield box


@pytest.mark.azurite
@pytest.mark.parametrize("page", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name)
def test_the_python_examples_of_each_page_run(page, sandbox, tmp_path):
    script = tmp_path / f"doc_{page.stem}.py"  # not fsspec.py: it would shadow the fsspec package
    script.write_text("\n\n".join(python_blocks(page)))
    environ = sandbox.job_environment()
    environ["PYTHONPATH"] = os.pathsep.join([environ["PYTHONPATH"], SRC])
    result = subprocess.run(
        [sys.executable, str(script)], env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{page.name} examples failed:\n{result.stdout}\n{result.stderr}"
