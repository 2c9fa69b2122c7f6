"""data.source: discovery, footers once, schema and column checks → DatasetIndex."""

from __future__ import annotations

import pickle

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.data.index import DatasetIndex, RowGroup
from orchestrator.data.source import scan
from orchestrator.errors import DataError


def table(n: int, start: int = 0, **extra) -> pa.Table:
    """n rows: float features x1, x2 and an integer label y counting from `start`."""
    columns = {
        "x1": pa.array([float(i) for i in range(start, start + n)], pa.float32()),
        "x2": pa.array([2.0 * i for i in range(start, start + n)], pa.float64()),
        "y": pa.array(list(range(start, start + n)), pa.int64()),
    }
    columns.update(extra)
    return pa.table(columns)


def write(path, tbl: pa.Table, row_group_size: int | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(tbl, path, row_group_size=row_group_size)
    return str(path)


@pytest.fixture
def memory_fs():
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]
    yield fs
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]


def scan_error(*args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        scan(*args, **kwargs)
    return str(info.value)


# Discovery


def test_a_directory_yields_its_parquet_files_recursively_and_sorted(tmp_path):
    write(tmp_path / "b.parquet", table(2))
    write(tmp_path / "a.pq", table(2))
    write(tmp_path / "sub" / "c.parq", table(2))
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "notes.txt").write_text("not data")
    write(tmp_path / ".hidden.parquet", table(2))
    write(tmp_path / "_temporary" / "0" / "part.parquet", table(2))
    index = scan(str(tmp_path), label="y")
    assert index.files == (f"{tmp_path}/a.pq", f"{tmp_path}/b.parquet", f"{tmp_path}/sub/c.parq")


def test_a_glob_yields_the_matching_files_sorted(tmp_path):
    for name in ["part-2.parquet", "part-1.parquet", "other.parquet"]:
        write(tmp_path / name, table(3))
    index = scan(str(tmp_path / "part-*.parquet"), label="y")
    assert index.files == (f"{tmp_path}/part-1.parquet", f"{tmp_path}/part-2.parquet")
    assert index.url == f"{tmp_path}/part-*.parquet"


def test_a_single_file_yields_just_that_file(tmp_path):
    write(tmp_path / "a.parquet", table(4))
    write(tmp_path / "b.parquet", table(4))
    index = scan(f"file://{tmp_path}/a.parquet", label="y")
    assert index.files == (f"{tmp_path}/a.parquet",)
    assert index.url == f"{tmp_path}/a.parquet"


def test_a_relative_path_is_recorded_as_absolute(tmp_path, monkeypatch):
    write(tmp_path / "data" / "a.parquet", table(4))
    monkeypatch.chdir(tmp_path)
    index = scan("data", label="y")
    assert index.url == f"{tmp_path}/data"
    assert index.files == (f"{tmp_path}/data/a.parquet",)


# Row groups and ids


def test_row_groups_and_first_row_ids_count_across_uneven_files(tmp_path):
    write(tmp_path / "a.parquet", table(10, 0), row_group_size=4)  # 4, 4, 2
    write(tmp_path / "b.parquet", table(3, 10), row_group_size=5)  # 3
    write(tmp_path / "c.parquet", table(7, 13), row_group_size=3)  # 3, 3, 1
    index = scan(str(tmp_path), label="y")
    assert index.row_groups == (
        RowGroup(file=0, index=0, num_rows=4, first_row=0),
        RowGroup(file=0, index=1, num_rows=4, first_row=4),
        RowGroup(file=0, index=2, num_rows=2, first_row=8),
        RowGroup(file=1, index=0, num_rows=3, first_row=10),
        RowGroup(file=2, index=0, num_rows=3, first_row=13),
        RowGroup(file=2, index=1, num_rows=3, first_row=16),
        RowGroup(file=2, index=2, num_rows=1, first_row=19),
    )
    assert index.num_rows == 20


def test_first_row_ids_match_the_rows_actually_stored(tmp_path):
    write(tmp_path / "a.parquet", table(5, 0), row_group_size=2)
    write(tmp_path / "b.parquet", table(6, 5), row_group_size=4)
    index = scan(str(tmp_path), label="y")
    fs = index.filesystem()
    for rg in index.row_groups:
        rows = pq.ParquetFile(fs.open_input_file(index.files[rg.file])).read_row_group(rg.index)
        assert rows.column("y").to_pylist() == list(range(rg.first_row, rg.first_row + rg.num_rows))


