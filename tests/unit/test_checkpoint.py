"""checkpoint: the format on disk, verification, safe loading, storage scans and retention."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

import pyarrow.fs
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

from orchestrator.data.plan import Cursor
from orchestrator.errors import CheckpointError
from orchestrator.track.history import HISTORY_SCHEMA, History
from orchestrator.train import checkpoint, upload


def make_state(step: int = 40) -> checkpoint.TrainState:
    torch.manual_seed(step)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    return checkpoint.TrainState(
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler={"last_epoch": step},
        cursor=Cursor(epoch=1, batch=7),
        step=step,
        samples=step * 256,
        world_size=2,
        job={"name": "x", "train": {"seed": 0}},
        history=History().table(),
        preprocessing='{"type": "Preprocessing"}',
        stopping={"best_value": 0.5, "best_step": step},
    )


def saved(tmp_path, step=40) -> str:
    directory = tmp_path / checkpoint.dir_name(step)
    directory.mkdir()
    checkpoint.save(make_state(step), str(directory))
    return str(directory)


def test_a_saved_checkpoint_loads_back_exactly(tmp_path):
    state = make_state()
    directory = saved(tmp_path)
    loaded = checkpoint.load(directory)
    assert loaded.cursor == Cursor(1, 7) and loaded.step == 40 and loaded.samples == 40 * 256
    assert all(torch.equal(loaded.model[k], v) for k, v in state.model.items())
    exp_avg = loaded.optimizer["state"][0]["exp_avg"]
    assert torch.equal(exp_avg, state.optimizer["state"][0]["exp_avg"])
    assert loaded.job == {"name": "x", "train": {"seed": 0}}
    assert loaded.stopping == {"best_value": 0.5, "best_step": 40}
    assert loaded.preprocessing == state.preprocessing


def test_the_metric_history_travels_in_the_checkpoint(tmp_path):
    history = History()
    history.add(1, 0, {"train/loss": 2.0, "train/lr": 0.1}, 100.0)
    history.add(2, 0, {"train/loss": 1.5, "train/lr": 0.1, "val/loss": 1.7}, 101.0)
    directory = tmp_path / "step-00000002"
    directory.mkdir()
    checkpoint.save(dataclasses.replace(make_state(2), history=history.table()), str(directory))
    loaded = checkpoint.load(str(directory)).history
    assert loaded.schema == HISTORY_SCHEMA
    assert loaded.to_pylist() == history.table().to_pylist()


def test_model_pt_is_a_plain_state_dict_loadable_with_weights_only(tmp_path):
    directory = saved(tmp_path)
    weights = torch.load(os.path.join(directory, checkpoint.MODEL_FILE), weights_only=True)
    assert set(weights) == {"weight", "bias"}


def test_a_truncated_file_is_reported_as_corrupt_naming_it(tmp_path):
    directory = saved(tmp_path)
    path = os.path.join(directory, checkpoint.STATE_FILE)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match=r"step-00000040 is corrupt: train_state.pt has \d+ bytes"):
        checkpoint.load(directory)


def test_a_wrong_checksum_in_the_manifest_is_reported_as_corrupt(tmp_path):
    directory = saved(tmp_path)
    manifest_path = os.path.join(directory, checkpoint.MANIFEST_FILE)
    manifest = json.load(open(manifest_path))
    manifest["files"][checkpoint.MODEL_FILE]["sha256"] = "0" * 64
    json.dump(manifest, open(manifest_path, "w"))
    with pytest.raises(CheckpointError, match="corrupt: model.pt"):
        checkpoint.verify(directory)


def test_a_directory_without_a_manifest_is_incomplete(tmp_path):
    directory = saved(tmp_path)
    os.remove(os.path.join(directory, checkpoint.MANIFEST_FILE))
    with pytest.raises(CheckpointError, match="incomplete: it has no manifest.json"):
        checkpoint.load(directory)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_checkpoint_carrying_a_pickled_object_is_refused(tmp_path):
    directory = tmp_path / "step-00000001"
    directory.mkdir()
    checkpoint.save(make_state(1), str(directory))
    torch.save({"optimizer": Payload()}, directory / checkpoint.STATE_FILE)
    manifest_path = directory / checkpoint.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][checkpoint.STATE_FILE] = checkpoint._describe(str(directory / checkpoint.STATE_FILE))
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="refusing to load .*pickled Python objects.*weights_only=True"):
        checkpoint.load(str(directory))


def test_upload_then_scan_finds_checkpoints_newest_first(tmp_path):
    fs = pyarrow.fs.LocalFileSystem()
    local = tmp_path / "local"
    local.mkdir()
    run = tmp_path / "run"
    for step in (5, 120, 40):
        source = saved(local, step)
        upload.upload(source, fs, str(run / checkpoint.dir_name(step)))
    (run / "not-a-checkpoint").mkdir()
    assert checkpoint.newest_first(fs, str(run)) == ["step-00000120", "step-00000040", "step-00000005"]
    assert checkpoint.peek(fs, str(run / "step-00000120"))["step"] == 120
    assert checkpoint.newest_first(fs, str(tmp_path / "missing")) == []


def test_prune_keeps_the_newest_complete_checkpoints_and_drops_half_written_ones(tmp_path):
    fs = pyarrow.fs.LocalFileSystem()
    for step in (10, 20, 30):
        saved(tmp_path, step)
    half = tmp_path / "step-00000040"
    half.mkdir()
    (half / checkpoint.MODEL_FILE).write_bytes(b"partial")
    deleted = checkpoint.prune(fs, str(tmp_path), keep=2)
    assert sorted(deleted) == ["step-00000010", "step-00000040"]
    assert checkpoint.newest_first(fs, str(tmp_path)) == ["step-00000030", "step-00000020"]


def test_checkpoint_errors_survive_pickling():
    error = pickle.loads(pickle.dumps(CheckpointError("checkpoint x is corrupt")))
    assert isinstance(error, CheckpointError) and str(error) == "checkpoint x is corrupt"


class FlakyFileSystem(MemoryFileSystem):
    """An in-memory fsspec filesystem whose opens for writing fail `failures` times, then succeed."""

    protocol = "flaky"

    def __init__(self, failures: int, **kwargs):
        super().__init__(**kwargs)
        self.store, self.pseudo_dirs = {}, [""]  # its own files, not MemoryFileSystem's shared ones
        self.failures, self.attempts = failures, 0

    def _open(self, path, mode="rb", **kwargs):
        if "w" in mode:
            self.attempts += 1
            if self.failures > 0:
                self.failures -= 1
                raise OSError("503 Slow Down (injected)")
        return super()._open(path, mode, **kwargs)


def saved_checkpoint(directory, step: int) -> str:
    local = directory / f"local-{step}"
    local.mkdir()
    checkpoint.save(make_state(step=step), str(local))
    return str(local)


def test_a_transient_upload_failure_is_retried_and_the_checkpoint_completes(tmp_path, monkeypatch):
    monkeypatch.setattr(upload, "UPLOAD_BACKOFF_S", 0.01)
    flaky = FlakyFileSystem(failures=2, skip_instance_cache=True)
    fs = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(flaky))
    uploader = upload.Uploader(fs, "/run")
    uploader.submit(saved_checkpoint(tmp_path, 10), checkpoint.dir_name(10)).result()
    uploader.close()
    assert checkpoint.peek(fs, f"/run/{checkpoint.dir_name(10)}") is not None
    assert flaky.attempts > len(os.listdir(tmp_path)) and flaky.failures == 0


def test_a_persistent_upload_failure_fails_naming_the_resume_point_and_never_looks_complete(tmp_path, monkeypatch):
    monkeypatch.setattr(upload, "UPLOAD_BACKOFF_S", 0.01)
    flaky = FlakyFileSystem(failures=0, skip_instance_cache=True)
    fs = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(flaky))
    uploader = upload.Uploader(fs, "/run")
    uploader.submit(saved_checkpoint(tmp_path, 10), checkpoint.dir_name(10)).result()
    flaky.failures = 10**6  # storage goes away for good
    future = uploader.submit(saved_checkpoint(tmp_path, 20), checkpoint.dir_name(20))
    with pytest.raises(CheckpointError) as info:
        future.result()
    message = str(info.value)
    assert "step-00000020 could not be uploaded" in message and "503 Slow Down" in message
    assert "step-00000010 stays the newest complete one" in message
    assert checkpoint.peek(fs, f"/run/{checkpoint.dir_name(20)}") is None
    assert [name for name, _ in checkpoint.complete_newest_first(fs, "/run")] == ["step-00000010"]


def test_a_step_taken_again_is_written_beside_its_old_directory_and_sorts_as_the_newer(tmp_path):
    # After a fallback resume, the group takes a step again whose old directory (corrupt, and registered
    # with Ray Train, which may delete it) is still there: the retake must not write into it.
    fs, run = pyarrow.fs.LocalFileSystem(), str(tmp_path / "run")
    uploader = upload.Uploader(fs, run)
    written: list[str] = []
    for step in (30, 40):
        uploader.submit(saved_checkpoint(tmp_path, step), checkpoint.dir_name(step), overwrite=False,
                        on_done=written.append).result()
    with open(f"{run}/step-00000040/{checkpoint.MODEL_FILE}", "r+b") as f:
        f.truncate(100)  # corrupt, as a crash or a bad disk leaves it
    local = tmp_path / "retake"
    local.mkdir()
    checkpoint.save(make_state(step=40), str(local))
    uploader.submit(str(local), checkpoint.dir_name(40), overwrite=False, on_done=written.append).result()
    uploader.close()
    assert written == ["step-00000030", "step-00000040", "step-00000040.1"]
    assert os.path.getsize(f"{run}/step-00000040/{checkpoint.MODEL_FILE}") == 100  # left as it was
    assert checkpoint.newest_first(fs, run) == ["step-00000040.1", "step-00000040", "step-00000030"]
    assert [name for name, _ in checkpoint.complete_newest_first(fs, run)] == ["step-00000040.1", "step-00000030"]
