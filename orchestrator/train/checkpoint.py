"""The train state ↔ a checkpoint directory: save, verify, load.

Owns the checkpoint format. A checkpoint describes itself:

    step-00000200/
        model.pt        the model's plain state_dict (usable on its own)
        train_state.pt  optimizer, scheduler, data cursor, counters, early-stopping state
        metrics.parquet the run's metric history up to this step (track.history.HISTORY_SCHEMA)
        job.json        the resolved job file the run was started with
        preprocessing.json  the preprocessing fitted on the training rows (data.preprocess)
        manifest.json   format version, step, and size + sha256 of every file above

The manifest is written last, and `upload` copies it to storage last, so a
directory without a valid manifest is an incomplete checkpoint and is never
resumed from. Loading verifies sizes and checksums first, then uses
`torch.load(weights_only=True)`: nothing is ever unpickled as an object.

In storage, checkpoints live side by side in the run folder; `newest_first`,
`complete_newest_first`, `local_copy` and `prune` work there on any pyarrow
filesystem; `train.upload` copies a saved directory there in the background,
manifest last, so a checkpoint is durable without waiting for Ray Train.

RNG state is not stored: the loop reseeds every generator from
(seed, step, rank) before each step, so the counters above determine it.

It knows nothing about Ray: the loop decides which checkpoint to resume from
(the newest in the run folder whose manifest verifies) and reports the
directories it saves to `ray.train.report`, which registers and retains them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow.fs
import pyarrow.parquet
import torch

from orchestrator.data.plan import Cursor
from orchestrator.errors import CheckpointError, first_line

FORMAT_VERSION = 2  # 2: preprocessing.json (typed columns)
MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
HISTORY_FILE = "metrics.parquet"
JOB_FILE = "job.json"
PREPROCESSING_FILE = "preprocessing.json"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class TrainState:
    """Everything needed to continue a run exactly where it stopped."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    cursor: Cursor
    step: int  # optimizer steps taken
    samples: int  # training rows consumed, over all ranks
    world_size: int  # of the group that wrote it
    job: dict[str, Any]  # the resolved job file
    history: pyarrow.Table  # every metric row up to `step` (track.history.HISTORY_SCHEMA)
    preprocessing: str  # the fitted preprocessing, as data.preprocess.Preprocessing.to_json wrote it
    stopping: dict[str, Any] = field(default_factory=dict)  # early-stopping state (best value, patience)


def dir_name(step: int) -> str:
    """The directory name of the checkpoint taken after `step` optimizer steps."""
    return f"step-{step:08d}"


def save(state: TrainState, directory: str) -> None:
    """Write `state` into `directory` (existing, empty); the manifest goes last."""
    torch.save(state.model, os.path.join(directory, MODEL_FILE))
    torch.save(
        {
            "optimizer": state.optimizer,
            "scheduler": state.scheduler,
            "cursor": state.cursor.to_dict(),
            "step": state.step,
            "samples": state.samples,
            "world_size": state.world_size,
            "stopping": state.stopping,
        },
        os.path.join(directory, STATE_FILE),
    )
    write_common(directory, state.history, state.job, state.preprocessing)
    write_manifest(directory, state.step, MODEL_FILE, (STATE_FILE,))


def write_manifest(directory: str, step: int, model_file: str, state_files: tuple[str, ...]) -> None:
    """Describe the checkpoint in `directory` (size and sha256 of its model file, `state_files` and
    the common files): written last, it is what makes the checkpoint complete."""
    names = (model_file, *state_files, HISTORY_FILE, JOB_FILE, PREPROCESSING_FILE)
    files = {name: _describe(os.path.join(directory, name)) for name in names}
    manifest = {"format_version": FORMAT_VERSION, "step": step, "model_file": model_file, "files": files}
    with open(os.path.join(directory, MANIFEST_FILE), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)


def model_file(manifest: dict) -> str:
    """The name of the model file in a checkpoint: model.pt for a network, the booster's own file for trees."""
    return manifest.get("model_file", MODEL_FILE)


def write_common(directory: str, history: pyarrow.Table, job: dict[str, Any], preprocessing: str) -> None:
    """The files every checkpoint holds whatever its model: metric history, job and preprocessing."""
    pyarrow.parquet.write_table(history, os.path.join(directory, HISTORY_FILE))
    with open(os.path.join(directory, JOB_FILE), "w") as f:
        json.dump(job, f, indent=2, sort_keys=True)
    with open(os.path.join(directory, PREPROCESSING_FILE), "w") as f:
        f.write(preprocessing)


