"""DynamoDB primitives: batched writes/reads with partial-failure retries.

The batch APIs answer 200 and hand back what they did not do
(``UnprocessedItems`` / ``UnprocessedKeys``); botocore does not retry those,
so this module does, with jittered backoff, and reports what is left.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from ._aws_errors import aws_errors
from ._batching import Backoff, chunked, gather_limited
from ._errors import AwsError, MsgclusterError, ThrottledError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._context import Context
    from ._schemas import RecordKey

__all__ = [
    "WriteFailure",
    "batch_get",
    "batch_write",
    "get_consistent",
    "key_attrs",
    "n_attr",
    "update_item",
]

BATCH_WRITE_MAX = 25
BATCH_GET_MAX = 100


def key_attrs(pk: str, rk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "rk": {"S": rk}}


def n_attr(value: int) -> dict[str, str]:
    return {"N": str(value)}


async def get_consistent(ctx: Context, pk: str, rk: str) -> dict[str, Any] | None:
    """One item by key, strongly consistent; None if it does not exist."""
    with aws_errors(resource=ctx.table):
        response = await ctx.ddb.get_item(
            TableName=ctx.table, Key=key_attrs(pk, rk), ConsistentRead=True
        )
    item: dict[str, Any] | None = response.get("Item")
    return item


async def update_item(
    ctx: Context,
    key: RecordKey,
    expression: str,
    values: dict[str, Any],
    *,
    condition: str | None = None,
    names: dict[str, str] | None = None,
    returns: str = "ALL_NEW",
    returns_on_failure: str | None = None,
) -> dict[str, Any]:
    """One UpdateItem on the msgcluster table; the item's attributes it returns ({} if none).

    A failed condition raises ConditionFailedError (with the item, when
    ``returns_on_failure`` asks for it), like every call under aws_errors.
    """
    request: dict[str, Any] = {
        "TableName": ctx.table,
        "Key": key_attrs(key.pk, key.rk),
        "UpdateExpression": expression,
        "ExpressionAttributeValues": values,
        "ReturnValues": returns,
    }
    if condition is not None:
        request["ConditionExpression"] = condition
    if names:
        request["ExpressionAttributeNames"] = names
    if returns_on_failure is not None:
        request["ReturnValuesOnConditionCheckFailure"] = returns_on_failure
    with aws_errors(resource=ctx.table):
        response = await ctx.ddb.update_item(**request)
    return dict(response.get("Attributes") or {})


class WriteFailure:
    """A write request that could not be applied, and why."""

    __slots__ = ("error", "request")

    def __init__(self, request: dict[str, Any], error: MsgclusterError) -> None:
        self.request = request
        self.error = error


async def batch_write(
    ctx: Context, requests: Sequence[dict[str, Any]], *, backoff: Backoff | None = None
) -> list[WriteFailure]:
    """Apply Put/Delete requests in chunks of 25, concurrently; return what failed."""
    if not requests:
        return []
    chunks = chunked(requests, BATCH_WRITE_MAX)
    calls = [partial(_write_chunk, ctx, list(chunk), backoff or Backoff()) for chunk in chunks]
    results = await gather_limited(ctx.limiter, calls)
    return [failure for result in results for failure in result]


async def _write_chunk(
    ctx: Context, pending: list[dict[str, Any]], backoff: Backoff
) -> list[WriteFailure]:
    for attempt in range(backoff.attempts):
        try:
            with aws_errors(resource=ctx.table):
                response = await ctx.ddb.batch_write_item(RequestItems={ctx.table: pending})  # type: ignore[dict-item]
        except AwsError as exc:
            return [WriteFailure(request, exc) for request in pending]
        pending = list(response.get("UnprocessedItems", {}).get(ctx.table, []))  # type: ignore[arg-type]
        if not pending:
            return []
        await backoff.sleep(attempt)
    error = ThrottledError(
        f"BatchWriteItem left {len(pending)} item(s) unprocessed after {backoff.attempts} attempts",
        code="UnprocessedItems",
        operation="BatchWriteItem",
    )
    return [WriteFailure(request, error) for request in pending]


async def batch_get(
    ctx: Context,
    keys: Sequence[tuple[str, str]],
    *,
    consistent_read: bool = False,
    projection: str | None = None,
    names: dict[str, str] | None = None,
    backoff: Backoff | None = None,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Fetch items by key (100 per request, concurrently); missing keys are absent."""
    unique = list(dict.fromkeys(keys))  # BatchGetItem rejects duplicate keys
    if not unique:
        return {}
    chunks = chunked(unique, BATCH_GET_MAX)
    calls = [
        partial(
            _get_chunk,
            ctx,
            [key_attrs(pk, rk) for pk, rk in chunk],
            consistent_read,
            projection,
            names,
            backoff or Backoff(),
        )
        for chunk in chunks
    ]
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for items in await gather_limited(ctx.limiter, calls):
        for item in items:
            found[(item["pk"]["S"], item["rk"]["S"])] = item
    return found


async def _get_chunk(
    ctx: Context,
    keys: list[dict[str, Any]],
    consistent_read: bool,
    projection: str | None,
    names: dict[str, str] | None,
    backoff: Backoff,
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    pending = keys
    for attempt in range(backoff.attempts):
        request: dict[str, Any] = {"Keys": pending, "ConsistentRead": consistent_read}
        if projection:
            request["ProjectionExpression"] = projection
        if names:
            request["ExpressionAttributeNames"] = names
        with aws_errors(resource=ctx.table):
            response = await ctx.ddb.batch_get_item(RequestItems={ctx.table: request})  # type: ignore[dict-item]
        items.extend(response.get("Responses", {}).get(ctx.table, []))
        unprocessed = response.get("UnprocessedKeys", {}).get(ctx.table)
        pending = list(unprocessed["Keys"]) if unprocessed else []
        if not pending:
            return items
        await backoff.sleep(attempt)
    raise ThrottledError(
        f"BatchGetItem left {len(pending)} key(s) unprocessed after {backoff.attempts} attempts",
        code="UnprocessedKeys",
        operation="BatchGetItem",
    )
