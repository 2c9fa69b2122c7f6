"""Fitted preprocessing on hand-made Arrow tables: the numbers of every transform against
numpy, missing values, unseen values, labels, JSON, and a fit that does not depend on how
the row groups were split between workers."""

from __future__ import annotations

import datetime as dt
import math
import os
import subprocess
import sys
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pytest

from orchestrator.data import summaries
from orchestrator.data.columns import plan_columns
from orchestrator.data.partials import Partial, fit_partial
from orchestrator.data.preprocess import Preprocessing, combine, transform
from orchestrator.data.summaries import stable_hash
from orchestrator.data.transforms import KNOTS, VALUE_BOUND
from orchestrator.errors import DataError
from orchestrator.job.columns import TRANSFORMS, ColumnSpec, embedding_dim

NAN, INF = math.nan, math.inf


def with_label(columns: dict, label=None) -> pa.Table:
    """A table of `columns` plus a regression label `y` (0, 1, 2, ...) unless one is given."""
    n = len(next(iter(columns.values())))
    return pa.table({**columns, "y": label if label is not None else pa.array(np.arange(n, dtype=np.float64))})


def fit(tables, overrides=None, classification=False):
    """(plans, Preprocessing) fitted with one partial per table, each table a row group."""
    tables = tables if isinstance(tables, list) else [tables]
    plans = plan_columns(tables[0].schema, "y", None, [], overrides or {}, classification=classification)
    return plans, combine(plans, [fit_partial(plans, t) for t in tables])


def encode(pre, columns: dict) -> np.ndarray:
    """The numeric block of `columns` (no label) through `pre`, as float64."""
    return transform(pre, pa.table(columns)).numeric.astype(np.float64)


# ---- numeric transforms against numpy ---------------------------------------------------------

X = np.array([1.0, 2.0, 3.0, 4.0, 10.0, -7.5, 0.25, 100.0])


def test_standard_scales_by_the_training_mean_and_population_std():
    _, pre = fit(with_label({"x": X}))
    assert np.allclose(encode(pre, {"x": X})[:, 0], (X - X.mean()) / X.std(), rtol=1e-6)


def test_log1p_takes_the_signed_log_then_standardizes():
    _, pre = fit(with_label({"x": X}), {"x": ColumnSpec(transform="log1p")})
    logged = np.sign(X) * np.log1p(np.abs(X))
    assert np.allclose(encode(pre, {"x": X})[:, 0], (logged - logged.mean()) / logged.std(), rtol=1e-6)


def test_robust_centres_on_the_median_scales_by_the_iqr_and_clips_at_five():
    x = np.r_[np.random.default_rng(0).normal(size=200), 50.0, -80.0]
    _, pre = fit(with_label({"x": x}), {"x": ColumnSpec(transform="robust")})
    q25, median, q75 = np.quantile(x, [0.25, 0.5, 0.75], method="hazen")
    assert pre.columns[0].median == pytest.approx(median, abs=1e-12)
    assert np.allclose(encode(pre, {"x": x})[:, 0], np.clip((x - median) / (q75 - q25), -5, 5), atol=1e-6)


def test_quantile_maps_onto_a_standard_normal_through_the_training_quantiles():
    x = np.random.default_rng(1).lognormal(size=250)
    _, pre = fit(with_label({"x": x}), {"x": ColumnSpec(transform="quantile")})
    knots = np.quantile(x, KNOTS, method="hazen")
    assert np.allclose(pre.columns[0].quantiles, knots, rtol=1e-12)
    expected = [NormalDist().inv_cdf(min(max(p, 1e-7), 1 - 1e-7)) for p in np.interp(x, knots, KNOTS)]
    assert np.allclose(encode(pre, {"x": x})[:, 0], expected, atol=1e-5)


def test_quantile_puts_a_value_tied_over_many_knots_in_the_middle_of_its_share():
    x = np.r_[np.zeros(60), np.arange(1.0, 41.0)]  # 60% zeros
    _, pre = fit(with_label({"x": x}), {"x": ColumnSpec(transform="quantile")})
    assert encode(pre, {"x": [0.0]})[0, 0] == pytest.approx(NormalDist().inv_cdf(0.3), abs=0.02)


def test_none_leaves_the_values_as_they_are():
    _, pre = fit(with_label({"x": X}), {"x": ColumnSpec(transform="none")})
    assert np.array_equal(encode(pre, {"x": X})[:, 0], X.astype(np.float32))