def verify(directory: str) -> dict:
    """The manifest of a complete checkpoint; CheckpointError naming what is missing or corrupt."""
    manifest_path = os.path.join(directory, MANIFEST_FILE)
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {directory} is incomplete: it has no {MANIFEST_FILE}") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"checkpoint {directory} has an unreadable {MANIFEST_FILE}: {error}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {directory} has format version {manifest.get('format_version')!r}; "
            f"this orchestrator reads version {FORMAT_VERSION}"
        )
    for name, expected in manifest["files"].items():
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            raise CheckpointError(f"checkpoint {directory} is incomplete: {name} is missing")
        actual = _describe(path)
        if actual != expected:
            raise CheckpointError(
                f"checkpoint {directory} is corrupt: {name} has {actual['bytes']} bytes "
                f"(sha256 {actual['sha256'][:12]}…), its manifest says {expected['bytes']} "
                f"(sha256 {expected['sha256'][:12]}…)"
            )
    return manifest


def load(directory: str) -> TrainState:
    """The verified train state in `directory`; refuses incomplete, corrupt or unsafe files."""
    verify(directory)
    model = _safe_load(directory, MODEL_FILE)
    state = _safe_load(directory, STATE_FILE)
    with open(os.path.join(directory, JOB_FILE)) as f:
        job = json.load(f)
    with open(os.path.join(directory, PREPROCESSING_FILE)) as f:
        preprocessing = f.read()
    return TrainState(
        model=model,
        optimizer=state["optimizer"],
        scheduler=state["scheduler"],
        cursor=Cursor.from_dict(state["cursor"]),
        step=int(state["step"]),
        samples=int(state["samples"]),
        world_size=int(state["world_size"]),
        job=job,
        history=pyarrow.parquet.read_table(os.path.join(directory, HISTORY_FILE)),
        preprocessing=preprocessing,
        stopping=dict(state.get("stopping", {})),
    )


TREE_STATE_FILE = "tree_state.json"


@dataclass(frozen=True)
class TreeState:
    """Everything needed to continue a tree model's training exactly: the booster after `rounds`."""

    model: bytes  # the booster in its library's own format
    model_file: str  # its file name: model.ubj (XGBoost) | model.txt (LightGBM)
    rounds: int  # boosting rounds trained
    world_size: int  # of the group that wrote it
    job: dict[str, Any]
    history: pyarrow.Table
    preprocessing: str
    stopping: dict[str, Any] = field(default_factory=dict)


def save_trees(state: TreeState, directory: str) -> None:
    """Write a tree model's `state` into `directory` (existing, empty); the manifest goes last."""
    with open(os.path.join(directory, state.model_file), "wb") as f:
        f.write(state.model)
    with open(os.path.join(directory, TREE_STATE_FILE), "w") as f:
        json.dump({"rounds": state.rounds, "world_size": state.world_size, "stopping": state.stopping}, f)
    write_common(directory, state.history, state.job, state.preprocessing)
    write_manifest(directory, state.rounds, state.model_file, (TREE_STATE_FILE,))


def load_trees(directory: str) -> TreeState:
    """The verified tree state in `directory`; CheckpointError for an incomplete or corrupt one, or
    one that holds a network."""
    manifest = verify(directory)
    name = model_file(manifest)
    if TREE_STATE_FILE not in manifest["files"]:
        raise CheckpointError(f"checkpoint {directory} holds a network ({name}), not a tree model")
    with open(os.path.join(directory, name), "rb") as f:
        model = f.read()
    with open(os.path.join(directory, TREE_STATE_FILE)) as f:
        state = json.load(f)
    with open(os.path.join(directory, JOB_FILE)) as f:
        job = json.load(f)
    with open(os.path.join(directory, PREPROCESSING_FILE)) as f:
        preprocessing = f.read()
    return TreeState(model=model, model_file=name, rounds=int(state["rounds"]), world_size=int(state["world_size"]),
                     job=job, history=pyarrow.parquet.read_table(os.path.join(directory, HISTORY_FILE)),
                     preprocessing=preprocessing, stopping=dict(state.get("stopping", {})))


# step-<step>, or step-<step>.<n> for the n-th retake of a step after a resume from an older checkpoint.
_DIR_NAME = re.compile(r"^step-(\d{8,})(?:\.(\d+))?$")
_BEST_NAME = re.compile(r"^best-(\d{8,})$")


def unused_name(fs: pyarrow.fs.FileSystem, run_path: str, name: str) -> str:
    """`name` if no directory of the run folder has it, else its first free retake `name.<n>` (n ≥ 1).

    A group that resumes from an older checkpoint than the newest one there (which was corrupt or
    cut short) takes the same steps again. Writing a retake over the old directory would mix two
    checkpoints' files while Ray Train, which registered the old one under that path, may be
    deleting it: the retake is written beside it, and sorts after it (`newest_first`).
    """
    candidate, retake = name, 0
    while fs.get_file_info(f"{run_path}/{candidate}").type != pyarrow.fs.FileType.NotFound:
        retake += 1
        candidate = f"{name}.{retake}"
    return candidate


