"""The trainer a run fits: Ray Train's own, with its teardown timeouts tuned (no cluster needed to build it)."""

from __future__ import annotations

import os

import pytest
from ray.train.v2._internal.callbacks.placement_group_callback import (
    PlacementGroupCleanerCallback,
)

from orchestrator.driver import launch, trainer
from orchestrator.job import spec
from tests.conftest import regression_job


@pytest.mark.parametrize("kind", ["mlp", "xgboost"])
def test_the_trainer_keeps_ray_trains_callbacks_but_stops_the_cleaner_without_waiting(kind, regression_data,
                                                                                      tmp_path):
    raw = regression_job(regression_data[0], str(tmp_path), model={"kind": kind, "hidden": [8]})
    if kind == "xgboost":  # trees take rounds, not an optimizer and batches
        raw.pop("optim")
        raw.update(model={"kind": "xgboost", "rounds": 5}, train={"seed": 0})
    built = trainer.build(launch.prepare(spec.from_dict(raw)), board=None, audit_samples=False)
    callbacks = built._create_default_callbacks()
    cleaners = [c for c in callbacks if isinstance(c, PlacementGroupCleanerCallback)]
    # Exactly one cleaner, ours: if Ray Train renames or drops its own, this says so before a run slows down.
    assert [type(c).__name__ for c in cleaners] == ["CleanerStoppedWithoutWaiting"]
    assert len(callbacks) == len(type(built).__mro__[1]._create_default_callbacks(built))


def test_the_controller_is_given_a_short_process_group_teardown_unless_the_user_set_one(regression_data, tmp_path,
                                                                                        monkeypatch):
    prepared = launch.prepare(spec.from_dict(regression_job(regression_data[0], str(tmp_path))))
    name = "TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S"
    for chosen, expected in ((None, str(trainer.PROCESS_GROUP_SHUTDOWN_TIMEOUT_S)), ("12", "12")):
        if chosen is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, chosen)
        built = trainer.build(prepared, board=None, audit_samples=False)
        [timeout] = [c for c in built.run_config.callbacks if type(c).__name__ == "ProcessGroupShutdownTimeout"]
        monkeypatch.delenv(name, raising=False)
        timeout.after_controller_start(None)  # what the controller's process does when it starts
        assert os.environ[name] == expected
