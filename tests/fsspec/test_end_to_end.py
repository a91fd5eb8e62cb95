"""pandas, PyArrow and Hugging Face ``datasets`` read and write ``azureml://`` URIs inside a sandbox job.

One job runs through the real command line, ``aml-identity sandbox --datastore inputs=DIR --datastore outputs
--datastore restricted=DIR --grant inputs=reader --grant restricted=none -- python job.py``, as a user runs
it. The job's code names no credential and no storage account: only ``azureml://datastores/NAME/paths/...``.
Each step of the job is recorded on its own (a value, or the error it raised), so each test below reports
its own step; the values read are compared with what the test seeded, and the sandbox's closing summary
gives the token requests the whole job made.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import aml_identity

SRC = str(Path(aml_identity.__file__).resolve().parents[1])
# Starting Azurite, ARM and the identity endpoint on a loaded machine, then importing pandas, PyArrow and
# datasets in the job: generous, it is a hang guard only.
SANDBOX_TIMEOUT_S = 600

pytestmark = pytest.mark.azurite

TRAIN = pd.DataFrame({
    "id": list(range(12)),
    "feature": [i * 0.5 for i in range(12)],
    "label": ["cat" if i % 3 else "dog" for i in range(12)],
})  # fmt: skip
EVENTS = pd.DataFrame({
    "day": ["2024-01-01"] * 5 + ["2024-01-02"] * 3 + ["2024-01-03"] * 4,
    "clicks": list(range(12)),
})  # fmt: skip

JOB = r'''
import json, os, sys, traceback

results = {}


def step(name):
    def run(function):
        try:
            results[name] = {"value": function()}
        except BaseException as error:  # noqa: BLE001 - every step reports its own failure
            results[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        return function
    return run


import contextlib
import fsspec
import pandas as pd
import pyarrow.dataset as ds

@contextlib.contextmanager
def refusals():
    """Record what the sandbox's loopback guard refuses inside the block (it still refuses it)."""
    from aml_identity.testing import _guard

    refused, refuse = [], _guard._refuse

    def record(host, event):
        refused.append(f"{event} to {host}")
        refuse(host, event)

    _guard._refuse = record
    try:
        yield refused
    finally:
        _guard._refuse = refuse


INPUTS = "azureml://datastores/inputs/paths"
OUTPUTS = "azureml://datastores/outputs/paths"


@step("read_csv")
def _():
    return pd.read_csv(f"{INPUTS}/tables/train.csv").to_dict("list")


@step("read_parquet")
def _():
    return pd.read_parquet(f"{INPUTS}/tables/train.parquet").to_dict("list")


@step("to_parquet")
def _():
    frame = pd.read_parquet(f"{INPUTS}/tables/train.parquet")
    frame["feature"] = frame["feature"] * 2
    frame.to_parquet(f"{OUTPUTS}/run-1/scored.parquet", index=False)
    back = pd.read_parquet(f"{OUTPUTS}/run-1/scored.parquet")
    listed = fsspec.filesystem("azureml").ls(f"{OUTPUTS}/run-1", detail=True)
    return {"frame": back.to_dict("list"), "listed": [(i["name"], i["type"], i["size"]) for i in listed]}


@step("pyarrow_dataset")
def _():
    fs, path = fsspec.core.url_to_fs(f"{INPUTS}/events")
    dataset = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    table = dataset.to_table().sort_by([("day", "ascending"), ("clicks", "ascending")])
    one_day = dataset.to_table(filter=ds.field("day") == "2024-01-02")
    return {
        "files": len(dataset.files),
        "rows": table.num_rows,
        "columns": {name: [str(v) for v in table.column(name).to_pylist()] for name in table.column_names},
        "filtered": sorted(one_day.column("clicks").to_pylist()),
    }


@step("read_parquet_folder")
def _():
    frame = pd.read_parquet(f"{INPUTS}/events")
    return {"rows": len(frame), "days": sorted(set(map(str, frame["day"])))}


@step("datasets")
def _():
    try:
        import datasets
    except ImportError as error:
        return {"skipped": f"datasets is not importable: {error}"}
    with refusals() as refused:
        loaded = datasets.load_dataset("parquet", data_files=f"{INPUTS}/tables/train.parquet", split="train")
    return {"rows": loaded.num_rows, "columns": loaded.to_dict(), "refused": refused}


@step("guard_control")
def _():
    import socket
    with refusals() as refused:
        try:
            socket.getaddrinfo("huggingface.co", 443)
        except RuntimeError:
            pass
    return refused


@step("denied")
def _():
    from aml_identity.errors import DataAccessDeniedError
    try:
        pd.read_csv("azureml://datastores/restricted/paths/secret.csv")
    except PermissionError as error:  # what pandas/fsspec callers catch for a refusal
        return {"type": type(error).__name__, "aml": isinstance(error, DataAccessDeniedError),
                "role": getattr(error, "role", None)}
    return {"type": None}


