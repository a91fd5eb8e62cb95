"""Soak: many processes read for a long time with 30-second tokens while the identity endpoint and storage misbehave.

One Azurite (in memory, HTTPS) behind a :class:`~aml_identity.testing.StorageAuthProxy`, one identity endpoint
emulator minting tokens that live ``--lifetime`` seconds (30 by default), one FUSE mount of the data set
(``aml_identity.datastore.mount``, listings trusted for 1 s so it keeps asking storage), and ``--processes``
reader processes (8). Each reader (``bench/soak_worker.py``) reads random blobs alternately through the
azure-storage-blob SDK client with ``aml_identity.default_credential()`` and through the mount, and checks every
byte. Every ``--fault-every`` seconds (3) a fault is injected, alternately into storage through the proxy (503
ServerBusy, a TCP reset, a response cut off half-way, a 500 with ``Retry-After``) and into the identity endpoint
(503, 429 with ``Retry-After``, a reset, 500, a 3 s hang, 404); a fault is queued only once the previous one of its
kind was met, so faults never pile up on one request.

The goal: zero failed operations, and about one token request per refresh interval for the whole node (the node
cache shares each token among the processes), so each process uses about one new token per interval.

Run: ``python -m bench soak --minutes 30`` (``--minutes 1`` is the version ``make test`` runs). Writes the
"Soak" section of ``docs/reliability.md`` (``--output FILE`` to write elsewhere, ``--json FILE`` for the counts).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from azure.storage.blob import BlobServiceClient

from aml_identity.datastore import mount
from aml_identity.testing import Azurite, Fault, IdentityEndpoint, StorageAuthProxy, StorageFault
from aml_identity.testing.azurite import DEVSTORE_ACCOUNT
from bench._jobenv import ROOT, job_environ
from bench._report import machine, update_section, versions
from bench.reliability import RELIABILITY_MD, ensure_page

CONTAINER = "soak"
PREFIX = "data/"
# The data set: small enough to seed in a second, varied enough that reads are not all one size.
BLOB_SIZES = (4 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024)
BLOBS_PER_SIZE = 12
# Listings and attributes trusted for 1 s: the mount keeps sending storage requests with its token.
MOUNT_ATTR_TIMEOUT_S = 1.0
# A 30 s token (the emulator's lifetime) refreshes at half its life (aml_identity._tokens' short-token rule).
REFRESH_FRACTION = 0.5

STORAGE_FAULTS = (
    StorageFault.status(503),
    StorageFault.reset(),
    StorageFault.cut(action="read"),
    StorageFault.status(500, retry_after=1),
)
IDENTITY_FAULTS = (
    Fault.status(503),
    Fault.status(429, retry_after=1),
    Fault.reset(),
    Fault.status(500),
    Fault.hang(3.0),
    Fault.status(404),
)


def _seed(azurite: Azurite, manifest: Path) -> None:
    service = BlobServiceClient.from_connection_string(
        azurite.connection_string(), connection_verify=str(azurite.tls.cert)
    )
    container = service.get_container_client(CONTAINER)
    container.create_container()
    digests = {}
    for size in BLOB_SIZES:
        for i in range(BLOBS_PER_SIZE):
            name = f"s{size // 1024:04d}k-{i:02d}.bin"
            data = os.urandom(size)
            container.upload_blob(PREFIX + name, data)
            digests[name] = hashlib.sha256(data).hexdigest()
    manifest.write_text(json.dumps(digests))


class _Injector(threading.Thread):
    """Injects one fault every ``every`` seconds, alternately into storage and the identity endpoint."""

    def __init__(self, proxy: StorageAuthProxy, endpoint: IdentityEndpoint, every: float, until: float) -> None:
        super().__init__(name="soak-faults", daemon=True)
        self.proxy, self.endpoint, self.every = proxy, endpoint, every
        self.until = until  # the readers' deadline: reads still in flight then would get every later fault
        self.stop = threading.Event()
        self.storage_injected: Counter[str] = Counter()
        self.identity_injected: Counter[str] = Counter()
        self._identity_total = 0

    def run(self) -> None:
        turn = 0
        while not self.stop.wait(self.every) and time.time() < self.until:
            if turn % 2 == 0:
                if not self.proxy.faults_pending:  # the last one was met: queue the next
                    storage_fault = STORAGE_FAULTS[(turn // 2) % len(STORAGE_FAULTS)]
                    self.proxy.inject(storage_fault)
                    self.storage_injected[_storage_label(storage_fault)] += 1
            else:
                met = sum(1 for r in self.endpoint.requests if r.fault is not None or r.status not in (200, None))
                if met >= self._identity_total:  # the last one was met: queue the next
                    fault = IDENTITY_FAULTS[(turn // 2) % len(IDENTITY_FAULTS)]
                    self.endpoint.inject(fault)
                    self._identity_total += 1
                    self.identity_injected[_identity_label(fault)] += 1
            turn += 1


def _storage_label(fault: StorageFault) -> str:
    if fault.kind == "status":
        return f"{fault.code}" + (" + Retry-After" if fault.retry_after is not None else "")
    return {"reset": "TCP reset", "cut": "body cut half-way"}[fault.kind]


def _identity_label(fault: Fault) -> str:
    if fault.kind == "status":
        return f"{fault.code}" + (" + Retry-After" if fault.retry_after is not None else "")
    return {"reset": "TCP reset", "hang": "3 s hang"}.get(fault.kind, fault.kind)


def _fail(readers: list[subprocess.Popen[str]], workdir: Path, index: int) -> None:
    for reader in readers:
        if reader.poll() is None:
            reader.kill()
    log = (workdir / f"reader-{index}.log").read_text(errors="replace")[-3000:]
    msg = f"soak reader {index} failed (exit {readers[index].wait()}):\n{log}"
    raise RuntimeError(msg)


@contextlib.contextmanager
def _stack(workdir: Path, lifetime: int) -> Iterator[tuple[Azurite, IdentityEndpoint, StorageAuthProxy]]:
    with (
        Azurite(workdir=workdir / "azurite", in_memory=True) as azurite,
        IdentityEndpoint(token_lifetime=lifetime) as endpoint,
        StorageAuthProxy(
            f"https://127.0.0.1:{azurite.port}", authorizer=lambda *_, **__: True, tls=azurite.tls
        ) as proxy,
    ):
        yield azurite, endpoint, proxy


def run(minutes: float, processes: int, lifetime: int, fault_every: float, rate: float) -> dict[str, Any]:
    """Run the soak and return its counts."""
    with tempfile.TemporaryDirectory(prefix="aml-soak-") as tmp, _stack(Path(tmp), lifetime) as stack:
        azurite, endpoint, proxy = stack
        workdir = Path(tmp)
        manifest = workdir / "manifest.json"
        _seed(azurite, manifest)
        environ = job_environ(azurite, endpoint, proxy.blob_endpoint(), workdir / "token-cache")
        uri = f"https://{DEVSTORE_ACCOUNT}.blob.core.windows.net/{CONTAINER}/{PREFIX}"
        with mount(uri, workdir / "mnt", attr_timeout=MOUNT_ATTR_TIMEOUT_S, environ=environ) as mounted:
            start_read, start_write = os.pipe()
            config = {
                "endpoint": proxy.blob_endpoint(), "ca": str(azurite.tls.cert), "container": CONTAINER,
                "prefix": PREFIX, "mount": str(mounted.path), "manifest": str(manifest), "rate": rate,
                "seconds": minutes * 60, "start_fd": start_read,
            }  # fmt: skip
            logs = [(workdir / f"reader-{i}.log").open("w") for i in range(processes)]
            readers = [
                subprocess.Popen(
                    [sys.executable, "-m", "bench.soak_worker", json.dumps({**config, "index": i})],
                    env=environ,
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=logs[i],
                    text=True,
                    pass_fds=(start_read,),
                )
                for i in range(processes)
            ]
            os.close(start_read)
            for i, reader in enumerate(readers):
                assert reader.stdout is not None  # noqa: S101 - we asked for a pipe
                if reader.stdout.readline().strip() != "ready":
                    _fail(readers, workdir, i)
            endpoint.reset_requests()
            proxy.clear()
            injector = _Injector(proxy, endpoint, fault_every, until=time.time() + minutes * 60)
            injector.start()
            os.close(start_write)  # go
            outputs = [reader.communicate()[0] for reader in readers]
            injector.stop.set()
            injector.join()
            for log in logs:
                log.close()
        workers = []
        for i, (out, reader) in enumerate(zip(outputs, readers, strict=True)):
            lines = out.strip().splitlines()
            if reader.returncode != 0 or not lines:
                _fail(readers, workdir, i)
            workers.append(json.loads(lines[-1]))
        token_requests = endpoint.requests
        storage_requests = proxy.requests
        return {
            "minutes": minutes,
            "elapsed_s": max(w["seconds"] for w in workers),
            "processes": processes,
            "token_lifetime_s": lifetime,
            "refresh_interval_s": lifetime * REFRESH_FRACTION,
            "fault_every_s": fault_every,
            "rate_per_process": rate,
            "workers": workers,
            "sdk_ok": sum(w["sdk_ok"] for w in workers),
            "sdk_failed": sum(w["sdk_failed"] for w in workers),
            "mount_ok": sum(w["mount_ok"] for w in workers),
            "mount_failed": sum(w["mount_failed"] for w in workers),
            "bytes_verified": sum(w["bytes_verified"] for w in workers),
            "errors": [e for w in workers for e in w["errors"]],
            "token_requests": len(token_requests),
            "tokens_issued": sum(1 for r in token_requests if r.status == 200 and r.fault is None),
            "token_requests_faulted": sum(1 for r in token_requests if r.fault is not None or r.status != 200),
            "identity_faults": dict(injector.identity_injected),
            "storage_faults": dict(injector.storage_injected),
            "storage_faults_met": {str(k): v for k, v in proxy.faults_acted.items()},
            "storage_requests": len(storage_requests),
            "storage_403": sum(1 for r in storage_requests if r.status == 403),
            "least_left_s": min(w["least_left_s"] for w in workers),
            "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load": os.getloadavg(),
        }


def _spread(values: list[int]) -> str:
    return f"{min(values)}-{max(values)}" if min(values) != max(values) else str(values[0])


def markdown(result: dict[str, Any]) -> str:
    """Render the soak's counts as the "Soak" section."""
    workers = result["workers"]
    intervals = result["elapsed_s"] / result["refresh_interval_s"]
    faults = ", ".join(f"{k} x{v}" for k, v in sorted(result["identity_faults"].items()))
    storage = ", ".join(f"{k} x{v}" for k, v in sorted(result["storage_faults"].items()))
    load = ", ".join(f"{x:.1f}" for x in result["load"])
    intro = (
        f"`python -m bench soak --minutes {result['minutes']:g}`: {result['processes']} processes read random blobs "
        "(4 KiB-1 MiB, each one checked against its SHA-256) through the SDK and through one FUSE mount, "
        f"{result['rate_per_process']:g} reads of each kind per second per process, while a fault is injected "
        f"every {result['fault_every_s']:g} s, alternately into storage (through the StorageAuthProxy) and into "
        f"the identity endpoint. Tokens live {result['token_lifetime_s']} s, so every process goes through many "
        "refreshes, advisory and mandatory windows."
    )
    run_line = (
        f"{result['elapsed_s'] / 60:.1f} min, {result['processes']} reader processes + 1 mount process, "
        f"{result['token_lifetime_s']} s tokens (refreshed every {result['refresh_interval_s']:g} s)"
    )
    token_line = (
        f"{result['token_requests']} ({result['tokens_issued']} answered with a token, "
        f"{result['token_requests_faulted']} faulted) over {intervals:.0f} refresh intervals"
    )
    met = sum(result["storage_faults_met"].values())
    rows = [
        ("Run", run_line),
        ("SDK reads (azure-storage-blob + `default_credential()`)",
         f"{result['sdk_ok']:,} verified, **{result['sdk_failed']} failed**"),
        ("Mount reads (`aml_identity.datastore.mount`)",
         f"{result['mount_ok']:,} verified, **{result['mount_failed']} failed**"),
        ("Bytes read and verified", f"{result['bytes_verified'] / 1e6:,.0f} MB"),
        ("Storage requests through the proxy", f"{result['storage_requests']:,} (403: {result['storage_403']})"),
        ("Storage faults injected", f"{storage or 'none'} ({met} met)"),
        ("Identity-endpoint faults injected", faults or "none"),
        ("Token requests to the identity endpoint (whole node)", token_line),
        ("New tokens used per reader process",
         f"{_spread([w['tokens_used'] for w in workers])} (refresh intervals: {intervals:.0f})"),
        ("Token fetches per reader process (the rest from the node cache)", _spread([w["fetches"] for w in workers])),
        ("SDK calls to `get_token_info` per reader process", _spread([w["token_calls"] for w in workers])),
        ("Least life left on a token handed to the SDK", f"{result['least_left_s']:.1f} s"),
    ]  # fmt: skip
    lines = [
        "## Soak",
        "",
        intro,
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]
    if result["errors"]:
        lines += ["First errors:", "", "```text", *result["errors"][:10], "```", ""]
    lines.append(
        f"Measured {result['when']} on {machine()} (load average {load}: the machine was shared); "
        f"{versions('azure-core', 'azure-storage-blob', 'msal')}."
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Run the soak and write its section."""
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the readers read (default 30)")
    parser.add_argument("--processes", type=int, default=8, help="reader processes (default 8)")
    parser.add_argument("--lifetime", type=int, default=30, help="token lifetime in seconds (default 30)")
    parser.add_argument("--fault-every", type=float, default=3.0, help="seconds between faults (default 3)")
    parser.add_argument("--rate", type=float, default=8.0, help="reads of each kind per second per process")
    parser.add_argument("--output", type=Path, default=RELIABILITY_MD, help="the page to write the section into")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args(argv)
    result = run(args.minutes, args.processes, args.lifetime, args.fault_every, args.rate)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    ensure_page(args.output)
    update_section("soak", markdown(result), path=args.output)
    print(markdown(result))
    return 1 if result["sdk_failed"] or result["mount_failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
