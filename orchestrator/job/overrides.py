"""`--set a.b.c=value`: changing a job file's mapping before it is validated.

Owns the override syntax (a dotted key, `=`, a YAML value), creating mappings
on the way and expanding a shorthand section (`loss: mse` with `--set
loss.huber_delta=2`), and `with_values` for sweeps, which set values without
parsing text. Keys are not checked here: `spec.from_dict` reports unknown ones.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from orchestrator.errors import SpecError
from orchestrator.job.fields import Bad, describe

SHORTHAND_SECTIONS = ("loss", "schedule")  # `loss: mse` means `loss: {name: mse}`


def apply(raw: Mapping, overrides: Sequence[str]) -> tuple[dict, list[str]]:
    """A deep copy of `raw` with each `a.b.c=value` override set, and a problem for each malformed one."""
    result, problems = copy.deepcopy(dict(raw)), []
    for item in overrides:
        try:
            _set(result, item)
        except Bad as bad:
            problems.append(f"--set {item!r}: {bad.message}")
    return result, problems


def _set(root: dict, item: str) -> None:
    key, eq, text = item.partition("=")
    parts = [part.strip() for part in key.split(".")]
    if not eq or not all(parts):
        raise Bad("expected key.path=value, e.g. train.epochs=3")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise Bad(f"the value is not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    _set_value(root, parts, value)


def _set_value(root: dict, parts: list[str], value: Any) -> None:
    node = root
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
        elif depth == 0 and part in SHORTHAND_SECTIONS and isinstance(child, str):
            child = {"name": child}  # `loss: mse` with `--set loss.huber_delta=2`
        elif isinstance(child, Mapping):
            child = dict(child)
        else:
            raise Bad(f"'{'.'.join(parts[:depth + 1])}' is {describe(child)}, not a mapping, "
                       f"so it cannot hold '{parts[depth + 1]}'")
        node[part] = node = child
    node[parts[-1]] = value


def with_values(raw: Mapping, values: Mapping[str, Any]) -> dict:
    """A deep copy of `raw` with each dotted key of `values` set to its value (as `--set` would,
    without parsing text); `raw` is untouched. Raises SpecError when a key runs through a value that
    is not a mapping."""
    result, problems = copy.deepcopy(dict(raw)), []
    for key, value in values.items():
        try:
            _set_value(result, [part.strip() for part in key.split(".")], copy.deepcopy(value))
        except Bad as bad:
            problems.append(f"{key}: {bad.message}")
    if problems:
        raise SpecError(problems)
    return result


def apply_overrides(raw: Mapping, overrides: Sequence[str]) -> dict:
    """A deep copy of `raw` with each `a.b.c=value` override set (value parsed as YAML),
    creating mappings on the way; `raw` is untouched. Raises one SpecError naming every
    malformed override. Keys are not checked here: `from_dict` reports unknown ones."""
    result, problems = apply(raw, overrides)
    if problems:
        raise SpecError(problems)
    return result
