"""The portable queue layer: what :func:`open_queue` returns (gocloud's split).

A driver (sqs, dynamodb, memory, third-party) does one request per call
within the limits it declares in its :class:`Capabilities`, and never retries.
This layer takes any number of messages per call (lists, iterables, async
iterables), splits them by the driver's count and byte limits, runs the parts
concurrently under a limit, retries entries that failed for a retryable
reason (throttled, a server fault) with jittered backoff, and reports the
rest per message, in input order. Acks and visibility changes are split the
same way, and a receipt given twice in one call is acted on once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import anyio

from .._batching import Backoff, gather_limited, iter_chunks, pack_by_size
from .._errors import (
    AwsConnectionError,
    AwsError,
    BatchLimitError,
    MsgclusterError,
    QueueClosedError,
    ThrottledError,
    ValidationError,
)
from ._checks import check_visibility
from ._contract import AckResult, OutgoingMessage, ReceivedMessage, SendResult

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from ._contract import Capabilities, Driver
    from ._offload import PayloadStore

__all__ = ["PortableQueue", "is_retryable", "wrap"]

T = TypeVar("T")
log = logging.getLogger("msgcluster.queues")
# Messages are read from an (async) iterable in windows of this many, so a
# send of any length holds bounded memory besides its results.
_WINDOW: Final = 1_000
_ATTRIBUTE_OVERHEAD: Final = 8  # per attribute: its data type, as SQS counts it


def is_retryable(error: BaseException | None) -> bool:
    """An entry failure another attempt may fix: throttling or a server fault
    (a plain :class:`AwsError`, as drivers report an entry AWS failed without
    blaming the sender). Refusals (validation, access, missing resources,
    stale receipts) are final."""
    if isinstance(error, ThrottledError | AwsConnectionError):
        return True
    return type(error) is AwsError


class PortableQueue:
    """A queue opened by URI: any number of messages per call over one driver.

    ``send``, ``ack`` and ``change_visibility`` take any number of entries and
    return one result per entry, in order; ``async for message in queue``
    receives (long polling) until the queue is closed. ``driver`` is the
    backend's own handle, for what only that backend offers.
    """

    def __init__(
        self,
        driver: Driver,
        *,
        concurrency: int = 8,
        backoff: Backoff | None = None,
        payloads: PayloadStore | None = None,
    ) -> None:
        self.driver = driver
        self.payloads = payloads
        self._limiter = anyio.CapacityLimiter(max(1, concurrency))
        self._backoff = backoff or Backoff()
        self._closed = False

    # ------------------------------------------------------------ properties

    @property
    def uri(self) -> str:
        return self.driver.uri

    @property
    def capabilities(self) -> Capabilities:
        return self.driver.capabilities

    @property
    def max_receives(self) -> int | None:
        """Receives after which the queue dead-letters a message (None: no DLQ)."""
        value = getattr(self.driver, "max_receives", None)
        return value if isinstance(value, int) else None

    def __repr__(self) -> str:
        return f"<Queue {self.uri!r} on {self.driver!r}>"

    def __getattr__(self, name: str) -> Any:
        # What only this backend offers (QueueAdmin's stats, list_messages...,
        # sqs's url and client) is reachable on the queue itself.
        if name.startswith("_") or name == "driver":
            raise AttributeError(name)
        return getattr(self.driver, name)

    # ------------------------------------------------------------ send

    async def send(
        self,
        messages: Iterable[bytes | str | OutgoingMessage]
        | AsyncIterable[bytes | str | OutgoingMessage],
    ) -> list[SendResult]:
        """Send any number of messages; one :class:`SendResult` per input, in order.

        An entry the queue refuses (too large, bad attribute, missing FIFO
        group...) or that kept failing is reported in its result; the others
        are sent. FIFO queues get each message group's messages in order.
        """
        if isinstance(messages, bytes | str | OutgoingMessage) or not isinstance(
            messages, Iterable | AsyncIterable
        ):
            raise ValidationError("send takes an iterable of messages: wrap a single one in a list")
        self._check_open()
        caps = self.capabilities
        results: list[SendResult] = []
        async for window in iter_chunks(messages, _WINDOW):
            start = len(results)
            out: list[SendResult | None] = [None] * len(window)
            if self.payloads is not None:
                window = await self._offload(window, out)
            indexed = [(i, m) for i, m in enumerate(window) if out[i] is None]
            # A FIFO group's messages must go in order: one part at a time.
            groups = pack_by_size(
                indexed,
                max_count=caps.max_send_batch,
                max_bytes=caps.max_send_batch_bytes,
                size_of=lambda entry: _size_of(entry[1]),
            )
            calls = [partial(self._send_part, part, out) for part in groups]
            if caps.fifo:
                for call in calls:
                    await call()
            else:
                await gather_limited(self._limiter, calls)
            for offset, result in enumerate(out):
                assert result is not None
                results.append(_reindexed(result, start + offset))
        return results

    async def _offload(self, window: list[Any], out: list[SendResult | None]) -> list[Any]:
        """Bodies larger than the queue takes go to S3 (the Extended Client's
        format); a store that fails is that message's result."""
        assert self.payloads is not None
        store, limit = self.payloads, self.capabilities.max_body_bytes
        window = list(window)

        async def offload(index: int) -> None:
            message = window[index]
            if not isinstance(message, OutgoingMessage):
                message = OutgoingMessage(body=message)
            body = message.body.encode() if isinstance(message.body, str) else message.body
            try:
                window[index] = await store.offload(message, body)
            except MsgclusterError as exc:
                out[index] = SendResult(index=index, error=exc)

        large = [i for i, message in enumerate(window) if _size_of(message) > limit]
        await gather_limited(self._limiter, [partial(offload, index) for index in large])
        return window

    async def _send_part(self, part: list[tuple[int, Any]], out: list[SendResult | None]) -> None:
        pending = part
        for attempt in range(self._backoff.attempts):
            try:
                sent = await self.driver.send([message for _, message in pending])
            except BatchLimitError as exc:
                # The driver counts bytes its own way (base64, attributes): halve.
                if len(pending) == 1:
                    out[pending[0][0]] = SendResult(index=pending[0][0], error=exc)
                    return
                middle = len(pending) // 2
                await self._send_part(pending[:middle], out)
                await self._send_part(pending[middle:], out)
                return
            except QueueClosedError:
                raise
            except MsgclusterError as exc:  # the request failed (botocore retried it)
                for index, _ in pending:
                    out[index] = SendResult(index=index, error=exc)
                return
            retry = []
            last = attempt + 1 >= self._backoff.attempts
            for (index, message), result in zip(pending, sent, strict=True):
                out[index] = _reindexed(result, index)
                if is_retryable(result.error):
                    if not last:
                        retry.append((index, message))
                    elif result.error is not None:
                        _gave_up(result.error, self._backoff.attempts)
            if not retry:
                return
            pending = retry
            await self._backoff.sleep(attempt)

    # ------------------------------------------------------------ receive

    async def receive(
        self,
        max_messages: int = 10,
        wait_seconds: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[ReceivedMessage]:
        """Up to ``max_messages`` (at most the driver's receive batch) visible
        messages, waiting up to ``wait_seconds`` for the first one."""
        messages = await self.driver.receive(max_messages, wait_seconds, visibility_timeout)
        if self.payloads is None or not messages:
            return messages
        return await self._restore(messages)

    async def _restore(self, messages: list[ReceivedMessage]) -> list[ReceivedMessage]:
        """Offloaded bodies fetched back. One that cannot be fetched stays a
        pointer (never dropped): its reader fails it alone."""
        assert self.payloads is not None
        store = self.payloads
        out = list(messages)

        async def restore(index: int) -> None:
            try:
                out[index] = await store.restore(out[index])
            except MsgclusterError as exc:
                log.warning("offloaded body of %s not fetched: %s", out[index].id, exc)

        pointers = [i for i, m in enumerate(messages) if store.pointer_of(m) is not None]
        await gather_limited(self._limiter, [partial(restore, index) for index in pointers])
        return out

    def __aiter__(self) -> AsyncIterator[ReceivedMessage]:
        return self.messages()

    async def messages(
        self, *, wait_seconds: float | None = None, visibility_timeout: float | None = None
    ) -> AsyncIterator[ReceivedMessage]:
        """Received messages, one at a time, long polling between batches, until
        the queue is closed. Ack (or nack) each one: delivery is at least once."""
        caps = self.capabilities
        wait = caps.max_wait_seconds if wait_seconds is None else wait_seconds
        while True:
            try:
                batch = await self.receive(caps.max_receive_batch, wait, visibility_timeout)
            except QueueClosedError:
                return
            for message in batch:
                yield message

    # ------------------------------------------------------------ settle

    async def ack(self, messages: Iterable[ReceivedMessage]) -> list[AckResult]:
        """Delete delivered messages, any number; one result per input, in order.
        A message given twice (same receipt) is deleted once; both get its result."""
        items = _listed(messages, "ack takes an iterable of received messages")
        self._check_open()
        return await self._settle(
            items, lambda message: message, lambda part: self.driver.ack(part)
        )

    async def change_visibility(
        self, changes: Iterable[tuple[ReceivedMessage, float]]
    ) -> list[AckResult]:
        """Make each message visible again after its number of seconds (0: now),
        any number of them; one result per input, in order."""
        items = _listed(changes, "change_visibility takes (message, seconds) pairs")
        self._check_open()
        for item in items:
            if not (
                isinstance(item, tuple)
                and len(item) == 2
                and isinstance(item[0], ReceivedMessage)
                and isinstance(item[1], int | float)
                and not isinstance(item[1], bool)
            ):
                raise ValidationError(
                    "change_visibility takes (message, seconds) pairs: a ReceivedMessage and "
                    f"a number; got {type(item).__name__}"
                )
        batch = (
            getattr(self.driver, "change_visibility", None)
            if self.capabilities.batch_visibility
            else None
        )

        async def one_by_one(part: list[tuple[ReceivedMessage, float]]) -> list[AckResult]:
            results = []
            for index, (message, seconds) in enumerate(part):
                try:
                    await self.driver.nack(message, seconds)
                    results.append(AckResult(index=index, id=message.id))
                except MsgclusterError as exc:
                    results.append(AckResult(index=index, id=message.id, error=exc))
            return results

        # An out-of-range number fails its own entry, not the part it falls in.
        refused: dict[int, MsgclusterError] = {}
        for index, (_, seconds) in enumerate(items):
            try:
                check_visibility(seconds, self.capabilities, "seconds")
            except ValidationError as exc:
                refused[index] = exc
        valid = [item for index, item in enumerate(items) if index not in refused]
        settled = iter(await self._settle(valid, lambda change: change[0], batch or one_by_one))
        return [
            AckResult(index=index, id=message.id, error=refused[index])
            if index in refused
            else _at(next(settled), index)
            for index, (message, _) in enumerate(items)
        ]

    async def _settle(
        self,
        items: list[T],
        message_of: Callable[[T], ReceivedMessage],
        call: Callable[[list[T]], Awaitable[list[AckResult]]],
    ) -> list[AckResult]:
        if not items:
            return []
        first: dict[str, int] = {}
        unique: list[int] = []
        for index, item in enumerate(items):
            receipt = getattr(message_of(item), "receipt", None)
            if not isinstance(receipt, str) or not receipt:
                unique.append(index)  # the driver reports it per entry
            elif first.setdefault(receipt, index) == index:
                unique.append(index)
        out: dict[int, AckResult] = {}
        step = self.capabilities.max_ack_batch
        parts = [unique[i : i + step] for i in range(0, len(unique), step)]
        if len(parts) == 1:  # one request: no task group, no limiter round trip
            await self._settle_part(parts[0], items, call, out)
        else:
            await gather_limited(
                self._limiter,
                [partial(self._settle_part, part, items, call, out) for part in parts],
            )
        results = []
        for index, item in enumerate(items):
            receipt = getattr(message_of(item), "receipt", None)
            source = first.get(receipt, index) if isinstance(receipt, str) else index
            results.append(_at(out[source], index))
        return results

    async def _settle_part(
        self,
        part: list[int],
        items: list[T],
        call: Callable[[list[T]], Awaitable[list[AckResult]]],
        out: dict[int, AckResult],
    ) -> None:
        pending = part
        for attempt in range(self._backoff.attempts):
            try:
                results = await call([items[index] for index in pending])
            except QueueClosedError:
                raise
            except MsgclusterError as exc:  # the request failed (botocore retried it)
                for index in pending:
                    out[index] = AckResult(index=index, id=_id_of(items[index]), error=exc)
                return
            for index, result in zip(pending, results, strict=True):
                out[index] = _at(result, index)
            retry = [index for index in pending if is_retryable(out[index].error)]
            if retry and attempt + 1 >= self._backoff.attempts:
                for index in retry:
                    error = out[index].error
                    if error is not None:
                        _gave_up(error, self._backoff.attempts)
                return
            if not retry:
                return
            pending = retry
            await self._backoff.sleep(attempt)

    async def nack(self, message: ReceivedMessage, delay: float = 0.0) -> None:
        await self.driver.nack(message, delay)

    async def extend(self, message: ReceivedMessage, seconds: float) -> None:
        await self.driver.extend(message, seconds)

    async def dead_letter(self, message: ReceivedMessage, reason: str = "") -> bool:
        """Move a delivered message to the queue's dead-letter queue now; False if
        the queue has none (the message is then left as it is)."""
        if not isinstance(message, ReceivedMessage) or not isinstance(reason, str):
            raise ValidationError("dead_letter takes a ReceivedMessage and a str reason")
        mover = getattr(self.driver, "dead_letter", None)
        if mover is None or not self.capabilities.dead_letter_now:
            return False
        return bool(await mover(message, reason))

    # ------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        self._closed = True
        await self.driver.aclose()

    def _check_open(self) -> None:
        # Even for nothing to do: a call after close is a bug to report.
        if self._closed:
            raise QueueClosedError(f"{self.uri} is closed")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _at(result: AckResult, index: int) -> AckResult:
    """``result`` as the result of the input at ``index``."""
    if result.index == index:
        return result
    return AckResult(index=index, id=result.id, error=result.error)


def _size_of(message: Any) -> int:
    """Bytes a message counts against a send's byte limit (the driver has the
    final word: a part it refuses is halved)."""
    if isinstance(message, OutgoingMessage):
        body, attributes = message.body, message.attributes
    else:
        body, attributes = message, {}
    if isinstance(body, str):
        size = len(body.encode("utf-8", "surrogatepass"))
    elif isinstance(body, bytes | bytearray):
        size = len(body)
    else:
        size = 0
    if isinstance(attributes, dict):
        for name, value in attributes.items():
            size += len(str(name)) + len(str(value)) + _ATTRIBUTE_OVERHEAD
    return size


def _gave_up(error: MsgclusterError, attempts: int) -> None:
    # The entry's own error (a fresh one per entry), saying it was retried.
    error.args = (f"{error} (gave up after {attempts} attempts)",)


def _reindexed(result: SendResult, index: int) -> SendResult:
    if result.index == index:
        return result
    return SendResult(index=index, id=result.id, error=result.error)


def _listed(entries: Iterable[T], message: str) -> list[T]:
    if isinstance(entries, bytes | str) or not isinstance(entries, Iterable):
        raise ValidationError(message + ": wrap a single one in a list")
    return list(entries)


def _id_of(item: object) -> str:
    message = item[0] if isinstance(item, tuple) else item
    return str(getattr(message, "id", ""))


def wrap(queue: Any) -> PortableQueue:
    """``queue`` as a PortableQueue (a driver handed over directly is wrapped)."""
    return queue if isinstance(queue, PortableQueue) else PortableQueue(queue)
