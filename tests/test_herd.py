"""The thundering herd: a node's ranks start together on a cold cache and cost one endpoint request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import aml_identity

PROCESSES = 32
THREADS = 4
DAY = 86_400
# The same worker the herd benchmark runs (bench/herd_worker.py), with the aml-identity client.
WORKER = Path(__file__).resolve().parents[1] / "bench" / "herd_worker.py"
SRC = str(Path(aml_identity.__file__).resolve().parents[1])


def run_herd(environ: dict[str, str], *, clock_offset: float) -> list[dict[str, object]]:
    read_go, write_go = os.pipe()
    children: list[subprocess.Popen[str]] = []
    try:
        command = [sys.executable, str(WORKER), "--threads", str(THREADS), "--go-fd", str(read_go),
                   "--clock-offset", str(clock_offset)]  # fmt: skip
        children = [
            subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, text=True, pass_fds=(read_go,))
            for _ in range(PROCESSES)
        ]
        for child in children:
            assert child.stdout.readline().strip() == "ready"
    finally:
        os.close(read_go)
        os.close(write_go)  # every child's read returns now: they all start together
    results: list[dict[str, object]] = []
    for child in children:
        out, _ = child.communicate(timeout=300)
        assert child.returncode == 0
        results.extend(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.slow
def test_32_processes_x_4_threads_cost_one_request_per_token_lifetime(identity_endpoint, tmp_path):
    # The emulator enforces IMDS's published limits, so a herd without single-flight would see 429s.
    identity_endpoint.requests_per_second = 20
    identity_endpoint.max_concurrent = 5
    identity_endpoint.latency = 0.05
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MSI_", "IDENTITY_", "AZURE_", "DEFAULT_IDENTITY"))
    }
    environ.update(identity_endpoint.azureml_environ())
    environ.update(
        AML_IDENTITY_CACHE_DIR=str(tmp_path / "cache"),
        AML_IDENTITY_LOOPBACK_ONLY="1",
        PYTHONPATH=SRC + os.pathsep + environ.get("PYTHONPATH", ""),
    )

    cold = run_herd(environ, clock_offset=0)
    assert len(cold) == PROCESSES * THREADS
    assert all(r["ok"] for r in cold), [r for r in cold if not r["ok"]][:3]
    assert len({r["token_tail"] for r in cold}) == 1
    assert identity_endpoint.request_count == 1
    # On the cold node, only the node's fetch service loaded the endpoint client (msal); the process that won
    # the node lock asked it instead of loading msal while the other 31 waited.
    assert sum(r["endpoint_client_loaded"] for r in cold) == THREADS

    # Two days later every cached token has expired: the herd again costs exactly one request.
    identity_endpoint.clock = lambda: time.time() + 2 * DAY
    expired = run_herd(environ, clock_offset=2 * DAY)
    assert all(r["ok"] for r in expired), [r for r in expired if not r["ok"]][:3]
    assert len({r["token_tail"] for r in expired}) == 1
    assert {r["token_tail"] for r in expired} != {r["token_tail"] for r in cold}
    assert identity_endpoint.request_count == 2
    assert all(r.status == 200 for r in identity_endpoint.requests)
