"""The wire side of the emulation (:mod:`msgcluster.local._emulation`): AWS's
JSON error shapes, WSGI bodies, and the key names moto knows for a table."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final

StartResponse = Callable[..., Any]

THROTTLE: Final = (
    "ProvisionedThroughputExceededException",
    "The level of configured provisioned throughput for the table was exceeded",
)


def table_and_part(item: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    part: dict[str, Any] = next(iter(item.values()), {})
    return str(part.get("TableName", "")), part


def scalar(value: Any) -> str:
    if isinstance(value, dict) and value:
        return str(next(iter(value.values())))
    return ""


def table_key_names(table: str, environ: dict[str, Any]) -> tuple[str, str | None] | None:
    """The table's key attribute names, from moto's backend in this process."""
    try:
        from moto.dynamodb.models import dynamodb_backends

        region = region_of(environ)
        for account in list(dynamodb_backends):
            backend = dynamodb_backends[account][region]
            if table in backend.tables:
                found = backend.tables[table]
                ranges = found.range_key_names
                return found.hash_key_names[0], ranges[0] if ranges else None
    except Exception:  # moto's internals moved: fall back to pk/rk
        return None
    return None


def region_of(environ: dict[str, Any]) -> str:
    auth = environ.get("HTTP_AUTHORIZATION", "")
    scope = auth.split("Credential=", 1)[-1].split(",", 1)[0].split("/")
    return scope[2] if len(scope) > 2 else "us-east-1"


def read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    return bytes(environ["wsgi.input"].read(length)) if length > 0 else b""


def respond(
    start_response: StartResponse, status: int, document: Any, headers: Iterable[Any] = ()
) -> list[bytes]:
    body = json.dumps(document).encode()
    kept = [(k, v) for k, v in headers if k.lower() not in ("content-length", "content-type")]
    start_response(
        f"{status} {'OK' if status == 200 else 'Bad Request'}",
        [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("Content-Length", str(len(body))),
            ("x-amzn-RequestId", uuid.uuid4().hex),
            *kept,
        ],
    )
    return [body]


def ddb_error(start_response: StartResponse, code: str, message: str) -> list[bytes]:
    return respond(
        start_response,
        400,
        {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message},
    )


def cancelled(start_response: StartResponse, reasons: list[dict[str, str]]) -> list[bytes]:
    codes = ", ".join(r["Code"] for r in reasons)
    return respond(
        start_response,
        400,
        {
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
            "Message": f"Transaction cancelled, please refer cancellation reasons for specific "
            f"reasons [{codes}]",
            "CancellationReasons": reasons,
        },
    )
