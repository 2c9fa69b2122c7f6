"""The `search` section: parsing, the refusals a user meets before any trial starts, and the trial jobs
a space makes (job.search, job.trials), without Ray."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.driver.sweep_trial import decode
from orchestrator.errors import SpecError
from orchestrator.job import spec, trials
from orchestrator.job.search import Domain


def job(**search) -> dict:
    return {
        "name": "job",
        "data": {"path": "data/*.parquet", "label": "y", "validation": 0.1},
        "model": {"kind": "mlp", "hidden": [16]},
        "loss": "mse",
        "train": {"epochs": 3, "batch_size": 64},
        "search": {"trials": 4, "space": {"optim.lr": {"loguniform": [1.0e-4, 0.1]}}, **search},
    }


def problems(raw: dict) -> list[str]:
    with pytest.raises(SpecError) as caught:
        spec.from_dict(raw)
    return caught.value.problems


def test_a_search_section_is_read_with_its_defaults_and_round_trips():
    built = spec.from_dict(job(scheduler="asha", space={
        "optim.lr": {"loguniform": [1.0e-4, 0.1]}, "model.hidden": {"choice": [[64], [128, 128]]},
        "train.batch_size": {"randint": [32, 256]}, "optim.weight_decay": {"uniform": [0, 0.1]}}))
    search = built.search
    assert search.metric == "val_loss" and not search.maximize and search.algorithm == "random"
    assert search.space["model.hidden"] == Domain("choice", ([64], [128, 128]))
    assert search.space["train.batch_size"] == Domain("randint", (32, 256))
    assert spec.from_dict(built.to_dict()) == built
    assert spec.from_dict(job(metric="val_r2")).search.maximize
    assert not spec.from_dict(job(metric="val_r2", mode="min")).search.maximize


@pytest.mark.parametrize("search, expected", [
    ({"space": {"optim.lr": {"logunifrom": [1, 2]}}}, "search.space.optim.lr: expected one of {uniform: [...]}"),
    ({"space": {"optim.lr": {"loguniform": [0, 0.1]}}}, "search.space.optim.lr: loguniform: both ends must be > 0"),
    ({"space": {"optim.lr": {"uniform": [0.1, 0.01]}}}, "search.space.optim.lr: uniform: expected low < high"),
    ({"space": {"name": {"choice": ["a", "b"]}}}, "search.space.name: the sweep sets each trial's name"),
    ({"space": {}}, "search.space: expected a mapping of job keys"),
    ({"trials": None}, "search.trials: required for algorithm random"),
    ({"algorithm": "grid"}, "search.space: algorithm grid enumerates choices; optim.lr is a range"),
    ({"algorithm": "grid", "trials": 3, "space": {"optim.lr": {"choice": [0.1, 0.01]}}},
     "search.trials: algorithm grid runs each of the 2 combinations once"),
    ({"grace_period": 2}, "search.grace_period: only used with scheduler: asha"),
    ({"metric": "val_accuracy"}, "search.metric: 'val_accuracy' is not computed for loss 'mse'"),
    ({"metric": "val_auc_score"}, "search.metric: unknown metric 'val_auc_score' (did you mean 'val_auc'?"),
    ({"algorithm": "bayes"}, "search.algorithm: unknown search algorithm 'bayes'"),
])
def test_a_malformed_search_section_is_refused_naming_the_key(search, expected):
    found = problems(job(**search))
    assert any(problem.startswith(expected) for problem in found), found


def test_val_metrics_need_validation_data():
    raw = job()
    del raw["data"]["validation"]
    assert "search.metric: 'val_loss' needs validation data" in problems(raw)[0]


def test_a_space_that_can_make_an_invalid_job_is_refused_naming_the_key_and_value():
    raw = job(space={"train.batch_size": {"choice": [256, 4]}})
    found = trials.check_space(raw, spec.from_dict(raw).search)
    assert found == ["search.space.train.batch_size: the value 4 gives an invalid job: train.batch_size: 4 is "
                     "smaller than data.lanes (8), so a lane would add no row to a step: raise it to at least 8"]


def test_a_range_over_an_integer_key_is_refused_because_it_samples_fractions():
    raw = job(space={"train.epochs": {"uniform": [2, 10]}})
    found = trials.check_space(raw, spec.from_dict(raw).search)
    assert found == ["search.space.train.epochs: the value 2.0 gives an invalid job: train.epochs: expected an "
                     "integer, got 2.0 (float) (uniform samples fractions: use {randint: [low, high]} for this key)"]


def test_an_unknown_key_in_the_space_is_refused_with_the_nearest_one():
    raw = job(space={"optim.lrr": {"loguniform": [1.0e-4, 0.1]}})
    found = trials.check_space(raw, spec.from_dict(raw).search)
    assert found and "optim.lrr: unknown key (did you mean 'lr'?" in found[0]


def test_values_valid_alone_but_not_together_are_refused_as_a_combination():
    raw = job(space={"scaling.workers": {"choice": [1, 16]}, "train.batch_size": {"choice": [8, 64]}})
    found = trials.check_space(raw, spec.from_dict(raw).search)
    assert found and found[0].startswith("search.space: the combination scaling.workers=16, train.batch_size=8 "
                                         "gives an invalid job: train.batch_size: 8 is smaller than data.lanes (16)")


def test_a_trial_job_is_the_job_file_with_the_sampled_values_set_named_and_placed_by_the_sweep():
    raw = job(space={"optim.lr": {"loguniform": [1.0e-4, 0.1]}, "model.hidden": {"choice": [[8], [32, 32]]}})
    search = spec.from_dict(raw).search
    params = decode(search, {"optim.lr": 0.003, "model.hidden": 1})
    assert params == {"optim.lr": 0.003, "model.hidden": [32, 32]}
    trial = trials.trial_job(raw, params, name="trial-1", storage="/sweeps/s/trials")
    expected = spec.from_dict({key: value for key, value in raw.items() if key != "search"},
                              ["optim.lr=0.003", "model.hidden=[32, 32]", "name=trial-1", "storage=/sweeps/s/trials"])
    assert trial == expected and trial.search is None


def test_tune_refuses_a_space_that_can_make_an_invalid_job_before_anything_starts(tmp_path, regression_data):
    from tests.unit.test_cli import orchestrator

    data_dir, _ = regression_data
    raw = {**job(space={"train.batch_size": {"choice": [64, 4]}}), "storage": str(tmp_path / "runs")}
    raw["data"]["path"] = data_dir
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))
    for command in ("validate", "tune"):
        result = orchestrator(command, "sweep.yaml", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "search.space.train.batch_size: the value 4 gives an invalid job: train.batch_size: 4 is smaller " \
               "than data.lanes (8)" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_validate_prints_the_search_it_checked(tmp_path, regression_data):
    from tests.unit.test_cli import orchestrator

    data_dir, _ = regression_data
    raw = job(scheduler="asha", space={"optim.lr": {"loguniform": [1.0e-4, 0.1]},
                                       "model.hidden": {"choice": [[8], [32, 32]]}})
    raw["data"]["path"] = data_dir
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))
    result = orchestrator("validate", "sweep.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "  search      4 trial(s), random, ASHA at epoch ends, by val_loss (min)" in result.stdout
    assert "    model.hidden  choice [[8], [32, 32]]" in result.stdout
