"""dynamodb:// operations: every state change is one conditional write.

* send: one TransactWriteItems per call; each message ``Put`` is conditional
  on ``attribute_not_exists`` (and FIFO dedup records on "absent or
  expired"), so a retried request whose first attempt applied is recognised
  by its send token instead of writing twice.
* receive: a Query of one shard's ready index (``gsk < now``), then a
  conditional claim per candidate that writes a fresh lease token and moves
  ``gsk`` past now, so in-flight items are never read again.
* ack / nack / extend / dead-letter: conditional on the lease token.

FIFO queues index *groups* instead of messages (:mod:`._dynamodb_fifo`);
requests every part makes, and moves to the DLQ, are in :mod:`._dynamodb_base`.
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING, Any, cast

import anyio

from .._dynamo import batch_get
from .._errors import (
    AwsError,
    ConditionFailedError,
    ReceiptError,
    TransactionCanceledError,
)
from .._itemcodec import to_attr
from ._dynamodb_base import BatchContext, _n, _s, notify
from ._dynamodb_fifo import FifoStore
from ._dynamodb_keys import (
    TTL_ATTRIBUTE,
    Receipt,
    body_attrs,
    dedup_key,
    fifo_id,
    group_hash,
    group_shard,
    new_lease,
    now_us,
    partition,
    standard_id,
    time_key,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._context import Context
    from ._checks import PreparedMessage
    from ._contract import ReceivedMessage

__all__ = ["DynamoStore"]

_SLACK = 4  # candidates read beyond what is wanted: some are taken by others
_WINDOW = 4  # candidates read per wanted message, to keep consumers apart
_MAX_WINDOW = 100
# Concurrent sends to one FIFO group update its group item; DynamoDB cancels
# a transaction that meets another in progress on the same item
# (TransactionConflict), which botocore does not retry.
_CONFLICT_ROUNDS = 3


class DynamoStore(FifoStore):
    """The requests of one queue on one table (no validation: the queue did it)."""

    # Message keys a receive of this handle is claiming right now: others skip them.
    _claiming: set[str]

    # ------------------------------------------------------------------- send

    async def send(self, entries: Sequence[tuple[int, PreparedMessage]]) -> dict[int, str]:
        """Store messages; ``{index: message id}`` (a FIFO duplicate within the
        dedup window maps to the original message's id)."""
        now = now_us()
        token = new_lease()
        ids: dict[int, str] = {}
        planned: list[_Planned] = []
        seen_dedup: dict[str, int] = {}
        for index, message in entries:
            plan = self._plan(index, message, now, token)
            if plan.dedup_id is not None and plan.dedup_id in seen_dedup:
                plan.same_as = seen_dedup[plan.dedup_id]  # a repeat inside the call
            elif plan.dedup_id is not None:
                seen_dedup[plan.dedup_id] = index
            planned.append(plan)
        pending = [p for p in planned if p.same_as is None]
        conflicts = 0
        # Each round succeeds, resolves at least one entry, or (a few times)
        # waits out a transaction in progress on the same FIFO group item.
        while pending:
            try:
                await self.transact(self._send_ops(pending, now))
            except TransactionCanceledError as exc:
                if _only_conflicts(exc) and conflicts < _CONFLICT_ROUNDS:
                    conflicts += 1
                    await anyio.sleep(random.uniform(0.005, 0.05) * conflicts)
                    continue
                pending = self._resolve_send_conflicts(pending, exc, token, ids)
                continue
            ids.update({p.index: p.id for p in pending})
            pending = []
        for plan in planned:
            if plan.same_as is not None and plan.same_as in ids:
                ids[plan.index] = ids[plan.same_as]
        notify(self.config.table, self.config.queue)
        return ids

    def _plan(self, index: int, message: PreparedMessage, now: int, token: str) -> _Planned:
        config = self.config
        dedup_id = message.dedup_id
        if config.fifo and dedup_id is None:
            dedup_id = _sha256(message.body)  # content-based deduplication
        if config.fifo:
            group = message.group_id or ""
            ghash = group_hash(group)
            shard = group_shard(group, config.shards)
            message_id = fifo_id(shard, ghash)
            visible = now
        else:
            ghash, shard = "", random.randrange(config.shards)
            message_id = standard_id(shard)
            delay = config.delay if message.delay_seconds is None else message.delay_seconds
            visible = now + int(delay * 1_000_000)
        item: dict[str, Any] = {
            **self.key(message_id),
            "id": _s(message_id),
            "q": _s(config.queue),
            **body_attrs(message.body, config.compress_over),
            "sent": _n(now),
            "va": _n(visible),
            "rc": _n(0),
            "tok": _s(token),
        }
        if message.attributes:
            item["at"] = to_attr(message.attributes)
        if config.fifo:
            item["g"] = _s(message.group_id or "")
        else:
            item["gpk"] = _s(partition(config.queue, shard))
            item["gsk"] = _s(f"{time_key(visible)}#{message_id}")
        return _Planned(index, message_id, item, dedup_id, ghash, shard, token)

    def _send_ops(self, pending: list[_Planned], now: int) -> list[dict[str, Any]]:
        config = self.config
        ops: list[dict[str, Any]] = []
        groups: dict[tuple[int, str], int] = {}
        for plan in pending:
            plan.ops = []
            if plan.dedup_id is not None:
                expires = (now // 1_000_000) + int(config.dedup_window)
                dedup = {
                    **dedup_key(config.queue, plan.dedup_id),
                    "mid": _s(plan.id),
                    "tok": _s(plan.token),
                    TTL_ATTRIBUTE: _n(expires),
                }
                plan.ops.append(len(ops))
                ops.append(
                    {
                        "Put": {
                            "Item": dedup,
                            # Absent, or older than the window (TTL deletes lazily).
                            "ConditionExpression": "attribute_not_exists(pk) OR #exp < :now",
                            "ExpressionAttributeNames": {"#exp": TTL_ATTRIBUTE},
                            "ExpressionAttributeValues": {":now": _n(now // 1_000_000)},
                            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                        }
                    }
                )
            plan.ops.append(len(ops))
            ops.append(
                {
                    "Put": {
                        "Item": plan.item,
                        "ConditionExpression": "attribute_not_exists(pk)",
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                }
            )
            if config.fifo:
                groups[(plan.shard, plan.ghash)] = groups.get((plan.shard, plan.ghash), 0) + 1
        for (shard, ghash), count in groups.items():
            ops.append({"Update": self._group_touch(shard, ghash, now, count)})
        return ops

    def _resolve_send_conflicts(
        self,
        pending: list[_Planned],
        exc: TransactionCanceledError,
        token: str,
        ids: dict[int, str],
    ) -> list[_Planned]:
        reasons = exc.reasons
        failed = {i: r for i, r in enumerate(reasons) if r.get("Code") == "ConditionalCheckFailed"}
        if not failed:
            raise exc  # throttling, a conflicting transaction...: the caller retries
        remaining = []
        for plan in pending:
            hits = [failed[i] for i in plan.ops if i in failed]
            if not hits:
                remaining.append(plan)
                continue
            existing = hits[0].get("Item") or {}
            if existing.get("tok", {}).get("S") == token:
                ids[plan.index] = plan.id  # our own earlier attempt applied
            elif "mid" in existing:
                ids[plan.index] = existing["mid"]["S"]  # a duplicate within the window
            else:
                raise AwsError(
                    f"message id {plan.id} already exists ({self.resource})", code="IdCollision"
                )
        return remaining

    # ---------------------------------------------------------------- receive

    async def receive(self, wanted: int, visibility: float) -> list[ReceivedMessage]:
        if self.config.fifo:
            return await self._receive_fifo(wanted, visibility)
        out: list[ReceivedMessage] = []
        for shard in self._shard_order():
            if len(out) >= wanted:
                break
            now = now_us()
            # Read a few batches deep: concurrent receives of this handle
            # (a worker's receivers, consumer tasks) then take disjoint
            # candidates, and other processes' picks rarely collide with
            # ours. A lost claim cancels a whole batch transaction, so a
            # collision costs a request; a deeper page of keys costs almost
            # nothing (keys-only index).
            window = min(_MAX_WINDOW, _WINDOW * wanted + _SLACK)
            candidates = [
                c
                for c in await self.ready(shard, window, now)
                if c["rk"]["S"] not in self._claiming
            ]
            random.shuffle(candidates)
            while candidates and len(out) < wanted:
                batch = candidates[: wanted - len(out)]
                del candidates[: len(batch)]
                taken = {c["rk"]["S"] for c in batch}
                self._claiming |= taken
                try:
                    out.extend(await self._claim_all(batch, visibility))
                finally:
                    self._claiming -= taken
        return out

    def _claim_op(self, candidate: dict[str, Any], lease: str, until: int) -> dict[str, Any]:
        """Take one standard message: only if nobody changed it since the
        index showed it (``gsk`` moves with every state change)."""
        message_id = candidate["rk"]["S"][2:]
        return {
            "Key": {"pk": candidate["pk"], "rk": candidate["rk"]},
            "UpdateExpression": "SET lease = :l, gsk = :k, va = :va, rc = rc + :one",
            "ConditionExpression": "gsk = :seen",
            "ExpressionAttributeValues": {
                ":l": _s(lease),
                ":k": _s(f"{time_key(until)}#{message_id}"),
                ":va": _n(until),
                ":one": _n(1),
                ":seen": candidate["gsk"],
            },
        }

    async def _claim_all(
        self, candidates: list[dict[str, Any]], visibility: float
    ) -> list[ReceivedMessage]:
        """Claim candidates under one new lease. One message: one UpdateItem
        returning the item. Several: one TransactWriteItems (candidates taken
        by others meanwhile are dropped and the rest retried), then one
        consistent BatchGetItem for the bodies: 2 requests instead of N."""
        now = now_us()
        until = now + int(visibility * 1_000_000)
        lease = new_lease()
        if len(candidates) == 1:
            op = self._claim_op(candidates[0], lease, until)
            try:
                response = await self.call("update_item", **op, ReturnValues="ALL_NEW")
                items = [response["Attributes"]]
            except ConditionFailedError:
                items = []  # another consumer took it first
        else:
            items = await self._claim_many(candidates, lease, until)
        out = []
        for item in items:
            if self._spent(item):
                await self.move_to_dlq(item, "max receives exceeded", condition_lease=lease)
            else:
                out.append(self._received(item, lease))
        return out

    async def _claim_many(
        self, candidates: list[dict[str, Any]], lease: str, until: int
    ) -> list[dict[str, Any]]:
        pending = candidates
        for _ in range(len(candidates)):
            try:
                await self.transact([{"Update": self._claim_op(c, lease, until)} for c in pending])
                break
            except TransactionCanceledError as exc:
                lost = {
                    i
                    for i, reason in enumerate(exc.reasons)
                    if reason.get("Code") in ("ConditionalCheckFailed", "TransactionConflict")
                }
                if not lost:
                    raise
                pending = [c for i, c in enumerate(pending) if i not in lost]
                if not pending:
                    return []
        else:
            return []
        keys = [(c["pk"]["S"], c["rk"]["S"]) for c in pending]
        context = cast("Context", BatchContext(self.client, self.config.table))
        found = await batch_get(context, keys, consistent_read=True)
        # Ours unless it was already taken again (a zero visibility timeout).
        return [item for item in found.values() if item.get("lease", {}).get("S") == lease]

    # ------------------------------------------------------- ack, nack, extend

    async def ack(self, receipts: Sequence[Receipt]) -> dict[str, ReceiptError | None]:
        """Delete each message if its lease still holds; ``{id: error}``. A
        message already gone is acked (idempotent); one held by another lease
        is a ReceiptError."""

        def op(receipt: Receipt) -> dict[str, Any]:
            return {
                "Delete": {
                    "Key": self.key(receipt.id),
                    "ConditionExpression": "lease = :l",
                    "ExpressionAttributeValues": {":l": _s(receipt.lease)},
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }

        outcome = await self._conditional(receipts, op, gone_ok=True)
        await self._settle_groups(receipts)
        return outcome

    async def change_visibility(
        self, changes: Sequence[tuple[Receipt, float]]
    ) -> dict[str, ReceiptError | None]:
        """Visible again ``seconds`` from now (nack, extend), for messages still
        in flight under their lease; the lease stays (a later receive replaces it)."""
        now = now_us()
        until = {receipt.id: now + int(seconds * 1_000_000) for receipt, seconds in changes}

        def op(receipt: Receipt) -> dict[str, Any]:
            at = until[receipt.id]
            values: dict[str, Any] = {":l": _s(receipt.lease), ":now": _n(now), ":va": _n(at)}
            expression = "SET va = :va"
            if not self.config.fifo:
                expression += ", gsk = :k"
                values[":k"] = _s(f"{time_key(at)}#{receipt.id}")
            return {
                "Update": {
                    "Key": self.key(receipt.id),
                    "UpdateExpression": expression,
                    "ConditionExpression": "lease = :l AND va > :now",
                    "ExpressionAttributeValues": values,
                }
            }

        receipts = [receipt for receipt, _ in changes]
        outcome = await self._conditional(receipts, op, gone_ok=False)
        await self._settle_groups(receipts)
        return outcome

    async def _conditional(
        self,
        receipts: Sequence[Receipt],
        op: Callable[[Receipt], dict[str, Any]],
        *,
        gone_ok: bool,
    ) -> dict[str, ReceiptError | None]:
        """Apply one conditional write per receipt: one request (a transaction
        for several); a failed condition resolves that entry, the rest go again."""
        outcome: dict[str, ReceiptError | None] = {}
        pending = list({r.id: r for r in receipts}.values())
        conflicts = 0
        while pending:
            if len(pending) == 1:
                await self._conditional_one(pending[0], op(pending[0]), outcome, gone_ok)
                break
            try:
                await self.transact([op(r) for r in pending])
            except TransactionCanceledError as exc:
                if _only_conflicts(exc) and conflicts < _CONFLICT_ROUNDS:
                    # A claim in progress on one of them: its outcome decides.
                    conflicts += 1
                    await anyio.sleep(random.uniform(0.005, 0.05) * conflicts)
                    continue
                pending = _resolve_conflicts(pending, exc, outcome, gone_ok)
                continue
            outcome.update({r.id: None for r in pending})
            pending = []
        return outcome

    async def _conditional_one(
        self,
        receipt: Receipt,
        op: dict[str, Any],
        outcome: dict[str, ReceiptError | None],
        gone_ok: bool,
    ) -> None:
        ((kind, request),) = op.items()
        operation = "delete_item" if kind == "Delete" else "update_item"
        request = {**request, "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        try:
            await self.call(operation, **request)
        except ConditionFailedError as exc:
            outcome[receipt.id] = None if gone_ok and not exc.item else _stale(receipt.id)
        else:
            outcome[receipt.id] = None


class _Planned:
    """One message of a send on its way into the transaction."""

    __slots__ = ("dedup_id", "ghash", "id", "index", "item", "ops", "same_as", "shard", "token")

    def __init__(
        self,
        index: int,
        message_id: str,
        item: dict[str, Any],
        dedup_id: str | None,
        ghash: str,
        shard: int,
        token: str,
    ) -> None:
        self.index = index
        self.id = message_id
        self.item = item
        self.dedup_id = dedup_id
        self.ghash = ghash
        self.shard = shard
        self.token = token
        self.same_as: int | None = None
        self.ops: list[int] = []  # positions of this message's ops in the transaction


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _only_conflicts(exc: TransactionCanceledError) -> bool:
    codes = {r.get("Code") for r in exc.reasons} - {"None", None}
    return codes == {"TransactionConflict"}


def _resolve_conflicts(
    pending: list[Receipt],
    exc: TransactionCanceledError,
    outcome: dict[str, ReceiptError | None],
    gone_ok: bool,
) -> list[Receipt]:
    """Entries whose condition failed get their outcome; the rest are returned."""
    remaining = []
    for receipt, reason in zip(pending, exc.reasons, strict=False):
        if reason.get("Code") != "ConditionalCheckFailed":
            remaining.append(receipt)
        elif gone_ok and "Item" not in reason:
            outcome[receipt.id] = None  # already gone: acks are idempotent
        else:
            outcome[receipt.id] = _stale(receipt.id)
    if len(remaining) == len(pending):
        raise exc  # no condition failed: throttled or conflicting; the caller retries
    return remaining


def _stale(message_id: str) -> ReceiptError:
    return ReceiptError(
        f"message {message_id}: this delivery's lease no longer holds (the message was "
        "received again since)",
        message_id=message_id,
    )
