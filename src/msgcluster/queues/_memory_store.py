"""The state of one named memory:// queue, shared by every handle opened on it.

Everything here is synchronous: an operation runs to completion between two
awaits of the event loop, so no locks are needed (one event loop thread).
Time comes from the queue's clock; the handle in :mod:`._memory` does the
waiting.

Standard queues keep visible messages in a deque and the invisible ones
(delayed, in flight) in a heap keyed by the time they become visible. Entries
are invalidated lazily (each message carries a ``slot`` number; an entry
whose slot is old is skipped) and both structures are compacted when stale
entries outnumber live messages, so memory stays proportional to the
messages held. FIFO queues keep one deque per message group instead, in send
order, and scan groups on receive.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import time
import uuid
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

import msgspec

from .._errors import ReceiptError, ValidationError
from ._contract import Capabilities, ReceivedMessage

if TYPE_CHECKING:
    from collections.abc import Callable

    import anyio

    from ._checks import PreparedMessage

__all__ = ["DEDUP_WINDOW_SECONDS", "MemoryConfig", "MemoryStore", "memory_capabilities"]

DEDUP_WINDOW_SECONDS = 300.0
MAX_VISIBILITY_SECONDS = 43_200.0


class MemoryConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A memory queue's settings (the URI's parameters, defaults applied)."""

    name: str
    fifo: bool = False
    visibility_timeout: float = 30.0
    delay: float = 0.0
    max_receives: int | None = None
    dlq: str | None = None
    content_based_dedup: bool = False
    max_body_bytes: int = 262_144


def memory_capabilities(config: MemoryConfig) -> Capabilities:
    """SQS's limits, so code tested on memory:// fits SQS."""
    return Capabilities(
        fifo=config.fifo,
        native_dlq=True,
        strict_receipts=True,
        max_send_batch=10,
        max_send_batch_bytes=config.max_body_bytes,
        max_receive_batch=10,
        max_ack_batch=10,
        max_body_bytes=config.max_body_bytes,
        max_attributes=10,
        max_delay_seconds=900.0,
        max_visibility_seconds=MAX_VISIBILITY_SECONDS,
        max_wait_seconds=20.0,
        batch_visibility=True,
        dead_letter_now=True,
    )


class _Message:
    __slots__ = (
        "attributes",
        "body",
        "generation",
        "group_id",
        "id",
        "receive_count",
        "received_at",
        "sent_at",
        "slot",
        "visible_at",
    )

    def __init__(
        self,
        message_id: str,
        body: bytes,
        attributes: dict[str, str],
        group_id: str | None,
        sent_at: float,
        visible_at: float,
    ) -> None:
        self.id = message_id
        self.body = body
        self.attributes = attributes
        self.group_id = group_id
        self.sent_at = sent_at
        self.visible_at = visible_at
        self.receive_count = 0
        self.generation = 0  # bumped per delivery: older receipts are stale
        self.received_at = 0.0
        self.slot = 0  # bumped whenever queued anew: older deque/heap entries are stale


