"""Using a trained run: batch predictions over Parquet, and metrics on held-out data.

Owns loading a run's model for inference (weights from `model.pt` or a named
checkpoint, the architecture from the resolved job the run stored), reading
new Parquet with column projection, and writing predictions as Parquet.
Runs in the calling process on the CPU; no Ray.

Prediction columns, one row per input row in input order (files in sorted
path order, rows in file order — the row ids used everywhere else):

    row                  int64, the row's position in the input
    prediction           regression: the model's output (prediction_<k> for k > 1 outputs);
                         bce: the class, 1 when the logit is > 0 else 0;
                         cross_entropy: the class with the highest logit
    probability          bce: sigmoid(logit)
    probability_<k>      cross_entropy: softmax over the classes

The features are the job's `data.features`, or when the job left them out,
every column of the new data except the label (as training resolved them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
import torch
from torch import nn

from orchestrator import storage
from orchestrator.data import source
from orchestrator.data.reader import validation_batches
from orchestrator.driver.runfolder import RUN_FILE
from orchestrator.errors import CheckpointError, DataError, ReportError, first_line
from orchestrator.job import spec
from orchestrator.train import checkpoint, models

DEFAULT_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class TrainedModel:
    """A run's weights and the job that defines their architecture; `build` makes the module."""

    run_url: str
    weights: str  # where the weights came from (model.pt or a checkpoint directory)
    job: spec.JobSpec
    state: dict[str, torch.Tensor]

    @property
    def outputs(self) -> int:
        """The model's output width: the job's, else 1 unless cross_entropy, else the last layer's width."""
        if self.job.model.outputs is not None:
            return self.job.model.outputs
        if self.job.loss.name != "cross_entropy":
            return 1
        last = [tensor for tensor in self.state.values() if tensor.ndim >= 1]
        return int(last[-1].shape[0])

    def build(self, features: tuple[str, ...]) -> nn.Module:
        """The model for these feature columns, with the run's weights loaded, in eval mode."""
        net = models.build_model(self.job.model, len(features), self.outputs)
        try:
            net.load_state_dict(self.state)
        except RuntimeError as error:
            first = first_line(error, last=True)
            how = ("the job named its data.features" if self.job.data.features else
                   f"the job did not name data.features, so every column but the label {self.job.data.label!r} "
                   "is a feature: the new data must have exactly the training columns")
            raise DataError(
                f"The weights in {self.weights} do not fit a {self.job.model.kind} model over "
                f"{len(features)} feature column(s) ({', '.join(features)}) and {self.outputs} output(s): "
                f"{first}. {how[0].upper() + how[1:]}."
            ) from None
        return net.eval()


def load(run_url: str, checkpoint_name: str | None = None) -> TrainedModel:
    """The final model of the run at `run_url` (model.pt), or the checkpoint named `checkpoint_name`.

    The job comes from the checkpoint's job.json when one is named, else from
    run.json, else from the newest complete checkpoint.
    """
    run_url = storage.absolute(run_url)
    fs, run_path = storage.arrow_filesystem(run_url)
    if checkpoint_name:
        where = f"{run_path}/{checkpoint_name.strip('/')}"
        if checkpoint.peek(fs, where) is None:
            raise CheckpointError(
                f"No complete checkpoint {checkpoint_name!r} in the run at {run_url!r}; "
                f"complete ones: {', '.join(_complete(fs, run_path)) or 'none'}."
            )
        with checkpoint.local_copy(fs, where) as directory:
            checkpoint.verify(directory)
            with open(f"{directory}/{checkpoint.MODEL_FILE}", "rb") as f:
                state = checkpoint.load_tensors(f.read(), f"{where}/{checkpoint.MODEL_FILE}")
        job = checkpoint.read_job(fs, where)
        return TrainedModel(run_url, storage.join(run_url, checkpoint_name), _job(job, where), state)
    model_path = f"{run_path}/{checkpoint.MODEL_FILE}"
    try:
        with fs.open_input_stream(model_path) as f:
            state = checkpoint.load_tensors(f.read(), model_path)
    except FileNotFoundError:
        raise CheckpointError(
            f"The run at {run_url!r} has no {checkpoint.MODEL_FILE} (it is written when a run finishes). "
            f"Pass --checkpoint with one of its complete checkpoints: {', '.join(_complete(fs, run_path)) or 'none'}."
        ) from None
    meta = storage.read_json(fs, f"{run_path}/{RUN_FILE}")
    if meta and meta.get("job"):
        return TrainedModel(run_url, storage.join(run_url, checkpoint.MODEL_FILE), _job(meta["job"], RUN_FILE), state)
    complete = _complete(fs, run_path)
    if not complete:
        raise ReportError(f"The run at {run_url!r} has model.pt but neither {RUN_FILE} nor a checkpoint "
                          "holding its job, so its architecture is unknown.")
    job = checkpoint.read_job(fs, f"{run_path}/{complete[0]}")
    return TrainedModel(run_url, storage.join(run_url, checkpoint.MODEL_FILE), _job(job, complete[0]), state)


