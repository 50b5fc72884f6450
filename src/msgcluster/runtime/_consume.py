"""Consuming: completion checks, completion and failure for any kind of record.

One entry point per operation, dispatching on what the record is: a simple
message (its record is deleted on completion), a cluster task (counted once
by the fan-in protocol, see ``_fanin``) or a cluster's completion event.
Batch forms cost one request per AWS batch: one consistent BatchGetItem for
a receive batch's completion check, one TransactWriteItems for its tasks.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._clusterkeys import TaskRef
from .._context import iso_now
from .._dynamo import batch_get, batch_write, key_attrs
from .._errors import EnvelopeError
from .._itemcodec import to_attr
from .._schemas import (
    KEY_PREFIX,
    CallbackStatus,
    ErrorEntry,
    MessageRecord,
    RecordKey,
    Status,
    StatusCode,
)
from ..clusters._buckets import bucket_status, note_layout, repair_bucket
from ..clusters._closing import repair
from ..clusters._fanin import settle_tasks
from ..clusters._group_commit import settle_together
from ..clusters._lookups import get_message_record
from ..messages import _messages
from ..queues import _extended
from ..read._incoming import MessageKind, kind_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._context import Context
    from ..read._incoming import SqsMessage

__all__ = [
    "MessageKind",
    "is_complete_batch",
    "kind_of",
    "mark_complete_batch",
    "mark_failed",
]

log = logging.getLogger("msgcluster")

# A failed task's message is kept on its record for redrive_failed; above this
# size it goes to S3 instead.
MAX_INLINE_FAILED_BODY: Final = 65_536
_DONE_TASK: Final = frozenset({Status.COMPLETE.value, Status.ERROR.value})
_DONE_CALLBACK: Final = frozenset({CallbackStatus.DONE.value, CallbackStatus.ERROR.value})


def _classify(
    records: Sequence[object],
) -> list[tuple[RecordKey | None, SqsMessage | None, MessageKind]]:
    """Key, message and kind per record; a plain or mis-keyed message has no key."""
    out: list[tuple[RecordKey | None, SqsMessage | None, MessageKind]] = []
    for record in records:
        try:
            key, message = _messages.record_key(record)
        except EnvelopeError:
            out.append((None, None, MessageKind.PLAIN))
            continue
        out.append((key, message, kind_of(key) if key is not None else MessageKind.PLAIN))
    return out


async def _delete_records(ctx: Context, keys: Sequence[RecordKey]) -> None:
    """Delete message records, 25 per request; raise if any delete did not apply
    (the messages must then not be acknowledged)."""
    # A batch may hold the same message twice; BatchWriteItem refuses duplicates.
    unique = dict.fromkeys((key.pk, key.rk) for key in keys)
    requests = [{"DeleteRequest": {"Key": key_attrs(pk, rk)}} for pk, rk in unique]
    failures = await batch_write(ctx, requests)
    if failures:
        raise failures[0].error


async def is_complete_batch(ctx: Context, records: Sequence[object]) -> list[bool]:
    """Per record: is its work done (skip it and acknowledge)?

    - message: record COMPLETE or gone (deleted on completion);
    - task: counted (COMPLETE / ERROR) or its cluster was cancelled; a task
      found counted first repairs its shard (a consumer may have crashed
      between counting and closing), so acknowledging it is safe;
    - cluster event: the callback is done (or failed for good), or the
      cluster is gone or cancelled;
    - a plain message (msgcluster did not send it) or a mis-keyed envelope:
      never (there is no record to say so), and no table is read for it.
    """
    classified = _classify(records)
    found = await _read_states(ctx, classified)
    out: list[bool] = []
    to_repair: set[tuple[str, int]] = set()
    full_buckets: dict[RecordKey, tuple[TaskRef, dict[str, Any]]] = {}
    for key, _, kind in classified:
        if key is None:  # plain (or poison): never "already done"; nothing to skip
            out.append(False)
            continue
        item = found.get((key.pk, key.rk))
        status = item.get("status", {}).get("S") if item else None
        if kind is MessageKind.MESSAGE:
            out.append(item is None or status == Status.COMPLETE.value)
        elif kind is MessageKind.EVENT:
            code = int(item.get("statusCode", {}).get("N", "0")) if item else None
            callback = item.get("callbackStatus", {}).get("S") if item else None
            out.append(item is None or code == StatusCode.STOPPED or callback in _DONE_CALLBACK)
        else:
            ref = TaskRef(key)
            cluster = found.get((ref.cluster_key.pk, ref.cluster_key.rk))
            if cluster is None or int(cluster.get("statusCode", {}).get("N", "0")) == (
                StatusCode.STOPPED
            ):
                out.append(True)  # cancelled (or gone): skip and acknowledge
            elif note_layout(ctx, ref.cluster_id, cluster):
                bucket = found.get((ref.bucket_key.pk, ref.bucket_key.rk))
                counted = bucket is not None and bucket_status(bucket, ref.index) is not None
                if counted and bucket is not None:
                    full_buckets[ref.bucket_key] = (ref, bucket)
                out.append(counted)
            elif item is None or status in _DONE_TASK:
                to_repair.add((ref.cluster_id, ref.shard))
                out.append(True)
            else:
                out.append(False)
    for cid, shard in sorted(to_repair):
        await repair(ctx, cid, shard)
    for ref, bucket in full_buckets.values():
        await repair_bucket(ctx, ref, bucket)
    return out


async def _read_states(
    ctx: Context, classified: list[tuple[RecordKey | None, SqsMessage | None, MessageKind]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """One consistent BatchGetItem of the records, and of each task's cluster
    and (layout 2, or not known yet) its bucket."""
    wanted: list[tuple[str, str]] = []
    for key, _, kind in classified:
        if key is None:
            continue
        if kind is not MessageKind.TASK:
            wanted.append((key.pk, key.rk))
            continue
        ref = TaskRef(key)
        bucketed = ctx.cluster_layouts.get(ref.cluster_id)
        if bucketed is not True:
            wanted.append((key.pk, key.rk))
        if bucketed is not False:
            wanted.append((ref.bucket_key.pk, ref.bucket_key.rk))
        wanted.append((ref.cluster_key.pk, ref.cluster_key.rk))
    if not wanted:
        return {}
    return await batch_get(
        ctx,
        wanted,
        consistent_read=True,
        projection="pk, rk, #s, statusCode, callbackStatus, #l, #ok, #bad, #cap",
        names={"#s": "status", "#l": "layout", "#ok": "ok", "#bad": "bad", "#cap": "cap"},
    )


async def mark_complete_batch(ctx: Context, records: Sequence[object]) -> list[bool]:
    """Complete every record; per record, True if this call completed it.

    Tasks of the batch are counted in one transaction (per 90); messages'
    records are deleted with BatchWriteItem (per 25); a cluster event needs
    no completion; a plain message has no record and is not touched (False).
    For a message in a batch, True means its record is gone:
    a batch delete cannot tell whether a concurrent duplicate deleted it
    first (a single message's ``mark_complete`` can, and does).
    """
    classified = _classify(records)
    out = [False] * len(classified)
    messages = {
        index: key
        for index, (key, _, kind) in enumerate(classified)
        if kind is MessageKind.MESSAGE and key is not None
    }
    if len(messages) == 1:
        ((index, key),) = messages.items()
        out[index] = await _messages.mark_complete(ctx, key)
    elif messages:
        await _delete_records(ctx, list(messages.values()))
        for index in messages:
            out[index] = True
    tasks = {
        index: TaskRef(key)
        for index, (key, _, kind) in enumerate(classified)
        if kind is MessageKind.TASK and key is not None
    }
    if tasks:
        settled = await settle_together(ctx, list(tasks.values()))
        for index, ref in tasks.items():
            out[index] = ref.key in settled.counted
        for cid in {ref.cluster_id for ref in tasks.values()}:
            if cid not in settled.maybe_done and ctx.cluster_hints.get(cid) is not True:
                ctx.cluster_hints.put(cid, False)
    return out


async def mark_failed(
    ctx: Context, record: object, error: BaseException | str, *, final: bool | None = None
) -> MessageRecord | None:
    """Record a failed attempt. A task on its last receive (or ``final``) is
    counted as failed."""
    key, message = _messages.record_key(record)
    if key is None:  # plain: no record to note it on
        return None
    kind = kind_of(key)
    if kind is MessageKind.EVENT:
        log.warning("completion event of %s failed: %s", key.pk, error)
        return None
    if kind is MessageKind.MESSAGE:
        return await _messages.mark_failed(ctx, record, error, final=final)
    receive_count = message.receive_count if message is not None else 0
    if final is None:
        max_receives = await _messages._max_receives(ctx, record)
        final = max_receives is not None and receive_count >= max_receives
    if not final:
        return await _messages.mark_failed(ctx, record, error, final=False)
    entry = ErrorEntry(
        at=iso_now(),
        message=(str(error) or type(error).__name__)[: _messages.MAX_ERROR_TEXT],
        type="" if isinstance(error, str) else type(error).__name__,
        receive_count=receive_count,
    )
    extra: dict[str, dict[str, Any]] = {
        "error": {"L": [to_attr(msgspec.to_builtins(entry))]},
        "consumptionCount": {"N": str(receive_count)},
    }
    if message is not None:
        body = message.body.encode()
        if len(body) <= MAX_INLINE_FAILED_BODY:
            extra["failedBody"] = {"S": message.body}
        else:
            object_key = f"{key.pk}@{key.rk[len(KEY_PREFIX) :]}.failed.json"
            pointer = await _extended.store(ctx, object_key, body)
            extra["failedBodyS3"] = {
                "M": {"bucket": {"S": pointer.bucket}, "key": {"S": pointer.key}}
            }
    ref = TaskRef(key)
    await settle_tasks(ctx, [ref], outcome=Status.ERROR, extra={key: extra})
    try:
        return await get_message_record(ctx, key, consistent_read=True)
    except Exception:
        return None
