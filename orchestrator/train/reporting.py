"""How a rank hands a checkpoint to storage and to Ray Train, for networks and trees alike.

Owns the one order that makes checkpoints durable without waiting for Ray
Train: rank 0's saved directory goes to our `upload.Uploader` (manifest
last) and, for early stopping's best, a second copy outside retention; every
rank then calls `ray.train.report` with the same metrics (a collective), and
Ray Train registers rank 0's upload when its controller next polls.
"""

from __future__ import annotations

from typing import Callable

import ray.train

from orchestrator.track.records import Kind
from orchestrator.train import checkpoint, upload


def report(metrics: dict, directory: str | None, *, step: int, samples: int, uploader: upload.Uploader,
           post: Callable[..., None], best: bool = False) -> None:
    """Report `metrics` from this rank, with rank 0's checkpoint `directory` (None on other ranks).

    Posts CHECKPOINT (and BEST) once the upload is complete in storage. With
    `best`, rank 0 also uploads the directory as best-<step>, a copy Ray Train's
    retention never deletes, and removes older best copies once it is complete.
    """
    # ASYNC on every rank: a SYNC report waits for the controller's next poll.
    if directory is None:
        ray.train.report(metrics, checkpoint=None, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)
        return
    name = checkpoint.dir_name(step)
    uploaded = uploader.submit(
        directory, name, keep_local=best,
        on_done=lambda written: post(kind=Kind.CHECKPOINT, step=step, samples=samples, path=written),
        overwrite=False,  # a step taken again after a fallback resume: Ray Train registered the old one
    )
    if best:
        upload_best(uploader, directory, step, post)

    def registered(_local: ray.train.Checkpoint, _name: str) -> ray.train.Checkpoint:
        return ray.train.Checkpoint(uploaded.result(), uploader.fs)

    # Our uploader makes the checkpoint durable at once. Ray Train registers it
    # when its controller next polls; its single upload thread only waits for ours.
    ray.train.report(
        metrics,
        checkpoint=ray.train.Checkpoint.from_directory(directory),
        checkpoint_dir_name=name,
        checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
        checkpoint_upload_fn=registered,
        delete_local_checkpoint_after_upload=False,
    )


def upload_best(uploader: upload.Uploader, directory: str, step: int, post: Callable[..., None]) -> None:
    """Upload `directory` as best-<step> (rank 0); once complete, the older best copies go and BEST is posted."""
    best_name = checkpoint.best_dir_name(step)

    def keep_only_this_best(_written: str) -> None:
        checkpoint.remove_bests_except(uploader.fs, uploader.run_path, best_name)
        post(kind=Kind.BEST, step=step, path=best_name)

    uploader.submit(directory, best_name, on_done=keep_only_this_best)
