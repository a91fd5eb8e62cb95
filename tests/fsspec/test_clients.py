"""What pandas, PyArrow, fsspec's caches and ``datasets`` call on the azureml file system, one client at a time.

In-process, on the job environment of ``conftest.py`` (identity endpoint, ARM emulator, Azurite): quicker to
diagnose than the sandbox job of ``test_end_to_end.py``, which runs the same libraries as a user's job does.
"""

from __future__ import annotations

import gzip

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import fsspec

pytestmark = pytest.mark.azurite


def test_pyarrow_sees_files_folders_and_missing_paths_with_sizes_and_mtimes(azureml_fs, root):
    azureml_fs.pipe_file(f"{root}/a/x.csv", b"a,b\n1,2\n")
    azureml_fs.pipe_file(f"{root}/a/b/y.csv", b"a,b\n3,4\n")
    arrow = pafs.PyFileSystem(pafs.FSSpecHandler(azureml_fs))
    file, folder, missing = arrow.get_file_info([f"{root}/a/x.csv", f"{root}/a", f"{root}/nope"])
    assert (file.type, file.size) == (pafs.FileType.File, 8)
    assert file.mtime is not None
    assert folder.type == pafs.FileType.Directory
    assert missing.type == pafs.FileType.NotFound
    listed = arrow.get_file_info(pafs.FileSelector(root, recursive=True))
    assert [(i.path.removeprefix(root), i.type) for i in listed] == [
        ("/a", pafs.FileType.Directory),
        ("/a/b", pafs.FileType.Directory),
        ("/a/b/y.csv", pafs.FileType.File),
        ("/a/x.csv", pafs.FileType.File),
    ]


def test_pyarrow_writes_moves_and_deletes_through_the_handler(azureml_fs, root):
    arrow = pafs.PyFileSystem(pafs.FSSpecHandler(azureml_fs))
    with arrow.open_output_stream(f"{root}/out.bin") as out:
        out.write(b"pyarrow wrote this")
    with arrow.open_input_file(f"{root}/out.bin") as file:
        assert (file.size(), file.read_at(5, 8)) == (18, b"wrote")
    arrow.create_dir(f"{root}/empty")
    arrow.move(f"{root}/out.bin", f"{root}/moved.bin")
    assert sorted(i.base_name for i in arrow.get_file_info(pafs.FileSelector(root))) == ["empty", "moved.bin"]
    arrow.delete_dir(f"{root}/empty")
    arrow.delete_file(f"{root}/moved.bin")
    assert arrow.get_file_info(pafs.FileSelector(root, allow_not_found=True)) == []


def test_a_parquet_reader_reads_one_row_group_of_many(azureml_fs, root):
    table = pa.table({"x": list(range(50_000)), "y": [str(i) for i in range(50_000)]})
    with azureml_fs.open(f"{root}/big.parquet", "wb") as out:
        pq.write_table(table, out, row_group_size=5_000)
    with azureml_fs.open(f"{root}/big.parquet", "rb") as file:
        parquet = pq.ParquetFile(file)
        assert (parquet.metadata.num_rows, parquet.metadata.num_row_groups) == (50_000, 10)
        assert parquet.read_row_group(7, columns=["y"]).column("y").to_pylist()[:2] == ["35000", "35001"]
    frame = pd.read_parquet(f"azureml://{root}/big.parquet", filters=[("x", "<", 3)], columns=["y"])
    assert frame["y"].tolist() == ["0", "1", "2"]


def test_partitioned_writes_from_pyarrow_and_pandas_read_back(azureml_fs, root):
    table = pa.table({"k": ["x", "y", "x"], "v": [1, 2, 3]})
    ds.write_dataset(table, f"{root}/arrow", filesystem=azureml_fs, format="parquet", partitioning=["k"],
                     partitioning_flavor="hive")  # fmt: skip
    assert azureml_fs.find(f"{root}/arrow") == [f"{root}/arrow/k=x/part-0.parquet", f"{root}/arrow/k=y/part-0.parquet"]
    back = ds.dataset(f"{root}/arrow", filesystem=azureml_fs, partitioning="hive").to_table()
    assert sorted(back.to_pylist(), key=lambda row: row["v"]) == sorted(table.to_pylist(), key=lambda row: row["v"])
    pd.DataFrame({"k": ["x", "y"], "v": [1, 2]}).to_parquet(f"azureml://{root}/pandas", partition_cols=["k"])
    assert pd.read_parquet(f"azureml://{root}/pandas").sort_values("v").to_dict("list") == {
        "v": [1, 2], "k": ["x", "y"]
    }  # fmt: skip


