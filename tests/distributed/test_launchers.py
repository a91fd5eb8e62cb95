"""Real launchers in the sandbox: mpirun, torchrun, two simulated nodes, and a fork DataLoader.

Every rank gets a storage and a management token and calls ``download(once_per_node=True)``. What a user
relies on: one identity-endpoint request per resource and one transfer of each blob per node, and every rank
sees the same complete data. The launchers are the real ones (OpenMPI's ``mpirun``, PyTorch's ``torchrun``);
a test whose launcher is not installed is skipped with the reason.

The single-node ``mpirun`` job goes through the ``aml-identity sandbox`` command, as a user runs it, and reads
the counts from its summary; the others run in a :class:`Sandbox` started by the test, whose emulators' request
records count what each blob and each resource cost. A simulated node is a token cache
(``AML_IDENTITY_CACHE_DIR``) and a temporary folder (``TMPDIR``, where the once-per-node lock lives) of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import aml_identity
from aml_identity.datastore._download import RANGE_SIZE
from aml_identity.testing.sandbox import DatastoreSeed, Sandbox

pytestmark = [pytest.mark.azurite, pytest.mark.slow]

SRC = str(Path(aml_identity.__file__).resolve().parents[1])
MPIRUN = shutil.which("mpirun")
NO_MPIRUN = "mpirun is not installed (apt-get install openmpi-bin; .ci/run does)"
# mpirun as root (CI containers) needs the flag; --oversubscribe lets 8 ranks share this machine's 2 cores.
MPIRUN_FLAGS = ("--allow-run-as-root", "--oversubscribe")
# How long a launcher job may take before it counts as hung: generous for a loaded 2-core machine (torch's
# import alone takes seconds there), never waited out by a passing test.
JOB_TIMEOUT_S = 300
STORAGE = "https://storage.azure.com"
MANAGEMENT = "https://management.azure.com"
SMALL_FILES = 24

# One rank: tokens for both resources, the node's data once per node, then what it sees, in a file of its own.
RANK_JOB = """
import hashlib, json, os, sys
from pathlib import Path
from aml_identity import get_token
from aml_identity.datastore import download

dest, out = Path(sys.argv[1]), Path(sys.argv[2])
get_token("https://storage.azure.com")
get_token("https://management.azure.com")
result = download("azureml://datastores/inputs/paths/", dest, once_per_node=True, progress=False)
seen = {p.relative_to(dest).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(dest.rglob("*")) if p.is_file()}
names = ("RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK")
out.mkdir(parents=True, exist_ok=True)
(out / f"{os.getpid()}.json").write_text(json.dumps(
    {"outcome": result.outcome, "seen": seen, "ranks": {n: os.environ[n] for n in names if n in os.environ},
     "endpoint_client": "aml_identity._fetch" in sys.modules}
))
"""

# A torch job: a parent thread keeps getting tokens and resolving the datastore while a fork DataLoader starts
# its workers, epoch after epoch; each worker item calls get_token.
DATALOADER_JOB = """
import json, os, sys, threading
import torch
from torch.utils.data import DataLoader, Dataset
from aml_identity import get_token
from aml_identity.datastore.resolve import resolve

URI = "azureml://datastores/inputs/paths/"
EPOCHS = 4

class Tokens(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        token = get_token("https://storage.azure.com")
        return torch.tensor([os.getpid(), token.expires_on, len(token.token)])

get_token("https://storage.azure.com")
resolve(URI)
stop = threading.Event()

def busy():
    while not stop.is_set():
        get_token("https://storage.azure.com")
        get_token("https://management.azure.com")
        resolve(URI)

threads = [threading.Thread(target=busy, daemon=True) for _ in range(2)]
for thread in threads:
    thread.start()
rows = []
loader = DataLoader(Tokens(), batch_size=2, num_workers=2, multiprocessing_context="fork")
for _ in range(EPOCHS):
    for batch in loader:
        rows.extend(batch.tolist())
stop.set()
for thread in threads:
    thread.join()
print(json.dumps({"rows": rows, "parent": os.getpid()}))
"""


def _dataset(folder: Path) -> dict[str, bytes]:
    rng = random.Random(23)
    files = {f"{i:03d}.bin": rng.randbytes(rng.randrange(1, 4000)) for i in range(SMALL_FILES)}
    files["nested/shard.bin"] = rng.randbytes(RANGE_SIZE + 17)  # two ranges
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return files


def _digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(content).hexdigest() for name, content in sorted(files.items())}


def _gets_per_range(requests) -> Counter[tuple[str, str | None]]:
    """How often each blob (and range of a blob) of the datastore was served."""
    return Counter(
        (r.path.split("/inputs/", 1)[1], r.range) for r in requests if r.method == "GET" and r.action == "read"
    )


def _expected_gets() -> int:
    return SMALL_FILES + 2  # the shard in two ranges


def _torch_missing() -> str | None:
    """Why torch cannot be used here, or None when it imports (checked in a child: importing it is heavy)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import torch, torch.distributed.run, torch.utils.data"],
        capture_output=True, text=True, timeout=JOB_TIMEOUT_S, check=False,
    )  # fmt: skip
    if probe.returncode == 0:
        return None
    last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
    return f"torch does not import here ({last}); .ci/run installs a CPU torch==2.13.0 when it can"


