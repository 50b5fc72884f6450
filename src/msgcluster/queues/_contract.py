"""The backend contract: one small Protocol every queue backend implements.

Backends (:class:`Driver`) are thin (gocloud's split): they validate, do one
request, and report per-message outcomes. They never retry and never split a
batch larger than their declared :class:`Capabilities`; the portable layer
above (:class:`Queue`, what ``open_queue`` returns) splits, retries and backs
off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
    from types import TracebackType

    from .._errors import MsgclusterError

__all__ = [
    "AckResult",
    "Capabilities",
    "Driver",
    "OutgoingMessage",
    "Queue",
    "ReceivedMessage",
    "SendResult",
]


class OutgoingMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message to send and its options: for :meth:`Queue.send`, and for the
    Client's ``send_message_batch`` and ``create_message_cluster`` items.

    ``body``: on a queue, bytes or a ``str`` (sent as UTF-8), empty included;
    through the Client, anything msgspec encodes (the tracked message's body).
    ``attributes``: message attributes, ``str`` (String), ``int``/``float``
    (Number), ``bytes`` (Binary), or an SQS attribute mapping
    (``{"DataType": ..., "StringValue"/"BinaryValue": ...}``); they are
    delivered as text (Binary as base64).
    ``group_id`` orders messages on FIFO queues (required there);
    ``dedup_id`` drops repeats on FIFO queues within 5 minutes (required there
    unless the queue deduplicates by content). ``delay_seconds`` overrides the
    queue's default delay (standard queues only); None keeps the default.
    ``meta`` is the Client's: it goes on the message's record (a queue alone
    ignores it).
    """

    body: Any
    attributes: dict[str, Any] = {}
    group_id: str | None = None
    dedup_id: str | None = None
    delay_seconds: float | None = None
    meta: Any = None


class ReceivedMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message handed out by :meth:`Queue.receive`; it stays invisible to
    other receivers until acked, nacked or its visibility timeout expires.

    ``receive_count`` is 1 on first delivery. ``sent_at`` is wall-clock Unix
    seconds when the backend knows it. ``receipt`` is the backend's opaque
    handle for this delivery (ack/nack/extend use it): not for users, and
    superseded when the message is received again.
    """

    id: str
    body: bytes
    receive_count: int
    attributes: dict[str, str] = {}
    group_id: str | None = None
    sent_at: float | None = None
    receipt: str = ""
    #: The data type of each attribute that is not ``String`` (``Number``,
    #: ``Binary``, custom ``.suffix`` types), where the backend keeps types.
    attribute_types: dict[str, str] = {}


class SendResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one entry of :meth:`Queue.send`, at ``index`` in the input.

    Exactly one of ``id`` (the message id) and ``error`` is set. A refused
    entry is reported here, not raised, so the others are not lost.
    """

    index: int
    id: str | None = None
    error: MsgclusterError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class AckResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of acking one message (``id``), at ``index`` in the input.

    ``error`` is None when the message is gone from the queue, including when
    it was already acked: acks are idempotent, so an ack retried after a lost
    response is harmless.
    """

    index: int
    id: str
    error: MsgclusterError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a queue supports; the layer above sizes batches by these.

    ``native_dlq``: the backend moves a message to its dead-letter queue
    itself once it would be received more than the queue's max receives.
    ``strict_receipts``: a superseded receipt (the message was received again
    since) is always refused with :class:`~msgcluster.ReceiptError`. SQS cannot
    promise it: a stale delete may be ignored or applied.
    ``max_body_bytes`` is the largest UTF-8 text body accepted (attributes
    count against it too); backends that must encode binary bodies (sqs:
    base64) accept binary bodies of at least half of it.
    ``batch_visibility``: the driver has ``change_visibility`` (else the
    portable layer nacks/extends one message at a time);
    ``dead_letter_now``: it has ``dead_letter`` (move a message to its DLQ on
    request, for ``Reject`` and poison).
    """

    fifo: bool
    native_dlq: bool
    strict_receipts: bool
    max_send_batch: int
    max_send_batch_bytes: int
    max_receive_batch: int
    max_ack_batch: int
    max_body_bytes: int
    max_attributes: int
    max_delay_seconds: float
    max_visibility_seconds: float
    max_wait_seconds: float
    batch_visibility: bool = False
    dead_letter_now: bool = False


