"""Reading typed values out of a YAML mapping, reporting every problem with its
key path and the nearest valid key.

Owns: the typed readers (`as_int`, `as_float`, `as_str`, `as_list`, `choice`,
`ranged`, ...), how a value is quoted in a problem (`describe`), the nearest-key
suggestion (`nearest`), `Fields` (one section's mapping, read key by key, with
unknown keys reported by `finish`) and `Report` (every problem found, each
prefixed by its key path). A converter raises `Bad`; `Fields` turns it into a
problem under the full key path. Given the section's dataclass (`schema`), a
getter called without a default takes that dataclass field's default
(`schema_default`), so each default is written once, in the dataclass.

Leaves to its callers (the section readers of the `job` package): what the
sections and their fields are, their defaults, the checks that span sections,
and the `SpecError` raised at the end. Private to the `job` package. Imports
neither torch nor ray.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable

REQUIRED: Any = object()  # the default of a field the user must set
FROM_SCHEMA: Any = object()  # a getter's default when none is passed: the schema dataclass's (see Fields)


def schema_default(schema: type | None, key: str) -> Any:
    """The default of field `key` of dataclass `schema` (its default_factory called), or REQUIRED
    when the field has none or there is no schema. A key the dataclass lacks is a KeyError."""
    if schema is None:
        return REQUIRED
    declared = {f.name: f for f in dataclasses.fields(schema)}
    if key not in declared:
        raise KeyError(f"{schema.__name__} has no field {key!r}")
    field = declared[key]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return REQUIRED


class Bad(Exception):
    """A value failed a check; `message` follows the key path, `where` extends it ("[1]")."""

    def __init__(self, message: str, where: str = ""):
        super().__init__(message)
        self.message, self.where = message, where


class Report:
    """Every problem found so far, each prefixed by its key path."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self._bad: set[str] = set()

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")
        self._bad.add(path.split("[")[0])

    def ok(self, *paths: str) -> bool:
        """True when no problem was found at, above or below any of `paths`."""
        return not any(bad == path or path.startswith(bad + ".") or bad.startswith(path + ".")
                       for path in paths for bad in self._bad)


def describe(value: Any) -> str:
    """A value as a problem quotes it: `'five' (str)`, or `null`."""
    if value is None:
        return "null"
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Bad(f"expected an integer, got {describe(value)}")
    return value


def as_float(value: Any) -> float:
    # YAML 1.1 reads `1e-3` as a string: accepting numeric strings spares users that trap.
    number = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None or not math.isfinite(number):
        raise Bad(f"expected a {'finite ' if number is not None else ''}number, got {describe(value)}")
    return number


def as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"expected true or false, got {describe(value)}")
    return value


def as_str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Bad(f"expected a non-empty string, got {describe(value)}")
    return value


def ranged(value: Any, *, min: Any = None, above: Any = None, max: Any = None, below: Any = None) -> Any:
    """`value` when min <= value, above < value, value <= max and value < below (those given)."""
    if ((min is None or value >= min) and (above is None or value > above)
            and (max is None or value <= max) and (below is None or value < below)):
        return value
    shown = f"{value:g}" if isinstance(value, float) else value
    low = f"[{min}" if min is not None else f"({above}" if above is not None else ""
    high = f"{max}]" if max is not None else f"{below})" if below is not None else ""
    if low and high:
        raise Bad(f"must be in {low}, {high}, got {shown}")
    if low:
        raise Bad(f"must be {'>=' if min is not None else '>'} {low[1:]}, got {shown}")
    raise Bad(f"must be {'<=' if max is not None else '<'} {high[:-1]}, got {shown}")


def nearest(word: Any, options: Sequence[str]) -> str:
    """ "did you mean 'x'? " for the closest option by spelling, else by shared prefix; or ""."""
    word = str(word)
    close = difflib.get_close_matches(word, list(options), n=1) or [
        o for o in options if len(min(o, word, key=len)) >= 2 and (word.startswith(o) or o.startswith(word))]
    return f"did you mean '{close[0]}'? " if close else ""


def choice(value: Any, allowed: Sequence[str], noun: str, extra: str = "") -> str:
    if not isinstance(value, str) or value not in allowed:
        what = f"'{value}'" if isinstance(value, str) else describe(value)
        raise Bad(f"unknown {noun} {what} ({nearest(value, allowed)}allowed: {', '.join(allowed)}{extra})")
    return value