class MemoryStore:
    """One named queue: its messages, DLQ link, dedup window and waiters."""

    def __init__(
        self,
        config: MemoryConfig,
        clock: Callable[[], float],
        dlq: MemoryStore | None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.dlq = dlq
        self.capabilities = memory_capabilities(config)
        # In receipts, so a receipt from another queue (or from before a
        # reset) is recognised as foreign.
        self.uid = uuid.uuid4().hex
        self.waiters: set[anyio.Event] = set()
        self._messages: dict[str, _Message] = {}
        self._ready: deque[tuple[int, _Message]] = deque()
        self._pending: list[tuple[float, int, int, _Message]] = []
        self._groups: dict[str, deque[_Message]] = {}
        self._dedup: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._tiebreak = itertools.count()

    def __len__(self) -> int:
        return len(self._messages)

    # -- sending -----------------------------------------------------------

    def put(self, message: PreparedMessage, now: float) -> str:
        """Store a validated message; the id of the message (the original
        one when a FIFO dedup id repeats within the window)."""
        dedup_id = message.dedup_id
        if self.config.fifo and dedup_id is None:
            dedup_id = hashlib.sha256(message.body).hexdigest()
        if dedup_id is not None:
            self._forget_expired_dedup(now)
            seen = self._dedup.get(dedup_id)
            if seen is not None:
                return seen[1]
        delay = self.config.delay if message.delay_seconds is None else message.delay_seconds
        stored = _Message(
            str(uuid.uuid4()),
            message.body,
            dict(message.attributes),
            message.group_id,
            time.time(),
            now + delay,
        )
        if dedup_id is not None:
            self._dedup[dedup_id] = (now + DEDUP_WINDOW_SECONDS, stored.id)
        self._add(stored, now)
        return stored.id

    def _add(self, message: _Message, now: float) -> None:
        self._messages[message.id] = message
        if self.config.fifo:
            group = message.group_id or ""
            self._groups.setdefault(group, deque()).append(message)
        else:
            self._schedule(message, now)

    def _forget_expired_dedup(self, now: float) -> None:
        # Insertion order is expiry order (the clock is monotonic).
        while self._dedup:
            expires, _ = next(iter(self._dedup.values()))
            if expires > now:
                return
            self._dedup.popitem(last=False)

    # -- receiving ---------------------------------------------------------

    def take(
        self, max_messages: int, visibility_timeout: float, now: float
    ) -> list[ReceivedMessage]:
        if self.config.fifo:
            return self._take_fifo(max_messages, visibility_timeout, now)
        return self._take_standard(max_messages, visibility_timeout, now)

    def _take_standard(
        self, max_messages: int, visibility_timeout: float, now: float
    ) -> list[ReceivedMessage]:
        self._promote(now)
        out: list[ReceivedMessage] = []
        while self._ready and len(out) < max_messages:
            slot, message = self._ready.popleft()
            if message.slot != slot or self._dead_letter_if_spent(message, now):
                continue
            out.append(self._deliver(message, visibility_timeout, now))
        return out

    def _take_fifo(
        self, max_messages: int, visibility_timeout: float, now: float
    ) -> list[ReceivedMessage]:
        out: list[ReceivedMessage] = []
        emptied: list[str] = []  # by dead-lettering; dropped after the loop
        for group_id, group in self._groups.items():
            if len(out) >= max_messages:
                break
            if _group_blocked_until(group, now) is not None:
                continue
            index = 0
            # Deliver from the head in order; a message not yet visible
            # (delayed) stops the group so nothing overtakes it.
            while index < len(group) and len(out) < max_messages:
                message = group[index]
                if message.visible_at > now:
                    break
                if self._dead_letter_if_spent(message, now, keep_empty_group=True):
                    continue  # removed from the group: same index is the next one
                out.append(self._deliver(message, visibility_timeout, now))
                index += 1
            if not group:
                emptied.append(group_id)
        for group_id in emptied:
            del self._groups[group_id]
        return out

    def _deliver(self, message: _Message, visibility_timeout: float, now: float) -> ReceivedMessage:
        message.receive_count += 1
        message.generation += 1
        message.received_at = now
        message.visible_at = now + visibility_timeout
        if not self.config.fifo:
            # Always through the heap: with a zero timeout it must not come
            # back in this same receive.
            self._schedule(message, now, ready_ok=False)
        return ReceivedMessage(
            id=message.id,
            body=message.body,
            receive_count=message.receive_count,
            attributes=dict(message.attributes),
            group_id=message.group_id,
            sent_at=message.sent_at,
            receipt=f"{self.uid}:{message.id}:{message.generation}",
        )

    def _dead_letter_if_spent(
        self, message: _Message, now: float, *, keep_empty_group: bool = False
    ) -> bool:
        """Move the message to the DLQ instead of delivering it for the
        (max_receives + 1)th time, as SQS's redrive policy does."""
        limit = self.config.max_receives
        if limit is None or message.receive_count < limit or self.dlq is None:
            return False
        self._remove(message, keep_empty_group=keep_empty_group)
        moved = _Message(
            message.id,
            message.body,
            message.attributes,
            message.group_id,
            message.sent_at,
            now,
        )
        self.dlq._add(moved, now)
        self.dlq.notify()
        return True

    def dead_letter(self, receipt: str, now: float) -> bool:
        """Move a delivered message to the DLQ now (the worker's Reject);
        False if the queue has no DLQ. A stale receipt raises ReceiptError."""
        message_id, message = self._resolve(receipt)
        if message is None:
            raise ReceiptError(
                f"message {message_id} is no longer on the queue (acked or dead-lettered)",
                message_id=message_id,
            )
        if self.dlq is None:
            return False
        self._remove(message)
        moved = _Message(
            message.id, message.body, message.attributes, message.group_id, message.sent_at, now
        )
        self.dlq._add(moved, now)
        self.dlq.notify()
        if self.config.fifo:
            self.notify()
        return True

    # -- receipts ----------------------------------------------------------

    def delete(self, receipt: str) -> str:
        """Delete by receipt; the message id. A message already gone is fine
        (acks are idempotent); a superseded or foreign receipt is not."""
        message_id, message = self._resolve(receipt)
        if message is not None:
            self._remove(message)
            if self.config.fifo:
                self.notify()  # the message's group may be unblocked now
        return message_id

    def change_visibility(self, receipt: str, seconds: float, now: float) -> None:
        message_id, message = self._resolve(receipt)
        if message is None:
            raise ReceiptError(
                f"message {message_id} is no longer on the queue (acked or dead-lettered)",
                message_id=message_id,
            )
        if message.visible_at <= now:
            # SQS refuses too: once visible, anyone may receive it.
            raise ReceiptError(
                f"message {message_id} is not in flight: its visibility timeout expired",
                message_id=message_id,
            )
        if now + seconds - message.received_at > MAX_VISIBILITY_SECONDS:
            raise ValidationError(
                f"message {message_id} would stay invisible more than "
                f"{MAX_VISIBILITY_SECONDS:g} s after it was received"
            )
        message.visible_at = now + seconds
        if not self.config.fifo:
            self._schedule(message, now)
        self.notify()

    def _resolve(self, receipt: str) -> tuple[str, _Message | None]:
        uid, _, rest = receipt.partition(":")
        message_id, _, generation = rest.rpartition(":")
        if uid != self.uid or not message_id or not generation.isdigit():
            raise ReceiptError(
                f"receipt {receipt[:80]!r} is not from memory://{self.config.name}",
                message_id=message_id,
            )
        message = self._messages.get(message_id)
        if message is not None and message.generation != int(generation):
            raise ReceiptError(
                f"receipt for message {message_id} is stale: it was received again since",
                message_id=message_id,
            )
        return message_id, message

    # -- bookkeeping -------------------------------------------------------

    def _schedule(self, message: _Message, now: float, *, ready_ok: bool = True) -> None:
        message.slot += 1
        if ready_ok and message.visible_at <= now:
            self._ready.append((message.slot, message))
        else:
            entry = (message.visible_at, next(self._tiebreak), message.slot, message)
            heapq.heappush(self._pending, entry)
        self._compact_if_stale()

    def _promote(self, now: float) -> None:
        pending = self._pending
        while pending and pending[0][0] <= now:
            _, _, slot, message = heapq.heappop(pending)
            if message.slot == slot:
                self._ready.append((slot, message))

    def _remove(self, message: _Message, *, keep_empty_group: bool = False) -> None:
        del self._messages[message.id]
        message.slot = -1  # every deque/heap entry of it is stale now
        if self.config.fifo:
            group_id = message.group_id or ""
            group = self._groups.get(group_id)
            if group is not None:
                if group and group[0] is message:
                    group.popleft()
                else:
                    group.remove(message)
                if not group and not keep_empty_group:
                    del self._groups[group_id]
        else:
            self._compact_if_stale()

    def _compact_if_stale(self) -> None:
        if len(self._ready) + len(self._pending) <= 2 * len(self._messages) + 64:
            return
        self._ready = deque(e for e in self._ready if e[1].slot == e[0])
        self._pending = [e for e in self._pending if e[3].slot == e[2]]
        heapq.heapify(self._pending)

    def next_due(self, now: float) -> float | None:
        """When a message may next become receivable (None: not without a send)."""
        if not self.config.fifo:
            while self._pending and self._pending[0][3].slot != self._pending[0][2]:
                heapq.heappop(self._pending)
            return self._pending[0][0] if self._pending else None
        due = [d for g in self._groups.values() if (d := _group_blocked_until(g, now)) is not None]
        for group in self._groups.values():
            if group and group[0].visible_at > now:
                due.append(group[0].visible_at)
        return min(due, default=None)

    def notify(self) -> None:
        """Wake every waiting receive to look again."""
        for event in self.waiters:
            event.set()


def _group_blocked_until(group: deque[_Message], now: float) -> float | None:
    """When a FIFO group stops being blocked by an in-flight message (None:
    not blocked). Messages are delivered from the head only, so those ever
    received form a prefix of the group: only the prefix is scanned."""
    for message in group:
        if message.receive_count == 0:
            return None
        if message.visible_at > now:
            return message.visible_at
    return None
