"""JSON for the fitted preprocessing and its partials: tagged frozen dataclasses, tuples as lists.

Never pickle: `dumps` writes each dataclass as a mapping with its class name under "type",
`loads` rebuilds only the classes it is given, so loading fitted state runs no code.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from orchestrator.errors import DataError


def types(*classes: type) -> dict[str, type]:
    """The name → class table `loads` may rebuild."""
    return {cls.__name__: cls for cls in classes}


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {"type": type(obj).__name__,
                **{f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, tuple):
        return [_plain(item) for item in obj]
    return obj


def _typed(raw: Any, known: Mapping[str, type]) -> Any:
    if isinstance(raw, dict):
        cls = known[raw["type"]]
        return cls(**{key: _typed(value, known) for key, value in raw.items() if key != "type"})
    if isinstance(raw, list):
        return tuple(_typed(item, known) for item in raw)
    return raw


def dumps(obj: Any, strict: bool = True) -> str:
    """`obj` (dataclasses, tuples, scalars) as JSON; `strict` refuses NaN and infinities."""
    return json.dumps(_plain(obj), allow_nan=not strict)


def loads(text: str, cls: type, known: Mapping[str, type]) -> Any:
    """The `cls` that `dumps` wrote, rebuilt from the classes in `known`; DataError otherwise."""
    try:
        obj = _typed(json.loads(text), known)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"not a valid {cls.__name__} JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, cls):
        raise DataError(f"expected a {cls.__name__} JSON, got a {type(obj).__name__}")
    return obj
