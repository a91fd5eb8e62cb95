"""Storage faults: transfers ride out storage errors, resets, cut responses and an Azurite restart, bytes verified.

The first tests inject faults through the StorageAuthProxy (``StorageFault``) into one call and check that the
call still succeeds with every byte right, and that the proxy really acted each fault out. The Azurite tests kill
and restart a private Azurite (on disk) in the middle of a transfer. The last test runs ``python -m bench
storage-faults``, which writes the table in docs/reliability.md, and fails when a row's outcome changes.
SIGKILL of a downloader and SIGTERM during ``upload_on_exit`` are tested in test_resume.py and
test_upload_on_exit.py; the benchmark reports them too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

import aml_identity
from aml_identity.datastore import download, upload
from aml_identity.datastore._rest import BlobRestClient
from aml_identity.testing import Azurite, StorageFault

pytestmark = pytest.mark.azurite

ROOT = Path(__file__).resolve().parents[2]
SRC = str(Path(aml_identity.__file__).resolve().parents[1])
MIB = 1024 * 1024


def _files(big: int = 20 * MIB) -> dict[str, bytes]:
    files = {"big.bin": os.urandom(big)}
    files.update({f"small/{i:02d}.bin": os.urandom(4096 + i) for i in range(12)})
    return files


def _write(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


class TestInjectedFaults:
    @pytest.mark.parametrize(
        "fault",
        [StorageFault.status(503, retry_after=0), StorageFault.reset(), StorageFault.cut(), StorageFault.status(500)],
        ids=["503", "reset", "cut", "500"],
    )
    def test_a_download_rides_out_three_faults_and_every_byte_verifies(  # noqa: PLR0917 - fixtures
        self, storage_job, store, open_proxy, via, tree, tmp_path, fault
    ):
        files = _files()
        store.seed({f"d/{name}": data for name, data in files.items()})
        open_proxy.inject(fault, fault, fault)

        result = download(store.uri("d/"), tmp_path / "dest", progress=False, environ=via(open_proxy))

        assert tree(tmp_path / "dest") == files
        assert open_proxy.faults_acted[fault.kind] == 3
        assert open_proxy.faults_pending == 0
        assert result.transferred_files == len(files)

    @pytest.mark.parametrize(
        "fault",
        [StorageFault.status(503, retry_after=0, action="write"), StorageFault.reset(action="write")],
        ids=["503", "reset"],
    )
    def test_an_upload_rides_out_three_faults_and_every_blob_verifies(  # noqa: PLR0917 - fixtures
        self, storage_job, store, open_proxy, via, tmp_path, fault
    ):
        files = _files()
        _write(tmp_path / "src", files)
        open_proxy.inject(fault, fault, fault)

        upload(tmp_path / "src", store.uri("u/"), progress=False, environ=via(open_proxy))

        assert store.contents("u/") == files
        assert open_proxy.faults_acted[fault.kind] == 3

    def test_faults_for_one_kind_of_request_wait_for_one(self, storage_job, store, open_proxy, via, tmp_path):
        store.seed({"r/a.bin": b"a" * 1000})
        open_proxy.inject(StorageFault.status(503, action="write"))

        download(store.uri("r/"), tmp_path / "dest", progress=False, environ=via(open_proxy))

        assert open_proxy.faults_pending == 1  # reads and listings do not take a fault meant for writes
        assert not open_proxy.faults_acted


@pytest.fixture
def own_azurite(aml_tls, tmp_path):
    """A private Azurite on disk (this test kills it), started again after each kill by the test."""
    with Azurite(workdir=tmp_path / "azurite", tls=aml_tls) as server:
        yield server


@pytest.fixture
def job_on(own_azurite, aml_job, clean_env, tmp_path):
    """The job environment with the account at ``own_azurite``; returns a shared-key container client."""
    clean_env.setenv("AML_IDENTITY_BLOB_ENDPOINTS", json.dumps({"devstoreaccount1": own_azurite.blob_endpoint()}))
    for name, value in own_azurite.tls.environ().items():
        clean_env.setenv(name, value)
    service = BlobServiceClient.from_connection_string(
        own_azurite.connection_string(), connection_verify=str(own_azurite.tls.cert)
    )
    container = service.get_container_client("restarts")
    container.create_container()
    own_azurite.restart()  # Azurite writes its index on a clean stop: the container survives a later crash
    return container


def _killer(azurite: Azurite, sig: signal.Signals):
    """A progress callback that kills Azurite a third of the way through and starts it again (in a thread)."""
    fired = threading.Event()
    started: list[threading.Thread] = []
    lock = threading.Lock()

    def progress(done: int, total: int) -> None:
        with lock:
            if fired.is_set() or done < total / 3:
                return
            fired.set()
            azurite.kill(sig)
        thread = threading.Thread(target=azurite.start)
        thread.start()
        started.append(thread)

    def wait() -> bool:
        for thread in started:
            thread.join(120)
        return fired.is_set()

    return progress, wait


class TestAzuriteRestart:
    URI = "https://devstoreaccount1.blob.core.windows.net/restarts/"

    def test_a_download_completes_in_the_same_call_across_an_azurite_crash(self, own_azurite, job_on, tree, tmp_path):
        files = _files(40 * MIB)
        for name, data in files.items():
            job_on.upload_blob(f"d/{name}", data)
        own_azurite.restart()  # Azurite writes its index on a clean stop: the seeded blobs survive the crash
        progress, struck = _killer(own_azurite, signal.SIGKILL)

        download(self.URI + "d/", tmp_path / "dest", progress=progress)

        assert struck()
        assert tree(tmp_path / "dest") == files

    def test_an_upload_completes_in_the_same_call_across_an_azurite_restart(self, own_azurite, job_on, tmp_path):
        files = _files(40 * MIB)
        _write(tmp_path / "src", files)
        progress, struck = _killer(own_azurite, signal.SIGTERM)

        upload(tmp_path / "src", self.URI + "u/", progress=progress)

        assert struck()
        stored = {b.name[2:]: job_on.download_blob(b.name).readall() for b in job_on.list_blobs(name_starts_with="u/")}
        assert stored == files

    def test_after_a_crash_that_lost_staged_blocks_the_upload_stages_them_again(self, own_azurite, job_on, tmp_path):
        files = {"big.bin": os.urandom(40 * MIB)}
        _write(tmp_path / "src", files)
        progress, struck = _killer(own_azurite, signal.SIGKILL)  # Azurite forgets the blocks it just acknowledged

        upload(tmp_path / "src", self.URI + "b/", progress=progress)

        assert struck()
        assert job_on.download_blob("b/big.bin").readall() == files["big.bin"]

    def test_idle_connections_closed_by_a_restarted_server_cost_no_attempt(self, own_azurite, job_on):
        from aml_identity.datastore._bearer import BearerToken

        client = BlobRestClient(
            own_azurite.blob_endpoint(),
            BearerToken(aml_identity.default_credential()),
            ssl_context=own_azurite.tls.client_context(),
            max_attempts=1,  # no retry: only the closed-connection rule can save the request
        )
        body = os.urandom(4 * MIB)  # big enough that writing it to a closed TLS connection fails (SSLEOFError)
        client.put_blob("restarts", "c/a.bin", body, length=len(body), metadata={}, overwrite=True)  # pooled
        own_azurite.restart()  # the server closes it

        client.put_blob("restarts", "c/a.bin", body, length=len(body), metadata={}, overwrite=True)

        assert job_on.download_blob("c/a.bin").readall() == body
        client.close()


@pytest.mark.slow
def test_the_storage_faults_benchmark_rows_all_end_with_verified_bytes(tmp_path):
    output = tmp_path / "reliability.md"
    output.write_text("# Reliability\n\n<!-- bench:faults:start -->\nkept\n<!-- bench:faults:end -->\n")
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "storage-faults", "--output", str(output), "--json", str(tmp_path / "r.json")],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcomes = {(r["scenario"], r["fault"]): r["outcome"] for r in json.loads((tmp_path / "r.json").read_text())}
    crash_upload = ("upload 40 MiB + 24 small files", "Azurite killed (SIGKILL: a crash) at 1/3, restarted")
    expected_same_call = {key: "completed in the same call, bytes verified" for key in outcomes if key != crash_upload}
    expected_same_call[
        ("download 40 MiB + 24 small files in a child process", "the downloader killed (SIGKILL) half-way")
    ] = "completed on a re-run, bytes verified"
    expected_same_call[
        ("`upload_on_exit` of 21 closed files (one of 9 MiB) and 1 open file", "the job preempted (SIGTERM)")
    ] = "every closed file uploaded and verified; the open one left out"
    # Azurite (not aml-identity) loses the writes it acknowledged in the seconds before a crash; when it lost some,
    # the re-run sends them again.
    assert outcomes.pop(crash_upload) in ("completed in the same call, bytes verified",
                                          "completed on a re-run, bytes verified")  # fmt: skip
    assert outcomes == expected_same_call
    assert len(outcomes) == 10  # 11 scenarios, the crashed upload checked above
    page = output.read_text()
    assert "<!-- bench:storage-faults:start -->" in page and "kept" in page
