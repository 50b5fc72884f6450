"""Fan-in, layout 2: counting tasks into bucket sets, with no transaction.

Each shard's tasks are counted in buckets of :data:`BUCKET_SIZE` consecutive
tasks, one item (and one partition key) per bucket, holding two number sets
of task indexes: ``ok`` (completed) and ``bad`` (failed for good).

- Counting is ``ADD ok :indexes`` (or ``bad``): a set union, so a duplicate
  delivery, a concurrent consumer or a retried request whose response was
  lost changes nothing. The condition ``NOT contains(<other set>, :i)`` per
  index keeps the two sets disjoint: the first outcome of a task wins.
- A bucket is full when its sets hold all its tasks (``cap``, written only
  on the last, partial bucket of a cluster, else :data:`BUCKET_SIZE`). Who
  sees it full closes it on its shard with one conditional write:
  ``ADD pending -cap, done |ok|, failedCount |bad|, buckets {j}`` if
  ``NOT contains(buckets, j)``, so a bucket is closed once. From there the
  shard and the cluster close as in layout 1 (``_closing.close_shard``).
- Task records are written once, at creation, and not on success: a task's
  status is read from its bucket (:func:`bucket_status`). A failed task's
  record gets its error and message (for redrive), as in layout 1.

Counting a receive batch costs one 1-WCU write per bucket it touches (about
one per batch: SQS returns roughly in send order), spread over as many
partition keys as the cluster has buckets.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from .. import _clusterkeys
from .._batching import Backoff, gather_limited
from .._clusterkeys import BUCKET_SIZE, TaskRef, bucket_key, cluster_key, shard_key
from .._dynamo import batch_get, n_attr, update_item
from .._errors import AwsConnectionError, ConditionFailedError, MsgclusterError, ThrottledError
from .._itemcodec import decode_item
from .._schemas import (
    STATUS_CODES,
    MessageRecord,
    RecordKey,
    RecordType,
    ShardRecord,
    Status,
    StatusCode,
)
from ._closing import SettleResult, close_shard, repair

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from .._context import Context
__all__ = [
    "BUCKETED",
    "bucket_counts",
    "bucket_status",
    "bucketed",
    "cap_last_bucket",
    "settle_bucketed",
]

log = logging.getLogger("msgcluster")

BUCKETED: Final = 2  # MessageClusterRecord.layout of clusters counted here
# DynamoDB caps a condition expression at 4 KB: at most this many indexes per write.
_MAX_INDEXES: Final = 100
# Bucket writes of one settle call in flight at once (a batch touches 1-3).
_PARALLEL_WRITES: Final = 10


async def bucketed(ctx: Context, cluster_ids: Iterable[str]) -> dict[str, bool]:
    """Per cluster: is it layout 2? Read once per cluster and process (a layout
    never changes); a cluster that is gone counts as layout 1."""
    out: dict[str, bool] = {}
    missing: list[str] = []
    for cid in dict.fromkeys(cluster_ids):
        hint = ctx.cluster_layouts.get(cid)
        if hint is None:
            missing.append(cid)
        else:
            out[cid] = hint
    if missing:
        keys = [(cluster_key(cid).pk, cluster_key(cid).rk) for cid in missing]
        found = await batch_get(
            ctx, keys, consistent_read=True, projection="pk, rk, #l", names={"#l": "layout"}
        )
        for cid, key in zip(missing, keys, strict=True):
            out[cid] = note_layout(ctx, cid, found.get(key))
    return out


def note_layout(ctx: Context, cid: str, cluster_item: Mapping[str, Any] | None) -> bool:
    """Remember a cluster's layout from its item (``None``: gone, not remembered)."""
    if cluster_item is None:
        return False
    value = int(cluster_item.get("layout", {}).get("N", "1")) >= BUCKETED
    ctx.cluster_layouts.put(cid, value)
    return value


def _indexes(item: Mapping[str, Any] | None, name: str) -> set[int]:
    if not item:
        return set()
    return {int(v) for v in item.get(name, {}).get("NS", ())}


def _cap(item: Mapping[str, Any] | None) -> int:
    raw = (item or {}).get("cap", {}).get("N")
    return int(raw) if raw is not None else BUCKET_SIZE


def bucket_status(item: Mapping[str, Any] | None, index: int) -> Status | None:
    """COMPLETE / ERROR if the bucket counted task ``index``, else ``None``."""
    if index in _indexes(item, "ok"):
        return Status.COMPLETE
    if index in _indexes(item, "bad"):
        return Status.ERROR
    return None


