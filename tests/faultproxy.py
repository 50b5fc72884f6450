"""Fault-injecting HTTP/1.1 proxy for tests that talk to moto through aiobotocore.

moto never throttles, never returns partial batch failures and never loses a
response. Put a :class:`FaultProxy` between the client and moto (point the
client's ``endpoint_url`` at ``proxy.url``) and add rules that pick requests
and decide what happens to them::

    with FaultProxy(upstream=moto_url) as proxy:
        rule = proxy.add_rule(match_target("BatchWriteItem"), throttle(), times=2)
        ...  # run the code under test against proxy.url
        assert rule.hits == 2
        assert proxy.count("BatchWriteItem") == 3

Stdlib only. The proxy runs in its own threads (one accept thread, one thread
per client connection), so it never blocks an asyncio event loop; ``start()``
and ``stop()`` are quick and can be called from sync or async code.

A *matcher* is ``(ProxyRequest) -> bool``. An *action* is
``(ProxyRequest, Forward) -> ProxyResponse | Disconnect``: it may call
``forward(request)`` (any number of times, with a modified request if it likes)
to send a request to the upstream and get its response, and returns either the
response for the client or ``RESET`` / ``CLOSE`` to end the client connection
without a response.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import gzip
import http.client
import json
import logging
import re
import socket
import socketserver
import struct
import threading
import uuid
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeAlias
from urllib.parse import urlsplit
from xml.sax.saxutils import escape as _xml_escape

__all__ = [
    "CLOSE",
    "RESET",
    "Action",
    "Disconnect",
    "FaultProxy",
    "Forward",
    "Headers",
    "JsonExchange",
    "LogEntry",
    "Matcher",
    "ProxyRequest",
    "ProxyResponse",
    "Rule",
    "UpstreamError",
    "delay",
    "drop_response",
    "duplicate",
    "error",
    "error_response",
    "fail_sqs_batch_entries",
    "match_any",
    "match_s3",
    "match_service",
    "match_target",
    "passthrough",
    "reset",
    "respond",
    "rewrite_json",
    "strict_sqs",
    "throttle",
    "unprocessed_dynamodb_items",
    "unprocessed_dynamodb_keys",
]

log = logging.getLogger("faultproxy")

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Not forwarded upstream: hop-by-hop, plus Expect (the proxy answers
# "100 Continue" itself) and Content-Length (recomputed from the body).
_DROP_REQUEST_HEADERS = _HOP_BY_HOP | {"expect", "content-length"}
_DROP_RESPONSE_HEADERS = _HOP_BY_HOP | {"content-length"}
# Headers that may appear only once. moto (werkzeug) sends two Server headers,
# which aiohttp's strict parser (debug/dev mode) rejects; the last one is kept.
_SINGLETON_RESPONSE_HEADERS = frozenset(
    {"content-location", "content-range", "content-type", "etag", "server", "date"}
)

_CREDENTIAL_RE = re.compile(r"Credential=[^/,\s]*/\d{8}/[^/]+/([^/]+)/aws4_request")
_QUERY_CREDENTIAL_RE = re.compile(
    r"X-Amz-Credential=[^&/%]+(?:/|%2F)\d{8}(?:/|%2F)[^&/%]+(?:/|%2F)([^&/%]+)", re.IGNORECASE
)
_JSON_CONTENT_TYPE = "application/x-amz-json-1.0"


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------


class Headers:
    """An ordered, case-insensitive multi-map of HTTP headers."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(str(k), str(v)) for k, v in items]

    def get(self, name: str, default: str | None = None) -> str | None:
        lname = name.lower()
        for k, v in self._items:
            if k.lower() == lname:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self._items if k.lower() == lname]

    def set(self, name: str, value: str) -> None:
        """Replace every header called ``name`` by one with ``value``."""
        self.remove(name)
        self._items.append((name, str(value)))

    def add(self, name: str, value: str) -> None:
        self._items.append((name, str(value)))

    def remove(self, name: str) -> None:
        lname = name.lower()
        self._items = [(k, v) for k, v in self._items if k.lower() != lname]

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def copy(self) -> Headers:
        return Headers(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def _decoded(headers: Headers, body: bytes) -> bytes:
    encoding = (headers.get("content-encoding") or "").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def _dump_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass
class ProxyRequest:
    """A request as received from the client (body fully read, de-chunked)."""

    method: str
    path: str  # the request target: path plus query string
    headers: Headers
    body: bytes = b""

    @property
    def target(self) -> str | None:
        """The ``X-Amz-Target`` header (JSON protocols), e.g. ``AmazonSQS.SendMessage``."""
        return self.headers.get("x-amz-target")

    @property
    def operation(self) -> str | None:
        """The operation name of a JSON-protocol request (``SendMessage``), else None."""
        target = self.target
        return target.rsplit(".", 1)[-1] if target else None

    @property
    def service(self) -> str:
        """``dynamodb``, ``sqs``, ``s3`` or another SigV4 service name (default ``s3``)."""
        target = self.target
        if target:
            if target.startswith("DynamoDB_"):
                return "dynamodb"
            if target.startswith("AmazonSQS."):
                return "sqs"
        match = _CREDENTIAL_RE.search(self.headers.get("authorization") or "")
        if match is None:
            match = _QUERY_CREDENTIAL_RE.search(self.query)
        if match is not None:
            return match.group(1)
        if target:
            return target.split(".", 1)[0].split("_", 1)[0].lower()
        return "s3"

    @property
    def url_path(self) -> str:
        """The path without the query string."""
        return self.path.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.path.split("?", 1)[1] if "?" in self.path else ""

    @property
    def label(self) -> str:
        """The X-Amz-Target, or ``"S3 METHOD /path"`` (``"<SERVICE> METHOD /path"``)."""
        target = self.target
        if target:
            return target
        return f"{self.service.upper()} {self.method} {self.url_path}"

    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError if it is not JSON)."""
        return json.loads(_decoded(self.headers, self.body))

    def copy(self) -> ProxyRequest:
        return ProxyRequest(self.method, self.path, self.headers.copy(), self.body)

    def with_body(self, body: bytes) -> ProxyRequest:
        """A copy with ``body`` (uncompressed) and Content-Length updated."""
        new = self.copy()
        new.body = body
        new.headers.remove("content-encoding")
        new.headers.set("Content-Length", str(len(body)))
        return new

    def with_json(self, obj: Any) -> ProxyRequest:
        return self.with_body(_dump_json(obj))


@dataclass
class ProxyResponse:
    """A complete response (body fully read, de-chunked)."""

    status: int
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    reason: str = ""

    def json(self) -> Any:
        return json.loads(_decoded(self.headers, self.body))

    def copy(self) -> ProxyResponse:
        return ProxyResponse(self.status, self.headers.copy(), self.body, self.reason)

    def with_body(self, body: bytes) -> ProxyResponse:
        """A copy with ``body``; Content-Length and DynamoDB's x-amz-crc32 updated."""
        new = self.copy()
        new.body = body
        new.headers.remove("content-encoding")
        new.headers.set("Content-Length", str(len(body)))
        if "x-amz-crc32" in new.headers:
            new.headers.set("x-amz-crc32", str(zlib.crc32(body) & 0xFFFFFFFF))
        return new

    def with_json(self, obj: Any) -> ProxyResponse:
        return self.with_body(_dump_json(obj))