def test_an_empty_file_among_others_contributes_no_row_groups(tmp_path):
    write(tmp_path / "a.parquet", table(3))
    write(tmp_path / "b.parquet", table(0))
    write(tmp_path / "c.parquet", table(2, 3))
    index = scan(str(tmp_path), label="y")
    assert [(rg.file, rg.first_row) for rg in index.row_groups] == [(0, 0), (2, 3)]
    assert index.num_rows == 5


# Columns, label


def test_features_default_to_every_column_but_the_label_in_schema_order(tmp_path):
    write(tmp_path / "a.parquet", pa.table({"b": [1.0], "y": [0], "a": [2], "flag": [True]}))
    index = scan(str(tmp_path), label="y")
    assert index.features == ("b", "a", "flag")
    assert index.label == "y"


def test_explicit_features_keep_their_order_and_extra_columns_are_fine(tmp_path):
    write(tmp_path / "a.parquet", table(3, text=pa.array(["p", "q", "r"])))
    index = scan(str(tmp_path), label="y", features=["x2", "x1"])
    assert index.features == ("x2", "x1")


def test_every_column_gets_its_kind_from_its_arrow_type(tmp_path):
    write(tmp_path / "a.parquet", table(2, city=pa.array(["a", "b"]), member=pa.array([True, None])))
    index = scan(str(tmp_path), label="y")
    kinds = {plan.name: plan.kind for plan in index.columns}
    assert kinds == {"x1": "numeric", "x2": "numeric", "city": "categorical", "member": "boolean", "y": "numeric"}


def test_a_string_label_is_a_classification_label(tmp_path):
    write(tmp_path / "a.parquet", pa.table({"x": [1.0, 2.0], "y": ["cat", "dog"]}))
    assert scan(str(tmp_path), label="y", classification=True).columns[-1].kind == "categorical"
    message = scan_error(str(tmp_path), label="y")  # a regression target must be a number
    assert "'y'" in message and "string" in message


def test_nulls_are_counted_from_the_footer_statistics(tmp_path):
    write(tmp_path / "a.parquet", table(3))
    write(tmp_path / "b.parquet", table(3, x1=pa.array([1.0, None, None], pa.float32()),
                                        y=pa.array([1, None, 0], pa.int64())), row_group_size=1)
    index = scan(str(tmp_path), label="y")
    assert dict(index.null_counts)["x1"] == 2 and index.label_nulls == 1


def test_a_struct_column_is_refused_naming_it_its_type_and_the_way_out(tmp_path):
    write(tmp_path / "a.parquet", table(2, point=pa.array([{"a": 1}, {"a": 2}])))
    message = scan_error(str(tmp_path), label="y")
    assert "'point'" in message and "struct" in message and "data.exclude" in message


# memory:// end to end


def test_memory_filesystem_works_end_to_end(memory_fs):
    for name, start in [("b.parquet", 4), ("a.parquet", 0)]:
        with memory_fs.open(f"/data/{name}", "wb") as f:
            pq.write_table(table(4, start), f, row_group_size=2)
    index = scan("memory://data", label="y")
    assert index.url == "memory://data"
    assert index.files == ("/data/a.parquet", "/data/b.parquet")
    assert [rg.first_row for rg in index.row_groups] == [0, 2, 4, 6]
    rows = pq.ParquetFile(index.filesystem().open_input_file(index.files[0])).read_row_group(1)
    assert rows.column("y").to_pylist() == [2, 3]


def test_memory_globs_work(memory_fs):
    for name in ["p1.parquet", "p2.parquet", "q.parquet"]:
        with memory_fs.open(f"/data/{name}", "wb") as f:
            pq.write_table(table(2), f)
    assert scan("memory://data/p*.parquet", label="y").files == ("/data/p1.parquet", "/data/p2.parquet")


# Errors


def test_a_missing_path_names_the_url(tmp_path):
    message = scan_error(str(tmp_path / "nope"), label="y")
    assert f"{tmp_path}/nope" in message and "does not exist" in message


def test_a_glob_that_matches_nothing_names_the_pattern(tmp_path):
    message = scan_error(str(tmp_path / "*.parquet"), label="y")
    assert f"{tmp_path}/*.parquet" in message and "glob" in message


