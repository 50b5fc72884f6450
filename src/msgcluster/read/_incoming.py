"""The read pipeline's first steps: one received-message model, and what a message is.

raw record (Lambda event record, ReceiveMessage message, or a queue's
:class:`~msgcluster.queues.ReceivedMessage`) -> :class:`SqsMessage` ->
payload (inline, or offloaded to S3 behind an Extended Client pointer) ->
kind (a msgcluster message, a cluster task, a completion event, or a *plain*
message msgcluster did not send). Decoding the body is ``_bodies``; the view
handlers get is ``_records``.

A message that cannot be read fails alone: :func:`classify` never raises for
a body; it returns an :class:`Incoming` whose ``error`` says why the message
is poison (a mis-keyed envelope). Envelopes are decoded with one module-level
tagged-union decoder; the user's body stays ``msgspec.Raw`` until a type is
asked for, so completion checks never pay for decoding it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._clusterkeys import CLUSTER_SORT_KEY, TASK_SORT_PREFIX, TaskRef
from .._errors import EnvelopeError, InvalidKeyError, MalformedEventError, RecordError
from .._schemas import (
    ENVELOPE_TYPES,
    ClusterEventEnvelope,
    Envelope,
    MessageEnvelope,
    RecordKey,
    S3Pointer,
    TaskEnvelope,
)
from ..queues._contract import ReceivedMessage
from ..queues._extended import fetch, parse_pointer, payload_record_key

if TYPE_CHECKING:
    from .._context import Context

__all__ = [
    "Incoming",
    "MessageKind",
    "SqsMessage",
    "classify",
    "from_received",
    "kind_of",
    "normalize",
    "resolve",
]

_envelope_decoder: Final[msgspec.json.Decoder[Envelope]] = msgspec.json.Decoder(Envelope)


class MessageKind(enum.Enum):
    """What a received message is, for msgcluster."""

    MESSAGE = "message"  # a tracked message (Client.send_message)
    TASK = "task"  # a cluster task
    EVENT = "cluster"  # a cluster's completion event
    PLAIN = "plain"  # anything msgcluster did not send: no record


def kind_of(key: RecordKey) -> MessageKind:
    if key.rk.startswith(TASK_SORT_PREFIX):
        return MessageKind.TASK
    if key.rk == CLUSTER_SORT_KEY:
        return MessageKind.EVENT
    return MessageKind.MESSAGE


_ENVELOPE_KIND: Final = {
    MessageEnvelope: MessageKind.MESSAGE,
    TaskEnvelope: MessageKind.TASK,
    ClusterEventEnvelope: MessageKind.EVENT,
}


class SqsMessage(msgspec.Struct, frozen=True):
    """One received message, whichever API delivered it.

    ``body`` is the text SQS carried; ``binary`` holds the bytes of a queue
    message that is not UTF-8 (``body`` is then empty). ``record`` is the
    mapping it was read from, when it came as one.
    """

    id: str
    body: str
    receipt_handle: str = ""
    attributes: dict[str, str] = {}
    message_attributes: dict[str, Any] = {}
    source_arn: str = ""
    binary: bytes | None = None
    record: Any = None

    @property
    def receive_count(self) -> int:
        try:
            return int(self.attributes.get("ApproximateReceiveCount", "1"))
        except ValueError:
            return 1

    @property
    def group_id(self) -> str | None:
        return self.attributes.get("MessageGroupId")

    @property
    def data(self) -> str | bytes:
        """The payload as SQS carried it: text, or bytes when not UTF-8."""
        return self.binary if self.binary is not None else self.body

    def lambda_record(self) -> Mapping[str, Any]:
        """The message as Lambda's SQS event record (the documented shape)."""
        if isinstance(self.record, Mapping) and "messageId" in self.record:
            return self.record
        return {
            "messageId": self.id,
            "receiptHandle": self.receipt_handle,
            "body": self.body,
            "attributes": dict(self.attributes),
            "messageAttributes": {
                name: _lambda_attribute(value) for name, value in self.message_attributes.items()
            },
            "eventSource": "aws:sqs",
            "eventSourceARN": self.source_arn,
        }


