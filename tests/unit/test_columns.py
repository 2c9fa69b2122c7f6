"""Column kinds: the `data.columns` overrides as a user writes them (job.columns), and the
one table Arrow type → kind with the overrides on top (data.columns)."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pyarrow as pa
import pytest

from orchestrator.data.columns import (
    ColumnPlan,
    describe_plan,
    infer_kind,
    plan_columns,
)
from orchestrator.errors import DataError
from orchestrator.job.columns import (
    KINDS,
    TRANSFORMS,
    ColumnSpec,
    embedding_dim,
    read_columns,
)
from orchestrator.job.fields import Fields, Report


def read(columns) -> tuple[dict, list[str]]:
    """`data.columns: <columns>` read as the spec would: (specs, problems)."""
    report = Report()
    specs = read_columns(Fields({"columns": columns}, "data", report))
    return specs, report.problems


def only_problem(columns) -> str:
    _, problems = read(columns)
    assert len(problems) == 1, problems
    return problems[0]


# ---- job.columns: what the job file may say ------------------------------------------

def test_a_bare_kind_and_a_mapping_of_options_both_read_as_column_specs():
    specs, problems = read({"zip_code": "categorical",
                            "user_id": {"kind": "categorical", "hash_buckets": 1048576},
                            "income": {"transform": "log1p"}})
    assert problems == []
    assert specs == {"zip_code": ColumnSpec(kind="categorical"),
                     "user_id": ColumnSpec(kind="categorical", hash_buckets=1048576),
                     "income": ColumnSpec(transform="log1p")}


def test_no_columns_section_means_no_overrides():
    report = Report()
    assert read_columns(Fields({"path": "x"}, "data", report)) == {} and report.problems == []


def test_a_misspelled_transform_names_its_key_path_and_the_nearest_transform():
    assert only_problem({"income": {"transform": "lg1p"}}) == (
        "data.columns.income.transform: unknown transform 'lg1p' (did you mean 'log1p'? "
        "allowed: standard, robust, quantile, log1p, none)")


def test_a_misspelled_bare_kind_suggests_the_nearest_kind():
    assert only_problem({"zip": "categoricl"}).startswith(
        "data.columns.zip: unknown column kind 'categoricl' (did you mean 'categorical'?")


def test_an_option_that_does_not_apply_to_the_kind_is_refused():
    problem = only_problem({"age": {"kind": "numeric", "hash_buckets": 64}})
    assert problem.startswith("data.columns.age.hash_buckets: does not apply to a numeric column")
    assert "categorical and tags" in problem


def test_a_vector_takes_only_the_transforms_that_need_no_quantiles():
    assert "does not apply to a vector column" in only_problem({"emb": {"kind": "vector", "transform": "robust"}})


def test_hash_buckets_with_a_vocabulary_option_is_refused():
    problem = only_problem({"user": {"kind": "categorical", "hash_buckets": 8, "min_frequency": 5}})
    assert problem.startswith("data.columns.user.min_frequency: has no effect with hash_buckets")


def test_an_unknown_option_and_a_value_that_is_neither_kind_nor_mapping_are_both_reported():
    _, problems = read({"a": {"knd": "numeric"}, "b": 3, "c": {"hash_buckets": 0}})
    assert problems[0].startswith("data.columns.a.knd: unknown key (did you mean 'kind'?")
    assert problems[1].startswith("data.columns.b: expected a column kind (numeric, boolean")
    assert problems[2] == "data.columns.c.hash_buckets: must be >= 1, got 0"


def test_the_embedding_width_grows_with_the_cardinality_and_stops_at_32():
    assert [embedding_dim(n) for n in (2, 3, 10, 100, 1000, 10**6)] == [2, 3, 6, 21, 32, 32]


def test_the_job_side_imports_neither_torch_nor_ray_nor_the_data_package():
    code = ("import sys, orchestrator.job.columns; "
            "print(sorted(m for m in ('torch', 'ray', 'orchestrator.data') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- data.columns: the one inference table --------------------------------------------

@pytest.mark.parametrize("arrow_type, kind", [
    (pa.int8(), "numeric"), (pa.int64(), "numeric"), (pa.uint32(), "numeric"), (pa.float16(), "numeric"),
    (pa.float32(), "numeric"), (pa.float64(), "numeric"), (pa.decimal128(10, 2), "numeric"),
    (pa.bool_(), "boolean"),
    (pa.string(), "categorical"), (pa.large_string(), "categorical"),
    (pa.dictionary(pa.int32(), pa.string()), "categorical"),
    (pa.timestamp("ms"), "datetime"), (pa.timestamp("ns", tz="Asia/Tokyo"), "datetime"),
    (pa.date32(), "datetime"), (pa.date64(), "datetime"),
    (pa.list_(pa.float32(), 8), "vector"), (pa.list_(pa.int16(), 3), "vector"),
    (pa.list_(pa.float64()), "vector"), (pa.large_list(pa.float32()), "vector"),
    (pa.list_(pa.string()), "tags"), (pa.large_list(pa.int64()), "tags"), (pa.list_(pa.string(), 2), "tags"),
    (pa.struct([("a", pa.int64())]), None), (pa.map_(pa.string(), pa.int64()), None), (pa.binary(), None),
    (pa.list_(pa.list_(pa.float32())), None), (pa.null(), None), (pa.list_(pa.bool_()), None),
])
def test_every_arrow_type_has_its_default_kind_or_none(arrow_type, kind):
    assert infer_kind(arrow_type) == kind


SCHEMA = pa.schema([
    ("income", pa.float64()), ("age", pa.int32()), ("zip", pa.string()), ("member", pa.bool_()),
    ("seen", pa.timestamp("us", tz="UTC")), ("emb", pa.list_(pa.float32(), 4)), ("hist", pa.list_(pa.float32())),
    ("tags", pa.list_(pa.string())), ("y", pa.float64()),
])


def problems_of(schema=SCHEMA, label="y", features=None, exclude=(), overrides=None, **kw) -> list[str]:
    with pytest.raises(DataError) as info:
        plan_columns(schema, label, features, exclude, overrides or {}, **kw)
    return [line[4:] for line in str(info.value).splitlines()[1:]]


def test_every_feature_gets_its_inferred_kind_in_order_and_the_label_comes_last():
    plans = plan_columns(SCHEMA, "y", None, [], {})
    assert [(p.name, p.kind, p.role) for p in plans] == [
        ("income", "numeric", "feature"), ("age", "numeric", "feature"), ("zip", "categorical", "feature"),
        ("member", "boolean", "feature"), ("seen", "datetime", "feature"), ("emb", "vector", "feature"),
        ("hist", "vector", "feature"), ("tags", "tags", "feature"), ("y", "numeric", "label")]
    assert plans[0] == ColumnPlan(name="income", kind="numeric", arrow_type="double", transform="standard")
    assert plans[2] == ColumnPlan(name="zip", kind="categorical", arrow_type="string", min_frequency=1,
                                  max_categories=10_000)
    assert plans[5].vector_length == 4 and plans[6].vector_length is None


def test_a_length_hint_fixes_a_list_of_floats_as_a_vector_of_that_length():
    plans = plan_columns(SCHEMA, "y", ["hist"], [], {}, constant_lengths={"hist": 16})
    assert plans[0].kind == "vector" and plans[0].vector_length == 16


def test_an_integer_column_can_be_made_categorical_and_hashed():
    overrides = {"age": ColumnSpec(kind="categorical"), "zip": ColumnSpec(kind="categorical", hash_buckets=1024)}
    age, zip_code, _ = plan_columns(SCHEMA, "y", ["age", "zip"], [], overrides)
    assert (age.kind, age.source, age.max_categories) == ("categorical", "override", 10_000)
    assert age.hash_buckets is None
    assert (zip_code.hash_buckets, zip_code.min_frequency, zip_code.max_categories) == (1024, None, None)


def test_features_and_exclude_choose_the_columns():
    plans = plan_columns(SCHEMA, "y", None, ["tags", "hist"], {})
    assert [p.name for p in plans] == ["income", "age", "zip", "member", "seen", "emb", "y"]
    assert [p.name for p in plan_columns(SCHEMA, "y", ["zip", "income"], [], {})] == ["zip", "income", "y"]


def test_a_struct_column_is_refused_naming_it_its_type_and_the_way_out():
    schema = SCHEMA.append(pa.field("meta", pa.struct([("a", pa.int64())])))
    (problem,) = problems_of(schema)
    assert problem.startswith("column 'meta' has Arrow type struct<a: int64>, which no column kind reads")
    assert "data.exclude: [meta]" in problem
    assert len(plan_columns(schema, "y", None, ["meta"], {})) == 9


def test_misspelled_columns_in_features_exclude_and_overrides_suggest_the_nearest_one():
    problems = problems_of(features=["incom", "age"], exclude=["agee"],
                           overrides={"zipp": ColumnSpec(kind="categorical")})
    assert problems[0].startswith("data.features: no column 'incom' in the data (did you mean 'income'? columns:")
    assert problems[1].startswith("data.exclude: no column 'agee' in the data (did you mean 'age'?")
    assert problems[2].startswith("data.columns.zipp: no column 'zipp' in the data (did you mean 'zip'?")
    assert len(problems) == 3


def test_an_override_kind_that_cannot_read_the_type_names_the_kinds_that_can():
    (problem,) = problems_of(overrides={"zip": ColumnSpec(kind="vector")})
    assert problem == ("data.columns.zip.kind: 'vector' cannot read column 'zip' of Arrow type string (vector "
                       "reads a fixed_size_list, list or large_list of numbers); kinds that can: categorical")


def test_an_option_that_does_not_apply_to_the_inferred_kind_is_refused():
    (problem,) = problems_of(overrides={"zip": ColumnSpec(transform="log1p")})
    assert problem.startswith("data.columns.zip.transform: does not apply to a categorical column")
    assert "inferred from string" in problem


def test_overrides_on_the_label_or_on_an_unused_column_are_refused():
    problems = problems_of(exclude=["tags"], overrides={"y": ColumnSpec(kind="numeric"),
                                                        "tags": ColumnSpec(hash_buckets=8)})
    assert problems[0].startswith("data.columns.y: 'y' is the label")
    assert problems[1].startswith("data.columns.tags: column 'tags' is not a feature of this job")


def test_the_label_cannot_be_excluded_and_its_type_must_suit_the_task():
    assert problems_of(exclude=["y"])[0].startswith("data.exclude: 'y' is the label")
    schema = pa.schema([("x", pa.float64()), ("y", pa.string())])
    assert problems_of(schema) == ["label column 'y' has Arrow type string; a regression label must be "
                                   "integer, floating point, decimal or bool"]
    assert plan_columns(schema, "y", None, [], {}, classification=True)[-1].kind == "categorical"


def test_every_problem_comes_in_one_error():
    schema = SCHEMA.append(pa.field("blob", pa.binary()))
    problems = problems_of(schema, label="why", exclude=["nope"], overrides={"zip": ColumnSpec(kind="datetime")})
    assert len(problems) == 4
    assert problems[0].startswith("data.label: no column 'why'")


@pytest.mark.parametrize("kind", KINDS)
def test_describe_plan_prints_one_aligned_line_per_column(kind):
    schema = pa.schema([("c", {"numeric": pa.float64(), "boolean": pa.bool_(), "categorical": pa.string(),
                               "datetime": pa.date32(), "vector": pa.list_(pa.float32(), 3),
                               "tags": pa.list_(pa.string())}[kind]), ("label", pa.int64())])
    lines = describe_plan(plan_columns(schema, "label", None, [], {}, classification=True))
    assert len(lines) == 2 and lines[0].startswith("c      ") and lines[1].startswith("label  label")
    assert lines[0].rindex("  (") == lines[1].rindex("  (")


def test_plans_pickle_and_the_transforms_are_declared_once():
    plans = plan_columns(SCHEMA, "y", None, [], {})
    assert pickle.loads(pickle.dumps(plans)) == plans
    assert TRANSFORMS == ("standard", "robust", "quantile", "log1p", "none")
