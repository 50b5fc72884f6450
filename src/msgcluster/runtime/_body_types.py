"""Which body types a reader may declare: a type msgspec decodes JSON into
(a Struct, dataclass, list[...], ...), ``str``, ``bytes``, ``msgspec.Raw`` or
``Any``. Checked when a handler registers or a batch starts, so a bad one is
one error up front, not a failure of every message."""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect

__all__ = ["body_type_problem"]

_HINT = "use a msgspec.Struct (or a dataclass, list[...], dict[...]), str, bytes or typing.Any"


def body_type_problem(body_type: Any) -> str | None:
    """None if msgspec can decode bodies into ``body_type``, else why not (one
    line, with what to use instead; a value that is not a type is shown by its
    type only)."""
    if isinstance(body_type, str | bytes | int | float) or body_type is None:
        kind = type(body_type).__name__
        return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} is not a type; {_HINT}"
    shown = body_type.__name__ if isinstance(body_type, type) else repr(body_type)[:80]
    try:
        info = msgspec.inspect.type_info(body_type)
    except (TypeError, ValueError):
        return f"{shown} is not a type msgspec supports; {_HINT}"
    custom = _custom_type(info, set())
    if custom is not None:
        return f"msgspec cannot decode a body into {getattr(custom, '__name__', custom)}; {_HINT}"
    return None


def _custom_type(info: Any, seen: set[int]) -> type | None:
    """The first class in ``info`` that msgspec has no decoder for."""
    if isinstance(info, msgspec.inspect.CustomType):
        return info.cls
    if id(info) in seen or not isinstance(info, msgspec.Struct):
        return None
    seen.add(id(info))
    for name in info.__struct_fields__:
        value = getattr(info, name)
        for part in value if isinstance(value, tuple) else (value,):
            found = _custom_type(
                part.type if isinstance(part, msgspec.inspect.Field) else part, seen
            )
            if found is not None:
                return found
    return None
