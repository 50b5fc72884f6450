"""A small consumer loop built only on the public API, as a user would write one.

It is what the worker runtime will do, reduced to what the cluster tests need:
receive a batch, skip what is complete, run the handler, count the batch with
one ``mark_complete_batch``, run the completion callback where due, and only
then delete the messages. ``duplicate=True`` re-sends a copy of every message
the first time it is seen, so every task is delivered (at least) twice, and
the copies race the originals on other consumers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

import msgcluster
from msgcluster import ParsedRecord, RecordType

COPY_ATTRIBUTE = "test-copy"


@dataclass
class Stats:
    handled: int = 0
    skipped: int = 0
    failed: int = 0
    events: int = 0
    callbacks: list[Any] = field(default_factory=list)


async def consume_batch(
    mc: msgcluster.Client,
    url: str,
    messages: list[dict[str, Any]],
    handler: Callable[[ParsedRecord[Any]], Awaitable[Any]],
    callback: msgcluster.ClusterCallback | None,
    stats: Stats,
    *,
    duplicate: bool = False,
    lease_seconds: int = 300,
) -> None:
    if duplicate:
        copies = [
            {"Id": str(i), "MessageBody": m["Body"], "MessageAttributes": _copy_attr()}
            for i, m in enumerate(messages)
            if COPY_ATTRIBUTE not in m.get("MessageAttributes", {})
        ]
        if copies:
            await mc.sqs.send_message_batch(QueueUrl=url, Entries=copies)
    records = [mc.read_sqs_record(message) for message in messages]
    done = await mc.is_complete_batch(records)
    todo = [r for r, d in zip(records, done, strict=True) if not d]
    stats.skipped += len(records) - len(todo)
    ok: list[ParsedRecord[Any]] = []
    failed: set[str] = set()
    for record in todo:
        if record.type is RecordType.CLUSTER:
            continue
        try:
            await handler(record)
        except Exception as exc:
            stats.failed += 1
            failed.add(record.id)
            await mc.mark_failed(record, exc)
        else:
            ok.append(record)
    await mc.mark_complete_batch(ok)
    stats.handled += len(ok)
    if callback is not None:
        keys = {r.cluster_key for r in ok if r.cluster_key is not None}
        for key in keys:
            await mc.on_cluster_complete(key, callback, lease_seconds=lease_seconds)
        for record in todo:
            if record.type is RecordType.CLUSTER:
                stats.events += 1
                # A completion event is acknowledged only once the callback is
                # done: False means it runs (or failed) elsewhere; retry later.
                if not await mc.on_cluster_complete(record, callback, lease_seconds=lease_seconds):
                    failed.add(record.id)
    acked = [m for m in messages if m["MessageId"] not in failed]
    if acked:
        await mc.sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(acked)
            ],
        )


def _copy_attr() -> dict[str, Any]:
    return {COPY_ATTRIBUTE: {"DataType": "String", "StringValue": "1"}}


async def consume(
    mc: msgcluster.Client,
    url: str,
    handler: Callable[[ParsedRecord[Any]], Awaitable[Any]],
    *,
    callback: msgcluster.ClusterCallback | None = None,
    until: Callable[[], Awaitable[bool]],
    stats: Stats | None = None,
    duplicate: bool = False,
    visibility_timeout: int = 30,
    idle_check_every: int = 3,
    lease_seconds: int = 300,
) -> Stats:
    """Consume until ``until()`` is true (checked whenever the queue looks empty)."""
    stats = stats or Stats()
    idle = 0
    while True:
        response = await mc.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=visibility_timeout,
            MessageAttributeNames=["All"],
            AttributeNames=["All"],
        )
        messages = response.get("Messages", [])
        if not messages:
            idle += 1
            if idle % idle_check_every == 0 and await until():
                return stats
            await anyio.sleep(0.05)
            continue
        idle = 0
        await consume_batch(
            mc,
            url,
            messages,
            handler,
            callback,
            stats,
            duplicate=duplicate,
            lease_seconds=lease_seconds,
        )


async def cluster_done(mc: msgcluster.Client, key: msgcluster.RecordKey) -> bool:
    record = await mc.get_message_cluster(key, consistent_read=True)
    return (
        record.callback_status
        in (
            msgcluster.CallbackStatus.DONE,
            msgcluster.CallbackStatus.ERROR,
        )
        or record.cancelled
    )


def counting_request(request: Any) -> bool:
    """A fault-proxy matcher: a request that counts tasks, in either fan-in layout
    (layout 1: a counting TransactWriteItems, not a shard closing; layout 2: a
    bucket's ``ADD`` UpdateItem)."""
    try:
        body = request.json()
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    if request.operation == "TransactWriteItems":
        return "shardsOpen" not in str(body.get("TransactItems", []))
    return request.operation == "UpdateItem" and str(body.get("UpdateExpression", "")).startswith(
        "ADD #n :ids"
    )


def bucket_closing(request: Any) -> bool:
    """Layout 2: a full bucket's counts added to its shard (``ADD ... buckets :j``)."""
    if request.operation != "UpdateItem":
        return False
    try:
        body = request.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "buckets :j" in str(body.get("UpdateExpression", ""))
