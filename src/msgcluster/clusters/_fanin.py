"""Fan-in: counting tasks exactly once, closing shards, flipping the cluster.

Counting a receive batch is one TransactWriteItems:

- each task: ``PRE FLIGHT | IN PROGRESS -> COMPLETE`` (or ``ERROR`` for a
  task that exhausted its receives), conditional, so a task is counted once
  whatever the duplicates, concurrency or retried requests;
- each touched shard: ``ADD done/failedCount n, pending -n`` with the
  condition ``attribute_not_exists(sealed) OR pending > :n``.

DynamoDB conditions cannot do arithmetic, so "this batch empties the shard"
is detected as the shard's condition failing (with every task condition
holding): the transaction is retried without that condition, and then this
caller closes the shard. Closing is one transaction too: mark the shard
closed (sealed, pending = 0, not closed) and add its counts to the cluster,
``ADD shardsOpen -1`` with the same trick to detect the last shard, whose
closer flips the cluster to COMPLETE / ERROR with one conditional write and
sends the durable completion event.

Every step is conditional and idempotent; :func:`repair` re-runs the steps
after a task is found already counted, so a crash between any two of them is
repaired by the next delivery of any task of that shard.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from .._aws_errors import aws_errors
from .._batching import Backoff
from .._context import iso_now
from .._dynamo import key_attrs, n_attr
from .._errors import (
    AwsConnectionError,
    ConditionFailedError,
    MsgclusterError,
    ThrottledError,
    TransactionCanceledError,
)
from .._schemas import (
    STATUS_CODES,
    RecordKey,
    Status,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .._clusterkeys import TaskRef
    from .._context import Context

from ._closing import SettleResult, read_reasons, repair

log = logging.getLogger("msgcluster")

# TransactWriteItems takes at most 100 items: tasks plus their shards.
TXN_MAX_ITEMS: Final = 100


async def settle_tasks(
    ctx: Context,
    refs: Sequence[TaskRef],
    *,
    outcome: Status = Status.COMPLETE,
    extra: Mapping[RecordKey, Mapping[str, dict[str, Any]]] | None = None,
) -> SettleResult:
    """Count each task once as ``outcome`` (COMPLETE or ERROR); close what empties.

    ``extra`` adds attributes to a task's update (e.g. the error list of a
    failed task). Tasks already counted are skipped, and their shards are
    repaired, so a caller may acknowledge every message afterwards.
    """
    from ._buckets import bucketed, settle_bucketed

    result = SettleResult()
    unique = list({ref.key: ref for ref in refs}.values())
    layouts = await bucketed(ctx, {ref.cluster_id for ref in unique})
    in_buckets = [ref for ref in unique if layouts[ref.cluster_id]]
    if in_buckets:
        await settle_bucketed(ctx, in_buckets, outcome, result)
        if outcome is not Status.COMPLETE:
            await _record_outcomes(ctx, in_buckets, outcome, extra or {}, result)
    on_records = [ref for ref in unique if not layouts[ref.cluster_id]]
    for chunk in _transactions(on_records):
        await _settle_chunk(ctx, chunk, outcome, extra or {}, result)
    return result


async def _record_outcomes(
    ctx: Context,
    refs: list[TaskRef],
    outcome: Status,
    extra: Mapping[RecordKey, Mapping[str, dict[str, Any]]],
    result: SettleResult,
) -> None:
    """Layout 2: a failed task's record keeps its error and message (for redrive);
    written after the count, and again by a retry, until it holds."""
    now = iso_now()
    for ref in refs:
        if ref.key in result.other:
            continue
        update = _task_update(ctx, ref, outcome, extra.get(ref.key, {}), now)
        try:
            with aws_errors(resource=ctx.table):
                await ctx.ddb.update_item(**update)
        except ConditionFailedError:
            pass  # recorded before


def _transactions(refs: list[TaskRef]) -> list[list[TaskRef]]:
    """Split into transactions of at most 100 items: tasks plus one per shard."""
    chunks: list[list[TaskRef]] = []
    current: list[TaskRef] = []
    shards: set[RecordKey] = set()
    for ref in refs:
        extra = 0 if ref.shard_key in shards else 1
        if current and len(current) + len(shards) + 1 + extra > TXN_MAX_ITEMS:
            chunks.append(current)
            current, shards = [], set()
            extra = 1
        current.append(ref)
        shards.add(ref.shard_key)
    if current:
        chunks.append(current)
    return chunks


async def _settle_chunk(
    ctx: Context,
    refs: list[TaskRef],
    outcome: Status,
    extra: Mapping[RecordKey, Mapping[str, dict[str, Any]]],
    result: SettleResult,
) -> None:
    pending = {ref.key: ref for ref in refs}
    final: set[RecordKey] = set()  # shards whose condition this batch must drop
    to_repair: dict[RecordKey, TaskRef] = {}
    backoff = Backoff(attempts=12, cap=2.0)
    attempt = 0
    while pending:
        items, order = _settle_items(ctx, list(pending.values()), outcome, extra, final)
        try:
            with aws_errors(resource=ctx.table):
                await ctx.ddb.transact_write_items(TransactItems=items)  # type: ignore[arg-type]
        except TransactionCanceledError as exc:
            task_failed, shard_failed, retry = read_reasons(exc, order)
            for key in task_failed:
                ref = pending.pop(key)
                to_repair.setdefault(ref.shard_key, ref)
            if shard_failed and not task_failed and not retry:
                final.update(shard_failed)
                continue
            if task_failed and not retry:
                continue  # rebuilt with the counts of the tasks left
        except (ThrottledError, AwsConnectionError) as exc:
            # Throttled: not applied. No answer: maybe applied, in which case
            # the retry finds the tasks counted and repairs their shards.
            if attempt >= backoff.attempts - 1:
                raise MsgclusterError(f"could not count {len(pending)} task(s): {exc}") from exc
        else:
            result.counted.update(pending)
            for ref in pending.values():
                if ref.shard_key in final:
                    to_repair.setdefault(ref.shard_key, ref)
            break
        if attempt >= backoff.attempts - 1:
            raise MsgclusterError(
                f"could not count {len(pending)} task(s): transaction kept being cancelled"
            )
        await backoff.sleep(attempt)
        attempt += 1
    for ref in to_repair.values():
        await repair(ctx, ref.cluster_id, ref.shard, result)


def _settle_items(
    ctx: Context,
    refs: list[TaskRef],
    outcome: Status,
    extra: Mapping[RecordKey, Mapping[str, dict[str, Any]]],
    final: set[RecordKey],
) -> tuple[list[dict[str, Any]], list[tuple[str, RecordKey]]]:
    now = iso_now()
    items: list[dict[str, Any]] = []
    order: list[tuple[str, RecordKey]] = []
    per_shard: dict[RecordKey, int] = {}
    for ref in refs:
        items.append({"Update": _task_update(ctx, ref, outcome, extra.get(ref.key, {}), now)})
        order.append(("task", ref.key))
        per_shard[ref.shard_key] = per_shard.get(ref.shard_key, 0) + 1
    complete = outcome is Status.COMPLETE
    for key, count in per_shard.items():
        items.append({"Update": _shard_update(ctx, key, count, complete, key not in final)})
        order.append(("shard", key))
    return items, order


def _task_update(
    ctx: Context, ref: TaskRef, outcome: Status, extra: Mapping[str, dict[str, Any]], now: str
) -> dict[str, Any]:
    names = {"#s": "status", "#c": "statusCode", "#u": "updatedAt", "#d": "completedAt"}
    values: dict[str, Any] = {
        ":s": {"S": outcome.value},
        ":c": n_attr(STATUS_CODES[outcome]),
        ":now": {"S": now},
        ":pf": {"S": Status.PRE_FLIGHT.value},
        ":ip": {"S": Status.IN_PROGRESS.value},
    }
    sets = ["#s = :s", "#c = :c", "#u = :now", "#d = :now"]
    for position, (name, value) in enumerate(extra.items()):
        names[f"#x{position}"] = name
        values[f":x{position}"] = value
        if name == "error":  # the bounded error list: appended to, not replaced
            values[":empty"] = {"L": []}
            sets.append(
                f"#x{position} = list_append(if_not_exists(#x{position}, :empty), :x{position})"
            )
        else:
            sets.append(f"#x{position} = :x{position}")
    return {
        "TableName": ctx.table,
        "Key": key_attrs(ref.key.pk, ref.key.rk),
        "UpdateExpression": "SET " + ", ".join(sets),
        "ConditionExpression": "#s IN (:pf, :ip)",
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }


def _shard_update(
    ctx: Context, key: RecordKey, count: int, complete: bool, conditional: bool
) -> dict[str, Any]:
    # Both counters are always ADDed (0 or n) so they exist for the
    # closure's equality conditions.
    update: dict[str, Any] = {
        "TableName": ctx.table,
        "Key": key_attrs(key.pk, key.rk),
        "UpdateExpression": (
            "ADD pending :neg, done :d, failedCount :f "
            "SET expiresAt = if_not_exists(expiresAt, :exp)"
        ),
        "ExpressionAttributeValues": {
            ":neg": n_attr(-count),
            ":n": n_attr(count),
            ":d": n_attr(count if complete else 0),
            ":f": n_attr(0 if complete else count),
            ":exp": n_attr(ctx.expires_at()),
        },
    }
    if conditional:
        update["ConditionExpression"] = "attribute_not_exists(sealed) OR pending > :n"
    return update
