"""The mount benchmark's table names the data set it measured (a ``--quick`` run is not labelled 64 MiB)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench_mount(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import bench.mount as module  # bench/ sits beside src/, not on the default path

    yield module
    sys.modules.pop("bench.mount", None)


def test_a_quick_runs_table_labels_its_rows_with_the_sizes_it_read(bench_mount):
    medians = {
        bench_mount.label(name, 16, 40): {"aml-identity (memory cache)": 100.0, "rclone (vfs off)": 50.0}
        for name, *_ in bench_mount.WORKLOADS
    }
    table = bench_mount._table(["aml-identity (memory cache)", "rclone (vfs off)"], medians, 16, 40, 1)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "workload" not in line]

    assert any(row.startswith("| cold `dd bs=1M`, 16 MiB |") for row in rows)
    assert any(row.startswith("| cold `cat` of 40 x 256 KiB |") for row in rows)
    assert not any("64 MiB" in row and "write" not in row for row in rows)  # the write's size does not shrink
    assert all("2.00x" in row or "0.50x" in row for row in rows)  # every row found its numbers under its label
