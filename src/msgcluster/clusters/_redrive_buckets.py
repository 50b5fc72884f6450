"""Redrive, layout 2: un-counting failed tasks from their buckets.

Per bucket, one transaction: the tasks go back to PRE FLIGHT (condition:
ERROR), their indexes leave the bucket's ``bad`` set (condition: the
bucket's sets are as read), and if the bucket was closed its counts leave
the shard (``pending +cap``, ``done -|ok|``, ``failedCount -|bad|``,
``DELETE buckets {j}``), and if the shard was closed too, the shard's counts
leave the cluster, which is IN PROGRESS again. When the redriven tasks are
counted, the bucket is full again and is closed again with its new counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._batching import Backoff
from .._clusterkeys import BUCKET_SIZE, TaskRef, cluster_key, shard_key
from .._context import iso_now
from .._dynamo import get_consistent, key_attrs, n_attr
from .._itemcodec import decode_item
from .._schemas import RecordKey, ShardRecord
from ._redrive_records import apply_reset, reopen_cluster, reset_task

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["uncount_in_buckets"]


async def uncount_in_buckets(
    ctx: Context, cid: str, shard: int, keys: list[RecordKey]
) -> set[RecordKey]:
    """Reset failed tasks of one shard; the keys reset (a task that a duplicate
    delivery completed meanwhile is counted COMPLETE and is left alone)."""
    groups: dict[int, list[TaskRef]] = {}
    for key in keys:
        ref = TaskRef(key)
        groups.setdefault(ref.bucket, []).append(ref)
    reset: set[RecordKey] = set()
    for refs in groups.values():
        reset.update(await _uncount_bucket(ctx, cid, shard, refs))
    return reset


async def _uncount_bucket(
    ctx: Context, cid: str, shard: int, refs: list[TaskRef]
) -> set[RecordKey]:
    skey, ckey, bkey = shard_key(cid, shard), cluster_key(cid), refs[0].bucket_key
    backoff = Backoff(attempts=8)
    for attempt in range(backoff.attempts):
        shard_item = await get_consistent(ctx, skey.pk, skey.rk)
        bucket = await get_consistent(ctx, bkey.pk, bkey.rk) or {}
        if shard_item is None:
            return set()
        record = decode_item(shard_item, ShardRecord)
        ok = {int(v) for v in bucket.get("ok", {}).get("NS", ())}
        bad = {int(v) for v in bucket.get("bad", {}).get("NS", ())}
        todo = [ref for ref in refs if ref.index in bad]
        if not todo:
            return set()
        now = iso_now()
        items: list[dict[str, Any]] = [{"Update": reset_task(ctx, ref.key, now)} for ref in todo]
        items.append({"Update": _remove_from_bad(ctx, bkey, todo, len(ok), len(bad))})
        j = refs[0].bucket
        if j in record.buckets:
            cap = int(bucket.get("cap", {}).get("N", BUCKET_SIZE))
            items.append({"Update": _reopen_bucket(ctx, skey, record, j, cap, len(ok), len(bad))})
            if record.closed_at is not None:
                items.append({"Update": reopen_cluster(ctx, ckey, record, now)})
        else:
            items.append({"Update": _still_open(ctx, skey, j, now)})
        if await apply_reset(ctx, items, cid, shard, backoff, attempt):
            return {ref.key for ref in todo}
    return set()  # not reached: the last attempt raises


def _remove_from_bad(
    ctx: Context, bkey: RecordKey, refs: list[TaskRef], n_ok: int, n_bad: int
) -> dict[str, Any]:
    return {
        "TableName": ctx.table,
        "Key": key_attrs(bkey.pk, bkey.rk),
        "UpdateExpression": "DELETE bad :ids",
        # The sets as read: a count or another redrive in between retries this.
        "ConditionExpression": "size(bad) = :nb AND "
        + ("size(ok) = :no" if n_ok else "attribute_not_exists(ok)"),
        "ExpressionAttributeValues": {
            ":ids": {"NS": [str(ref.index) for ref in refs]},
            ":nb": n_attr(n_bad),
        }
        | ({":no": n_attr(n_ok)} if n_ok else {}),
    }


def _reopen_bucket(
    ctx: Context, skey: RecordKey, record: ShardRecord, j: int, cap: int, n_ok: int, n_bad: int
) -> dict[str, Any]:
    """Take a closed bucket's counts back out of its shard (and reopen the shard)."""
    closed = record.closed_at is not None
    values: dict[str, Any] = {
        ":cap": n_attr(cap),
        ":d": n_attr(-n_ok),
        ":f": n_attr(-n_bad),
        ":j": {"NS": [str(j)]},
        ":jn": n_attr(j),
    }
    condition = "contains(buckets, :jn)"
    if closed:
        values[":closed"] = {"S": str(record.closed_at)}
        condition += " AND closedAt = :closed"
    return {
        "TableName": ctx.table,
        "Key": key_attrs(skey.pk, skey.rk),
        "UpdateExpression": "ADD pending :cap, done :d, failedCount :f DELETE buckets :j"
        + (" REMOVE closedAt" if closed else ""),
        "ConditionExpression": condition,
        "ExpressionAttributeValues": values,
    }


def _still_open(ctx: Context, skey: RecordKey, j: int, now: str) -> dict[str, Any]:
    """The bucket is still open on its shard. An Update, not a ConditionCheck, so
    the IAM policy needs no dynamodb:ConditionCheckItem for a rare redrive."""
    return {
        "TableName": ctx.table,
        "Key": key_attrs(skey.pk, skey.rk),
        "UpdateExpression": "SET updatedAt = :now",
        "ConditionExpression": "NOT contains(buckets, :jn)",
        "ExpressionAttributeValues": {":jn": n_attr(j), ":now": {"S": now}},
    }
