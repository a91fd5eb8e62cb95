"""Storage faults: what ``download``, ``upload`` and ``upload_on_exit`` do when storage or the process fails.

Each scenario runs the library as a job would (the job's identity from the identity endpoint emulator, Azurite
on disk over HTTPS, for the injected faults a :class:`~aml_identity.testing.StorageAuthProxy` in front of it),
makes one thing go wrong in the middle of a transfer, and then checks every byte against the source:

- Azurite is killed (``SIGKILL``, a crash; ``SIGTERM``, a clean stop) a third of the way through a download, and
  through an upload, then started again on the same port with the same data folder: does the transfer complete in
  the same call (its retries), or on a re-run (resuming), and do the bytes verify?
- The proxy answers ``503 ServerBusy`` (with ``Retry-After``), resets TCP connections, or cuts responses off
  half-way, three times during a download or an upload.
- The downloading process is killed (``SIGKILL``) half-way: is any incomplete file left at a final path, and does
  a re-run complete it?
- A job using ``upload_on_exit`` is preempted (``SIGTERM``): is every file it had closed uploaded, and the one
  still open left out?

Run: ``python -m bench storage-faults`` (``--output FILE``, ``--json FILE``). Writes the "Storage faults" section
of ``docs/reliability.md``; ``tests/datastore/test_storage_faults.py`` runs the same scenarios and fails when an
outcome changes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from azure.storage.blob import BlobServiceClient, ContainerClient

from aml_identity.datastore import TransferResult, download, upload
from aml_identity.testing import Azurite, IdentityEndpoint, StorageAuthProxy, StorageFault
from aml_identity.testing.azurite import DEVSTORE_ACCOUNT
from bench._report import machine, update_section, versions
from bench.reliability import RELIABILITY_MD, ensure_page

ROOT = Path(__file__).resolve().parents[1]
CONTAINER = "faults"
MIB = 1024 * 1024
# A blob big enough to be fetched in several 8 MiB ranges (uploaded in several 8 MiB blocks), plus small files.
BIG_BYTES = 40 * MIB + 12345
SMALL_FILES = 24
SMALL_BYTES = 64 * 1024
# Where in a transfer the fault strikes: a third of the way through.
KILL_AT_FRACTION = 1 / 3
# Injected proxy faults per scenario.
FAULTS_PER_SCENARIO = 3

OK_SAME_CALL = "completed in the same call, bytes verified"
OK_RERUN = "completed on a re-run, bytes verified"


@dataclass
class Row:
    """One scenario's outcome.

    Attributes:
        scenario: What was done.
        fault: What went wrong, and when.
        outcome: How it ended (one of the ``OK_*`` strings when all is well).
        detail: What the library did about it (retries met, bytes resumed, files left).
        seconds: Wall time of the scenario's transfers.
    """

    scenario: str
    fault: str
    outcome: str
    detail: str
    seconds: float


def _files(seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {"big.bin": rng.randbytes(BIG_BYTES)}
    files.update({f"small/{i:03d}.bin": rng.randbytes(SMALL_BYTES + i) for i in range(SMALL_FILES)})
    return files


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".aml-" not in p.name
    }


def _digest(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


class Stage:
    """Azurite on disk, the identity endpoint and a proxy, and the job environment pointing at either."""

    def __init__(self, azurite: Azurite, endpoint: IdentityEndpoint, proxy: StorageAuthProxy, workdir: Path) -> None:
        """Use running emulators; ``workdir`` holds the local files."""
        self.azurite, self.endpoint, self.proxy, self.workdir = azurite, endpoint, proxy, workdir
        service = BlobServiceClient.from_connection_string(
            azurite.connection_string(), connection_verify=str(azurite.tls.cert)
        )
        self.container: ContainerClient = service.get_container_client(CONTAINER)
        self.container.create_container()
        self.base = {k: v for k, v in os.environ.items() if not k.startswith(("MSI_", "IDENTITY_", "AZURE_"))}
        self.base.update(endpoint.azureml_environ())
        self.base.update(azurite.tls.environ())
        self.base.update(
            AML_IDENTITY_CACHE_DIR=str(workdir / "token-cache"),
            AML_IDENTITY_LOOPBACK_ONLY="1",
            PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        self._count = 0

    def environ(self, *, through_proxy: bool) -> dict[str, str]:
        """The job environment, with the account's endpoint at the proxy or straight at Azurite."""
        endpoint = self.proxy.blob_endpoint() if through_proxy else self.azurite.blob_endpoint()
        return {**self.base, "AML_IDENTITY_BLOB_ENDPOINTS": json.dumps({DEVSTORE_ACCOUNT: endpoint})}

    def uri(self, prefix: str) -> str:
        """The production-form URI of ``prefix`` in the container."""
        return f"https://{DEVSTORE_ACCOUNT}.blob.core.windows.net/{CONTAINER}/{prefix}"

    def fresh(self, name: str) -> Path:
        """A new empty local folder."""
        self._count += 1
        path = self.workdir / f"{self._count:02d}-{name}"
        path.mkdir(parents=True)
        return path

    def seed(self, prefix: str, files: dict[str, bytes]) -> None:
        """Upload ``files`` under ``prefix`` with the shared key, then stop Azurite gracefully so they are on disk."""
        for name, data in files.items():
            self.container.upload_blob(prefix + name, data, overwrite=True, max_concurrency=4)
        self.azurite.restart()  # Azurite saves its blob index on a graceful stop (and only every few seconds)

    def stored(self, prefix: str) -> dict[str, bytes]:
        """Every blob under ``prefix`` (name relative to it -> content)."""
        return {
            b.name[len(prefix) :]: self.container.download_blob(b.name).readall()
            for b in self.container.list_blobs(name_starts_with=prefix)
        }


