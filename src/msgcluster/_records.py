"""Reading SQS records: Lambda event records and ReceiveMessage messages.

Both shapes are normalised into :class:`SqsMessage` first, so every other
function deals with one type. Envelopes are decoded with one module-level
tagged-union decoder; the user's body stays ``msgspec.Raw`` until a type is
asked for, so completion checks never pay for decoding it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import msgspec

from ._errors import (
    BodyDecodeError,
    EnvelopeError,
    MalformedEventError,
    PayloadNotLoadedError,
)
from ._payloads import EXTENDED_SIZE_ATTRIBUTES, fetch, parse_extended_pointer
from ._schemas import (
    ENVELOPE_TYPES,
    NO_BODY,
    ClusterEventEnvelope,
    Envelope,
    MessageEnvelope,
    MessageRecord,
    RecordKey,
    RecordType,
    S3Pointer,
    TaskEnvelope,
)

if TYPE_CHECKING:
    from ._callbacks import ClusterView
    from ._context import Context

__all__ = [
    "ParsedRecord",
    "SqsMessage",
    "decode_body",
    "normalize",
    "parse_envelope",
    "resolve_extended",
]

B = TypeVar("B")

_envelope_decoder: Final[msgspec.json.Decoder[Envelope]] = msgspec.json.Decoder(Envelope)


class SqsMessage(msgspec.Struct, frozen=True):
    """One SQS message, whichever API delivered it."""

    id: str
    body: str
    receipt_handle: str = ""
    attributes: dict[str, str] = {}
    message_attributes: dict[str, Any] = {}
    source_arn: str = ""

    @property
    def receive_count(self) -> int:
        try:
            return int(self.attributes.get("ApproximateReceiveCount", "1"))
        except ValueError:
            return 1

    @property
    def group_id(self) -> str | None:
        return self.attributes.get("MessageGroupId")


def _field(record: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in record:
            return record[name]
    return None


def normalize(record: object) -> SqsMessage:
    """Accept a Lambda SQS event record, a ReceiveMessage message, or SqsMessage."""
    if isinstance(record, SqsMessage):
        return record
    if isinstance(record, ParsedRecord):
        return record.message
    if not isinstance(record, Mapping):
        raise MalformedEventError(
            "expected an SQS record: a Lambda event record (dict with 'messageId' and "
            "'body') or a ReceiveMessage message (dict with 'MessageId' and 'Body'); "
            f"got {type(record).__name__}"
        )
    message_id = _field(record, "messageId", "MessageId")
    if not isinstance(message_id, str) or not message_id:
        raise MalformedEventError(
            "SQS record has no 'messageId'/'MessageId' (a non-empty string is required); "
            f"keys present: {sorted(map(str, record))[:12]}"
        )
    body = _field(record, "body", "Body")
    if not isinstance(body, str):
        raise MalformedEventError(
            f"SQS record {message_id} has no string 'body'/'Body' (got {type(body).__name__})",
            message_id=message_id,
        )
    attributes = _field(record, "attributes", "Attributes") or {}
    message_attributes = _field(record, "messageAttributes", "MessageAttributes") or {}
    receipt = _field(record, "receiptHandle", "ReceiptHandle") or ""
    if not isinstance(attributes, Mapping) or not isinstance(message_attributes, Mapping):
        raise MalformedEventError(
            f"SQS record {message_id} has non-object attributes", message_id=message_id
        )
    if not isinstance(receipt, str):
        raise MalformedEventError(
            f"SQS record {message_id} has a non-string receipt handle", message_id=message_id
        )
    return SqsMessage(
        id=message_id,
        body=body,
        receipt_handle=receipt,
        attributes={str(k): str(v) for k, v in attributes.items()},
        message_attributes=dict(message_attributes),
        source_arn=str(_field(record, "eventSourceARN") or ""),
    )


def parse_envelope(message: SqsMessage) -> Envelope:
    """Decode the msgcluster envelope of a message (not the user's body)."""
    try:
        return _envelope_decoder.decode(message.body)
    except msgspec.ValidationError as exc:
        raise EnvelopeError(
            f"message {message.id} is not a msgcluster envelope ({exc}); expected a JSON "
            f"object with 'type' in {list(ENVELOPE_TYPES)} and 'pk'/'rk' keys - was it sent "
            "with Client.send_message?",
            message_id=message.id,
        ) from exc
    except msgspec.DecodeError as exc:
        raise EnvelopeError(
            f"message {message.id} body is not JSON ({exc}): {message.body[:80]!r}",
            message_id=message.id,
        ) from exc


def extended_pointer(message: SqsMessage) -> S3Pointer | None:
    """The S3 pointer of an SQS Extended Client message, if it is one."""
    pointer = parse_extended_pointer(message.body)
    if pointer is None:
        return None
    for name in EXTENDED_SIZE_ATTRIBUTES:
        attr = message.message_attributes.get(name)
        if isinstance(attr, Mapping):
            value = attr.get("stringValue", attr.get("StringValue"))
            if value is not None and str(value).isdigit():
                return S3Pointer(bucket=pointer.bucket, key=pointer.key, size=int(value))
    return pointer


@functools.lru_cache(maxsize=256)
def _decoder(body_type: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(body_type)


def decode_body(raw: bytes | msgspec.Raw, body_type: Any, message_id: str) -> Any:
    try:
        return _decoder(body_type).decode(raw)
    except TypeError:  # unhashable type annotation: build a decoder once
        try:
            return msgspec.json.decode(raw, type=body_type)
        except msgspec.ValidationError as exc:
            raise _body_error(exc, body_type, message_id) from exc
    except msgspec.ValidationError as exc:
        raise _body_error(exc, body_type, message_id) from exc
    except msgspec.DecodeError as exc:
        raise BodyDecodeError(
            f"message {message_id}: body is not valid JSON ({exc})", message_id=message_id
        ) from exc


def _body_error(exc: Exception, body_type: Any, message_id: str) -> BodyDecodeError:
    # A class by name; a generic alias or union as written (list[int], not list).
    name = body_type.__name__ if isinstance(body_type, type) else repr(body_type)
    return BodyDecodeError(
        f"message {message_id}: body does not match {name}: {exc}", message_id=message_id
    )


_UNLOADED: Final = object()


class ParsedRecord(Generic[B]):
    """What ``read_sqs_record`` returns: ids, the decoded body, lazy getters.

    ``task`` is set for cluster tasks; ``get_message_cluster`` is None for
    simple messages. Getters fetch from AWS only when called.
    """

    __slots__ = ("_body", "_ctx", "envelope", "message", "pointer", "task")

    def __init__(
        self,
        ctx: Context,
        message: SqsMessage,
        envelope: Envelope,
        body: Any = _UNLOADED,
        pointer: S3Pointer | None = None,
        task: Any = None,
    ) -> None:
        self._ctx = ctx
        self.message = message
        self.envelope = envelope
        self._body = body
        self.pointer = pointer
        self.task = task

    @property
    def id(self) -> str:
        """The SQS message id."""
        return self.message.id

    @property
    def url(self) -> str:
        return self.envelope.url

    @property
    def pk(self) -> str:
        return self.envelope.pk

    @property
    def rk(self) -> str:
        return self.envelope.rk

    @property
    def key(self) -> RecordKey:
        return RecordKey(self.envelope.pk, self.envelope.rk)

    @property
    def type(self) -> RecordType:
        if isinstance(self.envelope, TaskEnvelope):
            return RecordType.TASK
        if isinstance(self.envelope, ClusterEventEnvelope):
            return RecordType.CLUSTER
        return RecordType.MESSAGE

    @property
    def cluster_key(self) -> RecordKey | None:
        """The key of the cluster record, for a task or a cluster event; else None."""
        if isinstance(self.envelope, ClusterEventEnvelope):
            return RecordKey(self.envelope.pk, self.envelope.rk)
        if isinstance(self.envelope, TaskEnvelope):
            from ._clusterkeys import TaskRef

            return TaskRef(self.key).cluster_key
        return None

    @property
    def globals_pointer(self) -> S3Pointer | None:
        """Where the cluster's globals live (tasks only): readable without the record."""
        return self.envelope.globals_s3 if isinstance(self.envelope, TaskEnvelope) else None

    @property
    def receive_count(self) -> int:
        return self.message.receive_count

    @property
    def offloaded(self) -> bool:
        return self.pointer is not None

    @property
    def body(self) -> B:
        if self._body is _UNLOADED:
            raise PayloadNotLoadedError(
                f"message {self.id}: the body is stored in S3 ({self.pointer}); read it with "
                "`await client.load_sqs_record(record, body_type=...)`",
                message_id=self.id,
            )
        return self._body  # type: ignore[no-any-return]

    @property
    def get_message_cluster(self) -> Callable[..., Awaitable[ClusterView]] | None:
        """For a task (or cluster event): ``await record.get_message_cluster()`` returns
        ``(record, get_globals)``; None for a simple message."""
        key = self.cluster_key
        if key is None:
            return None
        ctx = self._ctx

        async def get_message_cluster(consistent_read: bool = False) -> ClusterView:
            from ._callbacks import ClusterView, globals_getter
            from ._clusters import get_message_cluster as fetch

            record = await fetch(ctx, key, consistent_read=consistent_read)
            return ClusterView(record, globals_getter(ctx, record))

        return get_message_cluster

    async def get_globals(self, type: Any = Any) -> Any:
        """A task's cluster globals, read straight from S3 (no DynamoDB read)."""
        from ._globals import get_globals

        pointer = self.globals_pointer
        if pointer is None:
            if self.cluster_key is None:
                return None
            view = await self.get_message_cluster()  # type: ignore[misc]
            return await view.get_globals(type)
        return await get_globals(self._ctx, pointer, type)

    async def get_message_record(self, consistent_read: bool = False) -> MessageRecord:
        from ._messages import get_message_record

        return await get_message_record(self._ctx, self.key, consistent_read=consistent_read)

    def __repr__(self) -> str:
        return f"ParsedRecord(id={self.id!r}, type={self.type.value!r}, pk={self.pk!r})"


def read(ctx: Context, record: object, body_type: Any) -> ParsedRecord[Any]:
    """Synchronous read: everything inline; an offloaded body is left unloaded."""
    message = normalize(record)
    if extended_pointer(message) is not None:
        raise PayloadNotLoadedError(
            f"message {message.id} is an SQS Extended Client pointer to S3; read it with "
            "`await client.load_sqs_record(record, body_type=...)`",
            message_id=message.id,
        )
    envelope = parse_envelope(message)
    return _from_envelope(ctx, message, envelope, body_type)


def _from_envelope(
    ctx: Context, message: SqsMessage, envelope: Envelope, body_type: Any
) -> ParsedRecord[Any]:
    if isinstance(envelope, MessageEnvelope):
        if envelope.body_s3 is not None:
            return ParsedRecord(ctx, message, envelope, pointer=envelope.body_s3)
        raw = envelope.body if envelope.body != NO_BODY else msgspec.Raw(b"null")
        return ParsedRecord(ctx, message, envelope, decode_body(raw, body_type, message.id))
    if isinstance(envelope, TaskEnvelope):
        if not envelope.cluster_pk or "$shard$" not in envelope.pk:
            raise EnvelopeError(
                f"message {message.id} is a task envelope without a valid cluster key",
                message_id=message.id,
            )
        if envelope.task_s3 is not None:
            return ParsedRecord(ctx, message, envelope, pointer=envelope.task_s3)
        raw = envelope.task if envelope.task != NO_BODY else msgspec.Raw(b"null")
        task = decode_body(raw, body_type, message.id)
        return ParsedRecord(ctx, message, envelope, task, task=task)
    return ParsedRecord(ctx, message, envelope, None)


async def resolve_extended(ctx: Context, message: SqsMessage) -> SqsMessage:
    """An SQS Extended Client message with its original body fetched from S3
    (the envelope, keys included, is in S3); any other message unchanged."""
    pointer = extended_pointer(message)
    if pointer is None:
        return message
    data = await fetch(ctx, pointer)
    try:
        body = data.decode()
    except UnicodeDecodeError as exc:
        raise EnvelopeError(
            f"message {message.id}: the S3 object s3://{pointer.bucket}/{pointer.key} it "
            f"points to is not UTF-8 text ({exc})",
            message_id=message.id,
        ) from exc
    return msgspec.structs.replace(message, body=body)


async def load(ctx: Context, record: object, body_type: Any) -> ParsedRecord[Any]:
    """Like :func:`read`, fetching bodies that live in S3."""
    message = await resolve_extended(ctx, normalize(record))
    parsed = _from_envelope(ctx, message, parse_envelope(message), body_type)
    if parsed.pointer is not None:
        data = await fetch(ctx, parsed.pointer)
        parsed._body = decode_body(data, body_type, message.id)
        if parsed.type is RecordType.TASK:
            parsed.task = parsed._body
    return parsed
