"""Turn records (dataclasses, enums, numpy values, mappings) into JSON-ready values.

Non-finite floats become ``None``: a reading that is not a number is absent, not zero.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def to_jsonable(value: Any) -> Any:
    """Recursively convert ``value`` to JSON-compatible Python values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, *, indent: int | None = None) -> str:
    """JSON text of ``value`` (via :func:`to_jsonable`; NaN is never emitted)."""
    return json.dumps(to_jsonable(value), indent=indent, allow_nan=False, sort_keys=False)


def from_jsonable(cls: type[T], data: Any) -> T:
    """Rebuild a dataclass of type ``cls`` from :func:`to_jsonable` output.

    Handles nested dataclasses, ``X | None``, tuples (``tuple[X, ...]``), enums and plain
    scalars, which is what the records use.

    Raises:
        TypeError: ``data`` does not fit ``cls``.
    """
    result: T = _decode(cls, data)
    return result


def _decode(tp: Any, data: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if data is None:
            return None
        return _decode(members[0], data) if len(members) == 1 else data
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in data)
        return tuple(_decode(a, v) for a, v in zip(args, data, strict=True))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(data, Mapping):
            raise TypeError(f"expected an object for {tp.__name__}, got {type(data).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {
            f.name: _decode(hints[f.name], data[f.name])
            for f in dataclasses.fields(tp)
            if f.init and f.name in data
        }
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    if tp is float and isinstance(data, int):
        return float(data)
    return data