@pytest.fixture(scope="module")
def torch_available() -> None:
    reason = _torch_missing()
    if reason is not None:
        pytest.skip(reason)  # the reason is in pytest's summary (-ra), so CI logs say why the tests did not run


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    folder = tmp_path_factory.mktemp("inputs")
    return folder, _dataset(folder)


@pytest.fixture(scope="module")
def sandbox(data):
    with Sandbox(datastores=[DatastoreSeed("inputs", data[0])], grants={"inputs": "reader"}) as running:
        yield running


def _node_environ(sandbox: Sandbox, node: Path) -> dict[str, str]:
    """The job environment on one simulated node: its own token cache and temporary folder."""
    (node / "tmp").mkdir(parents=True, exist_ok=True)
    environ = sandbox.job_environment()
    environ["PYTHONPATH"] = os.pathsep.join((SRC, environ["PYTHONPATH"]))
    environ["AML_IDENTITY_CACHE_DIR"] = str(node / "token-cache")
    environ["TMPDIR"] = str(node / "tmp")
    return environ


def _start(command: list[str], environ: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command, env=environ, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: a hung job is killed with every rank it started
    )  # fmt: skip


def _finish(child: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for a job; a job still running after JOB_TIMEOUT_S is hung: kill its group and fail."""
    try:
        out, err = child.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        pytest.fail(f"the job hung (killed after {JOB_TIMEOUT_S} s): {err[-2000:]}")
    assert child.returncode == 0, err[-4000:]
    return out, err


def _ranks(out: Path) -> list[dict[str, object]]:
    return [json.loads(path.read_text()) for path in sorted(out.glob("*.json"))]


def _assert_one_node(ranks: list[dict[str, object]], files: dict[str, bytes], count: int) -> None:
    assert len(ranks) == count
    assert all(rank["seen"] == _digests(files) for rank in ranks)  # complete, identical, verified data
    assert Counter(rank["outcome"] for rank in ranks) == {"transferred": 1, "waited": count - 1}
    # One rank per node loaded the identity endpoint's client: the node's fetch service fetched both tokens.
    assert sum(bool(rank["endpoint_client"]) for rank in ranks) == 1, ranks


@pytest.mark.skipif(MPIRUN is None, reason=NO_MPIRUN)
def test_mpirun_8_ranks_in_the_sandbox_cost_one_token_request_per_resource_and_one_transfer_per_blob(data, tmp_path):
    folder, files = data
    (tmp_path / "job.py").write_text(RANK_JOB)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MSI_", "AML_IDENTITY_"))
               or k in ("AML_IDENTITY_AZURITE", "AML_IDENTITY_SPECS_DIR")}  # fmt: skip
    environ["PYTHONPATH"] = SRC
    command = [
        sys.executable, "-m", "aml_identity", "sandbox", "--datastore", f"inputs={folder}", "--grant", "inputs=reader",
        "--", MPIRUN, *MPIRUN_FLAGS, "-np", "8", sys.executable, "job.py", str(tmp_path / "data"),
        str(tmp_path / "out"),
    ]  # fmt: skip

    _, err = _finish(_start(command, environ, tmp_path))

    ranks = _ranks(tmp_path / "out")
    _assert_one_node(ranks, files, 8)
    assert sorted(int(rank["ranks"]["OMPI_COMM_WORLD_RANK"]) for rank in ranks) == list(range(8))
    summary = err.strip().splitlines()[-1]
    assert f"identity endpoint: 2 token request(s) ({MANAGEMENT}: 1, {STORAGE}: 1)" in summary, summary
    assert "ARM emulator: 1 request(s)" in summary, summary  # the datastore resolved once, by the downloader
    # One listing, then each blob once (the shard as its two ranges): nothing fetched twice.
    storage = re.search(r"storage: (\d+) request\(s\), 0 denied", summary)
    assert storage, summary
    assert int(storage[1]) == 1 + _expected_gets()


@pytest.mark.skipif(MPIRUN is None, reason=NO_MPIRUN)
def test_two_simulated_nodes_of_4_mpirun_ranks_cost_two_of_each(sandbox, data, tmp_path):
    _, files = data
    (tmp_path / "job.py").write_text(RANK_JOB)
    tokens, storage, arm = (
        len(sandbox.endpoint.requests),
        len(sandbox.storage_proxy.requests),
        len(sandbox.arm.requests),
    )

    jobs = []
    for node in ("node-0", "node-1"):
        command = [MPIRUN, *MPIRUN_FLAGS, "-np", "4", sys.executable, "job.py", str(tmp_path / node / "data"),
                   str(tmp_path / node / "out")]  # fmt: skip
        jobs.append(_start(command, _node_environ(sandbox, tmp_path / node), tmp_path))
    for job in jobs:
        _finish(job)

    for node in ("node-0", "node-1"):
        _assert_one_node(_ranks(tmp_path / node / "out"), files, 4)
    per_resource = Counter(r.params.get("resource") for r in sandbox.endpoint.requests[tokens:])
    assert per_resource == {STORAGE: 2, MANAGEMENT: 2}
    served = sandbox.storage_proxy.requests[storage:]
    gets = _gets_per_range(served)
    assert len(gets) == _expected_gets()
    assert set(gets.values()) == {2}, gets  # each blob (each range) once per node
    assert len([r for r in served if r.action == "list"]) == 2
    assert len(sandbox.arm.requests[arm:]) == 2


def test_torchrun_4_ranks_cost_one_token_request_per_resource_and_one_transfer_per_blob(
    torch_available, sandbox, data, tmp_path
):
    _, files = data
    (tmp_path / "job.py").write_text(RANK_JOB)
    tokens, storage = len(sandbox.endpoint.requests), len(sandbox.storage_proxy.requests)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", "job.py",
               str(tmp_path / "node" / "data"), str(tmp_path / "out")]  # fmt: skip

    _finish(_start(command, _node_environ(sandbox, tmp_path / "node"), tmp_path))

    ranks = _ranks(tmp_path / "out")
    _assert_one_node(ranks, files, 4)
    assert sorted(int(rank["ranks"]["LOCAL_RANK"]) for rank in ranks) == [0, 1, 2, 3]
    per_resource = Counter(r.params.get("resource") for r in sandbox.endpoint.requests[tokens:])
    assert per_resource == {STORAGE: 1, MANAGEMENT: 1}
    gets = _gets_per_range(sandbox.storage_proxy.requests[storage:])
    assert len(gets) == _expected_gets()
    assert set(gets.values()) == {1}


def test_fork_dataloader_workers_get_tokens_without_hanging_or_new_requests(torch_available, sandbox, tmp_path):
    (tmp_path / "loader.py").write_text(DATALOADER_JOB)
    tokens = len(sandbox.endpoint.requests)

    out, _ = _finish(_start([sys.executable, "loader.py"], _node_environ(sandbox, tmp_path / "node"), tmp_path))

    report = json.loads(out.strip().splitlines()[-1])
    rows = report["rows"]
    assert len(rows) == 4 * 8  # every item of every epoch
    workers = {pid for pid, _, _ in rows}
    assert report["parent"] not in workers
    assert len(workers) == 4 * 2  # two fresh forked workers per epoch
    assert len({(expires_on, length) for _, expires_on, length in rows}) == 1  # all the parent's token
    # The parent's two tokens are the only requests: the forked workers added none.
    per_resource = Counter(r.params.get("resource") for r in sandbox.endpoint.requests[tokens:])
    assert per_resource == {STORAGE: 1, MANAGEMENT: 1}
