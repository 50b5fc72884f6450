"""``memory://<name>``: a faithful in-process queue (not a stub).

Queues live in a process-wide namespace: every ``open_queue("memory://jobs")``
in the process shares one queue, as clients of one SQS queue do; queues
outlive their handles until :func:`reset_memory_queues`. Visibility timeouts,
receive counts, max receives -> DLQ, delays, FIFO groups with in-flight
blocking, deduplication, SQS's limits and an injectable clock. Use it from
one event loop thread at a time.
"""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._errors import MsgclusterError, QueueURIError
from ._checks import (
    check_batch_bytes,
    check_receive,
)
from ._contract import Capabilities, ReceivedMessage, SendResult
from ._handle import QueueHandle
from ._memory_store import MemoryConfig, MemoryStore
from ._uri import Param, boolean, integer, number, read_params, text

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._checks import PreparedMessage
    from ._uri import QueueURI

__all__ = ["MemoryQueue", "open_memory_queue", "reset_memory_queues"]

# With a caller-supplied clock nobody tells us when time moves, so a waiting
# receive looks again after this much real time (a notification still wakes
# it at once).
_FAKE_CLOCK_TICK = 0.01
_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}|[A-Za-z0-9_-]{1,75}\.fifo")

_STORES: dict[str, MemoryStore] = {}


def _clock(value: object) -> Callable[[], float]:
    if not callable(value):
        raise TypeError("expected a callable returning monotonic seconds")
    seconds = value()
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise TypeError("the clock must return seconds as a finite float")
    return value


PARAMS: dict[str, Param[Any]] = {
    "visibility_timeout": Param(number(0, 43_200)),
    "delay": Param(number(0, 900)),
    "max_receives": Param(integer(1, 1000)),
    "dlq": Param(text),
    "fifo": Param(boolean),
    "content_based_dedup": Param(boolean),
    "max_body_bytes": Param(integer(1, 1 << 30)),
    "clock": Param(_clock, query=False),
}


def reset_memory_queues() -> None:
    """Forget every memory:// queue of the process (for tests). Handles still
    open keep working on their detached queues; new opens start empty."""
    _STORES.clear()


def check_uri(uri: QueueURI, /, **options: Any) -> tuple[MemoryConfig, dict[str, Any]]:
    """The queue's configuration and parameters, checked without opening it."""
    params = read_params(uri, options, PARAMS)
    clock = params.pop("clock", None)
    config = _config(uri.location, params)
    if clock is not None:
        params["clock"] = clock
    return config, params


async def open_memory_queue(uri: QueueURI, /, **options: Any) -> MemoryQueue:
    """The backend factory registered for ``memory://``."""
    config, params = check_uri(uri, **options)
    clock: Callable[[], float] | None = params.pop("clock", None)
    store = _STORES.get(config.name)
    if store is None:
        store = _create(config, clock or time.monotonic)
    else:
        _check_compatible(store, params, clock)
    return MemoryQueue(store, uri.uri)


def _config(name: str, params: dict[str, Any]) -> MemoryConfig:
    if not _NAME.fullmatch(name):
        raise QueueURIError(
            "a memory:// queue name is 1-80 of A-Z a-z 0-9 _ - "
            "(a FIFO queue's name may end in .fifo), as for SQS"
        )
    named_fifo = name.endswith(".fifo")
    if params.get("fifo") is False and named_fifo:
        raise QueueURIError(f"memory://{name}: a name ending in .fifo is a FIFO queue")
    fifo = named_fifo or bool(params.get("fifo"))
    if "dlq" in params and "max_receives" not in params:
        raise QueueURIError(f"memory://{name}: dlq= needs max_receives= (when to dead-letter)")
    dlq = params.get("dlq")
    if dlq is None and "max_receives" in params:
        dlq = f"{name[:-5]}-dlq.fifo" if named_fifo else f"{name}-dlq"
    if dlq == name:
        raise QueueURIError(f"memory://{name}: a queue cannot be its own DLQ")
    return MemoryConfig(**{**params, "name": name, "fifo": fifo, "dlq": dlq})


def _create(config: MemoryConfig, clock: Callable[[], float]) -> MemoryStore:
    dlq = None
    if config.dlq is not None:
        dlq = _STORES.get(config.dlq)
        if dlq is None:
            _config(config.dlq, {"fifo": config.fifo})  # the same name rules
            dlq_config = MemoryConfig(
                name=config.dlq, fifo=config.fifo, max_body_bytes=config.max_body_bytes
            )
            dlq = _create(dlq_config, clock)
        elif dlq.config.fifo != config.fifo:
            kind = "FIFO" if config.fifo else "standard"
            raise QueueURIError(f"memory://{config.name}: the DLQ of a {kind} queue is {kind} too")
    store = MemoryStore(config, clock, dlq)
    _STORES[config.name] = store
    return store


