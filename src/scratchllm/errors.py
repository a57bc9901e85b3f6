"""User-facing errors: one exception type, and the checks that raise it where input is read.

The CLI prints a `ScratchLLMError` as a single line (no traceback) and exits with status 2, so every
message says which file, record or field is wrong, what was found and what was expected.
`check_fields` holds every config dataclass to its annotations at construction, whether the values came
from a YAML file, a flag or Python: a string where a number belongs, a bool where an int belongs, or a
NaN/infinity anywhere is refused there, instead of surfacing later as a comparison error or NaN weights.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing


class ScratchLLMError(Exception):
    """A problem with the user's input (a file, a flag, a config field), not a bug in scratchllm."""


_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
          tuple: "a list"}  # fmt: skip


def _coerce(value, kind):
    """`value` as `kind`, or raise ValueError; ints pass as floats and lists as tuples, never bools as numbers."""
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError("a finite number")
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    if kind in (str, bool, dict) and isinstance(value, kind):
        return value
    raise ValueError(_NAMES.get(kind, kind.__name__))


def check_fields(obj, where: str) -> None:
    """Check (and normalise: int -> float, list -> tuple) every init field of dataclass `obj`."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if not f.init or f.name.startswith("_"):
            continue
        value, annotation = getattr(obj, f.name), hints[f.name]
        options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
        if value is None and type(None) in options:
            continue
        expected = []
        for option in options:
            kind = typing.get_origin(option) or option
            if kind is type(None) or kind is typing.Any:
                continue
            try:
                setattr(obj, f.name, _coerce(value, kind))
                break
            except ValueError as e:
                expected.append(str(e))
        else:
            if expected:
                wanted = " or ".join(expected) + (" or null" if type(None) in options else "")
                raise ScratchLLMError(f"{where}: field {f.name!r} should be {wanted}, got {value!r}")
