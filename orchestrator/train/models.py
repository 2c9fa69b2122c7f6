"""Building the model and its loss from the job's `model` and `loss` sections.

Owns the built-in builders (linear, logistic, mlp), loading a user's
`module:function` builder (a small module in `jobs/`), and the loss functions.
Knows nothing about data files, Ray or checkpoints.

A user builder is called as `build(in_features, out_features, **model.options)`
and returns a `torch.nn.Module` mapping `[rows, in_features]` float32 to
`[rows, out_features]`.
"""

from __future__ import annotations

import importlib
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

CLASSIFICATION_LOSSES = ("cross_entropy", "bce")


def build_model(model: ModelSpec, in_features: int, out_features: int) -> nn.Module:
    """A freshly initialised model (seed torch before calling for identical ranks)."""
    if model.kind in ("linear", "logistic"):
        return nn.Linear(in_features, out_features)
    if model.kind == "mlp":
        layers: list[nn.Module] = []
        width = in_features
        for hidden in model.hidden:
            layers += [nn.Linear(width, hidden), _ACTIVATIONS[model.activation]()]
            if model.dropout:
                layers.append(nn.Dropout(model.dropout))
            width = hidden
        layers.append(nn.Linear(width, out_features))
        return nn.Sequential(*layers)
    return _user_builder(model.kind)(in_features, out_features, **model.options)


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


def label_dtype(loss: LossSpec) -> str:
    """The dtype the reader gives labels for this loss."""
    return "int64" if loss.name == "cross_entropy" else "float32"


def summed_loss(loss: LossSpec) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function (outputs [rows, k], labels [rows]) → the loss summed over rows (a scalar).

    Summed inside torch's loss (reduction="sum"), not per row and then summed:
    one fused kernel each way, ~5% of a small MLP's step on a CPU.
    """
    if loss.name == "cross_entropy":
        return lambda out, y: nn.functional.cross_entropy(
            out, y, reduction="sum", label_smoothing=loss.label_smoothing
        )
    pointwise = {
        "mse": lambda out, y: nn.functional.mse_loss(out, y, reduction="sum"),
        "l1": lambda out, y: nn.functional.l1_loss(out, y, reduction="sum"),
        "huber": lambda out, y: nn.functional.huber_loss(out, y, reduction="sum", delta=loss.huber_delta),
        "bce": lambda out, y: nn.functional.binary_cross_entropy_with_logits(out, y, reduction="sum"),
    }[loss.name]
    return lambda out, y: pointwise(out.squeeze(-1), y)


def correct_predictions(loss: LossSpec, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions in a batch (classification losses only)."""
    if loss.name == "cross_entropy":
        return (outputs.argmax(dim=-1) == labels).sum()
    return ((outputs.squeeze(-1) > 0).to(labels.dtype) == labels).sum()


def evaluation_totals(loss: LossSpec, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sums over one batch that metrics are computed from (float64, on the CPU).

    [loss sum, rows, correct, sum y, sum y², squared error]: add them up over
    batches (and over ranks), then `evaluation_metrics` turns them into metrics.
    """
    outputs, labels = outputs.float().cpu(), labels.cpu()
    totals = torch.zeros(6, dtype=torch.float64)
    totals[0] = summed_loss(loss)(outputs, labels).double()
    totals[1] = len(labels)
    if loss.name in CLASSIFICATION_LOSSES:
        totals[2] = correct_predictions(loss, outputs, labels).double()
    else:
        y = labels.double()
        totals[3], totals[4] = y.sum(), (y * y).sum()
        totals[5] = ((outputs.squeeze(-1).double() - y) ** 2).sum()
    return totals


def evaluation_metrics(loss: LossSpec, totals: list[float]) -> dict[str, float]:
    """Mean loss, plus accuracy for classification or R² for regression; {} when there were no rows."""
    loss_sum, rows, correct, sum_y, sum_y2, squared_error = totals
    if rows == 0:
        return {}
    metrics = {"loss": loss_sum / rows}
    if loss.name in CLASSIFICATION_LOSSES:
        metrics["accuracy"] = correct / rows
    else:
        total_variance = sum_y2 - sum_y * sum_y / rows
        metrics["r2"] = 1.0 - squared_error / total_variance if total_variance > 0 else float("nan")
    return metrics