def test_a_constant_column_scales_by_one_instead_of_dividing_by_zero():
    _, pre = fit(with_label({"x": np.full(5, 3.0)}))
    assert pre.columns[0].std == 1.0 and np.array_equal(encode(pre, {"x": [3.0, 4.0]})[:, 0], [0.0, 1.0])


# ---- missing values ------------------------------------------------------------------------------

def test_null_nan_and_inf_are_all_missing_filled_with_the_median_and_flagged():
    x = pa.array([1.0, None, 2.0, NAN, 3.0, INF, 10.0, -INF])
    _, pre = fit(with_label({"x": x}))
    stats = pre.columns[0]
    assert (stats.count, stats.missing, stats.median) == (4, 4, 2.5)
    assert pre.input_description().numeric_names == ("x", "x__missing")
    out = encode(pre, {"x": x})
    finite = np.array([1.0, 2.0, 3.0, 10.0])
    assert np.allclose(out[[1, 3, 5, 7], 0], (2.5 - finite.mean()) / finite.std())
    assert out[:, 1].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]


def test_no_missing_indicator_when_the_training_rows_had_no_missing_value():
    _, pre = fit(with_label({"x": X}))
    assert pre.input_description().numeric_names == ("x",)
    assert encode(pre, {"x": pa.array([None], pa.float64())}).shape == (1, 1)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_extreme_values_never_seen_in_training_stay_finite(name):
    _, pre = fit(with_label({"x": X}), {"x": ColumnSpec(transform=name)})
    out = encode(pre, {"x": [1e308, -1e308, INF, -INF, NAN, 1e-300, -3e38]})
    assert np.isfinite(out).all()
    if name != "none":
        assert np.abs(out).max() <= VALUE_BOUND


def test_a_boolean_is_zero_or_one_with_a_missing_indicator_when_nulls_were_seen():
    _, pre = fit(with_label({"b": pa.array([True, False, None, True])}))
    assert encode(pre, {"b": pa.array([True, False, None])}).tolist() == [[1, 0], [0, 0], [0, 1]]


# ---- categorical and tags ------------------------------------------------------------------------

def test_categorical_ids_are_zero_for_missing_one_for_unseen_then_the_vocabulary_by_count():
    _, pre = fit(with_label({"s": pa.array(["b", "a", "b", "c", "b", "a", None])}))
    stats = pre.columns[0]
    assert (stats.values, stats.counts, stats.missing) == (("b", "a", "c"), (3, 2, 1), 1)
    out = transform(pre, pa.table({"s": ["a", "zzz", None, "c", "b"]}))
    assert out.codes.dtype == np.int64 and out.codes[:, 0].tolist() == [3, 1, 0, 4, 2]


def test_vocabulary_ties_break_by_value_and_min_frequency_and_max_categories_apply():
    values = pa.array(["x", "w", "x", "w", "v", "u", "u"])
    _, pre = fit(with_label({"s": values}))
    assert pre.columns[0].values == ("u", "w", "x", "v")
    _, pre = fit(with_label({"s": values}), {"s": ColumnSpec(min_frequency=2, max_categories=2)})
    assert pre.columns[0].values == ("u", "w") and pre.columns[0].cardinality == 4


def test_a_dictionary_column_reads_like_its_strings():
    plain = pa.array(["a", "b", None, "a"])
    _, pre = fit(with_label({"s": plain.dictionary_encode()}))
    assert pre.columns[0].values == ("a", "b")
    assert transform(pre, pa.table({"s": plain.dictionary_encode()})).codes[:, 0].tolist() == [2, 3, 0, 2]


def test_an_integer_column_made_categorical_keeps_its_values_type():
    _, pre = fit(with_label({"code": pa.array([10, 20, 10, 30], pa.int32())}),
                 {"code": ColumnSpec(kind="categorical")})
    assert pre.columns[0].values == ("10", "20", "30") and pre.columns[0].original() == (10, 20, 30)
    assert transform(pre, pa.table({"code": pa.array([20, 99], pa.int32())})).codes[:, 0].tolist() == [3, 1]


def test_hash_buckets_give_a_stable_bucket_and_zero_for_missing():
    _, pre = fit(with_label({"zip": pa.array(["hello", "zip-75011", None])}),
                 {"zip": ColumnSpec(kind="categorical", hash_buckets=1000)})
    assert pre.columns[0].values == () and pre.columns[0].cardinality == 1002
    ids = transform(pre, pa.table({"zip": ["hello", "zip-75011", None, ""]})).codes[:, 0]
    assert ids.tolist() == [2 + 976, 2 + 784, 0, 2 + 535]