def as_list(value: Any, item: Callable[[Any], Any], what: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise Bad(f"expected a list of {what}, got {describe(value)}")
    items = []
    for index, raw in enumerate(value):
        try:
            items.append(item(raw))
        except Bad as bad:
            raise Bad(bad.message, f"[{index}]") from None
    return tuple(items)


class Fields:
    """Reads one section's mapping. Each getter returns the typed value, or records a problem
    under the full key path and returns the default; `finish` reports the keys nobody read.

    A getter called without `default` uses `schema_default(schema, key)`: the default of the
    section dataclass's field of that name, REQUIRED when it has none or `schema` is None."""

    def __init__(self, raw: Mapping, path: str, report: Report, schema: type | None = None):
        self.raw, self.path, self.report, self.schema = raw, path, report, schema
        self.known: list[str] = []

    def key_path(self, key: Any) -> str:
        return f"{self.path}.{key}" if self.path else str(key)

    def add(self, key: str, message: str) -> None:
        self.report.add(self.key_path(key), message)

    def value(self, key: str, default: Any = FROM_SCHEMA, convert: Callable[[Any], Any] | None = None,
              why: str = "", nullable: bool | None = None) -> Any:
        """`convert(raw[key])`; null is kept when `nullable` (by default: when the default is None)."""
        if convert is None:
            raise TypeError(f"Fields.value({key!r}) needs convert")
        if default is FROM_SCHEMA:
            default = schema_default(self.schema, key)
        self.known.append(key)
        raw, fallback = self.raw.get(key), None if default is REQUIRED else default
        if raw is None and default is REQUIRED:
            got_null = ", got null" if key in self.raw else ""
            self.add(key, f"required ({why}){got_null}" if why else f"required{got_null}")
            return None
        if key not in self.raw:
            return fallback
        if raw is None and (default is None if nullable is None else nullable):
            return None
        try:
            return convert(raw)
        except Bad as bad:
            self.report.add(self.key_path(key) + bad.where, bad.message)
            return fallback

    def int(self, key: str, default: Any = FROM_SCHEMA, *, why: str = "", nullable: bool | None = None,
            **bounds: Any) -> Any:
        return self.value(key, default, lambda v: ranged(as_int(v), **bounds), why, nullable)

    def float(self, key: str, default: Any = FROM_SCHEMA, **bounds: Any) -> Any:
        return self.value(key, default, lambda v: ranged(as_float(v), **bounds))

    def bool(self, key: str, default: Any = FROM_SCHEMA) -> Any:
        return self.value(key, default, as_bool)

    def str(self, key: str, default: Any = FROM_SCHEMA, *, why: str = "") -> Any:
        return self.value(key, default, as_str, why)

    def choice(self, key: str, default: Any = FROM_SCHEMA, allowed: Sequence[str] = (), noun: str = "") -> Any:
        if not allowed or not noun:
            raise TypeError(f"Fields.choice({key!r}) needs allowed and noun")
        return self.value(key, default, lambda v: choice(v, allowed, noun), "one of " + ", ".join(allowed))

    def int_list(self, key: str, default: Any = FROM_SCHEMA, **bounds: Any) -> Any:
        def ranged_int(item: Any) -> int:
            return ranged(as_int(item), **bounds)
        return self.value(key, default, lambda v: as_list(v, ranged_int, "integers"))

    def str_list(self, key: str, default: Any = FROM_SCHEMA) -> Any:
        def unique(value: Any) -> tuple:
            names = as_list(value, as_str, "strings")
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise Bad(f"lists {', '.join(map(repr, repeated))} more than once")
            return names
        return self.value(key, default, unique)

    def section(self, key: str, *, required: bool = False, why: str = "", shorthand: bool = False,
                empty_when_absent: bool = True, schema: type | None = None) -> Fields | None:
        """The mapping under `key` as its own `Fields` (reading defaults from `schema`); None when
        it is wrong, or absent and required or not `empty_when_absent`. `shorthand` reads
        `key: x` as `key: {name: x}`."""
        self.known.append(key)
        raw = self.raw.get(key)
        if raw is None:
            if required:
                self.add(key, f"required section ({why})")
            return None if required or not empty_when_absent else Fields({}, self.key_path(key), self.report, schema)
        if shorthand and isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, Mapping):
            what = f"a {key} name or a mapping" if shorthand else "a mapping"
            self.add(key, f"expected {what} of {key} settings, got {describe(raw)}")
            return None
        return Fields(raw, self.key_path(key), self.report, schema)

    def finish(self) -> None:
        """Report every key this section does not know, with the nearest known one."""
        for key in self.raw:
            if key not in self.known:
                hint = nearest(key, self.known) if isinstance(key, str) else ""
                self.add(key, f"unknown key ({hint}allowed: {', '.join(self.known)})")
