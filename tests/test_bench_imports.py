"""The import benchmark runs end to end in its quick mode (so it cannot rot), and writes only its own section."""

from __future__ import annotations


def test_quick_import_benchmark_measures_every_row_and_writes_its_section(tmp_path, run_bench):
    output = tmp_path / "performance.md"
    output.write_text(
        "# Performance\n\n<!-- bench:tokens:start -->\n## Token acquisition\nkept\n<!-- bench:tokens:end -->\n"
    )
    result = run_bench("imports", "--quick", "--output", str(output), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = output.read_text()
    assert "## Token acquisition\nkept" in text  # the other benchmark's section is left alone
    assert "## Import cost" in text
    for statement in ("import aml_identity", "import azure.identity", "import msal", "import azure.core"):
        assert f"| `{statement}` (" in text
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| aml-identity (node")}
    (cache_hit,) = rows.values()
    assert cache_hit.endswith("| 0 |")  # served from the node cache: no endpoint request in the fresh process
    assert "| azure-identity ManagedIdentityCredential (endpoint request) |" in text
