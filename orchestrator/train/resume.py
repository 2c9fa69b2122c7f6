"""Where a worker group starts from: the checkpoint to continue, and the fitted preprocessing.

The resume rule: continue from the newest checkpoint in the run folder whose
manifest verifies. Every checkpoint Ray Train hands back
(`ray.train.get_checkpoint()`) is among them, but Ray registers a report only
when its controller next polls the workers, so a worker that dies right after
reporting would send the group back one checkpoint; and an upload cut short
leaves a directory Ray may list. Rank 0 chooses and every rank loads its
choice, so all ranks continue from the same step.

The preprocessing is fitted once per run, before the first step, and never
again: a group that resumes takes it from its checkpoint; one that restarts
before the first checkpoint takes the copy rank 0 wrote into the run folder
right after fitting; only a new run fits. Fitting is a reduction along a fixed
merge tree over the row groups: each rank merges the nodes inside its
contiguous share of the training row groups (`reader.fit_nodes`), every rank
gathers every rank's nodes (O(log row groups) each) and `assemble` merges them
up the same tree, so every rank — at any world size — holds the same bits.
"""

from __future__ import annotations

from typing import Callable

import pyarrow.fs
import torch.distributed as dist

from orchestrator.data.index import DatasetIndex
from orchestrator.data.partials import assemble
from orchestrator.data.preprocess import Preprocessing, finish
from orchestrator.data.reader import fit_nodes
from orchestrator.errors import CheckpointError, DataError
from orchestrator.train import checkpoint


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _from_rank_0(value):
    """Rank 0's `value` on every rank (a collective)."""
    if not _distributed():
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def newest_verified(fs: pyarrow.fs.FileSystem, run_path: str, rank: int,
                    warn: Callable[[str], None]) -> checkpoint.TrainState | None:
    """The state of the newest checkpoint whose manifest verifies, chosen by rank 0, on every rank;
    None to start fresh. A corrupt or half-written checkpoint is skipped with `warn` (a collective)."""
    chosen, state = None, None
    if rank == 0:
        for name in checkpoint.newest_first(fs, run_path):
            try:
                with checkpoint.local_copy(fs, f"{run_path}/{name}") as directory:
                    chosen, state = name, checkpoint.load(directory)
                break
            except CheckpointError as error:
                warn(f"skipping checkpoint {name}: {error}; trying an older one")
    chosen = _from_rank_0(chosen)
    if chosen is not None and state is None:
        with checkpoint.local_copy(fs, f"{run_path}/{chosen}") as directory:
            state = checkpoint.load(directory)
    return state


def preprocessing(index: DatasetIndex, holdout_fraction: float, state: checkpoint.TrainState | None,
                  fs: pyarrow.fs.FileSystem, run_path: str, rank: int, world: int) -> tuple[Preprocessing, bool]:
    """The run's fitted preprocessing (see the module doc), the same on every rank, and whether it was
    fitted here (False: loaded). A collective."""
    if state is not None:
        return Preprocessing.from_json(state.preprocessing), False
    path = f"{run_path}/{checkpoint.PREPROCESSING_FILE}"
    saved = _from_rank_0(_read_text(fs, path) if rank == 0 else None)
    if saved is not None:
        return Preprocessing.from_json(saved), False
    try:
        mine: dict | DataError = fit_nodes(index, holdout_fraction, world, rank)
    except DataError as error:  # shared below, so every rank stops here, none waits in a collective
        mine = error
    gathered = [mine]
    if _distributed():
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
    errors = [part for part in gathered if isinstance(part, DataError)]
    if errors:
        raise errors[0]
    nodes = {span: partial for part in gathered for span, partial in part.items()}
    fitted = finish(index.columns, assemble(index.columns, nodes, 0, len(index.row_groups)))
    if rank == 0:
        with fs.open_output_stream(path) as out:
            out.write(fitted.to_json().encode())
    return fitted, True


def _read_text(fs: pyarrow.fs.FileSystem, path: str) -> str | None:
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode()
    except FileNotFoundError:
        return None
