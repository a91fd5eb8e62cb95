"""``aml-identity sandbox`` needs no flags: ARM and the storage role proxy always run; ranks, grants, outputs.

Every run goes through the real command line (a subprocess), as a user runs it; the counting test uses the
Python API to read the identity endpoint's request log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import aml_identity
from aml_identity.testing.sandbox import DatastoreSeed, Sandbox

SRC = str(Path(aml_identity.__file__).resolve().parents[1])
pytestmark = pytest.mark.azurite

READ_JOB = """
import sys
from aml_identity.datastore import download
from aml_identity.errors import DataAccessDeniedError
try:
    result = download("azureml://datastores/inputs/paths/", sys.argv[1], progress=False)
except DataAccessDeniedError as error:
    print("denied:", error.role, "on", error.account)
    sys.exit(4)
print("files:", result.files, open(sys.argv[1] + "/rows.csv").read().strip())
"""


def _environ(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MSI_", "AML_IDENTITY_"))
               or k in ("AML_IDENTITY_AZURITE", "AML_IDENTITY_SPECS_DIR")}  # fmt: skip
    environ["PYTHONPATH"] = SRC
    environ["TMPDIR"] = str(tmp_path / "tmp")  # every temporary folder the sandbox makes lands here
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return environ


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "rows.csv").write_text("a,b\n")
    return data


def sandbox_command(*options: str) -> list[str]:
    return [sys.executable, "-m", "aml_identity", "sandbox", *options]


def run_sandbox(
    tmp_path: Path, *options: str, job: str = READ_JOB, args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "job.py"
    script.write_text(job)
    return subprocess.run(
        [*sandbox_command(*options), "--", sys.executable, str(script), *args],
        env=_environ(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def test_a_seeded_datastore_reads_by_name_with_no_other_flag(tmp_path):
    data = _data(tmp_path)
    result = run_sandbox(tmp_path, "--datastore", f"inputs={data}", args=(str(tmp_path / "out"),))
    assert result.returncode == 0, result.stderr
    assert "files: 1 a,b" in result.stdout
    assert "Traceback" not in result.stderr


def test_grant_none_makes_the_job_fail_with_data_access_denied_naming_the_role(tmp_path):
    data = _data(tmp_path)
    result = run_sandbox(tmp_path, "--datastore", f"inputs={data}", "--grant", "inputs=none",
                         args=(str(tmp_path / "out"),))  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert "denied: Storage Blob Data Reader on devstoreaccount1" in result.stdout
    assert "1 denied" in result.stderr


def test_grant_reader_reads_but_cannot_write(tmp_path):
    data = _data(tmp_path)
    job = (
        READ_JOB
        + """
from aml_identity.datastore import upload
try:
    upload(sys.argv[1], "azureml://datastores/inputs/paths/copy/", progress=False)
except DataAccessDeniedError as error:
    print("write denied:", error.role)
"""
    )
    result = run_sandbox(tmp_path, "--datastore", f"inputs={data}", "--grant", "inputs=reader", job=job,
                         args=(str(tmp_path / "out"),))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "files: 1" in result.stdout
    assert "write denied: Storage Blob Data Contributor" in result.stdout


def test_the_arm_flag_is_an_accepted_no_op(tmp_path):
    data = _data(tmp_path)
    result = run_sandbox(tmp_path, "--arm", "--datastore", f"inputs={data}", args=(str(tmp_path / "out"),))
    assert result.returncode == 0, result.stderr


RANK_JOB = """
import json, os, sys
from aml_identity import default_credential
from aml_identity.datastore import download
names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
download("azureml://datastores/inputs/paths/", sys.argv[1], once_per_node=True, progress=False)
default_credential().get_token("https://management.azure.com/.default")
print(json.dumps({name: os.environ[name] for name in names}))
"""


def test_eight_processes_get_the_distributed_variables_and_cost_one_token_request_per_resource(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_JOB)
    with Sandbox(datastores=[DatastoreSeed("inputs", _data(tmp_path))], processes=8) as sandbox:
        environ_before = dict(os.environ)
        os.environ["PYTHONPATH"] = SRC
        try:
            output = tmp_path / "ranks.txt"
            with output.open("w") as out:
                sys_stdout = os.dup(1)
                os.dup2(out.fileno(), 1)
                try:
                    code = sandbox.run([sys.executable, str(script), str(tmp_path / "node-data")])
                finally:
                    os.dup2(sys_stdout, 1)
                    os.close(sys_stdout)
        finally:
            os.environ.clear()
            os.environ.update(environ_before)
        assert code == 0
        per_resource = Counter(r.params.get("resource") for r in sandbox.endpoint.requests)
    assert per_resource == {"https://management.azure.com": 1, "https://storage.azure.com": 1}
    ranks = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(int(r["RANK"]) for r in ranks) == list(range(8))
    assert {(r["WORLD_SIZE"], r["LOCAL_WORLD_SIZE"], r["NODE_RANK"], r["MASTER_ADDR"]) for r in ranks} == {
        ("8", "8", "0", "127.0.0.1")
    }
    assert len({r["MASTER_PORT"] for r in ranks}) == 1
    assert all(r["RANK"] == r["LOCAL_RANK"] for r in ranks)


def test_a_failing_rank_fails_the_job_and_stops_the_others(tmp_path):
    job = "import os, sys, time\nif os.environ['RANK'] == '1': sys.exit(7)\ntime.sleep(120)\n"
    result = run_sandbox(tmp_path, "--processes", "3", job=job)
    assert result.returncode == 7, result.stderr


def test_output_copies_the_datastore_and_identity_user_n_makes_the_first_the_default(tmp_path):
    job = """
