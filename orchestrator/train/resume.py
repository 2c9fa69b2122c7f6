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

import json
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow.fs
import torch.distributed as dist

from orchestrator.data.index import DatasetIndex
from orchestrator.data.partials import Partial, assemble
from orchestrator.data.preprocess import Preprocessing, finish
from orchestrator.data.reader import fit_nodes
from orchestrator.errors import CheckpointError, DataError
from orchestrator.train import checkpoint


@dataclass(frozen=True)
class Collectives:
    """How the ranks of a group share values here: rank 0's small value with every rank, and every
    rank's fitted merge-tree nodes (or its DataError) with every rank."""

    from_rank_0: Callable[[Any], Any]
    all_gather_nodes: Callable[[dict | DataError], list[dict | DataError]]


def _torch_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _torch_from_rank_0(value):
    if not _torch_distributed():
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def _torch_all_gather(value) -> list:
    if not _torch_distributed():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


TORCH = Collectives(_torch_from_rank_0, _torch_all_gather)  # a network's group: torch.distributed


def ray_train_collectives(fs: pyarrow.fs.FileSystem, run_path: str, rank: int, world: int) -> Collectives:
    """For groups without torch.distributed (tree models): Ray Train's own barrier and broadcast for
    small values; the fitted nodes travel through the run folder, as JSON (never pickled)."""
    from ray.train import collective

    def all_gather_nodes(mine: dict | DataError) -> list[dict | DataError]:
        if world == 1:
            return [mine]
        folder = f"{run_path}/.fitting-{collective.broadcast_from_rank_zero(uuid.uuid4().hex)}"
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(f"{folder}/rank-{rank}.json") as out:
            out.write(json.dumps(_nodes_to_json(mine)).encode())
        collective.barrier()
        gathered = []
        for other in range(world):
            with fs.open_input_stream(f"{folder}/rank-{other}.json") as f:
                gathered.append(_nodes_from_json(json.loads(f.read())))
        collective.barrier()  # every rank has read every file
        if rank == 0:
            fs.delete_dir(folder)
        return gathered

    return Collectives(collective.broadcast_from_rank_zero, all_gather_nodes)


def _nodes_to_json(nodes: dict | DataError) -> dict:
    if isinstance(nodes, DataError):
        return {"error": str(nodes)}
    return {"nodes": [[a, b, partial.to_json()] for (a, b), partial in nodes.items()]}


def _nodes_from_json(raw: dict) -> dict | DataError:
    if "error" in raw:
        return DataError(raw["error"])
    return {(a, b): Partial.from_json(text) for a, b, text in raw["nodes"]}


def newest_verified(fs: pyarrow.fs.FileSystem, run_path: str, rank: int, warn: Callable[[str], None],
                    load: Callable[[str], Any] = checkpoint.load, collectives: Collectives = TORCH) -> Any:
    """The state (`load` of its directory) of the newest checkpoint whose manifest verifies, chosen by
    rank 0, on every rank; None to start fresh. A corrupt or half-written checkpoint is skipped with
    `warn` (a collective)."""
    chosen, state = None, None
    if rank == 0:
        for name in checkpoint.newest_first(fs, run_path):
            try:
                with checkpoint.local_copy(fs, f"{run_path}/{name}") as directory:
                    chosen, state = name, load(directory)
                break
            except CheckpointError as error:
                warn(f"skipping checkpoint {name}: {error}; trying an older one")
    chosen = collectives.from_rank_0(chosen)
    if chosen is not None and state is None:
        with checkpoint.local_copy(fs, f"{run_path}/{chosen}") as directory:
            state = load(directory)
    return state


def preprocessing(index: DatasetIndex, holdout_fraction: float, state: Any, fs: pyarrow.fs.FileSystem,
                  run_path: str, rank: int, world: int, collectives: Collectives = TORCH) -> tuple[Preprocessing, bool]:
    """The run's fitted preprocessing (see the module doc), the same on every rank, and whether it was
    fitted here (False: loaded). `state` is the checkpoint state resumed from, or None. A collective."""
    if state is not None:
        return Preprocessing.from_json(state.preprocessing), False
    path = f"{run_path}/{checkpoint.PREPROCESSING_FILE}"
    if collectives.from_rank_0(_read_text(fs, path) is not None if rank == 0 else None):
        return Preprocessing.from_json(_read_text(fs, path)), False
    try:
        mine: dict | DataError = fit_nodes(index, holdout_fraction, world, rank)
    except DataError as error:  # shared below, so every rank stops here, none waits in a collective
        mine = error
    gathered = collectives.all_gather_nodes(mine)
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
