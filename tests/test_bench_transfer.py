"""The datastore transfer benchmark runs end to end in its quick mode (so it cannot rot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import aml_identity

ROOT = Path(__file__).resolve().parents[1]
SRC = str(Path(aml_identity.__file__).resolve().parents[1])

pytestmark = [pytest.mark.azurite, pytest.mark.slow]


def test_quick_transfer_benchmark_measures_every_client_and_writes_its_section(tmp_path):
    output = tmp_path / "performance.md"
    output.write_text(
        "# Performance\n\n<!-- bench:tokens:start -->\n## Token acquisition\nkept\n<!-- bench:tokens:end -->\n"
    )
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = ["bench", "transfer", "--quick", "--output", str(output), "--json", str(tmp_path / "m.json")]
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    measurements = json.loads((tmp_path / "m.json").read_text())["measurements"]
    cells = {(m["run"], m["workload"], m["op"], m["client"]) for m in measurements}
    assert len(cells) == 2 * 2 * 2 * 4  # runs x workloads x ops x clients
    assert all(m["ok"] and m["seconds"] > 0 and m["peak_rss_mib"] > 0 for m in measurements)
    text = output.read_text()
    assert "## Token acquisition\nkept" in text  # the other benchmark's section is left alone
    assert "## Datastore transfers" in text
    assert "### Through the latency proxy (5 ms each way)" in text
    assert text.count("**aml-identity**") == 2 * 2 * 2