class Disconnect(enum.Enum):
    """Returned by an action instead of a response: end the client connection."""

    RESET = "reset"  # abortive close: TCP RST (client sees "connection reset")
    CLOSE = "close"  # orderly close: FIN (client sees "server disconnected")


RESET = Disconnect.RESET
CLOSE = Disconnect.CLOSE


class UpstreamError(Exception):
    """Forwarding to the upstream failed (the client then gets a 502)."""


class Forward:
    """Passed to actions: ``forward(request)`` sends a request upstream.

    Each call is one upstream HTTP exchange; the request is applied by the
    upstream each time. Raises :class:`UpstreamError` on connection problems.
    """

    def __init__(self, handler: _Handler) -> None:
        self._handler = handler

    def __call__(self, request: ProxyRequest) -> ProxyResponse:
        return self._handler.forward(request)

    def sleep(self, seconds: float) -> bool:
        """Sleep, waking early if the proxy stops; returns False if it is stopping."""
        return not self._handler.server.proxy._stopping.wait(seconds)


Matcher: TypeAlias = Callable[[ProxyRequest], bool]
Action: TypeAlias = Callable[[ProxyRequest, Forward], "ProxyResponse | Disconnect"]


@dataclass(eq=False)
class Rule:
    """A rule added by :meth:`FaultProxy.add_rule`."""

    match: Matcher
    action: Action
    times: int | None = None
    hits: int = 0  # how many requests the rule was applied to

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times


class LogEntry(NamedTuple):
    """One request seen by the proxy: ``(label, status)``.

    ``status`` is the HTTP status sent to the client, or 0 when the connection
    was reset/closed without a response (``reset``, ``drop_response``).
    """

    label: str
    status: int


# --------------------------------------------------------------------------
# Matchers
# --------------------------------------------------------------------------


def match_any() -> Matcher:
    """Match every request."""
    return lambda request: True


def match_target(*targets: str) -> Matcher:
    """Match JSON-protocol requests by X-Amz-Target.

    Each of ``targets`` is a full target (``"DynamoDB_20120810.BatchWriteItem"``)
    or just the operation name (``"BatchWriteItem"``).
    """
    if not targets:
        raise ValueError("match_target needs at least one target")
    full = frozenset(targets)
    names = frozenset(t for t in targets if "." not in t)

    def matcher(request: ProxyRequest) -> bool:
        target = request.target
        if not target:
            return False
        return target in full or target.rsplit(".", 1)[-1] in names

    return matcher


