"""Re-sending the failed tasks of a cluster.

A task counted as failed keeps the message it arrived in (``failedBody``, or
``failedBodyS3`` when large), so it can be sent again exactly as it was. Per
chunk of one shard, one transaction un-counts the tasks (ERROR -> PRE FLIGHT,
shard ``failedCount -n, pending +n``) and, when the shard had been closed,
reopens it and takes its counts back out of the cluster, which returns to
IN PROGRESS with a fresh callback state. Only then are the messages sent:
a task is never delivered while its record still says ERROR.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from .._clusterkeys import TaskRef
from .._errors import ClusterError
from .._schemas import RecordKey, S3Pointer
from ..queues._contract import OutgoingMessage as QueueMessage
from ..queues._extended import fetch
from ._buckets import bucketed
from ._redrive_buckets import uncount_in_buckets
from ._redrive_records import uncount

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["redrive"]

log = logging.getLogger("msgcluster")


async def _stored_body(ctx: Context, item: dict[str, Any]) -> str | None:
    if "failedBody" in item:
        return str(item["failedBody"]["S"])
    pointer = item.get("failedBodyS3", {}).get("M")
    if pointer:
        data = await fetch(ctx, S3Pointer(bucket=pointer["bucket"]["S"], key=pointer["key"]["S"]))
        return data.decode()
    return None


async def redrive(ctx: Context, cid: str, shard: int, items: list[dict[str, Any]]) -> int:
    bodies: dict[RecordKey, str] = {}
    for item in items:
        key = RecordKey(item["pk"]["S"], item["rk"]["S"])
        body = await _stored_body(ctx, item)
        if body is None:
            log.warning("task %s has no stored message and cannot be redriven", key.rk)
            continue
        bodies[key] = body
    if not bodies:
        return 0
    if (await bucketed(ctx, [cid]))[cid]:
        reset = await uncount_in_buckets(ctx, cid, shard, list(bodies))
        bodies = {key: body for key, body in bodies.items() if key in reset}
        if not bodies:
            return 0
    else:
        await uncount(ctx, cid, shard, list(bodies))
    url = items[0]["url"]["S"]
    queue = await ctx.queue(url)
    messages = []
    for key, body in bodies.items():
        if queue.capabilities.fifo:
            task_id = TaskRef(key).task_id
            dedup = f"{task_id}:redrive:{uuid.uuid4().hex[:12]}"
            messages.append(QueueMessage(body=body, group_id=task_id, dedup_id=dedup))
        else:
            messages.append(QueueMessage(body=body))
    failed = [result for result in await queue.send(messages) if result.error is not None]
    if failed:
        raise ClusterError(
            f"redrive of cluster {cid}: {len(failed)} task(s) were reset but not sent "
            f"({failed[0].error}); they are PRE FLIGHT and listed by incomplete_tasks",
            cluster_id=cid,
        )
    return len(bodies)