import os
from aml_identity import default_credential
from aml_identity.datastore import upload
os.makedirs("model", exist_ok=True)
open("model/weights.txt", "w").write("1.5")
upload("model", "azureml://datastores/outputs/paths/run/", progress=False)
print("client", os.environ["DEFAULT_IDENTITY_CLIENT_ID"], default_credential().identity.client_id)
"""
    result = run_sandbox(tmp_path, "--identity", "user:2", "--datastore", "outputs", "--output",
                         f"outputs={tmp_path / 'landed'}", "--token-lifetime", "3600", job=job)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "landed" / "run" / "weights.txt").read_text() == "1.5"
    assert f"outputs -> {tmp_path / 'landed'} (1 file(s))" in result.stderr
    _, env_client, used_client = result.stdout.split()
    assert env_client == used_client
    assert f"user-assigned identity {env_client}" in result.stderr


def test_setup_then_cluster_runs_the_job_as_the_clusters_identity(tmp_path):
    setup = tmp_path / "setup.py"
    setup.write_text("""
from aml_identity.provisioning import ClusterSpec, UserAssigned, Workspace
ws = Workspace.from_job_environment()
identity = f"/subscriptions/{ws.subscription_id}/resourceGroups/{ws.resource_group}/providers/" \\
    "Microsoft.ManagedIdentity/userAssignedIdentities/uai-sandbox"
ws.clusters.ensure(ClusterSpec(name="gpu", vm_size="Standard_DS3_v2", max_nodes=1, identity=UserAssigned([identity])))
""")
    job = "from aml_identity import default_credential\nprint(default_credential().identity.client_id)\n"
    result = run_sandbox(tmp_path, "--setup", f"{sys.executable} {setup}", "--cluster", "gpu", job=job)
    assert result.returncode == 0, result.stderr
    assert "the job runs on cluster gpu as its user-assigned identity uai-sandbox" in result.stderr
    assert f"(client id {result.stdout.strip()})" in result.stderr


def test_help_documents_every_option(tmp_path):
    result = subprocess.run([*sandbox_command("--help")], env=_environ(tmp_path), capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0
    for option in (
        "--datastore",
        "--identity",
        "system|user[:N]",
        "--grant",
        "reader|contributor|none",
        "--processes",
        "RANK",
        "MASTER_PORT",
        "--output",
        "--token-lifetime",
        "--setup",
        "--cluster",
    ):
        assert option in result.stdout, option


# --- nothing is left behind -------------------------------------------------------------------------------

LINGER_JOB = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGINT, lambda *_: sys.exit(130))  # a job that ends quietly on Ctrl-C
child = subprocess.Popen(["sleep", "300"])  # outlives the job if let be
open(sys.argv[1], "w").write(f"{os.getpid()} {child.pid}")
if sys.argv[2] == "kill-self":
    os.kill(os.getpid(), 9)
time.sleep(0 if sys.argv[2] == "return" else 120)
"""


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("ending", ["return", "sigint", "kill-self"])
def test_nothing_is_left_running_mounted_or_on_disk(tmp_path, ending):
    script = tmp_path / "linger.py"
    script.write_text(LINGER_JOB)
    pids_file = tmp_path / "pids"
    sandbox = subprocess.Popen(
        [*sandbox_command("--datastore", f"inputs={_data(tmp_path)}"), "--", sys.executable, str(script),
         str(pids_file), ending],
        env=_environ(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    started: set[int] = set()
    deadline = time.monotonic() + 120
    while not pids_file.exists() or not pids_file.read_text():  # the job's own handshake, not a timing guess
        assert sandbox.poll() is None, sandbox.communicate()
        assert time.monotonic() < deadline, "the job never started"
        started |= _descendants(sandbox.pid)
        time.sleep(0.05)
    started |= _descendants(sandbox.pid)
    job_pid, grandchild = (int(p) for p in pids_file.read_text().split())
    started |= {job_pid, grandchild}
    if ending == "sigint":
        sandbox.send_signal(signal.SIGINT)  # what Ctrl-C sends to the sandbox
    _, stderr = sandbox.communicate(timeout=120)
    assert sandbox.returncode == {"return": 0, "sigint": 130, "kill-self": 137}[ending], stderr
    assert "Traceback" not in stderr
    assert [pid for pid in started if _alive(pid)] == []  # Azurite, the job and the job's own child: all gone
    assert list((tmp_path / "tmp").iterdir()) == []  # no temporary folder left
    assert str(tmp_path) not in Path("/proc/mounts").read_text()
