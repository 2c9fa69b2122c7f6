"""The optimizer and learning-rate schedule from the job's `optim` and `schedule` sections.

Owns the mapping from spec to `torch.optim` objects. The schedule is a pure
function of the optimizer step, so a `LambdaLR` restored from its state dict
continues exactly. Knows nothing about data, Ray or checkpoints.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from orchestrator.job.spec import OptimSpec, ScheduleSpec


def build_optimizer(optim: OptimSpec, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer the job names, over `parameters`."""
    if optim.name == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=optim.lr,
            momentum=optim.momentum,
            weight_decay=optim.weight_decay,
            nesterov=optim.nesterov,
        )
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optim.name]
    return cls(parameters, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)


def lr_factor(schedule: ScheduleSpec, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate after `step` optimizer steps.

    Linear warmup over `warmup_steps`, then constant, cosine or linear decay
    to `min_lr_ratio` at `total_steps`, or a step decay by `gamma` every
    `step_size` steps.
    """
    warmup, floor = schedule.warmup_steps, schedule.min_lr_ratio
    decay_steps = max(total_steps - warmup, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / decay_steps, 1.0)
        if schedule.name == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if schedule.name == "linear":
            return floor + (1 - floor) * (1 - progress)
        if schedule.name == "step":
            return schedule.gamma ** ((step - warmup) // schedule.step_size)
        return 1.0

    return factor


def build_scheduler(
    schedule: ScheduleSpec, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following `lr_factor`; step it once after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(schedule, total_steps))