def bucket_counts(item: Mapping[str, Any] | None) -> tuple[int, int]:
    """(completed, failed) counted in one bucket."""
    return len(_indexes(item, "ok")), len(_indexes(item, "bad"))


# --------------------------------------------------------------------------- counting


async def settle_bucketed(
    ctx: Context, refs: Sequence[TaskRef], outcome: Status, result: SettleResult
) -> None:
    """Count ``refs`` as ``outcome`` into their buckets (one write per bucket,
    concurrently), closing every bucket found full."""
    groups: dict[RecordKey, list[TaskRef]] = {}
    for ref in refs:
        groups.setdefault(ref.bucket_key, []).append(ref)
    calls = [
        partial(_count, ctx, group[start : start + _MAX_INDEXES], outcome, result)
        for group in groups.values()
        for start in range(0, len(group), _MAX_INDEXES)
    ]
    # A limiter of its own: the caller may hold a slot of the Client's.
    await gather_limited(anyio.CapacityLimiter(_PARALLEL_WRITES), calls)


async def _count(ctx: Context, refs: list[TaskRef], outcome: Status, result: SettleResult) -> None:
    first = refs[0]
    complete = outcome is Status.COMPLETE
    name, other = ("ok", "bad") if complete else ("bad", "ok")
    todo = {ref.index: ref for ref in refs}
    backoff = Backoff(attempts=12, cap=2.0)
    attempt = 0
    old: Mapping[str, Any] | None = None
    while todo:
        try:
            old = await _add(ctx, first.bucket_key, sorted(todo), name, other)
        except ConditionFailedError as exc:
            # Some task already counted with the other outcome: it stays so.
            old = exc.item
            counted_other = _indexes(exc.item, other)
            for index in counted_other & set(todo):
                result.other.add(todo.pop(index).key)
            if not counted_other:
                raise MsgclusterError(f"could not count tasks of {first.bucket_key.pk}") from exc
            continue
        except (ThrottledError, AwsConnectionError) as exc:
            # Throttled: not applied. No answer: maybe applied; the retry is a
            # set union, so applying it twice changes nothing.
            if attempt >= backoff.attempts - 1:
                raise MsgclusterError(f"could not count {len(todo)} task(s): {exc}") from exc
            await backoff.sleep(attempt)
            attempt += 1
            continue
        break
    before = _indexes(old, "ok") | _indexes(old, "bad")
    for index, ref in todo.items():
        if index not in before:
            result.counted.add(ref.key)
    ok, bad = _indexes(old, "ok"), _indexes(old, "bad")
    (ok if complete else bad).update(todo)
    if len(ok) + len(bad) >= _cap(old):
        await _close_bucket(ctx, first, len(ok), len(bad), result)


async def _add(
    ctx: Context, key: RecordKey, indexes: list[int], name: str, other: str
) -> dict[str, Any]:
    values: dict[str, Any] = {
        ":ids": {"NS": [str(i) for i in indexes]},
        ":exp": n_attr(ctx.expires_at()),
    }
    checks = []
    for position, index in enumerate(indexes):
        values[f":i{position}"] = n_attr(index)
        checks.append(f"NOT contains(#o, :i{position})")
    return await update_item(
        ctx,
        key,
        "ADD #n :ids SET expiresAt = if_not_exists(expiresAt, :exp)",
        values,
        condition=" AND ".join(checks),
        names={"#n": name, "#o": other},
        returns="ALL_OLD",
        returns_on_failure="ALL_OLD",
    )


async def _close_bucket(
    ctx: Context, ref: TaskRef, done: int, failed: int, result: SettleResult
) -> None:
    """Add a full bucket's counts to its shard, once; close the shard if it empties."""
    key = shard_key(ref.cluster_id, ref.shard)
    result.maybe_done.add(ref.cluster_id)
    backoff = Backoff(attempts=12, cap=2.0)
    for attempt in range(backoff.attempts):
        try:
            attributes = await update_item(
                ctx,
                key,
                "ADD pending :neg, done :d, failedCount :f, buckets :j "
                "SET expiresAt = if_not_exists(expiresAt, :exp)",
                {
                    ":neg": n_attr(-(done + failed)),
                    ":d": n_attr(done),
                    ":f": n_attr(failed),
                    ":j": {"NS": [str(ref.bucket)]},
                    ":jn": n_attr(ref.bucket),
                    ":exp": n_attr(ctx.expires_at()),
                },
                condition="NOT contains(buckets, :jn)",
            )
        except ConditionFailedError:
            # Closed before (a duplicate, or our own request whose answer was
            # lost): finish whatever that closer may have left undone.
            await repair(ctx, ref.cluster_id, ref.shard, result)
            return
        except (ThrottledError, AwsConnectionError):
            await backoff.sleep(attempt)
            continue
        record = decode_item(attributes, ShardRecord)
        emptied = record.sealed and record.pending <= 0 and record.closed_at is None
        if emptied and await close_shard(ctx, ref.cluster_id, ref.shard, record):
            result.flipped.add(ref.cluster_id)
        return
    raise MsgclusterError(f"could not close bucket {ref.bucket} of shard {key.pk}")


