"""Validation metrics people judge models by, reduced exactly across ranks.

Owns what a validation pass measures and how ranks combine it:

    classification  loss, accuracy, log_loss, auc (binary; macro one-vs-rest for
                    more classes), f1 (macro)
    regression      loss, rmse, mae, r2 — in the label's own units

Sums (losses, counts, the confusion matrix, errors) are all-reduced in float64.
ROC AUC needs every score: each rank's class probabilities and labels are
gathered to every rank (rows × classes float32 per rank), then ranked once,
so the value is the exact AUC of all validation rows, whatever the world size.

Regression targets are trained standardized; `target_scale` (mean, std) turns
outputs and labels back into the label's units before anything is summed, and
the reported loss is the training loss in those units (mse and huber × std²,
l1 × std; huber's delta is read in standardized units). Knows nothing about
Ray or the data files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from orchestrator.job.spec import LossSpec
from orchestrator.train.distributed import all_reduce_sum


def loss_scale(loss: LossSpec, target_std: float | None) -> float:
    """The factor that turns a loss on standardized targets into the label's units (1 for classification)."""
    if target_std is None:
        return 1.0
    return target_std if loss.name == "l1" else target_std ** 2


@dataclass
class Accumulator:
    """One rank's running sums of a validation pass; `result()` reduces them across ranks."""

    loss: LossSpec
    classes: int | None  # classes of a classification task (2 for bce); None for regression
    target_scale: tuple[float, float] | None = None  # regression (mean, std) of the training labels
    _sums: dict[str, float] = field(default_factory=dict)
    _confusion: np.ndarray | None = None
    _scores: list[np.ndarray] = field(default_factory=list)
    _labels: list[np.ndarray] = field(default_factory=list)

    def add(self, outputs: torch.Tensor, summed_loss: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: the model's outputs, its loss summed over rows (training units), the labels."""
        outputs, labels = outputs.detach().float().cpu(), labels.cpu()
        self._add("rows", len(labels))
        self._add("loss", float(summed_loss))
        if self.classes is None:
            self._add_regression(outputs.squeeze(-1).double(), labels.double())
        else:
            self._add_classification(outputs, labels.long())

    def _add(self, name: str, value: float) -> None:
        self._sums[name] = self._sums.get(name, 0.0) + float(value)

    def _add_regression(self, predicted: torch.Tensor, y: torch.Tensor) -> None:
        mean, std = self.target_scale or (0.0, 1.0)
        predicted, y = predicted * std + mean, y * std + mean
        error = predicted - y
        self._add("squared_error", (error * error).sum())
        self._add("absolute_error", error.abs().sum())
        self._add("sum_y", y.sum())
        self._add("sum_y2", (y * y).sum())

    def _add_classification(self, outputs: torch.Tensor, labels: torch.Tensor) -> None:
        if self.loss.name == "bce":
            positive = torch.sigmoid(outputs.squeeze(-1).double())
            probabilities = torch.stack([1 - positive, positive], dim=-1)
        else:
            probabilities = torch.softmax(outputs.double(), dim=-1)
        picked = probabilities.gather(1, labels.unsqueeze(1)).squeeze(1)
        self._add("log_loss", -torch.log(picked.clamp_min(1e-15)).sum())
        predicted = probabilities.argmax(dim=-1).numpy()
        k = self.classes
        confusion = np.bincount(labels.numpy() * k + predicted, minlength=k * k).reshape(k, k)
        self._confusion = confusion if self._confusion is None else self._confusion + confusion
        self._scores.append(probabilities.float().numpy())
        self._labels.append(labels.numpy())

    def result(self, device: torch.device) -> dict[str, float]:
        """Metrics over every rank's rows; {} when no rank saw a row. A collective: every rank calls it."""
        names = ["rows", "loss", *(["log_loss"] if self.classes else
                                   ["squared_error", "absolute_error", "sum_y", "sum_y2"])]
        k = self.classes or 0
        confusion = self._confusion if self._confusion is not None else np.zeros((k, k))
        reduced = all_reduce_sum([self._sums.get(n, 0.0) for n in names] + confusion.ravel().tolist(), device)
        sums = dict(zip(names, reduced))
        rows = sums["rows"]
        if rows == 0:
            if self.classes:
                self._gather()  # still a collective on every rank
            return {}
        std = self.target_scale[1] if self.target_scale else None
        metrics = {"loss": sums["loss"] / rows * loss_scale(self.loss, std)}
        if not self.classes:
            variance = sums["sum_y2"] - sums["sum_y"] ** 2 / rows
            metrics["rmse"] = float(np.sqrt(sums["squared_error"] / rows))
            metrics["mae"] = sums["absolute_error"] / rows
            metrics["r2"] = 1.0 - sums["squared_error"] / variance if variance > 0 else float("nan")
            return metrics
        confusion = np.asarray(reduced[len(names):]).reshape(k, k)
        scores, labels = self._gather()
        metrics["accuracy"] = float(np.trace(confusion) / rows)
        metrics["log_loss"] = sums["log_loss"] / rows
        metrics["auc"] = roc_auc(scores, labels)
        metrics["f1"] = macro_f1(confusion)
        return metrics

    def _gather(self) -> tuple[np.ndarray, np.ndarray]:
        k = self.classes
        scores = np.concatenate(self._scores) if self._scores else np.zeros((0, k), np.float32)
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (scores, labels))
            scores = np.concatenate([s for s, _ in gathered])
            labels = np.concatenate([y for _, y in gathered])
        return scores, labels


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC AUC (ties count half): binary from the positive class's score, else the macro
    average of one-vs-rest AUCs over the classes present with both outcomes; NaN if none is."""
    classes = range(1, 2) if scores.shape[1] == 2 else range(scores.shape[1])
    values = [_binary_auc(scores[:, c], labels == c) for c in classes]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _binary_auc(score: np.ndarray, positive: np.ndarray) -> float:
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score), dtype=np.float64)
    ranks[order] = np.arange(1, len(score) + 1)
    sorted_scores = score[order]
    # Average the ranks of tied scores (Mann–Whitney U with ties).
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    tied = counts > 1
    for start, count in zip(first[tied], counts[tied]):
        ranks[order[start:start + count]] = start + (count + 1) / 2
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_f1(confusion: np.ndarray) -> float:
    """Mean over classes of F1 from a confusion matrix (rows: true, columns: predicted);
    classes never seen nor predicted are left out."""
    true_positive = np.diag(confusion)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    present = (predicted + actual) > 0
    f1 = 2 * true_positive[present] / (predicted[present] + actual[present])
    return float(f1.mean()) if present.any() else float("nan")
