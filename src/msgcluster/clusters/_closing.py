"""Closing: a shard whose tasks are all counted, then the cluster, then the
completion event. Shared by both fan-in layouts (how tasks are counted is
``_fanin`` for layout 1, ``_buckets`` for layout 2).

A shard is closed with one transaction (mark it closed, add its counts to
the cluster, ``ADD shardsOpen -1`` with a condition that fails for the last
shard); the last closer flips the cluster to COMPLETE / ERROR with one
conditional write and sends the durable completion event. Every step is
conditional and idempotent; :func:`repair` re-runs them after a task is found
already counted, so a crash between any two steps is repaired by the next
delivery of any task of that shard.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._aws_errors import aws_errors
from .._batching import Backoff
from .._clusterkeys import cluster_key, shard_key
from .._context import iso_now
from .._dynamo import get_consistent, key_attrs, n_attr, update_item
from .._errors import (
    AwsConnectionError,
    ConditionFailedError,
    MsgclusterError,
    ThrottledError,
    TransactionCanceledError,
)
from .._itemcodec import decode_item
from .._schemas import (
    STATUS_CODES,
    CallbackStatus,
    ClusterEventEnvelope,
    MessageClusterRecord,
    RecordKey,
    ShardRecord,
    Status,
    StatusCode,
)
from ..queues._contract import OutgoingMessage as QueueMessage

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._context import Context


log = logging.getLogger("msgcluster")

CONDITION_FAILED: Final = "ConditionalCheckFailed"
_RETRYABLE_REASONS: Final = frozenset(
    {
        "TransactionConflict",
        "ThrottlingError",
        "ProvisionedThroughputExceeded",
        "RequestLimitExceeded",
    }
)
# A completion event not yet recorded as sent is (re)sent by repairs; one that
# was sent is re-sent only if the callback is still pending after this long.
EVENT_RESEND_SECONDS: Final = 300
_event_encoder: Final = msgspec.json.Encoder()


class SettleResult:
    """What :func:`settle_tasks` did: tasks it counted, shards it found final."""

    __slots__ = ("counted", "flipped", "maybe_done", "other")

    def __init__(self) -> None:
        self.counted: set[RecordKey] = set()
        # Layout 2: tasks found counted with the other outcome (which stands).
        self.other: set[RecordKey] = set()
        # Cluster ids that may have completed as a consequence (a closure or a
        # repair ran): callers check for a pending callback only for these.
        self.maybe_done: set[str] = set()
        self.flipped: set[str] = set()


def read_reasons(
    exc: TransactionCanceledError, order: list[tuple[str, RecordKey]]
) -> tuple[list[RecordKey], list[RecordKey], bool]:
    """A cancelled transaction's reasons: condition failures of tasks and of
    shards, and whether anything else (conflict, throttle) calls for a retry."""
    task_failed: list[RecordKey] = []
    shard_failed: list[RecordKey] = []
    retry = False
    for (kind, key), reason in zip(order, exc.reasons, strict=False):
        code = reason.get("Code") or "None"
        if code == CONDITION_FAILED:
            (task_failed if kind == "task" else shard_failed).append(key)
        elif code != "None":
            if code not in _RETRYABLE_REASONS:
                log.warning("transaction item %s cancelled: %s", key.pk, reason)
            retry = True
    if not exc.reasons:
        retry = True
    return task_failed, shard_failed, retry


# --------------------------------------------------------------------------- closure


async def _get(ctx: Context, key: RecordKey) -> dict[str, Any] | None:
    return await get_consistent(ctx, key.pk, key.rk)


async def repair(
    ctx: Context, cluster_id: str, shard: int, result: SettleResult | None = None
) -> None:
    """Re-run whatever a crashed consumer may have left undone for this shard."""
    item = await _get(ctx, shard_key(cluster_id, shard))
    if item is None:
        return
    record = decode_item(item, ShardRecord)
    if result is not None:
        result.maybe_done.add(cluster_id)
    if record.closed_at is not None:
        flipped = await maybe_flip(ctx, cluster_id)
    elif record.sealed and record.pending <= 0:
        flipped = await close_shard(ctx, cluster_id, shard, record)
    else:
        return
    if flipped and result is not None:
        result.flipped.add(cluster_id)


async def close_shard(
    ctx: Context, cluster_id: str, shard: int, record: ShardRecord | None = None
) -> bool:
    """Close an emptied shard (once); True if the cluster is now final."""
    skey, ckey = shard_key(cluster_id, shard), cluster_key(cluster_id)
    if record is None:
        item = await _get(ctx, skey)
        if item is None:
            return False
        record = decode_item(item, ShardRecord)
    if record.closed_at is not None:
        return await maybe_flip(ctx, cluster_id)
    if not record.sealed or record.pending > 0:
        return False
    last = False
    backoff = Backoff(attempts=12, cap=2.0)
    for attempt in range(backoff.attempts):
        cluster_update = _close_cluster_update(ctx, ckey, record, last)
        items = [{"Update": _close_shard_update(ctx, skey, record)}, {"Update": cluster_update}]
        try:
            with aws_errors(resource=ctx.table):
                await ctx.ddb.transact_write_items(TransactItems=items)  # type: ignore[arg-type]
        except TransactionCanceledError as exc:
            reasons = [r.get("Code") or "None" for r in exc.reasons] or ["?", "?"]
            if reasons[0] == CONDITION_FAILED:
                # Closed meanwhile (by a duplicate or a retried request of ours).
                return await maybe_flip(ctx, cluster_id)
            if reasons[1] == CONDITION_FAILED:
                if not exc.reasons[1].get("Item"):
                    log.warning("cluster %s is gone; shard %d not closed", cluster_id, shard)
                    return False
                last = True  # sealed and this is the last open shard
                continue
        except (ThrottledError, AwsConnectionError):
            pass
        else:
            return await maybe_flip(ctx, cluster_id) if last else False
        await backoff.sleep(attempt)
    raise MsgclusterError(f"could not close shard {shard} of cluster {cluster_id}")


def _close_shard_update(ctx: Context, skey: RecordKey, record: ShardRecord) -> dict[str, Any]:
    return {
        "TableName": ctx.table,
        "Key": key_attrs(skey.pk, skey.rk),
        "UpdateExpression": "SET closedAt = :now",
        "ConditionExpression": (
            "sealed = :t AND pending = :zero AND attribute_not_exists(closedAt) "
            "AND done = :d AND failedCount = :f"
        ),
        "ExpressionAttributeValues": {
            ":now": {"S": iso_now()},
            ":t": {"BOOL": True},
            ":zero": n_attr(0),
            ":d": n_attr(record.done),
            ":f": n_attr(record.failed_count),
        },
    }


def _close_cluster_update(
    ctx: Context, ckey: RecordKey, record: ShardRecord, last: bool
) -> dict[str, Any]:
    """``ADD shardsOpen -1``, conditional unless this is known to be the last shard."""
    return {
        "TableName": ctx.table,
        "Key": key_attrs(ckey.pk, ckey.rk),
        "UpdateExpression": "ADD shardsOpen :m1, completed :d, failed :f SET updatedAt = :now",
        "ConditionExpression": "attribute_exists(pk)"
        + ("" if last else " AND (attribute_not_exists(sealed) OR shardsOpen > :one)"),
        "ExpressionAttributeValues": {
            ":m1": n_attr(-1),
            ":d": n_attr(record.done),
            ":f": n_attr(record.failed_count),
            ":now": {"S": iso_now()},
        }
        | ({} if last else {":one": n_attr(1)}),
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }


def within_tolerance(record: MessageClusterRecord) -> bool:
    allowed = max(record.tolerated_failures, int(record.tolerated_failure_rate * record.total))
    return record.failed <= allowed


async def maybe_flip(ctx: Context, cluster_id: str) -> bool:
    """Flip a sealed cluster whose shards are all closed; True if it is final now.

    Also (re)sends the completion event while the callback is pending and the
    event is not known to have been sent.
    """
    key = cluster_key(cluster_id)
    item = await _get(ctx, key)
    if item is None:
        return False
    record = decode_item(item, MessageClusterRecord)
    if not record.sealed or record.shards_open > 0:
        return False
    if record.status_code == StatusCode.STOPPED:
        return False
    if record.status_code < StatusCode.COMPLETE:
        status = Status.COMPLETE if within_tolerance(record) else Status.ERROR
        now = iso_now()
        try:
            attributes = await update_item(
                ctx,
                key,
                "SET #s = :s, statusCode = :c, completedAt = :now, updatedAt = :now, "
                "callbackStatus = :pending",
                {
                    ":s": {"S": status.value},
                    ":c": n_attr(STATUS_CODES[status]),
                    ":now": {"S": now},
                    ":pending": {"S": CallbackStatus.PENDING.value},
                    ":t": {"BOOL": True},
                    ":zero": n_attr(0),
                    ":c0": n_attr(StatusCode.PRE_FLIGHT),
                    ":c1": n_attr(StatusCode.IN_PROGRESS),
                },
                condition="sealed = :t AND shardsOpen = :zero AND statusCode IN (:c0, :c1)",
                names={"#s": "status"},
            )
        except ConditionFailedError:
            item = await _get(ctx, key)  # flipped (or cancelled) concurrently
            if item is None:
                return False
            record = decode_item(item, MessageClusterRecord)
            if record.status_code == StatusCode.STOPPED:
                return False
        else:
            record = decode_item(attributes, MessageClusterRecord)
            log.info("cluster %s is %s (%d/%d)", cluster_id, status, record.completed, record.total)
    if record.callback_status in (CallbackStatus.PENDING, CallbackStatus.RUNNING):
        await send_event(ctx, record, item)
    ctx.cluster_hints.put(cluster_id, True)
    return True


async def send_event(
    ctx: Context, record: MessageClusterRecord, item: Mapping[str, Any] | None = None
) -> None:
    """The durable completion event: a message on the completion (or task) queue.

    Sent after the flip and before the task messages are acknowledged, so a
    process that dies before running the callback leaves the event behind.
    """
    sent_at = (item or {}).get("eventSentAt", {}).get("N")
    now = int(ctx.clock())
    if sent_at is not None and now - int(sent_at) < EVENT_RESEND_SECONDS:
        return
    url = record.completion_queue_url or record.url
    body = _event_encoder.encode(ClusterEventEnvelope(pk=record.pk, rk=record.rk, url=record.url))
    queue = await ctx.queue(url)
    message = QueueMessage(body=body)
    if queue.capabilities.fifo:
        message = QueueMessage(
            body=body,
            group_id=record.id or record.pk,
            dedup_id=f"{record.id}-complete-{now // EVENT_RESEND_SECONDS}",
        )
    (sent,) = await queue.send([message])
    if sent.error is not None:
        raise sent.error
    key = record.key
    try:
        await update_item(
            ctx,
            key,
            "SET eventSentAt = :now",
            {":now": n_attr(now)},
            condition="attribute_exists(pk)",
            returns="NONE",
        )
    except MsgclusterError as exc:  # the event is out; at worst it is sent again
        log.debug("could not record the completion event of %s: %s", key.pk, exc)