async def cap_last_bucket(ctx: Context, cid: str, shard: int, count: int) -> None:
    """A sealed block of ``count`` tasks whose last bucket is partial: write its
    size there, and close it if consumers already filled it."""
    size = count % BUCKET_SIZE
    if not size:
        return
    bucket = (count - 1) // BUCKET_SIZE
    key = bucket_key(cid, shard, bucket)
    item = await update_item(
        ctx,
        key,
        "SET cap = :c, expiresAt = if_not_exists(expiresAt, :exp)",
        {":c": n_attr(size), ":exp": n_attr(ctx.expires_at())},
    )
    done, failed = bucket_counts(item)
    if done + failed >= size:
        ref = TaskRef(_task_key_in(cid, shard, bucket))
        await _close_bucket(ctx, ref, done, failed, SettleResult())


async def repair_bucket(ctx: Context, ref: TaskRef, item: Mapping[str, Any] | None) -> None:
    """A task found counted: close its bucket if it is full (a consumer may have
    died between counting and closing), else nothing."""
    done, failed = bucket_counts(item)
    if item is not None and done + failed >= _cap(item):
        await _close_bucket(ctx, ref, done, failed, SettleResult())


def _task_key_in(cid: str, shard: int, bucket: int) -> RecordKey:
    from .._clusterkeys import task_key

    return task_key(cid, shard * _clusterkeys.SHARD_SIZE + bucket * BUCKET_SIZE)


# --------------------------------------------------------------------------- reads


async def with_bucket_status(
    ctx: Context, records: Sequence[MessageRecord | None], *, consistent_read: bool = True
) -> list[MessageRecord | None]:
    """Task records of layout-2 clusters with the status their bucket gives
    (their record is not rewritten on success); other records as they are."""
    out = list(records)
    refs: dict[int, TaskRef] = {}
    for position, record in enumerate(records):
        if record is not None and record.type is RecordType.TASK and not _final(record.status):
            refs[position] = TaskRef(RecordKey(record.pk, record.rk))
    if not refs:
        return out
    layouts = await bucketed(ctx, {ref.cluster_id for ref in refs.values()})
    wanted = {ref.bucket_key for ref in refs.values() if layouts[ref.cluster_id]}
    if not wanted:
        return out
    found = await batch_get(
        ctx, [(key.pk, key.rk) for key in wanted], consistent_read=consistent_read
    )
    for position, ref in refs.items():
        bucket = found.get((ref.bucket_key.pk, ref.bucket_key.rk))
        status = bucket_status(bucket, ref.index) if layouts[ref.cluster_id] else None
        record = out[position]
        if status is not None and record is not None:
            out[position] = msgspec.structs.replace(
                record, status=status, status_code=StatusCode(STATUS_CODES[status])
            )
    return out


def _final(status: Status) -> bool:
    return status in (Status.COMPLETE, Status.ERROR)


async def shard_bucket_items(
    ctx: Context, cid: str, shard: int, record: ShardRecord | None, *, consistent_read: bool
) -> dict[int, dict[str, Any]]:
    """The bucket items of a shard that its counters do not hold yet, by bucket."""
    closed = record.buckets if record is not None else frozenset()
    size = record.total if record is not None and record.sealed else _clusterkeys.SHARD_SIZE
    wanted = [j for j in range(-(-size // BUCKET_SIZE)) if j not in closed]
    keys = {j: bucket_key(cid, shard, j) for j in wanted}
    found = await batch_get(
        ctx, [(key.pk, key.rk) for key in keys.values()], consistent_read=consistent_read
    )
    return {j: found[(key.pk, key.rk)] for j, key in keys.items() if (key.pk, key.rk) in found}
