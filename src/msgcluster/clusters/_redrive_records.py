"""Un-counting failed tasks before a redrive: layout 1's (counts on the task
records and their shard) and the steps both layouts share (reset a task to
PRE FLIGHT, reopen the cluster, one try of the transaction).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._aws_errors import aws_errors
from .._batching import Backoff
from .._clusterkeys import cluster_key, shard_key
from .._context import iso_now
from .._dynamo import key_attrs, n_attr
from .._errors import ClusterError, ThrottledError, TransactionCanceledError
from .._itemcodec import decode_item
from .._schemas import RecordKey, ShardRecord, Status, StatusCode

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["apply_reset", "reopen_cluster", "reset_task", "uncount"]


async def uncount(ctx: Context, cid: str, shard: int, keys: list[RecordKey]) -> None:
    skey, ckey = shard_key(cid, shard), cluster_key(cid)
    backoff = Backoff(attempts=8)
    for attempt in range(backoff.attempts):
        with aws_errors(resource=ctx.table):
            response = await ctx.ddb.get_item(
                TableName=ctx.table, Key=key_attrs(skey.pk, skey.rk), ConsistentRead=True
            )
        record = decode_item(response["Item"], ShardRecord)  # type: ignore[arg-type]
        now = iso_now()
        items = [{"Update": reset_task(ctx, key, now)} for key in keys]
        items.append({"Update": _reopen_shard(ctx, skey, record, len(keys))})
        if record.closed_at is not None:
            items.append({"Update": reopen_cluster(ctx, ckey, record, now)})
        if await apply_reset(ctx, items, cid, shard, backoff, attempt):
            return


async def apply_reset(
    ctx: Context, items: list[dict[str, Any]], cid: str, shard: int, backoff: Backoff, attempt: int
) -> bool:
    """One try of a redrive transaction: True if it applied; False after backing
    off (cancelled or throttled: read again and retry); raises on the last try."""
    try:
        with aws_errors(resource=ctx.table):
            await ctx.ddb.transact_write_items(TransactItems=items)  # type: ignore[arg-type]
    except (TransactionCanceledError, ThrottledError) as exc:
        if attempt >= backoff.attempts - 1:
            raise ClusterError(
                f"could not reset the failed tasks of shard {shard} of cluster {cid}: {exc}",
                cluster_id=cid,
            ) from exc
        await backoff.sleep(attempt)
        return False
    return True


def reset_task(ctx: Context, key: RecordKey, now: str) -> dict[str, Any]:
    return {
        "TableName": ctx.table,
        "Key": key_attrs(key.pk, key.rk),
        "UpdateExpression": "SET #s = :pf, statusCode = :c0, updatedAt = :now REMOVE completedAt",
        "ConditionExpression": "#s = :error",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {
            ":pf": {"S": Status.PRE_FLIGHT.value},
            ":c0": n_attr(StatusCode.PRE_FLIGHT),
            ":now": {"S": now},
            ":error": {"S": Status.ERROR.value},
        },
    }


def _reopen_shard(ctx: Context, skey: RecordKey, record: ShardRecord, n: int) -> dict[str, Any]:
    closed = record.closed_at is not None
    values: dict[str, Any] = {":neg": n_attr(-n), ":n": n_attr(n)}
    condition = "failedCount >= :n"
    if closed:
        values[":closed"] = {"S": str(record.closed_at)}
        condition += " AND closedAt = :closed"
    else:
        condition += " AND attribute_not_exists(closedAt)"
    return {
        "TableName": ctx.table,
        "Key": key_attrs(skey.pk, skey.rk),
        "UpdateExpression": "ADD failedCount :neg, pending :n"
        + (" REMOVE closedAt" if closed else ""),
        "ConditionExpression": condition,
        "ExpressionAttributeValues": values,
    }


def reopen_cluster(ctx: Context, ckey: RecordKey, record: ShardRecord, now: str) -> dict[str, Any]:
    """Take a closed shard's counts back out; IN PROGRESS with a fresh callback state."""
    return {
        "TableName": ctx.table,
        "Key": key_attrs(ckey.pk, ckey.rk),
        "UpdateExpression": (
            "SET #s = :ip, statusCode = :c1, updatedAt = :now "
            "ADD shardsOpen :one, completed :d, failed :f "
            "REMOVE completedAt, callbackStatus, callbackAttempts, callbackError, "
            "callbackAt, eventSentAt, callbackLease, callbackOwner"
        ),
        "ConditionExpression": "sealed = :t AND statusCode <> :stopped",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {
            ":ip": {"S": Status.IN_PROGRESS.value},
            ":c1": n_attr(StatusCode.IN_PROGRESS),
            ":now": {"S": now},
            ":one": n_attr(1),
            ":d": n_attr(-record.done),
            ":f": n_attr(-record.failed_count),
            ":t": {"BOOL": True},
            ":stopped": n_attr(StatusCode.STOPPED),
        },
    }