def match_service(service: str) -> Matcher:
    """Match requests to one service (``"dynamodb"``, ``"sqs"``, ``"s3"``)."""
    return lambda request: request.service == service


def match_s3(
    method: str | None = None,
    path_regex: str | None = None,
    *,
    query_regex: str | None = None,
) -> Matcher:
    """Match S3 (REST) requests.

    ``method`` is compared case-insensitively; ``path_regex`` is searched
    (``re.search``) in the path without query string (``/bucket/key``),
    ``query_regex`` in the query string.
    """
    path_re = re.compile(path_regex) if path_regex is not None else None
    query_re = re.compile(query_regex) if query_regex is not None else None
    wanted = method.upper() if method else None

    def matcher(request: ProxyRequest) -> bool:
        if request.target or request.service != "s3":
            return False
        if wanted is not None and request.method.upper() != wanted:
            return False
        if path_re is not None and not path_re.search(request.url_path):
            return False
        return query_re is None or query_re.search(request.query) is not None

    return matcher


# --------------------------------------------------------------------------
# Responses made up by the proxy
# --------------------------------------------------------------------------


def _request_id() -> str:
    return uuid.uuid4().hex


def _json_response(request: ProxyRequest, status: int, obj: Any) -> ProxyResponse:
    body = _dump_json(obj)
    headers = Headers(
        [
            ("Content-Type", _JSON_CONTENT_TYPE),
            ("x-amzn-RequestId", _request_id()),
            ("Content-Length", str(len(body))),
        ]
    )
    if request.service == "dynamodb":
        headers.add("x-amz-crc32", str(zlib.crc32(body) & 0xFFFFFFFF))
    return ProxyResponse(status, headers, body)


def error_response(
    request: ProxyRequest,
    status: int,
    code: str,
    message: str = "",
    *,
    sender_fault: bool | None = None,
) -> ProxyResponse:
    """The error response ``service`` would send: JSON ``__type`` or S3 XML."""
    if sender_fault is None:
        sender_fault = status < 500
    service = request.service
    if request.target or service in ("dynamodb", "sqs"):
        if service == "dynamodb":
            type_ = f"com.amazonaws.dynamodb.v20120810#{code}"
        elif service == "sqs":
            type_ = f"com.amazonaws.sqs#{code}"
        else:
            type_ = code
        response = _json_response(request, status, {"__type": type_, "message": message})
        if service == "sqs":
            # SQS is "awsQueryCompatible": botocore takes the error code from
            # this header ("<query code>;<Sender|Receiver>") when present.
            response.headers.add(
                "x-amzn-query-error", f"{code};{'Sender' if sender_fault else 'Receiver'}"
            )
        return response
    request_id = _request_id()
    host_id = uuid.uuid4().hex
    headers = Headers(
        [
            ("Content-Type", "application/xml"),
            ("x-amz-request-id", request_id),
            ("x-amz-id-2", host_id),
        ]
    )
    if request.method.upper() == "HEAD":
        headers.add("Content-Length", "0")
        return ProxyResponse(status, headers, b"")
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{_xml_escape(code)}</Code><Message>{_xml_escape(message)}</Message>"
        f"<RequestId>{request_id}</RequestId><HostId>{host_id}</HostId></Error>"
    ).encode()
    headers.add("Content-Length", str(len(body)))
    return ProxyResponse(status, headers, body)


# --------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------


def passthrough() -> Action:
    """Forward unchanged (useful to shadow later rules, or to count hits)."""
    return lambda request, forward: forward(request)


_THROTTLING: dict[str, tuple[int, str, str]] = {
    "dynamodb": (400, "ThrottlingException", "Rate of requests exceeds the allowed throughput."),
    "sqs": (400, "RequestThrottled", "Request is throttled."),
    "s3": (503, "SlowDown", "Please reduce your request rate."),
}


def throttle(
    code: str | None = None, message: str | None = None, status: int | None = None
) -> Action:
    """Answer (without forwarding) with the service's throttling error.

    Defaults: DynamoDB 400 ``ThrottlingException``; SQS 400 ``RequestThrottled``
    (JSON ``__type`` plus ``x-amzn-query-error: RequestThrottled;Sender``); S3
    503 ``SlowDown`` (XML; a HEAD gets no body, botocore then reports ``503``);
    other JSON services 400 ``ThrottlingException``. All of these are in
    botocore's throttling error-code list, so ``standard``/``adaptive`` retry
    modes retry them. ``code``/``message``/``status`` override the defaults
    (e.g. ``throttle("ProvisionedThroughputExceededException")``).
    """

    def action(request: ProxyRequest, forward: Forward) -> ProxyResponse:
        d_status, d_code, d_message = _THROTTLING.get(
            request.service, (400, "ThrottlingException", "Rate exceeded")
        )
        return error_response(
            request,
            d_status if status is None else status,
            d_code if code is None else code,
            d_message if message is None else message,
        )

    return action


