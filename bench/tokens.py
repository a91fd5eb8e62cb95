"""Token acquisition: aml-identity side by side with azure-identity and msal, on the same emulator, in one run.

1. Cached ``get_token`` latency (median, p99) — every client already holds a token.
2. The herd: P processes x T threads start together on a cold cache against an endpoint held to IMDS's
   published limits (20 requests/s, 5 concurrent, then 429): endpoint requests, 429s, failed callers,
   p99 time-to-token.

Run: ``python -m bench tokens`` (``--quick`` for a smoke run). Writes the "Token acquisition" section of
``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msal
import requests
from azure.identity import ManagedIdentityCredential

from aml_identity import default_credential
from aml_identity.testing.identity_endpoint import IdentityEndpoint
from bench._report import PERFORMANCE_MD, machine, update_section, versions

SCOPE = "https://storage.azure.com/.default"
RESOURCE = "https://storage.azure.com"
WORKER = Path(__file__).with_name("herd_worker.py")
ROOT = Path(__file__).resolve().parents[1]
# IMDS's published managed-identity limits (instance-metadata-service.md, "Rate limiting").
IMDS_RPS, IMDS_CONCURRENT = 20, 5
# A token request takes tens of milliseconds on a real node; the emulator holds each one this long.
ENDPOINT_LATENCY_S = 0.05
CLIENTS = ("aml-identity", "azure-identity", "msal")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _job_environ(endpoint: IdentityEndpoint, cache_dir: Path) -> dict[str, str]:
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("MSI_", "IDENTITY_", "AZURE_", "DEFAULT_IDENTITY"))
    }
    environ.update(endpoint.azureml_environ())
    environ.update(
        AML_IDENTITY_CACHE_DIR=str(cache_dir),
        AML_IDENTITY_LOOPBACK_ONLY="1",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    return environ


def cached_latency(endpoint: IdentityEndpoint, calls: int, cache_dir: Path) -> dict[str, tuple[float, float]]:
    """Median and p99 of a cached get_token, in microseconds, per client."""
    saved = dict(os.environ)
    os.environ.update(_job_environ(endpoint, cache_dir))
    try:
        client_id = os.environ["DEFAULT_IDENTITY_CLIENT_ID"]
        ours = default_credential()
        azure = ManagedIdentityCredential(client_id=client_id)
        app = msal.ManagedIdentityClient(
            msal.UserAssignedManagedIdentity(client_id=client_id), http_client=requests.Session()
        )
        calls_by_client: dict[str, Callable[[], object]] = {
            "aml-identity": lambda: ours.get_token(SCOPE),
            "azure-identity": lambda: azure.get_token(SCOPE),
            "msal": lambda: app.acquire_token_for_client(resource=RESOURCE),
        }
        results = {}
        for name, call in calls_by_client.items():
            call()  # warm: the one request that fills the cache
            samples = []
            for _ in range(calls):
                start = time.perf_counter_ns()
                call()
                samples.append((time.perf_counter_ns() - start) / 1000)
            results[name] = (statistics.median(samples), _percentile(samples, 0.99))
        return results
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class HerdResult:
    client: str
    per: str
    processes: int
    threads: int
    requests: int
    throttled: int
    failed: int
    p99_seconds: float
    wall_seconds: float
    first_error: str
    loaded_client: int  # how many of the processes loaded the endpoint client (msal)
    load: float  # the machine's 1-minute load average when the herd started (the machine may be shared)


def herd(
    endpoint: IdentityEndpoint, client: str, per: str, processes: int, threads: int, *, hold: bool = True
) -> HerdResult:
    """Start processes x threads callers together on a cold cache and count what the endpoint saw.

    With ``hold`` every worker stays alive until all have reported, so that the interpreter shutdown of the
    first ones done does not compete for the CPU with those still getting their token.
    """
    endpoint.reset_requests()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="aml-herd-") as cache:
        environ = _job_environ(endpoint, Path(cache))
        read_go, write_go = os.pipe()
        read_exit, write_exit = os.pipe()
        command = [sys.executable, str(WORKER), "--client", client, "--threads", str(threads), "--per", per,
                   "--go-fd", str(read_go)]  # fmt: skip
        if hold:
            command += ["--exit-fd", str(read_exit)]
        children: list[subprocess.Popen[str]] = []
        try:
            fds = (read_go, read_exit)
            children = [
                subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, text=True, pass_fds=fds)
                for _ in range(processes)
            ]
            for child in children:
                if child.stdout is None or child.stdout.readline().strip() != "ready":
                    raise SystemExit(f"a {client} worker failed to start")
            start = time.perf_counter()
        finally:
            os.close(read_go)
            os.close(write_go)
            os.close(read_exit)
        outcomes: list[dict[str, object]] = []
        loaded = 0
        try:
            for child in children:
                assert child.stdout is not None  # noqa: S101 - opened above
                reported = json.loads(child.stdout.readline())
                outcomes.extend(reported)
                loaded += any(o.get("endpoint_client_loaded") for o in reported)
            wall = time.perf_counter() - start
        finally:
            os.close(write_exit)  # every held worker exits now
            for child in children:
                child.communicate(timeout=600)
    recorded = endpoint.requests
    errors = [str(o.get("error")) for o in outcomes if not o["ok"]]
    return HerdResult(
        client=client,
        per=per,
        processes=processes,
        threads=threads,
        requests=len(recorded),
        throttled=sum(1 for r in recorded if r.status == 429),
        failed=len(errors),
        p99_seconds=_percentile([float(str(o["seconds"])) for o in outcomes], 0.99),
        wall_seconds=wall,
        first_error=errors[0] if errors else "",
        loaded_client=loaded,
        load=load,
    )


def _table(
    latency: dict[str, tuple[float, float]], herds: list[tuple[HerdResult, HerdResult]], args: argparse.Namespace
) -> str:
    ours = latency["aml-identity"][0]
    lines = [
        "## Token acquisition",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; {versions('azure-identity', 'msal', 'azure-core')}.",
        (
            f"Command: `python -m bench tokens{' --quick' if args.quick else ''}"
            f"{f' --herds {args.herds}' if args.herds else ''}`. Emulator: "
            "`aml_identity.testing.IdentityEndpoint`, Azure ML protocol (`MSI_ENDPOINT`), in the benchmark process."
        ),
        "",
        f"### Cached `get_token` latency ({args.calls:,} calls each, after one warm-up request)",
        "",
        "| client | median (µs) | p99 (µs) | median vs aml-identity |",
        "|---|---:|---:|---:|",
    ]
    for name in CLIENTS:
        median, p99 = latency[name]
        lines.append(f"| {name} | {median:.2f} | {p99:.2f} | {median / ours:.1f}x |")
    lines += [
        "",
        (
            f"### The herd: cold cache, endpoint at IMDS limits ({IMDS_RPS} requests/s, {IMDS_CONCURRENT} concurrent, "
            f"{ENDPOINT_LATENCY_S * 1000:.0f} ms per request)"
        ),
        "",
        (
            "Every caller starts at once (the processes block on one pipe that the benchmark closes). "
            "'per thread' gives each thread its own credential; 'per process' shares one credential between a "
            "process's threads (the setting of the azure-identity figure quoted in the issue). The clock starts "
            "when the credentials exist (each worker creates them before it reports ready). Each herd runs twice: "
            "'held', every worker stays alive until all have their outcome (the time to a token alone); 'exiting', "
            "each worker exits as soon as its threads are done, and the interpreter shutdown of the first ones takes "
            "the 2 cores from the callers still waking up. The outcome is a caller's token or its error (a caller "
            "refused at once by a 429 ends early). The other columns are the held run's. 'processes with "
            "msal' counts the processes that loaded the endpoint client. 'load avg' is the machine's 1-minute load "
            "average as the herd started: on a shared machine, compare rows of similar load."
        ),
        "",
        (
            "| client | credential | processes x threads | endpoint requests | 429s | failed callers "
            "| p99 time to outcome, held (s) | p99, exiting (s) | processes with msal | wall (s) | load avg |"
        ),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for h, exiting in herds:
        lines.append(
            f"| {h.client} | per {h.per} | {h.processes} x {h.threads} | {h.requests} | {h.throttled} | {h.failed} | "
            f"{h.p99_seconds:.2f} | {exiting.p99_seconds:.2f} | {h.loaded_client} | {h.wall_seconds:.1f} | "
            f"{h.load:.1f} |"
        )
    failures = {h.client: h.first_error for h, _ in herds if h.first_error}
    if failures:
        lines += ["", "First error seen per client:", ""]
        lines += [f"- {client}: `{error}`" for client, error in failures.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the token benchmark and write its table."""
    parser = argparse.ArgumentParser(prog="python -m bench tokens", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few calls, a small herd")
    parser.add_argument("--calls", type=int, default=None, help="cached get_token calls per client")
    parser.add_argument("--herds", default=None, help="comma-separated PxT herd sizes, e.g. 32x4,64x4")
    parser.add_argument("--output", type=Path, default=PERFORMANCE_MD, help="markdown file to update")
    args = parser.parse_args(argv)
    args.calls = args.calls or (500 if args.quick else 20_000)
    sizes = args.herds or ("2x2" if args.quick else "32x4,64x4")
    herd_sizes = [tuple(int(n) for n in size.split("x")) for size in sizes.split(",")]

    with IdentityEndpoint() as endpoint, tempfile.TemporaryDirectory(prefix="aml-bench-") as cache:
        latency = cached_latency(endpoint, args.calls, Path(cache))
        endpoint.requests_per_second = IMDS_RPS
        endpoint.max_concurrent = IMDS_CONCURRENT
        endpoint.latency = ENDPOINT_LATENCY_S
        herds = []
        for processes, threads in herd_sizes:
            for client, per in (("aml-identity", "thread"), ("aml-identity", "process"),
                                ("azure-identity", "process"), ("msal", "process")):  # fmt: skip
                held = herd(endpoint, client, per, processes, threads)
                exiting = herd(endpoint, client, per, processes, threads, hold=False)
                print(f"{client:15} per {per:7} {processes}x{threads}: {held.requests} requests, "
                      f"{held.throttled} 429s, {held.failed} failed, p99 {held.p99_seconds:.2f} s held, "
                      f"{exiting.p99_seconds:.2f} s exiting, {held.loaded_client} processes with msal")  # fmt: skip
                herds.append((held, exiting))
    for name in CLIENTS:
        print(f"cached get_token {name:15} median {latency[name][0]:.2f} us, p99 {latency[name][1]:.2f} us")
    update_section("tokens", _table(latency, herds, args), args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