def test_the_hash_is_the_same_in_another_process_whatever_its_hash_seed():
    code = ("import pyarrow as pa; from orchestrator.data.summaries import stable_hash; "
            "print(stable_hash(pa.array(['hello', 'zip-75011', '', '42'])).tolist())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    expected = [9130119718505342976, 10786606314146421784, 16294208416658607535, 16856683918388318432]
    assert eval(out.stdout) == expected == stable_hash(pa.array(["hello", "zip-75011", "", "42"])).tolist()


def test_a_row_group_with_too_many_distinct_values_asks_for_hash_buckets(monkeypatch):
    monkeypatch.setattr(summaries, "VOCABULARY_SCAN_LIMIT", 3)
    with pytest.raises(DataError, match=r"column 'user' has 5 distinct values .* data.columns.user.hash_buckets"):
        fit(with_label({"user": pa.array(["a", "b", "c", "d", "e"])}))


def test_tags_become_bags_of_ids_padded_to_the_longest_training_row():
    tags = pa.array([["a", "b"], [], None, ["b", None], ["b"]])
    _, pre = fit(with_label({"t": tags}))
    assert pre.columns[0].values == ("b", "a") and pre.columns[0].width == 2
    codes = transform(pre, pa.table({"t": pa.array([["a", "zz"], None, [], ["b", None], ["a", "b", "a"]])})).codes
    assert codes.dtype == np.int64
    # unseen 'zz' → 1; null and empty lists → empty bags (all padding); a null element → 0; longer rows cut
    assert codes.tolist() == [[3, 1], [0, 0], [0, 0], [2, 0], [3, 2]]


# ---- datetime and vector ------------------------------------------------------------------------

def test_datetimes_give_standardized_epoch_seconds_and_cycles_in_utc():
    utc_zone = dt.timezone.utc
    instants = [dt.datetime(2024, 3, 15, 13, 30, tzinfo=utc_zone), dt.datetime(2023, 1, 1, tzinfo=utc_zone)]
    utc = pa.array(instants, pa.timestamp("ms", tz="UTC"))
    _, pre = fit(with_label({"ts": utc}))
    assert pre.input_description().numeric_names == ("ts", "ts__month_sin", "ts__month_cos", "ts__weekday_sin",
                                                     "ts__weekday_cos", "ts__hour_sin", "ts__hour_cos")
    out = encode(pre, {"ts": utc})
    epoch = np.array([i.timestamp() for i in instants])
    assert np.allclose(out[:, 0], (epoch - epoch.mean()) / epoch.std())
    march_friday_13h = [math.sin(2 * math.pi * 2 / 12), math.cos(2 * math.pi * 2 / 12),
                        math.sin(2 * math.pi * 4 / 7), math.cos(2 * math.pi * 4 / 7),
                        math.sin(2 * math.pi * 13 / 24), math.cos(2 * math.pi * 13 / 24)]
    assert np.allclose(out[0, 1:], march_friday_13h, atol=1e-6)
    tokyo = utc.cast(pa.timestamp("us", tz="Asia/Tokyo"))
    assert np.array_equal(encode(pre, {"ts": tokyo}), out)


def test_a_date_has_no_hour_and_a_missing_datetime_has_zero_cycles():
    dates = pa.array([dt.date(2024, 1, 1), None, dt.date(2024, 7, 4)], pa.date32())
    _, pre = fit(with_label({"d": dates}))
    assert pre.input_description().numeric_names == (
        "d", "d__missing", "d__month_sin", "d__month_cos", "d__weekday_sin", "d__weekday_cos")
    assert encode(pre, {"d": dates})[1, 1:].tolist() == [1, 0, 0, 0, 0]


def test_a_vector_is_standardized_per_dimension_and_a_null_one_becomes_zeros():
    rows = [[1.0, 10.0], [3.0, 30.0], [5.0, 20.0], None]
    vectors = pa.array(rows, pa.list_(pa.float32(), 2))
    _, pre = fit(with_label({"v": vectors}))
    assert pre.input_description().numeric_names == ("v__0", "v__1", "v__missing")
    seen = np.array(rows[:3])
    out = encode(pre, {"v": vectors})
    assert np.allclose(out[:3, :2], (seen - seen.mean(axis=0)) / seen.std(axis=0), atol=1e-6)
    assert out[3].tolist() == [0, 0, 1] and out[:3, 2].tolist() == [0, 0, 0]


def test_a_list_of_floats_learns_its_length_and_refuses_another():
    _, pre = fit(with_label({"v": pa.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])}))
    assert pre.columns[0].length == 3
    with pytest.raises(DataError, match="vector column 'v' has a row of 2 values where every row needs 3"):
        transform(pre, pa.table({"v": pa.array([[1.0, 2.0]])}))