class _RestagedBlocks(logging.Handler):
    """Counts the upload's "staged blocks lost, sending them again" warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "sending them again" in record.getMessage():
            self.count += 1

    def __enter__(self) -> _RestagedBlocks:
        logging.getLogger("aml_identity.datastore._upload").addHandler(self)
        return self

    def __exit__(self, *_: object) -> None:
        logging.getLogger("aml_identity.datastore._upload").removeHandler(self)


class _KillAzurite:
    """A progress callback that kills Azurite once a fraction of the bytes is done, and restarts it."""

    def __init__(self, azurite: Azurite, fraction: float, sig: signal.Signals) -> None:
        self.azurite, self.fraction, self.sig = azurite, fraction, sig
        self.fired = threading.Event()
        self.restarted = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            if self.fired.is_set() or not total or done < total * self.fraction:
                return
            self.fired.set()
            self.azurite.kill(self.sig)
        threading.Thread(target=self._start, daemon=True).start()

    def _start(self) -> None:
        self.azurite.start()
        self.restarted.set()


def _attempt(transfer: Callable[[], TransferResult]) -> tuple[TransferResult | None, str | None]:
    try:
        return transfer(), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def _ended(first_error: str | None, *, verified: bool) -> str:
    if not verified:
        return "FAILED: bytes differ" if first_error is None else f"FAILED: {first_error}"
    return OK_SAME_CALL if first_error is None else OK_RERUN


def _killed(sig: signal.Signals) -> str:
    how = "SIGKILL: a crash" if sig == signal.SIGKILL else "SIGTERM: a clean stop"
    return f"Azurite killed ({how}) at 1/3, restarted"


def azurite_killed_during_download(stage: Stage, sig: signal.Signals) -> Row:
    """Kill Azurite a third of the way through a download and start it again."""
    files = _files(1)
    prefix = f"killed-az-dl-{sig.name}/"
    stage.seed(prefix, files)
    dest = stage.fresh(prefix.rstrip("/"))
    killer = _KillAzurite(stage.azurite, KILL_AT_FRACTION, sig)
    env = stage.environ(through_proxy=False)
    started = time.monotonic()
    result, error = _attempt(lambda: download(stage.uri(prefix), dest, progress=killer, environ=env))
    killer.restarted.wait(120)
    if error is not None:
        result, _ = _attempt(lambda: download(stage.uri(prefix), dest, progress=False, environ=env))
    verified = _tree(dest) == files
    resumed = f", {result.bytes_resumed / MIB:.0f} MiB resumed" if result and result.bytes_resumed else ""
    detail = (f"first call: {error}" if error else "storage retries rode out the restart") + resumed
    return Row(
        "download 40 MiB + 24 small files",
        _killed(sig),
        _ended(error, verified=verified) if killer.fired.is_set() else "FAILED: the fault never struck",
        detail,
        time.monotonic() - started,
    )


def azurite_killed_during_upload(stage: Stage, sig: signal.Signals) -> Row:
    """Kill Azurite a third of the way through an upload and start it again."""
    files = _files(2)
    prefix = f"killed-az-ul-{sig.name}/"
    src = stage.fresh(prefix.rstrip("/"))
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    killer = _KillAzurite(stage.azurite, KILL_AT_FRACTION, sig)
    env = stage.environ(through_proxy=False)
    started = time.monotonic()
    with _RestagedBlocks() as restaged:
        _, error = _attempt(lambda: upload(src, stage.uri(prefix), progress=killer, environ=env))
    killer.restarted.wait(120)
    detail = f"first call: {error}" if error else "storage retries rode out the restart"
    if restaged.count:
        detail += f"; {restaged.count} blob(s) whose staged blocks were lost staged again"
    stored = stage.stored(prefix)
    lost = [name for name, data in files.items() if stored.get(name) != data]
    if error is None and lost:
        # Azurite lost writes it had acknowledged in its last seconds (it saves its index every few seconds):
        # a re-run finds them missing and sends them again.
        error = "Azurite lost acknowledged writes in the crash"
        detail += f"; but the crash lost {len(lost)} blobs Azurite had acknowledged, which the re-run sent again"
    if error is not None:
        _attempt(lambda: upload(src, stage.uri(prefix), progress=False, environ=env))
    verified = stage.stored(prefix) == files
    return Row(
        "upload 40 MiB + 24 small files",
        _killed(sig),
        _ended(error, verified=verified) if killer.fired.is_set() else "FAILED: the fault never struck",
        detail,
        time.monotonic() - started,
    )


def _label(fault: StorageFault) -> str:
    if fault.kind == "status":
        return f"{fault.code} ServerBusy" + (f" (Retry-After: {fault.retry_after})" if fault.retry_after else "")
    return {"reset": "TCP reset", "cut": "response cut off half-way"}[fault.kind]


def proxy_faults_during_download(stage: Stage, fault: StorageFault) -> Row:
    """Download through the proxy while it acts out ``fault`` three times."""
    files = _files(3)
    prefix = f"proxy-dl-{fault.kind}/"
    stage.seed(prefix, files)
    dest = stage.fresh(f"proxy-dl-{fault.kind}")
    stage.proxy.clear()
    stage.proxy.inject(*[fault] * FAULTS_PER_SCENARIO)
    started = time.monotonic()
    result, error = _attempt(
        lambda: download(stage.uri(prefix), dest, progress=False, environ=stage.environ(through_proxy=True))
    )
    met = sum(stage.proxy.faults_acted.values())
    if error is not None:
        _attempt(lambda: download(stage.uri(prefix), dest, progress=False, environ=stage.environ(through_proxy=True)))
    requests = result.requests if result else len(stage.proxy.requests)
    return Row(
        "download 40 MiB + 24 small files",
        f"{_label(fault)} x{FAULTS_PER_SCENARIO}",
        _ended(error, verified=_tree(dest) == files) if met == FAULTS_PER_SCENARIO else f"FAILED: {met} faults met",
        f"{met} faults met and retried; {requests} requests",
        time.monotonic() - started,
    )


def proxy_faults_during_upload(stage: Stage, fault: StorageFault) -> Row:
    """Upload through the proxy while it acts out ``fault`` three times."""
    files = _files(4)
    prefix = f"proxy-ul-{fault.kind}/"
    src = stage.fresh(f"proxy-ul-{fault.kind}")
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    stage.proxy.clear()
    stage.proxy.inject(*[fault] * FAULTS_PER_SCENARIO)
    started = time.monotonic()
    result, error = _attempt(
        lambda: upload(src, stage.uri(prefix), progress=False, environ=stage.environ(through_proxy=True))
    )
    met = sum(stage.proxy.faults_acted.values())
    if error is not None:
        _attempt(lambda: upload(src, stage.uri(prefix), progress=False, environ=stage.environ(through_proxy=True)))
    requests = result.requests if result else len(stage.proxy.requests)
    return Row(
        "upload 40 MiB + 24 small files",
        f"{_label(fault)} x{FAULTS_PER_SCENARIO} (on writes)",
        _ended(error, verified=stage.stored(prefix) == files)
        if met == FAULTS_PER_SCENARIO
        else f"FAILED: {met} faults met",
        f"{met} faults met and retried; {requests} requests",
        time.monotonic() - started,
    )


# The downloading process kills itself (SIGKILL: no cleanup of any kind) from its progress callback half-way.
_DOWNLOADER = textwrap.dedent(
    """
    import os, signal, sys
    from aml_identity.datastore import download

    def progress(done, total):
        if total and done >= total // 2:
            os.kill(os.getpid(), signal.SIGKILL)

    download(sys.argv[1], sys.argv[2], max_concurrency=2, progress=progress)
    """
)


def downloader_killed(stage: Stage) -> Row:
    """SIGKILL the downloading process half-way; check the final paths, then re-run."""
    files = _files(5)
    stage.seed("killed-dl/", files)
    dest = stage.fresh("killed-dl")
    env = stage.environ(through_proxy=False)
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-c", _DOWNLOADER, stage.uri("killed-dl/"), str(dest)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    finals = _tree(dest)
    incomplete = [name for name, data in finals.items() if data != files.get(name)]
    result, error = _attempt(lambda: download(stage.uri("killed-dl/"), dest, progress=False, environ=env))
    if child.returncode != -signal.SIGKILL:
        outcome = f"FAILED: the downloader exited {child.returncode}: {child.stderr[-300:]}"
    elif incomplete:
        outcome = f"FAILED: incomplete files at final paths: {', '.join(incomplete[:3])}"
    elif error is not None or _tree(dest) != files:
        outcome = f"FAILED: the re-run: {error or 'bytes differ'}"
    else:
        outcome = OK_RERUN
    resumed = result.bytes_resumed / MIB if result else 0
    return Row(
        "download 40 MiB + 24 small files in a child process",
        "the downloader killed (SIGKILL) half-way",
        outcome,
        f"{len(finals)} complete files at final paths after the kill, none incomplete; "
        f"the re-run resumed {resumed:.0f} MiB",
        time.monotonic() - started,
    )


# A job that registers upload_on_exit, closes 20 small files and a 9 MiB one, keeps one open, and is preempted.
_PREEMPTED = textwrap.dedent(
    """
    import os, sys
    from aml_identity.datastore import upload_on_exit

    uri, out = sys.argv[1], sys.argv[2]
    upload_on_exit(out, uri)
    os.makedirs(os.path.join(out, "epoch-1"), exist_ok=True)
    for i in range(20):
        with open(os.path.join(out, "epoch-1", f"metrics-{i}.json"), "w") as f:
            f.write('{"step": %d}' % i)
    with open(os.path.join(out, "model-epoch-1.pt"), "wb") as f:
        f.write(bytes(range(256)) * (9 * 1024 * 1024 // 256))
    half = open(os.path.join(out, "model-epoch-2.pt"), "wb")
    half.write(b"only the first half")
    half.flush()
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def preempted_upload_on_exit(stage: Stage) -> Row:
    """SIGTERM a job that registered ``upload_on_exit``; every closed file must be in storage."""
    out = stage.fresh("preempted") / "outputs"
    env = stage.environ(through_proxy=False)
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-c", _PREEMPTED, stage.uri("preempted/"), str(out)],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None  # noqa: S101 - we asked for a pipe
    ready = child.stdout.readline() == "ready\n"
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=300)
    stored = stage.stored("preempted/")
    closed = {f"epoch-1/metrics-{i}.json": b'{"step": %d}' % i for i in range(20)}
    closed["model-epoch-1.pt"] = bytes(range(256)) * (9 * MIB // 256)
    if not ready:
        outcome = f"FAILED: the job did not start: {err[-300:]}"
    elif stored != closed:
        missing = sorted(set(closed) - set(stored)) + sorted(n for n in stored if stored[n] != closed.get(n))
        outcome = f"FAILED: {', '.join(missing[:3])}"
    else:
        outcome = "every closed file uploaded and verified; the open one left out"
    return Row(
        "`upload_on_exit` of 21 closed files (one of 9 MiB) and 1 open file",
        "the job preempted (SIGTERM)",
        outcome,
        f"the process then died of SIGTERM (exit {child.returncode}), as a preempted job must",
        time.monotonic() - started,
    )


@contextlib.contextmanager
def stage(workdir: Path) -> Iterator[Stage]:
    """Start Azurite (on disk, in ``workdir``), the identity endpoint and the proxy; set the job environment."""
    with (
        Azurite(workdir=workdir / "azurite") as azurite,
        IdentityEndpoint() as endpoint,
        StorageAuthProxy(
            f"https://127.0.0.1:{azurite.port}", authorizer=lambda *_, **__: True, tls=azurite.tls
        ) as proxy,
    ):
        built = Stage(azurite, endpoint, proxy, workdir / "local")
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(built.base)  # msal reads the identity variables from os.environ
        try:
            yield built
        finally:
            os.environ.clear()
            os.environ.update(saved)


SCENARIOS: dict[str, Callable[[Stage], Row]] = {
    "azurite-crash-download": lambda s: azurite_killed_during_download(s, signal.SIGKILL),
    "azurite-stop-download": lambda s: azurite_killed_during_download(s, signal.SIGTERM),
    "azurite-crash-upload": lambda s: azurite_killed_during_upload(s, signal.SIGKILL),
    "azurite-stop-upload": lambda s: azurite_killed_during_upload(s, signal.SIGTERM),
    "503-download": lambda s: proxy_faults_during_download(s, StorageFault.status(503, retry_after=1)),
    "reset-download": lambda s: proxy_faults_during_download(s, StorageFault.reset()),
    "cut-download": lambda s: proxy_faults_during_download(s, StorageFault.cut()),
    "503-upload": lambda s: proxy_faults_during_upload(s, StorageFault.status(503, retry_after=1, action="write")),
    "reset-upload": lambda s: proxy_faults_during_upload(s, StorageFault.reset(action="write")),
    "downloader-sigkill": downloader_killed,
    "upload-on-exit-sigterm": preempted_upload_on_exit,
}


def run(names: list[str]) -> list[Row]:
    """Run the named scenarios (all of them when empty) on one set of emulators."""
    workdir = Path(tempfile.mkdtemp(prefix="aml-storage-faults-"))
    try:
        with stage(workdir) as built:
            return [SCENARIOS[name](built) for name in names or SCENARIOS]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def markdown(rows: list[Row]) -> str:
    """Render the rows as the "Storage faults" section."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "## Storage faults",
        "",
        (
            "`python -m bench storage-faults`: each transfer runs as a job's would (its identity from the "
            "identity endpoint emulator, Azurite on disk over HTTPS, a StorageAuthProxy in front of it for the "
            "injected faults); one thing goes wrong in the middle, and every byte is then checked against the source."
        ),
        "",
        "| transfer | fault | outcome | what happened | s |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {r.scenario} | {r.fault} | {r.outcome} | {r.detail} | {r.seconds:.1f} |" for r in rows),
        "",
        (
            f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()} (load average {load}); "
            f"{versions('azure-core', 'azure-storage-blob')}. Azurite saves its blob index every few seconds and "
            "on a graceful stop, so a crash can lose writes it acknowledged just before; the upload re-run sends "
            "them again."
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Run the scenarios and write their section."""
    parser = argparse.ArgumentParser(prog="python -m bench storage-faults", description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", help=f"run only these (default: all): {', '.join(SCENARIOS)}")
    parser.add_argument("--output", type=Path, default=RELIABILITY_MD, help="the page to write the section into")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    rows = run(args.scenarios)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    if not args.scenarios:
        ensure_page(args.output)
        update_section("storage-faults", markdown(rows), path=args.output)
    print(markdown(rows))
    return 0 if all(r.outcome.startswith(("completed", "every closed")) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
