"""Datastore transfers: aml-identity side by side with azure-storage-blob, adlfs and a plain ranged-GET client.

One run, one Azurite (HTTPS, bearer tokens), every client in its own process, the same concurrency for all.
Workloads: 1 x 1 GiB, 2,000 x 256 KiB and 20,000 x 4 KiB, each downloaded and uploaded. The whole matrix runs
twice: against Azurite directly, and with every client going through ``bench/latency_proxy.py`` (5 ms each
way - real storage is milliseconds away). Reported per client: throughput, CPU seconds per GiB of the
transfer (user + sys, all threads) and the process's peak RSS. Every download is verified against the source
files; every upload by listing.

Run: ``python -m bench transfer`` (``--quick`` for a smoke run with tiny sizes). Writes the "Datastore
transfers" section of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.storage.blob import BlobServiceClient

from aml_identity.datastore import upload
from aml_identity.datastore._rest import BearerToken, BlobRestClient
from aml_identity.testing import TlsMaterial, make_tls_material
from aml_identity.testing.azurite import Azurite
from bench._report import PERFORMANCE_MD, machine, update_section, versions
from bench.transfer_clients import ACCOUNT, StaticCredential

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ("aml-identity", "azure-storage-blob", "adlfs", "plain")
# Local files live in tmpfs when there is one: the benchmark measures the clients, not this machine's disk
# (creating 20,000 files on the test VM's ext4 costs ~0.4 ms of CPU each, the same for every client).
SHM = "/dev/shm"  # noqa: S108 - a private mkdtemp() folder inside it
OPS = ("download", "upload")
GIB = 1024**3
MB = 1e6


@dataclass(frozen=True)
class Workload:
    name: str
    count: int
    size: int
    repeats: int = 1

    @property
    def total(self) -> int:
        return self.count * self.size

    @property
    def label(self) -> str:
        size = f"{self.size // GIB} GiB" if self.size >= GIB else (
            f"{self.size // 2**20} MiB" if self.size >= 2**20 else f"{self.size // 1024} KiB"
        )  # fmt: skip
        return f"{self.count:,} x {size}"


# Repeats per cell (the median is reported): the two shorter workloads vary run to run on this shared 2-core
# machine; 20,000 x 4 KiB is long and steady (Azurite-bound, see the module docstring), so it runs once.
FULL = (
    Workload("1x1GiB", 1, GIB, repeats=3),
    Workload("2000x256KiB", 2000, 256 * 1024, repeats=3),
    Workload("20000x4KiB", 20000, 4096, repeats=1),
)
# The smoke run (CI): a blob fetched in two ranges and a few small files, every client, both runs.
QUICK = (Workload("1x20MiB", 1, 20 * 2**20), Workload("30x4KiB", 30, 4096))


@dataclass
class Measurement:
    run: str
    workload: str
    op: str
    client: str
    seconds: float
    cpu: float
    peak_rss_mib: float
    bytes: int
    ok: bool
    error: str = ""

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / MB if self.ok and self.seconds else 0.0

    @property
    def cpu_per_gib(self) -> float:
        return self.cpu / (self.bytes / GIB) if self.ok and self.bytes else 0.0


# --- data ----------------------------------------------------------------------------------------------------------


def make_source(root: Path, workload: Workload) -> str:
    """Write the workload's files under ``root``; return a digest of (name, content) of all of them."""
    rng = random.Random(workload.name)
    folder = root / workload.name
    for i in range(workload.count):
        name = f"part-{i:05d}.bin" if workload.count > 1 else "blob.bin"
        path = folder / (f"d{i % 10}" if workload.count > 100 else "") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            left = workload.size
            while left:
                chunk = rng.randbytes(min(left, 8 * 2**20))
                f.write(chunk)
                left -= len(chunk)
    return tree_digest(folder)


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".aml-partial" not in p.name):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(8 * 2**20):
                digest.update(chunk)
    return digest.hexdigest()


def remote_total(account_url: str, ca: str, container: str, prefix: str) -> tuple[int, int]:
    """(count, bytes) of the blobs under ``prefix``, listed with aml-identity's REST client."""
    import ssl

    client = BlobRestClient(
        account_url, BearerToken(StaticCredential()), ssl_context=ssl.create_default_context(cafile=ca)
    )
    count = total = 0
    marker = None
    while True:
        items, marker = client.list_page(container, prefix, marker)
        count += len(items)
        total += sum(i.size for i in items)
        if not marker:
            client.close()
            return count, total