def error(status: int, code: str, message: str = "", *, sender_fault: bool | None = None) -> Action:
    """Answer (without forwarding) with a service-appropriate error.

    JSON ``{"__type": ..., "message": ...}`` for DynamoDB/SQS (SQS also gets
    ``x-amzn-query-error``, Sender/Receiver from ``sender_fault`` or the status),
    S3 XML ``<Error><Code>...`` otherwise. botocore reports ``code`` as the
    error code (for an S3 HEAD, which has no body: the status).
    """

    def action(request: ProxyRequest, forward: Forward) -> ProxyResponse:
        return error_response(request, status, code, message, sender_fault=sender_fault)

    return action


def strict_sqs() -> Action:
    """Refuse what real SQS refuses and moto accepts: an empty ``MessageBody``
    (400 ``MissingParameter``), an empty attribute value and more than 10
    attributes (400 ``InvalidParameterValue``), in SendMessage and every
    SendMessageBatch entry. Everything else is forwarded."""

    def refusal(body: Any) -> tuple[str, str] | None:
        entries = body.get("Entries") if isinstance(body.get("Entries"), list) else [body]
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            if entry.get("MessageBody", None) == "":
                return "MissingParameter", "The request must contain the parameter MessageBody."
            count = len(entry.get("MessageAttributes") or {})
            if count > 10:
                return (
                    "InvalidParameterValue",
                    f"Number of message attributes [{count}] exceeds the allowed maximum [10].",
                )
            for name, value in (entry.get("MessageAttributes") or {}).items():
                if not isinstance(value, dict):
                    continue
                if value.get("StringValue", None) == "" or value.get("BinaryValue", None) == "":
                    return (
                        "InvalidParameterValue",
                        f"Message attribute '{name}' must contain a non-empty value",
                    )
        return None

    def action(request: ProxyRequest, forward: Forward) -> ProxyResponse:
        if request.operation in ("SendMessage", "SendMessageBatch"):
            try:
                body = request.json()
            except ValueError:
                body = None
            found = refusal(body) if isinstance(body, dict) else None
            if found is not None:
                return error_response(request, 400, found[0], found[1], sender_fault=True)
        return forward(request)

    return action


def respond(
    status: int = 200,
    body: bytes | None = None,
    headers: Iterable[tuple[str, str]] = (),
    *,
    json_body: Any = None,
) -> Action:
    """Answer (without forwarding) with a fixed response."""

    def action(request: ProxyRequest, forward: Forward) -> ProxyResponse:
        if json_body is not None:
            response = _json_response(request, status, json_body)
            for name, value in headers:
                response.headers.set(name, value)
            return response
        data = body or b""
        hdrs = Headers(headers)
        hdrs.set("Content-Length", str(len(data)))
        return ProxyResponse(status, hdrs, data)

    return action


def reset(*, graceful: bool = False) -> Action:
    """Close the client connection without forwarding (the request is NOT applied).

    Abortive (TCP RST) by default; ``graceful=True`` sends FIN instead.
    """
    outcome = CLOSE if graceful else RESET
    return lambda request, forward: outcome


def drop_response(*, graceful: bool = False) -> Action:
    """Forward (the request IS applied), then close the client connection
    without sending the response ("applied but response lost")."""
    outcome = CLOSE if graceful else RESET

    def action(request: ProxyRequest, forward: Forward) -> Disconnect:
        forward(request)
        return outcome

    return action


def delay(seconds: float, then: Action | None = None) -> Action:
    """Wait ``seconds`` (then forward, or run ``then``). Cut short by ``stop()``."""

    def action(request: ProxyRequest, forward: Forward) -> ProxyResponse | Disconnect:
        if not forward.sleep(seconds):
            return RESET
        return then(request, forward) if then is not None else forward(request)

    return action


def duplicate(copies: int = 2) -> Action:
    """Forward the request ``copies`` times (applied that many times); the client
    gets the first response."""
    if copies < 1:
        raise ValueError("copies must be >= 1")

    def action(request: ProxyRequest, forward: Forward) -> ProxyResponse:
        first = forward(request)
        for _ in range(copies - 1):
            forward(request)
        return first

    return action


@dataclass
class JsonExchange:
    """Per-request context handed to :func:`rewrite_json` callbacks."""

    request: ProxyRequest  # the request as received from the client
    original: Any  # its parsed JSON body (do not mutate)
    forwarded: Any = None  # the JSON sent upstream (after request_fn)
    status: int = 0  # the upstream status (set before response_fn)
    state: dict[str, Any] = field(default_factory=dict)  # scratch, shared by both callbacks
    reply: Any = None  # request_fn may set this: answer 200 with it, don't forward


