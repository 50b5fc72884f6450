"""QueueAdmin for dynamodb://: inspection and repair by message id.

Listing, counting and purging Query the queue's shard partitions page by
page (``pk = <queue>#<shard>``, ``rk`` beginning ``m#``): their cost grows
with the queue, as an operator's look at every message must. Repairs are
conditional writes on the item's receive count (its version), so they never
undo a delivery that happened in between.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from .._dynamo import batch_write
from .._errors import ConditionFailedError, TransactionCanceledError
from ._admin import MessageInfo, QueueStats
from ._dynamodb_base import BatchContext
from ._dynamodb_keys import (
    attributes_of,
    decode_body,
    new_lease,
    now_us,
    partition,
    shard_of,
    time_key,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .._context import Context
    from ._dynamodb_store import DynamoStore

__all__ = ["DynamoAdminMixin"]

_OPERATOR = "dead-lettered by an operator"


class DynamoAdminMixin:
    """The :class:`~msgcluster.queues._admin.QueueAdmin` half of DynamoQueue."""

    @property
    def _store(self) -> DynamoStore:  # provided by DynamoQueue
        raise NotImplementedError

    # ----------------------------------------------------------- iteration

    def _where(self, dead_letters: bool) -> tuple[str | None, int]:
        config = self._store.config
        if dead_letters:
            return config.dlq, config.dlq_shards
        return config.queue, config.shards

    async def _pages(
        self, dead_letters: bool, page_size: int, *, prefix: str = "m#", projection: str = ""
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every item of the queue (or its dead letters) with ``rk`` starting
        ``prefix``, shard partition by partition, page by page."""
        queue, shards = self._where(dead_letters)
        if queue is None:
            return
        store = self._store
        for shard in range(shards):
            request: dict[str, Any] = {
                "KeyConditionExpression": "pk = :p AND begins_with(rk, :m)",
                "ExpressionAttributeValues": {
                    ":p": {"S": partition(queue, shard)},
                    ":m": {"S": prefix},
                },
                "ConsistentRead": True,
                "Limit": page_size,
            }
            if dead_letters:  # a DLQ may serve several queues
                request["FilterExpression"] = "src = :q"
                request["ExpressionAttributeValues"][":q"] = {"S": store.config.queue}
            if projection:
                request["ProjectionExpression"] = projection
            while True:
                response = await store.call("query", **request)
                items: list[dict[str, Any]] = response.get("Items", [])
                if items:
                    yield items
                if "LastEvaluatedKey" not in response:
                    break
                request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _info(self, item: dict[str, Any], now: int) -> MessageInfo:
        visible_at = int(item["va"]["N"])
        if "src" in item:
            state = "dead_letter"
        elif visible_at > now and "lease" in item:
            state = "in_flight"
        elif visible_at > now:
            state = "delayed"
        else:
            state = "ready"
        return MessageInfo(
            id=item["id"]["S"],
            state=state,
            body=decode_body(item, self._store.config.max_body_bytes),
            receive_count=int(item["rc"]["N"]),
            sent_at=int(item["sent"]["N"]) / 1_000_000,
            visible_at=visible_at / 1_000_000,
            group_id=item.get("g", {}).get("S"),
            attributes=attributes_of(item),
            dead_letter_reason=item.get("why", {}).get("S"),
        )

    async def list_messages(
        self, *, dead_letters: bool = False, page_size: int = 100
    ) -> AsyncIterator[MessageInfo]:
        """Every message (or dead letter), page by page."""
        async for page in self._pages(dead_letters, max(1, page_size)):
            now = now_us()
            for item in page:
                yield self._info(item, now)

    # --------------------------------------------------------------- stats

    async def _count(self, dead_letters: bool) -> QueueStats:
        queue, _ = self._where(dead_letters)
        counts = {"ready": 0, "in_flight": 0, "delayed": 0, "dead_letter": 0}
        oldest: int | None = None
        now = now_us()
        projection = "va, sent, lease, src"
        async for page in self._pages(dead_letters, 1000, projection=projection):
            for item in page:
                visible_at = int(item["va"]["N"])
                state = (
                    "dead_letter"
                    if dead_letters
                    else "in_flight"
                    if visible_at > now and "lease" in item
                    else "delayed"
                    if visible_at > now
                    else "ready"
                )
                counts[state] += 1
                if state in ("ready", "dead_letter"):
                    sent = int(item["sent"]["N"])
                    oldest = sent if oldest is None else min(oldest, sent)
        return QueueStats(
            name=queue or "",
            visible=counts["ready"] + counts["dead_letter"],
            in_flight=counts["in_flight"],
            delayed=counts["delayed"],
            oldest_age_seconds=None if oldest is None else max(0.0, (now - oldest) / 1e6),
            fifo=self._store.config.fifo and not dead_letters,
        )

    async def stats(self) -> QueueStats:
        """Counts of this queue, with the number of its dead letters."""
        own = await self._count(False)
        dead = await self._count(True)
        return QueueStats(
            name=own.name,
            visible=own.visible,
            in_flight=own.in_flight,
            delayed=own.delayed,
            dead_letters=dead.visible,
            oldest_age_seconds=own.oldest_age_seconds,
            fifo=own.fifo,
        )

    async def dead_letter_stats(self) -> QueueStats:
        return await self._count(True)

    # ------------------------------------------------------- one message

    async def _get(self, message_id: str, dead_letters: bool) -> dict[str, Any] | None:
        queue, _ = self._where(dead_letters)
        if queue is None:
            return None
        try:
            key = self._store.key(message_id, queue)
        except ValueError:
            return None  # not one of our ids
        found = await self._store.call("get_item", Key=key, ConsistentRead=True)
        item: dict[str, Any] | None = found.get("Item")
        if item is not None and dead_letters and item.get("src", {}).get("S") != self.name_:
            return None
        return item

    @property
    def name_(self) -> str:
        return self._store.config.queue

    async def get_message(self, message_id: str) -> MessageInfo | None:
        """One message by id (also looked up among dead letters); None if absent."""
        for dead_letters in (False, True):
            item = await self._get(message_id, dead_letters)
            if item is not None:
                return self._info(item, now_us())
        return None

    async def delete_message(self, message_id: str) -> bool:
        """Remove it whatever its state; False if it was not there."""
        store = self._store
        for dead_letters in (False, True):
            item = await self._get(message_id, dead_letters)
            if item is None:
                continue
            response = await store.call(
                "delete_item", Key={"pk": item["pk"], "rk": item["rk"]}, ReturnValues="ALL_OLD"
            )
            old = response.get("Attributes")
            if old is not None:
                await self._after_change(old)
                return True
        return False

    async def _after_change(self, old: dict[str, Any]) -> None:
        """A FIFO message that was held by a lease: unblock its group if due."""
        lease = old.get("lease", {}).get("S")
        if self._store.config.fifo and lease and "src" not in old:
            await self._store.settle_group(old["id"]["S"], lease)

    async def _rewrite(self, item: dict[str, Any], receive_count: int) -> bool:
        """Ready now with ``receive_count``, no lease (unless changed meanwhile)."""
        store = self._store
        now = now_us()
        values: dict[str, Any] = {
            ":rc": {"N": str(receive_count)},
            ":va": {"N": str(now)},
            ":seen": item["rc"],
        }
        expression = "SET rc = :rc, va = :va"
        if not store.config.fifo:
            expression += ", gsk = :k"
            values[":k"] = {"S": f"{time_key(now)}#{item['id']['S']}"}
        response = await store.update(
            {"pk": item["pk"], "rk": item["rk"]},
            expression + " REMOVE lease",
            ConditionExpression="rc = :seen",
            ExpressionAttributeValues=values,
        )
        if response is None:
            return False
        await self._after_change(item)
        return True

    async def fail_message(self, message_id: str) -> bool:
        """A failed receive: visible again with receive count + 1, or to the
        DLQ if that reaches the queue's max receives."""
        item = await self._get(message_id, False)
        if item is None:
            return False
        count = int(item["rc"]["N"]) + 1
        limit = self._store.config.max_receives
        if limit is not None and count >= limit:
            return await self._move(item, "failed by an operator")
        return await self._rewrite(item, count)

    async def dead_letter_message(self, message_id: str, reason: str = "") -> bool:
        item = await self._get(message_id, False)
        if item is None or self._store.config.dlq is None:
            return False
        return await self._move(item, reason or _OPERATOR)

    async def _move(self, item: dict[str, Any], reason: str) -> bool:
        moved = await self._store.move_to_dlq(item, reason, condition_rc=int(item["rc"]["N"]))
        if moved:
            await self._after_change(item)
        return moved

    async def reset_message(self, message_id: str) -> bool:
        """Ready again now, as if just sent (receive count 0, no lease)."""
        item = await self._get(message_id, False)
        return item is not None and await self._rewrite(item, 0)

    # -------------------------------------------------------------- bulk

    async def purge(self, *, dead_letters: bool = False) -> int:
        """Delete every message (or every dead letter of this queue); how many."""
        store = self._store
        context = cast("Context", BatchContext(store.client, store.config.table))
        count = 0
        prefixes = ["m#"] + (["g#"] if store.config.fifo and not dead_letters else [])
        for prefix in prefixes:
            async for page in self._pages(dead_letters, 100, prefix=prefix, projection="pk, rk"):
                requests = [{"DeleteRequest": {"Key": item}} for item in page]
                failures = await batch_write(context, requests)
                if failures:
                    raise failures[0].error
                count += len(page) if prefix == "m#" else 0
        return count

    async def redrive(self, message_id: str | None = None) -> int:
        """Move one dead letter (or all of this queue's) back, ready, receive count 0."""
        if message_id is not None:
            item = await self._get(message_id, True)
            return int(item is not None and await self._redrive_one(item))
        moved = 0
        async for page in self._pages(True, 100):
            for item in page:
                moved += await self._redrive_one(item)
        return moved

    async def _redrive_one(self, item: dict[str, Any]) -> bool:
        store = self._store
        config = store.config
        now = now_us()
        message_id = item["id"]["S"]
        back = {
            **store.key(message_id),
            **{k: v for k, v in item.items() if k in {"id", "b", "z", "at", "g", "sent"}},
            "q": {"S": config.queue},
            "va": {"N": str(now)},
            "rc": {"N": "0"},
            "tok": {"S": new_lease()},
        }
        ops: list[dict[str, Any]] = [
            {
                "Delete": {
                    "Key": {"pk": item["pk"], "rk": item["rk"]},
                    "ConditionExpression": "attribute_exists(pk)",
                }
            },
            {"Put": {"Item": back, "ConditionExpression": "attribute_not_exists(pk)"}},
        ]
        shard = shard_of(message_id) % config.shards
        if config.fifo:
            ghash = message_id.split(".")[1]
            ops.append({"Update": store._group_touch(shard, ghash, now, 1)})
        else:
            back["gpk"] = {"S": partition(config.queue, shard)}
            back["gsk"] = {"S": f"{time_key(now)}#{message_id}"}
        try:
            await store.transact(ops)
        except (TransactionCanceledError, ConditionFailedError):
            return False  # redriven (or deleted) by someone else meanwhile
        return True