def test_text_mode_and_compression_are_fsspecs_over_binary_files(azureml_fs, root):
    pd.DataFrame({"a": [1, 2]}).to_csv(f"azureml://{root}/t.csv.gz", index=False)
    assert gzip.decompress(azureml_fs.cat_file(f"{root}/t.csv.gz")) == b"a\n1\n2\n"
    assert pd.read_csv(f"azureml://{root}/t.csv.gz")["a"].tolist() == [1, 2]
    with fsspec.open(f"azureml://{root}/t.txt", "wt") as out:
        out.write("one\ntwo\n")
    with fsspec.open(f"azureml://{root}/t.txt", "rt") as file:
        assert file.readlines() == ["one\n", "two\n"]
    with pytest.raises(NotImplementedError, match="'ab' is not supported"):
        fsspec.open(f"azureml://{root}/t.txt", "at").open()


def test_fsspecs_file_cache_sees_a_replaced_blob(azureml_fs, root, tmp_path):
    azureml_fs.pipe_file(f"{root}/c.txt", b"first")
    options = {"filecache": {"cache_storage": str(tmp_path), "check_files": True}}
    with fsspec.open(f"filecache::azureml://{root}/c.txt", "rb", **options) as file:
        assert file.read() == b"first"
    etag = azureml_fs.ukey(f"{root}/c.txt")
    azureml_fs.pipe_file(f"{root}/c.txt", b"second")
    assert azureml_fs.ukey(f"{root}/c.txt") != etag  # the ETag: what the cache compares
    with fsspec.open(f"filecache::azureml://{root}/c.txt", "rb", **options) as file:
        assert file.read() == b"second"


def test_a_missing_blob_is_file_not_found_naming_the_path_the_caller_gave(azureml_fs, root):
    missing = f"{root}/nope.csv"
    for call in (azureml_fs.cat_file, azureml_fs.open, azureml_fs.info, azureml_fs.rm_file):
        with pytest.raises(FileNotFoundError) as caught:
            call(missing)
        assert missing in str(caught.value), call
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        pd.read_csv(f"azureml://{missing}")


def test_datasets_resolves_a_glob_over_azureml(azureml_fs, root, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)  # no download-count request
    azureml_fs.pipe_file(f"{root}/a/x.csv", b"a,b\n1,2\n")
    azureml_fs.pipe_file(f"{root}/a/b/y.csv", b"a,b\n3,4\n")
    azureml_fs.pipe_file(f"{root}/a/notes.txt", b"not a csv")
    loaded = datasets.load_dataset("csv", data_files=f"azureml://{root}/**/*.csv", split="train",
                                   cache_dir=str(tmp_path))  # fmt: skip
    assert sorted(zip(loaded["a"], loaded["b"], strict=True)) == [(1, 2), (3, 4)]


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("cannot format this cell")


def test_a_pandas_write_that_fails_midway_leaves_no_blob_and_the_old_one_untouched(azureml_fs, root, caplog):
    uri = f"azureml://{root}/frame.csv"
    pd.DataFrame({"a": [1, 2]}).to_csv(uri, index=False)
    unwritable = pd.DataFrame({"a": [1, 2, _Unprintable()]})  # pandas opens the file, then fails formatting
    for target in (uri, f"azureml://{root}/new.csv"):
        with pytest.raises(RuntimeError, match="cannot format"):
            unwritable.to_csv(target, index=False)
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records if r.name == "aml_identity.fsspec"] == [
        "not committed - closed while RuntimeError was raised (the blob is left as it was)"
    ] * 2  # pandas did open (and close) each file
    assert pd.read_csv(uri)["a"].tolist() == [1, 2]
    assert not azureml_fs.exists(f"{root}/new.csv")


def test_the_long_form_uri_reads_outside_a_job_workspace(azureml_fs, root):
    from .conftest import RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE

    pd.DataFrame({"a": [1, 2]}).to_csv(f"azureml://{root}/long.csv", index=False)
    long_form = (
        f"azureml://subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}/workspaces/{WORKSPACE}/{root}/long.csv"
    )
    assert pd.read_csv(long_form)["a"].tolist() == [1, 2]