@runtime_checkable
class Driver(Protocol):
    """What a queue backend implements: one request per call, within its
    declared :class:`Capabilities`, never a retry (the portable layer above
    splits, retries and backs off).

    Every method raises :class:`~msgcluster.QueueClosedError` after
    :meth:`aclose`. A call over the limits raises
    :class:`~msgcluster.BatchLimitError` and does nothing.

    Optional, used when present (every built-in driver has them):
    ``change_visibility(changes)``, the batch form of nack/extend for up to
    ``max_ack_batch`` (message, seconds) pairs, one :class:`AckResult` each;
    ``dead_letter(message, reason) -> bool``, move a delivered message to the
    dead-letter queue now (copy, then delete; False when there is none); and
    ``max_receives``, the receives after which the queue dead-letters.
    """

    @property
    def uri(self) -> str:
        """The URI the queue was opened with (never contains credentials)."""
        ...

    @property
    def capabilities(self) -> Capabilities: ...

    async def send(self, messages: Sequence[bytes | str | OutgoingMessage]) -> list[SendResult]:
        """Send up to ``max_send_batch`` messages (``max_send_batch_bytes`` in all);
        one result per input, in order. An invalid entry (too large, bad
        attribute, missing FIFO group...) is reported in its result and the
        others are sent."""
        ...

    async def receive(
        self,
        max_messages: int = 10,
        wait_seconds: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[ReceivedMessage]:
        """Up to ``max_messages`` visible messages, waiting up to ``wait_seconds``
        for the first one (long polling: returns as soon as any arrive).

        ``visibility_timeout`` overrides the queue's default for this delivery.
        """
        ...

    async def ack(self, messages: Sequence[ReceivedMessage]) -> list[AckResult]:
        """Delete up to ``max_ack_batch`` delivered messages; one result per input."""
        ...

    async def nack(self, message: ReceivedMessage, delay: float = 0.0) -> None:
        """Make the message visible again after ``delay`` seconds.

        Raises :class:`~msgcluster.ReceiptError` if the receipt no longer holds.
        """
        ...

    async def extend(self, message: ReceivedMessage, seconds: float) -> None:
        """Keep the message invisible until ``seconds`` from now (heartbeat).

        Raises :class:`~msgcluster.ReceiptError` if the receipt no longer holds.
        """
        ...

    async def aclose(self) -> None:
        """Release the handle; idempotent. Waiting receives raise QueueClosedError."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Queue(Protocol):
    """A queue opened by :func:`msgcluster.queues.open_queue` (the portable layer).

    ``send``, ``ack`` and ``change_visibility`` take any number of entries:
    they are split by the driver's limits, sent concurrently, retried where
    the failure is retryable, and reported per entry. Every method raises
    :class:`~msgcluster.QueueClosedError` after :meth:`aclose`.
    """

    @property
    def uri(self) -> str:
        """The URI the queue was opened with (never contains credentials)."""
        ...

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def max_receives(self) -> int | None: ...

    async def send(
        self,
        messages: Iterable[bytes | str | OutgoingMessage]
        | AsyncIterable[bytes | str | OutgoingMessage],
    ) -> list[SendResult]:
        """Send any number of messages; one result per input, in order."""
        ...

    async def receive(
        self,
        max_messages: int = 10,
        wait_seconds: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[ReceivedMessage]:
        """Up to ``max_messages`` (at most the driver's receive batch) messages."""
        ...

    def __aiter__(self) -> AsyncIterator[ReceivedMessage]: ...

    async def ack(self, messages: Iterable[ReceivedMessage]) -> list[AckResult]:
        """Delete delivered messages, any number; one result per input, in order."""
        ...

    async def change_visibility(
        self, changes: Iterable[tuple[ReceivedMessage, float]]
    ) -> list[AckResult]: ...

    async def nack(self, message: ReceivedMessage, delay: float = 0.0) -> None: ...

    async def extend(self, message: ReceivedMessage, seconds: float) -> None: ...

    async def dead_letter(self, message: ReceivedMessage, reason: str = "") -> bool: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
