"""The `search` section: what a sweep (`orchestrator tune`) varies, and how it samples and prunes.

    search:
      metric: val_loss        # a monitored metric (job.objectives); mode inferred, or given
      trials: 16              # jobs sampled (grid: every combination once, the default)
      max_concurrent: 2       # default: as many trials as the cluster can place at once
      algorithm: optuna       # random | grid | optuna (TPE)
      scheduler: asha         # none | asha: stop trials that trail at an epoch milestone
      space:                  # any job key, in the dotted form of --set
        optim.lr: {loguniform: [1.0e-4, 3.0e-2]}
        model.hidden: {choice: [[64], [128, 128]]}

Owns the section's schema, its parsing (problems under `search.…` key paths),
and the domains: what each samples and which values probe it
(`Domain.probes`). Whether every job a space can produce is valid is
`job.trials`'s question: it builds them. Imports neither torch nor Ray.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.job.fields import Bad, Fields, as_float, as_int, choice, describe
from orchestrator.job.objectives import MONITORED_METRICS, maximize

DOMAINS = ("uniform", "loguniform", "randint", "choice")
ALGORITHMS = ("random", "grid", "optuna")
SCHEDULERS = ("none", "asha")
# Keys a trial cannot take from the space: the sweep names each trial and places it in its folder.
UNSEARCHABLE = ("name", "storage", "search")


@dataclass(frozen=True)
class Domain:
    """Where one key's values come from: a range (uniform, loguniform, randint; both ends included)
    or a list of choices."""

    kind: str  # uniform | loguniform | randint | choice
    values: tuple  # (low, high) for a range; the options for choice

    def probes(self) -> tuple:
        """Values that stand for every value the domain can give, for checking jobs up front: each
        choice; a range's ends, and for uniform / loguniform a non-integer point between them."""
        if self.kind == "choice":
            return self.values
        low, high = self.values
        if self.kind == "randint":
            return (low, high)
        middle = math.sqrt(low * high) if self.kind == "loguniform" else (low + high) / 2
        return (low, high, middle if middle != int(middle) else middle + 0.5 * (high - middle))

    def to_dict(self) -> dict:
        """The domain as the job file writes it: `{loguniform: [0.0001, 0.03]}`."""
        return {self.kind: list(self.values)}


@dataclass(frozen=True)
class SearchSpec:
    """A sweep over jobs that differ in the keys of `space`."""

    space: dict[str, Domain]  # dotted job key → its domain
    metric: str = "val_loss"  # what trials are ranked (and pruned) by; job.objectives.MONITORED_METRICS
    mode: str | None = None  # min | max; None = max for accuracy, auc, f1, r2; min for losses and errors
    trials: int | None = None  # jobs to sample (required for random and optuna); grid: every combination
    max_concurrent: int | None = None  # trials at once; None = as many as the cluster can place
    algorithm: str = "random"  # random | grid | optuna (TPE; pip install -e ".[tune]")
    scheduler: str = "none"  # none | asha (asynchronous successive halving, at epoch ends)
    grace_period: int = 1  # asha: epochs (rounds, for trees) a trial trains before it can be stopped
    reduction_factor: int = 3  # asha: about 1 in reduction_factor trials passes each milestone
    seed: int | None = None  # the search algorithm's seed; None = train.seed

    @property
    def maximize(self) -> bool:
        """True when a larger metric is better (`mode` if given, else by the metric's name)."""
        return maximize(self.metric, self.mode)

    @property
    def grid_size(self) -> int:
        """How many combinations the choices make (the trials of a grid search)."""
        return math.prod(len(domain.values) for domain in self.space.values() if domain.kind == "choice")

    def to_dict(self) -> dict[str, Any]:
        """The section as the job file writes it; reading it back gives an equal SearchSpec."""
        plain = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "space"}
        return {**plain, "space": {key: domain.to_dict() for key, domain in self.space.items()}}


def _as_domain(value: Any) -> Domain:
    if not isinstance(value, Mapping) or len(value) != 1 or next(iter(value)) not in DOMAINS:
        raise Bad(f"expected one of {', '.join(f'{{{kind}: [...]}}' for kind in DOMAINS)}, got {describe(value)}")
    kind, raw = next(iter(value.items()))
    if not isinstance(raw, (list, tuple)) or not raw:
        raise Bad(f"{kind}: expected a list, got {describe(raw)}")
    if kind == "choice":
        return Domain(kind, tuple(raw))
    if len(raw) != 2:
        raise Bad(f"{kind}: expected [low, high], got {describe(raw)}")
    read = as_int if kind == "randint" else as_float
    try:
        low, high = (read(item) for item in raw)
    except Bad as bad:
        raise Bad(f"{kind}: {bad.message}") from None
    if not low < high:
        raise Bad(f"{kind}: expected low < high, got {describe(list(raw))}")
    if kind == "loguniform" and low <= 0:
        raise Bad(f"loguniform: both ends must be > 0, got {describe(list(raw))}")
    return Domain(kind, (low, high))


def _as_space(value: Any) -> dict[str, Domain]:
    if not isinstance(value, Mapping) or not value:
        raise Bad(f"expected a mapping of job keys (e.g. optim.lr) to domains, got {describe(value)}")
    space = {}
    for key, raw in value.items():
        if not isinstance(key, str) or not all(part.strip() for part in key.split(".")):
            raise Bad(f"expected a dotted job key such as optim.lr, got {describe(key)}")
        if key.split(".")[0].strip() in UNSEARCHABLE:
            raise Bad("the sweep sets each trial's name and storage itself; search other keys", f".{key}")
        try:
            space[key.strip()] = _as_domain(raw)
        except Bad as bad:
            raise Bad(bad.message, f".{key}") from None
    return space


def read_search(f: Fields) -> SearchSpec | None:
    """The `search` section, or None when the job has none; problems go to `f`'s report."""
    if not f.raw:
        return None
    spec = SearchSpec(
        space=f.value("space", convert=_as_space, why="the job keys to search and their domains"),
        metric=f.choice("metric", allowed=MONITORED_METRICS, noun="metric"),
        mode=f.value("mode", convert=lambda v: choice(v, ("min", "max"), "mode")),
        trials=f.int("trials", min=1),
        max_concurrent=f.int("max_concurrent", min=1),
        algorithm=f.choice("algorithm", allowed=ALGORITHMS, noun="search algorithm"),
        scheduler=f.choice("scheduler", allowed=SCHEDULERS, noun="scheduler"),
        grace_period=f.int("grace_period", min=1),
        reduction_factor=f.int("reduction_factor", min=2),
        seed=f.int("seed", min=0),
    )
    if not spec.space or not f.report.ok("search.algorithm", "search.space", "search.trials"):
        return spec
    if spec.algorithm == "grid":
        ranges = [key for key, domain in spec.space.items() if domain.kind != "choice"]
        if ranges:
            f.add("space", f"algorithm grid enumerates choices; {', '.join(ranges)} "
                           "is a range: give it as {choice: [...]}, or use algorithm random or optuna")
        elif spec.trials is not None and spec.trials != spec.grid_size:
            f.add("trials", f"algorithm grid runs each of the {spec.grid_size} combinations once; "
                            f"leave search.trials out or set it to {spec.grid_size}")
    elif spec.trials is None:
        f.add("trials", f"required for algorithm {spec.algorithm}: how many jobs to sample")
    if spec.scheduler != "asha":
        for key in ("grace_period", "reduction_factor"):
            if key in f.raw:
                f.add(key, "only used with scheduler: asha")
    return spec