JsonFn: TypeAlias = Callable[[Any, JsonExchange], Any]


def rewrite_json(request_fn: JsonFn | None = None, response_fn: JsonFn | None = None) -> Action:
    """Transform the JSON request before forwarding and/or the JSON response after.

    ``request_fn(body, exchange)`` gets a deep copy of the parsed request body
    and returns the body to forward (or None to forward the mutated copy). It
    may set ``exchange.reply`` to answer 200 with that JSON without forwarding.
    ``response_fn(body, exchange)`` is applied to 2xx JSON responses (upstream
    or ``reply``) and returns the new body (or None to keep the mutated one).
    Bodies that are not JSON are forwarded/returned unchanged.
    """

    def action(request: ProxyRequest, forward: Forward) -> ProxyResponse:
        try:
            original = request.json()
        except ValueError:
            return forward(request)
        exchange = JsonExchange(request=request, original=original)
        body = copy.deepcopy(original)
        if request_fn is not None:
            new_body = request_fn(body, exchange)
            body = body if new_body is None else new_body
        exchange.forwarded = body
        if exchange.reply is not None:
            response = _json_response(request, 200, exchange.reply)
        elif request_fn is not None:
            response = forward(request.with_json(body))
        else:
            response = forward(request)
        exchange.status = response.status
        if response_fn is None or not 200 <= response.status < 300:
            return response
        try:
            data = response.json()
        except ValueError:
            return response
        new_data = response_fn(data, exchange)
        return response.with_json(data if new_data is None else new_data)

    return action


_SQS_BATCH_OPERATIONS = frozenset(
    {"SendMessageBatch", "DeleteMessageBatch", "ChangeMessageVisibilityBatch"}
)

SqsEntrySelector: TypeAlias = "str | Collection[str] | int | Callable[[dict[str, Any], int], bool]"


def _sqs_selector(select: SqsEntrySelector) -> Callable[[dict[str, Any], int], bool]:
    if isinstance(select, bool):
        raise TypeError("select must be Ids, a count or a predicate")
    if isinstance(select, int):
        count = select
        return lambda entry, index: index < count
    if isinstance(select, str):
        one = select
        return lambda entry, index: entry.get("Id") == one
    if callable(select):
        return select
    ids = frozenset(select)
    return lambda entry, index: entry.get("Id") in ids


def fail_sqs_batch_entries(
    select: SqsEntrySelector,
    code: str = "InternalError",
    sender_fault: bool = False,
    message: str | None = None,
) -> Action:
    """Partial failure of SendMessageBatch / DeleteMessageBatch /
    ChangeMessageVisibilityBatch, as real SQS reports it.

    The selected entries are removed from the request before it is forwarded
    (so they are NOT sent / deleted / changed) and appended to the response's
    ``Failed`` list as ``{"Id", "SenderFault", "Code", "Message"}``. If every
    entry is selected nothing is forwarded and the answer is
    ``{"Successful": [], "Failed": [...]}``.

    ``select``: an entry Id, a collection of Ids, an int N (the first N
    entries) or a predicate ``(entry, index) -> bool`` (``entry`` is the JSON
    entry, e.g. ``{"Id": "a", "MessageBody": "..."}``). Other operations pass
    through untouched.
    """
    pick = _sqs_selector(select)
    text = message if message is not None else f"Injected failure ({code})"

    def request_fn(body: Any, exchange: JsonExchange) -> Any:
        if exchange.request.operation not in _SQS_BATCH_OPERATIONS or not isinstance(body, dict):
            return None
        keep: list[Any] = []
        failed: list[Any] = []
        for index, entry in enumerate(body.get("Entries") or []):
            (failed if pick(entry, index) else keep).append(entry)
        exchange.state["failed"] = failed
        body["Entries"] = keep
        if failed and not keep:
            exchange.reply = {"Successful": [], "Failed": []}
        return body

    def response_fn(body: Any, exchange: JsonExchange) -> Any:
        failed = exchange.state.get("failed")
        if not failed or not isinstance(body, dict):
            return None
        if body.get("Successful") is None:
            body["Successful"] = []
        if body.get("Failed") is None:
            body["Failed"] = []
        for entry in failed:
            body["Failed"].append(
                {"Id": entry.get("Id"), "SenderFault": sender_fault, "Code": code, "Message": text}
            )
        return body

    return rewrite_json(request_fn, response_fn)


DynamoSelector: TypeAlias = "int | Callable[[str, dict[str, Any], int], bool]"