def test_row_groups_with_vectors_of_different_lengths_are_refused():
    groups = [with_label({"v": pa.array([[1.0, 2.0]])}), with_label({"v": pa.array([[1.0, 2.0, 3.0]])})]
    with pytest.raises(DataError, match="vector column 'v' has rows of 2 and of 3 values"):
        fit(groups)


# ---- a reduction over row groups ----------------------------------------------------------------

def row_groups(count: int = 8, seed: int = 0) -> list[pa.Table]:
    """Row groups of every kind, uneven sizes, some above the sketch's 256 points."""
    rng, groups = np.random.default_rng(seed), []
    for g in range(count):
        n = int(rng.integers(50, 700))
        x = rng.lognormal(size=n)
        x[rng.random(n) < 0.05] = NAN
        groups.append(pa.table({
            "x": x, "q": rng.normal(size=n), "b": rng.random(n) < 0.3,
            "s": pa.array(rng.choice(["red", "green", "blue", "ochre"], n).tolist()),
            "ts": pa.array(rng.integers(1.5e9, 1.7e9, n) * 1000, pa.timestamp("ms")),
            "v": pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=3 * n)), 3),
            "t": pa.array([rng.choice(["a", "b", "c"], int(k)).tolist() for k in rng.integers(0, 4, n)]),
            "y": pa.array(rng.choice(["cat", "dog", "eel"], n).tolist()),
        }))
    return groups


OVERRIDES = {"x": ColumnSpec(transform="log1p"), "q": ColumnSpec(transform="quantile")}


def fit_on_workers(groups: list[pa.Table], workers: int) -> Preprocessing:
    """Each worker computes the partials of its strided share of row groups; the partials cross
    processes as JSON, are sorted by row-group id and combined."""
    plans = plan_columns(groups[0].schema, "y", None, [], OVERRIDES, classification=True)
    gathered = [(g, fit_partial(plans, groups[g]).to_json())
                for rank in range(workers) for g in range(rank, len(groups), workers)]
    return combine(plans, [Partial.from_json(text) for _, text in sorted(gathered)])


def test_the_fit_is_bit_identical_on_one_two_or_four_workers():
    groups = row_groups()
    fits = [fit_on_workers(groups, workers).to_json() for workers in (1, 2, 4)]
    assert fits[0] == fits[1] == fits[2]


def test_quantiles_merged_from_sketches_are_close_to_the_exact_ones():
    groups = row_groups(count=6, seed=3)
    pre = fit_on_workers(groups, 2)
    q = np.concatenate([g["q"].to_numpy() for g in groups])
    x = np.concatenate([g["x"].to_numpy() for g in groups])
    stats = {s.name: s for s in pre.columns}
    assert abs(np.mean(q <= stats["q"].median) - 0.5) < 1 / 256
    assert abs(np.mean(x[np.isfinite(x)] <= stats["x"].median) - 0.5) < 1 / 256
    assert stats["x"].missing == int(np.isnan(x).sum())


def test_a_partial_is_small_and_round_trips_through_json():
    groups = row_groups(count=1)
    plans = plan_columns(groups[0].schema, "y", None, [], OVERRIDES, classification=True)
    partial = fit_partial(plans, groups[0])
    assert Partial.from_json(partial.to_json()) == partial and len(partial.to_json()) < 20_000


# ---- labels ------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, classes", [
    (["dog", "cat", "eel", "cat"], ("cat", "dog", "eel")),
    ([True, False, True, True], (False, True)),
    ([10, -3, 7, 10], (-3, 7, 10)),
])
def test_classes_are_learned_sorted_by_value_and_kept_with_their_type(values, classes):
    _, pre = fit(with_label({"x": X[:4]}, pa.array(values)), classification=True)
    pre = Preprocessing.from_json(pre.to_json())
    assert pre.label.classes == classes and [type(c) for c in pre.label.classes] == [type(c) for c in classes]
    ids = transform(pre, with_label({"x": X[:4]}, pa.array(values))).labels
    assert ids.dtype == np.int64 and pre.label.class_values(ids) == values
    assert pre.input_description().classes == len(classes)


