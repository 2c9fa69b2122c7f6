"""Ray Train's trainer for a prepared job, and the few Ray Train settings a run tunes.

Owns the choice of trainer (TorchTrainer for networks, XGBoostTrainer or
LightGBMTrainer for trees), what every worker receives (the job, the row-group
indexes, the board), the ScalingConfig / RunConfig / FailureConfig /
CheckpointConfig, and the timeouts that decide how fast a failed group is torn
down and a finished one lets the driver go:

- a worker that stops answering is failed after `failure.hang_timeout_s`
  (Ray Train's health check), and a collective waiting on a peer gives up after
  HANG_TO_COLLECTIVE_TIMEOUT times that;
- tearing down a group's torch process group waits at most
  PROCESS_GROUP_SHUTDOWN_TIMEOUT_S (Ray's default, 30 s, is all lost when a
  rank is frozen: from a SIGSTOPped rank's failure to the new group's start
  measured 43 s with it, 17 s with 5 s);
- the controller does not wait for its placement-group cleaner to confirm it
  stopped (up to its 1 s poll at the end of every run).
"""

from __future__ import annotations

import os

from orchestrator import storage
from orchestrator.driver import failures

HANG_TO_COLLECTIVE_TIMEOUT = 5  # torch's process-group timeout, in failure.hang_timeout_s
PROCESS_GROUP_SHUTDOWN_TIMEOUT_S = 5  # a healthy group's destroy takes milliseconds


def build(prepared, board, audit_samples: bool):
    """Ray Train's trainer for `prepared` (a launch.PreparedJob): the job's model trainer with the same
    config, scaling, storage, failure and checkpoint settings, reporting group failures to `board`."""
    import ray.train

    job, backend = prepared.job, {}
    if job.model.kind == "xgboost":
        from ray.train.xgboost import XGBoostTrainer as Trainer

        from orchestrator.train.boosting import train
    elif job.model.kind == "lightgbm":
        from ray.train.lightgbm import LightGBMTrainer as Trainer

        from orchestrator.train.boosting import train
    else:
        from ray.train.torch import TorchConfig
        from ray.train.torch import TorchTrainer as Trainer

        from orchestrator.train.loop import train

        # A collective waiting on a peer that is gone gives up well before torch's 1800 s: the
        # controller's health check (below) normally ends the group first.
        backend = {"torch_config": TorchConfig(timeout_s=int(HANG_TO_COLLECTIVE_TIMEOUT * job.failure.hang_timeout_s))}
    # Ray Train reads these from the driver's environment when the controller starts and passes them on.
    os.environ["RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S"] = f"{job.failure.hang_timeout_s:g}"
    fs, run_root = storage.arrow_filesystem(job.storage)
    workers = job.scaling.workers if isinstance(job.scaling.workers, int) else tuple(job.scaling.workers)
    return _without_waiting_for_the_cleaner(Trainer)(
        train,
        **backend,
        train_loop_config={
            "job": job.to_dict(),
            "index": prepared.index,
            "validation_index": prepared.validation_index,
            "audit_samples": audit_samples,
            "board": board,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            use_gpu=job.scaling.use_gpu,
            resources_per_worker={"CPU": job.scaling.cpus_per_worker, **({"GPU": 1} if job.scaling.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=job.name,
            storage_path=run_root,
            storage_filesystem=None if storage.is_local(job.storage) else fs,
            failure_config=ray.train.FailureConfig(max_failures=job.failure.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.checkpoint.keep),
            callbacks=[failures.reporter(board), _process_group_shutdown_timeout()],
        ),
    )


def _process_group_shutdown_timeout():
    """A Ray Train callback that sets, in the controller's process, how long tearing down a group's
    torch process group may take (PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, unless the driver's environment
    names its own). Ray Train reads TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S there at each teardown,
    but V2 does not pass it from the driver as it does its RAY_TRAIN_* settings."""
    from ray.train.v2._internal.execution.callback import ControllerCallback

    name = "TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S"
    seconds = os.environ.get(name, str(PROCESS_GROUP_SHUTDOWN_TIMEOUT_S))

    class ProcessGroupShutdownTimeout(ControllerCallback):
        def after_controller_start(self, train_run_context) -> None:
            os.environ[name] = seconds

    return ProcessGroupShutdownTimeout()


def _without_waiting_for_the_cleaner(trainer_class):
    """`trainer_class` whose controller, when it shuts down, asks Ray Train's placement-group cleaner
    to stop and goes on at once, as Ray Train already does with its preemption watcher.

    Ray Train (2.60) waits for the cleaner's reply, which comes after the cleaner's next 1 s poll: up
    to a second added to every run's end. The cleaner still stops gracefully (it never removes a
    placement group the controller has not given up), and if the controller is gone before the stop
    arrives, the cleaner finds the group already removed and exits.
    """
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    class CleanerStoppedWithoutWaiting(PlacementGroupCleanerCallback):
        def _stop_cleaner(self):
            if self._cleaner is not None:
                self._cleaner.stop.remote()
                self._cleaner = None

    def default_callbacks(self):
        return [CleanerStoppedWithoutWaiting() if type(callback) is PlacementGroupCleanerCallback else callback
                for callback in trainer_class._create_default_callbacks(self)]

    return type(trainer_class.__name__, (trainer_class,), {"_create_default_callbacks": default_callbacks})