def predict(run_url: str, data_url: str, out_url: str, *, checkpoint_name: str | None = None,
            batch_rows: int = DEFAULT_BATCH_ROWS) -> int:
    """Write one prediction per row of the Parquet at `data_url` to the Parquet file `out_url`; returns the rows."""
    trained = load(run_url, checkpoint_name)
    data_url = storage.absolute(data_url)
    features = _features(trained.job, data_url)
    net = trained.build(features)
    fs, out_path = storage.arrow_filesystem(storage.absolute(out_url))
    if "/" in out_path.rstrip("/"):
        fs.create_dir(out_path.rsplit("/", 1)[0], recursive=True)
    rows, writer = 0, None
    try:
        for matrix in _feature_batches(data_url, features, batch_rows):
            with torch.inference_mode():
                outputs = net(torch.from_numpy(matrix))
            table = _prediction_table(trained.job.loss.name, outputs, rows)
            if writer is None:
                writer = pq.ParquetWriter(fs.open_output_stream(out_path), table.schema)
            writer.write_table(table)
            rows += len(matrix)
        if writer is None:  # no rows at all: still a file, with the columns
            pq.write_table(_prediction_table(trained.job.loss.name, torch.empty(0, trained.outputs), 0),
                           out_path, filesystem=fs)
    finally:
        if writer is not None:
            writer.close()
    return rows


def evaluate(run_url: str, data_url: str, *, checkpoint_name: str | None = None,
             batch_rows: int = DEFAULT_BATCH_ROWS) -> dict[str, float]:
    """Loss, plus accuracy (classification) or R² (regression), of the run's model over every row at `data_url`."""
    trained = load(run_url, checkpoint_name)
    job, data_url = trained.job, storage.absolute(data_url)
    schema = _schema(data_url)
    if job.data.label not in schema.names:
        raise DataError(
            f"evaluate needs the label column {job.data.label!r} (the run's data.label) in the data at "
            f"{data_url!r}, which has only: {', '.join(schema.names)}. Use `orchestrator predict` for unlabelled data."
        )
    index = source.scan(data_url, job.data.label, job.data.features)
    net = trained.build(index.features)
    totals = torch.zeros(6, dtype=torch.float64)
    with torch.inference_mode():
        for batch in validation_batches(index, world_size=1, rank=0, batch_rows=batch_rows, holdout_fraction=None,
                                        label_dtype=models.label_dtype(job.loss)):
            totals += models.evaluation_totals(job.loss, net(batch.features), batch.labels)
    return {"rows": int(totals[1]), **models.evaluation_metrics(job.loss, totals.tolist())}


def _features(job: spec.JobSpec, data_url: str) -> tuple[str, ...]:
    if job.data.features:
        return tuple(job.data.features)
    return tuple(name for name in _schema(data_url).names if name != job.data.label)


def _schema(data_url: str) -> pa.Schema:
    """The Arrow schema of the first Parquet file at `data_url` (footer only)."""
    fs, _ = storage.arrow_filesystem(data_url)
    return pq.read_schema(source.discover(data_url)[0], filesystem=fs)


def _feature_batches(data_url: str, features: tuple[str, ...], batch_rows: int) -> Iterator[np.ndarray]:
    """[rows, features] float32 batches of every row at `data_url`, in row-id order, reading only `features`.

    Not `source.scan` + `RowGroupSource`: those need the label column, and
    data to predict on usually has none.
    """
    fs, _ = storage.arrow_filesystem(data_url)
    for path in source.discover(data_url):
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            missing = [name for name in features if name not in names]
            if missing:
                raise DataError(f"{path}: feature column(s) {', '.join(map(repr, missing))} missing; "
                                f"available columns: {', '.join(names)}")
            for record_batch in parquet.iter_batches(batch_size=batch_rows, columns=list(features)):
                yield _matrix(record_batch, path)


def _matrix(record_batch: pa.RecordBatch, path: str) -> np.ndarray:
    matrix = np.empty((record_batch.num_rows, record_batch.num_columns), dtype=np.float32)
    for j, (name, column) in enumerate(zip(record_batch.schema.names, record_batch.columns)):
        kind = column.type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            raise DataError(f"{path}: feature column {name!r} has Arrow type {kind}; "
                            "allowed: integer, floating point or boolean")
        if column.null_count:
            raise DataError(f"{path}: feature column {name!r} has {column.null_count} null value(s); "
                            "nulls are not allowed")
        matrix[:, j] = column.to_numpy(zero_copy_only=False)
    return matrix


def _prediction_table(loss: str, outputs: torch.Tensor, first_row: int) -> pa.Table:
    """The prediction columns (see the module docstring) for one batch of model outputs."""
    outputs = outputs.float()
    columns = {"row": np.arange(first_row, first_row + len(outputs), dtype=np.int64)}
    if loss == "cross_entropy":
        columns["prediction"] = outputs.argmax(dim=-1).numpy()
        probabilities = torch.softmax(outputs, dim=-1).numpy()
        columns.update({f"probability_{k}": probabilities[:, k] for k in range(probabilities.shape[1])})
    elif loss == "bce":
        logits = outputs.squeeze(-1)
        columns["prediction"] = (logits > 0).to(torch.int64).numpy()
        columns["probability"] = torch.sigmoid(logits).numpy()
    elif outputs.shape[-1] == 1:
        columns["prediction"] = outputs.squeeze(-1).numpy()
    else:
        columns.update({f"prediction_{k}": outputs[:, k].numpy() for k in range(outputs.shape[-1])})
    return pa.table(columns)


def _job(raw: dict, where: str) -> spec.JobSpec:
    return spec.from_dict(raw, source=where)


def _complete(fs: pyarrow.fs.FileSystem, run_path: str) -> list[str]:
    """Names of the run's complete checkpoints, newest first."""
    return [name for name, _ in checkpoint.complete_newest_first(fs, run_path)]
