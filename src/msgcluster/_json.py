"""Users' values (bodies, meta, globals) as JSON: one encoder, one set of rules.

JSON has no NaN or infinity and msgspec writes them as ``null``: a user's
number would change silently, so they are refused. So is a value nested
beyond the encoder's depth (or referring to itself) and a ``str`` holding a
lone surrogate (not UTF-8).
"""

from __future__ import annotations

import math
from typing import Any, Final

import msgspec

from ._errors import MetaTooLargeError, ValidationError

__all__ = ["encode_json", "encode_meta"]

_encoder: Final = msgspec.json.Encoder()


def encode_json(value: Any, what: str) -> bytes:
    """``value`` as JSON bytes, or a ValidationError naming ``what`` it is."""
    try:
        data = _encoder.encode(value)
    except RecursionError:
        raise ValidationError(
            f"{what} cannot be encoded as JSON: it nests too deeply or contains itself"
        ) from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(f"{what} cannot be encoded as JSON: {exc}") from exc
    # NaN and infinities come out as null: look for them only when one may be there.
    if b"null" in data and _has_non_finite(value):
        raise ValidationError(
            f"{what} holds NaN or an infinity, which JSON cannot carry; send a string or None"
        )
    return data


def encode_meta(meta: Any, limit: int) -> bytes:
    """Record ``meta`` as JSON, within the Client's ``max_meta_bytes``."""
    data = encode_json(meta, "meta")
    if len(data) > limit:
        raise MetaTooLargeError(
            f"meta is {len(data):,} bytes encoded; the limit is {limit:,} "
            "(meta lives on the DynamoDB record; put large data in the body)"
        )
    return data


def _has_non_finite(value: Any) -> bool:
    stack = [msgspec.to_builtins(value, str_keys=True)]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False
