"""Using a trained run: batch predictions over Parquet, and metrics on held-out data.

Owns loading a run's model for inference (weights from `model.pt` or a named
checkpoint, the architecture from the resolved job the run stored, the
preprocessing fitted when it trained), reading raw Parquet with column
projection, applying that preprocessing unchanged (unseen categories, nulls
and NaN are data, as in training), and writing predictions as Parquet. Runs
in the calling process on the CPU; no Ray.

Prediction columns, one row per input row in input order (files in sorted
path order, rows in file order — the row ids used everywhere else):

    row                  int64, the row's position in the input
    prediction           regression: the model's output in the label's units
                         (prediction_<k> for k > 1 outputs); classification:
                         the most probable class, as the label's own value
    probability_<class>  classification: each class's probability, named
                         after the class value ("probability_yes")

The features are the columns the run was trained on (its resolved
`data.features`); the new data must have them, the label is not needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
import torch
from torch import nn

from orchestrator import storage
from orchestrator.data import source
from orchestrator.data.matrix import tree_matrix
from orchestrator.data.preprocess import Preprocessing, transform
from orchestrator.data.reader import RowGroupSource, validation_batches
from orchestrator.driver.runfolder import RUN_FILE
from orchestrator.errors import CheckpointError, DataError, ReportError, first_line
from orchestrator.job import spec
from orchestrator.train import boosters, checkpoint, models
from orchestrator.train.metrics import Accumulator

DEFAULT_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class TrainedModel:
    """A run's weights, the job that defines their architecture and the preprocessing they were trained with."""

    run_url: str
    weights: str  # where the weights came from (the model file or a checkpoint directory)
    job: spec.JobSpec
    state: dict[str, torch.Tensor] | bytes  # a network's state_dict, or a tree model's booster file
    preprocessing: Preprocessing

    def outputs_of(self) -> Callable[[pa.Table], torch.Tensor]:
        """A function from a table of raw feature columns to the model's outputs, as a network of
        this job outputs them (regression standardized, classification logits)."""
        if self.job.model.trees:
            library = boosters.library(self.job.model.kind)
            booster = library.load(self.state)
            label = self.preprocessing.label
            return lambda table: boosters.network_outputs(
                library.margins(booster, tree_matrix(self.preprocessing, table).features), label)
        net = self.build()

        def forward(table: pa.Table) -> torch.Tensor:
            encoded = transform(self.preprocessing, table)
            with torch.inference_mode():
                return net(torch.from_numpy(encoded.numeric), torch.from_numpy(encoded.codes))

        return forward

    @property
    def outputs(self) -> int:
        """The model's output width."""
        return models.output_size(self.job, self.preprocessing.input_description())

    def build(self) -> nn.Module:
        """The network with the run's weights loaded, in eval mode."""
        inputs = self.preprocessing.input_description()
        net = models.build_model(self.job.model, self.job.loss, inputs, self.outputs)
        try:
            net.load_state_dict(self.state)
        except RuntimeError as error:
            raise CheckpointError(
                f"The weights in {self.weights} do not fit the {self.job.model.kind} model its job and "
                f"preprocessing describe ({inputs.numeric_width} numeric input(s), {inputs.code_width} code "
                f"column(s), {self.outputs} output(s)): {first_line(error, last=True)}."
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
        manifest = checkpoint.peek(fs, where)
        if manifest is None:
            raise CheckpointError(
                f"No complete checkpoint {checkpoint_name!r} in the run at {run_url!r}; "
                f"complete ones: {', '.join(_complete(fs, run_path)) or 'none'}."
            )
        job = _job(checkpoint.read_job(fs, where), where)
        name = checkpoint.model_file(manifest)
        with checkpoint.local_copy(fs, where) as directory:
            checkpoint.verify(directory)
            with open(f"{directory}/{name}", "rb") as f:
                state = _model_state(job, f.read(), f"{where}/{name}")
        return TrainedModel(run_url, storage.join(run_url, checkpoint_name), job, state,
                            _preprocessing(fs, where, run_url))
    job = _run_job(fs, run_path, run_url)
    name = boosters.library(job.model.kind).model_file if job.model.trees else checkpoint.MODEL_FILE
    model_path = f"{run_path}/{name}"
    try:
        with fs.open_input_stream(model_path) as f:
            state = _model_state(job, f.read(), model_path)
    except FileNotFoundError:
        raise CheckpointError(
            f"The run at {run_url!r} has no {name} (it is written when a run finishes). "
            f"Pass --checkpoint with one of its complete checkpoints: {', '.join(_complete(fs, run_path)) or 'none'}."
        ) from None
    return TrainedModel(run_url, storage.join(run_url, name), job, state, _preprocessing(fs, run_path, run_url))


def _run_job(fs: pyarrow.fs.FileSystem, run_path: str, run_url: str) -> spec.JobSpec:
    """The run's resolved job: from run.json, else from its newest complete checkpoint."""
    meta = storage.read_json(fs, f"{run_path}/{RUN_FILE}")
    if meta and meta.get("job"):
        return _job(meta["job"], RUN_FILE)
    complete = _complete(fs, run_path)
    if not complete:
        raise ReportError(f"The run at {run_url!r} has neither {RUN_FILE} nor a complete checkpoint "
                          "holding its job, so its model is unknown.")
    return _job(checkpoint.read_job(fs, f"{run_path}/{complete[0]}"), complete[0])


def _model_state(job: spec.JobSpec, data: bytes, where: str) -> dict[str, torch.Tensor] | bytes:
    """A network's state_dict (loaded as plain tensors), or a tree model's booster file as it is."""
    return data if job.model.trees else checkpoint.load_tensors(data, where)


def predict(run_url: str, data_url: str, out_url: str, *, checkpoint_name: str | None = None,
            batch_rows: int = DEFAULT_BATCH_ROWS) -> int:
    """Write one prediction per row of the Parquet at `data_url` to the Parquet file `out_url`; returns the rows."""
    trained = load(run_url, checkpoint_name)
    data_url = storage.absolute(data_url)
    outputs_of = trained.outputs_of()
    fs, out_path = storage.arrow_filesystem(storage.absolute(out_url))
    if "/" in out_path.rstrip("/"):
        fs.create_dir(out_path.rsplit("/", 1)[0], recursive=True)
    rows, writer = 0, None
    try:
        for table in _raw_batches(data_url, trained.preprocessing, batch_rows):
            predictions = _prediction_table(trained, outputs_of(table), rows)
            if writer is None:
                writer = pq.ParquetWriter(fs.open_output_stream(out_path), predictions.schema)
            writer.write_table(predictions)
            rows += table.num_rows
        if writer is None:  # no rows at all: still a file, with the columns
            pq.write_table(_prediction_table(trained, torch.empty(0, trained.outputs), 0), out_path, filesystem=fs)
    finally:
        if writer is not None:
            writer.close()
    return rows


def evaluate(run_url: str, data_url: str, *, checkpoint_name: str | None = None,
             batch_rows: int = DEFAULT_BATCH_ROWS) -> dict[str, float]:
    """The run's validation metrics (train.metrics) over every labelled row at `data_url`, plus `rows`
    (the rows that had a label the run knows) and `unlabelled` (the others, left out)."""
    trained = load(run_url, checkpoint_name)
    job, data_url = trained.job, storage.absolute(data_url)
    schema = _schema(data_url)
    if job.data.label not in schema.names:
        raise DataError(
            f"evaluate needs the label column {job.data.label!r} (the run's data.label) in the data at "
            f"{data_url!r}, which has only: {', '.join(schema.names)}. Use `orchestrator predict` for unlabelled data."
        )
    classification = job.loss.name in spec.CLASSIFICATION_LOSSES
    index = source.scan(data_url, job.data.label, job.data.features, overrides=job.data.columns,
                        classification=classification)
    label = trained.preprocessing.label
    accumulator = Accumulator(job.loss, classes=len(label.classes) if classification else None,
                              target_scale=None if classification else (label.mean, label.std))
    loss, rows, unlabelled = models.summed_loss(job.loss, masked=True), 0, 0
    for outputs, labels in _labelled_outputs(trained, index, batch_rows):
        keep = models.labelled(labels)
        outputs, labels = outputs[keep], labels[keep]
        accumulator.add(outputs, loss(outputs.float(), labels), labels)
        rows, unlabelled = rows + int(keep.sum()), unlabelled + int((~keep).sum())
    return {"rows": rows, "unlabelled": unlabelled, **accumulator.result(torch.device("cpu"))}


def _labelled_outputs(trained: TrainedModel, index, batch_rows: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(outputs, labels) of every row of `index`, as a network of the run's job outputs and reads them."""
    job, pre = trained.job, trained.preprocessing
    if not job.model.trees:
        net = trained.build()
        with torch.inference_mode():
            for batch in validation_batches(index, pre, world_size=1, rank=0, batch_rows=batch_rows,
                                            holdout_fraction=None, label_dtype=models.label_dtype(job.loss)):
                yield net(batch.numeric, batch.codes), batch.labels
        return
    library, source = boosters.library(job.model.kind), RowGroupSource(index, None)
    booster = library.load(trained.state)
    try:
        for position in range(len(index.row_groups)):
            matrix = tree_matrix(pre, source.table(position, None))
            yield (boosters.network_outputs(library.margins(booster, matrix.features), pre.label),
                   boosters.network_labels(matrix.labels, pre.label, job.loss.name))
    finally:
        source.close()


def _preprocessing(fs: pyarrow.fs.FileSystem, path: str, run_url: str) -> Preprocessing:
    """The preprocessing.json at `path` (a run folder or a checkpoint in it)."""
    try:
        with fs.open_input_stream(f"{path}/{checkpoint.PREPROCESSING_FILE}") as f:
            return Preprocessing.from_json(f.read().decode())
    except FileNotFoundError:
        raise CheckpointError(f"The run at {run_url!r} has no {checkpoint.PREPROCESSING_FILE} at {path!r}: it was "
                              "written by an older orchestrator or never reached its first step.") from None


def _schema(data_url: str) -> pa.Schema:
    """The Arrow schema of the first Parquet file at `data_url` (footer only)."""
    fs, _ = storage.arrow_filesystem(data_url)
    return pq.read_schema(source.discover(data_url)[0], filesystem=fs)


def _raw_batches(data_url: str, pre: Preprocessing, batch_rows: int) -> Iterator[pa.Table]:
    """Tables of at most `batch_rows` rows of every file at `data_url`, in row-id order, holding only the
    columns the preprocessing reads; a file without one of them is a DataError naming file and columns.

    Not `source.scan` + `RowGroupSource`: those need the label column, and
    data to predict on usually has none.
    """
    fs, _ = storage.arrow_filesystem(data_url)
    features = [stats.name for stats in pre.columns]
    for path in source.discover(data_url):
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            missing = [name for name in features if name not in names]
            if missing:
                raise DataError(f"{path}: feature column(s) {', '.join(map(repr, missing))} missing (the run was "
                                f"trained on them); available columns: {', '.join(names)}")
            for record_batch in parquet.iter_batches(batch_size=batch_rows, columns=features):
                yield pa.Table.from_batches([record_batch])


def _prediction_table(trained: TrainedModel, outputs: torch.Tensor, first_row: int) -> pa.Table:
    """The prediction columns (see the module docstring) for one batch of model outputs."""
    outputs, label, loss = outputs.float(), trained.preprocessing.label, trained.job.loss.name
    columns = {"row": pa.array(np.arange(first_row, first_row + len(outputs), dtype=np.int64))}
    if loss in spec.CLASSIFICATION_LOSSES:
        if loss == "bce":
            positive = torch.sigmoid(outputs.squeeze(-1))
            probabilities = torch.stack([1 - positive, positive], dim=-1).numpy()
        else:
            probabilities = torch.softmax(outputs, dim=-1).numpy()
        columns["prediction"] = pa.array(label.class_values(probabilities.argmax(axis=-1)))
        columns.update({f"probability_{value}": probabilities[:, k] for k, value in enumerate(label.classes)})
    elif outputs.shape[-1] == 1:
        columns["prediction"] = label.destandardize(outputs.squeeze(-1).numpy())
    else:
        columns.update({f"prediction_{k}": label.destandardize(outputs[:, k].numpy())
                        for k in range(outputs.shape[-1])})
    return pa.table(columns)


def _job(raw: dict, where: str) -> spec.JobSpec:
    return spec.from_dict(raw, source=where)


def _complete(fs: pyarrow.fs.FileSystem, run_path: str) -> list[str]:
    """Names of the run's complete checkpoints, newest first."""
    return [name for name, _ in checkpoint.complete_newest_first(fs, run_path)]
