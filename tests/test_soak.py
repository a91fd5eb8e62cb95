"""The soak, for one minute: 8 processes read through the SDK and a FUSE mount with 30 s tokens under faults.

``python -m bench soak --minutes 30`` is the real run (its counts are in docs/reliability.md); this is the same
script for 60 seconds, so it cannot rot and a regression that fails reads under refreshes and faults shows here.
"""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.azurite, pytest.mark.fuse, pytest.mark.slow]


def test_a_one_minute_soak_has_no_failed_read_and_one_token_per_refresh_interval(tmp_path, run_bench):
    output = tmp_path / "reliability.md"
    output.write_text("# Reliability\n\n<!-- bench:faults:start -->\nkept\n<!-- bench:faults:end -->\n")
    counts_file = tmp_path / "soak.json"
    command = ["soak", "--minutes", "1", "--output", str(output), "--json", str(counts_file)]
    result = run_bench(*command, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = json.loads(counts_file.read_text())
    assert (counts["sdk_failed"], counts["mount_failed"], counts["storage_403"]) == (0, 0, 0), counts["errors"]
    assert counts["sdk_ok"] > 0 and counts["mount_ok"] > 0
    assert len(counts["workers"]) == 8
    assert sum(counts["storage_faults_met"].values()) > 0  # faults were met, and ridden out
    assert sum(counts["identity_faults"].values()) > 0
    # One token per refresh interval for the whole node (the node cache shares it), not one per read or process.
    intervals = counts["elapsed_s"] / counts["refresh_interval_s"]
    assert counts["tokens_issued"] <= intervals + 2
    assert all(w["tokens_used"] <= intervals + 2 for w in counts["workers"])
    page = output.read_text()
    assert "<!-- bench:soak:start -->" in page and "| SDK reads" in page
    assert "<!-- bench:faults:start -->\nkept\n<!-- bench:faults:end -->" in page  # another section is left alone
