"""Column kinds: what each input column is, from its Arrow type and the job's overrides.

Owns: the one table Arrow type → default kind (`INFERENCE`), which Arrow types
each kind can read when an override names it (`ACCEPTS`), the `ColumnPlan` of
every feature and of the label (`plan_columns`, which refuses in one DataError
everything that cannot be read), and the lines `orchestrator validate` prints
about them (`describe_plan`).

Leaves to `job.columns` what an override may say (kinds, transforms, options),
and to `data.preprocess` the statistics and transform of each kind. Reads a
schema only: no rows, no files, no Ray, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa

from orchestrator.errors import DataError
from orchestrator.job.columns import (
    KINDS,
    VECTOR_TRANSFORMS,
    ColumnSpec,
    misplaced,
    misplaced_message,
    vector_transform_message,
)
from orchestrator.job.fields import nearest

_SHOWN_NAMES = 20  # column names quoted in a problem, at most


def _number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)


def _time(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t) or pa.types.is_date(t)


def _item(t: pa.DataType) -> pa.DataType | None:
    """The element type of a list, large_list or fixed_size_list; None for anything else."""
    lists = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    return t.value_type if lists else None


def _fixed_numbers(t: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(t) and _number(t.value_type)


def _float_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_floating(t.value_type)


def _number_list(t: pa.DataType) -> bool:
    return _item(t) is not None and _number(_item(t))


def _id_list(t: pa.DataType) -> bool:
    item = _item(t)
    return item is not None and (pa.types.is_string(item) or pa.types.is_large_string(item)
                                 or pa.types.is_integer(item))


# The one table: Arrow type → default kind. The first row whose test holds wins;
# a type no row matches (struct, map, binary, nested lists, null, ...) is refused.
INFERENCE: tuple[tuple[str, Callable[[pa.DataType], bool], str], ...] = (
    ("integer, floating point or decimal", _number, "numeric"),
    ("bool", pa.types.is_boolean, "boolean"),
    ("string, large_string or dictionary", _text, "categorical"),
    ("timestamp (normalised to UTC) or date", _time, "datetime"),
    ("fixed_size_list of numbers", _fixed_numbers, "vector"),
    ("list or large_list of floating point numbers, one length in every row", _float_list, "vector"),
    ("list, large_list or fixed_size_list of strings or integers", _id_list, "tags"),
)

# kind → (the Arrow types it reads, the test): what an override may put on a type.
ACCEPTS: dict[str, tuple[str, Callable[[pa.DataType], bool]]] = {
    "numeric": ("integer, floating point, decimal or bool", lambda t: _number(t) or pa.types.is_boolean(t)),
    "boolean": ("bool", pa.types.is_boolean),
    "categorical": ("string, large_string, dictionary, integer or bool",
                    lambda t: _text(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)),
    "datetime": ("timestamp or date", _time),
    "vector": ("a fixed_size_list, list or large_list of numbers", _number_list),
    "tags": ("a list, large_list or fixed_size_list of strings or integers", _id_list),
}

# classification? → (the Arrow types a label may have, the test)
LABEL_ACCEPTS: dict[bool, tuple[str, Callable[[pa.DataType], bool]]] = {
    False: ("integer, floating point, decimal or bool", ACCEPTS["numeric"][1]),
    True: ("integer, bool, string, dictionary or floating point",
           lambda t: ACCEPTS["categorical"][1](t) or pa.types.is_floating(t)),
}


@dataclass(frozen=True)
class ColumnPlan:
    """What the code will do with one column: its kind and the options that apply to it."""

    name: str
    kind: str  # one of job.columns.KINDS; the label: categorical (classification) or numeric (regression)
    arrow_type: str  # str() of the Arrow type, as the schema has it
    role: str = "feature"  # feature | label
    source: str = "inferred"  # inferred (from the Arrow type) | override (data.columns) | task (the label)
    transform: str | None = None  # numeric and vector: standard | robust | quantile | log1p | none
    hash_buckets: int | None = None  # categorical and tags: None = a vocabulary
    min_frequency: int | None = None  # categorical and tags with a vocabulary
    max_categories: int | None = None  # categorical and tags with a vocabulary
    embedding_dim: int | None = None  # categorical and tags: None = job.columns.embedding_dim(cardinality)
    vector_length: int | None = None  # vector: None = learned from the training rows (all must agree)


def infer_kind(arrow_type: pa.DataType) -> str | None:
    """The default kind of a column of `arrow_type` (first matching row of INFERENCE), or None
    when no kind reads it. A list of floats is a vector whatever its length in the schema: the
    length comes from a hint or from the training rows, and every row must have it."""
    return next((kind for _, test, kind in INFERENCE if test(arrow_type)), None)


def plan_columns(schema: pa.Schema, label: str, features: Sequence[str] | None, exclude: Sequence[str],
                 overrides: Mapping[str, ColumnSpec], *, classification: bool = False,
                 constant_lengths: Mapping[str, int] | None = None) -> tuple[ColumnPlan, ...]:
    """One ColumnPlan per feature, in `features` order (None = every column of `schema` but the
    label, in schema order) minus `exclude`, then the label's plan last.

    Each feature's kind is its override's, else the inferred one; only the
    options that apply to that kind are kept. `constant_lengths` fixes the
    length of a list-of-floats vector (the data must agree); otherwise it is
    learned when fitting. `classification` says whether the label holds classes.
    Raises one DataError listing every problem: an unknown column in features,
    exclude or overrides (with the nearest existing name), an override on the
    label or on an unused column, a type no kind reads, an override kind that
    cannot read its column's type, an option that does not apply to the kind,
    a label type the task cannot use, no feature left.
    """
    names, problems, plans = schema.names, [], []
    if label not in names:
        problems.append(_unknown("data.label", label, names))
    chosen = _chosen(names, label, features, exclude, problems)
    for name in overrides:
        if name not in names:
            problems.append(_unknown(f"data.columns.{name}", name, names))
        elif name == label:
            problems.append(f"data.columns.{name}: '{name}' is the label, whose kind follows the task "
                            "(the loss); remove this override")
        elif name not in chosen:
            problems.append(f"data.columns.{name}: column '{name}' is not a feature of this job "
                            "(see data.features and data.exclude); remove the override or use the column")
    for name in chosen:
        plan = _plan(name, schema.field(name).type, overrides.get(name),
                     (constant_lengths or {}).get(name), problems)
        plans += [plan] if plan else []
    if label in names:
        plans.append(_label_plan(label, schema.field(label).type, classification, problems))
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"The columns cannot serve this job ({len(problems)} problem(s)):\n{lines}")
    return tuple(plans)


def _shown(names: Sequence[str]) -> str:
    rest = len(names) - _SHOWN_NAMES
    return ", ".join(names[:_SHOWN_NAMES]) + (f", ... and {rest} more" if rest > 0 else "")


def _unknown(key: str, name: str, names: Sequence[str]) -> str:
    return f"{key}: no column '{name}' in the data ({nearest(name, names)}columns: {_shown(names)})"


def _chosen(names: Sequence[str], label: str, features: Sequence[str] | None, exclude: Sequence[str],
            problems: list[str]) -> list[str]:
    """The feature names in use; problems with the two lists go to `problems`."""
    for key, listed in (("data.features", features or ()), ("data.exclude", exclude)):
        problems += [_unknown(key, name, names) for name in listed if name not in names]
        if label in listed:
            problems.append(f"{key}: '{label}' is the label (data.label); remove it from {key}")
    problems += [f"data.exclude: '{name}' is also listed in data.features; keep it in only one of them"
                 for name in exclude if features and name in features]
    base = features if features is not None else [name for name in names if name != label]
    chosen = [name for name in base if name in names and name != label and name not in exclude]
    if not chosen and not problems:
        problems.append("no feature column is left once the label and data.exclude are taken out; "
                        "name some in data.features or exclude fewer")
    return chosen


def _plan(name: str, arrow_type: pa.DataType, spec: ColumnSpec | None, length: int | None,
          problems: list[str]) -> ColumnPlan | None:
    """One feature's plan, or None with its problems added."""
    spec = spec or ColumnSpec()
    kind = spec.kind or infer_kind(arrow_type)
    if kind is None:
        problems.append(f"column '{name}' has Arrow type {arrow_type}, which no column kind reads "
                        f"({', '.join(KINDS)}): leave it out with data.exclude: [{name}], or list the "
                        "columns to use in data.features")
        return None
    reads, test = ACCEPTS[kind]
    if not test(arrow_type):
        fits = [k for k in KINDS if ACCEPTS[k][1](arrow_type)]
        problems.append(f"data.columns.{name}.kind: '{kind}' cannot read column '{name}' of Arrow type "
                        f"{arrow_type} ({kind} reads {reads}); kinds that can: "
                        f"{', '.join(fits) if fits else f'none, leave it out with data.exclude: [{name}]'}")
        return None
    how = "an override" if spec.kind else f"inferred from {arrow_type}"
    for option in misplaced(spec.options_set(), kind):
        problems.append(f"data.columns.{name}.{option}: {misplaced_message(option, kind)} "
                        f"(column '{name}' is {kind}, {how})")
    if kind == "vector" and spec.transform not in VECTOR_TRANSFORMS:
        problems.append(f"data.columns.{name}.transform: {vector_transform_message(spec.transform)}")
    ids = kind in ("categorical", "tags")
    vocabulary = ids and spec.hash_buckets is None
    if pa.types.is_fixed_size_list(arrow_type):
        length = arrow_type.list_size
    return ColumnPlan(
        name=name, kind=kind, arrow_type=str(arrow_type), source="override" if spec.kind else "inferred",
        transform=spec.transform if kind in ("numeric", "vector") else None,
        hash_buckets=spec.hash_buckets if ids else None,
        min_frequency=spec.min_frequency if vocabulary else None,
        max_categories=spec.max_categories if vocabulary else None,
        embedding_dim=spec.embedding_dim if ids else None,
        vector_length=length if kind == "vector" else None,
    )