# --- running one client ---------------------------------------------------------------------------------------------


def run_client(config: dict[str, object], env: dict[str, str]) -> tuple[dict[str, float], str]:
    """Run one client process; return its JSON report and, on failure, its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.transfer_clients", json.dumps(config)], env=env, cwd=ROOT,
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    report = result.stdout.strip().splitlines()
    if result.returncode != 0 or not report:
        return {}, result.stderr[-2000:] or f"exit {result.returncode}"
    return json.loads(report[-1]), ""


def start_latency_proxy(upstream_port: int, delay_ms: float) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.latency_proxy", "--upstream", f"127.0.0.1:{upstream_port}",
         "--delay-ms", str(delay_ms)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    port = process.stdout.readline() if process.stdout is not None else ""
    return process, int(port)


# --- the matrix -----------------------------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> tuple[list[Measurement], dict[str, Any]]:
    """Run the matrix.

    Azurite's metadata store finds a blob by scanning every blob of the account (its indices are per field
    and the first one, the account name, matches them all), so its cost per request grows with the number of
    blobs it holds. To measure every client against the same server, each workload's downloads get an Azurite
    (in memory) holding only that workload, and every upload measurement a fresh, empty one.
    """
    workloads: tuple[Workload, ...] = QUICK if args.quick else FULL
    if args.workloads:
        workloads = tuple(w for w in workloads if w.name in args.workloads.split(","))
    clients = tuple(args.clients.split(",")) if args.clients else CLIENTS
    runs = tuple(args.runs.split(","))
    scratch_parent = SHM if os.access(SHM, os.W_OK) and not args.disk else None
    scratch = Path(tempfile.mkdtemp(prefix="aml-bench-", dir=scratch_parent))
    facts: dict[str, Any] = {"scratch": "tmpfs (/dev/shm)" if scratch_parent else "disk (tempdir)"}
    measurements: list[Measurement] = []
    tls = make_tls_material(scratch / "tls")
    ca = str(tls.bundle)
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "REQUESTS_CA_BUNDLE": ca, "SSL_CERT_FILE": ca, "PYTHONPATH": path}
    env.pop("AML_IDENTITY_BLOB_ENDPOINTS", None)

    def record(m: Measurement) -> None:
        measurements.append(m)
        status = "ok" if m.ok else f"FAILED: {(m.error.strip().splitlines() or [''])[-1]}"
        print(f"{m.run:6} {m.workload:>12} {m.op:8} {m.client:18} {m.mb_per_s:8.1f} MB/s {m.cpu_per_gib:8.2f} "
              f"CPU s/GiB {m.peak_rss_mib:6.0f} MiB  {status}", flush=True)  # fmt: skip

    try:
        for index, w in enumerate(workloads):
            source = scratch / "src"
            digest = make_source(source, w)
            with _azurite(tls, args) as azurite:
                started = time.perf_counter()
                endpoints = json.dumps({ACCOUNT: azurite.blob_endpoint()})
                with _environ(env):
                    upload(source / w.name, f"https://{ACCOUNT}.blob.core.windows.net/bench/{w.name}/",
                           credential=StaticCredential(), progress=False,
                           environ={**env, "AML_IDENTITY_BLOB_ENDPOINTS": endpoints})  # fmt: skip
                print(f"seeded {w.label} in {time.perf_counter() - started:.1f} s", flush=True)
                for run in runs if "download" in args.ops else ():
                    with _endpoint(azurite, run, args) as account_url:
                        for repeat in range(args.repeat or w.repeats):
                            for client in _rotated(clients, index + repeat):
                                record(_download(run, w, client, account_url, ca, env, scratch, digest, args))
                        if (
                            args.quick and "upload" in args.ops
                        ):  # tiny uploads: the same Azurite, a container per measurement
                            for n, client in enumerate(_rotated(clients, index + 1)):
                                container = _fresh_container(azurite, tls, f"up-{run}-{n}")
                                record(_upload(run, w, client, account_url, ca, env, source, azurite, container, args))
            for run in runs if not args.quick and "upload" in args.ops else ():
                for repeat in range(args.repeat or w.repeats):
                    for client in _rotated(clients, index + repeat + 1):
                        with _azurite(tls, args) as azurite, _endpoint(azurite, run, args) as account_url:
                            record(_upload(run, w, client, account_url, ca, env, source, azurite, "bench", args))
            shutil.rmtree(source, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return measurements, facts


def _rotated(clients: tuple[str, ...], shift: int) -> tuple[str, ...]:
    """The clients in a rotated order, so that none always runs first (or right after the seeding)."""
    shift %= len(clients)
    return clients[shift:] + clients[:shift]


@contextlib.contextmanager
def _azurite(tls: TlsMaterial, args: argparse.Namespace) -> Iterator[Azurite]:
    with Azurite(tls=tls, in_memory=not args.disk_azurite) as azurite:
        _fresh_container(azurite, tls, "bench")
        yield azurite


def _fresh_container(azurite: Azurite, tls: TlsMaterial, name: str) -> str:
    service = BlobServiceClient.from_connection_string(azurite.connection_string(), connection_verify=str(tls.bundle))
    service.create_container(name)
    return name


@contextlib.contextmanager
def _endpoint(azurite: Azurite, run: str, args: argparse.Namespace) -> Iterator[str]:
    """The account URL the clients use: Azurite itself, or the latency proxy in front of it."""
    if run != "proxy":
        yield azurite.blob_endpoint()
        return
    proxy, port = start_latency_proxy(azurite.port, args.latency_ms)
    try:
        yield f"https://127.0.0.1:{port}/{ACCOUNT}"
    finally:
        proxy.terminate()
        proxy.wait()


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _config(
    client: str, op: str, account_url: str, w: Workload, local: Path, ca: str, args: argparse.Namespace,
    container: str = "bench",
) -> dict[str, object]:  # fmt: skip
    return {"client": client, "op": op, "account_url": account_url, "container": container, "prefix": f"{w.name}/",
            "local": str(local), "concurrency": args.concurrency, "ca": ca}  # fmt: skip


def _download(
    run: str, w: Workload, client: str, account_url: str, ca: str, env: dict[str, str], scratch: Path, digest: str,
    args: argparse.Namespace,
) -> Measurement:  # fmt: skip
    local = scratch / "dest" / f"{client}-{w.name}"
    report, error = run_client(_config(client, "download", account_url, w, local, ca, args), env)
    if not error and tree_digest(local) != digest:
        error = "the downloaded files differ from the source"
    shutil.rmtree(scratch / "dest", ignore_errors=True)
    return _measurement(run, w, "download", client, report, error)


def _upload(
    run: str, w: Workload, client: str, account_url: str, ca: str, env: dict[str, str], source: Path,
    azurite: Azurite, container: str, args: argparse.Namespace,
) -> Measurement:  # fmt: skip
    report, error = run_client(_config(client, "upload", account_url, w, source / w.name, ca, args, container), env)
    if not error:
        count, total = remote_total(azurite.blob_endpoint(), ca, container, f"{w.name}/")
        if (count, total) != (w.count, w.total):
            error = f"uploaded {count} blobs / {total} bytes, expected {w.count} / {w.total}"
    return _measurement(run, w, "upload", client, report, error)


def _measurement(run: str, w: Workload, op: str, client: str, report: dict[str, float], error: str) -> Measurement:
    return Measurement(
        run, w.name, op, client, report.get("seconds", 0.0), report.get("user", 0.0) + report.get("sys", 0.0),
        report.get("peak_rss_mib", 0.0), w.total, not error, error,
    )  # fmt: skip


# --- the table ------------------------------------------------------------------------------------------------------


# The targets for aml-identity against the best peer of each cell.
SPEED_TARGET = 1.0
SPEED_TARGET_SMALL_FILES_PROXY = 1.5  # 20,000 x 4 KiB through the latency proxy
CPU_TARGET = 0.8
RSS_TARGET_MIB = 256  # the 1 GiB download


def _verdicts(
    run: str, w: Workload, op: str, ours: tuple[float, float, float, bool], best: float, leanest: float
) -> list[str]:
    mbps, cpu, rss, ok = ours
    where = f"{run}, {w.label} {op}"
    if not ok:
        return [f"- NOT MET - {where}: aml-identity failed"]
    speed_target = SPEED_TARGET_SMALL_FILES_PROXY if (run == "proxy" and w.name == "20000x4KiB") else SPEED_TARGET
    speed = "met" if mbps >= speed_target * best else "NOT MET"
    frugal = "met" if cpu <= CPU_TARGET * leanest else "NOT MET"
    out = [
        f"- {speed} - {where}: throughput {mbps / best:.2f}x the fastest peer (target >= {speed_target:.1f}x)",
        f"- {frugal} - {where}: CPU per GiB {cpu / leanest:.2f}x the leanest peer (target <= {CPU_TARGET:.1f}x)",
    ]
    if w.size >= 2**30 and op == "download":
        out.append(f"- {'met' if rss <= RSS_TARGET_MIB else 'NOT MET'} - {where}: peak RSS {rss:.0f} MiB "
                   f"(target <= {RSS_TARGET_MIB} MiB)")  # fmt: skip
    return out


def azurite_version() -> str:
    try:
        lock = json.loads((ROOT / "package-lock.json").read_text())
        return str(lock["packages"]["node_modules/azurite"]["version"])
    except (OSError, KeyError, ValueError):
        return "(version unknown)"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _invocation(run: dict[str, Any]) -> str:
    command = " ".join(["python -m bench transfer", *run["argv"]])
    started = f" from {run['started']}" if run.get("started") else ""
    note = f"; {run['note']}" if run.get("note") else ""
    return f"`{command}` (about {run['minutes']} minutes{started}{note})"


def table(measurements: list[Measurement], args: argparse.Namespace, facts: dict[str, Any]) -> str:
    workloads = QUICK if args.quick else FULL
    clients = tuple(args.clients.split(",")) if args.clients else CLIENTS
    commands = "; ".join(_invocation(run) for run in facts["invocations"])
    repeats = ", ".join(f"{w.label}: {args.repeat or w.repeats}" for w in workloads)
    lines = [
        "## Datastore transfers",
        "",
        (
            f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; "
            f"{versions('azure-storage-blob', 'azure-core', 'adlfs', 'fsspec', 'aiohttp', 'requests')}; Azurite "
            f"{azurite_version()} {'on disk' if args.disk_azurite else 'in memory'}, HTTPS with bearer tokens; local "
            f"files on {facts['scratch']}. Command: {commands}."
        ),
        "",
        (
            f"Every client runs in its own process with concurrency {args.concurrency}, against the same Azurite "
            f"with the same token. Runs per cell (median shown): {repeats}. **MB/s** = 10^6 bytes per second of "
            "the transfer call (listing included); **CPU s/GiB** = user + sys seconds of that call, all threads, per "
            "GiB moved (interpreter start and imports excluded); **peak RSS** = the process's high-water mark "
            "(imports included). Ratios compare aml-identity with the best peer: the fastest (MB/s) and the "
            "leanest (CPU)."
        ),
        "",
        (
            "Peers: **azure-storage-blob** - `download_blob(max_concurrency=N).readinto(f)` / "
            "`upload_blob(f, max_concurrency=N)` per file, files in an N-thread pool, one client whose requests "
            "session keeps N connections; **adlfs** - `fs.get(prefix, dest, recursive=True, max_concurrency=N)` / "
            "`fs.put(...)` (async, fsspec's default batch size); **plain** - a requests-based parallel ranged-GET "
            "client written for this benchmark (8 MiB ranges and blocks, `os.pwrite`, one session per thread)."
        ),
        "",
        (
            "Reading the numbers: client and Azurite share 2 cores, and Azurite (one Node.js thread) is the "
            "bottleneck of most cells - throughput differences within ~10% are run-to-run noise here, and CPU per "
            "GiB is the steadier figure. Azurite finds a blob by scanning every blob of its account (its indices "
            "are per field, and the first one, the account name, matches them all), so each request costs it time "
            "proportional to the blobs it holds: with 20,000 blobs it serves about 50 requests/s whatever the "
            "client, which caps every client at ~0.2 MB/s on 20,000 x 4 KiB. That is also why every upload "
            "measurement gets a fresh, empty Azurite, and each workload's downloads one holding only that workload."
        ),
        "",
    ]
    verdicts: list[str] = []
    for run in args.runs.split(","):
        title = (
            "Direct to Azurite" if run == "direct" else f"Through the latency proxy ({args.latency_ms:g} ms each way)"
        )
        lines += [f"### {title}", "",
                  "| workload | op | client | MB/s | CPU s/GiB | peak RSS MiB | MB/s vs best peer | CPU vs best peer |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for w in workloads:
            for op in OPS:
                cells = {}
                for client in clients:
                    ms = [m for m in measurements if (m.run, m.workload, m.op, m.client) == (run, w.name, op, client)]
                    if not ms:
                        continue
                    ok = [m for m in ms if m.ok]
                    cells[client] = (
                        _median([m.mb_per_s for m in ok]), _median([m.cpu_per_gib for m in ok]),
                        _median([m.peak_rss_mib for m in ms]), len(ok) == len(ms),
                    )  # fmt: skip
                peers = [c for name, c in cells.items() if name != "aml-identity" and c[3]]
                best = max((c[0] for c in peers), default=0.0)
                leanest = min((c[1] for c in peers), default=0.0)
                if "aml-identity" in cells and best:
                    verdicts += _verdicts(run, w, op, cells["aml-identity"], best, leanest)
                for client, (mbps, cpu, rss, all_ok) in cells.items():
                    ours = client == "aml-identity" and all_ok
                    speed = f"{mbps / best:.2f}x" if ours and best else ""
                    frugal = f"{cpu / leanest:.2f}x" if ours and leanest else ""
                    shown = f"{mbps:.1f}" if all_ok else "failed"
                    name = f"**{client}**" if client == "aml-identity" else client
                    lines.append(
                        f"| {w.label} | {op} | {name} | {shown} | {cpu:.2f} | {rss:.0f} | {speed} | {frugal} |"
                    )
        lines.append("")
    if verdicts:
        lines += ["### Targets (from the issue), checked against the medians above", "", *verdicts, ""]
    failures = [m for m in measurements if not m.ok]
    if failures:
        lines += ["Failures:", ""]
        lines += [f"- {m.run} {m.workload} {m.op} {m.client}: `{(m.error.strip().splitlines() or [''])[-1][:200]}`"
                  for m in failures]  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench transfer", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny sizes")
    parser.add_argument("--runs", default="direct,proxy", help="direct, proxy or both (default)")
    parser.add_argument("--clients", default="", help=f"comma-separated subset of {','.join(CLIENTS)}")
    parser.add_argument("--workloads", default="", help="comma-separated subset of workload names")
    parser.add_argument("--ops", default="download,upload", help="download, upload or both (default)")
    parser.add_argument("--concurrency", type=int, default=32, help="parallel requests per client (default 32)")
    parser.add_argument("--repeat", type=int, default=0, help="runs per cell (default: per workload, 3/3/1)")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="one-way delay of the proxy run")
    parser.add_argument("--disk-azurite", action="store_true", help="Azurite on disk instead of in memory")
    parser.add_argument("--disk", action="store_true", help="local files on disk instead of /dev/shm")
    parser.add_argument("--output", type=Path, default=PERFORMANCE_MD, help="markdown file to update")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement as JSON here")
    parser.add_argument(
        "--from-json",
        type=Path,
        action="append",
        default=[],
        help="only write the table, from --json files (repeatable: their cells are combined, each run listed)",
    )
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    if args.from_json:
        measurements, invocations = [], []
        for path in args.from_json:
            saved = json.loads(path.read_text())
            invocations.append(saved["facts"])
            measurements += [Measurement(**m) for m in saved["measurements"]]
        facts: dict[str, Any] = {"scratch": invocations[0]["scratch"], "invocations": invocations}
    else:
        started = time.monotonic()
        began = time.strftime("%H:%M UTC", time.gmtime())
        measurements, facts = benchmark(args)
        facts.update(minutes=f"{(time.monotonic() - started) / 60:.0f}", argv=args.argv, started=began)
        facts["invocations"] = [dict(facts)]
    if args.json:
        args.json.write_text(json.dumps({"facts": facts, "measurements": [m.__dict__ for m in measurements]}, indent=1))
    update_section("transfer", table(measurements, args, facts), args.output)
    print(f"wrote {args.output}")
    return 0 if all(m.ok for m in measurements) else 1


if __name__ == "__main__":
    raise SystemExit(main())