def _lambda_attribute(value: Any) -> Any:
    if not isinstance(value, Mapping) or "DataType" not in value:
        return value
    out = {"dataType": value["DataType"], "stringListValues": [], "binaryListValues": []}
    if "StringValue" in value:
        out["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        out["binaryValue"] = value["BinaryValue"]
    return out


def _field(record: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in record:
            return record[name]
    return None


def normalize(record: object) -> SqsMessage:
    """Accept a Lambda SQS event record, a ReceiveMessage message, a queue's
    ReceivedMessage, a ParsedRecord or an SqsMessage."""
    if isinstance(record, SqsMessage):
        return record
    carried = getattr(record, "message", None)
    if isinstance(carried, SqsMessage):  # a ParsedRecord: read already
        return carried
    if isinstance(record, ReceivedMessage):
        return from_received(record)
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
        record=record,
    )


def from_received(message: Any) -> SqsMessage:
    """A queue's ReceivedMessage as an SqsMessage (attributes are strings there)."""
    try:
        body, binary = message.body.decode(), None
    except UnicodeDecodeError:
        body, binary = "", bytes(message.body)
    attributes = {"ApproximateReceiveCount": str(message.receive_count)}
    if message.group_id is not None:
        attributes["MessageGroupId"] = message.group_id
    if message.sent_at is not None:
        attributes["SentTimestamp"] = str(int(message.sent_at * 1000))
    return SqsMessage(
        id=message.id,
        body=body,
        receipt_handle=message.receipt,
        attributes=attributes,
        message_attributes={
            name: {"DataType": "String", "StringValue": value}
            for name, value in message.attributes.items()
        },
        binary=binary,
    )


class Incoming:
    """A message classified: its kind, record key, where its payload is, and
    ``error`` when it is poison (it then fails alone)."""

    __slots__ = ("envelope", "error", "key", "kind", "message", "pointer")

    def __init__(
        self,
        message: SqsMessage,
        kind: MessageKind,
        *,
        key: RecordKey | None = None,
        envelope: Envelope | None = None,
        pointer: S3Pointer | None = None,
        error: RecordError | None = None,
    ) -> None:
        self.message = message
        self.kind = kind
        self.key = key
        self.envelope = envelope
        self.pointer = pointer  # the whole payload is in S3 (not fetched yet)
        self.error = error

    @property
    def tracked(self) -> bool:
        return self.key is not None

    def __repr__(self) -> str:
        return f"Incoming({self.message.id!r}, {self.kind.value}, key={self.key})"


class _Probe(msgspec.Struct):
    """Just enough of a JSON object to tell a broken envelope from a foreign body."""

    type: Any = None
    pk: Any = None
    rk: Any = None


_probe_decoder: Final = msgspec.json.Decoder(_Probe)


def classify(message: SqsMessage) -> Incoming:
    """What ``message`` is; never raises for a body (poison is in ``.error``)."""
    if message.binary is not None:
        return Incoming(message, MessageKind.PLAIN)
    # A record mapping without its attributes key is a ReceiveMessage that did
    # not ask for them: only there may a pointer go without its size attribute.
    record = message.record
    unknown = isinstance(record, Mapping) and (
        _field(record, "messageAttributes", "MessageAttributes") is None
    )
    pointer = parse_pointer(message.body, message.message_attributes, attributes_known=not unknown)
    if pointer is not None:
        key = payload_record_key(pointer)
        return Incoming(
            message, kind_of(key) if key else MessageKind.PLAIN, key=key, pointer=pointer
        )
    return _classify_body(message)


def _classify_body(message: SqsMessage) -> Incoming:
    body = message.body
    # Every envelope is an object with "pk" and "rk": other bodies are plain
    # without a decode (the common case for messages msgcluster did not send).
    if not body.lstrip(" \t\r\n").startswith("{") or '"pk"' not in body or '"rk"' not in body:
        return Incoming(message, MessageKind.PLAIN)
    try:
        envelope = _envelope_decoder.decode(body)
    except msgspec.ValidationError as exc:
        if not _looks_like_envelope(body):
            return Incoming(message, MessageKind.PLAIN)
        error = EnvelopeError(
            f"message {message.id} is a malformed msgcluster envelope ({exc}); it is "
            "dead-lettered, not retried",
            message_id=message.id,
        )
        return Incoming(message, MessageKind.PLAIN, error=error)
    except (msgspec.DecodeError, RecursionError, UnicodeEncodeError):
        # Not JSON, nested past the decoder's depth, or not UTF-8: not ours.
        return Incoming(message, MessageKind.PLAIN)
    kind = _ENVELOPE_KIND[type(envelope)]
    try:
        key = RecordKey(envelope.pk, envelope.rk)
        if kind_of(key) is not kind:
            raise InvalidKeyError(f"a {kind.value} envelope cannot carry the key {key.rk!r}")
        if kind is MessageKind.TASK:
            TaskRef(key)
    except InvalidKeyError as exc:
        error = EnvelopeError(
            f"message {message.id} carries an invalid record key: {exc}", message_id=message.id
        )
        return Incoming(message, kind, envelope=envelope, error=error)
    return Incoming(message, kind, key=key, envelope=envelope)


def _looks_like_envelope(body: str) -> bool:
    try:
        probe = _probe_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeEncodeError):
        return False
    return probe.type in ENVELOPE_TYPES and probe.pk is not None and probe.rk is not None


async def resolve(ctx: Context | None, incoming: Incoming) -> Incoming:
    """The message with an offloaded payload fetched and classified again.

    Without a Client (``ctx`` None) an offloaded payload cannot be read: the
    result is poison that says so.
    """
    pointer = incoming.pointer
    if pointer is None:
        return incoming
    message = incoming.message
    if ctx is None:
        error = EnvelopeError(
            f"message {message.id} is offloaded to s3://{pointer.bucket}/{pointer.key}: "
            "reading it needs a Client (App(client=...))",
            message_id=message.id,
        )
        return Incoming(message, incoming.kind, key=incoming.key, error=error)
    data = await fetch(ctx, pointer)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return Incoming(msgspec.structs.replace(message, binary=data), MessageKind.PLAIN)
    resolved = _classify_body(msgspec.structs.replace(message, body=text))
    resolved.pointer = None
    return resolved