def test_a_directory_without_parquet_files_says_what_was_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    message = scan_error(str(tmp_path), label="y")
    assert str(tmp_path) in message and ".parquet" in message


def test_a_file_that_is_not_parquet_is_named_as_not_parquet_or_corrupt(tmp_path):
    write(tmp_path / "a.parquet", table(2))
    (tmp_path / "b.parquet").write_bytes(b"this is not a parquet file at all")
    message = scan_error(str(tmp_path), label="y")
    assert f"{tmp_path}/b.parquet" in message and "not Parquet or is corrupt" in message
    assert f"{tmp_path}/a.parquet" not in message.split("\n", 1)[1]


def test_a_type_mismatch_between_files_names_file_column_and_both_types(tmp_path):
    write(tmp_path / "a.parquet", table(2))
    write(tmp_path / "b.parquet", table(2, x2=pa.array([1, 2], pa.int32())))
    message = scan_error(str(tmp_path), label="y")
    assert f"{tmp_path}/b.parquet" in message and "'x2'" in message
    assert "int32" in message and "double" in message


def test_a_type_mismatch_in_an_unused_column_is_fine(tmp_path):
    write(tmp_path / "a.parquet", table(2, note=pa.array([1, 2])))
    write(tmp_path / "b.parquet", table(2, note=pa.array(["p", "q"])))
    assert scan(str(tmp_path), label="y", features=["x1", "x2"]).num_rows == 4


def test_a_missing_label_names_the_file_and_lists_the_available_columns(tmp_path):
    write(tmp_path / "a.parquet", table(2))
    message = scan_error(str(tmp_path), label="target")
    assert f"{tmp_path}/a.parquet" in message and "'target'" in message
    assert "x1, x2, y" in message


def test_a_feature_missing_in_one_file_names_that_file_and_column(tmp_path):
    write(tmp_path / "a.parquet", table(2))
    write(tmp_path / "b.parquet", table(2).drop_columns(["x2"]))
    message = scan_error(str(tmp_path), label="y", features=["x1", "x2"])
    assert f"{tmp_path}/b.parquet: feature column 'x2' is missing" in message
    assert "available columns: x1, y" in message


def test_an_empty_dataset_names_the_url(tmp_path):
    write(tmp_path / "a.parquet", table(0))
    message = scan_error(str(tmp_path), label="y")
    assert str(tmp_path) in message and "no rows" in message


def test_every_problem_across_files_is_reported_in_one_error(tmp_path):
    write(tmp_path / "a.parquet", table(2, city=pa.array(["a", "b"])))
    write(tmp_path / "b.parquet", table(2, x1=pa.array([1, 2], pa.int8())))
    (tmp_path / "c.parquet").write_bytes(b"garbage")
    message = scan_error(str(tmp_path), label="y", features=["x1", "city"])
    assert "3 problem(s)" in message  # c unreadable, city missing in b, x1 int8 vs float
    assert "c.parquet" in message and "'city'" in message and "int8" in message


def test_an_unknown_column_suggests_the_nearest_existing_one(tmp_path):
    write(tmp_path / "a.parquet", table(2, city=pa.array(["a", "b"])))
    assert "did you mean 'city'?" in scan_error(str(tmp_path), label="y", features=["x1", "cty"])


def test_the_label_listed_as_a_feature_is_refused(tmp_path):
    write(tmp_path / "a.parquet", table(2))
    assert "'y' is the label" in scan_error(str(tmp_path), label="y", features=["x1", "y"])


def test_a_dataset_with_only_a_label_has_no_features(tmp_path):
    write(tmp_path / "a.parquet", pa.table({"y": [1, 2]}))
    assert "no feature column is left" in scan_error(str(tmp_path), label="y")


# Pickling


def test_data_error_survives_pickle(tmp_path):
    with pytest.raises(DataError) as info:
        scan(str(tmp_path / "nope"), label="y")
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is DataError and str(copy) == str(info.value)


def test_dataset_index_pickles_small_and_round_trips(tmp_path):
    for i in range(4):
        write(tmp_path / f"part-{i}.parquet", table(100, 100 * i), row_group_size=10)
    index = scan(str(tmp_path), label="y")
    blob = pickle.dumps(index)
    assert len(index.row_groups) == 40
    assert len(blob) < 4096
    copy = pickle.loads(blob)
    assert copy == index and isinstance(copy, DatasetIndex)
    assert copy.filesystem().get_file_info(copy.files[0]).size > 0