print("RESULTS " + json.dumps(results, default=str))
'''


def _seed(folder: Path) -> tuple[Path, Path]:
    inputs = folder / "inputs"
    (inputs / "tables").mkdir(parents=True)
    TRAIN.to_csv(inputs / "tables" / "train.csv", index=False)
    TRAIN.to_parquet(inputs / "tables" / "train.parquet", index=False)
    ds.write_dataset(
        pa.Table.from_pandas(EVENTS, preserve_index=False), inputs / "events", format="parquet",
        partitioning=ds.partitioning(pa.schema([("day", pa.string())]), flavor="hive"),
    )  # fmt: skip
    restricted = folder / "restricted"
    restricted.mkdir()
    (restricted / "secret.csv").write_text("a\n1\n")
    return inputs, restricted


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the job once in the sandbox; return its step results, its stderr and the sandbox's summary."""
    tmp = tmp_path_factory.mktemp("e2e")
    inputs, restricted = _seed(tmp / "data")
    script = tmp / "job.py"
    script.write_text(JOB)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MSI_", "AML_IDENTITY_", "HF_"))
               or k in ("AML_IDENTITY_AZURITE", "AML_IDENTITY_SPECS_DIR")}  # fmt: skip
    environ["PYTHONPATH"] = SRC
    environ["HF_HOME"] = str(tmp / "hf-home")  # datasets' cache: private to this run
    # The Hugging Face hub client is offline. datasets' own offline switch (HF_DATASETS_OFFLINE, which defaults
    # to HF_HUB_OFFLINE) refuses every remote URL, azureml:// included, so it is off: the job records what the
    # sandbox's loopback guard refused while datasets ran instead (nothing, asserted below).
    environ["HF_HUB_OFFLINE"] = "1"
    environ["HF_DATASETS_OFFLINE"] = "0"
    command = [
        sys.executable, "-m", "aml_identity", "sandbox",
        "--datastore", f"inputs={inputs}", "--grant", "inputs=reader",
        "--datastore", "outputs",
        "--datastore", f"restricted={restricted}", "--grant", "restricted=none",
        "--", sys.executable, str(script),
    ]  # fmt: skip
    result = subprocess.run(
        command, env=environ, cwd=tmp, capture_output=True, text=True, timeout=SANDBOX_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    return {"steps": json.loads(line.removeprefix("RESULTS ")), "stderr": result.stderr}


def _value(job: dict[str, Any], name: str) -> Any:
    outcome = job["steps"][name]
    assert "error" in outcome or "value" in outcome
    assert "error" not in outcome, f"{name}: {outcome.get('error')}\n{outcome.get('traceback')}"
    return outcome["value"]


def test_pandas_read_csv_reads_the_seeded_rows(job):
    assert _value(job, "read_csv") == TRAIN.to_dict("list")


def test_pandas_read_parquet_reads_the_seeded_rows(job):
    assert _value(job, "read_parquet") == TRAIN.to_dict("list")


def test_to_parquet_writes_a_blob_that_reads_back(job):
    written = _value(job, "to_parquet")
    assert written["frame"] == {**TRAIN.to_dict("list"), "feature": [i * 1.0 for i in range(12)]}
    ((name, kind, size),) = written["listed"]
    assert name == "datastores/outputs/paths/run-1/scored.parquet"
    assert kind == "file"
    assert size > 0


def test_pyarrow_dataset_reads_the_hive_partitions(job):
    events = _value(job, "pyarrow_dataset")
    assert events["files"] == 3  # one file per day
    assert events["rows"] == len(EVENTS)
    assert events["columns"] == {"clicks": [str(c) for c in EVENTS["clicks"]], "day": list(EVENTS["day"])}
    assert events["filtered"] == [5, 6, 7]  # the partition filter reads the one day


def test_pandas_reads_a_partitioned_folder_by_uri(job):
    assert _value(job, "read_parquet_folder") == {"rows": 12, "days": ["2024-01-01", "2024-01-02", "2024-01-03"]}


def test_hugging_face_datasets_loads_parquet_by_uri_offline(job):
    loaded = _value(job, "datasets")
    if "skipped" in loaded:
        pytest.skip(loaded["skipped"])
    assert loaded["rows"] == len(TRAIN)
    assert loaded["columns"] == TRAIN.to_dict("list")
    assert loaded["refused"] == []  # neither the hub nor anything else off this machine was tried
    assert _value(job, "guard_control") == ["name lookup to huggingface.co"]  # ... and a try would be seen


def test_a_refused_read_is_a_permission_error_naming_the_role(job):
    assert _value(job, "denied") == {"type": "DataAccessDeniedError", "aml": True, "role": "Storage Blob Data Reader"}


def test_the_job_cost_one_token_request_per_resource(job):
    match = re.search(r"identity endpoint: (\d+) token request\(s\) \(([^)]*)\)", job["stderr"])
    assert match, job["stderr"]
    per_resource = dict(part.split(": ") for part in match[2].split(", "))
    assert per_resource == {"https://management.azure.com": "1", "https://storage.azure.com": "1"}
    assert match[1] == "2"


def test_the_job_names_no_credential_no_account_and_no_endpoint():
    for word in ("credential", "devstoreaccount1", "account", "token", "https://", "127.0.0.1", "storage_options"):
        assert word not in JOB.lower(), word  # the job writes azureml://datastores/NAME/paths/... only
