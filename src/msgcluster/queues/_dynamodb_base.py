"""dynamodb:// store basics shared by its parts: settings, requests,
waking long polls, what a delivery returns, and moving to the DLQ.

Every state change of a message is one conditional write (or one
transaction of them); the pieces are split by concern: this module (common
requests, dead letters), :mod:`._dynamodb_fifo` (groups), and
:mod:`._dynamodb_store` (send, receive, ack and visibility).
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import msgspec

from .._aws_errors import aws_errors
from .._errors import ConditionFailedError, TransactionCanceledError
from ._contract import ReceivedMessage
from ._dynamodb_keys import (
    INDEX_NAME,
    Receipt,
    attributes_of,
    decode_body,
    encode_receipt,
    message_key,
    now_us,
    partition,
    shard_of,
    time_key,
)

__all__ = ["BatchContext", "StoreBase", "StoreConfig", "forget_waiter", "notify", "waiter"]

_WAITERS: dict[tuple[str, str], set[anyio.Event]] = {}


def waiter(table: str, queue: str) -> anyio.Event:
    """An event set when this process sends to the queue (long polls wake at once)."""
    event = anyio.Event()
    _WAITERS.setdefault((table, queue), set()).add(event)
    return event


def forget_waiter(table: str, queue: str, event: anyio.Event) -> None:
    _WAITERS.get((table, queue), set()).discard(event)


def notify(table: str, queue: str) -> None:
    for event in _WAITERS.pop((table, queue), set()):
        event.set()


class BatchContext:
    """What the batch helpers of :mod:`msgcluster._dynamo` need of a Context."""

    def __init__(self, client: Any, table: str) -> None:
        self.ddb = client
        self.table = table
        self.limiter = anyio.CapacityLimiter(4)


class StoreConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One handle's settings (defaults applied)."""

    table: str
    queue: str
    fifo: bool
    shards: int
    visibility_timeout: float
    delay: float
    max_receives: int | None
    dlq: str | None
    dlq_shards: int
    content_based_dedup: bool
    compress_over: int
    dedup_window: float
    max_body_bytes: int


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int | float) -> dict[str, str]:
    return {"N": str(value)}


class StoreBase:
    """Requests every part of the store makes (no validation: the queue did it)."""

    def __init__(self, client: Any, config: StoreConfig) -> None:
        self.client = client
        self.config = config
        self.resource = f"dynamodb://{config.table}?queue={config.queue}"
        self._claiming: set[str] = set()

    # ---------------------------------------------------------------- helpers

    def key(self, message_id: str, queue: str | None = None) -> dict[str, Any]:
        if queue is None or queue == self.config.queue:
            return message_key(self.config.queue, self.config.shards, message_id)
        return message_key(queue, self.config.dlq_shards, message_id)

    async def call(self, operation: str, **request: Any) -> Any:
        with aws_errors(resource=self.resource):
            return await getattr(self.client, operation)(TableName=self.config.table, **request)

    async def transact(self, ops: list[dict[str, Any]]) -> None:
        for op in ops:
            next(iter(op.values()))["TableName"] = self.config.table
        with aws_errors(resource=self.resource):
            await self.client.transact_write_items(TransactItems=ops)

    async def update(self, key: dict[str, Any], expression: str, **request: Any) -> Any:
        """UpdateItem; None when its condition failed."""
        try:
            return await self.call("update_item", Key=key, UpdateExpression=expression, **request)
        except ConditionFailedError:
            return None

    # ---------------------------------------------------------------- receive

    def _shard_order(self) -> list[int]:
        # A random starting shard spreads consumers over shards.
        shards = self.config.shards
        start = random.randrange(shards)
        return [(start + i) % shards for i in range(shards)]

    async def ready(self, shard: int, limit: int, now: int) -> list[dict[str, Any]]:
        """Keys of items visible at ``now`` in one shard, oldest first."""
        response = await self.call(
            "query",
            IndexName=INDEX_NAME,
            KeyConditionExpression="gpk = :p AND gsk < :b",
            ExpressionAttributeValues={
                ":p": _s(partition(self.config.queue, shard)),
                ":b": _s(time_key(now + 1)),
            },
            Limit=limit,
        )
        items: list[dict[str, Any]] = response.get("Items", [])
        return items

    def _spent(self, item: dict[str, Any]) -> bool:
        """Delivered ``max_receives`` times already: to the DLQ instead (as SQS)."""
        limit = self.config.max_receives
        return limit is not None and self.config.dlq is not None and int(item["rc"]["N"]) > limit

    def _received(self, item: dict[str, Any], lease: str) -> ReceivedMessage:
        message_id = item["id"]["S"]
        receipt = Receipt(self.config.table, self.config.queue, message_id, lease)
        group = item.get("g", {}).get("S")
        return ReceivedMessage(
            id=message_id,
            body=decode_body(item, self.config.max_body_bytes),
            receive_count=int(item["rc"]["N"]),
            attributes=attributes_of(item),
            group_id=group,
            sent_at=int(item["sent"]["N"]) / 1_000_000,
            receipt=encode_receipt(receipt),
        )

    # ------------------------------------------------------------ dead letters

    def dead_letter_item(self, item: dict[str, Any], reason: str, now: int) -> dict[str, Any]:
        """The DLQ's copy: same id, body and attributes; ready, receive count 0."""
        assert self.config.dlq is not None
        dlq = self.config.dlq
        message_id = item["id"]["S"]
        copied = {
            name: value
            for name, value in item.items()
            if name in {"id", "b", "z", "at", "g", "sent"}
        }
        shard = shard_of(message_id) % self.config.dlq_shards
        return {
            **self.key(message_id, dlq),
            **copied,
            "q": _s(dlq),
            "va": _n(now),
            "rc": _n(0),
            "gpk": _s(partition(dlq, shard)),
            "gsk": _s(f"{time_key(now)}#{message_id}"),
            "src": _s(self.config.queue),
            "why": _s(reason[:1000] or "dead-lettered"),
            "dl": _n(now),
        }

    async def move_to_dlq(
        self,
        item: dict[str, Any],
        reason: str,
        *,
        condition_lease: str | None = None,
        condition_rc: int | None = None,
    ) -> bool:
        """Move one item to the DLQ atomically (delete here, put there); False
        if the item changed meanwhile (the condition failed)."""
        now = now_us()
        delete: dict[str, Any] = {"Key": {"pk": item["pk"], "rk": item["rk"]}}
        if condition_lease is not None:
            delete["ConditionExpression"] = "lease = :l"
            delete["ExpressionAttributeValues"] = {":l": _s(condition_lease)}
        elif condition_rc is not None:
            delete["ConditionExpression"] = "rc = :rc"
            delete["ExpressionAttributeValues"] = {":rc": _n(condition_rc)}
        else:
            delete["ConditionExpression"] = "attribute_exists(pk)"
        put = {
            "Item": self.dead_letter_item(item, reason, now),
            "ConditionExpression": "attribute_not_exists(pk)",
        }
        try:
            await self.transact([{"Delete": delete}, {"Put": put}])
        except TransactionCanceledError as exc:
            codes = [r.get("Code") for r in exc.reasons]
            if codes[:1] == ["ConditionalCheckFailed"]:
                return False
            if len(codes) > 1 and codes[1] == "ConditionalCheckFailed":
                # Already in the DLQ (an earlier attempt applied): just delete here.
                await self.call("delete_item", **delete)
                return True
            raise
        if self.config.dlq is not None:
            notify(self.config.table, self.config.dlq)
        return True