def test_an_unseen_or_null_class_maps_to_minus_one_and_nulls_are_counted():
    _, pre = fit(with_label({"x": X[:4]}, pa.array(["a", "b", None, "a"])), classification=True)
    assert pre.label.null_labels == 1 and pre.label.classes == ("a", "b")
    table = with_label({"x": X[:3]}, pa.array(["b", "zebra", None]))
    assert transform(pre, table).labels.tolist() == [1, -1, -1]
    assert pre.label_mask(table).tolist() == [True, True, False]


def test_a_regression_target_is_standardized_and_destandardized():
    y = pa.array([1.0, 2.0, NAN, 4.0, None, 13.0])
    _, pre = fit(with_label({"x": X[:6]}, y))
    seen = np.array([1.0, 2.0, 4.0, 13.0])
    assert (pre.label.mean, pre.label.null_labels) == (seen.mean(), 2)
    labels = transform(pre, with_label({"x": X[:6]}, y)).labels
    assert labels.dtype == np.float32 and np.allclose(labels[[0, 1, 3, 5]], (seen - seen.mean()) / seen.std())
    assert np.allclose(pre.destandardize(labels[[0, 1, 3, 5]]), seen, rtol=1e-6)
    assert pre.label_mask(with_label({"x": X[:6]}, y)).tolist() == [True, True, False, True, False, True]


def test_a_classification_label_with_one_class_is_refused():
    with pytest.raises(DataError, match="label column 'y' has one class only"):
        fit(with_label({"x": X[:3]}, pa.array([1, 1, 1])), classification=True)


# ---- what cannot be fitted or transformed -----------------------------------------------------

def test_an_all_null_feature_is_refused_naming_it_with_every_other_problem():
    table = with_label({"empty": pa.array([None, NAN, INF]), "ok": X[:3],
                        "no_tags": pa.array([[], None, []], pa.list_(pa.string()))})
    with pytest.raises(DataError) as info:
        fit(table)
    message = str(info.value)
    assert "(2 problem(s))" in message
    assert "column 'empty' has no value in the training rows (3 missing" in message
    assert "data.exclude: [empty]" in message and "column 'no_tags' has no element" in message


def test_a_column_missing_at_transform_time_is_named():
    _, pre = fit(with_label({"a": X, "b": X}))
    with pytest.raises(DataError, match=r"the transform needs column\(s\) 'b'"):
        transform(pre, pa.table({"a": X}))


# ---- the fitted state as data -------------------------------------------------------------------

def test_the_input_description_names_every_block_and_sizes_every_embedding():
    table = with_label({"x": X[:4], "s": pa.array(["a", "b", "a", None]), "h": pa.array(["p", "q", "r", "s"]),
                        "t": pa.array([["u"], ["v", "w"], [], None])})
    _, pre = fit(table, {"h": ColumnSpec(kind="categorical", hash_buckets=64, embedding_dim=7)})
    shape = pre.input_description()
    assert (shape.numeric_width, shape.numeric_names, shape.classes) == (1, ("x",), None)
    assert shape.categorical == (("s", 4, embedding_dim(4), 0, 1), ("h", 66, 7, 1, 1))
    assert shape.tags == (("t", 5, embedding_dim(5), 2, 2),) and shape.code_width == 4
    out = transform(pre, table)
    assert out.numeric.dtype == np.float32 and out.numeric.shape == (4, 1) and out.codes.shape == (4, 2 + 2)


def test_the_fitted_state_round_trips_through_json_unchanged():
    pre = fit_on_workers(row_groups(count=3), 1)
    again = Preprocessing.from_json(pre.to_json())
    assert again == pre and again.to_json() == pre.to_json()
    table = row_groups(count=1, seed=9)[0]
    assert np.array_equal(transform(again, table).numeric, transform(pre, table).numeric)


def test_json_of_another_format_version_or_malformed_is_refused():
    text = fit(with_label({"x": X}))[1].to_json()
    with pytest.raises(DataError, match="format version 99"):
        Preprocessing.from_json(text.replace('"version": 1', '"version": 99'))
    with pytest.raises(DataError, match="not a valid Preprocessing JSON"):
        Preprocessing.from_json('{"type": "Nonsense"}')