def _check_compatible(
    store: MemoryStore, params: dict[str, Any], clock: Callable[[], float] | None
) -> None:
    """A queue exists once: opening it again may restate its settings but not
    change them (SQS's CreateQueue refuses the same way)."""
    current = store.config
    for name, value in params.items():
        if getattr(current, name) != value:
            raise QueueURIError(
                f"memory://{current.name} already exists with {name}={getattr(current, name)!r}; "
                f"open it without {name}= or use another name (or reset_memory_queues())"
            )
    if clock is not None and clock is not store.clock:
        raise QueueURIError(f"memory://{current.name} already exists with another clock")


class MemoryQueue(QueueHandle):
    """A handle on a memory:// queue (see :class:`~msgcluster.queues.Queue`)."""

    def __init__(self, store: MemoryStore, uri: str) -> None:
        super().__init__(uri)
        self._store = store
        self._waiters: set[anyio.Event] = set()
        # time.monotonic is the only clock whose future we can sleep until.
        self._real_clock = store.clock is time.monotonic

    @property
    def name(self) -> str:
        return self._store.config.name

    @property
    def capabilities(self) -> Capabilities:
        return self._store.capabilities

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._store)} messages"
        return f"<MemoryQueue {self.name!r} {state}>"

    def _dedup_by_content(self) -> bool:
        return self._store.config.content_based_dedup

    async def _send_prepared(self, entries: dict[int, PreparedMessage]) -> dict[int, SendResult]:
        store = self._store
        check_batch_bytes([p.size for p in entries.values()], store.capabilities)
        now = store.clock()
        results = {i: SendResult(index=i, id=store.put(p, now)) for i, p in entries.items()}
        store.notify()
        return results

    async def receive(
        self,
        max_messages: int = 10,
        wait_seconds: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[ReceivedMessage]:
        await self._checkpoint()
        store = self._store
        check_receive(max_messages, wait_seconds, visibility_timeout, store.capabilities)
        timeout = (
            store.config.visibility_timeout if visibility_timeout is None else visibility_timeout
        )
        deadline = store.clock() + wait_seconds
        while True:
            now = store.clock()
            messages = store.take(max_messages, timeout, now)
            if messages or now >= deadline:
                return messages
            await self._wait(deadline, now)

    async def _wait(self, deadline: float, now: float) -> None:
        """Sleep until a notification, the deadline or the next due message.

        Registering happens right after the failed take, with no await in
        between, so a send cannot slip past unnoticed.
        """
        store = self._store
        seconds = deadline - now
        due = store.next_due(now)
        if due is not None:
            seconds = min(seconds, due - now)
        if not self._real_clock:
            seconds = min(seconds, _FAKE_CLOCK_TICK)
        event = anyio.Event()
        store.waiters.add(event)
        self._waiters.add(event)
        try:
            with anyio.move_on_after(max(seconds, 0.001)):
                await event.wait()
        finally:
            store.waiters.discard(event)
            self._waiters.discard(event)
        self._check_open()

    async def _ack_receipts(self, receipts: dict[int, str]) -> dict[int, MsgclusterError]:
        return self._each(receipts, self._store.delete)

    async def _change_receipts(
        self, changes: dict[int, tuple[str, float]]
    ) -> dict[int, MsgclusterError]:
        now = self._store.clock()
        return self._each(
            changes, lambda change: self._store.change_visibility(change[0], change[1], now)
        )

    @staticmethod
    def _each(items: dict[int, Any], apply: Callable[[Any], object]) -> dict[int, MsgclusterError]:
        """Apply one store operation per entry; the error of each that failed."""
        errors: dict[int, MsgclusterError] = {}
        for index, item in items.items():
            try:
                apply(item)
            except MsgclusterError as exc:
                errors[index] = exc
        return errors

    @property
    def max_receives(self) -> int | None:
        """Receives after which the queue dead-letters a message (None: never)."""
        return self._store.config.max_receives if self._store.dlq is not None else None

    async def dead_letter(self, message: ReceivedMessage, reason: str = "") -> bool:
        """Move a delivered message to the DLQ now; False if there is none."""
        await self._checkpoint()
        return self._store.dead_letter(self._receipt(message), self._store.clock())

    async def aclose(self) -> None:
        await super().aclose()
        # A waiting receive wakes and sees the close.
        for event in self._waiters:
            event.set()
