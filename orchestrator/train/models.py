"""Building the model and its loss from the job's `model` and `loss` sections.

Owns the networks (an input encoder in front of a body), the built-in bodies
(linear, logistic, mlp, tabm), loading a user's `module:function` builder (a
small module in `jobs/`), and the loss functions. Knows nothing about data
files, Ray or checkpoints.

Every network maps a batch's two blocks to outputs: `net(numeric, codes)`,
numeric `[rows, inputs.numeric]` float32 (standardized numbers, missing
indicators, datetime parts, vectors) and codes `[rows, inputs.code_width]`
int64 (one column per categorical; a padded run of ids per tags column, 0 =
missing or padding). `TabularInput` turns them into one float vector per row:
the numeric block as it is (or through periodic embeddings), an
`nn.Embedding` per categorical, an `nn.EmbeddingBag` (mean) per tags column.

A user builder is called as `build(in_features, out_features, **model.options)`
and returns a module mapping `[rows, in_features]` float32 to
`[rows, out_features]`; it gets the encoder's output, so an all-numeric table
reaches it as before, standardized. A builder that takes an `inputs` keyword
gets the `InputShape` instead of the encoder and returns the whole network,
`forward(numeric, codes)`, free to reuse `TabularInput`.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

import torch
from torch import nn

from orchestrator.errors import SpecError
from orchestrator.job.spec import LossSpec, ModelSpec

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}
# TabM's defaults here: the paper's architecture (k=32 weight-shared MLPs) at a width a CPU trains briskly.
TABM_DEFAULTS = {"k": 32, "n_blocks": 2, "d_block": 256, "dropout": 0.1}
PERIODIC_EMBEDDING_DIM = 16  # per numeric column, with numeric_embedding: periodic


class TabularInput(nn.Module):
    """numeric [rows, n] float32 + codes [rows, c] int64 → [rows, width] float32 (see the module doc)."""

    def __init__(self, inputs, numeric_embedding: str = "none"):
        super().__init__()
        self.periodic = None
        numeric_width = inputs.numeric_width
        if numeric_embedding == "periodic" and inputs.numeric_width:
            from rtdl_num_embeddings import PeriodicEmbeddings

            self.periodic = PeriodicEmbeddings(inputs.numeric_width, PERIODIC_EMBEDDING_DIM, lite=True)
            numeric_width = inputs.numeric_width * PERIODIC_EMBEDDING_DIM
        self.embeddings = nn.ModuleList(nn.Embedding(c.cardinality, c.embedding_dim) for c in inputs.categorical)
        self.bags = nn.ModuleList(nn.EmbeddingBag(t.cardinality, t.embedding_dim, mode="mean", padding_idx=0)
                                  for t in inputs.tags)
        self.tag_spans = [(t.start, t.start + t.width) for t in inputs.tags]
        self.width = numeric_width + sum(c.embedding_dim for c in inputs.categorical) + sum(t.embedding_dim for t in inputs.tags)

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        parts = [numeric if self.periodic is None else self.periodic(numeric).flatten(1)]
        parts += [embedding(codes[:, i]) for i, embedding in enumerate(self.embeddings)]
        parts += [bag(codes[:, lo:hi]) for bag, (lo, hi) in zip(self.bags, self.tag_spans)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class Network(nn.Module):
    """An input encoder followed by a body over its output."""

    def __init__(self, encoder: TabularInput, body: nn.Module):
        super().__init__()
        self.encoder, self.body = encoder, body

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self.body(self.encoder(numeric, codes))


class Ensemble(nn.Module):
    """A body that makes k predictions per row ([rows, k, outputs]), e.g. TabM.

    Training sees all k (the loss averages them, `summed_loss`); in eval mode
    the output is the ensemble's: the mean prediction for regression, the log
    of the mean probabilities (cross_entropy) or the logit of the mean
    probability (bce), so metrics and predictions read it like any output.
    """

    def __init__(self, body: nn.Module, loss: str):
        super().__init__()
        self.body, self.loss = body, loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.training:
            return out
        if self.loss == "cross_entropy":
            return torch.log(torch.softmax(out.float(), dim=-1).mean(dim=1).clamp_min(1e-30))
        if self.loss == "bce":
            return torch.logit(torch.sigmoid(out.float()).mean(dim=1), eps=1e-7)
        return out.mean(dim=1)


def build_model(model: ModelSpec, loss: LossSpec, inputs, out_features: int) -> nn.Module:
    """A freshly initialised network `net(numeric, codes)` (seed torch first for identical ranks)."""
    if ":" in model.kind:
        builder = _user_builder(model.kind)
        if "inputs" in inspect.signature(builder).parameters:
            return builder(inputs.numeric_width, out_features, inputs=inputs, **model.options)
        encoder = TabularInput(inputs)
        return Network(encoder, builder(encoder.width, out_features, **model.options))
    embedding = model.options.get("numeric_embedding", "periodic" if model.kind == "tabm" else "none")
    encoder = TabularInput(inputs, embedding)
    return Network(encoder, _body(model, loss, encoder.width, out_features))


def _body(model: ModelSpec, loss: LossSpec, width: int, out_features: int) -> nn.Module:
    if model.kind in ("linear", "logistic"):
        return nn.Linear(width, out_features)
    if model.kind == "tabm":
        import tabm

        options = {**TABM_DEFAULTS, **{k: v for k, v in model.options.items() if k != "numeric_embedding"}}
        return Ensemble(tabm.TabM.make(n_num_features=width, d_out=out_features, **options), loss.name)
    layers: list[nn.Module] = []
    for hidden in model.hidden:
        layers += [nn.Linear(width, hidden), _ACTIVATIONS[model.activation]()]
        if model.dropout:
            layers.append(nn.Dropout(model.dropout))
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def _user_builder(target: str) -> Callable[..., nn.Module]:
    module_name, _, function_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SpecError(
            f"model.kind: cannot import module '{module_name}' ({error}); a builder is named "
            "'module.path:function' and its module must be importable from the working directory"
        ) from None
    builder = getattr(module, function_name, None)
    if not callable(builder):
        raise SpecError(f"model.kind: module '{module_name}' has no function '{function_name}'")
    return builder


def output_size(job, inputs) -> int:
    """The model's output width: model.outputs if set, else one per class for cross_entropy, else 1.

    A SpecError when the data's classes cannot meet the loss (bce needs two, and
    cross_entropy one output per class).
    """
    if job.model.outputs is not None:
        if job.loss.name == "cross_entropy" and job.model.outputs != inputs.classes:
            raise SpecError(f"model.outputs: {job.model.outputs}, but the label '{job.data.label}' has "
                            f"{inputs.classes} classes in the training rows; drop model.outputs to use one per class")
        return job.model.outputs
    if job.loss.name == "bce" and inputs.classes != 2:
        raise SpecError(f"loss.name: bce needs a label with two classes, but '{job.data.label}' has "
                        f"{inputs.classes} in the training rows; use loss cross_entropy")
    return inputs.classes if job.loss.name == "cross_entropy" else 1


def labelled(labels: torch.Tensor) -> torch.Tensor:
    """bool per row: the row has a label (not NaN; a class id, not -1)."""
    return labels >= 0 if not labels.is_floating_point() else ~torch.isnan(labels)


def label_dtype(loss: LossSpec) -> str:
    """The dtype the reader gives labels for this loss."""
    return "int64" if loss.name == "cross_entropy" else "float32"


def summed_loss(loss: LossSpec, masked: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function (outputs [rows, outputs] or an ensemble's [rows, k, outputs], labels [rows]) → the
    loss summed over rows (a scalar); an ensemble's is the mean over its k members' losses.
    With `masked`, rows without a label (`labelled`) add nothing: data.null_labels: drop.

    Summed inside torch's loss (reduction="sum"), not per row and then summed:
    one fused kernel each way, ~5% of a small MLP's step on a CPU.
    """
    if loss.name == "cross_entropy":
        def rows_loss(out, y):
            return nn.functional.cross_entropy(out, y, reduction="sum", label_smoothing=loss.label_smoothing)
    else:
        pointwise = {
            "mse": lambda out, y: nn.functional.mse_loss(out, y, reduction="sum"),
            "l1": lambda out, y: nn.functional.l1_loss(out, y, reduction="sum"),
            "huber": lambda out, y: nn.functional.huber_loss(out, y, reduction="sum", delta=loss.huber_delta),
            "bce": lambda out, y: nn.functional.binary_cross_entropy_with_logits(out, y, reduction="sum"),
        }[loss.name]

        def rows_loss(out, y):
            return pointwise(out.squeeze(-1), y)

    def summed(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if masked:
            keep = labelled(y)
            out, y = out[keep], y[keep]
        if out.ndim == 3:  # an ensemble: every member sees every row
            k = out.shape[1]
            return rows_loss(out.flatten(0, 1), y.repeat_interleave(k)) / k
        return rows_loss(out, y)

    return summed