def _label_plan(label: str, arrow_type: pa.DataType, classification: bool, problems: list[str]) -> ColumnPlan:
    reads, test = LABEL_ACCEPTS[classification]
    if not test(arrow_type):
        task = "classification" if classification else "regression"
        problems.append(f"label column '{label}' has Arrow type {arrow_type}; a {task} label must be "
                        f"{reads}")
    return ColumnPlan(name=label, kind="categorical" if classification else "numeric",
                      arrow_type=str(arrow_type), role="label", source="task")


def describe_plan(plans: Sequence[ColumnPlan]) -> list[str]:
    """One aligned line per column: name, kind, what its transform does, and where the kind came from."""
    rows = [(p.name, _kind_label(p), _what(p), f"({p.arrow_type}, {p.source})") for p in plans]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(3)]
    return [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows]


def _kind_label(p: ColumnPlan) -> str:
    if p.role == "label":
        return "label"
    return f"vector[{p.vector_length or '?'}]" if p.kind == "vector" else p.kind


def _what(p: ColumnPlan) -> str:
    """What the transform does to one column, in a few words."""
    embedding = f"embedding {p.embedding_dim}" if p.embedding_dim else "embedding width by rule"
    ids = (f"hash into {p.hash_buckets} buckets" if p.hash_buckets else
           f"vocabulary (count >= {p.min_frequency}, at most {p.max_categories})")
    return {
        ("label", "categorical"): "classification: classes from the training rows, sorted",
        ("label", "numeric"): "regression: standardized target",
        ("feature", "numeric"): f"{p.transform}; missing -> median (+ indicator if seen)",
        ("feature", "boolean"): "0/1 (+ missing indicator if seen)",
        ("feature", "categorical"): f"{ids}, {embedding}",
        ("feature", "datetime"): "UTC epoch seconds standardized; sin, cos of month, weekday"
                                 + ("" if p.arrow_type.startswith("date") else ", hour"),
        ("feature", "vector"): f"{p.transform} per dimension (+ missing indicator if seen)",
        ("feature", "tags"): f"bag of {ids}, {embedding}",
    }[(p.role, p.kind)]
