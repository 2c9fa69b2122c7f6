"""The tree models' view of a table (data.matrix): raw values, NaN for missing, native categories; the
memory estimate and refusal from footers; the booster adapters on real XGBoost and LightGBM."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.data import source
from orchestrator.data.matrix import (
    TAG_INDICATORS,
    TreeMatrix,
    bytes_per_worker,
    memory_problem,
    planned_width,
    tree_features,
    tree_matrix,
)
from orchestrator.data.plan import contiguous_share
from orchestrator.data.reader import fit_in_process
from orchestrator.train import boosters
from orchestrator.train.boosting import probe_rows


def table() -> pa.Table:
    return pa.table({
        "x": pa.array([1.5, None, float("nan"), float("inf"), -2.0, 3.0]),
        "city": pa.array(["a", "b", None, "a", "a", "b"]),
        "flag": pa.array([True, None, False, True, False, True]),
        "when": pa.array([0, 86_400 * 31, None, 3_600 * 5, 0, 0], pa.timestamp("s", tz="UTC")),
        "tags": pa.array([["p"], [], None, ["p", "q"], ["q"], ["p"]]),
        "y": pa.array([1.0, 2.0, None, 4.0, 5.0, 6.0]),
    })


@pytest.fixture
def fitted(tmp_path):
    pq.write_table(table(), tmp_path / "t.parquet", row_group_size=3)
    index = source.scan(str(tmp_path), "y")
    return index, fit_in_process(index, 0.0)


def test_numbers_stay_raw_and_every_kind_of_missing_is_nan(fitted):
    index, pre = fitted
    names = tree_features(pre).names
    m = tree_matrix(pre, table())
    x = m.features[:, names.index("x")]
    assert x[0] == 1.5 and x[4] == -2.0 and np.isnan(x[1:4]).all()  # null, NaN and inf are all missing
    assert np.isnan(m.features[1, names.index("flag")]) and m.features[0, names.index("flag")] == 1.0
    assert np.isnan(m.labels[2]) and m.labels[3] == 4.0  # the raw target, NaN where there is none


def test_categories_are_native_ids_with_nan_for_null_and_zero_for_unseen(fitted):
    _, pre = fitted
    features = tree_features(pre)
    city = features.names.index("city")
    assert features.categories[city] > 0 and city in features.categorical
    m = tree_matrix(pre, table())
    assert m.features[0, city] == m.features[3, city] != m.features[1, city]
    assert np.isnan(m.features[2, city])
    unseen = table().set_column(1, "city", pa.array(["zzz"] * 6))
    assert (tree_matrix(pre, unseen).features[:, city] == 0).all()


def test_datetimes_become_seconds_and_parts_tags_become_indicators_and_a_count(fitted):
    _, pre = fitted
    names = tree_features(pre).names
    m = tree_matrix(pre, table())
    assert m.features[1, names.index("when")] == 86_400 * 31  # seconds since the earliest training value
    assert m.features[1, names.index("when__month")] == 1  # February
    assert m.features[3, names.index("when__hour")] == 5
    assert np.isnan(m.features[2, names.index("when__month")])
    assert m.features[3, names.index("tags__count")] == 2 and m.features[1, names.index("tags__count")] == 0
    assert m.features[3, names.index("tags=p")] == 1 and m.features[4, names.index("tags=p")] == 0
    assert np.isnan(m.features[2, names.index("tags__count")])


def test_the_planned_width_from_the_footers_matches_the_matrix(fitted):
    index, pre = fitted
    # tags: the plan counts TAG_INDICATORS + 1 columns; this table has 2 values, so the matrix has 3
    assert planned_width(index.columns) - (TAG_INDICATORS + 1) == len(tree_features(pre).names) - 3


def test_a_job_whose_matrices_do_not_fit_is_refused_naming_the_figures_and_the_workers_it_needs(fitted):
    index, _ = fitted
    need_1 = bytes_per_worker(index, 0.0, 1, validation_rows=0, probe_rows=0)
    assert memory_problem(index, 0.0, 1, 0, 0, cluster_memory=need_1, largest_node_memory=need_1) is None
    problem = memory_problem(index, 0.0, 1, 0, 0, cluster_memory=need_1 - 1, largest_node_memory=need_1 * 0.6)
    assert "each of 1 worker(s) would hold about" in problem and "6 rows" in problem
    assert "it needs at least 2 workers" in problem  # half the rows each: 2 row groups of 3
    huge = memory_problem(index, 0.0, 1, 10**9, 0, cluster_memory=1e6, largest_node_memory=1e6)
    assert "even one worker alone" in huge  # the validation rows every worker holds do not fit anywhere


def test_shares_cover_every_row_group_once_and_the_probe_is_bounded(fitted):
    index, _ = fitted
    assert sorted(p for rank in range(3) for p in contiguous_share(7, 3, rank)) == list(range(7))
    assert sum(len(rows) for _, rows in probe_rows(index, 0.0)) == 6  # small: every training row
    assert sum(len(rows) for _, rows in probe_rows(index, 0.0, limit=2)) <= 2 + len(index.row_groups)


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_each_rounds_margins_add_up_to_the_boosters_own(kind):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)).astype(np.float32)
    x[rng.random((500, 3)) < 0.1] = np.nan
    y = (np.nan_to_num(x[:, 0]) > 0).astype(np.float32)
    library = boosters.library(kind)
    objective = library.objective("bce", 2)
    params = library.params({}, objective, 1, 0, False, 1)
    features = boosters.TreeFeatures(("a", "b", "c"), (0, 0, 0))
    parts = [TreeMatrix(x[:250], y[:250]), TreeMatrix(x[250:], y[250:])] if library.streams else [TreeMatrix(x, y)]
    margins = []

    def on_round(booster, i):
        margins.append(library.margins(booster, x) if i == 0 else margins[-1] + library.round_margins(booster, x, i))
        return False

    booster = library.train(params, library.train_matrix(lambda: iter(parts), features, params), 5, None, on_round)
    np.testing.assert_allclose(margins[-1], library.margins(booster, x), atol=1e-5)


def test_unknown_options_are_named_with_the_nearest_and_owned_ones_say_where_they_are_set():
    xgb = boosters.library("xgboost").check_options({"max_dpth": 3, "nthread": 2, "eta": 0.1}, "mse")
    assert any("max_dpth" in p and "max_depth" in p for p in xgb)
    assert any("nthread" in p and "scaling.cpus_per_worker" in p for p in xgb)
    assert not any("eta" in p for p in xgb)
    lgb = boosters.library("lightgbm").check_options({"num_leavs": 3, "num_threads": 2, "learning_rate": 0.1}, "mse")
    assert any("num_leavs" in p and "num_leaves" in p for p in lgb) and any("num_threads" in p for p in lgb)
    assert len(lgb) == 2
