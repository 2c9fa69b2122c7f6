"""storage: URLs → fsspec and pyarrow filesystems, on local disk and fsspec's memory filesystem."""

from __future__ import annotations

import os

import fsspec
import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
import pytest

from orchestrator import storage
from orchestrator.driver import launch
from orchestrator.errors import DataError, LaunchError
from orchestrator.job import spec
from tests.conftest import regression_job


@pytest.fixture
def memory_fs():
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]
    yield fs
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]


@pytest.mark.parametrize("url", ["data/x.parquet", "/abs/x", "~/x", "file:///abs/x", "local:///abs/x"])
def test_plain_paths_and_file_urls_are_local(url):
    assert storage.is_local(url)


@pytest.mark.parametrize("url", ["memory://x", "s3://bucket/key", "gs://bucket/key", "https://host/x"])
def test_urls_with_other_protocols_are_not_local(url):
    assert not storage.is_local(url)


def test_relative_paths_become_absolute_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("data/x.parquet") == os.path.join(str(tmp_path), "data", "x.parquet")


def test_home_is_expanded_and_file_urls_become_plain_paths():
    assert storage.absolute("~/x") == os.path.join(os.path.expanduser("~"), "x")
    assert storage.absolute("file:///abs/dir/x.parquet") == "/abs/dir/x.parquet"


def test_glob_patterns_survive_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("data/*.parquet") == f"{tmp_path}/data/*.parquet"


def test_remote_urls_are_returned_unchanged_by_absolute():
    assert storage.absolute("s3://bucket/data/*.parquet") == "s3://bucket/data/*.parquet"
    assert storage.absolute("memory://data") == "memory://data"


def test_local_urls_get_fsspec_local_filesystem_and_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = storage.fsspec_filesystem("sub/x")
    assert isinstance(fs, fsspec.implementations.local.LocalFileSystem)
    assert path == f"{tmp_path}/sub/x"


def test_local_urls_get_native_arrow_local_filesystem(tmp_path):
    fs, path = storage.arrow_filesystem(f"file://{tmp_path}/x.parquet")
    assert isinstance(fs, pyarrow.fs.LocalFileSystem)
    assert path == f"{tmp_path}/x.parquet"


def test_arrow_filesystem_for_local_paths_reads_parquet(tmp_path):
    pq.write_table(pa.table({"a": [1, 2, 3]}), tmp_path / "x.parquet")
    fs, path = storage.arrow_filesystem(str(tmp_path / "x.parquet"))
    assert pq.read_table(path, filesystem=fs).column("a").to_pylist() == [1, 2, 3]


def test_memory_urls_round_trip_through_the_wrapped_arrow_filesystem(memory_fs):
    with memory_fs.open("/data/x.parquet", "wb") as f:
        pq.write_table(pa.table({"a": [4, 5]}), f)
    fs, path = storage.arrow_filesystem("memory://data/x.parquet")
    assert isinstance(fs, pyarrow.fs.PyFileSystem)
    assert path == "/data/x.parquet"
    assert pq.read_table(path, filesystem=fs).column("a").to_pylist() == [4, 5]


def test_arrow_filesystem_for_memory_urls_can_write_what_fsspec_reads(memory_fs):
    fs, path = storage.arrow_filesystem("memory://runs")
    with fs.open_output_stream(storage.join(path, "note.txt")) as out:
        out.write(b"hello")
    assert memory_fs.cat("/runs/note.txt") == b"hello"


def test_unknown_protocol_is_a_data_error_naming_it():
    with pytest.raises(DataError, match="nosuchproto"):
        storage.fsspec_filesystem("nosuchproto://bucket/x")


def test_missing_optional_package_says_what_to_pip_install():
    try:
        import s3fs  # noqa: F401

        pytest.skip("s3fs is installed here")
    except ImportError:
        pass
    with pytest.raises(DataError, match="pip install s3fs"):
        storage.arrow_filesystem("s3://bucket/data")


@pytest.mark.parametrize(
    "url, parts, joined",
    [
        ("s3://bucket/runs", ("exp1", "ckpt"), "s3://bucket/runs/exp1/ckpt"),
        ("s3://bucket/runs/", ("/exp1/",), "s3://bucket/runs/exp1"),
        ("memory://", ("a", "b"), "memory://a/b"),
        ("/abs/dir", ("x.parquet",), "/abs/dir/x.parquet"),
        ("/", ("x",), "/x"),
        ("rel", ("", "x"), "rel/x"),
        ("file:///abs", ("x",), "file:///abs/x"),
    ],
)
def test_join_appends_parts_with_single_slashes_and_keeps_the_protocol(url, parts, joined):
    assert storage.join(url, *parts) == joined


def test_storage_that_cannot_be_written_is_refused_before_ray_starts_naming_it(regression_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    job = spec.from_dict(regression_job(regression_data[0], str(blocker / "runs")))
    said: list[str] = []
    with pytest.raises(LaunchError) as info:
        launch.run(job, on_record=lambda record: said.append(record.get("message", "")))
    assert f"storage '{blocker / 'runs'}'" in str(info.value) and "cannot be written" in str(info.value)
    assert said and not any(message.startswith(("starting", "joining")) for message in said)  # Ray untouched
