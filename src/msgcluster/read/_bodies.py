"""Bodies decoded as the reader declares: a msgspec type, ``str``, ``bytes``,
``msgspec.Raw``, or a union of types msgspec can tell apart (one decoder per
type, cached)."""

from __future__ import annotations

import functools
from typing import Any, Union, get_args, get_origin

import msgspec

from .._errors import BodyDecodeError

__all__ = ["BodyDecoder", "body_decoder"]


def _union_args(body_type: Any) -> tuple[Any, ...]:
    if get_origin(body_type) is Union or type(body_type).__name__ == "UnionType":
        return get_args(body_type)
    return (body_type,)


class BodyDecoder:
    """Decodes bodies as a reader declares: a msgspec type, ``str``, ``bytes``,
    ``msgspec.Raw``, or a union of types msgspec can tell apart.

    A tracked body is JSON (msgcluster encoded it): it is decoded as the type.
    A plain body is what its sender wrote: ``str`` (and ``Any``) take the text
    as it is, ``bytes`` the bytes, ``msgspec.Raw`` the raw payload; other
    types decode it as JSON.
    """

    __slots__ = ("_json", "_plain_json", "binary", "raw", "text", "type")

    def __init__(self, body_type: Any) -> None:
        self.type = body_type
        args = _union_args(body_type)
        self.raw = body_type is msgspec.Raw
        self.text = body_type is Any or str in args
        self.binary = bytes in args
        self._json = msgspec.json.Decoder(body_type)
        others = tuple(arg for arg in args if arg not in (str, bytes))
        self._plain_json: msgspec.json.Decoder[Any] | None = None
        if others and body_type is not Any and not self.raw:
            target = others[0] if len(others) == 1 else Union[others]  # noqa: UP007
            self._plain_json = msgspec.json.Decoder(target)

    def tracked(self, raw: bytes | str | msgspec.Raw, message_id: str) -> Any:
        if self.raw:
            return msgspec.Raw(_utf8(raw, message_id) if isinstance(raw, str) else raw)
        try:
            return self._json.decode(raw)
        except msgspec.ValidationError as exc:
            raise _mismatch(exc, self.type, message_id) from exc
        except (msgspec.DecodeError, RecursionError, UnicodeEncodeError) as exc:
            raise _not_json(exc, message_id) from None

    def plain(self, data: str | bytes, message_id: str) -> Any:
        if self.raw:
            return msgspec.Raw(_utf8(data, message_id) if isinstance(data, str) else data)
        failure: BodyDecodeError | None = None
        if self._plain_json is not None:
            try:
                return self._plain_json.decode(data)
            except msgspec.ValidationError as exc:
                failure = _mismatch(exc, self.type, message_id)
            except (msgspec.DecodeError, RecursionError, UnicodeEncodeError) as exc:
                failure = _not_json(exc, message_id)
        if self.text:
            if isinstance(data, str):
                return data
            try:
                return data.decode()
            except UnicodeDecodeError as exc:
                if not self.binary:
                    raise BodyDecodeError(
                        f"message {message_id}: body is not UTF-8 text", message_id=message_id
                    ) from exc
        if self.binary:
            return data if isinstance(data, bytes) else _utf8(data, message_id)
        assert failure is not None
        raise failure


def _not_json(exc: Exception, message_id: str) -> BodyDecodeError:
    if isinstance(exc, RecursionError):
        why = "it nests deeper than the decoder allows"
    elif isinstance(exc, UnicodeEncodeError):
        why = "it holds characters that are not UTF-8"
    else:
        why = str(exc)
    return BodyDecodeError(
        f"message {message_id}: body is not valid JSON ({why})", message_id=message_id
    )


def _utf8(text: str, message_id: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise BodyDecodeError(
            f"message {message_id}: body holds characters that are not UTF-8 ({exc.reason})",
            message_id=message_id,
        ) from exc


def _mismatch(exc: Exception, body_type: Any, message_id: str) -> BodyDecodeError:
    # A class by name; a generic alias or union as written (list[int], not list).
    name = body_type.__name__ if isinstance(body_type, type) else repr(body_type)
    return BodyDecodeError(
        f"message {message_id}: body does not match {name}: {exc}", message_id=message_id
    )


@functools.lru_cache(maxsize=256)
def _cached_decoder(body_type: Any) -> BodyDecoder:
    return BodyDecoder(body_type)


def body_decoder(body_type: Any) -> BodyDecoder:
    """The (cached) decoder for ``body_type``."""
    try:
        return _cached_decoder(body_type)
    except TypeError:  # an unhashable annotation: build one for this call
        return BodyDecoder(body_type)
