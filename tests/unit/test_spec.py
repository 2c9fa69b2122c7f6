"""The job file as a user meets it: loading, defaults, overrides and every error message."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import textwrap
import typing

import pytest
import yaml

from orchestrator.errors import SpecError
from orchestrator.job import spec
from orchestrator.job.columns import ColumnSpec

QUICKSTART = """\
name: quickstart
data:
  path: data/quickstart/*.parquet
  label: y
  features: [x0, x1, x2]
  validation: 0.1
model: {kind: mlp, hidden: [64, 64]}
loss: mse
optim: {name: adamw, lr: 0.001, weight_decay: 0.01}
schedule: {name: cosine, warmup_steps: 100}
train: {epochs: 5, batch_size: 1024, seed: 0, grad_clip: 1.0}
scaling: {workers: 2, cpus_per_worker: 1, use_gpu: false}
checkpoint: {every_n_steps: 200, keep: 3}
failure: {max_failures: 3}
storage: ./runs
"""


def minimal(**sections) -> dict:
    """The smallest valid job, with sections replaced or added by keyword."""
    raw = {
        "name": "job",
        "data": {"path": "data/*.parquet", "label": "y"},
        "model": {"kind": "linear"},
        "loss": "mse",
        "train": {"epochs": 1, "batch_size": 64},
    }
    raw.update(copy.deepcopy(sections))
    return raw


def problems_of(raw, overrides=()) -> list[str]:
    with pytest.raises(SpecError) as info:
        spec.from_dict(raw, overrides)
    return info.value.problems


def only_problem(raw, overrides=()) -> str:
    problems = problems_of(raw, overrides)
    assert len(problems) == 1, problems
    return problems[0]


@pytest.fixture
def job_file(tmp_path):
    def write(text: str, name: str = "quickstart.yaml"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path
    return write


# ---- loading -------------------------------------------------------------------------

def test_the_quickstart_job_loads_with_every_value_typed(job_file):
    job = spec.load(job_file(QUICKSTART))
    assert job.name == "quickstart"
    assert job.data == spec.DataSpec(path="data/quickstart/*.parquet", label="y", features=("x0", "x1", "x2"),
                                     validation=0.1, lanes=8)
    assert job.model.kind == "mlp" and job.model.hidden == (64, 64)
    assert job.loss == spec.LossSpec(name="mse")
    assert job.optim == spec.OptimSpec(name="adamw", lr=0.001, weight_decay=0.01)
    assert job.schedule == spec.ScheduleSpec(name="cosine", warmup_steps=100)
    assert job.train.batch_size == 1024 and job.train.epochs == 5 and job.train.grad_clip == 1.0
    assert job.scaling == spec.ScalingSpec(workers=2, cpus_per_worker=1.0, use_gpu=False)
    assert job.checkpoint == spec.CheckpointSpec(every_n_steps=200, keep=3)
    assert job.failure == spec.FailureSpec(max_failures=3)
    assert job.storage == "./runs"


def test_omitted_sections_take_their_dataclass_defaults():
    job = spec.from_dict(minimal())
    assert job.optim == spec.OptimSpec()
    assert job.schedule == spec.ScheduleSpec()
    assert job.scaling == spec.ScalingSpec()
    assert job.checkpoint == spec.CheckpointSpec()
    assert job.failure == spec.FailureSpec()
    assert job.storage == "./runs"
    assert job.data.features is None and job.data.validation is None


def section_dataclasses(cls=spec.JobSpec, path=""):
    """(path, dataclass) for JobSpec ("") and every section dataclass nested in it, from the type hints."""
    yield path, cls
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if typing.get_origin(hints[field.name]) is dict:
            continue  # a mapping of entries (data.columns), not a section: test_column_defaults covers it
        inner = [t for t in (hints[field.name], *typing.get_args(hints[field.name])) if dataclasses.is_dataclass(t)]
        if inner:
            yield from section_dataclasses(inner[0], f"{path}.{field.name}".lstrip("."))


SECTIONS = dict(section_dataclasses())
# train.batch_size defaults to None for tree models, which have no batches; networks must set it (tested below).
# search.trials defaults to None for a grid, which runs every combination; random and optuna must set it.
OPTIONAL_FIELDS = [(path, field) for path, cls in SECTIONS.items() for field in dataclasses.fields(cls)
                   if (field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING)
                   and (path, field.name) not in (("train", "batch_size"), ("search", "trials"))]
# the value of each required field in `job_without`, by section path
REQUIRED_VALUES = {
    "data": {"path": "data/*.parquet", "label": "y", "validation": 0.1},  # validation: for early_stopping's val_loss
    "data.generate": {"kind": "regression"},
    "model": {"kind": "linear"},
    "loss": {"name": "mse"},
    "train": {"epochs": 1, "max_steps": 10, "batch_size": 64},  # either of epochs and max_steps suffices
    "failure.inject": {"exit_at_step": 1},
    "search": {"space": {"optim.lr": {"loguniform": [0.001, 0.1]}}, "trials": 2},
}


def job_without(path: str, key: str) -> dict:
    """The smallest valid job in which the section at `path` is present and lacks `key`."""
    raw = {"name": "job", **copy.deepcopy({k: REQUIRED_VALUES[k] for k in ("data", "model", "loss", "train")})}
    node, walked = raw, []
    for part in path.split(".") if path else []:
        walked.append(part)
        node = node.setdefault(part, copy.deepcopy(REQUIRED_VALUES.get(".".join(walked), {})))
    node.pop(key, None)
    if path == "failure.inject" and key == "exit_at_step":  # a fault needs one of its two kinds
        node["hang_at_step"] = 1
    if path and not node:  # an empty early_stopping means none: give it another field at its default
        other = next(f for f in dataclasses.fields(SECTIONS[path]) if f.name != key)
        node[other.name] = other.default
    return raw


@pytest.mark.parametrize("path, field", OPTIONAL_FIELDS,
                         ids=[f"{path}.{field.name}".lstrip(".") for path, field in OPTIONAL_FIELDS])
def test_every_dataclass_default_is_what_a_job_without_that_key_gets(path, field):
    job = spec.from_dict(job_without(path, field.name))
    built = job
    for part in [*(path.split(".") if path else []), field.name]:
        built = getattr(built, part)
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    if (path, field.name) == ("data", "lanes"):
        default = spec.resolve_lanes(default, job.scaling.max_workers)  # None resolves as the job is built
    assert built == default


def test_column_defaults_are_what_a_column_override_without_those_keys_gets():
    raw = job_without("data", "columns")
    raw["data"]["columns"] = {"zip": "categorical", "city": {"kind": "categorical", "hash_buckets": 64}}
    columns = spec.from_dict(raw).data.columns
    assert columns["zip"] == ColumnSpec(kind="categorical")
    assert columns["city"] == dataclasses.replace(ColumnSpec(kind="categorical"), hash_buckets=64)


def test_the_run_name_defaults_to_the_job_file_stem(job_file):
    path = job_file(QUICKSTART.replace("name: quickstart\n", ""), name="my-run.yaml")
    assert spec.load(path).name == "my-run"


def test_a_name_in_the_file_wins_over_the_file_stem(job_file):
    assert spec.load(job_file(QUICKSTART, name="other.yaml")).name == "quickstart"


def test_a_file_stem_that_cannot_be_a_run_name_asks_for_a_name(job_file):
    path = job_file(QUICKSTART.replace("name: quickstart\n", ""), name="my job.yaml")
    with pytest.raises(SpecError) as info:
        spec.load(path)
    assert info.value.problems[0].startswith("name: required")


def test_a_name_that_is_not_a_safe_directory_name_is_rejected():
    assert only_problem(minimal(name="../escape")).startswith("name: must start with a letter or digit")


def test_without_a_file_the_name_is_required():
    raw = minimal()
    del raw["name"]
    assert only_problem(raw).startswith("name: required")


def test_a_missing_job_file_is_a_spec_error_naming_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        spec.load(missing)
    assert info.value.problems == [f"no job file at {missing}"]
    assert info.value.source == str(missing)


def test_a_yaml_syntax_error_reports_its_line_and_column(job_file):
    path = job_file("name: x\ndata: {path: a, label: [y\nmodel: mlp\n")
    with pytest.raises(SpecError) as info:
        spec.load(path)
    (problem,) = info.value.problems
    assert problem.startswith("YAML syntax error at line ") and ", column " in problem
    assert info.value.source == str(path)


def test_a_job_file_whose_top_level_is_not_a_mapping_is_rejected(job_file):
    with pytest.raises(SpecError) as info:
        spec.load(job_file("- just\n- a list\n"))
    assert "expected a mapping of sections" in info.value.problems[0]


def test_an_empty_job_file_is_rejected_as_empty(job_file):
    with pytest.raises(SpecError) as info:
        spec.load(job_file(""))
    assert "an empty file" in info.value.problems[0]


def test_from_dict_rejects_a_top_level_that_is_not_a_mapping():
    with pytest.raises(SpecError, match="expected a mapping of sections"):
        spec.from_dict(["data"])


# ---- unknown keys, types and ranges --------------------------------------------------

def test_an_unknown_key_names_its_full_path_and_suggests_the_nearest_key():
    problem = only_problem(minimal(optim={"lr_shedule": 0.1}))
    assert problem == ("optim.lr_shedule: unknown key (did you mean 'lr'? "
                       "allowed: name, lr, weight_decay, momentum, betas, nesterov)")


def test_a_misspelled_key_is_matched_to_the_key_it_resembles():
    assert "did you mean 'batch_size'?" in only_problem(minimal(train={"epochs": 1, "batch_size": 64,
                                                                       "batchsize": 3}))


def test_an_unknown_top_level_section_is_reported_with_a_suggestion():
    problem = only_problem(minimal(chekpoint={"keep": 1}))
    assert problem.startswith("chekpoint: unknown key (did you mean 'checkpoint'?")


def test_an_unknown_key_in_a_nested_section_names_the_nested_path():
    problem = only_problem(minimal(failure={"inject": {"exit_at_step": 3, "rnk": 1}}))
    assert problem.startswith("failure.inject.rnk: unknown key (did you mean 'rank'?")


def test_a_wrong_type_names_the_expected_type_and_what_was_given():
    assert only_problem(minimal(train={"epochs": "five", "batch_size": 64})) == \
        "train.epochs: expected an integer, got 'five' (str)"


@pytest.mark.parametrize("section, key", [("train", "epochs"), ("optim", "lr"), ("checkpoint", "keep")])
def test_a_bool_is_accepted_neither_as_an_integer_nor_as_a_number(section, key):
    raw = minimal()
    raw.setdefault(section, {})[key] = True
    assert f"{section}.{key}: expected" in only_problem(raw)


def test_an_integer_is_accepted_for_a_number():
    job = spec.from_dict(minimal(optim={"lr": 1}))
    assert job.optim.lr == 1.0 and isinstance(job.optim.lr, float)


def test_a_yaml_1e_3_read_as_a_string_is_accepted_as_a_number(job_file):
    path = job_file(QUICKSTART.replace("lr: 0.001", "lr: 1e-3"))
    assert yaml.safe_load(path.read_text())["optim"]["lr"] == "1e-3"  # the YAML 1.1 trap
    assert spec.load(path).optim.lr == pytest.approx(0.001)


def test_a_string_that_is_not_a_number_is_rejected_for_a_number():
    assert only_problem(minimal(optim={"lr": "fast"})) == "optim.lr: expected a number, got 'fast' (str)"


def test_a_section_that_is_not_a_mapping_is_one_problem_naming_the_section():
    assert only_problem(minimal(optim=3)) == "optim: expected a mapping of optim settings, got 3 (int)"


@pytest.mark.parametrize("section", ["data", "model", "loss", "train"])
def test_each_missing_required_section_is_named(section):
    raw = minimal()
    del raw[section]
    assert only_problem(raw).startswith(f"{section}: required section")


def test_a_missing_batch_size_says_what_the_batch_size_means():
    assert only_problem(minimal(train={"epochs": 1})) == \
        "train.batch_size: required (the global batch size across all workers)"


@pytest.mark.parametrize("section, key, value, message", [
    ("optim", "lr", -1, "optim.lr: must be > 0, got -1"),
    ("optim", "weight_decay", -0.5, "optim.weight_decay: must be >= 0, got -0.5"),
    ("optim", "betas", [0.9, 1.0], "optim.betas[1]: must be in [0, 1), got 1"),
    ("optim", "betas", [0.9], "optim.betas: expected two numbers [beta1, beta2], got 1"),
    ("model", "dropout", 1.0, "model.dropout: must be in [0, 1), got 1"),
    ("model", "hidden", [64, 0], "model.hidden[1]: must be >= 1, got 0"),
    ("model", "outputs", 0, "model.outputs: must be >= 1, got 0"),
    ("model", "activation", "relu6", "model.activation: unknown activation 'relu6' (did you mean 'relu'? "
                                     "allowed: relu, gelu, tanh, silu, sigmoid)"),
    ("data", "validation", 1.0, "data.validation: must be in (0, 1), got 1"),
    ("data", "shuffle_window_rows", 0, "data.shuffle_window_rows: must be >= 1, got 0"),
    ("data", "prefetch_batches", -1, "data.prefetch_batches: must be >= 0, got -1"),
    ("data", "lanes", 0, "data.lanes: must be >= 1, got 0"),
    ("schedule", "min_lr_ratio", 1.5, "schedule.min_lr_ratio: must be in [0, 1], got 1.5"),
    ("schedule", "gamma", 0, "schedule.gamma: must be > 0, got 0"),
    ("schedule", "warmup_steps", -1, "schedule.warmup_steps: must be >= 0, got -1"),
    ("train", "batch_size", 0, "train.batch_size: must be >= 1, got 0"),
    ("train", "grad_clip", 0, "train.grad_clip: must be > 0, got 0"),
    ("train", "grad_accum_steps", 0, "train.grad_accum_steps: must be >= 1, got 0"),
    ("train", "precision", "fp16", "train.precision: unknown precision 'fp16' (did you mean 'bf16'? "
                                   "allowed: fp32, bf16)"),
    ("train", "compile", "yes please", "train.compile: expected true or false, got 'yes please' (str)"),
    ("scaling", "cpus_per_worker", 0, "scaling.cpus_per_worker: must be > 0, got 0"),
    ("scaling", "workers", 0, "scaling.workers: must be >= 1, got 0"),
    ("checkpoint", "keep", 0, "checkpoint.keep: must be >= 1, got 0"),
    ("checkpoint", "every_n_seconds", -5, "checkpoint.every_n_seconds: must be > 0, got -5"),
    ("failure", "max_failures", -2, "failure.max_failures: must be >= -1, got -2"),
])
def test_a_value_out_of_range_names_its_path_the_rule_and_the_value(section, key, value, message):
    raw = minimal()
    raw.setdefault(section, {})
    raw[section] = {**raw[section], key: value}
    assert only_problem(raw) == message


def test_an_unknown_loss_lists_the_allowed_losses():
    assert only_problem(minimal(loss="mae")) == \
        "loss.name: unknown loss 'mae' (did you mean 'mse'? allowed: mse, l1, huber, cross_entropy, bce)"


def test_an_unknown_optimizer_lists_the_allowed_optimizers():
    assert "allowed: sgd, adam, adamw" in only_problem(minimal(optim={"name": "lion"}))


def test_every_problem_in_the_file_is_reported_at_once():
    raw = minimal(optim={"lr": -1, "lr_shedule": 3}, train={"epochs": "five", "batch_size": 64},
                  model={"kind": "mlp", "dropout": 2})
    raw["data"] = {"label": "y"}
    problems = problems_of(raw)
    paths = [p.split(":")[0] for p in problems]
    assert sorted(paths) == sorted(["optim.lr", "optim.lr_shedule", "train.epochs", "model.dropout", "data.path"])
    assert "(5 problems)" in str(SpecError(problems))


# ---- sections with their own shapes --------------------------------------------------

def test_loss_and_schedule_accept_a_name_as_shorthand():
    job = spec.from_dict(minimal(loss="huber", schedule="cosine"))
    assert job.loss == spec.LossSpec(name="huber") and job.schedule == spec.ScheduleSpec(name="cosine")


def test_loss_accepts_a_mapping_with_its_options():
    job = spec.from_dict(minimal(loss={"name": "huber", "huber_delta": 2}))
    assert job.loss.huber_delta == 2.0


def test_a_min_max_worker_pair_makes_the_run_elastic():
    scaling = spec.from_dict(minimal(scaling={"workers": [2, 6]})).scaling
    assert scaling.workers == (2, 6) and scaling.min_workers == 2 and scaling.max_workers == 6
    assert scaling.elastic


def test_a_fixed_worker_count_is_not_elastic():
    scaling = spec.from_dict(minimal(scaling={"workers": 4})).scaling
    assert (scaling.min_workers, scaling.max_workers, scaling.elastic) == (4, 4, False)


@pytest.mark.parametrize("workers", [[3, 2], [0, 2], [1, 2, 3], ["a", 2]])
def test_a_worker_pair_needs_one_to_min_to_max(workers):
    assert only_problem(minimal(scaling={"workers": workers})).startswith("scaling.workers")


def test_a_model_kind_may_name_a_user_builder_function():
    assert spec.from_dict(minimal(model={"kind": "jobs.my_model:build"})).model.kind == "jobs.my_model:build"


@pytest.mark.parametrize("kind", ["jobs.my_model", "jobs/my_model:build", "mpl", "jobs.m:build\n"])
def test_a_model_kind_that_is_neither_built_in_nor_module_function_is_rejected(kind):
    problem = only_problem(minimal(model={"kind": kind}))
    assert problem.startswith("model.kind: unknown model") and "'module.path:function'" in problem


def test_model_options_are_kept_for_a_user_builder():
    job = spec.from_dict(minimal(model={"kind": "jobs.m:build", "options": {"depth": 3, "norm": "layer"}}))
    assert job.model.options == {"depth": 3, "norm": "layer"}


def test_model_option_keys_must_be_strings():
    assert only_problem(minimal(model={"kind": "jobs.m:build", "options": {1: "x"}})) == \
        "model.options: keys must be strings, got 1 (int)"


def test_validation_may_be_a_path_to_separate_parquet():
    job = spec.from_dict(minimal(data={"path": "a/*.parquet", "label": "y", "validation": "s3://b/val/"}))
    assert job.data.validation == "s3://b/val/"


def test_features_may_not_list_the_label_or_repeat_a_column():
    assert "must not include the label" in only_problem(
        minimal(data={"path": "p", "label": "y", "features": ["x", "y"]}))
    assert "more than once" in only_problem(minimal(data={"path": "p", "label": "y", "features": ["x", "x"]}))


def test_checkpoint_every_n_steps_null_turns_step_checkpoints_off():
    assert spec.from_dict(minimal(checkpoint={"every_n_steps": None})).checkpoint.every_n_steps is None
    assert spec.from_dict(minimal(checkpoint={})).checkpoint.every_n_steps == 200


def test_a_fault_injection_is_read_as_its_own_dataclass():
    job = spec.from_dict(minimal(scaling={"workers": 2}, failure={"inject": {"exit_at_step": 5, "rank": 1}}))
    assert job.failure.inject == spec.FaultInjection(exit_at_step=5, rank=1)


# ---- cross-section rules -------------------------------------------------------------

def test_training_needs_epochs_or_max_steps():
    assert only_problem(minimal(train={"batch_size": 64})).startswith("train.epochs: required")
    assert spec.from_dict(minimal(train={"batch_size": 64, "max_steps": 10})).train.max_steps == 10


def test_a_logistic_model_needs_bce_or_cross_entropy():
    assert only_problem(minimal(model={"kind": "logistic"})).startswith("loss.name: model.kind 'logistic' needs")
    assert spec.from_dict(minimal(model={"kind": "logistic"}, loss="bce")).loss.name == "bce"


def test_cross_entropy_with_a_single_output_is_rejected():
    problem = only_problem(minimal(model={"kind": "mlp", "outputs": 1}, loss="cross_entropy"))
    assert problem.startswith("model.outputs: loss cross_entropy needs one output per class")


def test_a_step_schedule_needs_a_step_size():
    assert only_problem(minimal(schedule="step")).startswith("schedule.step_size: required when")
    assert spec.from_dict(minimal(schedule={"name": "step", "step_size": 100})).schedule.step_size == 100


def test_momentum_belongs_to_sgd_only():
    assert only_problem(minimal(optim={"name": "adam", "momentum": 0.9})).startswith("optim.momentum: only sgd")
    assert spec.from_dict(minimal(optim={"name": "sgd", "momentum": 0.9, "nesterov": True})).optim.nesterov


def test_a_batch_smaller_than_the_lanes_is_rejected():
    problem = only_problem(minimal(train={"epochs": 1, "batch_size": 4}))
    assert problem.startswith("train.batch_size: 4 is smaller than data.lanes (8)")


def test_more_workers_than_lanes_says_to_raise_the_lanes():
    problem = only_problem(minimal(data={"path": "p", "label": "y", "lanes": 4}, scaling={"workers": [2, 6]}))
    assert problem.startswith("data.lanes:") and "raise data.lanes to at least 6" in problem


def test_an_injected_fault_is_an_exit_or_a_hang_never_both_nor_neither():
    hang = spec.from_dict(minimal(scaling={"workers": 2}, failure={"inject": {"hang_at_step": 5, "rank": 1}}))
    assert hang.failure.inject == spec.FaultInjection(hang_at_step=5, rank=1)
    for inject in ({"rank": 1}, {"exit_at_step": 5, "hang_at_step": 5}):
        assert only_problem(minimal(failure={"inject": inject})).startswith(
            "failure.inject: give exactly one of exit_at_step (the rank exits) and hang_at_step")


def test_an_injected_fault_must_target_an_existing_worker_rank():
    raw = minimal(scaling={"workers": 2}, failure={"inject": {"exit_at_step": 5, "rank": 2}})
    assert only_problem(raw).startswith("failure.inject.rank: 2 is not a worker rank")


def test_bf16_precision_is_accepted_without_a_gpu():
    assert spec.from_dict(minimal(train={"epochs": 1, "batch_size": 64, "precision": "bf16"})).train.precision == "bf16"


def test_cross_section_rules_do_not_pile_onto_a_field_that_is_already_wrong():
    problems = problems_of(minimal(model={"kind": "logistic"}, loss="mae"))
    assert problems == [problems[0]] and problems[0].startswith("loss.name: unknown loss")


# ---- lanes ---------------------------------------------------------------------------

def test_lanes_resolve_to_eight_for_small_worker_groups():
    assert spec.from_dict(minimal(scaling={"workers": 2})).data.lanes == 8


def test_lanes_resolve_to_the_maximum_worker_count_for_large_groups():
    assert spec.from_dict(minimal(scaling={"workers": [4, 16]})).data.lanes == 16


def test_explicit_lanes_are_kept():
    assert spec.from_dict(minimal(data={"path": "p", "label": "y", "lanes": 32})).data.lanes == 32


# ---- round trip ----------------------------------------------------------------------

def test_to_dict_round_trips_through_from_dict(job_file):
    job = spec.load(job_file(QUICKSTART))
    assert spec.from_dict(job.to_dict()) == job


def test_a_spec_with_every_optional_part_round_trips_through_yaml_and_json():
    job = spec.from_dict(minimal(
        model={"kind": "jobs.m:build", "options": {"widths": [1, 2]}}, scaling={"workers": [1, 3]},
        failure={"inject": {"exit_at_step": 4, "rank": 2}}, checkpoint={"every_n_steps": None, "every_n_seconds": 30},
        optim={"betas": [0.8, 0.9]}, data={"path": "p", "label": "y", "validation": "val/"}))
    plain = job.to_dict()
    assert plain["scaling"]["workers"] == [1, 3] and plain["optim"]["betas"] == [0.8, 0.9]
    assert spec.from_dict(yaml.safe_load(yaml.safe_dump(plain))) == job
    assert spec.from_dict(json.loads(json.dumps(plain))) == job


def test_a_spec_is_frozen_and_picklable():
    job = spec.from_dict(minimal())
    with pytest.raises(AttributeError):
        job.train.epochs = 3  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(job)) == job


# ---- overrides -----------------------------------------------------------------------

def test_overrides_parse_their_values_as_yaml():
    job = spec.from_dict(minimal(), ["train.epochs=3", "data.features=[a, b]", "scaling.workers=[1,2]",
                                     "optim.lr=1e-4", "model.kind=mlp"])
    assert job.train.epochs == 3
    assert job.data.features == ("a", "b")
    assert job.scaling.workers == (1, 2)
    assert job.optim.lr == pytest.approx(1e-4)


def test_overrides_create_missing_sections_and_leave_the_input_untouched():
    raw = minimal()
    before = copy.deepcopy(raw)
    result = spec.apply_overrides(raw, ["failure.inject.exit_at_step=7"])
    assert result["failure"] == {"inject": {"exit_at_step": 7}}
    assert raw == before


def test_an_override_into_a_shorthand_section_expands_it():
    job = spec.from_dict(minimal(loss="mse"), ["loss.name=huber", "loss.huber_delta=0.5"])
    assert job.loss == spec.LossSpec(name="huber", huber_delta=0.5)


def test_load_applies_overrides_after_reading_the_file(job_file):
    assert spec.load(job_file(QUICKSTART), ["train.epochs=9"]).train.epochs == 9


@pytest.mark.parametrize("override", ["train.epochs", "=3", "train..epochs=3"])
def test_a_malformed_override_is_a_spec_error_naming_it(override):
    with pytest.raises(SpecError) as info:
        spec.apply_overrides(minimal(), [override])
    assert info.value.problems[0].startswith(f"--set {override!r}: expected key.path=value")


def test_an_override_walking_into_a_plain_value_is_a_spec_error_naming_it():
    with pytest.raises(SpecError) as info:
        spec.apply_overrides(minimal(storage="./runs"), ["storage.path=x"])
    assert info.value.problems == ["--set 'storage.path=x': 'storage' is './runs' (str), not a mapping, "
                                   "so it cannot hold 'path'"]


def test_an_unknown_key_from_an_override_is_reported_like_one_in_the_file():
    from_override = only_problem(minimal(), ["optim.lr_shedule=0.1"])
    from_file = only_problem(minimal(optim={"lr_shedule": 0.1}))
    assert from_override == from_file


def test_override_errors_carry_the_job_file_as_source(job_file):
    path = job_file(QUICKSTART)
    with pytest.raises(SpecError) as info:
        spec.load(path, ["nonsense"])
    assert info.value.source == str(path)


# ---- the error itself ----------------------------------------------------------------

def test_a_spec_error_survives_pickling_with_its_problems_and_source():
    with pytest.raises(SpecError) as info:
        spec.from_dict(minimal(optim={"lr": -1}, train={"batch_size": 64}), source="jobs/x.yaml")
    error = pickle.loads(pickle.dumps(info.value))
    assert isinstance(error, SpecError)
    assert error.problems == info.value.problems and len(error.problems) == 2
    assert error.source == "jobs/x.yaml" and str(error) == str(info.value)


def test_validation_zero_means_no_validation():
    assert spec.from_dict(minimal(data={"path": "p", "label": "y", "validation": 0})).data.validation is None
    assert spec.from_dict(minimal(data={"path": "p", "label": "y", "validation": 0.0})).data.validation is None
