"""aml-identity download URI DEST / upload SRC URI, with --max-concurrency, --no-progress and --json."""

from __future__ import annotations

import json

import pytest

from aml_identity.cli import main

pytestmark = pytest.mark.azurite


def test_download_and_upload_with_a_json_summary(storage_job, store, tree, tmp_path, capsys):
    store.seed({"in/a.txt": b"alpha", "in/sub/b.txt": b"beta"})

    assert main(["download", store.uri("in/"), str(tmp_path / "in"), "--json", "--max-concurrency", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["direction"], summary["transferred_files"], summary["bytes_transferred"]) == ("download", 2, 9)
    assert tree(tmp_path / "in") == {"a.txt": b"alpha", "sub/b.txt": b"beta"}

    assert main(["upload", str(tmp_path / "in"), store.uri("out/"), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["direction"], summary["transferred_files"], summary["destination"]) == (
        "upload", 2, store.uri("out/"),
    )  # fmt: skip
    assert store.contents("out/") == {"a.txt": b"alpha", "sub/b.txt": b"beta"}


def test_text_summary_says_what_was_skipped(storage_job, store, tmp_path, capsys):
    store.seed({"in/a.txt": b"alpha"})
    assert main(["download", store.uri("in/"), str(tmp_path / "in"), "--no-progress"]) == 0
    assert main(["download", store.uri("in/"), str(tmp_path / "in"), "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("downloaded 1 file(s), 0.0 MiB in ")
    assert out[1].startswith("downloaded 0 file(s)") and "1 already up to date" in out[1]


def test_errors_are_one_line_with_the_fix_and_exit_1(storage_job, tmp_path, capsys):
    assert main(["download", "s3://bucket/key", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aml-identity: error: 's3://bucket/key' is not a datastore URI")
    assert main(["upload", str(tmp_path / "missing"), "wasbs://c1c@devstoreaccount1.blob.core.windows.net/x/"]) == 1
    assert "is not a file or a folder" in capsys.readouterr().err


def test_bad_concurrency_is_refused(storage_job, tmp_path, capsys):
    uri = "wasbs://c1c@devstoreaccount1.blob.core.windows.net/x/"
    assert main(["download", uri, str(tmp_path), "--max-concurrency", "0"]) == 1
    assert "max_concurrency=0 must be an integer from 1 to 256" in capsys.readouterr().err
