"""Queue URIs: parsed once, credentials refused, query parameters checked by
each backend against the parameters it declares."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlsplit

import msgspec

from .._errors import QueueURIError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "Param",
    "QueueURI",
    "boolean",
    "integer",
    "number",
    "parse_queue_uri",
    "read_params",
    "text",
]

T = TypeVar("T")


class QueueURI(msgspec.Struct, frozen=True, kw_only=True):
    """A queue URI split into parts; what a backend factory receives.

    ``location`` is everything between ``scheme://`` and the query (the queue
    name, or host and path for URL-shaped schemes); ``params`` holds each
    query parameter once, still as text.
    """

    uri: str
    scheme: str
    location: str
    params: dict[str, str]


def parse_queue_uri(uri: str) -> QueueURI:
    """Split ``uri``; raise QueueURIError if it is malformed or carries credentials."""
    if not isinstance(uri, str) or "://" not in uri:
        raise QueueURIError(f"not a queue URI (expected scheme://name): {uri!r}")
    parts = urlsplit(uri)
    if "@" in parts.netloc:
        # Never echo the userinfo: it may hold a secret (and a user name alone
        # is usually an access key id). Credentials come from the environment.
        shown = f"{parts.scheme}://***@{parts.netloc.rpartition('@')[2]}{parts.path}"
        raise QueueURIError(
            f"queue URIs never carry credentials; remove the user:password@ part "
            f"({shown}) and configure credentials the usual way (environment, profile, role)"
        )
    if parts.fragment:
        raise QueueURIError(f"queue URIs take no #fragment: {uri!r}")
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise QueueURIError(f"malformed query string in {uri!r}: {exc}") from exc
    for name, value in pairs:
        if name in params:
            raise QueueURIError(f"query parameter {name!r} is given twice in {uri!r}")
        params[name] = value
    return QueueURI(
        uri=uri, scheme=parts.scheme.lower(), location=parts.netloc + parts.path, params=params
    )


class Param(Generic[T]):
    """One parameter a backend accepts: ``convert`` takes the query text or the
    keyword option's value and returns the typed value, raising ValueError
    (or TypeError) with a reason. ``query=False`` means keyword option only
    (a callable, a client object...)."""

    __slots__ = ("convert", "query")

    def __init__(self, convert: Callable[[object], T], *, query: bool = True) -> None:
        self.convert = convert
        self.query = query


def read_params(
    uri: QueueURI, options: Mapping[str, object], spec: Mapping[str, Param[Any]]
) -> dict[str, Any]:
    """The parameters given in the URI's query and in ``options`` (which win),
    converted; absent ones are left out so the backend applies its defaults.

    Unknown names and invalid values raise QueueURIError naming the valid ones.
    """
    valid = ", ".join(sorted(spec))
    valid_query = ", ".join(sorted(name for name, param in spec.items() if param.query))
    given: dict[str, tuple[object, str]] = {}
    for name, text_value in uri.params.items():
        param = spec.get(name)
        if param is None or not param.query:
            hint = "" if param is None else " (it is a keyword option of open_queue)"
            raise QueueURIError(
                f"unknown query parameter {name!r} for {uri.scheme}://{hint}; valid: {valid_query}"
            )
        given[name] = (text_value, "query parameter")
    for name, value in options.items():
        if name not in spec:
            raise QueueURIError(f"unknown option {name!r} for {uri.scheme}://; valid: {valid}")
        given[name] = (value, "option")
    out: dict[str, Any] = {}
    for name, (value, where) in given.items():
        try:
            out[name] = spec[name].convert(value)
        except (ValueError, TypeError) as exc:
            raise QueueURIError(
                f"invalid {where} {name}={value!r} for {uri.scheme}://: {exc}"
            ) from exc
    return out


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on"}:
        return True
    if isinstance(value, str) and value.lower() in {"false", "0", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def number(low: float, high: float) -> Callable[[object], float]:
    def convert(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise TypeError("expected a number")
        try:
            result = float(value)
        except ValueError:
            result = math.nan
        if not math.isfinite(result) or not low <= result <= high:
            raise ValueError(f"expected a number from {low:g} to {high:g}")
        return result

    return convert


def integer(low: int, high: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise TypeError("expected an integer")
        try:
            result = int(value)
        except ValueError:
            raise ValueError(f"expected an integer from {low} to {high}") from None
        if not low <= result <= high:
            raise ValueError(f"expected an integer from {low} to {high}")
        return result

    return convert


def text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value