def best_dir_name(step: int) -> str:
    """The name of the copy of the best checkpoint (taken at `step`) kept apart from retention."""
    return f"best-{step:08d}"


def newest_best(fs: pyarrow.fs.FileSystem, run_path: str) -> str | None:
    """The newest complete best-* copy in a run folder, or None."""
    for name in _names(fs, run_path, _BEST_NAME):
        if peek(fs, f"{run_path}/{name}") is not None:
            return name
    return None


def remove_bests_except(fs: pyarrow.fs.FileSystem, run_path: str, keep: str) -> None:
    """Delete every best-* copy but `keep` (called once `keep` is complete in storage)."""
    for name in _names(fs, run_path, _BEST_NAME):
        if name != keep:
            fs.delete_dir(f"{run_path}/{name}")


def _names(fs: pyarrow.fs.FileSystem, run_path: str, pattern: re.Pattern) -> list[str]:
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(run_path, allow_not_found=True))
    except FileNotFoundError:
        return []
    names = [i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory and pattern.match(i.base_name)]
    return sorted(names, key=lambda name: _order(pattern.match(name)), reverse=True)


def _order(match: re.Match) -> tuple[int, int]:
    step, retake = (*match.groups(), None)[:2]  # best-* names have no retake
    return int(step), int(retake or 0)


def newest_first(fs: pyarrow.fs.FileSystem, run_path: str) -> list[str]:
    """Names of the checkpoint directories in a run folder, highest step first, a step's newest retake
    first (complete or not)."""
    return _names(fs, run_path, _DIR_NAME)


@contextlib.contextmanager
def local_copy(fs: pyarrow.fs.FileSystem, path: str) -> Iterator[str]:
    """A local directory holding the checkpoint at `path` (the path itself on local disk)."""
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="orchestrator-restore-") as directory:
        pyarrow.fs.copy_files(path, directory, source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
        yield directory


def peek(fs: pyarrow.fs.FileSystem, path: str) -> dict | None:
    """The manifest of the checkpoint at `path` if every file it lists is there at its size, else None.

    Cheap (no checksums): for deciding, on the driver, what a run would resume from.
    """
    try:
        with fs.open_input_stream(f"{path}/{MANIFEST_FILE}") as f:
            manifest = json.loads(f.read())
        infos = fs.get_file_info([f"{path}/{name}" for name in manifest["files"]])
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return None
    sizes_match = all(
        info.size == expected["bytes"] for info, expected in zip(infos, manifest["files"].values())
    )
    return manifest if sizes_match else None


def complete_newest_first(fs: pyarrow.fs.FileSystem, run_path: str) -> list[tuple[str, dict]]:
    """(name, manifest) of every complete checkpoint in the run folder (as `peek` judges it), newest first."""
    found = ((name, peek(fs, f"{run_path}/{name}")) for name in newest_first(fs, run_path))
    return [(name, manifest) for name, manifest in found if manifest is not None]


def read_job(fs: pyarrow.fs.FileSystem, path: str) -> dict:
    """The resolved job file stored in the checkpoint at `path`."""
    with fs.open_input_stream(f"{path}/{JOB_FILE}") as f:
        return json.loads(f.read())


def prune(fs: pyarrow.fs.FileSystem, run_path: str, keep: int) -> list[str]:
    """Delete incomplete checkpoints and all but the newest `keep` complete ones; returns what was deleted."""
    kept = {name for name, _ in complete_newest_first(fs, run_path)[:keep]}
    deleted = [name for name in newest_first(fs, run_path) if name not in kept]
    for name in deleted:
        fs.delete_dir(f"{run_path}/{name}")
    return deleted


def load_tensors(source: str | bytes, where: str) -> Any:
    """Tensors and plain containers from a file path or its bytes, with `torch.load(weights_only=True)`.

    Nothing is unpickled as an object: a file holding pickled Python objects,
    or a torn one, is a CheckpointError naming `where`.
    """
    try:
        return torch.load(io.BytesIO(source) if isinstance(source, bytes) else source,
                          map_location="cpu", weights_only=True)
    except Exception as error:  # a weights_only refusal or a torn file: never unpickle further
        objects = " it holds pickled Python objects, and" if isinstance(error, pickle.UnpicklingError) else ""
        raise CheckpointError(
            f"refusing to load {where}:{objects} checkpoints and model.pt are loaded as plain tensors "
            f"with weights_only=True ({first_line(error)})"
        ) from None


def _safe_load(directory: str, name: str) -> Any:
    path = os.path.join(directory, name)
    return load_tensors(path, path)


def _describe(path: str) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}
