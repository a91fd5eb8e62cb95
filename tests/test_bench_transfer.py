"""The datastore transfer benchmark runs end to end in its quick mode (so it cannot rot)."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.azurite, pytest.mark.slow]


def test_quick_transfer_benchmark_measures_every_client_and_writes_its_section(tmp_path, run_bench):
    output = tmp_path / "performance.md"
    output.write_text(
        "# Performance\n\n<!-- bench:tokens:start -->\n## Token acquisition\nkept\n<!-- bench:tokens:end -->\n"
    )
    result = run_bench("transfer", "--quick", "--output", str(output), "--json", str(tmp_path / "m.json"), timeout=600)
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
