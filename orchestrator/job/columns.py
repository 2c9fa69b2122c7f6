"""The job file's `data.columns` overrides: what a user may say about one column.

Owns: the column kinds and numeric transforms (`KINDS`, `TRANSFORMS`, declared
once here), which option applies to which kind (`OPTION_KINDS`), the
`ColumnSpec` of one override, reading the `data.columns` mapping with every
problem under its key path (`read_columns`), and the embedding-width rule
(`embedding_dim`).

    data:
      columns:
        zip_code: categorical                    # a bare kind
        user_id: {kind: categorical, hash_buckets: 1048576}
        income: {transform: log1p}               # kind still inferred from the data

Leaves to `data.columns` which Arrow types each kind reads, the kind inferred
when an override names none, and the options checked against that inferred
kind; leaves to `data.preprocess` what each kind's statistics and transforms
are. Imports neither torch nor ray nor anything from `orchestrator.data`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from orchestrator.job.fields import Bad, Fields, choice, describe

KINDS = ("numeric", "boolean", "categorical", "datetime", "vector", "tags")
TRANSFORMS = ("standard", "robust", "quantile", "log1p", "none")
# A vector is standardized per dimension from its mean and std alone: the
# quantile summaries behind robust/quantile would cost one sketch per dimension.
VECTOR_TRANSFORMS = ("standard", "log1p", "none")
# option → the kinds it applies to; any other kind refuses it
OPTION_KINDS: dict[str, tuple[str, ...]] = {
    "transform": ("numeric", "vector"),
    "hash_buckets": ("categorical", "tags"),
    "min_frequency": ("categorical", "tags"),
    "max_categories": ("categorical", "tags"),
    "embedding_dim": ("categorical", "tags"),
}
_VOCABULARY_ONLY = ("min_frequency", "max_categories")  # meaningless with hash_buckets


@dataclass(frozen=True)
class ColumnSpec:
    """One column's override; every field left at its default means "as inferred"."""

    kind: str | None = None  # numeric | boolean | categorical | datetime | vector | tags; None = inferred
    transform: str = "standard"  # numeric/vector: standard | robust | quantile | log1p | none
    hash_buckets: int | None = None  # categorical/tags: hash values into N buckets instead of a vocabulary
    min_frequency: int = 1  # categorical/tags: training rows a value needs to enter the vocabulary
    max_categories: int = 10_000  # categorical/tags: the most frequent values kept, at most
    embedding_dim: int | None = None  # categorical/tags: None = embedding_dim(cardinality)

    def options_set(self) -> tuple[str, ...]:
        """The options (every field but `kind`) whose value differs from the default, in field order."""
        return tuple(f.name for f in fields(self)
                     if f.name != "kind" and getattr(self, f.name) != f.default)


def embedding_dim(cardinality: int) -> int:
    """The embedding width of a categorical or tags column with `cardinality` ids (the two
    reserved ids, missing and rare/unseen, included): min(32, round(1.6 * cardinality ** 0.56)),
    at least 1. Grows like a power of the vocabulary size and stops at 32."""
    return max(1, min(32, round(1.6 * cardinality ** 0.56)))


def misplaced(options: Iterable[str], kind: str) -> tuple[str, ...]:
    """Those of `options` that do not apply to a `kind` column."""
    return tuple(option for option in options if kind not in OPTION_KINDS.get(option, (kind,)))


def misplaced_message(option: str, kind: str) -> str:
    """Why `option` is refused on a `kind` column, and the way out."""
    applies = " and ".join(OPTION_KINDS[option])
    return f"does not apply to a {kind} column (only to {applies} columns): remove it, or set the kind"


def vector_transform_message(transform: str) -> str:
    """Why `transform` is refused on a vector column."""
    return (f"'{transform}' does not apply to a vector column (allowed: {', '.join(VECTOR_TRANSFORMS)}; "
            "vectors are standardized per dimension from their mean and std)")


def read_columns(f: Fields) -> dict[str, ColumnSpec]:
    """The `columns` mapping of the `data` section `f`, as column name → ColumnSpec.

    Each value is a bare kind (`zip_code: categorical`) or a mapping of options
    (`{kind: categorical, hash_buckets: 1048576}`). Every problem goes to
    `f.report` under its key path (`data.columns.income.transform: unknown
    transform 'lg1p' ...`), including an option that does not apply to the kind
    named; such a column is left out of the result. Options checked against an
    inferred kind are `data.columns`'s business. Absent `columns` → {}.
    """
    section = f.section("columns")
    if section is None:
        return {}
    specs: dict[str, ColumnSpec] = {}
    for name, raw in section.raw.items():
        section.known.append(name)  # every key is a column name: none is "unknown" here
        if not isinstance(name, str) or not name.strip():
            section.add(str(name), f"a column name must be a non-empty string, got {describe(name)}")
            continue
        if isinstance(raw, str):
            try:
                specs[name] = ColumnSpec(kind=choice(raw, KINDS, "column kind"))
            except Bad as bad:
                section.add(name, bad.message)
            continue
        if not isinstance(raw, Mapping):
            section.add(name, f"expected a column kind ({', '.join(KINDS)}) or a mapping of column "
                              f"options, got {describe(raw)}")
            continue
        before = len(f.report.problems)
        spec = _column(Fields(raw, section.key_path(name), f.report, schema=ColumnSpec))
        if len(f.report.problems) == before:
            specs[name] = spec
    return specs


def _column(c: Fields) -> ColumnSpec:
    """One column's mapping of options (defaults from ColumnSpec); problems go to `c.report`."""
    kind = c.value("kind", convert=lambda v: choice(v, KINDS, "column kind"))
    spec = ColumnSpec(
        kind=kind,
        transform=c.choice("transform", allowed=TRANSFORMS, noun="transform"),
        hash_buckets=c.int("hash_buckets", min=1),
        min_frequency=c.int("min_frequency", min=1),
        max_categories=c.int("max_categories", min=1),
        embedding_dim=c.int("embedding_dim", min=1),
    )
    c.finish()
    given = [key for key in c.raw if key in OPTION_KINDS]
    if kind is not None:
        for option in misplaced(given, kind):
            c.add(option, misplaced_message(option, kind))
        if kind == "vector" and spec.transform not in VECTOR_TRANSFORMS:
            c.add("transform", vector_transform_message(spec.transform))
    if spec.hash_buckets is not None:
        for option in (key for key in _VOCABULARY_ONLY if key in c.raw):
            c.add(option, "has no effect with hash_buckets (hashing keeps no vocabulary): "
                          "remove one of the two")
    return spec
