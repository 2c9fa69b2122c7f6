"""The jobs a sweep runs: the job file with one sample of its search space set, and the check that a
space cannot produce an invalid one.

A trial's job is built exactly as a hand-written job with `--set key=value`
for each sampled key would be, then named and placed by the sweep. Imports
neither torch nor Ray.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from orchestrator.errors import SpecError
from orchestrator.job import spec
from orchestrator.job.search import SearchSpec

# Beyond this many combinations of the keys' probe values, each key is checked on its own only.
MAX_COMBINATIONS_CHECKED = 4096


def trial_job(base: Mapping, params: Mapping[str, Any], *, name: str, storage: str) -> spec.JobSpec:
    """The validated job of one trial: `base` (a job mapping) with every dotted key of `params` set,
    named `name` under `storage`, without a search section. SpecError when it is not a valid job."""
    raw = spec.with_values({key: value for key, value in base.items() if key != "search"},
                           {**params, "name": name, "storage": storage})
    return spec.from_dict(raw)


def probe_jobs(base: Mapping, search: SearchSpec, prefixes: tuple[str, ...], *, storage: str) -> list[spec.JobSpec]:
    """The jobs that bound what a setting can reach over the space: `base`'s own trial job, and one job per
    probe value (Domain.probes) of each searched key starting with one of `prefixes`."""
    jobs = [trial_job(base, {}, name="trial", storage=storage)]
    for key, domain in search.space.items():
        if key.startswith(prefixes):
            jobs += [trial_job(base, {key: value}, name="trial", storage=storage) for value in domain.probes()]
    return jobs


def check_space(base: Mapping, search: SearchSpec) -> list[str]:
    """Every way the space of `search` can make an invalid job from `base`, as problems that name
    the key(s) and value(s) at fault; empty when each probe value of each key (Domain.probes), and
    every combination of them, gives a valid job."""
    problems = []
    for key, domain in search.space.items():
        for value in domain.probes():
            error = _problem(base, {key: value})
            if error:
                if "expected an integer" in error and domain.kind in ("uniform", "loguniform"):
                    error += f" ({domain.kind} samples fractions: use {{randint: [low, high]}} for this key)"
                problems.append(f"search.space.{key}: the value {value!r} gives an invalid job: {error}")
                break
    combinations = 1
    for domain in search.space.values():
        combinations *= len(domain.probes())
    if problems or len(search.space) < 2 or combinations > MAX_COMBINATIONS_CHECKED:
        return problems
    keys = list(search.space)
    for values in itertools.product(*(search.space[key].probes() for key in keys)):
        params = dict(zip(keys, values))
        error = _problem(base, params)
        if error:
            shown = ", ".join(f"{key}={value!r}" for key, value in params.items())
            return [f"search.space: the combination {shown} gives an invalid job: {error}"]
    return []


def _problem(base: Mapping, params: Mapping[str, Any]) -> str | None:
    try:
        trial_job(base, params, name="trial", storage="/tmp")
    except SpecError as error:
        return "; ".join(error.problems)
    return None
