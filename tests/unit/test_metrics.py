"""Validation metrics against their definitions, on one process (no Ray)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from orchestrator.job.spec import LossSpec
from orchestrator.train.metrics import Accumulator, loss_scale, macro_f1, roc_auc


def pairwise_auc(score, positive):
    pairs = [(p, n) for p, n in itertools.product(score[positive], score[~positive])]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_binary_auc_is_the_share_of_correctly_ordered_pairs_with_ties_counted_half():
    rng = np.random.default_rng(0)
    score = rng.integers(0, 5, 60).astype(np.float32)  # many ties
    labels = rng.integers(0, 2, 60)
    scores = np.stack([1 - score, score], axis=1)
    assert roc_auc(scores, labels) == pytest.approx(pairwise_auc(score, labels == 1), abs=1e-12)


def test_multiclass_auc_is_the_macro_average_of_one_vs_rest():
    rng = np.random.default_rng(1)
    scores = rng.random((50, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 50)
    expected = np.mean([pairwise_auc(scores[:, c], labels == c) for c in range(3)])
    assert roc_auc(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_macro_f1_averages_per_class_f1():
    confusion = np.array([[5, 1], [2, 2]])  # rows true, columns predicted
    f1_0 = 2 * 5 / (7 + 6)
    f1_1 = 2 * 2 / (3 + 4)
    assert macro_f1(confusion) == pytest.approx((f1_0 + f1_1) / 2)


def test_regression_metrics_are_in_the_labels_units():
    mean, std = 10.0, 2.0
    y = torch.tensor([8.0, 10.0, 13.0])
    predicted = torch.tensor([9.0, 10.0, 12.0])
    standardized = ((predicted - mean) / std).unsqueeze(-1), (y - mean) / std
    loss = LossSpec(name="mse")
    acc = Accumulator(loss, classes=None, target_scale=(mean, std))
    acc.add(standardized[0], ((standardized[0].squeeze(-1) - standardized[1]) ** 2).sum(), standardized[1])
    metrics = acc.result(torch.device("cpu"))
    errors = (predicted - y).numpy()
    assert metrics["loss"] == pytest.approx(np.mean(errors ** 2))
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean(errors ** 2)))
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(errors)))
    assert metrics["r2"] == pytest.approx(1 - np.sum(errors ** 2) / np.sum((y.numpy() - y.numpy().mean()) ** 2))


def test_classification_metrics_from_logits():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([0, 1, 1, 1])
    acc = Accumulator(LossSpec(name="cross_entropy"), classes=2)
    acc.add(logits, torch.nn.functional.cross_entropy(logits, labels, reduction="sum"), labels)
    metrics = acc.result(torch.device("cpu"))
    assert metrics["accuracy"] == pytest.approx(0.75)
    probabilities = torch.softmax(logits.double(), -1)[torch.arange(4), labels]
    assert metrics["log_loss"] == pytest.approx(float(-torch.log(probabilities).mean()))
    assert metrics["auc"] == pytest.approx(1.0)  # positives' scores all above the negative's
    assert set(metrics) == {"loss", "accuracy", "log_loss", "auc", "f1"}


def test_loss_scale_turns_standardized_losses_into_label_units():
    assert loss_scale(LossSpec(name="mse"), 3.0) == 9.0
    assert loss_scale(LossSpec(name="l1"), 3.0) == 3.0
    assert loss_scale(LossSpec(name="cross_entropy"), None) == 1.0
