"""Mount: sequential read through ``aml_identity.datastore.mount`` against ``download()`` and ``rclone mount``.

One blob on one Azurite (HTTPS), read start to end with 1 MiB reads through each mount, cold (a fresh mount,
no cache) and, for our mount, warm (read again through the same mount: the block cache); ``download()`` of the
same blob to a local file is the no-mount baseline. Reported: MB/s (10^6 bytes per second of wall time) and CPU
seconds per GiB, counting every process involved - the reader plus the mount process (``/proc/<pid>/stat``
before and after the read), or the downloading process.

rclone (Debian's ``rclone``, if installed) reads the container through a SAS URL, since it cannot use the
emulator's bearer tokens; ``--vfs-cache-mode off`` is its streaming mode, the one comparable to ours.

Run: ``python -m bench mount`` (``--quick`` for a smoke run, ``--output FILE`` to write elsewhere). Writes the
"Mount" section of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from aml_identity.datastore import download, mount
from aml_identity.testing.azurite import DEVSTORE_ACCOUNT, Azurite
from aml_identity.testing.identity_endpoint import IdentityEndpoint
from bench._report import PERFORMANCE_MD, machine, update_section, versions

ROOT = Path(__file__).resolve().parents[1]
CONTAINER = "bench-mount"
BLOB = "data/blob.bin"
READ_SIZE = 1 << 20
GIB = 1 << 30
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _read_file(path: Path) -> int:
    buffer = bytearray(READ_SIZE)
    total = 0
    with path.open("rb", buffering=0) as f:
        while count := f.readinto(buffer):
            total += count
    return total


def _measure(run: Callable[[], int], helper_pid: int | None) -> tuple[float, float, int]:
    """Run ``run``; return (wall seconds, CPU seconds of this process and the helper process, bytes)."""
    helper_before = _cpu_of(helper_pid) if helper_pid else 0.0
    own_before, started = _own_cpu(), time.perf_counter()
    size = run()
    wall = time.perf_counter() - started
    cpu = _own_cpu() - own_before + ((_cpu_of(helper_pid) - helper_before) if helper_pid else 0.0)
    return wall, cpu, size


def _environ(azurite: Azurite, endpoint: IdentityEndpoint, cache: Path) -> dict[str, str]:
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("MSI_", "IDENTITY_", "AZURE_", "DEFAULT_IDENTITY"))
    }
    environ.update(endpoint.azureml_environ())
    environ.update(azurite.tls.environ())
    environ.update(
        AML_IDENTITY_BLOB_ENDPOINTS=json.dumps({DEVSTORE_ACCOUNT: azurite.blob_endpoint()}),
        AML_IDENTITY_CACHE_DIR=str(cache),
        AML_IDENTITY_LOOPBACK_ONLY="1",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    return environ


def _rclone(azurite: Azurite, mount_point: Path, ready: Path) -> subprocess.Popen[bytes]:
    key = azurite.accounts[DEVSTORE_ACCOUNT]
    sas = generate_container_sas(
        DEVSTORE_ACCOUNT, CONTAINER, account_key=key,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=2),
    )  # fmt: skip
    environ = dict(os.environ)
    environ.update(
        RCLONE_CONFIG_AZ_TYPE="azureblob", RCLONE_CONFIG_AZ_SAS_URL=f"{azurite.blob_endpoint()}/{CONTAINER}?{sas}"
    )
    process = subprocess.Popen(
        ["rclone", "mount", f"az:{CONTAINER}/data", str(mount_point), "--read-only", "--vfs-cache-mode", "off",
         "--ca-cert", str(azurite.tls.cert), "--config", "/dev/null"],
        env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(600):  # wait for the mount (rclone prints nothing when ready)
        if ready.exists():
            return process
        if process.poll() is not None:
            raise RuntimeError(f"rclone mount exited with {process.returncode}")
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("rclone mount did not come up")


def run(size_mib: int, runs: int) -> list[tuple[str, float, float]]:
    """Return (peer, median MB/s, median CPU s/GiB) per peer."""
    results: dict[str, list[tuple[float, float]]] = {}

    def record(peer: str, wall: float, cpu: float, size: int) -> None:
        results.setdefault(peer, []).append((size / wall / 1e6, cpu / (size / GIB)))
        print(f"{peer:28} {size / wall / 1e6:8.1f} MB/s  {cpu / (size / GIB):6.2f} CPU s/GiB")

    with (
        tempfile.TemporaryDirectory(prefix="aml-bench-mount-") as scratch,
        Azurite(workdir=Path(scratch) / "azurite", in_memory=True) as azurite,
        IdentityEndpoint() as endpoint,
    ):
        service = BlobServiceClient.from_connection_string(
            azurite.connection_string(), connection_verify=str(azurite.tls.cert)
        )
        container = service.get_container_client(CONTAINER)
        container.create_container()
        container.upload_blob(BLOB, os.urandom(size_mib << 20), max_concurrency=4)
        environ = _environ(azurite, endpoint, Path(scratch) / "tokens")
        uri = f"https://{DEVSTORE_ACCOUNT}.blob.core.windows.net/{CONTAINER}/data/"
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
        try:
            for _ in range(runs):
                with mount(uri) as m:
                    record("aml-identity mount, cold", *_measure(lambda m=m: _read_file(m.path / "blob.bin"), m.pid))
                    record("aml-identity mount, warm", *_measure(lambda m=m: _read_file(m.path / "blob.bin"), m.pid))
                target = Path(scratch) / "download"
                shutil.rmtree(target, ignore_errors=True)
                fetch = lambda t=target: download(uri + "blob.bin", t / "blob.bin", progress=False).bytes_transferred  # noqa: E731
                record("aml-identity download()", *_measure(fetch, None))
                if shutil.which("rclone"):
                    point = Path(scratch) / "rclone"
                    point.mkdir(exist_ok=True)
                    process = _rclone(azurite, point, point / "blob.bin")
                    try:
                        record(
                            "rclone mount (vfs off)", *_measure(lambda p=point: _read_file(p / "blob.bin"), process.pid)
                        )
                    finally:
                        subprocess.run(["fusermount3", "-u", str(point)], check=False)
                        process.wait(timeout=30)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return [
        (peer, statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
        for peer, rows in results.items()
    ]


def _rclone_version() -> str:
    if not shutil.which("rclone"):
        return "rclone not installed"
    done = subprocess.run(["rclone", "version"], capture_output=True, text=True, check=False)
    return done.stdout.splitlines()[0] if done.stdout else "rclone (version unknown)"


def _table(rows: list[tuple[str, float, float]], size_mib: int, runs: int) -> str:
    lines = [
        "## Mount",
        "",
        (
            f"Sequential read of one {size_mib} MiB blob (1 MiB reads), Azurite in memory over HTTPS, median of "
            f"{runs} runs. CPU counts the reader and the mount process (or the downloading process)."
        ),
        "",
        "| peer | MB/s | CPU s/GiB |",
        "|---|---|---|",
        *(f"| {peer} | {rate:.0f} | {cpu:.2f} |" for peer, rate, cpu in rows),
        "",
        (
            f"Measured on {machine()}; {versions('aml-identity', 'mfusepy', 'azure-storage-blob')}, "
            f"{_rclone_version()}. Re-run: `python -m bench mount`."
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the mount benchmark and write its table."""
    parser = argparse.ArgumentParser(prog="python -m bench mount", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: a small blob, one run")
    parser.add_argument("--size-mib", type=int, default=None, help="blob size in MiB (default 512)")
    parser.add_argument("--runs", type=int, default=None, help="runs per peer (default 3)")
    parser.add_argument("--output", type=Path, default=PERFORMANCE_MD, help="markdown file to update")
    args = parser.parse_args(argv)
    size = args.size_mib or (64 if args.quick else 512)
    runs = args.runs or (1 if args.quick else 3)
    rows = run(size, runs)
    update_section("mount", _table(rows, size, runs), args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
