"""The metrics a job can watch (early stopping, a sweep's objective), and which way each is better.

One place for the names `train.metrics` reports at every epoch end: the
validation metrics of each task, the training loss, and those of them where
larger is better. Imports nothing.
"""

from __future__ import annotations

CLASSIFICATION_METRICS = ("val_accuracy", "val_log_loss", "val_auc", "val_f1")
REGRESSION_METRICS = ("val_rmse", "val_mae", "val_r2")
MONITORED_METRICS = ("val_loss", *CLASSIFICATION_METRICS, *REGRESSION_METRICS, "train_loss")
MAXIMIZED_METRICS = ("val_accuracy", "val_auc", "val_f1", "val_r2")


def maximize(metric: str, mode: str | None) -> bool:
    """True when a larger `metric` is better: `mode` ("min" | "max") if given, else whether it is maximized."""
    return mode == "max" if mode else metric in MAXIMIZED_METRICS
