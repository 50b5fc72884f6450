"""Queue URIs: parsed once, credentials refused, query parameters checked by
each backend against the parameters it declares."""

from __future__ import annotations

import difflib
import math
import re
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import msgspec

from .._aws import check_endpoint
from .._errors import ConfigurationError, QueueURIError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "Param",
    "QueueURI",
    "boolean",
    "endpoint",
    "integer",
    "number",
    "parse_queue_uri",
    "read_params",
    "shown",
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
    """Split ``uri``; raise QueueURIError if it is malformed or carries credentials.

    Errors show the URI only as :func:`shown` renders it: no userinfo and no
    query values, which may hold a secret.
    """
    if not isinstance(uri, str):
        raise QueueURIError(f"a queue URI must be a string, got {type(uri).__name__}")
    scheme, sep, rest = uri.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise QueueURIError(
            "not a queue URI: expected scheme://name, for example sqs://jobs, "
            "dynamodb://table?queue=jobs or memory://tasks"
        )
    _refuse_credentials(scheme, rest)
    try:
        parts = urlsplit(uri)
    except ValueError:  # a broken [IPv6] host
        raise QueueURIError(f"malformed host in {shown(uri)}: write [IPv6] in brackets") from None
    if parts.fragment or "#" in uri:
        raise QueueURIError(f"queue URIs take no #fragment: {shown(uri)}")
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise QueueURIError(
            f"malformed query string in {shown(uri)}: write ?name=value&name=value"
        ) from None
    for name, value in pairs:
        if name in params:
            raise QueueURIError(f"query parameter {_name(name)} is given twice in {shown(uri)}")
        params[name] = value
    return QueueURI(
        uri=uri, scheme=parts.scheme.lower(), location=parts.netloc + parts.path, params=params
    )


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# ASCII digits only: int() also takes "1_0", " 5 " and other scripts' digits.
_INTEGER = re.compile(r"-?[0-9]{1,18}")
_DECIMAL = re.compile(r"-?[0-9]{1,18}(?:\.[0-9]{1,18})?")
_SECRET_NAME = re.compile(r"secret|passw|token|credential|access_?key|signature", re.I)
_CREDENTIALS_HINT = "configure credentials the usual way (environment, profile, role)"


def _refuse_credentials(scheme: str, rest: str) -> None:
    """Credentials in a URI end up in logs, errors and process lists: refuse
    them wherever they stand (userinfo, even with a '/' in the secret; a
    credential-named parameter; a URL with userinfo as a parameter value)."""
    query = rest.partition("?")[2]
    # No queue name, table name, host or parameter has an '@': wherever it
    # stands (after a '#' or '?' in the secret, percent-encoded), it is userinfo.
    if "@" in unquote(rest):
        tail = unquote(rest).rpartition("@")[2].partition("?")[0]
        where = f"{scheme}://***@{tail}" if _PLAIN_NAME.fullmatch(tail) else f"the {scheme}:// URI"
        raise QueueURIError(
            f"queue URIs never carry credentials: remove the user:password@ part ({where}) "
            f"and {_CREDENTIALS_HINT}"
        )
    for name, value in parse_qsl(query.partition("#")[0], keep_blank_values=True):
        if _SECRET_NAME.search(name) or ("://" in value and "@" in value):
            # Its name is not shown: ``?<secret>`` parses as a parameter named by it.
            raise QueueURIError(
                "queue URIs never carry credentials (a query parameter names or holds one): "
                f"remove it and {_CREDENTIALS_HINT}"
            )


def shown(uri: str) -> str:
    """``uri`` as errors and logs may show it: scheme, location and parameter
    names; userinfo and parameter values are left out."""
    scheme, _, rest = uri.partition("://")
    location, _, query = rest.partition("?")
    location = location.partition("#")[0].rpartition("@")[2]
    names = [_name(name) for name, _ in parse_qsl(query.partition("#")[0], keep_blank_values=True)]
    tail = ("?" + "&".join(f"{name}=..." for name in names)) if names else ""
    return f"{_safe(scheme)}://{_safe(location)}{tail}"


def _safe(text_value: str) -> str:
    return text_value if len(text_value) <= 200 else text_value[:200] + "..."


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,39}")


def _name(name: str) -> str:
    """A parameter name as errors show it: a plain identifier, else hidden
    (``?<secret>`` parses as a parameter named by the secret)."""
    return repr(name) if _PLAIN_NAME.fullmatch(name) else "(a parameter whose name is hidden)"


def _unknown(name: str, spec: Mapping[str, object]) -> str:
    """An unknown name as errors show it: a valid one's misspelling, or hidden
    (``?<secret>`` parses as a parameter named by the secret)."""
    if name in spec or difflib.get_close_matches(name, list(spec), n=1, cutoff=0.75):
        return _name(name)
    return "(its name is not shown)"


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
                f"unknown query parameter {_unknown(name, spec)} for {uri.scheme}://{hint}; "
                f"valid: {valid_query}"
            )
        given[name] = (text_value, "query parameter")
    for name, value in options.items():
        if name not in spec:
            raise QueueURIError(
                f"unknown option {_name(str(name))} for {uri.scheme}://; valid: {valid}"
            )
        given[name] = (value, "option")
    out: dict[str, Any] = {}
    for name, (value, where) in given.items():
        try:
            out[name] = spec[name].convert(value)
        except (ValueError, TypeError) as exc:
            # The value is not repeated: a misplaced secret would be echoed.
            raise QueueURIError(f"invalid {where} {name} for {uri.scheme}://: {exc}") from None
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
        if isinstance(value, str) and not _DECIMAL.fullmatch(value):
            result = math.nan
        else:
            result = float(value)
        if not math.isfinite(result) or not low <= result <= high:
            raise ValueError(f"expected a number from {low:g} to {high:g}")
        return result

    return convert


def integer(low: int, high: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise TypeError("expected an integer")
        if isinstance(value, str) and not _INTEGER.fullmatch(value):
            raise ValueError(f"expected an integer from {low} to {high}")
        result = int(value)
        if not low <= result <= high:
            raise ValueError(f"expected an integer from {low} to {high}")
        return result

    return convert


def text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def endpoint(value: object) -> str:
    """An http(s) endpoint URL (checked like the Client's ``endpoint_url``)."""
    try:
        return check_endpoint(value, "endpoint")
    except ConfigurationError as exc:
        raise ValueError(str(exc).removeprefix("endpoint ")) from None


def aws_client(operation: str) -> Callable[[object], object]:
    """An open aiobotocore client of the backend's service (it has ``operation``)."""

    def convert(value: object) -> object:
        if not callable(getattr(value, operation, None)) or not hasattr(value, "meta"):
            raise TypeError(f"expected an open aiobotocore client (one with {operation})")
        return value

    return convert


def session(value: object) -> object:
    """An aiobotocore session (``AioSession``)."""
    from aiobotocore.session import AioSession

    if not isinstance(value, AioSession):
        raise TypeError("expected an aiobotocore AioSession")
    return value