def _dynamo_selector(select: DynamoSelector) -> Callable[[str, dict[str, Any], int], bool]:
    if isinstance(select, bool):
        raise TypeError("select must be a count or a predicate")
    if isinstance(select, int):
        count = select
        return lambda table, item, index: index < count
    return select


def unprocessed_dynamodb_items(select: DynamoSelector) -> Action:
    """BatchWriteItem returns some writes in ``UnprocessedItems``.

    The selected write requests are removed from ``RequestItems`` before
    forwarding (so they are NOT written) and merged into the response's
    ``UnprocessedItems`` (same shape: ``{table: [{"PutRequest": ...}, ...]}``).
    If every request is selected nothing is forwarded.

    ``select``: an int N (the first N write requests, in request order across
    tables) or a predicate ``(table, write_request, index) -> bool``. Other
    operations pass through untouched.
    """
    pick = _dynamo_selector(select)

    def request_fn(body: Any, exchange: JsonExchange) -> Any:
        if exchange.request.operation != "BatchWriteItem" or not isinstance(body, dict):
            return None
        keep: dict[str, list[Any]] = {}
        removed: dict[str, list[Any]] = {}
        index = 0
        for table, writes in (body.get("RequestItems") or {}).items():
            for write in writes:
                (removed if pick(table, write, index) else keep).setdefault(table, []).append(write)
                index += 1
        exchange.state["removed"] = removed
        body["RequestItems"] = keep
        if removed and not keep:
            exchange.reply = {"UnprocessedItems": {}}
        return body

    def response_fn(body: Any, exchange: JsonExchange) -> Any:
        removed: dict[str, list[Any]] = exchange.state.get("removed") or {}
        if not removed or not isinstance(body, dict):
            return None
        unprocessed = body.get("UnprocessedItems") or {}
        for table, writes in removed.items():
            unprocessed.setdefault(table, []).extend(writes)
        body["UnprocessedItems"] = unprocessed
        return body

    return rewrite_json(request_fn, response_fn)


