"""FIFO groups of dynamodb:// queues.

The ready index holds one item per *group* (``rk = g#<group hash>``) rather
than per message. Claiming it writes a lease that blocks the whole group;
the group's first messages are then read in order from the base table
(their ``rk`` sorts by a fixed-width send sequence) and leased with the same
token. Once none of a lease's messages is in flight (acked, released, moved)
the group goes back into the index; a lease that expires expires the
group's ``gsk`` with it, so the next receive redelivers from the head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import ConditionFailedError, TransactionCanceledError
from ._dynamodb_base import StoreBase, _n, _s
from ._dynamodb_keys import (
    group_key,
    group_prefix,
    new_lease,
    now_us,
    partition,
    shard_of,
    time_key,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._contract import ReceivedMessage
    from ._dynamodb_keys import Receipt

__all__ = ["FifoStore"]

_SLACK = 4  # groups read beyond what is wanted: some are taken by others
_GROUP_PREFIX_READ = 11  # one lease delivers at most 10 messages: a group's prefix


class FifoStore(StoreBase):
    """Group operations (used by FIFO queues, and by sends and redrives to them)."""

    def _group_touch(self, shard: int, ghash: str, now: int, count: int) -> dict[str, Any]:
        """Put a group in the ready index unless it is there (leased groups
        keep their future ``gsk``); ``sc`` counts sends, so an empty group is
        deleted only if nothing was sent since it was claimed."""
        return {
            "Key": group_key(self.config.queue, shard, ghash),
            "UpdateExpression": "SET gpk = :p, gsk = if_not_exists(gsk, :k) ADD sc :c",
            "ExpressionAttributeValues": {
                ":p": _s(partition(self.config.queue, shard)),
                ":k": _s(f"{time_key(now)}#g#{ghash}"),
                ":c": _n(count),
            },
        }

    async def _receive_fifo(self, wanted: int, visibility: float) -> list[ReceivedMessage]:
        out: list[ReceivedMessage] = []
        for shard in self._shard_order():
            if len(out) >= wanted:
                break
            for candidate in await self.ready(shard, wanted - len(out) + _SLACK, now_us()):
                if len(out) >= wanted:
                    break
                out.extend(await self._take_group(shard, candidate, wanted - len(out), visibility))
        return out

    async def _take_group(
        self, shard: int, candidate: dict[str, Any], most: int, visibility: float
    ) -> list[ReceivedMessage]:
        """Lease a group (blocking it), then lease its first messages in order."""
        now = now_us()
        until = now + int(visibility * 1_000_000)
        lease = new_lease()
        ghash = candidate["rk"]["S"][2:]
        claimed = await self.update(
            {"pk": candidate["pk"], "rk": candidate["rk"]},
            "SET lease = :l, gsk = :k",
            ConditionExpression="gsk = :seen",
            ExpressionAttributeValues={
                ":l": _s(lease),
                ":k": _s(f"{time_key(until)}#g#{ghash}"),
                ":seen": candidate["gsk"],
            },
            ReturnValues="ALL_NEW",
        )
        if claimed is None:
            return []
        items = await self.group_head(shard, ghash, most)
        members: list[dict[str, Any]] = []
        delayed_until: int | None = None
        for item in items:
            if int(item["va"]["N"]) > now:
                delayed_until = int(item["va"]["N"])  # retried with a delay: nothing overtakes
                break
            if self._spent({"rc": _n(int(item["rc"]["N"]) + 1)}):
                await self.move_to_dlq(
                    item, "max receives exceeded", condition_rc=int(item["rc"]["N"])
                )
            else:
                members.append(item)
        out = await self._lease_members(members, lease, until)
        if not out:
            await self._give_back_group(shard, ghash, lease, claimed, items, most, delayed_until)
        return out

    async def group_head(
        self, shard: int, ghash: str, limit: int, projection: str | None = None
    ) -> list[dict[str, Any]]:
        request: dict[str, Any] = {
            "KeyConditionExpression": "pk = :p AND begins_with(rk, :r)",
            "ExpressionAttributeValues": {
                ":p": _s(partition(self.config.queue, shard)),
                ":r": _s(group_prefix(shard, ghash)),
            },
            "ConsistentRead": True,
            "Limit": limit,
        }
        if projection:
            request["ProjectionExpression"] = projection
        response = await self.call("query", **request)
        items: list[dict[str, Any]] = response.get("Items", [])
        return items

    async def _lease_members(
        self, items: list[dict[str, Any]], lease: str, until: int
    ) -> list[ReceivedMessage]:
        """Lease a group's messages (in order) under the group's lease: one
        request (a transaction for several). ``rc`` is each item's version."""

        def op(item: dict[str, Any]) -> dict[str, Any]:
            seen = int(item["rc"]["N"])
            return {
                "Key": {"pk": item["pk"], "rk": item["rk"]},
                "UpdateExpression": "SET lease = :l, va = :va, rc = :rc",
                "ConditionExpression": "rc = :seen",
                "ExpressionAttributeValues": {
                    ":l": _s(lease),
                    ":va": _n(until),
                    ":rc": _n(seen + 1),
                    ":seen": _n(seen),
                },
            }

        pending = items
        while len(pending) > 1:
            try:
                await self.transact([{"Update": op(item)} for item in pending])
                break
            except TransactionCanceledError as exc:
                # Deleted meanwhile (a stale holder acked it): deliver the rest.
                lost = {
                    i
                    for i, r in enumerate(exc.reasons)
                    if r.get("Code") == "ConditionalCheckFailed"
                }
                if not lost:
                    raise
                pending = [item for i, item in enumerate(pending) if i not in lost]
        else:
            if pending and await self.update(**_update_args(op(pending[0]))) is None:
                pending = []
        return [
            self._received({**item, "rc": _n(int(item["rc"]["N"]) + 1)}, lease) for item in pending
        ]

    async def _give_back_group(
        self,
        shard: int,
        ghash: str,
        lease: str,
        claimed: dict[str, Any],
        items: list[dict[str, Any]],
        most: int,
        delayed_until: int | None,
    ) -> None:
        """A claimed group that delivered nothing: delete it if empty (unless
        something was sent since the claim), else put it back in the index."""
        if not items and delayed_until is None:
            seen_sends = claimed["Attributes"].get("sc", _n(0))
            try:
                await self.call(
                    "delete_item",
                    Key=group_key(self.config.queue, shard, ghash),
                    ConditionExpression="lease = :l AND sc = :sc",
                    ExpressionAttributeValues={":l": _s(lease), ":sc": seen_sends},
                )
                return
            except ConditionFailedError:
                pass
        await self.release_group(shard, ghash, lease, delayed_until or now_us())

    async def release_group(self, shard: int, ghash: str, lease: str, at: int) -> None:
        await self.update(
            group_key(self.config.queue, shard, ghash),
            "SET gsk = :k REMOVE lease",
            ConditionExpression="lease = :l",
            ExpressionAttributeValues={":k": _s(f"{time_key(at)}#g#{ghash}"), ":l": _s(lease)},
        )

    async def settle_group(self, message_id: str, lease: str) -> None:
        """After an ack/visibility change/move under ``lease``: the group stays
        blocked until the last of that lease's messages becomes visible, and
        is released at once when none is in flight (held ones are a prefix)."""
        shard, ghash = shard_of(message_id) % self.config.shards, message_id.split(".")[1]
        head = await self.group_head(shard, ghash, _GROUP_PREFIX_READ, "lease, va")
        now = now_us()
        held = [
            int(item["va"]["N"])
            for item in head
            if item.get("lease", {}).get("S") == lease and int(item["va"]["N"]) > now
        ]
        if held:
            await self.update(
                group_key(self.config.queue, shard, ghash),
                "SET gsk = :k",
                ConditionExpression="lease = :l",
                ExpressionAttributeValues={
                    ":k": _s(f"{time_key(max(held))}#g#{ghash}"),
                    ":l": _s(lease),
                },
            )
        else:
            await self.release_group(shard, ghash, lease, now)

    async def _settle_groups(self, receipts: Sequence[Receipt]) -> None:
        if self.config.fifo:
            by_group = {(r.id.split(".")[1], r.lease): r.id for r in receipts}
            for (_, lease), message_id in by_group.items():
                await self.settle_group(message_id, lease)


def _update_args(op: dict[str, Any]) -> dict[str, Any]:
    """An ``Update`` op of a transaction as keyword arguments of :meth:`DynamoStore.update`."""
    args = dict(op)
    return {"key": args.pop("Key"), "expression": args.pop("UpdateExpression"), **args}
