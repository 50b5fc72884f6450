"""Reading and steering clusters: progress, task lists, meta, cancel, redrive, callbacks."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._aws_errors import aws_errors
from .._batching import chunked
from .._clusterkeys import (
    BUCKET_SIZE,
    CLUSTER_INDEX,
    CLUSTER_INDEX_KEY,
    CLUSTER_INDEX_VALUE,
    SHARD_SIZE,
    TASK_SORT_PREFIX,
    TaskRef,
    bucket_key,
    cluster_id_of,
    cluster_key,
    shard_key,
)
from .._context import iso_now
from .._dynamo import batch_get, key_attrs, update_item
from .._errors import (
    ClusterError,
    ConditionFailedError,
    RecordNotFoundError,
    ValidationError,
)
from .._itemcodec import decode_item, to_attr
from .._json import encode_meta
from .._schemas import (
    CANCELLED,
    STATUS_CODES,
    MessageClusterRecord,
    MessageRecord,
    RecordKey,
    ShardRecord,
    Status,
    StatusCode,
    Statuses,
    check_int,
    parse_cluster_statuses,
    parse_statuses,
)
from ..read._records import ParsedRecord
from ._buckets import BUCKETED, bucket_counts, bucket_status, shard_bucket_items
from ._callbacks import ClusterCallback, check_callback, run_callback

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .._context import Context

__all__ = [
    "cancel_message_cluster",
    "cluster_id_from",
    "get_message_cluster",
    "iter_cluster_tasks",
    "list_clusters",
    "on_cluster_complete",
    "redrive_failed",
    "update_message_cluster",
]

log = logging.getLogger("msgcluster")

_UNSET: Final = object()

# An ISO 8601 UTC time as startedAt is stored, or a prefix of one ("2026-11").
_ISO_PREFIX: Final = re.compile(r"\d{4}(-\d{2}(-\d{2}(T\d{2}(:\d{2}(:\d{2}(\.\d{1,9})?)?)?)?)?)?Z?")


def cluster_id_from(key: object) -> str:
    """A cluster id from a cluster key, a task / event record, a task key or an id."""
    if isinstance(key, ParsedRecord):
        ckey = key.cluster_key
        if ckey is None:
            raise ValidationError(f"message {key.id} is not a cluster task or cluster event")
        return cluster_id_of(ckey)
    if isinstance(key, MessageClusterRecord):
        return key.id or cluster_id_of(key.key)
    return cluster_id_of(key)


async def _get_cluster_item(ctx: Context, cid: str, consistent_read: bool) -> dict[str, Any]:
    key = cluster_key(cid)
    with aws_errors(resource=ctx.table):
        response = await ctx.ddb.get_item(
            TableName=ctx.table, Key=key_attrs(key.pk, key.rk), ConsistentRead=consistent_read
        )
    item: dict[str, Any] | None = response.get("Item")
    if item is None:
        raise RecordNotFoundError(f"no cluster {cid} (never created, or expired)")
    return item


def _shard_count(record: MessageClusterRecord) -> int:
    """Shards that may hold tasks: all of them once sealed, else those written plus
    the block being written now."""
    if record.sealed:
        return record.shards
    known = max(record.shards, -(-record.total // SHARD_SIZE))
    return known + 1


async def get_message_cluster(
    ctx: Context, key: object, *, consistent_read: bool = False
) -> MessageClusterRecord:
    """The cluster record with live progress (summed over its shard counters)."""
    cid = cluster_id_from(key)
    record = decode_item(await _get_cluster_item(ctx, cid, consistent_read), MessageClusterRecord)
    if record.done and record.shards_open <= 0 and record.sealed:
        return record  # every shard closed: the record's counts are final
    shards = _shard_count(record)
    found = await batch_get(
        ctx,
        [(shard_key(cid, k).pk, shard_key(cid, k).rk) for k in range(shards)],
        consistent_read=consistent_read,
    )
    completed = failed = 0
    shard_records: dict[int, ShardRecord] = {}
    for item in found.values():
        shard = decode_item(item, ShardRecord)
        shard_records[_shard_of(shard)] = shard
        completed += shard.done
        failed += shard.failed_count
    if record.layout >= BUCKETED:  # plus what open buckets counted so far
        for k in range(shards):
            shard_record = shard_records.get(k)
            if shard_record is not None and shard_record.closed_at is not None:
                continue
            items = await shard_bucket_items(
                ctx, cid, k, shard_record, consistent_read=consistent_read
            )
            for bucket in items.values():
                done, bad = bucket_counts(bucket)
                completed += done
                failed += bad
    return msgspec.structs.replace(record, completed=completed, failed=failed)


def _shard_of(record: ShardRecord) -> int:
    return int(record.pk.rsplit("$", 1)[1])


async def list_clusters(
    ctx: Context,
    *,
    status: Statuses | None = None,
    newest_first: bool = True,
    started_after: str | None = None,
    page_size: int = 100,
) -> AsyncIterator[MessageClusterRecord]:
    """Cluster records by start time, from the sparse cluster index: one Query
    page of keys, then one BatchGetItem of records, per ``page_size``.

    The records are as stored (counts of closed shards; ``get_message_cluster``
    sums a running cluster's shards). ``status`` (one, or an iterable of them)
    filters them; ``started_after`` (an ISO time) bounds the range.
    """
    wanted = parse_cluster_statuses(status) if status is not None else None
    _check_bool("newest_first", newest_first)
    check_int("page_size", page_size, 1, why="clusters per DynamoDB Query page")
    if started_after is not None and (
        not isinstance(started_after, str) or not _ISO_PREFIX.fullmatch(started_after)
    ):
        raise ValidationError(
            "started_after must be an ISO 8601 time or its prefix (as startedAt is stored, e.g. "
            f"'2026-11-30T01:59:46.952Z'), got {type(started_after).__name__} "
            f"{started_after!r:.40}"
        )
    request: dict[str, Any] = {
        "TableName": ctx.table,
        "IndexName": CLUSTER_INDEX,
        "KeyConditionExpression": "#k = :k",
        "ExpressionAttributeNames": {"#k": CLUSTER_INDEX_KEY},
        "ExpressionAttributeValues": {":k": {"S": CLUSTER_INDEX_VALUE}},
        "ScanIndexForward": not newest_first,
        "Limit": page_size,
    }
    if started_after is not None:
        request["KeyConditionExpression"] += " AND startedAt > :after"
        request["ExpressionAttributeValues"][":after"] = {"S": started_after}
    while True:
        with aws_errors(resource=ctx.table):
            response = await ctx.ddb.query(**request)
        keys = [(item["pk"]["S"], item["rk"]["S"]) for item in response.get("Items", [])]
        found = await batch_get(ctx, keys)
        for key in keys:  # in index order; one deleted meanwhile is skipped
            item = found.get(key)
            if item is None:
                continue
            record = decode_item(item, MessageClusterRecord)
            if wanted is None or record.status in wanted or _status_of(record) in wanted:
                yield record
        last = response.get("LastEvaluatedKey")
        if not last:
            return
        request["ExclusiveStartKey"] = last


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValidationError(f"{name} must be True or False, got {type(value).__name__}")


def _status_of(record: MessageClusterRecord) -> Status | str:
    """CANCELLED for a cancelled cluster (stored as ERROR, which also matches it)."""
    return CANCELLED if record.cancelled else record.status


async def iter_cluster_tasks(
    ctx: Context,
    key: object,
    statuses: Statuses | None = None,
    *,
    consistent_read: bool = False,
    page_size: int = 500,
) -> AsyncIterator[MessageRecord]:
    """Task records of a cluster in task order, optionally only some statuses
    (one, or an iterable of them).

    One paginated Query per shard partition (no Scan, no arrays).
    """
    wanted = list(parse_statuses(statuses)) if statuses is not None else None
    _check_bool("consistent_read", consistent_read)
    check_int("page_size", page_size, 1, why="tasks per DynamoDB Query page")
    cid = cluster_id_from(key)
    record = decode_item(await _get_cluster_item(ctx, cid, consistent_read), MessageClusterRecord)
    for shard in range(_shard_count(record)):
        if record.layout >= BUCKETED:
            async for task in _bucketed_tasks(ctx, cid, shard, wanted, consistent_read, page_size):
                yield task
            continue
        pk = shard_key(cid, shard).pk
        request: dict[str, Any] = {
            "TableName": ctx.table,
            "KeyConditionExpression": "pk = :pk AND begins_with(rk, :prefix)",
            "ExpressionAttributeValues": {":pk": {"S": pk}, ":prefix": {"S": TASK_SORT_PREFIX}},
            "ConsistentRead": consistent_read,
            "Limit": page_size,
        }
        if wanted:
            names = [f":s{i}" for i in range(len(wanted))]
            request["FilterExpression"] = f"#s IN ({', '.join(names)})"
            request["ExpressionAttributeNames"] = {"#s": "status"}
            for name, status in zip(names, wanted, strict=True):
                request["ExpressionAttributeValues"][name] = {"S": status.value}
        while True:
            with aws_errors(resource=ctx.table):
                response = await ctx.ddb.query(**request)
            for item in response.get("Items", []):
                yield decode_item(item, MessageRecord)  # type: ignore[arg-type]
            last = response.get("LastEvaluatedKey")
            if not last:
                break
            request["ExclusiveStartKey"] = last


async def _bucketed_tasks(
    ctx: Context,
    cid: str,
    shard: int,
    wanted: list[Status] | None,
    consistent_read: bool,
    page_size: int,
) -> AsyncIterator[MessageRecord]:
    """Layout 2: a shard's task records with their bucket's status, filtered here
    (a completed task's record still says PRE FLIGHT)."""
    key = shard_key(cid, shard)
    buckets = [bucket_key(cid, shard, j) for j in range(-(-SHARD_SIZE // BUCKET_SIZE))]
    found = await batch_get(ctx, [(b.pk, b.rk) for b in buckets], consistent_read=consistent_read)
    request: dict[str, Any] = {
        "TableName": ctx.table,
        "KeyConditionExpression": "pk = :pk AND begins_with(rk, :prefix)",
        "ExpressionAttributeValues": {":pk": {"S": key.pk}, ":prefix": {"S": TASK_SORT_PREFIX}},
        "ConsistentRead": consistent_read,
        "Limit": page_size,
    }
    while True:
        with aws_errors(resource=ctx.table):
            response = await ctx.ddb.query(**request)
        for item in response.get("Items", []):
            task = decode_item(item, MessageRecord)  # type: ignore[arg-type]
            ref = TaskRef(RecordKey(task.pk, task.rk))
            bkey = bucket_key(cid, shard, ref.bucket)
            status = bucket_status(found.get((bkey.pk, bkey.rk)), ref.index)
            if status is not None and status is not task.status:
                task = msgspec.structs.replace(
                    task, status=status, status_code=StatusCode(STATUS_CODES[status])
                )
            if wanted is None or task.status in wanted:
                yield task
        last = response.get("LastEvaluatedKey")
        if not last:
            return
        request["ExclusiveStartKey"] = last


async def update_message_cluster(
    ctx: Context, key: object, *, meta: Any = _UNSET
) -> MessageClusterRecord:
    """Replace the cluster's ``meta`` (never creates a cluster)."""
    cid = cluster_id_from(key)
    ckey = cluster_key(cid)
    names = {"#u": "updatedAt"}
    values: dict[str, Any] = {":now": {"S": iso_now()}}
    sets = ["#u = :now"]
    if meta is not _UNSET:
        meta_bytes = encode_meta(meta, ctx.settings.max_meta_bytes)
        names["#m"] = "meta"
        values[":m"] = to_attr(msgspec.json.decode(meta_bytes))
        sets.append("#m = :m")
    try:
        expression = "SET " + ", ".join(sets)
        attributes = await update_item(
            ctx, ckey, expression, values, condition="attribute_exists(pk)", names=names
        )
    except ConditionFailedError as exc:
        raise RecordNotFoundError(f"no cluster {cid}") from exc
    return decode_item(attributes, MessageClusterRecord)


async def cancel_message_cluster(ctx: Context, key: object) -> MessageClusterRecord:
    """Stop a cluster: status code 500 (STOPPED). Consumers skip and acknowledge its
    remaining tasks, and no completion callback runs. Idempotent."""
    cid = cluster_id_from(key)
    ckey = cluster_key(cid)
    now = iso_now()
    try:
        attributes = await update_item(
            ctx,
            ckey,
            "SET #s = :s, statusCode = :c, cancelledAt = :now, updatedAt = :now",
            {
                ":s": {"S": Status.ERROR.value},
                ":c": {"N": str(int(StatusCode.STOPPED))},
                ":now": {"S": now},
                ":c0": {"N": str(int(StatusCode.PRE_FLIGHT))},
                ":c1": {"N": str(int(StatusCode.IN_PROGRESS))},
            },
            condition="attribute_exists(pk) AND statusCode IN (:c0, :c1)",
            names={"#s": "status"},
        )
    except ConditionFailedError:
        record = decode_item(await _get_cluster_item(ctx, cid, True), MessageClusterRecord)
        if record.cancelled:
            return record
        raise ClusterError(
            f"cluster {cid} is already {record.status.value}; only a running cluster can be "
            "cancelled",
            cluster_id=cid,
        ) from None
    return decode_item(attributes, MessageClusterRecord)


async def on_cluster_complete(
    ctx: Context,
    key: object,
    callback: ClusterCallback,
    *,
    lease_seconds: int = 300,
    max_attempts: int = 5,
) -> bool:
    """Run ``callback(record, get_globals)`` if the cluster is final and its callback
    has not run yet; True if it ran here.

    Meant to be called after ``mark_complete`` by every consumer (as in the
    documented system): only the process that finishes the cluster, or one that
    consumes its completion event, does any AWS request; the others see from
    what this process already knows that the cluster is still running.
    """
    check_callback(callback)
    check_int("lease_seconds", lease_seconds, 1, 43_200, why="seconds")
    check_int("max_attempts", max_attempts, 1, 1000)
    cid = cluster_id_from(key)
    is_event = isinstance(key, ParsedRecord) and key.type.value == "cluster"
    if not is_event and ctx.cluster_hints.get(cid) is False:
        return False
    ran = await run_callback(
        ctx, cid, callback, lease_seconds=lease_seconds, max_attempts=max_attempts
    )
    if not ran and not is_event and ctx.cluster_hints.get(cid) is None:
        ctx.cluster_hints.put(cid, False)
    return ran


async def redrive_failed(ctx: Context, key: object) -> int:
    """Send the failed (ERROR) tasks of a cluster again; returns how many.

    Each task goes back to PRE FLIGHT and uncounted in one transaction with
    its shard (and, if the shard was closed, the cluster, which is back IN
    PROGRESS), then its stored message is sent again. The completion callback
    runs again when the cluster completes again.
    """
    from ._redrive import redrive

    cid = cluster_id_from(key)
    record = decode_item(await _get_cluster_item(ctx, cid, True), MessageClusterRecord)
    if not record.sealed:
        raise ClusterError(f"cluster {cid} is still being created", cluster_id=cid)
    if record.cancelled:
        raise ClusterError(f"cluster {cid} was cancelled", cluster_id=cid)
    count = 0
    for shard in range(record.shards):
        failed = await _failed_in_shard(ctx, cid, shard)
        for chunk in chunked(failed, 90):
            count += await redrive(ctx, cid, shard, list(chunk))
    return count


async def _failed_in_shard(ctx: Context, cid: str, shard: int) -> list[dict[str, Any]]:
    pk = shard_key(cid, shard).pk
    request: dict[str, Any] = {
        "TableName": ctx.table,
        "KeyConditionExpression": "pk = :pk AND begins_with(rk, :prefix)",
        "FilterExpression": "#s = :error",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {
            ":pk": {"S": pk},
            ":prefix": {"S": TASK_SORT_PREFIX},
            ":error": {"S": Status.ERROR.value},
        },
        "ConsistentRead": True,
    }
    items: list[dict[str, Any]] = []
    while True:
        with aws_errors(resource=ctx.table):
            response = await ctx.ddb.query(**request)
        items.extend(response.get("Items", []))
        last = response.get("LastEvaluatedKey")
        if not last:
            return items
        request["ExclusiveStartKey"] = last