def unprocessed_dynamodb_keys(select: DynamoSelector) -> Action:
    """BatchGetItem returns some keys in ``UnprocessedKeys``.

    The selected keys are removed from ``RequestItems`` before forwarding (so
    they are not read) and merged into the response's ``UnprocessedKeys``
    (``{table: {"Keys": [...], <the table's other request parameters>}}``).

    ``select``: an int N (the first N keys across tables) or a predicate
    ``(table, key, index) -> bool``. Other operations pass through untouched.
    """
    pick = _dynamo_selector(select)

    def request_fn(body: Any, exchange: JsonExchange) -> Any:
        if exchange.request.operation != "BatchGetItem" or not isinstance(body, dict):
            return None
        keep: dict[str, Any] = {}
        removed: dict[str, Any] = {}
        index = 0
        for table, spec in (body.get("RequestItems") or {}).items():
            kept_keys: list[Any] = []
            removed_keys: list[Any] = []
            for key in spec.get("Keys") or []:
                (removed_keys if pick(table, key, index) else kept_keys).append(key)
                index += 1
            if kept_keys:
                keep[table] = {**spec, "Keys": kept_keys}
            if removed_keys:
                removed[table] = {**spec, "Keys": removed_keys}
        exchange.state["removed"] = removed
        body["RequestItems"] = keep
        if removed and not keep:
            exchange.reply = {"Responses": {}, "UnprocessedKeys": {}}
        return body

    def response_fn(body: Any, exchange: JsonExchange) -> Any:
        removed: dict[str, Any] = exchange.state.get("removed") or {}
        if not removed or not isinstance(body, dict):
            return None
        unprocessed = body.get("UnprocessedKeys") or {}
        for table, spec in removed.items():
            if table in unprocessed:
                unprocessed[table]["Keys"] = [*unprocessed[table].get("Keys", []), *spec["Keys"]]
            else:
                unprocessed[table] = spec
        body["UnprocessedKeys"] = unprocessed
        return body

    return rewrite_json(request_fn, response_fn)


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(self, proxy: FaultProxy, host: str) -> None:
        self.proxy = proxy
        self.lock = threading.Lock()
        self.conn_threads: set[threading.Thread] = set()
        self.connections: set[socket.socket] = set()
        self.aborted: set[socket.socket] = set()
        self.upstreams: set[http.client.HTTPConnection] = set()
        super().__init__((host, 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"faultproxy-{self.server_port}-conn-{client_address[1]}",
            daemon=True,
        )
        with self.lock:
            self.conn_threads.add(thread)
            self.connections.add(request)
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self.lock:
                self.connections.discard(request)
                self.conn_threads.discard(threading.current_thread())

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            aborted = request in self.aborted
            self.aborted.discard(request)
        if aborted:
            # No shutdown(SHUT_WR) first: that would send a FIN before the RST.
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("faultproxy connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self._upstream: http.client.HTTPConnection | None = None
        self._upstream_lock = threading.Lock()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self._upstream_lock:
            if self._upstream is not None:
                self._upstream.close()
                self._upstream = None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("faultproxy: " + format, *args)

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except OSError:
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        try:
            if not self.parse_request():  # answers Expect: 100-continue itself
                return
            self._serve()
        except OSError:
            self.close_connection = True

    # -- request ----------------------------------------------------------

    def _read_body(self) -> bytes:
        transfer_encoding = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in transfer_encoding:
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("client closed during chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers are dropped
                    return b"".join(chunks)
                chunks.append(self._read_exactly(size))
                self.rfile.readline(65537)  # CRLF after the chunk
        length = self.headers.get("Content-Length")
        if length:
            return self._read_exactly(int(length))
        return b""

    def _read_exactly(self, size: int) -> bytes:
        data = self.rfile.read(size)
        if len(data) != size:
            raise ConnectionError("client closed during body")
        return data

    def _serve(self) -> None:
        proxy = self.server.proxy
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self.send_error(HTTPStatus.BAD_REQUEST, "bad request body framing")
            return
        path = self.path
        if "://" in path.split("?", 1)[0]:  # absolute-form target
            parts = urlsplit(path)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = ProxyRequest(self.command, path, Headers(self.headers.items()), body)
        forward = Forward(self)
        result: ProxyResponse | Disconnect
        try:
            rule = proxy._select(request)
            result = forward(request) if rule is None else rule.action(request, forward)
        except UpstreamError as exc:
            result = error_response(request, 502, "BadGateway", f"faultproxy: {exc}")
        except Exception as exc:
            log.exception("faultproxy: action failed for %s", request.label)
            proxy._record_error(exc)
            result = error_response(
                request, 500, "FaultProxyActionError", f"{type(exc).__name__}: {exc}"
            )
        if isinstance(result, Disconnect):
            proxy._log(LogEntry(request.label, 0))
            self._disconnect(result)
            return
        proxy._log(LogEntry(request.label, result.status))
        self._send(request, result)

    def _disconnect(self, how: Disconnect) -> None:
        self.close_connection = True
        if how is RESET:
            with contextlib.suppress(OSError):
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            with self.server.lock:
                self.server.aborted.add(self.connection)

    def _send(self, request: ProxyRequest, response: ProxyResponse) -> None:
        status = response.status
        no_body = request.method.upper() == "HEAD" or status in (204, 304) or status < 200
        lines = [f"HTTP/1.1 {status} {response.reason or _reason(status)}"]
        items = response.headers.items()
        last_index = {name.lower(): i for i, (name, _) in enumerate(items)}
        for i, (name, value) in enumerate(items):
            lname = name.lower()
            if lname in _DROP_RESPONSE_HEADERS:
                continue
            if lname in _SINGLETON_RESPONSE_HEADERS and last_index[lname] != i:
                continue
            lines.append(f"{name}: {value}")
        if not no_body:
            lines.append(f"Content-Length: {len(response.body)}")
        else:
            length = response.headers.get("content-length")
            if length is not None and status >= 200:
                lines.append(f"Content-Length: {length}")
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        try:
            self.wfile.write(head if no_body else head + response.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    # -- upstream ---------------------------------------------------------

    def forward(self, request: ProxyRequest) -> ProxyResponse:
        proxy = self.server.proxy
        if proxy._stopping.is_set():
            raise UpstreamError("proxy is stopping")
        headers: list[tuple[str, str]] = [
            (k, v) for k, v in request.headers if k.lower() not in _DROP_REQUEST_HEADERS
        ]
        host, port, netloc = proxy.routes.get(
            request.service, (proxy.upstream_host, proxy.upstream_port, proxy.upstream_netloc)
        )
        if proxy.rewrite_host or not any(k.lower() == "host" for k, _ in headers):
            headers = [(k, v) for k, v in headers if k.lower() != "host"]
            headers.insert(0, ("Host", netloc))
        if (
            request.body
            or request.method.upper() in ("POST", "PUT", "PATCH")
            or "content-length" in request.headers
        ):
            headers.append(("Content-Length", str(len(request.body))))
        with self._upstream_lock:
            for attempt in range(2):
                conn = self._upstream
                if conn is not None and (conn.host, conn.port) != (host, port):
                    conn.close()  # this request goes to the other emulator
                    conn = self._upstream = None
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=proxy.upstream_timeout)
                    self._upstream = conn
                reused = conn.sock is not None
                with self.server.lock:
                    self.server.upstreams.add(conn)
                try:
                    conn.putrequest(
                        request.method, request.path, skip_host=True, skip_accept_encoding=True
                    )
                    for name, value in headers:
                        conn.putheader(name, value)
                    conn.endheaders(request.body or None)
                    upstream_response = conn.getresponse()
                    body = upstream_response.read()
                    response = ProxyResponse(
                        upstream_response.status,
                        Headers(upstream_response.getheaders()),
                        body,
                        upstream_response.reason,
                    )
                    if upstream_response.will_close:
                        conn.close()
                    return response
                except (ConnectionError, http.client.BadStatusLine) as exc:
                    conn.close()
                    self._upstream = None
                    # A kept-alive connection the upstream had closed: retry once.
                    if attempt == 0 and reused and not proxy._stopping.is_set():
                        continue
                    raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    self._upstream = None
                    raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc
                finally:
                    with self.server.lock:
                        self.server.upstreams.discard(conn)
        raise AssertionError("unreachable")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


# --------------------------------------------------------------------------
# FaultProxy
# --------------------------------------------------------------------------


def _address(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"upstream must be an http://host:port URL, got {url!r}")
    return parts.hostname, parts.port or 80, parts.netloc


class FaultProxy:
    """A fault-injecting HTTP/1.1 proxy on ``127.0.0.1`` (free port).

    ``upstream`` is the base URL of the real server (moto), e.g.
    ``"http://127.0.0.1:5000"``. The client's Host header is forwarded as sent
    unless ``rewrite_host=True``. Requests that match no rule are forwarded
    unchanged. ``routes`` sends the requests of some services elsewhere
    (``{"sqs": localstack_url, "s3": localstack_url}``: two emulators behind
    one endpoint).
    """

    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        upstream_timeout: float = 120.0,
        rewrite_host: bool = False,
        routes: dict[str, str] | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.upstream_host, self.upstream_port, self.upstream_netloc = _address(upstream)
        self.routes = {service: _address(url) for service, url in (routes or {}).items()}
        self.upstream_timeout = upstream_timeout
        self.rewrite_host = rewrite_host
        self._host = host
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._log_entries: list[LogEntry] = []
        self._errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("FaultProxy already started")
        self._stopping.clear()
        server = _Server(self, self._host)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"faultproxy-{server.server_port}-accept",
            daemon=True,
        )
        self._server = server
        self._thread = thread
        thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection and join all proxy threads."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        thread.join(timeout)
        server.server_close()
        with server.lock:
            connections = list(server.connections)
            upstreams = list(server.upstreams)
            threads = list(server.conn_threads)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for conn in upstreams:
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(timeout)
        self._server = None
        self._thread = None
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.warning("faultproxy: threads still running after stop(): %s", stuck)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FaultProxy not started")
        return self._server.server_port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` - use as the client's ``endpoint_url``."""
        return f"http://{self._host}:{self.port}"

    # -- rules ------------------------------------------------------------

    def add_rule(self, match: Matcher | str, action: Action, times: int | None = None) -> Rule:
        """Add a rule (evaluated in insertion order, first match wins).

        ``match`` is a matcher or a string (shorthand for ``match_target(s)``).
        With ``times=N`` the rule applies to the first N matching requests
        only, then stops matching.
        """
        if isinstance(match, str):
            match = match_target(match)
        if times is not None and times < 0:
            raise ValueError("times must be >= 0")
        rule = Rule(match=match, action=action, times=times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove_rule(self, rule: Rule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    @property
    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    def clear(self, *, log: bool = False) -> None:
        """Remove all rules (and, with ``log=True``, the request log and errors)."""
        with self._lock:
            self._rules.clear()
        if log:
            self.clear_log()

    def _select(self, request: ProxyRequest) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if not rule.exhausted and rule.match(request):
                    rule.hits += 1
                    return rule
        return None

    # -- log --------------------------------------------------------------

    def _log(self, entry: LogEntry) -> None:
        # Logged before the response is written, so a client that got its
        # response always finds the request in the log.
        with self._lock:
            self._log_entries.append(entry)

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    @property
    def requests(self) -> list[LogEntry]:
        """Snapshot of ``(label, status)`` per request, in completion order."""
        with self._lock:
            return list(self._log_entries)

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised by actions/matchers (the client got a 500 for each)."""
        with self._lock:
            return list(self._errors)

    def clear_log(self) -> None:
        with self._lock:
            self._log_entries.clear()
            self._errors.clear()

    def count(self, operation: str, status: int | None = None) -> int:
        """How many requests for ``operation`` were seen (optionally with ``status``).

        ``operation`` is a full target (``"AmazonSQS.SendMessage"``), an
        operation name (``"SendMessage"``; does not count ``SendMessageBatch``)
        or, for S3, a label prefix (``"S3 PUT"``, ``"S3 GET /bucket/key"``).
        """
        return sum(
            1
            for entry in self.requests
            if _label_matches(entry.label, operation) and (status is None or entry.status == status)
        )


def _label_matches(label: str, operation: str) -> bool:
    if label == operation:
        return True
    if " " in operation or " " in label:
        return label.startswith(operation)
    return label.endswith("." + operation)
