"""Records <-> DynamoDB attribute maps.

boto3's ``TypeSerializer`` is not available (no boto3 at runtime) and botocore
leaves AttributeValues to the caller, so this module is the one place that
shape is built. Structs go through ``msgspec.to_builtins`` (fast, C) and back
through ``msgspec.convert`` (validates), so this code only maps builtins to
AttributeValue tags. ``benchmarks/bench_itemcodec.py`` measures it.
"""

from __future__ import annotations

import math
from typing import Any, Final, TypeVar

import msgspec

from ._errors import ValidationError

__all__ = ["decode_item", "encode_item", "from_attr", "to_attr"]

T = TypeVar("T")

# DynamoDB numbers: 38 significant digits, magnitude 1e-130 .. 9.99..e125.
_MAX_NUMBER: Final = 9.9999999999999999999999999999999999999e125
_MIN_NUMBER: Final = 1e-130


def _number(value: int | float) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"DynamoDB cannot store {value!r}")
        magnitude = abs(value)
        if magnitude and not (_MIN_NUMBER <= magnitude <= _MAX_NUMBER):
            raise ValidationError(f"{value!r} is outside DynamoDB's number range")
        return repr(value)
    text = str(value)
    if len(text.lstrip("-")) > 38:
        raise ValidationError(f"{value} has more than 38 digits, DynamoDB's number limit")
    return text


def to_attr(value: Any) -> dict[str, Any]:
    """One builtin value (as produced by ``msgspec.to_builtins``) -> AttributeValue."""
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return {"N": _number(value)}
    if value is None:
        return {"NULL": True}
    if isinstance(value, dict):
        return {"M": {str(k): to_attr(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [to_attr(v) for v in value]}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"B": bytes(value)}
    raise ValidationError(f"cannot store a {type(value).__name__} in DynamoDB")


def _parse_number(text: str) -> int | float:
    # Floats keep their type when written by us ("3.0"); note real DynamoDB
    # normalises numbers, so it hands back 3.0 as "3" (an int here).
    if "." in text or "e" in text or "E" in text:
        return float(text)
    return int(text)


def from_attr(attr: dict[str, Any]) -> Any:
    """One AttributeValue -> builtin value."""
    ((tag, value),) = attr.items()
    if tag == "S":
        return value
    if tag == "N":
        return _parse_number(value)
    if tag == "BOOL":
        return bool(value)
    if tag == "NULL":
        return None
    if tag == "M":
        return {k: from_attr(v) for k, v in value.items()}
    if tag == "L":
        return [from_attr(v) for v in value]
    if tag == "B":
        return bytes(value)
    if tag == "SS":
        return list(value)
    if tag == "NS":
        return [_parse_number(v) for v in value]
    if tag == "BS":
        return [bytes(v) for v in value]
    raise ValidationError(f"unknown DynamoDB attribute type {tag!r}")


def encode_item(record: msgspec.Struct) -> dict[str, dict[str, Any]]:
    """A record Struct -> a DynamoDB item (top-level attribute map)."""
    builtins = msgspec.to_builtins(record, builtin_types=(bytes,), str_keys=True)
    return {k: to_attr(v) for k, v in builtins.items()}


def decode_item(item: dict[str, dict[str, Any]], type: type[T]) -> T:
    """A DynamoDB item -> the record Struct ``type`` (validated)."""
    builtins = {k: from_attr(v) for k, v in item.items()}
    try:
        return msgspec.convert(builtins, type, strict=False)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"stored item is not a valid {type.__name__}: {exc}") from exc
